/**
 * Frame format v1: one sealed log entry (a batch of events of one stream).
 * Pure codec: bytes in, bytes out. All integers little-endian.
 *
 *   frame  := magic:u32 = 0x4653_4F5A ("ZOSF")
 *             bodyLength:u32                 bytes of body
 *             crc:u32                        CRC-32 (zlib) of body
 *             body
 *   body   := header ciphertext chain
 *   header := version:u8 = 1
 *             flags:u8                       bit 0: plaintext was LZ4-compressed
 *             reserved:u16 = 0
 *             eventCount:u32                 >= 1
 *             position:u64                   global position of the first event
 *             firstVersion:u64               stream version of the first event
 *             commitTimeNs:u64               commit time, non-decreasing along the log
 *             streamKey:32B                  keyed BLAKE2b of the stream name
 *             prevChain:32B                  chain value of the previous entry (zeros first)
 *             nonce:24B                      random XChaCha20 nonce
 *   ciphertext := XChaCha20-Poly1305(entryKey, nonce, ad = "zos/entry/v1" ‖ streamKey ‖ flags:u8, plaintext)
 *   chain  := BLAKE2b-256(chainKey, header ‖ tag)  (32B; tag = the last 16 bytes of ciphertext)
 *
 * The CRC finds torn writes and bit rot; the keyed chain finds any change,
 * removal, reordering or insertion of entries by someone without the key.
 */
import { crc32 } from 'node:zlib';
import { ZosError } from './errors.ts';

export const FRAME_MAGIC = 0x46534f5a;
export const FRAME_VERSION = 1;
export const FRAME_PREFIX_BYTES = 12;
export const HEADER_BYTES = 120;
export const CHAIN_BYTES = 32;
export const MIN_BODY_BYTES = HEADER_BYTES + 16 + CHAIN_BYTES;
/** Hard upper bound of one entry's body; larger lengths are corruption. */
export const MAX_BODY_BYTES = 64 * 1024 * 1024;
export const FLAG_LZ4 = 1;
export const ZERO_CHAIN = Buffer.alloc(CHAIN_BYTES);

export interface FrameHeader {
  flags: number;
  eventCount: number;
  position: bigint;
  firstVersion: bigint;
  commitTimeNs: bigint;
  streamKey: Buffer;
  prevChain: Buffer;
  nonce: Buffer;
}

export interface Frame extends FrameHeader {
  ciphertext: Buffer;
  chain: Buffer;
  /** The header bytes exactly as stored (input to the chain). */
  headerBytes: Buffer;
  /** Total bytes of the frame including its prefix. */
  size: number;
}

export const AD_PREFIX = Buffer.from('zos/entry/v1', 'ascii');

export function entryAd(streamKey: Uint8Array, flags: number): Buffer {
  return Buffer.concat([AD_PREFIX, streamKey, Buffer.of(flags & 0xff)]);
}

export function encodeHeader(h: FrameHeader): Buffer {
  if (h.streamKey.length !== 32 || h.prevChain.length !== 32 || h.nonce.length !== 24) {
    throw new ZosError('TLOG_INVALID_ARGUMENT', 'frame header field has the wrong length');
  }
  const b = Buffer.alloc(HEADER_BYTES);
  b.writeUInt8(FRAME_VERSION, 0);
  b.writeUInt8(h.flags, 1);
  b.writeUInt16LE(0, 2);
  b.writeUInt32LE(h.eventCount, 4);
  b.writeBigUInt64LE(h.position, 8);
  b.writeBigUInt64LE(h.firstVersion, 16);
  b.writeBigUInt64LE(h.commitTimeNs, 24);
  h.streamKey.copy(b, 32);
  h.prevChain.copy(b, 64);
  h.nonce.copy(b, 96);
  return b;
}

export function decodeHeader(b: Buffer): FrameHeader {
  if (b.length < HEADER_BYTES) throw new ZosError('TLOG_BAD_FRAME', 'frame header is truncated');
  const version = b.readUInt8(0);
  if (version !== FRAME_VERSION) {
    throw new ZosError('TLOG_UNSUPPORTED_FORMAT', `frame format version ${version} is not supported (this build reads v${FRAME_VERSION})`);
  }
  const eventCount = b.readUInt32LE(4);
  if (eventCount === 0) throw new ZosError('TLOG_BAD_FRAME', 'frame has zero events');
  return {
    flags: b.readUInt8(1),
    eventCount,
    position: b.readBigUInt64LE(8),
    firstVersion: b.readBigUInt64LE(16),
    commitTimeNs: b.readBigUInt64LE(24),
    streamKey: b.subarray(32, 64),
    prevChain: b.subarray(64, 96),
    nonce: b.subarray(96, 120),
  };
}

/**
 * A frame as three parts — prefix+header, ciphertext, chain — so writers can
 * hand them to writev without copying the ciphertext. `size` is their total.
 */
export function encodeFrameParts(headerBytes: Buffer, ciphertext: Buffer, chain: Buffer): { parts: Buffer[]; size: number } {
  const bodyLength = headerBytes.length + ciphertext.length + chain.length;
  if (bodyLength > MAX_BODY_BYTES) {
    throw new ZosError('TLOG_ENTRY_TOO_LARGE', `entry of ${bodyLength} bytes exceeds the ${MAX_BODY_BYTES}-byte limit; split the append into smaller batches`);
  }
  const head = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + headerBytes.length);
  head.writeUInt32LE(FRAME_MAGIC, 0);
  head.writeUInt32LE(bodyLength, 4);
  headerBytes.copy(head, FRAME_PREFIX_BYTES);
  const crc = crc32(chain, crc32(ciphertext, crc32(headerBytes)));
  head.writeUInt32LE(crc, 8);
  return { parts: [head, ciphertext, chain], size: FRAME_PREFIX_BYTES + bodyLength };
}

/** Assemble a full frame from its header bytes, ciphertext and chain. */
export function encodeFrame(headerBytes: Buffer, ciphertext: Buffer, chain: Buffer): Buffer {
  const bodyLength = headerBytes.length + ciphertext.length + chain.length;
  if (bodyLength > MAX_BODY_BYTES) {
    throw new ZosError('TLOG_ENTRY_TOO_LARGE', `entry of ${bodyLength} bytes exceeds the ${MAX_BODY_BYTES}-byte limit; split the append into smaller batches`);
  }
  const out = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + bodyLength);
  out.writeUInt32LE(FRAME_MAGIC, 0);
  out.writeUInt32LE(bodyLength, 4);
  headerBytes.copy(out, FRAME_PREFIX_BYTES);
  ciphertext.copy(out, FRAME_PREFIX_BYTES + headerBytes.length);
  chain.copy(out, FRAME_PREFIX_BYTES + headerBytes.length + ciphertext.length);
  out.writeUInt32LE(crc32(out.subarray(FRAME_PREFIX_BYTES)), 8);
  return out;
}

export type FrameDecodeResult =
  | { kind: 'frame'; frame: Frame }
  /** Not enough bytes yet: a frame being written, or a torn tail. */
  | { kind: 'incomplete'; needed: number }
  | { kind: 'corrupt'; reason: string };

/**
 * Decode the frame starting at `offset` of `buf`. Never throws on bad input.
 * The returned buffers are views into `buf` (no copies): do not mutate `buf` after.
 */
export function decodeFrame(buf: Buffer, offset = 0): FrameDecodeResult {
  const avail = buf.length - offset;
  if (avail < FRAME_PREFIX_BYTES) return { kind: 'incomplete', needed: FRAME_PREFIX_BYTES };
  const magic = buf.readUInt32LE(offset);
  if (magic !== FRAME_MAGIC) {
    return { kind: 'corrupt', reason: `bad frame magic 0x${magic.toString(16).padStart(8, '0')}` };
  }
  const bodyLength = buf.readUInt32LE(offset + 4);
  if (bodyLength < MIN_BODY_BYTES || bodyLength > MAX_BODY_BYTES) {
    return { kind: 'corrupt', reason: `implausible frame length ${bodyLength}` };
  }
  if (avail < FRAME_PREFIX_BYTES + bodyLength) {
    return { kind: 'incomplete', needed: FRAME_PREFIX_BYTES + bodyLength };
  }
  const body = buf.subarray(offset + FRAME_PREFIX_BYTES, offset + FRAME_PREFIX_BYTES + bodyLength);
  const crc = buf.readUInt32LE(offset + 8);
  const actual = crc32(body);
  if (crc !== actual) {
    return { kind: 'corrupt', reason: `CRC mismatch (stored ${crc.toString(16)}, computed ${actual.toString(16)})` };
  }
  let header: FrameHeader;
  try {
    header = decodeHeader(body);
  } catch (err) {
    return { kind: 'corrupt', reason: (err as Error).message };
  }
  const headerBytes = body.subarray(0, HEADER_BYTES);
  return {
    kind: 'frame',
    frame: {
      ...header,
      headerBytes,
      ciphertext: body.subarray(HEADER_BYTES, bodyLength - CHAIN_BYTES),
      chain: body.subarray(bodyLength - CHAIN_BYTES),
      size: FRAME_PREFIX_BYTES + bodyLength,
    },
  };
}

/** Read only the prefix to learn a frame's total size (0 if not a frame start). */
export function peekFrameSize(buf: Buffer, offset = 0): number {
  if (buf.length - offset < FRAME_PREFIX_BYTES) return 0;
  if (buf.readUInt32LE(offset) !== FRAME_MAGIC) return 0;
  const len = buf.readUInt32LE(offset + 4);
  if (len < MIN_BODY_BYTES || len > MAX_BODY_BYTES) return 0;
  return FRAME_PREFIX_BYTES + len;
}
