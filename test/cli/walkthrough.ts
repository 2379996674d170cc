/** The CLI walk-through, shared by the file and Kafka CLI tests. */
import type { Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { statSync } from 'node:fs';
import { join } from 'node:path';

const ZOS = fileURLToPath(new URL('../../bin/zos.mjs', import.meta.url));

export function zosRaw(dir: string, args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; out: string; err: string } {
  const base: NodeJS.ProcessEnv = { ...process.env, ZOS_DATA_DIR: dir, ...env };
  delete base.ZOS_KEY_FILE;
  if (env.ZOS_KEY_FILE) base.ZOS_KEY_FILE = env.ZOS_KEY_FILE;
  if (!env.ZOS_LOG) delete base.ZOS_LOG;
  const r = spawnSync(process.execPath, [ZOS, ...args], { env: base, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

export async function walkThrough(t: Test, dir: string, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const zos = (d: string, args: string[], extra: NodeJS.ProcessEnv = {}) => zosRaw(d, args, { ...env, ...extra });
  const init = zos(dir, ['init']);
  t.equal(init.code, 0, init.err);
  t.equal(statSync(join(dir, 'master.key')).mode & 0o777, 0o600, 'key file mode 0600');
  t.equal(zos(dir, ['init']).code, 0, 'init again is harmless');

  let r = zos(dir, ['log', 'append', 'orders-1', '--type', 'OrderPlaced', '--data', '{"qty":2}', '--actor', 'alice', '--expect-version', 'no-stream']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /version 0, position 0/);
  r = zos(dir, ['log', 'append', 'orders-1', '--type', 'OrderShipped', '--data', '{}', '--expect-version', '0']);
  t.equal(r.code, 0, r.err);

  r = zos(dir, ['log', 'append', 'orders-1', '--type', 'Late', '--expect-version', '0']);
  t.equal(r.code, 3, 'expected-version conflict exits 3');
  t.match(r.err, /expected version 0, actual 1/, 'names expected and actual');

  r = zos(dir, ['--json', 'log', 'read', 'orders-1']);
  t.equal(r.code, 0);
  const events = r.out.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(events.map((e) => [e.type, e.version, e.position, e.actor]), [['OrderPlaced', 0, 0, 'alice'], ['OrderShipped', 1, 1, null]]);
  t.same(events[0]!.data, { qty: 2 });

  r = zos(dir, ['log', 'read', 'orders-1', '--from', '1']);
  t.match(r.out, /OrderShipped/);
  t.notMatch(r.out, /OrderPlaced/);

  r = zos(dir, ['log', 'tail', '--json']);
  t.equal(r.out.trim().split('\n').length, 2);
  r = zos(dir, ['log', 'tail', '--from', '1', '--json']);
  t.same(r.out.trim().split('\n').map((l) => (JSON.parse(l) as { position: number }).position), [1]);
  const t1 = (JSON.parse(zos(dir, ['--json', 'log', 'read', 'orders-1']).out.split('\n')[1]!) as { commitTimeNs: string }).commitTimeNs;
  r = zos(dir, ['log', 'tail', '--since', t1, '--json']);
  t.same(r.out.trim().split('\n').map((l) => (JSON.parse(l) as { type: string }).type), ['OrderShipped'], '--since takes Unix ns');
  r = zos(dir, ['log', 'tail', '--since', '2000-01-01T00:00:00Z', '--type', 'OrderPlaced', '--json']);
  t.same(r.out.trim().split('\n').map((l) => (JSON.parse(l) as { type: string }).type), ['OrderPlaced'], '--since takes ISO-8601, --type filters');

  r = zos(dir, ['audit', '--actor', 'alice', '--json']);
  t.equal(r.code, 0, r.err);
  t.same(r.out.trim().split('\n').map((l) => (JSON.parse(l) as { type: string }).type), ['OrderPlaced']);
  r = zos(dir, ['audit', '--stream', 'orders-1', '--type', 'OrderShipped', '--json']);
  t.same(r.out.trim().split('\n').map((l) => (JSON.parse(l) as { version: number }).version), [1]);
  r = zos(dir, ['audit', '--until', '2000-01-01T00:00:00Z', '--json']);
  t.equal(r.out.trim(), '', 'nothing before 2000');

  r = zos(dir, ['log', 'verify']);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /^ok: 2 events/);
  r = zos(dir, ['--json', 'log', 'stats']);
  t.equal((JSON.parse(r.out) as { events: number }).events, 2);
}
