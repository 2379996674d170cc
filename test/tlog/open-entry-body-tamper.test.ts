/**
 * The full open path of one entry (tlog/sealer.ts openEntryBody): decrypt,
 * decompress, decode. Any change to the ciphertext, nonce or stream key — even
 * with the frame CRC recomputed, as an attacker who knows the format but not
 * the key would do — must fail authentication (TLOG_DECRYPT_FAILED naming the
 * position) and never yield plaintext. Header fields outside the AEAD must not
 * be able to make a reader allocate gigabytes.
 */
import t from 'tap';
import fc from 'fast-check';
import { sealTag, KeyRing, randomBytes } from '../../tlog/crypto.ts';
import { ZosError } from '../../tlog/errors.ts';
import { decodeFrame, encodeFrame, encodeHeader, FLAG_LZ4, type Frame } from '../../tlog/frame.ts';
import type { EntryBody } from '../../tlog/record.ts';
import { openEntryBody, sealEntry, type SealedEntry } from '../../tlog/sealer.ts';
import { runIsolated } from './fixtures/child.ts';
import { describe, holds } from './fixtures/property.ts';

const POSITION = 4242n;
const STREAM = 'SECRET-STREAM-xyz';
const PAYLOAD_MARK = 'very-private-payload-123';

function body(stream: string, payloadBytes: number): EntryBody {
  const payload = Buffer.alloc(payloadBytes, PAYLOAD_MARK);
  return {
    stream,
    events: [
      { id: randomBytes(16), type: 'OrderPlaced', schemaVersion: 0, encoding: 'MSGPACK', timestampNs: 5n, actor: 'alice', correlationId: null, causationId: null, payload },
      { id: randomBytes(16), type: 'OrderShipped', schemaVersion: 0, encoding: 'MSGPACK', timestampNs: 6n, actor: null, correlationId: 'c-1', causationId: null, payload },
    ],
  };
}

interface Parts {
  flags: number;
  eventCount: number;
  streamKey: Buffer;
  nonce: Buffer;
  ciphertext: Buffer;
}

/** Build and decode a frame the way the backend writes it (CRC always valid). */
function frameOf(keys: KeyRing, p: Parts): Frame {
  const headerBytes = encodeHeader({
    flags: p.flags,
    eventCount: p.eventCount,
    position: POSITION,
    firstVersion: 0n,
    commitTimeNs: 1n,
    streamKey: p.streamKey,
    prevChain: Buffer.alloc(32),
    nonce: p.nonce,
  });
  const d = decodeFrame(encodeFrame(headerBytes, p.ciphertext, keys.chain(headerBytes, sealTag(p.ciphertext))));
  if (d.kind !== 'frame') throw new Error(`fixture frame does not decode: ${d.kind}`);
  return d.frame;
}

const partsOf = (s: SealedEntry): Parts => ({
  flags: s.flags,
  eventCount: s.eventCount,
  streamKey: Buffer.from(s.streamKey),
  nonce: Buffer.from(s.nonce),
  ciphertext: Buffer.from(s.ciphertext),
});

const keys = new KeyRing(randomBytes(32));
// Plaintext below 96 bytes is stored as is; larger repetitive plaintext is LZ4-compressed.
const small = sealEntry(keys, body(STREAM, 4));
const large = sealEntry(keys, body(STREAM, 600));

/** openEntryBody must throw ZosError `code` naming the position and leaking nothing. */
function expectFailure(frame: Frame, k: KeyRing, code: string): void {
  let got: unknown;
  try {
    openEntryBody(k, frame);
  } catch (err) {
    got = err;
  }
  if (got === undefined) throw new Error('openEntryBody returned a body for tampered input');
  if (!(got instanceof ZosError)) throw new Error(`expected ZosError ${code}, got ${describe(got)}`);
  if (got.code !== code) throw new Error(`expected ${code}, got ${got.code}: ${got.message}`);
  if (!got.message.includes(String(POSITION))) throw new Error(`message does not name position ${POSITION}: ${got.message}`);
  if (got.message.includes(STREAM) || got.message.includes(PAYLOAD_MARK)) throw new Error(`message leaks plaintext: ${got.message}`);
}

t.test('fixtures: both entries open, one compressed and one not', async (t) => {
  t.equal(small.flags & FLAG_LZ4, 0, 'small entry is stored uncompressed');
  t.equal(large.flags & FLAG_LZ4, FLAG_LZ4, 'large entry is LZ4-compressed');
  for (const [s, n] of [[small, 4], [large, 600]] as const) {
    const b = openEntryBody(keys, frameOf(keys, partsOf(s)));
    t.equal(b.stream, STREAM);
    t.same(b.events.map((e) => e.type), ['OrderPlaced', 'OrderShipped']);
    t.ok(b.events[1]!.payload.equals(Buffer.alloc(n, PAYLOAD_MARK)), 'payload intact');
  }
});

t.test('a flipped ciphertext bit (CRC recomputed) fails authentication', async (t) => {
  holds(
    t,
    'ciphertext bit flip',
    fc.property(fc.boolean(), fc.nat(), fc.integer({ min: 0, max: 7 }), (useLarge, at, bit) => {
      const p = partsOf(useLarge ? large : small);
      p.ciphertext[at % p.ciphertext.length]! ^= 1 << bit;
      expectFailure(frameOf(keys, p), keys, 'TLOG_DECRYPT_FAILED');
      return true;
    }),
    { numRuns: 300 },
  );
});

t.test('a flipped nonce or stream-key bit (CRC recomputed) fails authentication', async (t) => {
  holds(
    t,
    'nonce / stream key bit flip',
    fc.property(fc.boolean(), fc.boolean(), fc.nat(), fc.integer({ min: 0, max: 7 }), (useLarge, inNonce, at, bit) => {
      const p = partsOf(useLarge ? large : small);
      const field = inNonce ? p.nonce : p.streamKey;
      field[at % field.length]! ^= 1 << bit;
      expectFailure(frameOf(keys, p), keys, 'TLOG_DECRYPT_FAILED');
      return true;
    }),
    { numRuns: 300 },
  );
});

t.test('truncated or extended ciphertext fails authentication', async (t) => {
  holds(
    t,
    'ciphertext length change',
    fc.property(fc.boolean(), fc.integer({ min: -200, max: 64 }), (useLarge, delta) => {
      if (delta === 0) return true;
      const p = partsOf(useLarge ? large : small);
      // A frame body holds at least a 16-byte ciphertext (the tag); shorter ones are tested below.
      p.ciphertext =
        delta < 0 ? p.ciphertext.subarray(0, Math.max(16, p.ciphertext.length + delta)) : Buffer.concat([p.ciphertext, randomBytes(delta)]);
      expectFailure(frameOf(keys, p), keys, 'TLOG_DECRYPT_FAILED');
      return true;
    }),
    { numRuns: 200 },
  );
  // Frames from other backends are not length-checked by decodeFrame: a ciphertext shorter than the tag.
  const f = frameOf(keys, partsOf(small));
  for (const n of [0, 1, 15]) {
    t.doesNotThrow(() => expectFailure({ ...f, ciphertext: f.ciphertext.subarray(0, n) }, keys, 'TLOG_DECRYPT_FAILED'), `${n}-byte ciphertext`);
  }
});

t.test('ciphertext moved to another stream, or under another nonce, or opened with another key fails', async (t) => {
  const other = sealEntry(keys, body('another-stream', 4));
  const moved = partsOf(small);
  moved.streamKey = Buffer.from(other.streamKey);
  t.doesNotThrow(() => expectFailure(frameOf(keys, moved), keys, 'TLOG_DECRYPT_FAILED'), 'moved to another stream key');

  const again = sealEntry(keys, body(STREAM, 4));
  const swapped = partsOf(small);
  swapped.nonce = Buffer.from(again.nonce);
  t.doesNotThrow(() => expectFailure(frameOf(keys, swapped), keys, 'TLOG_DECRYPT_FAILED'), 'nonce of another entry of the same stream');

  const wrong = new KeyRing(randomBytes(32));
  t.doesNotThrow(() => expectFailure(frameOf(keys, partsOf(large)), wrong, 'TLOG_DECRYPT_FAILED'), 'opened with a different master key');
});

t.test('an event count in the header that disagrees with the body is TLOG_BAD_RECORD', async (t) => {
  const p = partsOf(small);
  p.eventCount = 3;
  t.doesNotThrow(() => expectFailure(frameOf(keys, p), keys, 'TLOG_BAD_RECORD'));
});

// The flags byte is not part of the AEAD's associated data, so someone without
// the key can set the LZ4 bit on an uncompressed entry and fix the CRC. The
// reader then feeds Avro plaintext to the LZ4 decoder, which takes the first 4
// bytes (stream-name length and first letters) as the output size.
t.test('setting the LZ4 flag on an uncompressed entry is rejected without allocating gigabytes', { timeout: 60_000 }, async (t) => {
  const run = runIsolated<{ outcome: string; code?: string; message?: string; ms: number; maxRssMb: number }>(['lz4-flag-flip', STREAM], {
    timeoutMs: 30_000,
  });
  if (!run.result) {
    t.fail(`openEntryBody did not return: ${run.how}; stderr: ${run.stderrTail}`);
    return;
  }
  t.equal(run.result.outcome, 'zos-error', `fails with a ZosError (${run.result.message ?? ''})`);
  t.ok(['TLOG_BAD_RECORD', 'TLOG_DECRYPT_FAILED', 'TLOG_CHAIN_BROKEN', 'TLOG_CORRUPT'].includes(run.result.code ?? ''), `code ${run.result.code}`);
  t.ok(run.result.maxRssMb < 512, `peak RSS stays below 512 MB (was ${run.result.maxRssMb.toFixed(0)} MB, ${run.result.ms.toFixed(0)} ms)`);
});

t.test('an LZ4 block declaring a 1 GiB output does not make the reader allocate it', { timeout: 60_000 }, async (t) => {
  const run = runIsolated<{ outcome: string; code?: string; message?: string; ms: number; maxRssMb: number }>(['lz4-declared-size', String(2 ** 30)], {
    timeoutMs: 30_000,
  });
  if (!run.result) {
    t.fail(`openEntryBody did not return: ${run.how}; stderr: ${run.stderrTail}`);
    return;
  }
  t.not(run.result.outcome, 'other-error', `no exception other than ZosError (${run.result.message ?? 'returned'})`);
  t.ok(run.result.maxRssMb < 512, `peak RSS stays below 512 MB (was ${run.result.maxRssMb.toFixed(0)} MB, ${run.result.ms.toFixed(0)} ms)`);
});
