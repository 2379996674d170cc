/**
 * On-disk formats of the file backend (pure codecs). All integers little-endian.
 *
 * Segment file v1 — log/<base position, 20 digits>.seg
 *   header (64 B):
 *     magic:8B = "ZOSSEG\0\1"  version:u16 = 1  headerBytes:u16 = 64  reserved:u32
 *     basePosition:u64  createdNs:u64  keyId:16B  crc:u32 (CRC-32 of bytes 0..48)  reserved:12B
 *   then frames (see tlog/frame.ts) back to back.
 *
 * Entry index v1 — index/entries.idx (a rebuildable cache of the segments)
 *   header (32 B): magic:8B = "ZOSIDX\0\1"  version:u32 = 1  recordBytes:u32 = 88  logId:16B
 *   record (88 B), one per entry, in log order:
 *     position:u64 firstVersion:u64 commitTimeNs:u64 segmentBase:u64 offset:u64
 *     eventCount:u32 frameSize:u32 streamKey:32B crc:u32 (CRC-32 of bytes 0..80) reserved:u32
 */
import { crc32 } from 'node:zlib';

export const SEGMENT_MAGIC = Buffer.from('ZOSSEG\0\x01', 'latin1');
export const SEGMENT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 64;

export interface SegmentHeader {
  basePosition: bigint;
  createdNs: bigint;
  keyId: Buffer;
}

export function encodeSegmentHeader(h: SegmentHeader): Buffer {
  const b = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(b, 0);
  b.writeUInt16LE(SEGMENT_VERSION, 8);
  b.writeUInt16LE(SEGMENT_HEADER_BYTES, 10);
  b.writeBigUInt64LE(h.basePosition, 16);
  b.writeBigUInt64LE(h.createdNs, 24);
  h.keyId.copy(b, 32, 0, 16);
  b.writeUInt32LE(crc32(b.subarray(0, 48)), 48);
  return b;
}

export type SegmentHeaderResult = { ok: true; header: SegmentHeader } | { ok: false; reason: string };

export function decodeSegmentHeader(b: Buffer): SegmentHeaderResult {
  if (b.length < SEGMENT_HEADER_BYTES) return { ok: false, reason: 'segment header is truncated' };
  if (!b.subarray(0, 8).equals(SEGMENT_MAGIC)) return { ok: false, reason: 'not a zos segment (bad magic)' };
  const version = b.readUInt16LE(8);
  if (version !== SEGMENT_VERSION) return { ok: false, reason: `segment format v${version} is not supported (this build reads v${SEGMENT_VERSION})` };
  if (b.readUInt32LE(48) !== crc32(b.subarray(0, 48))) return { ok: false, reason: 'segment header CRC mismatch' };
  return {
    ok: true,
    header: { basePosition: b.readBigUInt64LE(16), createdNs: b.readBigUInt64LE(24), keyId: Buffer.from(b.subarray(32, 48)) },
  };
}

export function segmentFileName(base: bigint): string {
  return `${base.toString().padStart(20, '0')}.seg`;
}

export function parseSegmentFileName(name: string): bigint | null {
  const m = /^(\d{20})\.seg$/.exec(name);
  return m ? BigInt(m[1]!) : null;
}

export const INDEX_MAGIC = Buffer.from('ZOSIDX\0\x01', 'latin1');
export const INDEX_VERSION = 1;
export const INDEX_HEADER_BYTES = 32;
export const INDEX_RECORD_BYTES = 88;

export interface IndexRecord {
  position: bigint;
  firstVersion: bigint;
  commitTimeNs: bigint;
  segmentBase: bigint;
  offset: number;
  eventCount: number;
  frameSize: number;
  streamKey: Buffer;
}

export function encodeIndexHeader(logId: Buffer): Buffer {
  const b = Buffer.alloc(INDEX_HEADER_BYTES);
  INDEX_MAGIC.copy(b, 0);
  b.writeUInt32LE(INDEX_VERSION, 8);
  b.writeUInt32LE(INDEX_RECORD_BYTES, 12);
  logId.copy(b, 16, 0, 16);
  return b;
}

export function indexHeaderMatches(b: Buffer, logId: Buffer): boolean {
  return (
    b.length >= INDEX_HEADER_BYTES &&
    b.subarray(0, 8).equals(INDEX_MAGIC) &&
    b.readUInt32LE(8) === INDEX_VERSION &&
    b.readUInt32LE(12) === INDEX_RECORD_BYTES &&
    b.subarray(16, 32).equals(logId.subarray(0, 16))
  );
}

export function encodeIndexRecord(r: IndexRecord, out: Buffer = Buffer.alloc(INDEX_RECORD_BYTES), at = 0): Buffer {
  out.writeBigUInt64LE(r.position, at);
  out.writeBigUInt64LE(r.firstVersion, at + 8);
  out.writeBigUInt64LE(r.commitTimeNs, at + 16);
  out.writeBigUInt64LE(r.segmentBase, at + 24);
  out.writeBigUInt64LE(BigInt(r.offset), at + 32);
  out.writeUInt32LE(r.eventCount, at + 40);
  out.writeUInt32LE(r.frameSize, at + 44);
  r.streamKey.copy(out, at + 48, 0, 32);
  out.writeUInt32LE(crc32(out.subarray(at, at + 80)), at + 80);
  out.writeUInt32LE(0, at + 84);
  return out;
}

/** Returns null for a record whose CRC does not match. */
export function decodeIndexRecord(b: Buffer, at = 0): IndexRecord | null {
  if (b.length - at < INDEX_RECORD_BYTES) return null;
  if (b.readUInt32LE(at + 80) !== crc32(b.subarray(at, at + 80))) return null;
  return {
    position: b.readBigUInt64LE(at),
    firstVersion: b.readBigUInt64LE(at + 8),
    commitTimeNs: b.readBigUInt64LE(at + 16),
    segmentBase: b.readBigUInt64LE(at + 24),
    offset: Number(b.readBigUInt64LE(at + 32)),
    eventCount: b.readUInt32LE(at + 40),
    frameSize: b.readUInt32LE(at + 44),
    streamKey: Buffer.from(b.subarray(at + 48, at + 80)),
  };
}
