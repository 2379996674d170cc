/**
 * Tampering with segment files — flipping, deleting, reordering, inserting or
 * rewriting entries, with or without a recomputed CRC — must make verify()
 * fail and name the position of the first tampered entry. The entry index is
 * only a cache: with it deleted or damaged the log rebuilds it and verifies OK
 * with the same events.
 *
 * Layout: 20 single-event entries of one stream, so entry k holds position k.
 */
import t from 'tap';
import type * as Tap from 'tap';
import fc from 'fast-check';
import { cpSync, existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Tlog, ZosError, type RecordedEvent, type VerifyReport } from '../../tlog/index.ts';
import { FLAG_LZ4, FRAME_PREFIX_BYTES } from '../../tlog/frame.ts';
import { INDEX_HEADER_BYTES, INDEX_RECORD_BYTES, SEGMENT_HEADER_BYTES } from '../../tlog/file/formats.ts';
import { tempDir, type TestContext } from '../helpers/tmp.ts';
import { buildLog, collect, eventKey, readSegment, segmentPaths, show, type Append, type LocatedFrame } from './fixtures/log.ts';
import { describe, fuzzSeed } from './fixtures/property.ts';

const ENTRIES = 20;
const appends: Append[] = Array.from({ length: ENTRIES }, (_, i) => ({
  stream: 'ledger',
  events: [{ type: 'Posted', data: { entry: i, memo: `entry number ${i}` } }],
}));

/** One pristine log per file; every test works on its own copy. */
let pristineDir = '';
let original: RecordedEvent[] = [];
t.before(async () => {
  pristineDir = tempDir(t, 'zos-pristine-');
  original = await buildLog(join(pristineDir, 'data'), appends);
});

function copyLog(t: TestContext): string {
  const dir = join(tempDir(t), 'data');
  cpSync(join(pristineDir, 'data'), dir, { recursive: true });
  return dir;
}

function onlySegment(dir: string): string {
  const segs = segmentPaths(dir);
  if (segs.length !== 1) throw new Error(`expected one segment, found ${segs.length}`);
  return segs[0]!;
}

/** Rewrite a frame's header field at `bodyOffset` and recompute its CRC, as someone who knows the format (not the key) would. */
function rewriteWithCrc(b: Buffer, f: LocatedFrame, edit: (body: Buffer) => void): void {
  const body = b.subarray(f.offset + FRAME_PREFIX_BYTES, f.offset + f.size);
  edit(body);
  b.writeUInt32LE(crc32(body), f.offset + 8);
}

const H = { flags: 1, eventCount: 4, position: 8, firstVersion: 16, commitTimeNs: 24, streamKey: 32, prevChain: 64, nonce: 96 } as const;

interface Case {
  name: string;
  /** Position verify must name. */
  position: bigint;
  /** Acceptable problem codes. */
  codes: string[];
  tamper: (seg: Buffer, frames: LocatedFrame[]) => Buffer;
}

const DETECTED = ['TLOG_CORRUPT', 'TLOG_CHAIN_BROKEN', 'TLOG_DECRYPT_FAILED', 'TLOG_BAD_RECORD'];
const slice = (b: Buffer, f: LocatedFrame): Buffer => b.subarray(f.offset, f.offset + f.size);
const before = (b: Buffer, f: LocatedFrame): Buffer => b.subarray(0, f.offset);
const after = (b: Buffer, f: LocatedFrame): Buffer => b.subarray(f.offset + f.size);

const cases: Case[] = [
  {
    name: 'one byte flipped inside an entry in the middle (ciphertext)',
    position: 10n,
    codes: DETECTED,
    tamper: (b, fr) => {
      const c = Buffer.from(b);
      c[fr[10]!.offset + FRAME_PREFIX_BYTES + 130]! ^= 0x01;
      return c;
    },
  },
  {
    name: 'one byte flipped in the header of an entry in the middle',
    position: 10n,
    codes: DETECTED,
    tamper: (b, fr) => {
      const c = Buffer.from(b);
      c[fr[10]!.offset + FRAME_PREFIX_BYTES + H.commitTimeNs]! ^= 0x40;
      return c;
    },
  },
  {
    name: 'a whole entry deleted from the middle',
    position: 10n,
    codes: DETECTED,
    tamper: (b, fr) => Buffer.concat([before(b, fr[10]!), after(b, fr[10]!)]),
  },
  {
    name: 'two adjacent entries swapped',
    position: 10n,
    codes: DETECTED,
    tamper: (b, fr) => Buffer.concat([before(b, fr[10]!), slice(b, fr[11]!), slice(b, fr[10]!), after(b, fr[11]!)]),
  },
  {
    name: 'a copy of an entry inserted right after it',
    position: 11n,
    codes: DETECTED,
    tamper: (b, fr) => Buffer.concat([before(b, fr[11]!), slice(b, fr[10]!), b.subarray(fr[11]!.offset)]),
  },
  {
    name: 'a copy of an old entry appended at the end',
    position: 20n,
    codes: DETECTED,
    tamper: (b, fr) => Buffer.concat([b, slice(b, fr[5]!)]),
  },
  {
    name: 'one byte flipped in the last entry',
    position: 19n,
    codes: DETECTED,
    tamper: (b, fr) => {
      const c = Buffer.from(b);
      c[fr[19]!.offset + fr[19]!.size - 40]! ^= 0x80;
      return c;
    },
  },
  // An attacker who knows the format but not the key: change a field, fix the CRC.
  ...(
    [
      ['commit time', (body: Buffer) => body.writeBigUInt64LE(body.readBigUInt64LE(H.commitTimeNs) + 1n, H.commitTimeNs)],
      ['nonce', (body: Buffer) => void (body[H.nonce + 3]! ^= 0x10)],
      ['LZ4 flag', (body: Buffer) => void (body[H.flags]! ^= FLAG_LZ4)],
      ['stream version', (body: Buffer) => body.writeBigUInt64LE(body.readBigUInt64LE(H.firstVersion) + 1n, H.firstVersion)],
      ['event count', (body: Buffer) => body.writeUInt32LE(2, H.eventCount)],
      ['previous-chain link', (body: Buffer) => void (body[H.prevChain]! ^= 0x01)],
      ['stream key', (body: Buffer) => void (body[H.streamKey + 31]! ^= 0x01)],
      ['ciphertext byte', (body: Buffer) => void (body[130]! ^= 0x01)],
      ['chain value', (body: Buffer) => void (body[body.length - 1]! ^= 0x01)],
    ] as const
  ).map(
    ([field, edit]): Case => ({
      name: `${field} of a middle entry changed and the CRC recomputed`,
      position: 10n,
      // Header fields and the tag are under the chain MAC; other ciphertext
      // bytes are under the AEAD tag, so decryption catches them.
      codes: field === 'ciphertext byte' ? ['TLOG_DECRYPT_FAILED'] : ['TLOG_CHAIN_BROKEN', 'TLOG_CORRUPT'],
      tamper: (b, fr) => {
        const c = Buffer.from(b);
        rewriteWithCrc(c, fr[10]!, edit);
        return c;
      },
    }),
  ),
  {
    name: 'position field of a middle entry changed and the CRC recomputed',
    position: 10n,
    codes: ['TLOG_CHAIN_BROKEN', 'TLOG_CORRUPT'],
    tamper: (b, fr) => {
      const c = Buffer.from(b);
      rewriteWithCrc(c, fr[10]!, (body) => body.writeBigUInt64LE(11n, H.position));
      return c;
    },
  },
  {
    name: 'segment header damaged',
    position: 0n,
    codes: DETECTED,
    tamper: (b) => {
      const c = Buffer.from(b);
      c[20]! ^= 0x01; // basePosition, covered by the header CRC
      return c;
    },
  },
];

interface Outcome {
  report: VerifyReport | null;
  openError: unknown;
  /** Events readAll returned before it stopped (on success or a ZosError). */
  read: RecordedEvent[];
  readError: unknown;
}

async function inspectReadOnly(dir: string): Promise<Outcome> {
  let log: Tlog;
  try {
    log = await Tlog.open({ dataDir: dir, readOnly: true });
  } catch (err) {
    return { report: null, openError: err, read: [], readError: null };
  }
  try {
    const report = await log.verify();
    const read: RecordedEvent[] = [];
    let readError: unknown = null;
    try {
      for await (const e of log.readAll()) read.push(e);
    } catch (err) {
      readError = err;
    }
    return { report, openError: null, read, readError };
  } finally {
    await log.close();
  }
}

/** Events a reader returned that differ from the ones appended at their positions. */
function altered(read: RecordedEvent[], appended: RecordedEvent[] = original): string[] {
  return read
    .filter((e, i) => e.position !== BigInt(i) || !appended[i] || eventKey(e) !== eventKey(appended[i]))
    .map((e) => `got ${eventKey(e)}, appended ${appended[Number(e.position)] ? eventKey(appended[Number(e.position)]!) : 'nothing'}`);
}
const UNALTERED = 'readAll returns only events exactly as appended (it may stop early with a ZosError)';

for (const c of cases) {
  for (const keepIndex of [true, false]) {
    t.test(`verify names position ${c.position}: ${c.name} (${keepIndex ? 'stale index kept' : 'index deleted'})`, async (t) => {
      const dir = copyLog(t);
      const segPath = onlySegment(dir);
      const { bytes, frames } = readSegment(segPath);
      t.equal(frames.length, ENTRIES, 'fixture: one frame per entry');
      writeFileSync(segPath, c.tamper(bytes, frames));
      if (!keepIndex) rmSync(join(dir, 'index', 'entries.idx'));

      const o = await inspectReadOnly(dir);
      if (!o.report) {
        t.fail(`Tlog.open({ readOnly: true }) threw, so verify() could not run: ${describe(o.openError)}`);
        return;
      }
      t.equal(o.report.ok, false, 'verify fails');
      t.equal(o.report.problem?.position, c.position, `problem names position ${c.position}: ${show(o.report.problem)}`);
      t.ok(c.codes.includes(o.report.problem?.code ?? ''), `problem code ${o.report.problem?.code} is one of ${c.codes.join(', ')}`);
      if (o.readError !== null) t.ok(o.readError instanceof ZosError, `readAll fails only with a ZosError (${describe(o.readError)})`);
      t.same(altered(o.read), [], UNALTERED);
    });
  }
}

/** Open read-only after damage to a multi-segment log: verify must fail at `position`, reads return nothing altered. */
async function expectVerifyFailsAt(t: Tap.Test, dir: string, position: bigint, appended: RecordedEvent[]): Promise<void> {
  const o = await inspectReadOnly(dir);
  if (!o.report) {
    t.fail(`Tlog.open({ readOnly: true }) threw, so verify() could not run: ${describe(o.openError)}`);
    return;
  }
  t.equal(o.report.ok, false, 'verify fails');
  t.equal(o.report.problem?.position, position, `problem names position ${position}: ${show(o.report.problem)}`);
  t.same(altered(o.read, appended), [], UNALTERED);
}

t.test('a whole middle segment deleted: verify names its first position', async (t) => {
  const dir = join(tempDir(t), 'data');
  const appended = await buildLog(dir, appends, { segmentMaxBytes: 1024 });
  const segs = segmentPaths(dir);
  t.ok(segs.length >= 4, `fixture: ${segs.length} segments`);
  const victim = segs[2]!;
  const base = BigInt(victim.slice(-24, -4));
  rmSync(victim);
  rmSync(join(dir, 'index', 'entries.idx'));
  await expectVerifyFailsAt(t, dir, base, appended);
});

t.test('two segment files swapped by renaming: verify fails at the first swapped one', async (t) => {
  const dir = join(tempDir(t), 'data');
  const appended = await buildLog(dir, appends, { segmentMaxBytes: 1024 });
  const segs = segmentPaths(dir);
  const [a, b] = [segs[1]!, segs[2]!];
  renameSync(a, `${a}.tmp`);
  renameSync(b, a);
  renameSync(`${a}.tmp`, b);
  const expected = BigInt(a.slice(-24, -4));
  rmSync(join(dir, 'index', 'entries.idx'));
  await expectVerifyFailsAt(t, dir, expected, appended);
});

// ------------------------------------------------------------ the index is a cache

async function readEverything(dir: string, readOnly: boolean): Promise<{ report: VerifyReport; events: string[] }> {
  const log = await Tlog.open({ dataDir: dir, readOnly });
  try {
    return { report: await log.verify(), events: (await collect(log.readAll())).map(eventKey) };
  } finally {
    await log.close();
  }
}

t.test('deleting index/entries.idx is not a failure: the log rebuilds it with the same events', async (t) => {
  const dir = copyLog(t);
  const idx = join(dir, 'index', 'entries.idx');
  t.equal(statSync(idx).size, INDEX_HEADER_BYTES + ENTRIES * INDEX_RECORD_BYTES, 'fixture: index has one record per entry');
  const indexBefore = readFileSync(idx);
  rmSync(idx);

  const ro = await readEverything(dir, true);
  t.equal(ro.report.ok, true, `read-only verify passes without an index: ${show(ro.report.problem)}`);
  t.same(ro.events, original.map(eventKey), 'read-only open without an index returns the same events');

  const rw = await readEverything(dir, false);
  t.equal(rw.report.ok, true, 'read-write verify passes');
  t.equal(rw.report.events, BigInt(ENTRIES));
  t.same(rw.events, original.map(eventKey), 'same events after the rebuild');
  t.ok(existsSync(idx), 'the writer rebuilt index/entries.idx');
  t.ok(readFileSync(idx).equals(indexBefore), 'the rebuilt index is byte-identical to the original');

  const again = await readEverything(dir, true);
  t.same(again.events, original.map(eventKey), 'reopening with the rebuilt index returns the same events');
});

t.test('a damaged or foreign entry index is ignored and rebuilt, never trusted', async (t) => {
  // Any byte of the index flipped (record CRCs, header, log id): same events, verify OK.
  const base = copyLog(t);
  const idx = readFileSync(join(base, 'index', 'entries.idx'));
  let n = 0;
  const results: string[] = [];
  const prop = fc.asyncProperty(fc.nat({ max: idx.length - 1 }), fc.integer({ min: 1, max: 255 }), async (at, xor) => {
    const dir = join(base, '..', `idx-${n++}`);
    cpSync(base, dir, { recursive: true });
    const damaged = Buffer.from(idx);
    damaged[at]! ^= xor;
    writeFileSync(join(dir, 'index', 'entries.idx'), damaged);
    for (const readOnly of [true, false]) {
      const r = await readEverything(dir, readOnly);
      if (!r.report.ok || r.events.join('\n') !== original.map(eventKey).join('\n')) {
        results.push(`byte ${at} ^ ${xor} (${readOnly ? 'read-only' : 'read-write'}): ok=${r.report.ok}, ${r.events.length} events`);
      }
    }
    rmSync(dir, { recursive: true, force: true });
    return true;
  });
  const seed = fuzzSeed();
  const details = await fc.check(prop, { numRuns: 40, seed });
  t.notOk(details.failed, `no run threw (seed ${seed}): ${fc.defaultReportMessage(details) ?? ''}`);
  t.same(results, [], 'every damaged index was ignored or repaired');

  // An index whose records point at the wrong offsets (records of entries 3 and 4 swapped, CRCs intact).
  const dir = copyLog(t);
  const p = join(dir, 'index', 'entries.idx');
  const b = readFileSync(p);
  const r3 = INDEX_HEADER_BYTES + 3 * INDEX_RECORD_BYTES;
  const r4 = r3 + INDEX_RECORD_BYTES;
  writeFileSync(p, Buffer.concat([b.subarray(0, r3), b.subarray(r4, r4 + INDEX_RECORD_BYTES), b.subarray(r3, r4), b.subarray(r4 + INDEX_RECORD_BYTES)]));
  for (const readOnly of [true, false]) {
    const r = await readEverything(dir, readOnly);
    t.equal(r.report.ok, true, `reordered index records (${readOnly ? 'read-only' : 'read-write'}): verify OK`);
    t.same(r.events, original.map(eventKey), 'reordered index records: same events');
  }

  // An index with a record for an entry that does not exist (beyond the segment's end).
  const dir2 = copyLog(t);
  const p2 = join(dir2, 'index', 'entries.idx');
  const b2 = readFileSync(p2);
  const last = b2.subarray(b2.length - INDEX_RECORD_BYTES);
  const extra = Buffer.from(last);
  extra.writeBigUInt64LE(BigInt(ENTRIES), 0); // position 20
  extra.writeBigUInt64LE(BigInt(statSync(onlySegment(dir2)).size), 32); // offset at the segment's end
  extra.writeUInt32LE(crc32(extra.subarray(0, 80)), 80);
  writeFileSync(p2, Buffer.concat([b2, extra]));
  for (const readOnly of [true, false]) {
    const r = await readEverything(dir2, readOnly);
    t.equal(r.report.ok, true, `index claiming an extra entry (${readOnly ? 'read-only' : 'read-write'}): verify OK`);
    t.same(r.events, original.map(eventKey), 'index claiming an extra entry: same events, nothing invented');
  }
});

t.test('the tamper fixture itself: an untouched copy verifies OK with all entries at the expected offsets', async (t) => {
  const dir = copyLog(t);
  const { frames } = readSegment(onlySegment(dir));
  t.equal(frames[0]!.offset, SEGMENT_HEADER_BYTES);
  t.same(
    frames.map((f) => f.frame.position),
    Array.from({ length: ENTRIES }, (_, i) => BigInt(i)),
    'entry k holds position k',
  );
  const r = await readEverything(dir, true);
  t.equal(r.report.ok, true);
  t.equal(r.report.entries, ENTRIES);
  t.same(r.events, original.map(eventKey));
});
