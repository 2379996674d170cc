/**
 * The block store is a cache of the log: deleted, left behind by a process
 * that died, damaged on purpose or from another key, it comes back from the
 * log with the same content (checksums of exported images), loudly when
 * something was wrong with it. And it keeps no plaintext at rest.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Tlog, initDataDir, isZosError } from '../../tlog/index.ts';
import { NbdServer } from '../../nbd/index.ts';
import { VdiskManager, type VdiskInfo } from '../../vdisk/index.ts';
import { checkpointFile } from '../../vdisk/block-store.ts';
import { tempDir } from '../helpers/tmp.ts';
import { toolsSkip } from '../helpers/tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const RECORD_BYTES = 24;
const SLOT_OVERHEAD = 24 + 16; // nonce + tag

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runAsync(cmd: string, args: string[], timeoutMs = 120_000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A log, a manager with its warnings, and a way to close and reopen both. */
class Host {
  readonly dataDir: string;
  readonly scratch: string;
  log!: Tlog;
  m!: VdiskManager;
  readonly warnings: string[] = [];

  constructor(t: Test) {
    this.dataDir = tempDir(t);
    initDataDir(this.dataDir);
    this.scratch = tempDir(t);
    t.teardown(() => this.close());
  }

  async open(): Promise<VdiskManager> {
    this.log = await Tlog.open({ dataDir: this.dataDir });
    this.m = await VdiskManager.open(this.log, { onWarning: (w) => this.warnings.push(w) });
    return this.m;
  }

  async close(): Promise<void> {
    await this.m?.close();
    await this.log?.close();
  }

  async reopen(): Promise<VdiskManager> {
    await this.close();
    this.warnings.length = 0;
    return this.open();
  }

  viewOf(name: string): string {
    return this.m.viewDir(name);
  }

  async checksum(name: string, target?: { snapshot: string } | { position: bigint }): Promise<string> {
    const f = join(this.scratch, `${name}-${randomBytes(4).toString('hex')}.img`);
    await this.m.export(name, f, target);
    const sum = sha256(readFileSync(f));
    rmSync(f);
    return sum;
  }
}

/** A vdisk with some history: data, sub-block writes, zeroes, a snapshot, a rollback and a roll forward. */
async function populate(m: VdiskManager, name: string, size = 8 * MiB, blockSize = 4096): Promise<void> {
  await m.create(name, size, blockSize);
  const vd = await m.get(name);
  await vd.write(0, randomBytes(size / 8), false);
  await vd.write((3 * size) / 8 + 123, randomBytes(5000), false);
  await vd.flush();
  await m.snapshot(name, 'one');
  await vd.write(size / 16, randomBytes(size / 8), false);
  await vd.writeZeroes(100 * KiB, 50 * KiB, false);
  await vd.trim(size - 128 * KiB, 64 * KiB, true);
  const before = (await m.rollback(name, { snapshot: 'one' })).position;
  await m.rollback(name, { position: before - 1n });
  await vd.write(size - 3000, randomBytes(3000), true);
}

interface Record24 {
  block: number;
  position: number;
  slot: number;
}

function readIndex(dir: string): Record24[] {
  const b = readFileSync(join(dir, 'history.idx'));
  const out: Record24[] = [];
  for (let o = 0; o + RECORD_BYTES <= b.length; o += RECORD_BYTES) {
    out.push({ block: Number(b.readBigUInt64LE(o)), position: Number(b.readBigUInt64LE(o + 8)), slot: Number(b.readBigUInt64LE(o + 16)) - 1 });
  }
  return out;
}

/** The slot holding the current content of `block` (its newest index record). */
function currentSlot(dir: string, block: number): number {
  const recs = readIndex(dir).filter((r) => r.block === block);
  if (recs.length === 0) throw new Error(`block ${block} has no record`);
  return recs.at(-1)!.slot;
}

function allFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...allFiles(p));
    else out.push(p);
  }
  return out;
}

/** Files (relative path) that hold `needle` as UTF-8, UTF-16, hex or base64. */
function filesHolding(dir: string, needle: string, except: string[] = []): string[] {
  const forms = [Buffer.from(needle, 'utf8'), Buffer.from(needle, 'utf16le'), Buffer.from(Buffer.from(needle).toString('hex')), Buffer.from(Buffer.from(needle).toString('base64').slice(0, -4))];
  return allFiles(dir)
    .filter((p) => !except.includes(p))
    .filter((p) => {
      const b = readFileSync(p);
      return forms.some((f) => b.includes(f));
    })
    .map((p) => relative(dir, p));
}

t.test('delete every view, reopen: the same content, snapshots and history index, from the log alone', async (t) => {
  const h = new Host(t);
  const m = await h.open();
  await populate(m, 'a');
  await populate(m, 'b', 2 * MiB, 512);
  await m.clone('a', 'c', { snapshot: 'one' });
  await (await m.get('c')).write(MiB, randomBytes(10 * KiB), true);
  await populate(m, 'deleted');
  await m.delete('deleted');
  const names = ['a', 'b', 'c'];
  const before = new Map<string, { now: string; snap: string | null; info: VdiskInfo }>();
  for (const n of names) {
    const info = await m.info(n);
    before.set(n, { now: await h.checksum(n), snap: info.snapshots.length ? await h.checksum(n, { snapshot: 'one' }) : null, info });
  }
  t.not(before.get('a')!.now, before.get('a')!.snap, 'the snapshot and the current state differ (the check below means something)');

  await h.close();
  const views = h.log.viewDir('vdisk');
  t.ok(statSync(views).isDirectory(), 'the views exist before');
  rmSync(views, { recursive: true, force: true });
  const m2 = await h.open();
  for (const n of names) {
    const b = before.get(n)!;
    t.equal(await h.checksum(n), b.now, `${n}: same checksum after the rebuild`);
    if (b.snap) t.equal(await h.checksum(n, { snapshot: 'one' }), b.snap, `${n}: same checksum at its snapshot`);
    const info = await m2.info(n);
    t.same(info, b.info, `${n}: same info (position, version, snapshots, slots, history records)`);
  }
  await t.rejects(m2.info('deleted'), { code: 'VDISK_NOT_FOUND' }, 'the deleted vdisk stays deleted');
  t.same(h.warnings, [], 'a missing view is rebuilt without a warning');

  // An explicit rebuild of an open vdisk gives the same again.
  const r = await m2.rebuild('a');
  t.same(r, before.get('a')!.info);
  t.equal(await h.checksum('a'), before.get('a')!.now);
  await t.rejects(m2.rebuild('never-was'), { code: 'VDISK_NOT_FOUND' });
});

t.test('rebuilt views serve the same bytes to a real client', { skip: toolsSkip(['nbdcopy', 'qemu-io']) }, async (t) => {
  const h = new Host(t);
  let m = await h.open();
  await m.create('disk', 32 * MiB);
  const src = join(h.scratch, 'src.img');
  const bytes = randomBytes(32 * MiB);
  bytes.fill(0, 8 * MiB, 12 * MiB);
  writeFileSync(src, bytes);
  const serve = async (mm: VdiskManager): Promise<{ server: NbdServer; uri: string }> => {
    const server = new NbdServer({ exports: mm });
    mm.onDisconnect = (n) => server.disconnectExport(n);
    const { port } = await server.listen(0);
    return { server, uri: `nbd://127.0.0.1:${port}/disk` };
  };
  let s = await serve(m);
  let r = await runAsync('nbdcopy', ['--flush', src, s.uri]);
  t.equal(r.code, 0, r.stderr);
  r = await runAsync('qemu-io', ['-f', 'raw', '-t', 'writeback', '-c', 'write -P 0x3c 1000 5000', '-c', 'flush', s.uri]);
  t.equal(r.code, 0, r.stderr);
  bytes.fill(0x3c, 1000, 6000);
  await s.server.close();
  await h.close();
  rmSync(h.log.viewDir('vdisk'), { recursive: true, force: true });

  m = await h.open();
  s = await serve(m);
  t.teardown(() => s.server.close());
  const out = join(h.scratch, 'out.img');
  r = await runAsync('nbdcopy', [s.uri, out]);
  t.equal(r.code, 0, r.stderr);
  t.equal(sha256(readFileSync(out)), sha256(bytes), 'nbdcopy reads back the same bytes from the rebuilt view');
});

/** A child process that writes through the manager API, reports its export checksum, and dies without closing anything. */
const CHILD_SOURCE = (root: string): string => `
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Tlog } from ${JSON.stringify(pathToFileURL(join(root, 'tlog/index.ts')).href)};
import { VdiskManager } from ${JSON.stringify(pathToFileURL(join(root, 'vdisk/index.ts')).href)};
const [dataDir, how, out] = process.argv.slice(2);
const log = await Tlog.open({ dataDir });
const m = await VdiskManager.open(log);
await m.create('crashy', 16 << 20);
const vd = await m.get('crashy');
await vd.write(0, randomBytes(4 << 20), false);
await vd.flush();
await m.snapshot('crashy', 'mid');
await vd.write(1 << 20, randomBytes(2 << 20), false);
await vd.write(10 << 20, randomBytes(123457), false);
await vd.writeZeroes(2 << 20, 100000, false);
for (let i = 0; i < 200; i++) await vd.write((i * 7919 * 512) % ((16 << 20) - 4096), randomBytes(700), false);
// export drains every write into the log and the block store; no checkpoint is written after it.
await m.export('crashy', out);
const sum = createHash('sha256').update(readFileSync(out)).digest('hex');
const info = await m.info('crashy');
process.stdout.write(JSON.stringify({ sum, position: String(info.position), slots: info.slots }) + '\\n', () => {
  if (how === 'kill') process.kill(process.pid, 'SIGKILL');
  else process.exit(0);
});
`;

for (const how of ['exit', 'kill'] as const) {
  t.test(`a process that ${how === 'exit' ? 'exits' : 'is killed'} without closing: reopening replays the log to the same content`, async (t) => {
    const h = new Host(t);
    const childFile = join(h.scratch, 'child.ts');
    writeFileSync(childFile, CHILD_SOURCE(fileURLToPath(new URL('../../', import.meta.url))));
    const r = await runAsync(process.execPath, [childFile, h.dataDir, how, join(h.scratch, 'child.img')]);
    if (how === 'kill') t.equal(r.signal, 'SIGKILL', `the child was killed: ${r.stderr}`);
    else t.equal(r.code, 0, `the child exited: ${r.stderr}`);
    const reported = JSON.parse(r.stdout) as { sum: string; position: string; slots: number };

    const m = await h.open();
    const view = h.viewOf('crashy');
    const { ck, problem } = checkpointFile.read(view, h.log.viewKey('vdisk\0crashy'));
    t.equal(problem, null, 'the checkpoint the child left is readable');
    t.ok(ck && ck.slots < reported.slots, `the view's checkpoint (${ck?.slots} slots) is behind what the child wrote (${reported.slots})`);
    t.ok(statSync(join(view, 'blocks.dat')).size > (ck?.slots ?? 0) * (4096 + SLOT_OVERHEAD), 'blocks.dat holds bytes after its checkpoint');

    t.equal(await h.checksum('crashy'), reported.sum, 'the same content as the child exported');
    const info = await m.info('crashy');
    t.equal(String(info.position), reported.position, 'caught up to the same position');
    t.equal(info.slots, reported.slots, 'the same number of block versions');
    t.same(info.snapshots.map((s) => s.name), ['mid']);
    t.same(h.warnings, [], 'an uncheckpointed tail is replayed without a warning');
    // And once more from nothing.
    await m.rebuild('crashy');
    t.equal(await h.checksum('crashy'), reported.sum, 'and the same after a full rebuild');
  });
}

t.test('a damaged block: reads fail with VDISK_VIEW_CORRUPT and the way out; rebuild repairs it', { skip: toolsSkip(['qemu-io']) }, async (t) => {
  const h = new Host(t);
  let m = await h.open();
  await m.create('dmg', 4 * MiB);
  const vd = await m.get('dmg');
  const content = randomBytes(64 * KiB);
  await vd.write(0, content, true);
  await vd.write(MiB, Buffer.alloc(8192, 0x55), true);
  const sum = await h.checksum('dmg');
  await h.close();

  const dir = h.viewOf('dmg');
  const slot = currentSlot(dir, 3);
  const dat = readFileSync(join(dir, 'blocks.dat'));
  dat[slot * (4096 + SLOT_OVERHEAD) + 24 + 1000]! ^= 0x01; // one bit of block 3's ciphertext
  writeFileSync(join(dir, 'blocks.dat'), dat);

  m = await h.open();
  const server = new NbdServer({ exports: m, onError: () => undefined });
  m.onDisconnect = (n) => server.disconnectExport(n);
  const { port } = await server.listen(0);
  t.teardown(() => server.close());
  const uri = `nbd://127.0.0.1:${port}/dmg`;

  const v = await m.get('dmg');
  t.ok((await v.read(0, 3 * 4096)).equals(content.subarray(0, 3 * 4096)), 'undamaged blocks still read');
  try {
    await v.read(3 * 4096 + 10, 100);
    t.fail('reading the damaged block should fail');
  } catch (err) {
    t.ok(isZosError(err, 'VDISK_VIEW_CORRUPT'), `VDISK_VIEW_CORRUPT (got ${(err as Error).message})`);
    t.match((err as Error).message, /zos vdisk rebuild/, 'the message says what to do');
    t.match((err as Error).message, /block 3\b/, 'and names the block');
  }
  await t.rejects(v.write(3 * 4096 + 1, Buffer.from('x'), false), { code: 'VDISK_VIEW_CORRUPT' }, 'a sub-block write onto it cannot read-modify-write');
  await t.rejects(m.export('dmg', join(h.scratch, 'x.img')), { code: 'VDISK_VIEW_CORRUPT' }, 'export fails too');
  const q = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read 12k 4k', uri]);
  t.match(q.stdout + q.stderr, /read failed: Input\/output error/, 'a real client gets EIO');
  const ok = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0x55 1M 8k', uri]);
  t.equal(ok.code, 0, 'and can still read the other blocks');
  t.notMatch(ok.stdout + ok.stderr, /failed/);

  await m.rebuild('dmg');
  t.equal(await h.checksum('dmg'), sum, 'rebuild repairs it');
  const after = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read 12k 4k', uri]);
  t.equal(after.code, 0, after.stderr);
  t.notMatch(after.stdout + after.stderr, /failed/, 'a real client reads it again');
});

t.test('moved ciphertexts are detected: each slot is bound to its block and its place', async (t) => {
  const h = new Host(t);
  await h.open();
  await h.m.create('bind', MiB, 512);
  const vd = await h.m.get('bind');
  await vd.write(0, Buffer.alloc(512, 0xa0), true);
  await vd.write(512, Buffer.alloc(512, 0xb0), true);
  await vd.write(4096, Buffer.alloc(512, 0xc0), true);
  await h.close();
  const dir = h.viewOf('bind');
  const slotSize = 512 + SLOT_OVERHEAD;
  const s0 = currentSlot(dir, 0);
  const s1 = currentSlot(dir, 1);

  // Swap the two ciphertexts (each stays a valid ciphertext, in the wrong place).
  const dat = readFileSync(join(dir, 'blocks.dat'));
  const a = Buffer.from(dat.subarray(s0 * slotSize, (s0 + 1) * slotSize));
  dat.copy(dat, s0 * slotSize, s1 * slotSize, (s1 + 1) * slotSize);
  a.copy(dat, s1 * slotSize);
  writeFileSync(join(dir, 'blocks.dat'), dat);
  await h.open();
  let v = await h.m.get('bind');
  await t.rejects(v.read(0, 512), { code: 'VDISK_VIEW_CORRUPT' }, 'block 0 with block 1\'s slot content');
  await t.rejects(v.read(512, 512), { code: 'VDISK_VIEW_CORRUPT' }, 'block 1 with block 0\'s slot content');
  t.ok((await v.read(4096, 512)).equals(Buffer.alloc(512, 0xc0)), 'the untouched block still reads');
  await h.m.rebuild('bind');
  v = await h.m.get('bind');
  t.ok((await v.read(0, 1024)).equals(Buffer.concat([Buffer.alloc(512, 0xa0), Buffer.alloc(512, 0xb0)])), 'rebuilt');
  await h.close();

  // Point block 0's index record at block 8's slot (a valid slot of another block).
  const idx = readFileSync(join(dir, 'history.idx'));
  const recs = readIndex(dir);
  const r0 = recs.findIndex((r) => r.block === 0);
  const s8 = recs.find((r) => r.block === 8)!.slot;
  idx.writeBigUInt64LE(BigInt(s8 + 1), r0 * RECORD_BYTES + 16);
  writeFileSync(join(dir, 'history.idx'), idx);
  await h.open();
  v = await h.m.get('bind');
  await t.rejects(v.read(0, 512), { code: 'VDISK_VIEW_CORRUPT' }, "an index record pointing at another block's slot");
  t.ok((await v.read(4096, 512)).equals(Buffer.alloc(512, 0xc0)), 'block 8 itself reads');
});

/** Re-seal the view's checkpoint (under `key`) after changing it. */
function editCheckpoint(dir: string, key: Buffer, edit: (ck: NonNullable<ReturnType<typeof checkpointFile.read>['ck']>) => void, sealWith = key): void {
  const { ck, problem } = checkpointFile.read(dir, key);
  if (!ck) throw new Error(`no readable checkpoint in ${dir}: ${problem}`);
  edit(ck);
  checkpointFile.write(dir, sealWith, ck);
}

const PREFIX = /rebuilding the block store of vdisk v from the log: /;
const because = (why: string): RegExp => new RegExp(PREFIX.source + why);

/** Damage a closed view in one way, reopen, and expect the content back and one warning with the reason. */
const damages: Array<[string, (dir: string, key: Buffer) => void, RegExp]> = [
  ['a truncated history index', (dir) => truncateSync(join(dir, 'history.idx'), statSync(join(dir, 'history.idx')).size - 7), because('it is shorter than its checkpoint')],
  ['a truncated blocks file', (dir) => truncateSync(join(dir, 'blocks.dat'), 1000), because('it is shorter than its checkpoint')],
  [
    'a history index with a record out of range',
    (dir) => {
      const idx = readFileSync(join(dir, 'history.idx'));
      idx.writeBigUInt64LE(1n << 40n, RECORD_BYTES * 2);
      writeFileSync(join(dir, 'history.idx'), idx);
    },
    because('its history index is damaged at record 2'),
  ],
  ['a checkpoint sealed under another key', (dir, key) => editCheckpoint(dir, key, () => undefined, randomBytes(32)), because('its checkpoint was written under another key, or altered')],
  [
    'a checkpoint altered without the key',
    (dir) => {
      const outer = JSON.parse(readFileSync(join(dir, 'checkpoint.json'), 'utf8')) as { sealed: string };
      const sealed = Buffer.from(outer.sealed, 'base64');
      sealed[5]! ^= 0x20;
      outer.sealed = sealed.toString('base64');
      writeFileSync(join(dir, 'checkpoint.json'), JSON.stringify(outer));
    },
    because('its checkpoint was written under another key, or altered'),
  ],
  ['a checkpoint ahead of the log', (dir, key) => editCheckpoint(dir, key, (ck) => void (ck.streamVersion = '1000')), because('it is ahead of the log')],
  [
    'an unsupported format version',
    (dir) => {
      const outer = JSON.parse(readFileSync(join(dir, 'checkpoint.json'), 'utf8')) as Record<string, unknown>;
      outer.version = 99;
      writeFileSync(join(dir, 'checkpoint.json'), JSON.stringify(outer));
    },
    because('its format version 99 is not supported'),
  ],
  ['a checkpoint that is not JSON', (dir) => writeFileSync(join(dir, 'checkpoint.json'), '{"format":"zos-vdisk-view",\0\0garbage'), because('its checkpoint is unreadable')],
  ['a missing checkpoint next to the data', (dir) => rmSync(join(dir, 'checkpoint.json')), because('its checkpoint is missing')],
];

for (const [what, damage, warning] of damages) {
  t.test(`${what}: rebuilt automatically, with a warning`, async (t) => {
    const h = new Host(t);
    await h.open();
    await populate(h.m, 'v');
    const sum = await h.checksum('v');
    const snapSum = await h.checksum('v', { snapshot: 'one' });
    const info = await h.m.info('v'); // after the exports: info() reports what the block store has applied, which lags a FUA write
    const key = h.log.viewKey('vdisk\0v');
    await h.close();
    damage(h.viewOf('v'), key);
    await h.open();
    t.equal(await h.checksum('v'), sum, 'same content');
    t.equal(await h.checksum('v', { snapshot: 'one' }), snapSum, 'same content at the snapshot');
    t.same(await h.m.info('v'), info, 'same size, position, snapshots, block versions and records');
    t.equal(h.warnings.length, 1, `one warning (got ${JSON.stringify(h.warnings)})`);
    t.match(h.warnings[0] ?? '', warning);
  });
}

t.test("a view copied from another log (same master key, same vdisk name) is not taken for this vdisk's", async (t) => {
  // Host A: vdisk v, 2 MiB, three writes of 0xaa. Host B: same key, vdisk v, 4 MiB, four writes of 0xbb.
  const a = new Host(t);
  await a.open();
  await a.m.create('v', 2 * MiB);
  for (let i = 0; i < 3; i++) await (await a.m.get('v')).write(i * 4096, Buffer.alloc(4096, 0xaa), true);
  await a.close();

  const b = new Host(t);
  writeFileSync(join(b.dataDir, 'master.key'), readFileSync(join(a.dataDir, 'master.key')), { mode: 0o600 });
  rmSync(join(b.dataDir, 'zos.json'));
  initDataDir(b.dataDir);
  await b.open();
  await b.m.create('v', 4 * MiB);
  for (let i = 0; i < 4; i++) await (await b.m.get('v')).write(MiB + i * 4096, Buffer.alloc(4096, 0xbb), true);
  const expected = Buffer.alloc(4 * MiB);
  expected.fill(0xbb, MiB, MiB + 4 * 4096);
  const f = join(b.scratch, 'v.img');
  await b.m.export('v', f);
  t.ok(readFileSync(f).equals(expected), "B's vdisk before");
  await b.close();

  // An operator restores the wrong backup: A's view into B's data directory.
  rmSync(b.viewOf('v'), { recursive: true, force: true });
  mkdirSync(b.viewOf('v'), { recursive: true, mode: 0o700 });
  for (const file of ['blocks.dat', 'history.idx', 'checkpoint.json']) writeFileSync(join(b.viewOf('v'), file), readFileSync(join(a.viewOf('v'), file)), { flag: 'w', mode: 0o600 });
  await b.open();
  const info = await b.m.info('v');
  t.equal(info.size, 4 * MiB, "B's vdisk keeps its size");
  await b.m.export('v', f);
  t.ok(readFileSync(f).equals(expected), "B's vdisk keeps its content");
  t.match(b.warnings, [PREFIX], 'and the foreign view is reported and rebuilt');
});

t.test('no plaintext at rest: block contents never reach the data directory unencrypted', { skip: toolsSkip(['nbdcopy']) }, async (t) => {
  const MARKER = 'ZOS-PLAINTEXT-MARKER';
  const h = new Host(t);
  const m = await h.open();
  await m.create('secret', 16 * MiB);
  await m.create('secret-small', MiB, 512);
  const server = new NbdServer({ exports: m });
  m.onDisconnect = (n) => server.disconnectExport(n);
  const { port } = await server.listen(0);
  t.teardown(() => server.close());

  // Whole blocks of the marker from a real client, a sub-block marker, a repetitive (compressible) pattern, a clone, a rollback.
  const src = join(h.scratch, 'marker.img');
  const pattern = Buffer.alloc(16 * MiB);
  pattern.fill(`${MARKER}-`, 0, 4 * MiB);
  writeFileSync(src, pattern);
  const r = await runAsync('nbdcopy', ['--flush', src, `nbd://127.0.0.1:${port}/secret`]);
  t.equal(r.code, 0, r.stderr);
  const vd = await m.get('secret-small');
  await vd.write(100, Buffer.from(MARKER), true);
  await vd.write(4096, Buffer.from(MARKER.repeat(500)), true);
  await m.snapshot('secret', 'snap');
  await (await m.get('secret')).write(MiB + 7, Buffer.from(`${MARKER}!`), true);
  await m.clone('secret', 'secret-clone', { snapshot: 'snap' });
  await m.rollback('secret', { snapshot: 'snap' });

  // The content really is there (read back with the key).
  t.ok((await (await m.get('secret-clone')).read(0, MARKER.length)).equals(Buffer.from(MARKER)), 'the marker is in the vdisk');
  t.ok((await vd.read(100, MARKER.length)).equals(Buffer.from(MARKER)));

  const key = join(h.dataDir, 'master.key');
  const viewFiles = allFiles(h.log.viewDir('vdisk'));
  t.ok(viewFiles.some((p) => p.endsWith('blocks.dat')) && viewFiles.some((p) => p.endsWith('history.idx')), 'the views are among the files searched');
  t.ok(allFiles(h.dataDir).reduce((n, p) => n + statSync(p).size, 0) > 8 * MiB, 'the data directory holds the data');
  t.same(filesHolding(h.dataDir, MARKER, [key]), [], 'no file of the running data directory holds the marker');
  await h.close();
  t.same(filesHolding(h.dataDir, MARKER, [key]), [], 'nor after closing');

  // Method check: the search finds the marker where it is.
  t.same(filesHolding(h.scratch, MARKER), ['marker.img']);

  for (const p of allFiles(h.log.viewDir('vdisk'))) t.equal(statSync(p).mode & 0o077, 0, `${relative(h.dataDir, p)} is private to its owner`);
});

t.test('snapshot names are not kept in plaintext in the views (the log keeps them encrypted)', async (t) => {
  const SNAP = 'SNAPSHOT-NAME-SECRET-42';
  const h = new Host(t);
  const m = await h.open();
  await m.create('s', MiB);
  await m.snapshot('s', SNAP);
  t.same((await m.info('s')).snapshots.map((s) => s.name), [SNAP]);
  await h.close();
  t.same(filesHolding(join(h.dataDir, 'log'), SNAP), [], 'the log does not hold it in plaintext (method check on the log)');
  t.same(filesHolding(h.dataDir, SNAP, [join(h.dataDir, 'master.key')]), [], 'no file of the data directory holds the snapshot name');
});

t.test('vdisk names are not visible in the data directory (view directories are keyed hashes)', async (t) => {
  const NAME = 'VDISK-NAME-SECRET-7';
  const h = new Host(t);
  const m = await h.open();
  await m.create(NAME, MiB);
  await h.close();
  const paths = allFiles(h.dataDir).map((p) => relative(h.dataDir, p));
  t.same(paths.filter((p) => p.includes(NAME)), [], 'no path names the vdisk');
});
