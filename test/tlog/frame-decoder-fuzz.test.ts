/**
 * Fuzz the frame codec (tlog/frame.ts): decodeFrame never throws and never
 * accepts altered bytes. Every mutation of a valid frame (bit flips, byte
 * overwrites, truncation, length-field changes) must come back `corrupt` or
 * `incomplete`, never as a frame with different content; appended bytes must
 * not change what is decoded.
 */
import t from 'tap';
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import {
  decodeFrame,
  encodeFrame,
  encodeHeader,
  peekFrameSize,
  FRAME_MAGIC,
  FRAME_PREFIX_BYTES,
  HEADER_BYTES,
  CHAIN_BYTES,
  MIN_BODY_BYTES,
  MAX_BODY_BYTES,
  type FrameDecodeResult,
  type FrameHeader,
} from '../../tlog/frame.ts';
import { describe, holds } from './fixtures/property.ts';

const bytes = (min: number, max = min): fc.Arbitrary<Buffer> =>
  fc.uint8Array({ minLength: min, maxLength: max }).map((a) => Buffer.from(a));

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });

const headerArb: fc.Arbitrary<FrameHeader> = fc.record({
  flags: fc.integer({ min: 0, max: 255 }),
  eventCount: fc.integer({ min: 1, max: 0xffffffff }),
  position: u64,
  firstVersion: u64,
  commitTimeNs: u64,
  streamKey: bytes(32),
  prevChain: bytes(32),
  nonce: bytes(24),
});

interface Built {
  header: FrameHeader;
  ciphertext: Buffer;
  chain: Buffer;
  frame: Buffer;
}

const frameArb: fc.Arbitrary<Built> = fc.record({ header: headerArb, ciphertext: bytes(16, 300), chain: bytes(CHAIN_BYTES) }).map((x) => ({
  ...x,
  frame: encodeFrame(encodeHeader(x.header), x.ciphertext, x.chain),
}));

/** decodeFrame that turns a throw into a property failure with context. */
function decode(buf: Buffer, offset = 0): FrameDecodeResult {
  let r: FrameDecodeResult;
  try {
    r = decodeFrame(buf, offset);
  } catch (err) {
    throw new Error(`decodeFrame threw on ${buf.length} bytes at offset ${offset}: ${describe(err)}`);
  }
  if (r.kind !== 'frame' && r.kind !== 'corrupt' && r.kind !== 'incomplete') {
    throw new Error(`decodeFrame returned an unknown kind ${(r as { kind: unknown }).kind}`);
  }
  if (r.kind === 'incomplete' && !(r.needed > buf.length - offset)) {
    // A reader loops "read `needed` bytes, decode again": needed must exceed what it already has.
    throw new Error(`incomplete result asks for ${r.needed} bytes but ${buf.length - offset} are already available`);
  }
  if (r.kind === 'corrupt' && (typeof r.reason !== 'string' || r.reason.length === 0)) {
    throw new Error('corrupt result without a reason');
  }
  return r;
}

function sameContent(r: FrameDecodeResult, b: Built): string | null {
  if (r.kind !== 'frame') return `expected a frame, got ${r.kind}${r.kind === 'corrupt' ? ` (${r.reason})` : ''}`;
  const f = r.frame;
  const h = b.header;
  if (f.flags !== h.flags) return 'flags differ';
  if (f.eventCount !== h.eventCount) return 'eventCount differs';
  if (f.position !== h.position) return 'position differs';
  if (f.firstVersion !== h.firstVersion) return 'firstVersion differs';
  if (f.commitTimeNs !== h.commitTimeNs) return 'commitTimeNs differs';
  if (!f.streamKey.equals(h.streamKey)) return 'streamKey differs';
  if (!f.prevChain.equals(h.prevChain)) return 'prevChain differs';
  if (!f.nonce.equals(h.nonce)) return 'nonce differs';
  if (!f.ciphertext.equals(b.ciphertext)) return 'ciphertext differs';
  if (!f.chain.equals(b.chain)) return 'chain differs';
  if (!f.headerBytes.equals(encodeHeader(h))) return 'headerBytes differ';
  if (f.size !== b.frame.length) return `size ${f.size} != ${b.frame.length}`;
  return null;
}

const ok = (problem: string | null): boolean => {
  if (problem) throw new Error(problem);
  return true;
};

t.test('valid frames round-trip, also embedded at an offset inside random bytes', async (t) => {
  holds(t, 'roundtrip', fc.property(frameArb, (b) => ok(sameContent(decode(b.frame), b)) && peekFrameSize(b.frame) === b.frame.length));
  holds(
    t,
    'roundtrip at offset',
    fc.property(frameArb, bytes(0, 64), bytes(0, 64), (b, before, after) => {
      const buf = Buffer.concat([before, b.frame, after]);
      return ok(sameContent(decode(buf, before.length), b)) && peekFrameSize(buf, before.length) === b.frame.length;
    }),
  );
});

t.test('random bytes at any offset: never throws, only frame/corrupt/incomplete', async (t) => {
  holds(
    t,
    'random bytes',
    fc.property(bytes(0, 400), fc.nat({ max: 420 }), (buf, off) => {
      const r = decode(buf, off);
      if (r.kind === 'frame') {
        // Only possible if the bytes really form a frame: magic, sane length and matching CRC.
        const body = buf.subarray(off + FRAME_PREFIX_BYTES, off + r.frame.size);
        return buf.readUInt32LE(off) === FRAME_MAGIC && buf.readUInt32LE(off + 8) === crc32(body);
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  // Random bytes that get past the magic check, so the length and CRC paths are exercised.
  holds(
    t,
    'random bytes behind a valid magic',
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), bytes(0, 400), (len, rest) => {
      const buf = Buffer.alloc(8 + rest.length);
      buf.writeUInt32LE(FRAME_MAGIC, 0);
      buf.writeUInt32LE(len, 4);
      rest.copy(buf, 8);
      const r = decode(buf);
      if (buf.length < FRAME_PREFIX_BYTES) return r.kind === 'incomplete' && r.needed === FRAME_PREFIX_BYTES;
      if (len < MIN_BODY_BYTES || len > MAX_BODY_BYTES) return r.kind === 'corrupt';
      if (buf.length < FRAME_PREFIX_BYTES + len) return r.kind === 'incomplete' && r.needed === FRAME_PREFIX_BYTES + len;
      return r.kind === 'corrupt' || buf.readUInt32LE(8) === crc32(buf.subarray(12, 12 + len));
    }),
    { numRuns: 3000 },
  );
  // Random bodies with a correct CRC: the header decoder decides. Version 1 and
  // eventCount > 0 make a frame; anything else is corrupt, never a throw.
  holds(
    t,
    'random bodies with a correct CRC',
    fc.property(bytes(MIN_BODY_BYTES, MIN_BODY_BYTES + 200), fc.boolean(), (body, forceV1) => {
      if (forceV1) body[0] = 1;
      const buf = Buffer.alloc(FRAME_PREFIX_BYTES + body.length);
      buf.writeUInt32LE(FRAME_MAGIC, 0);
      buf.writeUInt32LE(body.length, 4);
      buf.writeUInt32LE(crc32(body), 8);
      body.copy(buf, FRAME_PREFIX_BYTES);
      const r = decode(buf);
      const shouldBeFrame = body[0] === 1 && body.readUInt32LE(4) !== 0;
      if (!shouldBeFrame) return r.kind === 'corrupt';
      if (r.kind !== 'frame') return false;
      return (
        r.frame.headerBytes.equals(body.subarray(0, HEADER_BYTES)) &&
        r.frame.chain.equals(body.subarray(body.length - CHAIN_BYTES)) &&
        r.frame.ciphertext.equals(body.subarray(HEADER_BYTES, body.length - CHAIN_BYTES))
      );
    }),
    { numRuns: 2000 },
  );
});

t.test('a single bit flip anywhere in a frame is never decoded as a frame', async (t) => {
  holds(
    t,
    'bit flip',
    fc.property(frameArb, fc.nat(), fc.integer({ min: 0, max: 7 }), bytes(0, 400), (b, at, bit, suffix) => {
      const i = at % b.frame.length;
      const m = Buffer.concat([b.frame, suffix]);
      m[i]! ^= 1 << bit;
      const r = decode(m);
      if (r.kind === 'frame') throw new Error(`flip of bit ${bit} at byte ${i} of a ${b.frame.length}-byte frame still decodes as a frame`);
      // Outside the length field, the magic check or the CRC must catch it.
      if (i < 4 || i >= 8) return r.kind === 'corrupt';
      return true;
    }),
    { numRuns: 3000 },
  );
});

t.test('overwriting bytes of the body (CRC not recomputed) is always corrupt', async (t) => {
  holds(
    t,
    'body overwrite',
    fc.property(
      frameArb,
      fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 8 }),
      (b, edits) => {
        const m = Buffer.from(b.frame);
        const bodyLen = m.length - FRAME_PREFIX_BYTES;
        const seen = new Set<number>();
        for (const e of edits) {
          const i = FRAME_PREFIX_BYTES + (e.at % bodyLen);
          if (seen.has(i)) continue; // two xors on one byte could cancel out
          seen.add(i);
          m[i]! ^= e.xor;
        }
        const r = decode(m);
        return r.kind === 'corrupt' && /CRC/.test(r.reason);
      },
    ),
    { numRuns: 2000 },
  );
});

t.test('truncation is incomplete and asks for the whole frame', async (t) => {
  holds(
    t,
    'truncate',
    fc.property(frameArb, fc.nat(), (b, at) => {
      const len = at % b.frame.length;
      const r = decode(b.frame.subarray(0, len));
      if (r.kind !== 'incomplete') return false;
      return r.needed === (len < FRAME_PREFIX_BYTES ? FRAME_PREFIX_BYTES : b.frame.length);
    }),
    { numRuns: 2000 },
  );
});

t.test('bytes appended after a frame do not change what is decoded', async (t) => {
  holds(
    t,
    'extend',
    fc.property(frameArb, bytes(1, 500), (b, extra) => ok(sameContent(decode(Buffer.concat([b.frame, extra])), b))),
    { numRuns: 2000 },
  );
});

t.test('any other value in the length field is never decoded as a frame', async (t) => {
  holds(
    t,
    'length field',
    fc.property(
      frameArb,
      fc.oneof(
        fc.integer({ min: 0, max: 0xffffffff }).map((v) => ({ set: v, delta: 0 })), // any u32
        fc.integer({ min: -64, max: 64 }).map((d) => ({ set: -1, delta: d })), // near the true length
      ),
      bytes(0, 600),
      (b, change, suffix) => {
        const actual = b.frame.readUInt32LE(4);
        const len = change.set >= 0 ? change.set : actual + change.delta;
        if (len === actual || len < 0 || len > 0xffffffff) return true;
        const m = Buffer.concat([b.frame, suffix]);
        m.writeUInt32LE(len, 4);
        const r = decode(m);
        if (r.kind === 'frame') throw new Error(`length ${len} (true ${actual}) decoded as a frame`);
        return true;
      },
    ),
    { numRuns: 3000 },
  );
});

t.test('header fields rewritten with a recomputed CRC: unsupported version or zero events are corrupt', async (t) => {
  holds(
    t,
    'version and eventCount',
    fc.property(frameArb, fc.integer({ min: 0, max: 255 }), fc.boolean(), (b, version, zeroEvents) => {
      const m = Buffer.from(b.frame);
      if (version === 1 && !zeroEvents) return true;
      m[FRAME_PREFIX_BYTES] = version;
      if (zeroEvents) m.writeUInt32LE(0, FRAME_PREFIX_BYTES + 4);
      m.writeUInt32LE(crc32(m.subarray(FRAME_PREFIX_BYTES)), 8);
      const r = decode(m);
      return r.kind === 'corrupt' && (version !== 1 ? /version/.test(r.reason) : /zero events/.test(r.reason));
    }),
    { numRuns: 500 },
  );
});
