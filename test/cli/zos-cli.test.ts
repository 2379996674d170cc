/** The zos command line, run as a user would: exit codes, output, errors. */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tmp.ts';

const ZOS = fileURLToPath(new URL('../../bin/zos.mjs', import.meta.url));

function zos(dir: string, args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [ZOS, ...args], {
    env: { ...process.env, ZOS_DATA_DIR: dir, ZOS_KEY_FILE: '', ...env },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.test('the issue walk-through', async (t) => {
  const dir = tempDir(t);
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
});

t.test('every command has --help, usage errors exit 2', async (t) => {
  const dir = tempDir(t);
  for (const cmd of [['--help'], ['init', '--help'], ['log', 'append', '--help'], ['log', 'read', '--help'], ['log', 'tail', '--help'], ['log', 'verify', '--help'], ['log', 'stats', '--help'], ['log', 'repair', '--help'], ['audit', '--help'], ['schema', 'register', '--help']]) {
    const r = zos(dir, cmd);
    t.equal(r.code, 0, `${cmd.join(' ')} exits 0`);
    t.match(r.out, /Usage: zos/, `${cmd.join(' ')} prints usage`);
  }
  for (const cmd of [['frobnicate'], ['log', 'append'], ['log', 'append', 's'], ['log', 'read'], ['log', 'tail', '--from', 'x'], ['log', 'tail', '--since', 'yesterday'], ['log', 'append', 's', '--type', 'T', '--data', '{nope'], ['log', 'append', 's', '--type', 'T', '--expect-version', 'maybe'], ['log', 'read', 's', '--bogus'], ['log', 'append', 's', '--type', 'T', '--data', '@/nonexistent/file.json']]) {
    const r = zos(dir, cmd);
    t.equal(r.code, 2, `${cmd.join(' ')} exits 2 (${r.err.split('\n')[0]})`);
    t.match(r.err, /^zos: /);
    t.notMatch(r.err, /    at /, 'no stack trace');
  }
});

t.test('errors say what to do', async (t) => {
  const dir = tempDir(t);
  let r = zos(dir, ['log', 'read', 's']);
  t.equal(r.code, 1);
  t.match(r.err, /run zos init/, 'uninitialised data dir');

  t.equal(zos(dir, ['init']).code, 0);
  zos(dir, ['log', 'append', 's', '--type', 'T', '--data', '{"secret":"payload-123"}']);
  const keyText = readFileSync(join(dir, 'master.key'), 'utf8');

  const other = tempDir(t);
  t.equal(zos(other, ['init']).code, 0);
  r = zos(dir, ['log', 'read', 's'], { ZOS_KEY_FILE: join(other, 'master.key') });
  t.equal(r.code, 1);
  t.match(r.err, /wrong key/);
  t.equal(r.out, '', 'no garbage output');
  t.notMatch(r.err + r.out, new RegExp(keyText.split(' ').pop()!.trim().slice(0, 16).replace(/[+/]/g, '.')), 'the key is never printed');

  r = zos(dir, ['log', 'read', 's'], { ZOS_KEY_FILE: join(dir, 'missing.key') });
  t.equal(r.code, 1);
  t.match(r.err, /no master key.*run zos init/);

  writeFileSync(join(dir, 'bad.key'), 'hello\n', { mode: 0o600 });
  r = zos(dir, ['log', 'read', 's'], { ZOS_KEY_FILE: join(dir, 'bad.key') });
  t.equal(r.code, 1);
  t.match(r.err, /not a zos key file/);

  // Corrupt data: position and reason.
  const seg = join(dir, 'log', readdirSync(join(dir, 'log')).find((f) => f.endsWith('.seg'))!);
  const bytes = readFileSync(seg);
  bytes[bytes.length - 40]! ^= 0xff;
  writeFileSync(seg, bytes);
  r = zos(dir, ['log', 'verify']);
  t.equal(r.code, 1, 'verify fails');
  t.match(r.out, /FAILED at position 0/);
  r = zos(dir, ['--json', 'log', 'verify']);
  const rep = JSON.parse(r.out) as { ok: boolean; problem: { position: number; reason: string } };
  t.equal(rep.ok, false);
  t.equal(rep.problem.position, 0);
});
