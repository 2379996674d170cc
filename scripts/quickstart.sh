#!/usr/bin/env bash
# The README's quick start: zos on the embedded file log, nothing else installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."
export ZOS_DATA_DIR="${ZOS_DATA_DIR:-$PWD/.zos-demo}"
rm -rf "$ZOS_DATA_DIR"
zos() { node bin/zos.mjs "$@"; }
set -x
zos init
zos log append orders-1 --type OrderPlaced --data '{"qty":2}' --actor alice --expect-version no-stream
zos log append orders-1 --type OrderShipped --data '{}' --expect-version 0
# A stale expected version is refused with exit code 3:
if zos log append orders-1 --type OrderCancelled --expect-version 0; then exit 1; else test $? -eq 3; fi
zos log read orders-1
zos log read orders-1 --json
zos log tail
zos audit --actor alice
zos log verify
zos log stats

# Vdisks: block devices whose every write is in the log, with rollback.
zos vdisk create web1 --size 64M
if command -v qemu-io >/dev/null; then
  serve_out="$(mktemp)"
  node bin/zos.mjs vdisk serve --listen 127.0.0.1:0 --json >"$serve_out" &
  serve_pid=$!
  trap 'kill $serve_pid 2>/dev/null || true; rm -f "$serve_out"' EXIT
  for _ in $(seq 100); do grep -q listening "$serve_out" && break; sleep 0.1; done
  port="$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$serve_out")"
  qemu-io -f raw "nbd://127.0.0.1:$port/web1" -c 'write -P 0xaa 0 1M' -c flush
  zos vdisk snapshot web1 --name before-upgrade      # carried out by the running server
  qemu-io -f raw "nbd://127.0.0.1:$port/web1" -c 'write -P 0xbb 0 1M' -c flush
  zos vdisk history web1
  zos vdisk rollback web1 --snapshot before-upgrade
  qemu-io -f raw "nbd://127.0.0.1:$port/web1" -c 'read -P 0xaa 0 1M'   # the 0xbb write is undone
  kill -INT "$serve_pid"; wait "$serve_pid"
else
  set +x; echo "(qemu-io is not installed: skipping the NBD part of the vdisk demo)"; set -x
  zos vdisk snapshot web1 --name before-upgrade
fi
zos vdisk clone web1 web1-test --snapshot before-upgrade
zos vdisk export web1-test "$ZOS_DATA_DIR/web1-test.raw"
zos vdisk list
