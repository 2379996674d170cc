/** The zos command line, run as a user would: exit codes, output, errors. */
import t from 'tap';
import { readFileSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tmp.ts';
import { walkThrough, zosRaw } from './walkthrough.ts';

const zos = zosRaw;

t.test('the issue walk-through', async (t) => {
  await walkThrough(t, tempDir(t));
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
