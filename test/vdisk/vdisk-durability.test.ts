/**
 * FLUSH and FUA at the API level: a Vdisk from VdiskManager.get used directly
 * as a BlockDevice. Once flush() (or a FUA write) resolves, a second reader of
 * the log finds those writes in the vdisk's stream; writes never flushed may
 * be missing after a crash, but what survives is always the state after some
 * prefix of the writes — never a torn block.
 *
 * The second reader decodes the vdisk's events itself (replayStream below), so
 * the checks do not depend on the block store under test.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Tlog, initDataDir, isZosError } from '../../tlog/index.ts';
import { VdiskManager, type Vdisk } from '../../vdisk/index.ts';
import { tempDir, waitFor } from '../helpers/tmp.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

/**
 * The vdisk's content as a fresh, read-only reader of the log rebuilds it from
 * the events alone (VdiskCreated and VdiskBlocksWritten; a rollback is not
 * expected in these tests). Also returns the flushed flag of each write event.
 */
async function replayStream(dataDir: string, name: string): Promise<{ image: Buffer; flushed: boolean[]; events: number }> {
  const reader = await Tlog.open({ dataDir, readOnly: true });
  try {
    let image = Buffer.alloc(0);
    let bs = 0;
    const flushed: boolean[] = [];
    let events = 0;
    for await (const e of reader.readStream(`vdisk-${name}`)) {
      events++;
      switch (e.type) {
        case 'VdiskCreated': {
          const d = e.data as { size: number; blockSize: number };
          image = Buffer.alloc(d.size);
          bs = d.blockSize;
          flushed.length = 0;
          break;
        }
        case 'VdiskBlocksWritten': {
          const d = e.data as { blocks: Buffer; data: Buffer; zeroRanges: Buffer; flushed: boolean };
          for (let i = 0; i < d.blocks.length / 8; i++) d.data.copy(image, Number(d.blocks.readBigUInt64LE(i * 8)) * bs, i * bs, (i + 1) * bs);
          for (let i = 0; i < d.zeroRanges.length / 16; i++) {
            const first = Number(d.zeroRanges.readBigUInt64LE(i * 16));
            const count = Number(d.zeroRanges.readBigUInt64LE(i * 16 + 8));
            image.fill(0, first * bs, (first + count) * bs);
          }
          flushed.push(d.flushed);
          break;
        }
        case 'VdiskSnapshotted':
          break;
        default:
          throw new Error(`replayStream does not model ${e.type}`);
      }
    }
    return { image, flushed, events };
  } finally {
    await reader.close();
  }
}

async function setup(t: Test): Promise<{ dataDir: string; log: Tlog; m: VdiskManager; warnings: string[]; disconnects: string[] }> {
  const dataDir = tempDir(t);
  initDataDir(dataDir);
  const log = await Tlog.open({ dataDir });
  const warnings: string[] = [];
  const disconnects: string[] = [];
  const m = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
  m.onDisconnect = (n) => disconnects.push(n);
  t.teardown(async () => {
    await m.close().catch(() => undefined);
    await log.close();
  });
  return { dataDir, log, m, warnings, disconnects };
}

/** Random writes, zeroes and trims (some issued concurrently), mirrored into `model`. */
async function randomBurst(vd: Vdisk, model: Buffer, n: number): Promise<void> {
  const pending: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(Math.random() * (Math.random() < 0.2 ? 300 * KiB : 9000));
    const off = Math.floor(Math.random() * (model.length - len));
    const r = Math.random();
    if (r < 0.75) {
      const data = randomBytes(len);
      pending.push(vd.write(off, data, false));
      data.copy(model, off);
    } else if (r < 0.9) {
      pending.push(vd.writeZeroes(off, len, false));
      model.fill(0, off, off + len);
    } else {
      pending.push(vd.trim(off, len, false));
      model.fill(0, off, off + len);
    }
    if (Math.random() < 0.5) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}

t.test('once flush() resolves, a second reader of the log has every write before it', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('d', 8 * MiB);
  const vd = await m.get('d');
  const model = Buffer.alloc(8 * MiB);
  for (let round = 0; round < 6; round++) {
    await randomBurst(vd, model, 40);
    t.ok((await vd.read(0, model.length)).equals(model), `round ${round}: the vdisk reads the model before any flush`);
    await vd.flush();
    const { image, flushed } = await replayStream(dataDir, 'd');
    t.ok(image.equals(model), `round ${round}: the log holds every write (${sha(image)} vs ${sha(model)})`);
    t.ok(flushed.length > round, `round ${round}: ${flushed.length} write events so far`);
  }
  await vd.flush();
  t.pass('a flush with nothing new resolves');
  await vd.read(0, 4096);
  await vd.flush();
  t.pass('a flush after only reads resolves');
});

t.test('a FUA write, zero or trim is in the log when it resolves', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('f', 4 * MiB, 512);
  const vd = await m.get('f');
  const a = randomBytes(10_000);
  await vd.write(12_345, a, true);
  let { image } = await replayStream(dataDir, 'f');
  t.ok(image.subarray(12_345, 22_345).equals(a), 'the FUA write is in the log');

  const b = randomBytes(MiB);
  await vd.write(MiB, b, false);
  await vd.writeZeroes(MiB + 1000, 5000, true);
  ({ image } = await replayStream(dataDir, 'f'));
  t.ok(image.subarray(MiB + 1000, MiB + 6000).equals(Buffer.alloc(5000)), 'the FUA zeroes are in the log');
  t.ok(image.subarray(MiB, MiB + 1000).equals(b.subarray(0, 1000)), 'the partial blocks around them kept their data');
  t.ok(image.subarray(MiB + 6000, MiB + 7000).equals(b.subarray(6000, 7000)));

  await vd.trim(MiB + 100 * KiB, 200 * KiB + 1, true);
  ({ image } = await replayStream(dataDir, 'f'));
  t.ok(image.subarray(MiB + 100 * KiB, MiB + 300 * KiB + 1).equals(Buffer.alloc(200 * KiB + 1)), 'the FUA trim is in the log, as zeroes');
  t.ok(image.subarray(MiB + 300 * KiB + 1, 2 * MiB).equals(b.subarray(300 * KiB + 1)), 'the rest is untouched');
});

t.test('the flushed flag marks only batches a FLUSH or FUA closed', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('flag', MiB);
  const vd = await m.get('flag');
  const events = async (): Promise<boolean[]> => (await replayStream(dataDir, 'flag')).flushed;

  await vd.write(0, Buffer.alloc(4096, 1), false);
  await vd.flush();
  t.same(await events(), [true], 'a write then FLUSH: one batch, marked');
  await vd.write(4096, Buffer.alloc(4096, 2), true);
  t.same(await events(), [true, true], 'a FUA write: marked');

  // A FLUSH that arrives while its writes are already being appended has no batch to mark...
  await vd.write(8192, Buffer.alloc(4096, 3), false);
  await new Promise((r) => setTimeout(r, 20)); // the write is cut (a partial batch waits up to 5 ms) and appended or being appended
  await vd.flush();
  t.same((await events()).slice(2), [false], 'the batch cut before the FLUSH is not marked');
  // ...and must not mark the next batch, which no client asked to be durable.
  await vd.write(12288, Buffer.alloc(4096, 4), false);
  await waitFor(async () => (await events()).length === 4, 10_000, 'the unflushed write to be logged');
  t.same((await events()).slice(3), [false], 'a later unflushed batch is not marked flushed');
});

t.test('a caller may reuse its buffer once write() resolves', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('reuse', MiB);
  const vd = await m.get('reuse');
  const buf = Buffer.alloc(8192, 0x11); // a buffer of its own (not a slice of a pool)
  await vd.write(0, buf, false);
  buf.fill(0x22); // e.g. the next request read into the same I/O buffer
  t.ok((await vd.read(0, 8192)).equals(Buffer.alloc(8192, 0x11)), 'the vdisk still reads what was written');
  await vd.flush();
  t.ok((await replayStream(dataDir, 'reuse')).image.subarray(0, 8192).equals(Buffer.alloc(8192, 0x11)), 'and the log holds what was written');
});

t.test('concurrent overlapping writes: the last one issued wins, in the vdisk and in the log', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('c', MiB, 4096);
  const vd = await m.get('c');
  const model = Buffer.alloc(MiB);
  const all: Promise<void>[] = [];
  for (let i = 0; i < 300; i++) {
    const off = Math.floor(Math.random() * 60) * 1000;
    const len = 1 + Math.floor(Math.random() * 20_000);
    if (i % 7 === 3) {
      all.push(vd.writeZeroes(off, len, i % 11 === 0));
      model.fill(0, off, off + len);
    } else {
      all.push(vd.write(off, Buffer.alloc(len, i & 0xff), i % 13 === 0));
      model.fill(i & 0xff, off, off + len);
    }
  }
  await Promise.all(all);
  t.ok((await vd.read(0, MiB)).equals(model), 'the vdisk reads the last write of each byte');
  await vd.flush();
  t.ok((await replayStream(dataDir, 'c')).image.equals(model), 'and so does the log');
});

t.test('a flush is not starved by writes that keep coming, and covers exactly what came before it', async (t) => {
  const { dataDir, m } = await setup(t);
  await m.create('s', 4 * MiB);
  const vd = await m.get('s');
  const before = randomBytes(MiB);
  await vd.write(0, before, false);
  let done = false;
  const flushed = vd.flush().then(() => (done = true));
  let after = 0;
  while (!done && after < 20_000) {
    await vd.write(2 * MiB + (after % 256) * 4096, randomBytes(4096), false);
    after++;
    if (after % 16 === 0) await new Promise((r) => setImmediate(r));
  }
  await flushed;
  t.ok(done, `the flush resolved while ${after} more writes kept coming`);
  t.ok(after < 20_000, 'before the writer gave up');
  t.ok((await replayStream(dataDir, 's')).image.subarray(0, MiB).equals(before), 'the writes before the flush are in the log');
  await vd.flush();
});

t.test('a write beyond the end of the vdisk is refused, and never makes the vdisk unreadable', async (t) => {
  const { m } = await setup(t);
  await m.create('edge', MiB);
  const vd = await m.get('edge');
  await vd.write(0, Buffer.alloc(4096, 9), true);
  await t.rejects(vd.write(MiB - 100, Buffer.alloc(4096, 1), false), { code: 'VDISK_INVALID' }, 'a write past the end is refused');
  await t.rejects(vd.writeZeroes(MiB, 4096, false), { code: 'VDISK_INVALID' }, 'zeroes past the end are refused');
  await vd.flush().catch(() => undefined);
  const info = await m.rebuild('edge').catch((err: unknown) => err as Error);
  t.notOk(info instanceof Error, `the vdisk can still be replayed from the log (${info instanceof Error ? info.message : 'ok'})`);
});

// Regression: at ddee91f one append took every pending block, so two 32 MiB writes issued together sealed to
// more than the log's 64 MiB entry limit and the vdisk failed (fixed by bounded appends in 7b4b74b).
t.test('two concurrent 32 MiB writes (the NBD maximum payload) are logged', async (t) => {
  const { dataDir, m, warnings } = await setup(t);
  await m.create('big', 128 * MiB);
  const vd = await m.get('big');
  const first = randomBytes(MiB);
  await vd.write(0, first, true);
  const a = randomBytes(32 * MiB);
  const b = randomBytes(32 * MiB);
  // Issued together, as an NBD client with two writes in flight would.
  await Promise.all([vd.write(MiB, a, false), vd.write(33 * MiB, b, false)]);
  try {
    await vd.flush();
    t.pass('flush resolves');
  } catch (err) {
    t.fail(`flush fails: ${(err as Error).message}`);
  }
  t.same(warnings, [], 'no warning');
  const again = await m.get('big');
  const { image } = await replayStream(dataDir, 'big');
  t.ok(image.subarray(0, MiB).equals(first), 'the write flushed before is in the log');
  t.ok(image.subarray(MiB, 33 * MiB).equals(a) && image.subarray(33 * MiB, 65 * MiB).equals(b), 'both big writes are in the log');
  t.ok((await again.read(0, MiB)).equals(first), 'the vdisk still serves the flushed data');
});

t.test('when an append fails the vdisk stops, says so, and reopens from the log with every flushed write', async (t) => {
  const { dataDir, log, m, warnings, disconnects } = await setup(t);
  await m.create('fail', 4 * MiB);
  const vd = await m.get('fail');
  const flushedData = randomBytes(MiB);
  await vd.write(0, flushedData, false);
  await vd.flush();

  const real = log.appendToStream.bind(log);
  let failures = 0;
  (log as unknown as { appendToStream: typeof log.appendToStream }).appendToStream = async (stream, events, opts) => {
    if (stream === 'vdisk-fail' && failures === 0) {
      failures++;
      throw new Error('injected append failure');
    }
    return real(stream, events, opts);
  };
  t.teardown(() => {
    delete (log as unknown as { appendToStream?: unknown }).appendToStream;
  });
  await vd.write(2 * MiB, Buffer.alloc(4096, 0xee), false); // accepted into memory; its append fails in the background
  try {
    await vd.flush();
    t.fail('the flush should report the failed append');
  } catch (err) {
    t.ok(isZosError(err, 'VDISK_FAILED'), `VDISK_FAILED (got ${(err as Error).message})`);
    t.match((err as Error).message, /injected append failure/, 'with the cause');
    t.match((err as Error).message, /since the last completed FLUSH may be lost/, 'and what it means');
  }
  t.equal(failures, 1);
  t.match(warnings, [/vdisk fail: a write could not be logged/], 'the manager warned');
  t.same(disconnects, ['fail'], "the export's clients are disconnected");
  await t.rejects(vd.write(0, Buffer.alloc(10), false), { code: 'VDISK_FAILED' }, 'the stopped vdisk refuses writes');
  await t.rejects(vd.flush(), { code: 'VDISK_FAILED' }, 'and flushes');

  const reopened = await m.get('fail');
  t.not(reopened, vd, 'the next get() reopens the vdisk from the log');
  t.ok((await reopened.read(0, MiB)).equals(flushedData), 'every flushed write is there');
  const lost = await reopened.read(2 * MiB, 4096);
  t.ok(lost.equals(Buffer.alloc(4096)) || lost.equals(Buffer.alloc(4096, 0xee)), 'the unflushed write is either lost or whole');
  await reopened.write(3 * MiB, Buffer.alloc(4096, 0x31), true);
  const { image } = await replayStream(dataDir, 'fail');
  t.ok(image.subarray(3 * MiB, 3 * MiB + 4096).equals(Buffer.alloc(4096, 0x31)), 'the reopened vdisk logs writes again');
  t.ok(image.subarray(0, MiB).equals(flushedData));
});

// ------------------------------------------------------------ crashes

const SIZE = 4 * MiB;
const FLUSH_EVERY = 25;

/** The i-th write of the crash workload: deterministic, so the child and the checker agree. */
function writeOf(i: number, size: number): { off: number; len: number; zero: boolean } {
  let a = (Math.imul(i + 1, 0x9e3779b1) ^ 0x7f4a7c15) >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const len = 1 + Math.floor(next() * (next() < 0.2 ? 65536 : 6000));
  const off = Math.floor(next() * (size - len));
  return { off, len, zero: next() < 0.1 };
}

/** Write i's bytes: its number, repeated (so every byte says which write put it there). */
function contentOf(i: number, len: number): Buffer {
  const stamp = Buffer.alloc(4);
  stamp.writeUInt32LE(i + 1);
  return Buffer.alloc(len, stamp);
}

const CRASH_CHILD = (root: string): string => `
import { Tlog } from ${JSON.stringify(pathToFileURL(join(root, 'tlog/index.ts')).href)};
import { VdiskManager } from ${JSON.stringify(pathToFileURL(join(root, 'vdisk/index.ts')).href)};
const writeOf = ${writeOf.toString()};
const contentOf = ${contentOf.toString()};
const [dataDir, name, maxWrites, selfKillAt] = process.argv.slice(2).map((x, i) => (i < 2 ? x : Number(x)));
const log = await Tlog.open({ dataDir });
const m = await VdiskManager.open(log);
await m.create(name, ${SIZE});
const vd = await m.get(name);
process.stdout.write('ready\\n');
let inFlight = [];
for (let i = 0; i < maxWrites; i++) {
  const w = writeOf(i, ${SIZE});
  inFlight.push(w.zero ? vd.writeZeroes(w.off, w.len, false) : vd.write(w.off, contentOf(i, w.len), false));
  if (i === selfKillAt) process.kill(process.pid, 'SIGKILL');
  if (inFlight.length >= 8) await Promise.all(inFlight.splice(0));
  if ((i + 1) % ${FLUSH_EVERY} === 0) {
    await Promise.all(inFlight.splice(0));
    await vd.flush();
    process.stdout.write('F ' + (i + 1) + '\\n');
  }
}
process.stdout.write('done\\n');
setInterval(() => undefined, 1000); // wait to be killed
`;

interface CrashOpts {
  /** The child kills itself right after issuing this write. */
  selfKillAt?: number;
  /** We kill it when it reports this many flushes... */
  killAfterFlushes?: number;
  /** ...or this long after it is ready (any moment: mid-append, mid-checkpoint). */
  killAfterMs?: number;
}

/** Run the crash child until it dies; return the number of writes it reported durable. */
function crashChild(file: string, dataDir: string, name: string, opts: CrashOpts): Promise<{ flushedUpTo: number; stderr: string; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file, dataDir, name, '100000', String(opts.selfKillAt ?? -1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let flushedUpTo = 0;
    let flushes = 0;
    let buf = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith('F ')) {
          flushedUpTo = Number(line.slice(2));
          if (++flushes === opts.killAfterFlushes) child.kill('SIGKILL');
        }
        if (line === 'ready' && opts.killAfterMs !== undefined) setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs);
        if (line === 'done') child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('exit', (_code, signal) => {
      clearTimeout(guard);
      resolve({ flushedUpTo, stderr, signal });
    });
  });
}

/**
 * Check `found` block by block (4 KiB): each block must hold a version it had
 * after some number of writes j with flushedUpTo <= j <= maxWrites — every
 * flushed write is there, nothing is torn, nothing comes from beyond the end.
 * Also says whether the whole disk is the state after one prefix (stronger
 * than NBD promises for unflushed writes, so only reported).
 */
function checkBlocks(found: Buffer, flushedUpTo: number, maxWrites: number): { bad: number[]; prefixes: number[] } {
  const BS = 4096;
  const blocks = found.length / BS;
  const model = Buffer.alloc(found.length);
  const key = (b: Buffer): string => createHash('sha1').update(b).digest('hex');
  const allowed: Array<Set<string>> = [];
  const differs = new Uint8Array(blocks);
  let diff = 0;
  const recheck = (b: number): void => {
    const d = model.subarray(b * BS, (b + 1) * BS).equals(found.subarray(b * BS, (b + 1) * BS)) ? 0 : 1;
    diff += d - differs[b]!;
    differs[b] = d;
  };
  for (let b = 0; b < blocks; b++) recheck(b);
  const prefixes: number[] = diff === 0 ? [0] : [];
  const apply = (i: number): number[] => {
    const w = writeOf(i, found.length);
    if (w.zero) model.fill(0, w.off, w.off + w.len);
    else contentOf(i, w.len).copy(model, w.off);
    const touched: number[] = [];
    for (let b = Math.floor(w.off / BS); b <= Math.floor((w.off + w.len - 1) / BS); b++) {
      recheck(b);
      touched.push(b);
    }
    if (diff === 0) prefixes.push(i + 1);
    return touched;
  };
  for (let i = 0; i < flushedUpTo; i++) apply(i);
  for (let b = 0; b < blocks; b++) allowed.push(new Set([key(model.subarray(b * BS, (b + 1) * BS))]));
  for (let i = flushedUpTo; i < maxWrites; i++) for (const b of apply(i)) allowed[b]!.add(key(model.subarray(b * BS, (b + 1) * BS)));
  const bad: number[] = [];
  for (let b = 0; b < blocks; b++) if (!allowed[b]!.has(key(found.subarray(b * BS, (b + 1) * BS)))) bad.push(b);
  return { bad, prefixes };
}

t.test('a process killed while writing: every flushed write survives, and no block is torn', async (t) => {
  const dataDir = tempDir(t);
  initDataDir(dataDir);
  const scratch = tempDir(t);
  const file = join(scratch, 'crash-child.ts');
  writeFileSync(file, CRASH_CHILD(fileURLToPath(new URL('../../', import.meta.url))));

  const rounds: Array<{ name: string; opts: CrashOpts }> = [
    { name: 'self-kill-early', opts: { selfKillAt: 10 } },
    { name: 'self-kill-mid-batch', opts: { selfKillAt: 3 * FLUSH_EVERY + 7 } },
    { name: 'self-kill-after-flush', opts: { selfKillAt: 8 * FLUSH_EVERY } },
    { name: 'killed-after-4-flushes', opts: { killAfterFlushes: 4 } },
    { name: 'killed-after-20-flushes', opts: { killAfterFlushes: 20 } },
    { name: 'killed-after-60-flushes', opts: { killAfterFlushes: 60 } },
    { name: 'killed-at-random-1', opts: { killAfterMs: 30 + Math.floor(Math.random() * 300) } },
    { name: 'killed-at-random-2', opts: { killAfterMs: 30 + Math.floor(Math.random() * 300) } },
  ];
  for (const { name, opts } of rounds) {
    const r = await crashChild(file, dataDir, name, opts);
    t.equal(r.signal, 'SIGKILL', `${name}: the child was killed (${r.stderr.trim() || 'no stderr'})`);
    const { image, events } = await replayStream(dataDir, name);
    t.ok(events >= 1, `${name}: the vdisk exists in the log (${events} events)`);
    // A self-killed child issued writes 0..selfKillAt; one killed from here may have issued a few thousand past its last report.
    const issued = opts.selfKillAt !== undefined ? opts.selfKillAt + 1 : r.flushedUpTo + 5000;
    const { bad, prefixes } = checkBlocks(image, r.flushedUpTo, issued);
    t.same(bad, [], `${name}: every block holds a whole version from after the last reported flush (${r.flushedUpTo} writes) and not after the last write issued`);
    t.comment(`${name}: the whole disk equals the state after ${prefixes.length ? `${prefixes.length} prefix(es), e.g. ${prefixes.at(-1)} writes` : 'no single prefix (unflushed writes logged out of order)'}`);
  }

  // The vdisk manager, in this process, replays the same content the independent reader found.
  const log = await Tlog.open({ dataDir });
  const m = await VdiskManager.open(log);
  t.teardown(async () => {
    await m.close();
    await log.close();
  });
  for (const { name } of rounds) {
    const vd = await m.get(name);
    const { image } = await replayStream(dataDir, name);
    t.ok((await vd.read(0, SIZE)).equals(image), `${name}: the reopened vdisk reads what the log holds`);
    // And it takes writes again after the crash.
    await vd.write(0, Buffer.alloc(4096, 0x5c), true);
    t.ok((await replayStream(dataDir, name)).image.subarray(0, 4096).equals(Buffer.alloc(4096, 0x5c)), `${name}: writable after the crash`);
  }
});
