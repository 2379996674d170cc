/**
 * One vdisk: a block device whose every write becomes a tlog event.
 *
 * Write path: an NBD WRITE lands in an in-memory overlay (block → newest
 * content) and is answered at once; reads see it there. In the background the
 * overlay's new blocks are cut into VdiskBlocksWritten events and appended to
 * the vdisk's stream (full batches pipelined; a partial batch when a FLUSH or
 * FUA waits for it, or a few milliseconds after the log became idle, so writes
 * arriving meanwhile ride in the same append). Once an append is durable the
 * blocks are sealed into the block store and leave the overlay. FLUSH and FUA are answered only
 * after the append holding every earlier write has resolved — the log has
 * fdatasync'ed (file) or replicated (Kafka) them.
 *
 * If an append fails the vdisk stops (VDISK_FAILED): writes that were not yet
 * durable are dropped, as NBD allows for unflushed writes, and the manager
 * reopens the vdisk from the log for the next client.
 */
import { randomUUID } from 'node:crypto';
import { ZosError, isZosError, type RecordedEvent, type Tlog } from '../tlog/index.ts';
import type { BlockDevice } from '../nbd/index.ts';
import { BlockStore, SKIP, ZERO } from './block-store.ts';
import {
  checkBlocksWritten,
  packU64,
  readU64,
  streamOf,
  toRanges,
  type VdiskBlocksWritten,
  type VdiskCloned,
  type VdiskCreated,
  type VdiskRolledBack,
  type VdiskSnapshotted,
} from './events.ts';

/** Data per VdiskBlocksWritten event; one append may carry several. */
const EVENT_DATA_BYTES = 1 << 20;
/** Data per append: bounds the copies an append makes on its way (payload, seal, store). */
const APPEND_DATA_BYTES = 2 << 20;
/** Overlay bytes (unlogged + logging) above which writes wait. */
const OVERLAY_LIMIT = 8 << 20;
/**
 * Appends in flight: full batches go out while fewer than this many are in
 * flight, so the log's group commit can put several into one fdatasync (the
 * overlay limit bounds their bytes). A partial batch goes out at once when a
 * FLUSH/FUA/drain waits for it, otherwise PARTIAL_CUT_DELAY_MS after the log
 * became idle: writes not yet flushed may wait (NBD's contract), and batches
 * that grow meanwhile mean fewer, larger entries and fdatasyncs per write.
 */
const MAX_APPENDS_IN_FLIGHT = 3;
/** How long a partial batch nobody waits for may grow before it is appended anyway. */
const PARTIAL_CUT_DELAY_MS = 5;
const ZERO_ENTRY_COST = 64;
const SLAB_BYTES = 512 << 10;

interface OverlayEntry {
  /** null: the block reads as zeroes. */
  data: Buffer | null;
}

interface Waiter {
  seq: number;
  /** A FLUSH or FUA (not an internal drain): the batch that makes it durable is marked flushed. */
  urgent: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** Finds the content of another vdisk at a position (clones). */
export type SourceResolver = (name: string, position: bigint) => Promise<{ store: BlockStore; release: () => Promise<void> }>;

export interface Progress {
  (phase: string, done: number, total: number): void;
}

const ZEROES = Buffer.alloc(65536);
const isAllZero = (b: Buffer): boolean => b[0] === 0 && b[b.length - 1] === 0 && ZEROES.compare(b, 0, b.length, 0, b.length) === 0;

export class Vdisk implements BlockDevice {
  readonly name: string;
  readonly stream: string;
  readonly readOnly = false;
  readonly #log: Tlog;
  #store: BlockStore;
  /** Stream version of the last event appended (or being appended) by us. */
  #version: bigint;

  readonly #overlay = new Map<number, OverlayEntry>();
  #pending = new Map<number, OverlayEntry>();
  #overlayBytes = 0;
  #seq = 0;
  #durableSeq = 0;
  #inflight = 0;
  #cutScheduled = false;
  #cutTimer: NodeJS.Timeout | null = null;
  #slab = Buffer.alloc(0);
  #slabAt = 0;
  /** Writes up to this seq are in batches already cut (appending or appended). */
  #cutSeq = 0;
  #waiters: Waiter[] = [];
  #spaceWaiters: Array<() => void> = [];
  #applyChain: Promise<void> = Promise.resolve();
  #failed: Error | null = null;
  #closed = false;
  /** Called once when the vdisk stops after a log failure. */
  onFailure: ((err: Error) => void) | null = null;

  private constructor(log: Tlog, name: string, store: BlockStore) {
    this.#log = log;
    this.name = name;
    this.stream = streamOf(name);
    this.#store = store;
    this.#version = store.appliedVersion;
  }

  get size(): bigint {
    return BigInt(this.#store.size);
  }

  get blockSize(): number {
    return this.#store.blockSize;
  }

  get store(): BlockStore {
    return this.#store;
  }

  get failed(): Error | null {
    return this.#failed;
  }

  /** Stream version of the newest event this vdisk has appended or applied. */
  get version(): bigint {
    return this.#version;
  }

  // ------------------------------------------------------------ opening and replay

  /**
   * Open the vdisk's view and bring it up to date with its stream. Returns
   * null when the stream does not exist or its last incarnation was deleted.
   * `upTo` stops the replay after that position (building a past state).
   */
  static async open(
    log: Tlog,
    name: string,
    dir: string,
    resolveSource: SourceResolver,
    opts: { upTo?: bigint; fromVersion?: bigint; progress?: Progress; onRebuild?: (why: string) => void } = {},
  ): Promise<Vdisk | null> {
    const key = log.viewKey(`vdisk\0${name}`);
    const stream = streamOf(name);
    const head = await log.streamVersion(stream);
    if (head < 0n) return null;
    let store: BlockStore | null = null;
    const found = BlockStore.readGeometry(dir, key);
    if (found.problem) {
      opts.onRebuild?.(found.problem);
      BlockStore.wipe(dir);
    }
    if (found.geometry) {
      const r = await BlockStore.open(dir, found.geometry, key);
      store = r.store;
      if (r.rebuilt) opts.onRebuild?.(r.rebuilt);
      if (store.appliedVersion > head || (opts.upTo !== undefined && store.appliedPosition > opts.upTo)) {
        if (opts.upTo === undefined) opts.onRebuild?.('it is ahead of the log');
        await store.close();
        BlockStore.wipe(dir);
        store = null;
      } else if (store.appliedVersion < 0n) {
        await store.close();
        store = null;
      } else if (!(await matchesLog(log, stream, store))) {
        opts.onRebuild?.('it does not match this log (a view copied from another data directory, or a log restored from elsewhere)');
        await store.close();
        BlockStore.wipe(dir);
        store = null;
      }
    }
    if (!store && opts.upTo === undefined) {
      // A deleted vdisk has no view: one backward read instead of replaying its whole stream.
      for await (const last of log.readStream(stream, { direction: 'backward', maxCount: 1 })) if (last.type === 'VdiskDeleted') return null;
    }
    let from = store ? store.appliedVersion + 1n : (opts.fromVersion ?? 0n);
    let deleted = false;
    const total = Number(head - from + 1n);
    let done = 0;
    try {
      for await (const e of log.readStream(stream, { fromVersion: from })) {
        if (opts.upTo !== undefined && e.position > opts.upTo) break;
        switch (e.type) {
          case 'VdiskCreated':
          case 'VdiskCloned': {
            const d = e.data as VdiskCreated | VdiskCloned;
            if (store) await store.close();
            BlockStore.wipe(dir);
            store = (await BlockStore.open(dir, { size: d.size, blockSize: d.blockSize }, key)).store;
            deleted = false;
            if (e.type === 'VdiskCloned') await copyFromSource(store, e, d as VdiskCloned, resolveSource, opts.progress);
            else store.applyCreated(e.position, e.version, e.id);
            break;
          }
          case 'VdiskDeleted':
            if (store) await store.close();
            BlockStore.wipe(dir);
            store = null;
            deleted = true;
            break;
          default:
            if (!store) throw new ZosError('TLOG_BAD_RECORD', `stream ${stream} has a ${e.type} at position ${e.position} before any VdiskCreated`);
            await applyRecorded(store, e);
            store.lastEventId = e.id;
        }
        from = e.version + 1n;
        done++;
        if (opts.progress && (done & 63) === 0) opts.progress('replay', done, total);
        store?.maybeCheckpoint();
      }
      opts.progress?.('replay', done, done);
      if (deleted || !store) return null;
      if (opts.upTo === undefined) await store.checkpoint();
      return new Vdisk(log, name, store);
    } catch (err) {
      if (store) await store.close();
      throw err;
    }
  }

  // ------------------------------------------------------------ BlockDevice

  #check(): void {
    if (this.#failed) throw new ZosError('VDISK_FAILED', `vdisk ${this.name} stopped after a log failure (${this.#failed.message}); reconnect to reopen it from the log`);
    if (this.#closed) throw new ZosError('VDISK_FAILED', `vdisk ${this.name} is closed`);
  }

  #inRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.#store.size) {
      throw new ZosError('VDISK_INVALID', `${what} of ${length} bytes at offset ${offset} is outside vdisk ${this.name} (${this.#store.size} bytes)`);
    }
  }

  #current(block: number): Buffer {
    const o = this.#overlay.get(block);
    if (o) return o.data ? Buffer.from(o.data) : Buffer.alloc(this.blockSize);
    return this.#store.readBlockSync(block);
  }

  /**
   * A copy of `data` carved from a 512 KiB slab: one ArrayBuffer per 128 small
   * writes instead of one each (4 KiB copies do not fit Node's Buffer pool),
   * so fewer objects and external bytes for the GC to track. Overlay blocks
   * leave in about the order they came, so slabs are freed as a whole soon.
   */
  #copy(data: Buffer): Buffer {
    if (data.length > SLAB_BYTES / 8) return Buffer.from(data);
    if (this.#slabAt + data.length > this.#slab.length) {
      this.#slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.#slabAt = 0;
    }
    const own = this.#slab.subarray(this.#slabAt, this.#slabAt + data.length);
    this.#slabAt += data.length;
    data.copy(own);
    return own;
  }

  #put(block: number, data: Buffer | null): void {
    const entry: OverlayEntry = { data };
    const old = this.#overlay.get(block);
    if (old) this.#overlayBytes -= old.data ? this.blockSize : ZERO_ENTRY_COST;
    this.#overlayBytes += data ? this.blockSize : ZERO_ENTRY_COST;
    this.#overlay.set(block, entry);
    this.#pending.set(block, entry);
  }

  async #room(): Promise<void> {
    while (this.#overlayBytes > OVERLAY_LIMIT && !this.#failed) {
      await new Promise<void>((resolve) => this.#spaceWaiters.push(resolve));
    }
    this.#check();
  }

  /** Apply `fn` to each block touched by [offset, offset+length): full blocks get null, partial ones a patchable copy. */
  #edit(offset: number, length: number, full: (block: number, at: number) => void, partial: (block: number, buf: Buffer, from: number, to: number, at: number) => void): void {
    const bs = this.blockSize;
    let at = 0;
    while (at < length) {
      const pos = offset + at;
      const block = Math.floor(pos / bs);
      const within = pos - block * bs;
      const n = Math.min(bs - within, length - at);
      if (n === bs) full(block, at);
      else {
        const cur = this.#current(block);
        partial(block, cur, within, within + n, at);
        this.#put(block, isAllZero(cur) ? null : cur);
      }
      at += n;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.#inRange(offset, length, 'read');
    if (length === 0) return Buffer.alloc(0);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const count = last - first + 1;
    const blocks = new Float64Array(count);
    const slots = new Float64Array(count);
    let overlaid = false;
    for (let i = 0; i < count; i++) {
      const b = first + i;
      blocks[i] = b;
      const o = this.#overlay.get(b);
      if (o) {
        slots[i] = SKIP;
        overlaid = true;
      } else slots[i] = this.#store.slotOf(b);
    }
    let out: Buffer;
    if (!overlaid) out = await this.#store.readSlotsNew(blocks, slots); // no copy of what a worker read
    else {
      out = Buffer.allocUnsafe(count * bs);
      for (let i = 0; i < count; i++) {
        if (slots[i] !== SKIP) continue;
        const o = this.#overlay.get(first + i)!;
        if (o.data) o.data.copy(out, i * bs);
        else out.fill(0, i * bs, (i + 1) * bs);
      }
      await this.#store.readSlots(blocks, slots, out);
    }
    const start = offset - first * bs;
    return start === 0 && length === out.length ? out : out.subarray(start, start + length);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.#check();
    if (this.#overlayBytes > OVERLAY_LIMIT) await this.#room();
    const bs = this.blockSize;
    this.#inRange(offset, data.length, 'write');
    // Blocks stay in the overlay until logged, and the caller may reuse its buffer: one copy.
    const own = this.#copy(data);
    this.#edit(
      offset,
      own.length,
      (block, at) => {
        const src = own.subarray(at, at + bs);
        this.#put(block, isAllZero(src) ? null : src);
      },
      (_block, cur, from, to, at) => data.copy(cur, from, at, at + (to - from)),
    );
    await this.#written(fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.#check();
    this.#inRange(offset, length, 'zero');
    if (this.#overlayBytes > OVERLAY_LIMIT) await this.#room();
    this.#edit(
      offset,
      length,
      (block) => this.#put(block, null),
      (_block, cur, from, to) => cur.fill(0, from, to),
    );
    await this.#written(fua);
  }

  /** TRIM reads back as zeroes here (the protocol allows either). */
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.writeZeroes(offset, length, fua);
  }

  async flush(): Promise<void> {
    this.#check();
    await this.#durable(this.#seq, true);
  }

  async #written(fua: boolean): Promise<void> {
    const seq = ++this.#seq;
    if (fua) await this.#durable(seq, true);
    else this.#kick();
  }

  /** Resolve once every write up to `seq` is durable in the log. */
  #durable(seq: number, urgent: boolean): Promise<void> {
    if (this.#durableSeq >= seq) return Promise.resolve();
    if (this.#failed) return Promise.reject(this.#failed);
    const p = new Promise<void>((resolve, reject) => this.#waiters.push({ seq, urgent, resolve, reject }));
    this.#kick();
    return p;
  }

  // ------------------------------------------------------------ the log pipeline

  /** Does a FLUSH, FUA or drain wait for writes not yet in a batch? */
  #awaited(): boolean {
    for (const w of this.#waiters) if (w.seq > this.#cutSeq) return true;
    return false;
  }

  /** Is there something to cut, and room in the pipeline for it? */
  #canCut(): boolean {
    return !this.#cutScheduled && this.#pending.size > 0 && this.#inflight < MAX_APPENDS_IN_FLIGHT && !this.#failed;
  }

  #kick(): void {
    if (!this.#canCut()) return;
    if (this.#pending.size * this.blockSize < APPEND_DATA_BYTES && !this.#awaited()) {
      // A partial batch nobody waits for: NBD lets unflushed writes wait, so let
      // it grow for up to PARTIAL_CUT_DELAY_MS (fewer entries and fdatasyncs per write).
      if (this.#inflight === 0 && !this.#cutTimer) {
        this.#cutTimer = setTimeout(() => {
          this.#cutTimer = null;
          this.#cutNow();
        }, PARTIAL_CUT_DELAY_MS);
      }
      return;
    }
    this.#cutNow();
  }

  /** Cut at the next turn of the event loop, whatever the batch's size. */
  #cutNow(): void {
    if (this.#cutTimer) {
      clearTimeout(this.#cutTimer);
      this.#cutTimer = null;
    }
    if (!this.#canCut()) return;
    this.#cutScheduled = true;
    setImmediate(() => {
      this.#cutScheduled = false;
      this.#cut();
    });
  }

  #cut(): void {
    if (this.#pending.size === 0 || this.#inflight >= MAX_APPENDS_IN_FLIGHT || this.#failed) return;
    const bs = this.blockSize;
    // Take the oldest pending blocks, up to one append's worth of data (zeroes are cheap).
    let batch: Map<number, OverlayEntry>;
    if (this.#pending.size * bs <= APPEND_DATA_BYTES) {
      batch = this.#pending;
      this.#pending = new Map();
    } else {
      batch = new Map();
      let bytes = 0;
      for (const [b, entry] of this.#pending) {
        if (bytes >= APPEND_DATA_BYTES) break;
        batch.set(b, entry);
        this.#pending.delete(b);
        if (entry.data) bytes += bs;
      }
    }
    // Writes up to upToSeq are durable once this append is, only if nothing older stays pending.
    const upToSeq = this.#pending.size === 0 ? this.#seq : 0;
    // Flushed: this batch is the one that makes a waiting FLUSH/FUA durable.
    const flushed = upToSeq > 0 && this.#waiters.some((w) => w.urgent && w.seq > this.#cutSeq && w.seq <= upToSeq);
    if (upToSeq > 0) this.#cutSeq = upToSeq;
    const sorted = [...batch.keys()].sort((a, b) => a - b);
    const zeros: number[] = [];
    const dataBlocks: number[] = [];
    for (const b of sorted) (batch.get(b)!.data ? dataBlocks : zeros).push(b);
    const perEvent = Math.max(1, Math.floor(EVENT_DATA_BYTES / bs));
    const events: VdiskBlocksWritten[] = [];
    for (let i = 0; i < dataBlocks.length || events.length === 0; i += perEvent) {
      const part = dataBlocks.slice(i, i + perEvent);
      const data = Buffer.allocUnsafe(part.length * bs);
      part.forEach((b, k) => batch.get(b)!.data!.copy(data, k * bs));
      events.push({ blocks: packU64(part), data, zeroRanges: Buffer.alloc(0), flushed: false });
    }
    events[0]!.zeroRanges = packU64(toRanges(zeros));
    events[events.length - 1]!.flushed = flushed;
    const expected = this.#version;
    this.#version += BigInt(events.length);
    this.#inflight++;
    const ids = events.map(() => randomUUID());
    this.#log
      .appendToStream(
        this.stream,
        events.map((data, i) => ({ type: 'VdiskBlocksWritten', data, id: ids[i]! })),
        { expectedVersion: expected < 0n ? 'no-stream' : expected },
      )
      .then(
        (r) => {
          this.#durableSeq = Math.max(this.#durableSeq, upToSeq);
          this.#settleWaiters();
          this.#applyChain = this.#applyChain.then(async () => {
            if (this.#failed) return;
            try {
              for (let i = 0; i < events.length; i++) {
                const e = events[i]!;
                // The event's data buffer is ours and not needed after this: hand it over.
                await this.#store.applyWrite(r.position + BigInt(i), r.firstVersion + BigInt(i), u64s(e.blocks), e.data, u64s(e.zeroRanges), true);
                this.#store.lastEventId = ids[i]!;
              }
              this.#store.maybeCheckpoint();
            } catch (err) {
              this.#fail(err as Error);
              return;
            }
            for (const [b, entry] of batch) {
              if (this.#overlay.get(b) !== entry) continue;
              this.#overlay.delete(b);
              this.#overlayBytes -= entry.data ? bs : ZERO_ENTRY_COST;
            }
            this.#wakeSpace();
          });
        },
        (err: Error) => this.#fail(err),
      )
      .finally(() => {
        this.#inflight--;
        this.#kick();
      });
    this.#kick(); // the rest of a partial cut goes out in the next append
  }

  #settleWaiters(): void {
    const still: Waiter[] = [];
    for (const w of this.#waiters) (w.seq <= this.#durableSeq ? w.resolve() : still.push(w));
    this.#waiters = still;
  }

  #wakeSpace(): void {
    if (this.#overlayBytes > OVERLAY_LIMIT && !this.#failed) return;
    const ws = this.#spaceWaiters;
    this.#spaceWaiters = [];
    for (const w of ws) w();
  }

  #fail(err: Error): void {
    if (this.#failed) return;
    const why = isZosError(err) ? err.message : String(err);
    this.#failed = new ZosError('VDISK_FAILED', `vdisk ${this.name}: a write could not be logged (${why}); writes since the last completed FLUSH may be lost; reconnect to reopen it from the log`, { cause: err });
    for (const w of this.#waiters) w.reject(this.#failed);
    this.#waiters = [];
    this.#wakeSpace();
    this.onFailure?.(this.#failed);
  }

  /** Wait until every write so far is durable and applied to the block store. */
  async drain(): Promise<void> {
    this.#check();
    await this.#durable(this.#seq, false);
    await this.#applyChain;
    this.#check();
  }

  // ------------------------------------------------------------ domain operations

  /** Append events to this vdisk's stream after draining writes; apply them with `apply`. */
  async appendControl<T>(events: Array<{ type: string; data: unknown }>, apply: (position: bigint, version: bigint) => Promise<T>): Promise<T> {
    await this.drain();
    const expected = this.#version;
    this.#version += BigInt(events.length);
    const withIds = events.map((e) => ({ ...e, id: randomUUID() }));
    let r;
    try {
      r = await this.#log.appendToStream(this.stream, withIds, { expectedVersion: expected });
    } catch (err) {
      // Whether it landed is unknown to later appends: stop, and reopen from the log.
      this.#fail(err as Error);
      throw err;
    }
    let result!: T;
    this.#applyChain = this.#applyChain.then(async () => {
      result = await apply(r.position, r.firstVersion);
      this.#store.lastEventId = withIds[withIds.length - 1]!.id;
      await this.#store.checkpoint();
    });
    await this.#applyChain;
    return result;
  }

  async snapshot(name: string): Promise<bigint> {
    if (!name || name.length > 200) throw new ZosError('VDISK_INVALID', 'a snapshot needs a name of 1-200 characters');
    if (this.#store.snapshots.some((s) => s.name === name)) throw new ZosError('VDISK_EXISTS', `vdisk ${this.name} already has a snapshot named "${name}"; pick another name`);
    const data: VdiskSnapshotted = { name };
    return this.appendControl([{ type: 'VdiskSnapshotted', data }], async (p, v) => {
      this.#store.applyMarker(p, v, name);
      return p;
    });
  }

  /**
   * Roll back to the state right after position `to`: an event, so history
   * stays and a later rollback can undo it. Returns the rollback's position and
   * the number of blocks that changed.
   */
  async rollback(to: bigint, snapshot: string | null, progress?: Progress): Promise<{ position: bigint; blocks: number }> {
    const created = this.#store.createdPosition;
    if (to < created) throw new ZosError('VDISK_INVALID', `vdisk ${this.name} did not exist at position ${to} (it was created at position ${created}); pick a later point`);
    const data: VdiskRolledBack = { toPosition: Number(to), snapshot };
    return this.appendControl([{ type: 'VdiskRolledBack', data }], async (p, v) => {
      const blocks = await this.#store.applyRollback(p, v, to, progress && ((d, t) => progress('rollback', d, t)));
      return { position: p, blocks };
    });
  }

  /** Stop accepting writes, make every write durable, write the cache's checkpoint. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#failed) await this.drain();
    } finally {
      this.#closed = true;
      if (this.#cutTimer) clearTimeout(this.#cutTimer);
      this.#cutTimer = null;
      await this.#applyChain.catch(() => undefined);
      if (!this.#failed) await this.#store.checkpoint().catch(() => undefined);
      await this.#store.close();
    }
  }
}

const u64s = (b: Buffer): number[] => {
  const out = new Array<number>(b.length / 8);
  for (let i = 0; i < out.length; i++) out[i] = readU64(b, i);
  return out;
};

/** The event at `version` of the stream, or null. */
async function eventAt(log: Tlog, stream: string, version: bigint): Promise<RecordedEvent | null> {
  if (version < 0n) return null;
  for await (const e of log.readStream(stream, { fromVersion: version, maxCount: 1 })) return e.version === version ? e : null;
  return null;
}

/** Is this checkpointed store a view of this log's stream (same creation event, same last event)? */
async function matchesLog(log: Tlog, stream: string, store: BlockStore): Promise<boolean> {
  const created = await eventAt(log, stream, store.createdVersion);
  if (!created || created.id !== store.createdEventId || created.position !== store.createdPosition) return false;
  if (created.type !== 'VdiskCreated' && created.type !== 'VdiskCloned') return false;
  const g = created.data as VdiskCreated;
  if (g.size !== store.size || g.blockSize !== store.blockSize) return false;
  const last = await eventAt(log, stream, store.appliedVersion);
  return last !== null && last.id === store.lastEventId && last.position === store.appliedPosition;
}

/** Apply one recorded event (other than creation and deletion) to a store. */
async function applyRecorded(store: BlockStore, e: RecordedEvent): Promise<void> {
  switch (e.type) {
    case 'VdiskBlocksWritten': {
      const d = e.data as VdiskBlocksWritten;
      checkBlocksWritten(d, store.blockSize, store.blockCount, `${e.stream} at position ${e.position}`);
      await store.applyWrite(e.position, e.version, u64s(d.blocks), d.data, u64s(d.zeroRanges));
      return;
    }
    case 'VdiskRolledBack': {
      const d = e.data as VdiskRolledBack;
      await store.applyRollback(e.position, e.version, BigInt(d.toPosition));
      return;
    }
    case 'VdiskSnapshotted':
      store.applyMarker(e.position, e.version, (e.data as VdiskSnapshotted).name);
      return;
    default:
      // Types added by later versions are skipped but still advance the applied version.
      store.applyMarker(e.position, e.version);
  }
}

/** A clone's content: the source's blocks as of the clone's atPosition. */
async function copyFromSource(store: BlockStore, e: RecordedEvent, d: VdiskCloned, resolveSource: SourceResolver, progress?: Progress): Promise<void> {
  const src = await resolveSource(d.source, BigInt(d.atPosition));
  try {
    if (src.store.blockSize !== store.blockSize || src.store.size !== store.size) {
      throw new ZosError('TLOG_BAD_RECORD', `${e.stream} at position ${e.position}: the clone's geometry differs from its source ${d.source}`);
    }
    const slots = src.store.slotsAt(d.atPosition);
    const blocks: number[] = [];
    for (let b = 0; b < slots.length; b++) if (slots[b] !== ZERO) blocks.push(b);
    await store.applyCopy(e.position, e.version, e.id, blocks, (part, out) => src.store.readSlots(part, part.map((b) => slots[b]!), out), progress && ((dn, t) => progress('clone', dn, t)));
  } finally {
    await src.release();
  }
}
