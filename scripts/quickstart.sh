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
