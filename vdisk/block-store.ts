/**
 * The block store: the projection that holds a vdisk's blocks on local disk,
 * every version of every block, so that reads are one pread and a rollback is
 * a metadata change. It is a cache: delete it and it rebuilds from the log.
 *
 * Files (views/vdisk/NAME/, format 1, see docs/formats.md):
 *   blocks.dat      slots appended in log order; slot = nonce(24) ‖ ciphertext(blockSize) ‖ tag(16),
 *                   XChaCha20-Poly1305 under the vdisk's view key, random nonce per slot,
 *                   AD = block index (u64 LE) ‖ slot number (u64 LE)
 *   history.idx     24-byte records in log order: block (u64), position (u64), slot + 1 (u64; 0 = zeroes)
 *   checkpoint.json what the two files hold up to (lengths, stream version, position), fsynced
 *
 * The history is the block-history index: for each block, the list of
 * positions that changed it and the slot holding each version. Records are
 * kept in memory as columns plus a per-block chain (head → previous), so
 *   - the current slot of a block is one lookup,
 *   - the blocks changed after position P are a suffix of the records,
 *   - the content of a block at P is a walk back along its chain from the head
 *     past the records newer than P.
 * A rollback to P therefore costs O(records after P), and copies no data.
 */
import { closeSync, existsSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import sodium from 'sodium-native';
import { ZosError } from '../tlog/index.ts';
import { StoreIo } from './store-io.ts';

export const BLOCK_STORE_FORMAT_VERSION = 1;
/** The slot value of a block that reads as zeroes (never written, zeroed or trimmed). */
export const ZERO = -1;
/** A slot value readSlots leaves alone (the caller filled that block itself). */
export const SKIP = -2;
const NONCE = 24;
const TAG = 16;
const RECORD_BYTES = 24;
/** Reads of this many blocks or more go to the I/O worker; fewer are read here (synchronous pread). */
const WORKER_READ_BLOCKS = 8;
const HEAD_CHUNK = 65536;

export interface Snapshot {
  name: string;
  position: bigint;
}

export interface StoreGeometry {
  size: number;
  blockSize: number;
}

/** What checkpoint.json holds, sealed (see formats.md): nothing of it is plaintext at rest. */
interface CheckpointFile {
  size: number;
  blockSize: number;
  /** Stream version and log position of the last event applied. */
  streamVersion: string;
  position: string;
  /** The event that created this incarnation of the vdisk: position, stream version, id. */
  createdPosition: string;
  createdVersion: string;
  createdEventId: string;
  /** Id of the last event applied: ties the store to this log, not a copy of another. */
  lastEventId: string;
  slots: number;
  records: number;
  snapshots: Array<{ name: string; position: string }>;
}

const CHECKPOINT_AD = Buffer.from(`zos-vdisk-view\0v${BLOCK_STORE_FORMAT_VERSION}`);

function sealCheckpoint(ck: CheckpointFile, key: Buffer): string {
  const plain = Buffer.from(JSON.stringify(ck), 'utf8');
  const nonce = Buffer.alloc(NONCE);
  sodium.randombytes_buf(nonce);
  const sealed = Buffer.alloc(plain.length + TAG);
  sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(sealed, plain, CHECKPOINT_AD, null, nonce, key);
  return JSON.stringify({ format: 'zos-vdisk-view', version: BLOCK_STORE_FORMAT_VERSION, nonce: nonce.toString('hex'), sealed: sealed.toString('base64') }) + '\n';
}

/** Read and write a sealed checkpoint (tests, and tools that inspect a store). */
export const checkpointFile = {
  read: (dir: string, key: Buffer): { ck: CheckpointFile | null; problem: string | null } => readCheckpoint(dir, key),
  write: (dir: string, key: Buffer, ck: CheckpointFile): void => writeFileSync(join(dir, 'checkpoint.json'), sealCheckpoint(ck, key), { mode: 0o600 }),
};
export type { CheckpointFile };

/** The store's checkpoint, or why there is no usable one (null problem and null checkpoint: nothing there yet). */
function readCheckpoint(dir: string, key: Buffer): { ck: CheckpointFile | null; problem: string | null } {
  const path = join(dir, 'checkpoint.json');
  if (!existsSync(path)) return { ck: null, problem: existsSync(join(dir, 'blocks.dat')) || existsSync(join(dir, 'history.idx')) ? 'its checkpoint is missing' : null };
  let outer: { format?: unknown; version?: unknown; nonce?: unknown; sealed?: unknown };
  try {
    outer = JSON.parse(readFileSync(path, 'utf8')) as typeof outer;
  } catch {
    return { ck: null, problem: 'its checkpoint is unreadable' };
  }
  if (outer?.format !== 'zos-vdisk-view' || typeof outer.nonce !== 'string' || typeof outer.sealed !== 'string') return { ck: null, problem: 'its checkpoint is unreadable' };
  if (outer.version !== BLOCK_STORE_FORMAT_VERSION) return { ck: null, problem: `its format version ${String(outer.version)} is not supported` };
  const nonce = Buffer.from(outer.nonce, 'hex');
  const sealed = Buffer.from(outer.sealed, 'base64');
  if (nonce.length !== NONCE || sealed.length < TAG) return { ck: null, problem: 'its checkpoint is unreadable' };
  const plain = Buffer.alloc(sealed.length - TAG);
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(plain, null, sealed, CHECKPOINT_AD, nonce, key);
  } catch {
    return { ck: null, problem: 'its checkpoint was written under another key, or altered' };
  }
  try {
    const ck = JSON.parse(plain.toString('utf8')) as CheckpointFile;
    if (typeof ck.size !== 'number' || typeof ck.blockSize !== 'number' || typeof ck.slots !== 'number' || typeof ck.records !== 'number') throw new Error('fields');
    return { ck, problem: null };
  } catch {
    return { ck: null, problem: 'its checkpoint is unreadable' };
  }
}

class Column {
  a: Float64Array;
  constructor(n: number) {
    this.a = new Float64Array(n);
  }
  ensure(n: number): void {
    if (n <= this.a.length) return;
    const b = new Float64Array(Math.max(n, this.a.length * 2));
    b.set(this.a);
    this.a = b;
  }
}

export class BlockStore {
  readonly dir: string;
  readonly size: number;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly slotSize: number;
  readonly #key: Buffer;
  #data: FileHandle;
  #index: FileHandle;
  /** Worker-thread I/O for seals and scattered reads (null: all on this thread). */
  #io: StoreIo | null = null;

  // The block-history index, as columns.
  readonly #recBlock = new Column(1024);
  readonly #recPos = new Column(1024);
  readonly #recSlot = new Column(1024);
  #recPrev = new Int32Array(1024);
  #records = 0;
  /** head[block] = newest record of that block, or -1; chunked so sparse big disks stay small. */
  readonly #head = new Map<number, Int32Array>();
  #slots = 0;

  /** Stream version and position of the last applied event (-1 when none). */
  appliedVersion = -1n;
  appliedPosition = -1n;
  createdPosition = -1n;
  createdVersion = -1n;
  createdEventId = '';
  /** Id of the last applied event (set by the caller after each apply). */
  lastEventId = '';
  readonly snapshots: Snapshot[] = [];

  #checkpointed = { slots: 0, records: 0, version: -2n, at: 0 };

  private constructor(dir: string, geometry: StoreGeometry, key: Buffer, data: FileHandle, index: FileHandle) {
    this.dir = dir;
    this.size = geometry.size;
    this.blockSize = geometry.blockSize;
    this.blockCount = geometry.size / geometry.blockSize;
    this.slotSize = geometry.blockSize + NONCE + TAG;
    this.#key = key;
    this.#data = data;
    this.#index = index;
  }

  /**
   * The geometry recorded by the store's checkpoint; null when there is no
   * usable one, with the reason when files are there but cannot be trusted.
   */
  static readGeometry(dir: string, key: Buffer): { geometry: StoreGeometry | null; problem: string | null } {
    const { ck, problem } = readCheckpoint(dir, key);
    return { geometry: ck ? { size: ck.size, blockSize: ck.blockSize } : null, problem };
  }

  /** Remove the store's files (it is a cache). */
  static wipe(dir: string): void {
    for (const f of ['blocks.dat', 'history.idx', 'checkpoint.json', 'checkpoint.json.tmp']) rmSync(join(dir, f), { force: true });
  }

  /**
   * Open the store in `dir`. A missing, mismatched or damaged store is wiped
   * and started empty (reported through `rebuilt`): the caller then replays the
   * vdisk's stream from the start.
   */
  static async open(dir: string, geometry: StoreGeometry, key: Buffer): Promise<{ store: BlockStore; rebuilt: string | null }> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const read = readCheckpoint(dir, key);
    let ck = read.ck;
    let reason = read.problem;
    if (ck && (ck.size !== geometry.size || ck.blockSize !== geometry.blockSize)) reason = 'its geometry differs from the log';
    if (!ck || reason !== null) {
      ck = null;
      BlockStore.wipe(dir);
    }
    const data = await openFile(join(dir, 'blocks.dat'), 'a+', 0o600);
    const index = await openFile(join(dir, 'history.idx'), 'a+', 0o600);
    const store = new BlockStore(dir, geometry, key, data, index);
    try {
      if (ck) {
        const problem = await store.#load(ck);
        if (problem) {
          await store.close();
          BlockStore.wipe(dir);
          const fresh = await BlockStore.open(dir, geometry, key);
          return { store: fresh.store, rebuilt: problem };
        }
      }
      store.#io = await StoreIo.open(join(dir, 'blocks.dat'), dir, key, geometry.blockSize, store.slotSize);
    } catch (err) {
      await store.close();
      throw err;
    }
    return { store, rebuilt: reason };
  }

  async #load(ck: CheckpointFile): Promise<string | null> {
    const dataLen = ck.slots * this.slotSize;
    const indexLen = ck.records * RECORD_BYTES;
    if ((await this.#data.stat()).size < dataLen || (await this.#index.stat()).size < indexLen) return 'it is shorter than its checkpoint';
    // Bytes after the checkpoint were written by a process that died before its next checkpoint: the log replays them.
    await this.#data.truncate(dataLen);
    await this.#index.truncate(indexLen);
    const chunk = Buffer.allocUnsafe(RECORD_BYTES * 65536);
    for (let at = 0; at < ck.records; ) {
      const n = Math.min(65536, ck.records - at);
      const { bytesRead } = await this.#index.read(chunk, 0, n * RECORD_BYTES, at * RECORD_BYTES);
      if (bytesRead !== n * RECORD_BYTES) return 'its history index is short';
      for (let i = 0; i < n; i++) {
        const o = i * RECORD_BYTES;
        const block = chunk.readUInt32LE(o) + chunk.readUInt32LE(o + 4) * 0x1_0000_0000;
        const pos = chunk.readUInt32LE(o + 8) + chunk.readUInt32LE(o + 12) * 0x1_0000_0000;
        const slot = chunk.readUInt32LE(o + 16) + chunk.readUInt32LE(o + 20) * 0x1_0000_0000 - 1;
        if (block >= this.blockCount || slot >= ck.slots || (this.#records > 0 && pos < this.#recPos.a[this.#records - 1]!)) {
          return `its history index is damaged at record ${at + i}`;
        }
        this.#push(block, pos, slot);
      }
      at += n;
    }
    this.#slots = ck.slots;
    this.appliedVersion = BigInt(ck.streamVersion);
    this.appliedPosition = BigInt(ck.position);
    this.createdPosition = BigInt(ck.createdPosition);
    this.createdVersion = BigInt(ck.createdVersion ?? '-1');
    this.createdEventId = ck.createdEventId ?? '';
    this.lastEventId = ck.lastEventId ?? '';
    for (const s of ck.snapshots) this.snapshots.push({ name: s.name, position: BigInt(s.position) });
    this.#checkpointed = { slots: ck.slots, records: ck.records, version: this.appliedVersion, at: Date.now() };
    return null;
  }

  get records(): number {
    return this.#records;
  }

  get slots(): number {
    return this.#slots;
  }

  // ------------------------------------------------------------ the index

  #headChunk(block: number, create: boolean): Int32Array | undefined {
    const c = Math.floor(block / HEAD_CHUNK);
    let h = this.#head.get(c);
    if (!h && create) {
      h = new Int32Array(HEAD_CHUNK).fill(-1);
      this.#head.set(c, h);
    }
    return h;
  }

  #headOf(block: number): number {
    return this.#headChunk(block, false)?.[block % HEAD_CHUNK] ?? -1;
  }

  #push(block: number, pos: number, slot: number): void {
    const i = this.#records;
    if (i >= 0x7fff_ffff) throw new ZosError('VDISK_INVALID', 'the block-history index is full (2^31 records); compacting history is not implemented yet');
    this.#recBlock.ensure(i + 1);
    this.#recPos.ensure(i + 1);
    this.#recSlot.ensure(i + 1);
    if (this.#recPrev.length <= i) {
      const b = new Int32Array(this.#recPrev.length * 2);
      b.set(this.#recPrev);
      this.#recPrev = b;
    }
    const h = this.#headChunk(block, true)!;
    this.#recBlock.a[i] = block;
    this.#recPos.a[i] = pos;
    this.#recSlot.a[i] = slot;
    this.#recPrev[i] = h[block % HEAD_CHUNK]!;
    h[block % HEAD_CHUNK] = i;
    this.#records = i + 1;
  }

  /** The slot holding the block's current content, or ZERO. */
  slotOf(block: number): number {
    const r = this.#headOf(block);
    return r < 0 ? ZERO : this.#recSlot.a[r]!;
  }

  /** The slot that held the block's content right after position `p`, or ZERO. */
  slotAt(block: number, p: number): number {
    let r = this.#headOf(block);
    while (r >= 0 && this.#recPos.a[r]! > p) r = this.#recPrev[r]!;
    return r < 0 ? ZERO : this.#recSlot.a[r]!;
  }

  /** Index of the first record newer than `p` (records are in position order). */
  #firstAfter(p: number): number {
    let lo = 0;
    let hi = this.#records;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#recPos.a[mid]! > p) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Blocks changed after position `p`, each once. */
  changedSince(p: number): number[] {
    const seen = new Set<number>();
    for (let i = this.#firstAfter(p); i < this.#records; i++) seen.add(this.#recBlock.a[i]!);
    return [...seen];
  }

  /**
   * The slot of every block as of position `p` (ZERO for zero blocks), walking
   * only the records newer than `p` back from the current state.
   */
  slotsAt(p: number): Float64Array {
    const out = new Float64Array(this.blockCount).fill(ZERO);
    for (const [c, h] of this.#head) {
      for (let i = 0; i < HEAD_CHUNK; i++) {
        const r = h[i]!;
        if (r >= 0) out[c * HEAD_CHUNK + i] = this.#recSlot.a[r]!;
      }
    }
    for (const b of this.changedSince(p)) out[b] = this.slotAt(b, p);
    return out;
  }

  // ------------------------------------------------------------ block data

  /** The AD of one slot; one buffer reused (every use is a synchronous sodium call). */
  readonly #adBuf = Buffer.allocUnsafe(16);
  #ad(block: number, slot: number): Buffer {
    const ad = this.#adBuf;
    ad.writeUInt32LE(block % 0x1_0000_0000, 0);
    ad.writeUInt32LE(Math.floor(block / 0x1_0000_0000), 4);
    ad.writeUInt32LE(slot % 0x1_0000_0000, 8);
    ad.writeUInt32LE(Math.floor(slot / 0x1_0000_0000), 12);
    return ad;
  }

  #openSlot(raw: Buffer, at: number, block: number, slot: number, out: Buffer, outAt: number): void {
    const nonce = raw.subarray(at, at + NONCE);
    const ct = raw.subarray(at + NONCE, at + this.slotSize);
    try {
      sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out.subarray(outAt, outAt + this.blockSize), null, ct, this.#ad(block, slot), nonce, this.#key);
    } catch {
      throw new ZosError('VDISK_VIEW_CORRUPT', `the block store in ${this.dir} is damaged (block ${block}, slot ${slot} fails authentication); it is a cache: run "zos vdisk rebuild" for this vdisk`);
    }
  }

  /**
   * Read blocks by slot into `out` (blockSize bytes each, at i * blockSize).
   * Runs of consecutive slots are read with one pread.
   */
  async readSlots(blocks: ArrayLike<number>, slots: ArrayLike<number>, out: Buffer): Promise<void> {
    const n = blocks.length;
    if (this.#io && n >= WORKER_READ_BLOCKS) {
      // Many blocks: the preads and the decryption run on a worker thread.
      const got = await this.#io.read(Float64Array.from(blocks), Float64Array.from(slots));
      let skips = false;
      for (let i = 0; i < n && !skips; i++) skips = slots[i] === SKIP;
      if (!skips) got.copy(out, 0, 0, n * this.blockSize);
      else for (let i = 0; i < n; i++) if (slots[i] !== SKIP) got.copy(out, i * this.blockSize, i * this.blockSize, (i + 1) * this.blockSize);
      return;
    }
    // Few blocks: read them here with pread(2). The view is hot in the page
    // cache, so a synchronous pread costs microseconds, less than a thread-pool
    // round trip (which a QD1 client waits for on every request).
    for (let i = 0; i < n; ) {
      const s = slots[i]!;
      if (s === SKIP) {
        i++;
        continue;
      }
      if (s === ZERO) {
        out.fill(0, i * this.blockSize, (i + 1) * this.blockSize);
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && slots[j] === s + (j - i)) j++;
      const count = j - i;
      const raw = count * this.slotSize <= this.#scratch.length ? this.#scratch : Buffer.allocUnsafe(count * this.slotSize);
      const got = readSync(this.#data.fd, raw, 0, count * this.slotSize, s * this.slotSize);
      if (got !== count * this.slotSize) throw new ZosError('VDISK_VIEW_CORRUPT', `the block store in ${this.dir} is truncated at slot ${s}; it is a cache: run "zos vdisk rebuild" for this vdisk`);
      for (let k = 0; k < count; k++) this.#openSlot(raw, k * this.slotSize, blocks[i + k]!, s + k, out, (i + k) * this.blockSize);
      i = j;
    }
  }

  /** Slots read by the synchronous path (decrypted before anything else runs). */
  readonly #scratch = Buffer.allocUnsafe(WORKER_READ_BLOCKS * (65536 + NONCE + TAG));

  /**
   * The content of blocks by slot (no SKIP) as a new buffer, blockSize bytes
   * each: what a worker read is returned as it is, not copied.
   */
  async readSlotsNew(blocks: Float64Array, slots: Float64Array): Promise<Buffer> {
    if (this.#io && blocks.length >= WORKER_READ_BLOCKS) return this.#io.read(blocks, slots);
    const out = Buffer.allocUnsafe(blocks.length * this.blockSize);
    await this.readSlots(blocks, slots, out);
    return out;
  }

  /** Current content of `count` blocks from `first`. */
  async readBlocks(first: number, count: number, out: Buffer = Buffer.allocUnsafe(count * this.blockSize)): Promise<Buffer> {
    const blocks = new Float64Array(count);
    const slots = new Float64Array(count);
    for (let i = 0; i < count; i++) {
      blocks[i] = first + i;
      slots[i] = this.slotOf(first + i);
    }
    await this.readSlots(blocks, slots, out);
    return out;
  }

  /** Current content of one block, synchronously (read-modify-write of partial blocks). */
  readBlockSync(block: number): Buffer {
    const out = Buffer.alloc(this.blockSize);
    const slot = this.slotOf(block);
    if (slot === ZERO) return out;
    const raw = Buffer.allocUnsafe(this.slotSize);
    const n = readSync(this.#data.fd, raw, 0, this.slotSize, slot * this.slotSize);
    if (n !== this.slotSize) throw new ZosError('VDISK_VIEW_CORRUPT', `the block store in ${this.dir} is truncated at slot ${slot}; it is a cache: run "zos vdisk rebuild" for this vdisk`);
    this.#openSlot(raw, 0, block, slot, out, 0);
    return out;
  }

  // ------------------------------------------------------------ applying events

  #recordBytes(from: number): Buffer {
    const n = this.#records - from;
    const b = Buffer.allocUnsafe(n * RECORD_BYTES);
    for (let i = 0; i < n; i++) {
      const r = from + i;
      const o = i * RECORD_BYTES;
      const block = this.#recBlock.a[r]!;
      const pos = this.#recPos.a[r]!;
      const slot1 = this.#recSlot.a[r]! + 1;
      b.writeUInt32LE(block % 0x1_0000_0000, o);
      b.writeUInt32LE(Math.floor(block / 0x1_0000_0000), o + 4);
      b.writeUInt32LE(pos % 0x1_0000_0000, o + 8);
      b.writeUInt32LE(Math.floor(pos / 0x1_0000_0000), o + 12);
      b.writeUInt32LE(slot1 % 0x1_0000_0000, o + 16);
      b.writeUInt32LE(Math.floor(slot1 / 0x1_0000_0000), o + 20);
    }
    return b;
  }

  async #appendRecords(from: number): Promise<void> {
    if (this.#records === from) return;
    const bytes = this.#recordBytes(from);
    await this.#index.write(bytes, 0, bytes.length, from * RECORD_BYTES);
  }

  #applied(position: bigint, version: bigint): void {
    this.appliedPosition = position;
    this.appliedVersion = version;
  }

  /** The vdisk was created (or cloned) by the event at `position`. */
  applyCreated(position: bigint, version: bigint, id: string): void {
    this.createdPosition = position;
    this.createdVersion = version;
    this.createdEventId = id;
    this.lastEventId = id;
    this.#applied(position, version);
  }

  /**
   * Apply a VdiskBlocksWritten at `position`: seal each data block into a new
   * slot (one write for the batch), record zeroed blocks that were not zero.
   * `give`: the caller hands `data` over (it may be moved to the I/O worker).
   */
  async applyWrite(position: bigint, version: bigint, blocks: ArrayLike<number>, data: Buffer, zeroRanges: ArrayLike<number>, give = false): Promise<void> {
    const pos = Number(position);
    const firstRecord = this.#records;
    const n = blocks.length;
    if (n > 0 && this.#io) {
      const firstSlot = this.#slots;
      await this.#io.seal(Float64Array.from(blocks), firstSlot, data.length === n * this.blockSize ? data : data.subarray(0, n * this.blockSize), give);
      this.#slots = firstSlot + n;
      for (let i = 0; i < n; i++) this.#push(blocks[i]!, pos, firstSlot + i);
    } else if (n > 0) {
      const bs = this.blockSize;
      const out = Buffer.allocUnsafe(n * this.slotSize);
      const nonces = Buffer.allocUnsafe(n * NONCE);
      sodium.randombytes_buf(nonces);
      const firstSlot = this.#slots;
      for (let i = 0; i < n; i++) {
        const o = i * this.slotSize;
        nonces.copy(out, o, i * NONCE, (i + 1) * NONCE);
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
          out.subarray(o + NONCE, o + this.slotSize),
          data.subarray(i * bs, (i + 1) * bs),
          this.#ad(blocks[i]!, firstSlot + i),
          null,
          out.subarray(o, o + NONCE),
          this.#key,
        );
      }
      await this.#data.write(out, 0, out.length, firstSlot * this.slotSize);
      this.#slots = firstSlot + n;
      for (let i = 0; i < n; i++) this.#push(blocks[i]!, pos, firstSlot + i);
    }
    for (let i = 0; i + 1 < zeroRanges.length; i += 2) {
      const first = zeroRanges[i]!;
      const end = first + zeroRanges[i + 1]!;
      for (let b = first; b < end; b++) if (this.slotOf(b) !== ZERO) this.#push(b, pos, ZERO);
    }
    await this.#appendRecords(firstRecord);
    this.#applied(position, version);
  }

  /**
   * Apply a VdiskRolledBack at `position`: every block changed after
   * `toPosition` gets the version it had then. Cost O(records after
   * toPosition); no block data moves. Returns the number of blocks changed.
   */
  async applyRollback(position: bigint, version: bigint, toPosition: bigint, onProgress?: (done: number, total: number) => void): Promise<number> {
    const pos = Number(position);
    const to = Number(toPosition);
    const firstRecord = this.#records;
    const changed = this.changedSince(to);
    for (let i = 0; i < changed.length; i++) {
      const b = changed[i]!;
      const target = this.slotAt(b, to);
      if (target !== this.slotOf(b)) this.#push(b, pos, target);
      if (onProgress && (i & 0xffff) === 0xffff) onProgress(i + 1, changed.length);
    }
    onProgress?.(changed.length, changed.length);
    await this.#appendRecords(firstRecord);
    this.#applied(position, version);
    return this.#records - firstRecord;
  }

  /** Events with no effect on blocks (snapshots, foreign types) still advance the applied version. */
  applyMarker(position: bigint, version: bigint, snapshot?: string): void {
    if (snapshot !== undefined) this.snapshots.push({ name: snapshot, position });
    this.#applied(position, version);
  }

  /**
   * Copy blocks into this store as one write at `position` (clone): `read`
   * fills a buffer with the content of the given blocks.
   */
  async applyCopy(
    position: bigint,
    version: bigint,
    id: string,
    blocks: number[],
    read: (blocks: number[], out: Buffer) => Promise<void>,
    onProgress?: (done: number, total: number) => void,
  ): Promise<void> {
    const per = Math.max(1, Math.floor((4 << 20) / this.blockSize));
    for (let i = 0; i < blocks.length; i += per) {
      const part = blocks.slice(i, i + per);
      const buf = Buffer.allocUnsafe(part.length * this.blockSize);
      await read(part, buf);
      await this.applyWrite(position, version, part, buf, [], true);
      onProgress?.(Math.min(i + per, blocks.length), blocks.length);
    }
    this.applyCreated(position, version, id);
  }

  // ------------------------------------------------------------ durability of the cache

  #ckRunning: Promise<void> | null = null;

  /** True when enough has changed since the last checkpoint to write one. */
  checkpointDue(intervalMs = 5000): boolean {
    const c = this.#checkpointed;
    if (c.version === this.appliedVersion) return false;
    return Date.now() - c.at >= intervalMs || (this.#slots - c.slots) * this.slotSize >= 64 << 20;
  }

  /**
   * Start a checkpoint in the background when one is due: what the files hold
   * now is recorded once they are durable, while later applies keep appending
   * (a crash replays those from the log). Call between applies.
   */
  maybeCheckpoint(): void {
    if (this.#ckRunning || !this.checkpointDue()) return;
    const run = this.#writeCheckpoint(this.#state()).finally(() => {
      if (this.#ckRunning === run) this.#ckRunning = null;
    });
    this.#ckRunning = run;
    run.catch(() => undefined); // a failed background checkpoint is retried by the next one
  }

  /** Make both files durable, then record what they hold. */
  async checkpoint(): Promise<void> {
    if (this.#ckRunning) await this.#ckRunning.catch(() => undefined);
    if (this.#checkpointed.version === this.appliedVersion) return;
    await this.#writeCheckpoint(this.#state());
  }

  #state(): CheckpointFile {
    return {
      size: this.size,
      blockSize: this.blockSize,
      streamVersion: this.appliedVersion.toString(),
      position: this.appliedPosition.toString(),
      createdPosition: this.createdPosition.toString(),
      createdVersion: this.createdVersion.toString(),
      createdEventId: this.createdEventId,
      lastEventId: this.lastEventId,
      slots: this.#slots,
      records: this.#records,
      snapshots: this.snapshots.map((s) => ({ name: s.name, position: s.position.toString() })),
    };
  }

  async #writeCheckpoint(ck: CheckpointFile): Promise<void> {
    await this.#data.datasync();
    await this.#index.datasync();
    const path = join(this.dir, 'checkpoint.json');
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, sealCheckpoint(ck, this.#key), { mode: 0o600 });
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    const dfd = openSync(this.dir, 'r');
    try {
      fdatasyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
    this.#checkpointed = { slots: ck.slots, records: ck.records, version: BigInt(ck.streamVersion), at: Date.now() };
  }

  async close(): Promise<void> {
    if (this.#ckRunning) await this.#ckRunning.catch(() => undefined);
    await this.#io?.close();
    this.#io = null;
    await this.#data.close().catch(() => undefined);
    await this.#index.close().catch(() => undefined);
  }
}
