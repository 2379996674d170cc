/**
 * Vdisk events (payloads v1, Avro, registered in the log's $schemas stream).
 *
 * One stream per vdisk, `vdisk-NAME`. Block contents travel in
 * VdiskBlocksWritten: a batch of NBD writes aggregated into one event, with
 * each block at most once (its newest content in the batch). All-zero blocks,
 * WRITE_ZEROES and TRIM travel as block ranges, never as bytes.
 */
import { ZosError, type Tlog } from '../tlog/index.ts';

export const VDISK_STREAM_PREFIX = 'vdisk-';
export const streamOf = (name: string): string => VDISK_STREAM_PREFIX + name;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function validateVdiskName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new ZosError('VDISK_INVALID', `invalid vdisk name "${String(name)}": use 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit`);
  }
}

export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 65536;
/** 2^48 bytes: positions, offsets and slot numbers stay exact in a double. */
export const MAX_VDISK_SIZE = 2 ** 48;

export function validateGeometry(size: number, blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw new ZosError('VDISK_INVALID', `block size must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE} (got ${blockSize})`);
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_VDISK_SIZE || size % blockSize !== 0) {
    throw new ZosError('VDISK_INVALID', `size must be a positive multiple of the block size (${blockSize}) up to 256 TiB (got ${size})`);
  }
}

export interface VdiskCreated {
  size: number;
  blockSize: number;
}
export interface VdiskBlocksWritten {
  /** Block indexes, u64 little-endian, one per data block. */
  blocks: Buffer;
  /** The data blocks' contents, concatenated in `blocks` order. */
  data: Buffer;
  /** Zeroed block ranges: (first block, count) as u64 LE pairs. */
  zeroRanges: Buffer;
  /** This batch was cut by a FLUSH or FUA: a point the client asked to be durable. */
  flushed: boolean;
}
export interface VdiskSnapshotted {
  name: string;
}
export interface VdiskRolledBack {
  /** The vdisk's content becomes what it was after the event at this position. */
  toPosition: number;
  snapshot: string | null;
}
export interface VdiskCloned {
  source: string;
  atPosition: number;
  size: number;
  blockSize: number;
}

export type VdiskEvent =
  | { type: 'VdiskCreated'; data: VdiskCreated }
  | { type: 'VdiskBlocksWritten'; data: VdiskBlocksWritten }
  | { type: 'VdiskSnapshotted'; data: VdiskSnapshotted }
  | { type: 'VdiskRolledBack'; data: VdiskRolledBack }
  | { type: 'VdiskCloned'; data: VdiskCloned }
  | { type: 'VdiskDeleted'; data: Record<string, never> };

const rec = (name: string, fields: Array<{ name: string; type: unknown }>): unknown => ({ type: 'record', name, namespace: 'zos.vdisk', fields });

/** Avro schemas, version 1 of each type. */
export const VDISK_SCHEMAS: ReadonlyArray<readonly [string, number, unknown]> = [
  ['VdiskCreated', 1, rec('VdiskCreated', [{ name: 'size', type: 'long' }, { name: 'blockSize', type: 'int' }])],
  [
    'VdiskBlocksWritten',
    1,
    rec('VdiskBlocksWritten', [
      { name: 'blocks', type: 'bytes' },
      { name: 'data', type: 'bytes' },
      { name: 'zeroRanges', type: 'bytes' },
      { name: 'flushed', type: 'boolean' },
    ]),
  ],
  ['VdiskSnapshotted', 1, rec('VdiskSnapshotted', [{ name: 'name', type: 'string' }])],
  ['VdiskRolledBack', 1, rec('VdiskRolledBack', [{ name: 'toPosition', type: 'long' }, { name: 'snapshot', type: ['null', 'string'] }])],
  [
    'VdiskCloned',
    1,
    rec('VdiskCloned', [
      { name: 'source', type: 'string' },
      { name: 'atPosition', type: 'long' },
      { name: 'size', type: 'long' },
      { name: 'blockSize', type: 'int' },
    ]),
  ],
  ['VdiskDeleted', 1, rec('VdiskDeleted', [])],
];

export const VDISK_EVENT_TYPES = new Set(VDISK_SCHEMAS.map(([t]) => t));

/** Register the vdisk schemas in the log (a no-op once they are there). */
export async function registerVdiskSchemas(log: Tlog): Promise<void> {
  for (const [type, version, schema] of VDISK_SCHEMAS) await log.registerSchema(type, version, schema);
}

// ------------------------------------------------------------ u64 arrays

export function writeU64(buf: Buffer, i: number, v: number): void {
  buf.writeUInt32LE(v % 0x1_0000_0000, i * 8);
  buf.writeUInt32LE(Math.floor(v / 0x1_0000_0000), i * 8 + 4);
}

export function readU64(buf: Buffer, i: number): number {
  return buf.readUInt32LE(i * 8) + buf.readUInt32LE(i * 8 + 4) * 0x1_0000_0000;
}

export function packU64(values: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(values.length * 8);
  for (let i = 0; i < values.length; i++) writeU64(b, i, values[i]!);
  return b;
}

/** Turn a sorted list of block indexes into (first, count) ranges. */
export function toRanges(sorted: readonly number[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i + 1;
    while (j < sorted.length && sorted[j] === sorted[j - 1]! + 1) j++;
    out.push(sorted[i]!, j - i);
    i = j;
  }
  return out;
}

/** Check a decoded VdiskBlocksWritten against the vdisk's geometry. */
export function checkBlocksWritten(e: VdiskBlocksWritten, blockSize: number, blockCount: number, where: string): void {
  const bad = (why: string): never => {
    throw new ZosError('TLOG_BAD_RECORD', `${where}: VdiskBlocksWritten ${why}`);
  };
  if (e.blocks.length % 8 !== 0 || e.zeroRanges.length % 16 !== 0) bad('has a truncated block list');
  const n = e.blocks.length / 8;
  if (e.data.length !== n * blockSize) bad(`carries ${e.data.length} bytes for ${n} blocks of ${blockSize}`);
  for (let i = 0; i < n; i++) if (readU64(e.blocks, i) >= blockCount) bad(`writes block ${readU64(e.blocks, i)} of a ${blockCount}-block vdisk`);
  for (let i = 0; i < e.zeroRanges.length / 8; i += 2) {
    const first = readU64(e.zeroRanges, i);
    const count = readU64(e.zeroRanges, i + 1);
    if (count === 0 || first + count > blockCount) bad(`zeroes blocks ${first}+${count} of a ${blockCount}-block vdisk`);
  }
}
