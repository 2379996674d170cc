/**
 * Key handling at open: a different key is refused with TLOG_WRONG_KEY ("wrong
 * key") before any event is returned; a missing key is TLOG_NO_KEY pointing at
 * `zos init`; a malformed key file is TLOG_KEY_FILE_INVALID. No error — message,
 * stack, cause or context — ever contains key bytes, in any common encoding.
 */
import t from 'tap';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { randomBytes } from '../../tlog/crypto.ts';
import { createKeyFile } from '../../tlog/keyfile.ts';
import { Tlog, initDataDir, ZosError, type RecordedEvent } from '../../tlog/index.ts';
import { tempDir, type TestContext } from '../helpers/tmp.ts';
import { buildLog, type Append } from './fixtures/log.ts';
import { describe } from './fixtures/property.ts';

const PAYLOAD = 'wrong-key-test-payload-77';
const appends: Append[] = [
  { stream: 'accounts', events: [{ type: 'Opened', data: { note: PAYLOAD } }] },
  { stream: 'accounts', events: [{ type: 'Credited', data: { note: PAYLOAD, amount: 5 } }] },
];

// Tests here read ZOS_KEY_FILE; make sure the environment does not point elsewhere.
const savedEnv = process.env.ZOS_KEY_FILE;
delete process.env.ZOS_KEY_FILE;
t.teardown(() => {
  if (savedEnv !== undefined) process.env.ZOS_KEY_FILE = savedEnv;
});

const KEY_LINE = /^zos-master-key v1 (\S+)\s*$/;
function keyOf(keyFile: string): Buffer {
  const m = KEY_LINE.exec(readFileSync(keyFile, 'utf8'));
  if (!m) throw new Error(`fixture: ${keyFile} is not a key file`);
  return Buffer.from(m[1]!, 'base64');
}

/** The encodings key bytes could leak in. */
function encodings(key: Buffer): string[] {
  return [key.toString('base64'), key.toString('base64').replace(/=+$/, ''), key.toString('base64url'), key.toString('hex'), key.toString('hex').toUpperCase()];
}

/** Everything an error exposes (message, stack, cause chain, context), as text. */
function exposed(err: unknown): string {
  return inspect(err, { depth: 10, showHidden: true }) + (err instanceof Error ? ` ${err.message} ${err.stack ?? ''}` : '');
}

function leakedEncodings(err: unknown, keys: Buffer[]): string[] {
  const text = exposed(err);
  return keys.flatMap(encodings).filter((enc) => text.includes(enc));
}

function assertNoKeyMaterial(t: { equal(found: unknown, wanted: unknown, msg: string): unknown }, err: unknown, keys: Buffer[]): void {
  if (err === null || err === undefined) return;
  const leaked = leakedEncodings(err, keys);
  // Print only a prefix of anything found: the assertion output must not leak it either.
  t.equal(leaked.map((enc) => `${enc.slice(0, 6)}…`).join(', '), '', 'error contains no key bytes (base64, base64url, hex)');
}

async function logDir(t: TestContext): Promise<{ dir: string; key: Buffer }> {
  const dir = join(tempDir(t), 'data');
  await buildLog(dir, appends);
  return { dir, key: keyOf(join(dir, 'master.key')) };
}

/** Open and read everything; returns the error and whatever events were produced before it. */
async function tryRead(opts: Parameters<typeof Tlog.open>[0]): Promise<{ err: unknown; events: RecordedEvent[] }> {
  const events: RecordedEvent[] = [];
  let log: Tlog | null = null;
  try {
    log = await Tlog.open(opts);
    for await (const e of log.readAll()) events.push(e);
    return { err: null, events };
  } catch (err) {
    return { err, events };
  } finally {
    await log?.close();
  }
}

t.test('the leak check finds key bytes anywhere in an error (method check)', async (t) => {
  const key = randomBytes(32);
  const inCause = new ZosError('TLOG_IO', 'outer', { cause: new Error(`inner ${key.toString('hex')}`) });
  const inContext = new ZosError('TLOG_IO', 'outer', { context: { k: key.toString('base64url') } });
  t.ok(leakedEncodings(inCause, [key]).length > 0, 'hex key in the cause is found');
  t.ok(leakedEncodings(inContext, [key]).length > 0, 'base64url key in the context is found');
  t.same(leakedEncodings(new ZosError('TLOG_IO', 'clean'), [key]), [], 'a clean error passes');
});

t.test('a different raw key is refused with TLOG_WRONG_KEY before any event is read', async (t) => {
  const { dir, key } = await logDir(t);
  const wrong = randomBytes(32);
  for (const readOnly of [true, false]) {
    const { err, events } = await tryRead({ dataDir: dir, key: wrong, readOnly });
    t.ok(err instanceof ZosError, `${readOnly ? 'read-only' : 'read-write'}: ZosError (${describe(err)})`);
    t.equal((err as ZosError).code, 'TLOG_WRONG_KEY');
    t.match((err as ZosError).message, /wrong key/);
    t.equal(events.length, 0, 'no events returned');
    t.notOk(exposed(err).includes(PAYLOAD), 'error holds no payload');
    assertNoKeyMaterial(t, err, [key, wrong]);
  }
});

t.test('a key file from another data directory is refused with TLOG_WRONG_KEY (keyFile option and ZOS_KEY_FILE)', async (t) => {
  const { dir, key } = await logDir(t);
  const otherDir = join(tempDir(t), 'other');
  initDataDir(otherDir);
  const otherKeyFile = join(otherDir, 'master.key');
  const other = keyOf(otherKeyFile);

  const viaOption = await tryRead({ dataDir: dir, keyFile: otherKeyFile });
  t.equal((viaOption.err as ZosError)?.code, 'TLOG_WRONG_KEY', `keyFile option: ${describe(viaOption.err)}`);
  t.match((viaOption.err as Error).message, /wrong key/);
  t.equal(viaOption.events.length, 0);
  assertNoKeyMaterial(t, viaOption.err, [key, other]);

  process.env.ZOS_KEY_FILE = otherKeyFile;
  t.teardown(() => void delete process.env.ZOS_KEY_FILE);
  const viaEnv = await tryRead({ dataDir: dir, readOnly: true });
  delete process.env.ZOS_KEY_FILE;
  t.equal((viaEnv.err as ZosError)?.code, 'TLOG_WRONG_KEY', `ZOS_KEY_FILE: ${describe(viaEnv.err)}`);
  t.equal(viaEnv.events.length, 0);
  assertNoKeyMaterial(t, viaEnv.err, [key, other]);

  // initDataDir on the existing directory with the other key must refuse too.
  let initErr: unknown = null;
  try {
    initDataDir(dir, otherKeyFile);
  } catch (err) {
    initErr = err;
  }
  t.equal((initErr as ZosError)?.code, 'TLOG_WRONG_KEY', `initDataDir with another key: ${describe(initErr)}`);
  assertNoKeyMaterial(t, initErr, [key, other]);
});

t.test('zos.json rewritten to claim another key: nothing decrypts, no event is returned, verify reports the wrong key', async (t) => {
  const { dir, key } = await logDir(t);
  const otherDir = join(tempDir(t), 'other');
  initDataDir(otherDir);
  const other = keyOf(join(otherDir, 'master.key'));
  const meta = JSON.parse(readFileSync(join(dir, 'zos.json'), 'utf8')) as { keyId: string };
  meta.keyId = (JSON.parse(readFileSync(join(otherDir, 'zos.json'), 'utf8')) as { keyId: string }).keyId;
  writeFileSync(join(dir, 'zos.json'), JSON.stringify(meta));

  for (const readOnly of [true, false]) {
    const { err, events } = await tryRead({ dataDir: dir, key: other, readOnly });
    t.equal(events.length, 0, `${readOnly ? 'read-only' : 'read-write'}: no events returned`);
    t.ok(err instanceof ZosError && ['TLOG_WRONG_KEY', 'TLOG_DECRYPT_FAILED'].includes(err.code), `refused with a key error: ${describe(err)}`);
    assertNoKeyMaterial(t, err, [key, other]);
  }
  let log: Tlog | null = null;
  try {
    log = await Tlog.open({ dataDir: dir, key: other, readOnly: true });
  } catch (err) {
    t.ok(err instanceof ZosError, `open refused: ${describe(err)}`);
  }
  if (log) {
    const report = await log.verify();
    await log.close();
    t.equal(report.ok, false, 'verify fails');
    t.equal(report.problem?.code, 'TLOG_WRONG_KEY', `verify says the key is wrong: ${JSON.stringify(report.problem, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`);
  }
});

t.test('no key: TLOG_NO_KEY telling the user to run zos init', async (t) => {
  const { dir, key } = await logDir(t);
  const missing = join(dir, 'no-such.key');
  const a = await tryRead({ dataDir: dir, keyFile: missing });
  t.equal((a.err as ZosError)?.code, 'TLOG_NO_KEY', `explicit missing key file: ${describe(a.err)}`);
  t.match((a.err as Error).message, /zos init/);
  assertNoKeyMaterial(t, a.err, [key]);

  // The default key file (<dataDir>/master.key) moved away.
  const moved = join(tempDir(t), 'kept.key');
  writeFileSync(moved, readFileSync(join(dir, 'master.key')));
  rmSync(join(dir, 'master.key'));
  const b = await tryRead({ dataDir: dir, readOnly: true });
  t.equal((b.err as ZosError)?.code, 'TLOG_NO_KEY', `default key file missing: ${describe(b.err)}`);
  t.match((b.err as Error).message, /zos init/);
  t.equal(b.events.length, 0);

  // A path that exists but cannot be read as a file.
  const asDir = join(dir, 'a-directory.key');
  mkdirSync(asDir);
  const c = await tryRead({ dataDir: dir, keyFile: asDir });
  t.equal((c.err as ZosError)?.code, 'TLOG_NO_KEY', `key path is a directory: ${describe(c.err)}`);
});

t.test('malformed key files: TLOG_KEY_FILE_INVALID, without echoing their content', async (t) => {
  const { dir, key } = await logDir(t);
  const k32 = randomBytes(32);
  const variants: Array<[string, string, Buffer[]]> = [
    ['empty file', '', []],
    ['random text', 'hello world\n', []],
    ['raw base64 key without the header', `${key.toString('base64')}\n`, [key]],
    ['raw hex key without the header', `${key.toString('hex')}\n`, [key]],
    ['header with a hex key', `zos-master-key v1 ${key.toString('hex')}\n`, [key]],
    ['header with a 16-byte key', `zos-master-key v1 ${k32.subarray(0, 16).toString('base64')}\n`, [k32.subarray(0, 16)]],
    ['header with a 33-byte key', `zos-master-key v1 ${Buffer.concat([key, Buffer.from([1])]).toString('base64')}\n`, [key]],
    ['wrong format version', `zos-master-key v2 ${key.toString('base64')}\n`, [key]],
  ];
  for (const [name, content, secrets] of variants) {
    const file = join(tempDir(t), 'bad.key');
    writeFileSync(file, content, { mode: 0o600 });
    const { err, events } = await tryRead({ dataDir: dir, keyFile: file, readOnly: true });
    t.equal((err as ZosError)?.code, 'TLOG_KEY_FILE_INVALID', `${name}: ${describe(err)}`);
    t.equal(events.length, 0, `${name}: no events`);
    assertNoKeyMaterial(t, err, [...secrets, key]);
  }
});

t.test('a freshly created key file is not echoed by errors about it either', async (t) => {
  const file = join(tempDir(t), 'k', 'master.key');
  const key = createKeyFile(file);
  let err: unknown = null;
  try {
    createKeyFile(file);
  } catch (e) {
    err = e;
  }
  t.equal((err as ZosError)?.code, 'TLOG_KEY_EXISTS', describe(err));
  assertNoKeyMaterial(t, err, [key]);
});
