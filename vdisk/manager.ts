/**
 * All vdisks of one log: create, clone, snapshot, roll back, export, delete,
 * history; and the NBD export provider that serves them.
 *
 * Names are kept in a catalog stream (`vdisks`, one VdiskNamed per name),
 * because the log stores stream names only as keyed hashes. A vdisk exists
 * when its stream's newest incarnation (VdiskCreated or VdiskCloned) has no
 * VdiskDeleted after it.
 *
 * One process at a time may hold a log's vdisk views (see host.ts); inside it,
 * operations on one vdisk are serialised.
 */
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ZosError, isZosError, type RecordedEvent, type Tlog } from '../tlog/index.ts';
import type { ExportInfo, ExportProvider } from '../nbd/index.ts';
import { ZERO, type BlockStore, type Snapshot } from './block-store.ts';
import { registerVdiskSchemas, readU64, streamOf, validateGeometry, validateVdiskName, type VdiskBlocksWritten, type VdiskCloned, type VdiskCreated, type VdiskRolledBack } from './events.ts';
import { Vdisk, type Progress } from './vdisk.ts';

export const CATALOG_STREAM = 'vdisks';
const CATALOG_SCHEMA = { type: 'record', name: 'VdiskNamed', namespace: 'zos.vdisk', fields: [{ name: 'name', type: 'string' }] };

/** A point in a vdisk's history. */
export type Target = { position: bigint } | { time: bigint } | { snapshot: string } | 'now';

export interface VdiskInfo {
  name: string;
  size: number;
  blockSize: number;
  /** Position of the event that created (or cloned) this incarnation. */
  createdPosition: bigint;
  /** Stream version and log position of the newest event applied. */
  version: bigint;
  position: bigint;
  snapshots: Snapshot[];
  /** Block versions held by the block store, and history records. */
  slots: number;
  records: number;
}

export interface HistoryEntry {
  position: bigint;
  version: bigint;
  timeNs: bigint;
  type: string;
  actor: string | null;
  /** For writes: data blocks, zeroed blocks, whether a FLUSH/FUA closed the batch. */
  blocks?: number;
  zeroed?: number;
  flushed?: boolean;
  size?: number;
  blockSize?: number;
  snapshot?: string | null;
  toPosition?: bigint;
  source?: string;
  atPosition?: bigint;
}

class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.#tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

export interface ManagerOptions {
  /** Progress of long work (replay, rollback, clone, export). */
  progress?: Progress;
  onWarning?: (message: string) => void;
}

/** Scratch views (past states built for a clone) of processes that died before removing them. */
function removeStaleScratch(root: string): void {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^\.scratch-(\d+)-/.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = pid === process.pid;
    if (!alive) {
      try {
        process.kill(pid, 0);
        alive = true;
      } catch (err) {
        alive = (err as NodeJS.ErrnoException).code === 'EPERM';
      }
    }
    if (!alive) rmSync(join(root, n), { recursive: true, force: true });
  }
}

export class VdiskManager implements ExportProvider {
  readonly log: Tlog;
  readonly #open = new Map<string, Vdisk>();
  readonly #mutex = new KeyedMutex();
  readonly #names = new Set<string>();
  #catalogNext = 0n;
  #progress: Progress | undefined;
  readonly #onWarning: ((message: string) => void) | undefined;
  /** Set by the server: drop every NBD client of an export (before a rollback or delete, or after a failure). */
  onDisconnect: ((name: string) => void) | null = null;

  private constructor(log: Tlog, opts: ManagerOptions) {
    this.log = log;
    this.#progress = opts.progress;
    this.#onWarning = opts.onWarning;
  }

  static async open(log: Tlog, opts: ManagerOptions = {}): Promise<VdiskManager> {
    await registerVdiskSchemas(log);
    await log.registerSchema('VdiskNamed', 1, CATALOG_SCHEMA);
    removeStaleScratch(log.viewDir('vdisk'));
    return new VdiskManager(log, opts);
  }

  /** Run `fn` with progress reported to `progress` (per call, e.g. one control connection). */
  async withProgress<T>(progress: Progress | undefined, fn: () => Promise<T>): Promise<T> {
    const before = this.#progress;
    this.#progress = progress ?? before;
    try {
      return await fn();
    } finally {
      this.#progress = before;
    }
  }

  /** A vdisk's view directory (its block store): named by a keyed hash, so directory names do not show vdisk names. */
  viewDir(name: string): string {
    return this.#dir(name);
  }

  #dir(name: string): string {
    return this.log.viewDir(join('vdisk', this.log.viewKey(`vdisk-dir\0${name}`).toString('hex').slice(0, 32)));
  }

  async #refreshCatalog(): Promise<void> {
    for await (const e of this.log.readStream(CATALOG_STREAM, { fromVersion: this.#catalogNext })) {
      if (e.type === 'VdiskNamed') this.#names.add((e.data as { name: string }).name);
      this.#catalogNext = e.version + 1n;
    }
  }

  /** Names ever catalogued, existing or deleted. */
  async names(): Promise<string[]> {
    await this.#refreshCatalog();
    return [...this.#names].sort();
  }

  async #resolveSource(name: string, position: bigint): Promise<{ store: BlockStore; release: () => Promise<void> }> {
    const pinned = this.#pinned.get(`${name}\0${position}`);
    if (pinned) return { store: pinned, release: async () => undefined };
    const open = this.#open.get(name);
    if (open && open.store.createdPosition <= position && position <= open.store.appliedPosition) {
      return { store: open.store, release: async () => undefined };
    }
    // A past incarnation, or a vdisk not open here: build its state at `position` in a scratch view.
    const dir = this.log.viewDir(join('vdisk', `.scratch-${process.pid}-${randomBytes(6).toString('hex')}`));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const vd = await Vdisk.open(this.log, name, dir, (n, p) => this.#resolveSource(n, p), { upTo: position });
    if (!vd) {
      rmSync(dir, { recursive: true, force: true });
      throw new ZosError('VDISK_INVALID', `vdisk ${name} did not exist at position ${position}; pick a point in its history (zos vdisk history ${name})`);
    }
    return {
      store: vd.store,
      release: async () => {
        await vd.close().catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }

  async #load(name: string, fromVersion?: bigint): Promise<Vdisk | null> {
    const existing = this.#open.get(name);
    if (existing && !existing.failed) return existing;
    if (existing) {
      this.#open.delete(name);
      await existing.close().catch(() => undefined);
    }
    const vd = await Vdisk.open(this.log, name, this.#dir(name), (n, p) => this.#resolveSource(n, p), {
      ...(this.#progress ? { progress: this.#progress } : {}),
      ...(fromVersion === undefined ? {} : { fromVersion }),
      onRebuild: (why) => this.#onWarning?.(`rebuilding the block store of vdisk ${name} from the log: ${why}`),
    });
    if (!vd) return null;
    vd.onFailure = (err) => {
      this.#onWarning?.(err.message);
      this.onDisconnect?.(name);
    };
    this.#open.set(name, vd);
    return vd;
  }

  /** The open vdisk, replaying the log into its view first if needed. */
  async get(name: string): Promise<Vdisk> {
    validateVdiskName(name);
    const vd = await this.#mutex.run(name, () => this.#load(name));
    if (!vd) throw new ZosError('VDISK_NOT_FOUND', `no vdisk named ${name}; see zos vdisk list`);
    return vd;
  }

  async #lastEvent(name: string): Promise<RecordedEvent | null> {
    for await (const e of this.log.readStream(streamOf(name), { direction: 'backward', maxCount: 1 })) return e;
    return null;
  }

  /** The stream version to append a new incarnation at; throws when the vdisk exists. */
  async #vacant(name: string): Promise<bigint> {
    if (this.#open.has(name) && !this.#open.get(name)!.failed) throw new ZosError('VDISK_EXISTS', `vdisk ${name} already exists; pick another name or delete it first`);
    const last = await this.#lastEvent(name);
    if (last && last.type !== 'VdiskDeleted') throw new ZosError('VDISK_EXISTS', `vdisk ${name} already exists; pick another name or delete it first`);
    return last ? last.version : -1n;
  }

  async #catalogue(name: string): Promise<void> {
    await this.#refreshCatalog();
    if (this.#names.has(name)) return;
    await this.log.appendToStream(CATALOG_STREAM, [{ type: 'VdiskNamed', data: { name } }]);
    this.#names.add(name);
  }

  async create(name: string, size: number, blockSize = 4096): Promise<VdiskInfo> {
    validateVdiskName(name);
    validateGeometry(size, blockSize);
    return this.#mutex.run(name, async () => {
      const version = await this.#vacant(name);
      await this.#catalogue(name);
      const data: VdiskCreated = { size, blockSize };
      await this.log.appendToStream(streamOf(name), [{ type: 'VdiskCreated', data }], { expectedVersion: version < 0n ? 'no-stream' : version });
      const vd = await this.#load(name, version + 1n);
      return this.#info(vd!);
    });
  }

  #info(vd: Vdisk): VdiskInfo {
    const s = vd.store;
    return {
      name: vd.name,
      size: s.size,
      blockSize: s.blockSize,
      createdPosition: s.createdPosition,
      version: s.appliedVersion,
      position: s.appliedPosition,
      snapshots: [...s.snapshots],
      slots: s.slots,
      records: s.records,
    };
  }

  /** After every write so far is durable and applied. */
  async info(name: string): Promise<VdiskInfo> {
    const vd = await this.get(name);
    await vd.drain();
    return this.#info(vd);
  }

  /** Every existing vdisk (each view is brought up to date). */
  async vdisks(): Promise<VdiskInfo[]> {
    const out: VdiskInfo[] = [];
    for (const name of await this.names()) {
      const vd = await this.#mutex.run(name, () => this.#load(name));
      if (vd) out.push(this.#info(vd));
    }
    return out;
  }

  /** The log position a target names, for this vdisk (after draining its writes). */
  async resolve(vd: Vdisk, target: Target): Promise<bigint> {
    await vd.drain();
    if (target === 'now') return vd.store.appliedPosition;
    if ('position' in target) {
      const head = await this.log.headPosition();
      if (target.position < 0n || target.position >= head) throw new ZosError('VDISK_INVALID', `position ${target.position} is not in the log (it holds positions 0 to ${head - 1n})`);
      return target.position;
    }
    if ('snapshot' in target) {
      const s = vd.store.snapshots.find((x) => x.name === target.snapshot);
      if (!s) throw new ZosError('VDISK_NOT_FOUND', `vdisk ${vd.name} has no snapshot named "${target.snapshot}"; see zos vdisk history ${vd.name}`);
      return s.position;
    }
    // The state at time T: every event committed at or before T.
    return (await this.log.positionForTime(target.time + 1n)) - 1n;
  }

  async snapshot(name: string, snapshot: string): Promise<bigint> {
    const vd = await this.get(name);
    return this.#mutex.run(name, () => vd.snapshot(snapshot));
  }

  /** Roll back: clients of the export are disconnected first, and reconnect to the rolled-back content. */
  async rollback(name: string, target: Target): Promise<{ position: bigint; toPosition: bigint; blocks: number }> {
    const vd = await this.get(name);
    return this.#mutex.run(name, async () => {
      const to = await this.resolve(vd, target);
      if (to < vd.store.createdPosition) {
        throw new ZosError('VDISK_INVALID', `vdisk ${name} did not exist at position ${to} (it was created at position ${vd.store.createdPosition}); pick a later point`);
      }
      // Only a rollback that will happen disconnects the clients.
      this.onDisconnect?.(name);
      const snap = typeof target === 'object' && 'snapshot' in target ? target.snapshot : null;
      const r = await vd.rollback(to, snap, this.#progress);
      return { ...r, toPosition: to };
    });
  }

  /**
   * A new vdisk with `source`'s content at a point. The source may have been
   * deleted since (its history is still in the log): then give a position,
   * time or one of its snapshots.
   */
  async clone(source: string, name: string, target: Target = 'now'): Promise<VdiskInfo> {
    validateVdiskName(name);
    validateVdiskName(source);
    const src = await this.#mutex.run(source, () => this.#load(source));
    let at: bigint;
    if (src) {
      at = await this.#mutex.run(source, () => this.resolve(src, target));
      if (at < src.store.createdPosition) {
        // Possibly an earlier incarnation of the name: the source resolver rebuilds it, or says it did not exist.
        if (typeof target === 'object' && 'snapshot' in target) throw new ZosError('VDISK_INVALID', `snapshot ${target.snapshot} is not in the current vdisk ${source}`);
      }
    } else {
      at = await this.#resolveDetached(source, target);
    }
    // Keep the source's state at `at` while the clone copies it (built once, even for a deleted source).
    const pinned = await this.#resolveSource(source, at);
    const key = `${source}\0${at}`;
    this.#pinned.set(key, pinned.store);
    try {
      return await this.#mutex.run(name, async () => {
        const version = await this.#vacant(name);
        await this.#catalogue(name);
        const data: VdiskCloned = { source, atPosition: Number(at), size: pinned.store.size, blockSize: pinned.store.blockSize };
        await this.log.appendToStream(streamOf(name), [{ type: 'VdiskCloned', data }], { expectedVersion: version < 0n ? 'no-stream' : version });
        const vd = await this.#load(name, version + 1n);
        return this.#info(vd!);
      });
    } finally {
      this.#pinned.delete(key);
      await pinned.release();
    }
  }

  readonly #pinned = new Map<string, BlockStore>();

  /** A point in the history of a vdisk that is not open (deleted): from its stream. */
  async #resolveDetached(name: string, target: Target): Promise<bigint> {
    const last = await this.#lastEvent(name);
    if (!last) throw new ZosError('VDISK_NOT_FOUND', `no vdisk named ${name}; see zos vdisk list`);
    if (target === 'now') throw new ZosError('VDISK_NOT_FOUND', `vdisk ${name} was deleted at position ${last.position}; give a point before that (--at TIME, @POSITION or --snapshot)`);
    if ('position' in target) return target.position;
    if ('time' in target) return (await this.log.positionForTime(target.time + 1n)) - 1n;
    let found: bigint | null = null;
    for await (const e of this.log.readStream(streamOf(name))) {
      if (e.type === 'VdiskCreated' || e.type === 'VdiskCloned') found = null; // snapshots of the newest incarnation
      if (e.type === 'VdiskSnapshotted' && (e.data as { name: string }).name === target.snapshot) found = e.position;
    }
    if (found === null) throw new ZosError('VDISK_NOT_FOUND', `vdisk ${name} has no snapshot named "${target.snapshot}"; see zos vdisk history ${name}`);
    return found;
  }

  async delete(name: string): Promise<void> {
    const vd = await this.get(name);
    await this.#mutex.run(name, async () => {
      this.onDisconnect?.(name);
      await vd.appendControl([{ type: 'VdiskDeleted', data: {} }], async () => undefined);
      this.#open.delete(name);
      await vd.close().catch(() => undefined);
      rmSync(this.#dir(name), { recursive: true, force: true });
    });
  }

  /** Delete the vdisk's view and replay it from the log. */
  async rebuild(name: string): Promise<VdiskInfo> {
    validateVdiskName(name);
    return this.#mutex.run(name, async () => {
      const vd = this.#open.get(name);
      if (vd) {
        this.onDisconnect?.(name);
        this.#open.delete(name);
        await vd.close().catch(() => undefined);
      }
      rmSync(this.#dir(name), { recursive: true, force: true });
      const fresh = await this.#load(name);
      if (!fresh) throw new ZosError('VDISK_NOT_FOUND', `no vdisk named ${name}; see zos vdisk list`);
      return this.#info(fresh);
    });
  }

  /** Write the vdisk's content at a point (default now) to a raw image file; zero blocks stay holes. */
  async export(name: string, file: string, target: Target = 'now'): Promise<{ position: bigint; bytes: number; dataBlocks: number }> {
    const vd = await this.get(name);
    const at = await this.#mutex.run(name, () => this.resolve(vd, target));
    if (at < vd.store.createdPosition) throw new ZosError('VDISK_INVALID', `vdisk ${name} did not exist at position ${at} (it was created at position ${vd.store.createdPosition})`);
    const store = vd.store;
    const slots = store.slotsAt(Number(at));
    const bs = store.blockSize;
    const fh = await openFile(file, 'w', 0o600);
    let dataBlocks = 0;
    try {
      await fh.truncate(store.size);
      const per = Math.max(1, Math.floor((4 << 20) / bs));
      for (let b = 0; b < store.blockCount; ) {
        if (slots[b] === ZERO) {
          b++;
          continue;
        }
        let e = b + 1;
        while (e < store.blockCount && e - b < per && slots[e] !== ZERO) e++;
        const blocks: number[] = [];
        for (let i = b; i < e; i++) blocks.push(i);
        const buf = Buffer.allocUnsafe((e - b) * bs);
        await store.readSlots(blocks, slots.subarray(b, e), buf);
        await fh.write(buf, 0, buf.length, b * bs);
        dataBlocks += e - b;
        b = e;
        this.#progress?.('export', b, store.blockCount);
      }
      await fh.datasync();
    } finally {
      await fh.close();
    }
    this.#progress?.('export', store.blockCount, store.blockCount);
    return { position: at, bytes: store.size, dataBlocks };
  }

  /** Every event of the vdisk's stream (all incarnations), oldest first. */
  async *history(name: string): AsyncGenerator<HistoryEntry> {
    validateVdiskName(name);
    const open = this.#open.get(name);
    if (open && !open.failed) await open.drain();
    let any = false;
    for await (const e of this.log.readStream(streamOf(name))) {
      any = true;
      const h: HistoryEntry = { position: e.position, version: e.version, timeNs: e.commitTimeNs, type: e.type, actor: e.actor };
      switch (e.type) {
        case 'VdiskCreated': {
          const d = e.data as VdiskCreated;
          h.size = d.size;
          h.blockSize = d.blockSize;
          break;
        }
        case 'VdiskBlocksWritten': {
          const d = e.data as VdiskBlocksWritten;
          h.blocks = d.blocks.length / 8;
          let z = 0;
          for (let i = 1; i < d.zeroRanges.length / 8; i += 2) z += readU64(d.zeroRanges, i);
          h.zeroed = z;
          h.flushed = d.flushed;
          break;
        }
        case 'VdiskSnapshotted':
          h.snapshot = (e.data as { name: string }).name;
          break;
        case 'VdiskRolledBack': {
          const d = e.data as VdiskRolledBack;
          h.toPosition = BigInt(d.toPosition);
          h.snapshot = d.snapshot;
          break;
        }
        case 'VdiskCloned': {
          const d = e.data as VdiskCloned;
          h.source = d.source;
          h.atPosition = BigInt(d.atPosition);
          h.size = d.size;
          h.blockSize = d.blockSize;
          break;
        }
      }
      yield h;
    }
    if (!any) throw new ZosError('VDISK_NOT_FOUND', `no vdisk named ${name}; see zos vdisk list`);
  }

  // ------------------------------------------------------------ ExportProvider

  async list(): Promise<ExportInfo[]> {
    return (await this.vdisks()).map((v) => ({ name: v.name, description: `zos vdisk ${v.name}` }));
  }

  async open(name: string): Promise<Vdisk | null> {
    try {
      return await this.get(name);
    } catch (err) {
      if (isZosError(err, 'VDISK_NOT_FOUND') || isZosError(err, 'VDISK_INVALID')) return null;
      throw err;
    }
  }

  /** Make every write durable and checkpoint every view. */
  async close(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    const errors: unknown[] = [];
    for (const vd of all) await vd.close().catch((e: unknown) => errors.push(e));
    if (errors.length) throw errors[0];
  }
}
