/**
 * The embedded file backend: segmented append-only files, group commit with
 * fdatasync before any append resolves, an entry index rebuilt from the
 * segments when missing or stale, torn-tail repair on open, and safe sharing of
 * one directory by several processes (a cross-process writer lock; readers
 * catch up by reading what others appended).
 */
import { existsSync, fstatSync, mkdirSync, readdirSync, watch, writeSync, writevSync, type FSWatcher } from 'node:fs';
import { open, rename, mkdir, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ZosError, ioError } from '../errors.ts';
import {
  decodeFrame,
  ZERO_CHAIN,
  FRAME_MAGIC,
  type Frame,
} from '../frame.ts';
import type { BackendAppendResult, BackendStats, ChainSigner, LogBackend, TailState } from '../backend.ts';
import type { SealedEntry } from '../sealer.ts';
import type { ExpectedVersion } from '../types.ts';
import { nowNs } from '../clock.ts';
import { EntryTable, type EntryRow } from '../entry-table.ts';
import { GroupCommitQueue, checkFrameLinks, planGroup, type PendingAppend } from '../group-commit.ts';
import {
  decodeIndexRecord,
  decodeSegmentHeader,
  encodeIndexHeader,
  encodeIndexRecord,
  encodeSegmentHeader,
  indexHeaderMatches,
  INDEX_HEADER_BYTES,
  INDEX_RECORD_BYTES,
  parseSegmentFileName,
  segmentFileName,
  SEGMENT_HEADER_BYTES,
} from './formats.ts';
import { Mutex } from './mutex.ts';
import { WriterLock } from './writer-lock.ts';

export interface FileBackendOptions {
  /** Directory holding log/ and index/. */
  dir: string;
  signer: ChainSigner;
  /** 16-byte id of this log (from the data directory's zos.json). */
  logId: Buffer;
  /** Rotate segments once they reach this size (default 256 MiB). */
  segmentMaxBytes?: number;
  /** Never take the writer lock, never repair; append() throws. */
  readOnly?: boolean;
  /** Upper bound of bytes committed in one group (default 16 MiB). */
  groupMaxBytes?: number;
  /** Also cut a corrupt (not just incomplete) last entry that nothing valid follows. */
  repairCorruptTail?: boolean;
}

interface Segment {
  base: bigint;
  path: string;
  /** Bytes known valid (header + whole frames). */
  size: number;
  fh: FileHandle | null;
}

const READ_CHUNK = 1 << 20;
const SYNC_WRITE_MAX = 256 * 1024;
/** Keep the writer lock this long after a group in case another follows. */
const LOCK_LINGER_MS = 2;
/**
 * Let go as soon as another process knocks (see WriterLock), and in any case
 * after LOCK_MAX_HOLD_MS; then stay away LOCK_YIELD_MS so the waiter (which
 * polls at least every 2 ms) gets its turn.
 */
const LOCK_MAX_HOLD_MS = 500;
const LOCK_YIELD_MS = 5;

export class FileBackend implements LogBackend {
  readonly kind = 'file';
  readonly #dir: string;
  readonly #logDir: string;
  readonly #indexPath: string;
  readonly #signer: ChainSigner;
  readonly #logId: Buffer;
  readonly #segmentMaxBytes: number;
  readonly #groupMaxBytes: number;
  readonly #readOnly: boolean;
  readonly #repairCorruptTail: boolean;
  readonly #table = new EntryTable();
  readonly #segments: Segment[] = [];
  readonly #mutex = new Mutex();
  #lock: WriterLock | null = null;
  #lockSince = 0;
  #lastGroupAt = 0;
  #yieldUntil = 0;
  #lingerTimer: NodeJS.Timeout | null = null;
  #lastChain: Buffer = ZERO_CHAIN;
  #lastTime = 0n;
  /** Entries [0, visible) may be read: our own appends become visible once durable. */
  #visible = 0;
  #indexFh: FileHandle | null = null;
  #indexedCount = 0;
  #indexTrimmed = false;
  readonly #queue: GroupCommitQueue;
  /** Set when a read-only open found entries it could not accept (see zos log verify). */
  damage: ZosError | null = null;
  #closed = false;
  #waiters = new Set<() => void>();
  #watcher: FSWatcher | null = null;
  #pollTimer: NodeJS.Timeout | null = null;

  private constructor(opts: FileBackendOptions) {
    this.#dir = opts.dir;
    this.#logDir = join(opts.dir, 'log');
    this.#indexPath = join(opts.dir, 'index', 'entries.idx');
    this.#signer = opts.signer;
    this.#logId = opts.logId;
    this.#segmentMaxBytes = opts.segmentMaxBytes ?? 256 * 1024 * 1024;
    this.#groupMaxBytes = opts.groupMaxBytes ?? 16 * 1024 * 1024;
    this.#readOnly = opts.readOnly ?? false;
    this.#repairCorruptTail = opts.repairCorruptTail ?? false;
    this.#queue = new GroupCommitQueue((group) => this.#mutex.run(() => this.#commit(group)), this.#groupMaxBytes);
  }

  static async open(opts: FileBackendOptions): Promise<FileBackend> {
    const b = new FileBackend(opts);
    try {
      mkdirSync(b.#logDir, { recursive: true, mode: 0o700 });
      mkdirSync(join(opts.dir, 'index'), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw ioError(`cannot create ${b.#logDir}`, err);
    }
    if (!b.#readOnly) b.#lock = new WriterLock(opts.dir);
    try {
      await b.#load();
    } catch (err) {
      await b.#closeHandles();
      throw err;
    }
    return b;
  }

  // ---------------------------------------------------------------- loading

  async #load(): Promise<void> {
    this.#discoverSegments();
    await this.#loadIndex();
    if (this.#readOnly) {
      await this.#catchUp(false);
    } else {
      await this.#lock!.acquire();
      try {
        await this.#catchUp(true);
        await this.#writeMissingIndexRecords();
      } finally {
        await this.#lock!.release();
      }
    }
    this.#visible = this.#table.length;
  }

  #discoverSegments(): void {
    let names: string[];
    try {
      names = readdirSync(this.#logDir);
    } catch (err) {
      throw ioError(`cannot list ${this.#logDir}`, err);
    }
    const known = new Set(this.#segments.map((s) => s.base));
    const bases = names
      .map(parseSegmentFileName)
      .filter((b): b is bigint => b !== null && !known.has(b))
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const base of bases) {
      this.#segments.push({ base, path: join(this.#logDir, segmentFileName(base)), size: 0, fh: null });
    }
    this.#segments.sort((a, b) => (a.base < b.base ? -1 : a.base > b.base ? 1 : 0));
  }

  async #segmentFh(seg: Segment): Promise<FileHandle> {
    if (!seg.fh) {
      try {
        seg.fh = await open(seg.path, this.#readOnly ? 'r' : 'r+');
      } catch (err) {
        throw ioError(`cannot open segment ${seg.path}`, err);
      }
    }
    return seg.fh;
  }

  async #readAt(seg: Segment, offset: number, length: number): Promise<Buffer> {
    const fh = await this.#segmentFh(seg);
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got === length ? buf : buf.subarray(0, got);
  }

  async #checkSegmentHeader(seg: Segment): Promise<void> {
    const hb = await this.#readAt(seg, 0, SEGMENT_HEADER_BYTES);
    const h = decodeSegmentHeader(hb);
    if (!h.ok) {
      throw new ZosError('TLOG_CORRUPT', `position ${seg.base}: segment ${segmentFileName(seg.base)} is unreadable: ${h.reason}; run zos log verify`, { context: { position: seg.base, segment: seg.path } });
    }
    if (!h.header.keyId.equals(this.#signer.keyId)) {
      throw new ZosError('TLOG_WRONG_KEY', 'wrong key: this log was written with a different master key; use the key file it was created with (--key-file or ZOS_KEY_FILE)');
    }
    if (h.header.basePosition !== seg.base) {
      throw new ZosError('TLOG_CORRUPT', `position ${this.#table.head}: segment ${segmentFileName(seg.base)} says it starts at position ${h.header.basePosition}, its name says ${seg.base}; run zos log verify`, {
        context: { position: this.#table.head },
      });
    }
  }

  /** Load index/entries.idx as far as it agrees with the segments. */
  async #loadIndex(): Promise<void> {
    let fh: FileHandle;
    try {
      fh = await open(this.#indexPath, this.#readOnly ? 'r' : 'a+', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw ioError(`cannot open ${this.#indexPath}`, err);
    }
    try {
      const { size } = await fh.stat();
      if (size < INDEX_HEADER_BYTES) return;
      const data = Buffer.allocUnsafe(size);
      await fh.read(data, 0, size, 0);
      if (!indexHeaderMatches(data, this.#logId)) return;
      const segIdx = new Map(this.#segments.map((s, i) => [s.base, i]));
      const rows: EntryRow[] = [];
      let expectPos = 0n;
      for (let at = INDEX_HEADER_BYTES; at + INDEX_RECORD_BYTES <= size; at += INDEX_RECORD_BYTES) {
        const r = decodeIndexRecord(data, at);
        if (!r || r.position !== expectPos) break;
        const si = segIdx.get(r.segmentBase);
        if (si === undefined) break;
        rows.push({ ...r, segment: si });
        expectPos = r.position + BigInt(r.eventCount);
      }
      // Trust the index only as far as its last entry still matches the segment bytes.
      while (rows.length > 0) {
        const last = rows[rows.length - 1]!;
        const seg = this.#segments[last.segment]!;
        const buf = await this.#readAt(seg, last.offset, last.frameSize);
        const d = decodeFrame(buf);
        if (d.kind === 'frame' && d.frame.position === last.position && d.frame.size === last.frameSize) {
          this.#lastChain = Buffer.from(d.frame.chain);
          this.#lastTime = d.frame.commitTimeNs;
          break;
        }
        rows.length = Math.max(0, rows.length - Math.max(1, rows.length >> 4));
      }
      for (const r of rows) this.#table.push(r);
      this.#indexedCount = rows.length;
      // Segments start at size 0 (unscanned, settled by #catchUp); mark the indexed ones.
      if (rows.length > 0) {
        const last = rows[rows.length - 1]!;
        for (let s = 0; s < last.segment; s++) this.#segments[s]!.size = -1; // sealed, size resolved lazily
        this.#segments[last.segment]!.size = last.offset + last.frameSize;
      }
    } finally {
      await fh.close();
    }
  }

  /**
   * Read frames beyond what the table holds and add them. As the writer
   * (`repair`), cut a torn tail; otherwise stop at anything incomplete.
   */
  async #catchUp(repair: boolean): Promise<void> {
    if (repair) return this.#catchUpInner(true);
    try {
      await this.#catchUpInner(false);
    } catch (err) {
      // A reader stops at damage and reports it, so that zos log verify can still open the log.
      if (!(err instanceof ZosError) || err.code === 'TLOG_WRONG_KEY' || err.code === 'TLOG_IO') throw err;
      this.damage ??= err;
    }
  }

  async #catchUpInner(repair: boolean): Promise<void> {
    // Another process can only have added a segment that starts at our head
    // (segments rotate on entry boundaries), so one stat replaces a readdir.
    const head = this.#table.head;
    const last = this.#segments[this.#segments.length - 1];
    if (!last || (last.base !== head && existsSync(join(this.#logDir, segmentFileName(head))))) this.#discoverSegments();
    if (this.#segments.length === 0) return;
    // Start at the segment holding the table's end.
    let si = 0;
    if (this.#table.length > 0) si = this.#table.segmentOf(this.#table.length - 1);
    for (; si < this.#segments.length; si++) {
      const seg = this.#segments[si]!;
      if (seg.size <= 0) {
        if (seg.base !== this.#table.head) {
          if (seg.size === -1) continue; // earlier sealed segment
          if (seg.base > this.#table.head) {
            throw new ZosError('TLOG_CORRUPT', `position ${this.#table.head}: segment ${segmentFileName(seg.base)} starts at position ${seg.base} but the log before it ends at ${this.#table.head}: entries are missing; run zos log verify`, { context: { position: this.#table.head } });
          }
          continue;
        }
        await this.#checkSegmentHeader(seg);
        seg.size = SEGMENT_HEADER_BYTES;
      }
      const stop = await this.#scanSegment(seg, si, repair);
      if (stop === 'incomplete') return;
      let next = this.#segments[si + 1];
      if (!next) {
        // Another process may have rotated: its new segment starts at our head.
        if (!existsSync(join(this.#logDir, segmentFileName(this.#table.head)))) return;
        this.#discoverSegments();
        next = this.#segments[si + 1];
        if (!next) return;
      }
      if (next.base !== this.#table.head) {
        if (next.base < this.#table.head) {
          throw new ZosError('TLOG_CORRUPT', `position ${this.#table.head}: segment ${segmentFileName(next.base)} overlaps the one before it (which ends at position ${this.#table.head}); run zos log verify`, { context: { position: this.#table.head } });
        }
        throw new ZosError('TLOG_CORRUPT', `position ${this.#table.head}: segment ${segmentFileName(next.base)} starts at position ${next.base} but the log before it ends at ${this.#table.head}: entries are missing; run zos log verify`, { context: { position: this.#table.head } });
      }
    }
  }

  /** Scan one segment from its known size; returns how the scan ended. */
  async #scanSegment(seg: Segment, si: number, repair: boolean): Promise<'end' | 'incomplete'> {
    const fh = await this.#segmentFh(seg);
    const fileSize = fstatSync(fh.fd).size;
    let offset = seg.size;
    let buf: Buffer = Buffer.alloc(0);
    let bufStart = offset;
    while (offset < fileSize) {
      const rel = offset - bufStart;
      let d = decodeFrame(buf, rel);
      if (d.kind === 'incomplete' && bufStart + buf.length < fileSize) {
        const want = Math.max(READ_CHUNK, d.needed);
        const chunk = await this.#readAt(seg, offset, Math.min(want, fileSize - offset));
        buf = chunk;
        bufStart = offset;
        d = decodeFrame(buf, 0);
      }
      if (d.kind === 'frame') {
        try {
          this.#acceptFrame(d.frame, si, offset);
        } catch (err) {
          // A writer must not build on a broken log; a reader stops here and
          // reports it, so that zos log verify can still open the log.
          if (repair) throw err;
          this.damage ??= err as ZosError;
          return 'incomplete';
        }
        offset += d.frame.size;
        seg.size = offset;
        continue;
      }
      // Something other than a whole valid frame at `offset`.
      if (!repair) return 'incomplete';
      const rest = await this.#readAt(seg, offset, fileSize - offset);
      if (d.kind === 'incomplete' || rest.every((x) => x === 0)) {
        await this.#cutTail(seg, offset, rest);
        return 'end';
      }
      const later = hasLaterFrame(rest);
      if (!later && this.#repairCorruptTail) {
        await this.#cutTail(seg, offset, rest);
        return 'end';
      }
      if (later) {
        throw new ZosError('TLOG_CORRUPT', `corrupt entry at position ${this.#table.head} (${segmentFileName(seg.base)} offset ${offset}): ${d.reason}; valid entries follow it, so it is not a torn write. Run zos log verify and restore the segment from a copy`, {
          context: { position: this.#table.head, segment: seg.path, offset },
        });
      }
      throw new ZosError('TLOG_CORRUPT', `the log ends in a corrupt entry at position ${this.#table.head} (${segmentFileName(seg.base)} offset ${offset}): ${d.reason}. If this follows a power loss, run zos log repair --corrupt-tail to cut it (the bytes are kept under log/quarantine)`, {
        context: { position: this.#table.head, segment: seg.path, offset },
      });
    }
    return 'end';
  }

  #acceptFrame(f: Frame, si: number, offset: number): void {
    checkFrameLinks(f, this.#table, this.#lastChain, `${segmentFileName(this.#segments[si]!.base)} offset ${offset}`);
    this.#table.push({
      position: f.position,
      firstVersion: f.firstVersion,
      commitTimeNs: f.commitTimeNs,
      segment: si,
      offset,
      eventCount: f.eventCount,
      frameSize: f.size,
      streamKey: f.streamKey,
    });
    this.#lastChain = Buffer.from(f.chain);
    if (f.commitTimeNs > this.#lastTime) this.#lastTime = f.commitTimeNs;
  }

  async #cutTail(seg: Segment, offset: number, rest: Buffer): Promise<void> {
    if (rest.length === 0) return;
    const qdir = join(this.#logDir, 'quarantine');
    try {
      await mkdir(qdir, { recursive: true });
      if (!rest.every((x) => x === 0)) {
        await writeFile(join(qdir, `${segmentFileName(seg.base)}.${offset}.${Date.now()}.tail`), rest, { mode: 0o600 });
      }
      const fh = await this.#segmentFh(seg);
      await fh.truncate(offset);
      await fh.datasync();
    } catch (err) {
      throw ioError(`cannot cut the torn tail of ${seg.path}`, err);
    }
    seg.size = offset;
  }

  async #openIndexForWrite(): Promise<FileHandle> {
    if (this.#indexFh) return this.#indexFh;
    let fh = await open(this.#indexPath, 'a+', 0o600).catch((err) => {
      throw ioError(`cannot open ${this.#indexPath}`, err);
    });
    const { size } = await fh.stat();
    const head = Buffer.alloc(INDEX_HEADER_BYTES);
    if (size >= INDEX_HEADER_BYTES) await fh.read(head, 0, INDEX_HEADER_BYTES, 0);
    if (size < INDEX_HEADER_BYTES || !indexHeaderMatches(head, this.#logId)) {
      // Missing, foreign or damaged: start it anew (it is only a cache).
      await fh.close();
      const tmp = `${this.#indexPath}.${process.pid}.tmp`;
      await writeFile(tmp, encodeIndexHeader(this.#logId), { mode: 0o600 });
      await rename(tmp, this.#indexPath);
      fh = await open(this.#indexPath, 'r+');
      this.#indexedCount = 0;
    } else {
      await fh.close();
      fh = await open(this.#indexPath, 'r+');
    }
    this.#indexFh = fh;
    return fh;
  }

  /** Bring index/entries.idx up to the table (caller holds the writer lock). */
  async #writeMissingIndexRecords(): Promise<void> {
    const fh = await this.#openIndexForWrite();
    const from = Math.min(this.#indexedCount, this.#table.length);
    if (from === this.#table.length) return;
    const n = this.#table.length - from;
    const out = Buffer.alloc(n * INDEX_RECORD_BYTES);
    for (let i = 0; i < n; i++) {
      const r = this.#table.row(from + i);
      encodeIndexRecord({ ...r, segmentBase: this.#segments[r.segment]!.base }, out, i * INDEX_RECORD_BYTES);
    }
    writeFullySync(fh.fd, out, INDEX_HEADER_BYTES + from * INDEX_RECORD_BYTES);
    this.#indexedCount = this.#table.length;
    if (!this.#indexTrimmed) {
      // Records beyond the log's end (from before a torn tail was cut) go once.
      const expectedSize = INDEX_HEADER_BYTES + this.#table.length * INDEX_RECORD_BYTES;
      if (fstatSync(fh.fd).size > expectedSize) await fh.truncate(expectedSize);
      this.#indexTrimmed = true;
    }
  }

  // ---------------------------------------------------------------- appends

  append(entry: SealedEntry, expected: ExpectedVersion): Promise<BackendAppendResult> {
    if (this.#closed) return Promise.reject(new ZosError('TLOG_CLOSED', 'the log is closed'));
    if (this.#readOnly) return Promise.reject(new ZosError('TLOG_INVALID_ARGUMENT', 'this log was opened read-only'));
    return this.#queue.submit(entry, expected);
  }

  /**
   * Take the writer lock unless we still hold it from the last group. While we
   * hold it nobody else can append, so catching up is only needed after a
   * fresh acquire. Returns whether it was freshly taken.
   */
  async #holdLock(): Promise<boolean> {
    const lock = this.#lock!;
    if (lock.held) return false;
    const wait = this.#yieldUntil - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await lock.acquire();
    this.#lockSince = Date.now();
    return true;
  }

  /**
   * After a group: keep the lock for the next one when appends keep coming
   * (LOCK_LINGER_MS), but never hold it longer than LOCK_MAX_HOLD_MS at a
   * stretch, so that other processes' appenders get their turn.
   */
  async #afterGroup(): Promise<void> {
    const lock = this.#lock!;
    if (!lock.held) return;
    if (lock.contended || Date.now() - this.#lockSince >= LOCK_MAX_HOLD_MS) {
      await lock.release();
      this.#yieldUntil = Date.now() + LOCK_YIELD_MS;
      return;
    }
    this.#lastGroupAt = Date.now();
    if (this.#lingerTimer) return;
    this.#lingerTimer = setTimeout(() => void this.#lingerExpired(), LOCK_LINGER_MS);
    this.#lingerTimer.unref();
  }

  async #lingerExpired(): Promise<void> {
    this.#lingerTimer = null;
    await this.#mutex.run(async () => {
      const lock = this.#lock!;
      if (!lock.held) return;
      if (this.#queue.busy && Date.now() - this.#lastGroupAt < LOCK_LINGER_MS) {
        this.#lingerTimer = setTimeout(() => void this.#lingerExpired(), LOCK_LINGER_MS);
        this.#lingerTimer.unref();
        return;
      }
      await lock.release();
    });
  }

  /** One group commit: lock, catch up, check versions, write, fdatasync, resolve. */
  async #commit(group: PendingAppend[]): Promise<void> {
    const lock = this.#lock!;
    const fresh = await this.#holdLock();
    let plan: ReturnType<typeof planGroup> | null = null;
    const touched = new Set<Segment>();
    let createdSegment = false;
    try {
      if (fresh) {
        await this.#catchUp(true);
        this.#visible = this.#table.length;
        await this.#writeMissingIndexRecords();
      }
      plan = planGroup(group, this.#table, this.#lastChain, this.#lastTime, nowNs(), this.#signer);
      for (const c of plan.conflicts) c.pending.reject(c.error);
      const frames = plan.entries;
      const time = plan.commitTimeNs;
      // Write frames, rotating segments on entry boundaries.
      let i = 0;
      while (i < frames.length) {
        let seg = this.#segments[this.#segments.length - 1];
        if (!seg || (seg.size > SEGMENT_HEADER_BYTES && seg.size + frames[i]!.size > this.#segmentMaxBytes)) {
          seg = await this.#createSegment(frames[i]!.position);
          createdSegment = true;
        }
        const si = this.#segments.length - 1;
        const parts: Buffer[] = [];
        let len = 0;
        const start = seg.size;
        while (i < frames.length && (len === 0 || start + len + frames[i]!.size <= this.#segmentMaxBytes)) {
          const f = frames[i]!;
          parts.push(...f.parts);
          this.#table.push({ position: f.position, firstVersion: f.firstVersion, commitTimeNs: time, eventCount: f.eventCount, frameSize: f.size, streamKey: f.streamKey, segment: si, offset: start + len });
          this.#lastChain = f.chain;
          len += f.size;
          i++;
        }
        const fh = await this.#segmentFh(seg);
        try {
          // Small writes only copy into the page cache: do them inline rather
          // than paying a thread-pool round trip; large ones go async. Either
          // way one gathered write, without copying the ciphertexts.
          if (len <= SYNC_WRITE_MAX) writevFullySync(fh.fd, parts, start);
          else await writevFully(fh, parts, start);
        } catch (err) {
          // Undo: nothing of this group may stay visible or on disk.
          await fh.truncate(start).catch(() => undefined);
          throw ioError(`cannot write to ${seg.path}`, err);
        }
        seg.size = start + len;
        touched.add(seg);
      }
      this.#lastTime = time;
      await this.#writeMissingIndexRecords();
    } catch (err) {
      // Roll the in-memory state back to what is on disk; the next commit re-reads it.
      this.#table.truncate(this.#visible);
      this.#lastChain = ZERO_CHAIN;
      await this.#reloadAfterFailure();
      await lock.release();
      throw err;
    }
    try {
      for (const seg of touched) await seg.fh!.datasync();
      if (createdSegment) await syncDir(this.#logDir);
    } catch (err) {
      // Durability unknown: fail the group loudly; the entries may or may not survive.
      const e = ioError('fdatasync failed; the appends in this group may not be durable', err);
      for (const x of plan!.entries) x.pending.reject(e);
      this.#visible = this.#table.length;
      await lock.release();
      return;
    }
    this.#visible = this.#table.length;
    await this.#afterGroup();
    for (const x of plan!.entries) x.pending.resolve({ position: x.position, firstVersion: x.firstVersion, commitTimeNs: plan!.commitTimeNs });
    this.#notify();
  }

  async #reloadAfterFailure(): Promise<void> {
    // Recompute the chain head from the last visible entry.
    if (this.#table.length === 0) {
      this.#lastChain = ZERO_CHAIN;
      for (const s of this.#segments) s.size = s.size === -1 ? -1 : 0;
      return;
    }
    const last = this.#table.row(this.#table.length - 1);
    const seg = this.#segments[last.segment]!;
    const d = decodeFrame(await this.#readAt(seg, last.offset, last.frameSize));
    if (d.kind === 'frame') this.#lastChain = Buffer.from(d.frame.chain);
    seg.size = last.offset + last.frameSize;
    for (let s = last.segment + 1; s < this.#segments.length; s++) this.#segments[s]!.size = 0;
  }

  async #createSegment(base: bigint): Promise<Segment> {
    const path = join(this.#logDir, segmentFileName(base));
    const tmp = `${path}.${process.pid}.tmp`;
    try {
      const fh = await open(tmp, 'w', 0o600);
      await fh.write(encodeSegmentHeader({ basePosition: base, createdNs: nowNs(), keyId: this.#signer.keyId }));
      await fh.datasync();
      await fh.close();
      await rename(tmp, path);
      await syncDir(this.#logDir);
    } catch (err) {
      throw ioError(`cannot create segment ${path}`, err);
    }
    const seg: Segment = { base, path, size: SEGMENT_HEADER_BYTES, fh: null };
    this.#segments.push(seg);
    return seg;
  }

  // ---------------------------------------------------------------- reads

  async #refresh(): Promise<void> {
    await this.#mutex.run(async () => {
      if (this.#closed) return;
      const before = this.#table.length;
      if (this.#visible < before) return; // our own group is being made durable
      await this.#catchUp(false);
      this.#visible = this.#table.length;
    });
  }

  async #frameOf(i: number): Promise<Frame> {
    const r = this.#table.row(i);
    const seg = this.#segments[r.segment]!;
    return this.#decodeAt(seg, r.offset, r.frameSize, r.position, await this.#readAt(seg, r.offset, r.frameSize), 0);
  }

  #decodeAt(seg: Segment, offset: number, size: number, position: bigint, buf: Buffer, rel: number): Frame {
    const d = decodeFrame(buf, rel);
    if (d.kind !== 'frame' || d.frame.size !== size || d.frame.position !== position) {
      const reason = d.kind === 'corrupt' ? d.reason : d.kind === 'incomplete' ? 'the segment ends inside it' : `found position ${d.frame.position}`;
      throw new ZosError('TLOG_CORRUPT', `corrupt entry at position ${position} (${segmentFileName(seg.base)} offset ${offset}): ${reason}; run zos log verify`, {
        context: { position, segment: seg.path, offset },
      });
    }
    return d.frame;
  }

  async *#framesFromEntry(first: number): AsyncGenerator<Frame> {
    let buf: Buffer = Buffer.alloc(0);
    let bufSeg = -1;
    let bufStart = 0;
    for (let i = first; i < this.#visible; i++) {
      const si = this.#table.segmentOf(i);
      const off = this.#table.offsetOf(i);
      const size = this.#table.sizeOf(i);
      if (si !== bufSeg || off < bufStart || off + size > bufStart + buf.length) {
        const seg = this.#segments[si]!;
        const end = seg.size > 0 ? seg.size : off + Math.max(size, READ_CHUNK);
        buf = await this.#readAt(seg, off, Math.max(size, Math.min(READ_CHUNK, end - off)));
        bufSeg = si;
        bufStart = off;
      }
      const r = this.#table.row(i);
      yield this.#decodeAt(this.#segments[si]!, off, size, r.position, buf, off - bufStart);
    }
  }

  async *readFrames(fromPosition: bigint): AsyncGenerator<Frame> {
    await this.#refresh();
    if (fromPosition >= this.#table.head || this.#visible === 0) return;
    let first = this.#table.entryForPosition(fromPosition < 0n ? 0n : fromPosition, this.#visible);
    if (first < 0) first = 0;
    yield* this.#framesFromEntry(first);
  }

  async *readStreamFrames(streamKey: Buffer, fromVersion: bigint, direction: 'forward' | 'backward'): AsyncGenerator<Frame> {
    await this.#refresh();
    const s = this.#table.stream(streamKey);
    if (!s) return;
    const visible = this.#visible;
    if (direction === 'forward') {
      for (let j = this.#table.streamIndexForVersion(s, fromVersion); j < s.entries.length; j++) {
        const e = s.entries[j]!;
        if (e >= visible) return;
        yield await this.#frameOf(e);
      }
    } else {
      let j = Math.min(this.#table.streamIndexForVersion(s, fromVersion), s.entries.length - 1);
      for (; j >= 0; j--) {
        const e = s.entries[j]!;
        if (e >= visible) continue;
        yield await this.#frameOf(e);
      }
    }
  }

  /** Walk every segment from the start without any index: what verify uses. */
  async *scanAll(): AsyncGenerator<Frame> {
    await this.#refresh();
    const segs = [...this.#segments];
    let expectPos = 0n;
    for (const seg of segs) {
      const hb = await this.#readAt(seg, 0, SEGMENT_HEADER_BYTES);
      const h = decodeSegmentHeader(hb);
      if (!h.ok) throw new ZosError('TLOG_CORRUPT', `segment ${segmentFileName(seg.base)} (position ${expectPos}) is unreadable: ${h.reason}`, { context: { position: expectPos } });
      if (!h.header.keyId.equals(this.#signer.keyId)) throw new ZosError('TLOG_WRONG_KEY', 'wrong key: this log was written with a different master key; use the key file it was created with (--key-file or ZOS_KEY_FILE)');
      if (h.header.basePosition !== expectPos) {
        throw new ZosError('TLOG_CORRUPT', `position ${expectPos}: segment ${segmentFileName(seg.base)} starts at position ${h.header.basePosition} — entries are missing or out of order`, { context: { position: expectPos } });
      }
      const fh = await this.#segmentFh(seg);
      const { size } = await fh.stat();
      const isLast = seg === segs[segs.length - 1];
      let offset = SEGMENT_HEADER_BYTES;
      let buf: Buffer = Buffer.alloc(0);
      let bufStart = offset;
      while (offset < size) {
        let d = decodeFrame(buf, offset - bufStart);
        if (d.kind === 'incomplete' && bufStart + buf.length < size) {
          buf = await this.#readAt(seg, offset, Math.min(Math.max(READ_CHUNK, d.needed), size - offset));
          bufStart = offset;
          d = decodeFrame(buf, 0);
        }
        if (d.kind !== 'frame') {
          if (isLast && (d.kind === 'incomplete' || (await this.#zeroFrom(seg, offset, size)))) break; // torn tail: reported by tailState()
          throw new ZosError('TLOG_CORRUPT', `position ${expectPos}: ${d.kind === 'corrupt' ? d.reason : 'entry is truncated'} (${segmentFileName(seg.base)} offset ${offset})`, {
            context: { position: expectPos, segment: seg.path, offset },
          });
        }
        expectPos = d.frame.position + BigInt(d.frame.eventCount);
        offset += d.frame.size;
        yield d.frame;
      }
    }
  }

  async #zeroFrom(seg: Segment, offset: number, size: number): Promise<boolean> {
    return (await this.#readAt(seg, offset, size - offset)).every((x) => x === 0);
  }

  async tailState(): Promise<TailState> {
    return this.#mutex.run(async () => {
      this.#discoverSegments();
      const seg = this.#segments[this.#segments.length - 1];
      if (!seg || seg.size <= 0) return { kind: 'clean' };
      const { size } = await (await this.#segmentFh(seg)).stat();
      if (size > seg.size) return { kind: 'torn', bytes: size - seg.size, position: this.#table.head };
      return { kind: 'clean' };
    });
  }

  async streamVersion(streamKey: Buffer): Promise<bigint> {
    await this.#refresh();
    const s = this.#table.stream(streamKey);
    if (!s) return -1n;
    const last = s.entries[s.entries.length - 1];
    if (last === undefined || last < this.#visible) return s.version;
    let j = s.entries.length - 1;
    while (j >= 0 && s.entries[j]! >= this.#visible) j--;
    if (j < 0) return -1n;
    const r = this.#table.row(s.entries[j]!);
    return r.firstVersion + BigInt(r.eventCount) - 1n;
  }

  async headPosition(): Promise<bigint> {
    await this.#refresh();
    if (this.#visible === 0) return 0n;
    const r = this.#table.row(this.#visible - 1);
    return r.position + BigInt(r.eventCount);
  }

  async positionForTime(timeNs: bigint): Promise<bigint> {
    await this.#refresh();
    const i = this.#table.entryForTime(timeNs, this.#visible);
    if (i >= this.#visible) return this.headPosition();
    return this.#table.row(i).position;
  }

  async waitForAppend(afterPosition: bigint, signal?: AbortSignal, timeoutMs?: number): Promise<boolean> {
    if ((await this.headPosition()) > afterPosition) return true;
    if (signal?.aborted || this.#closed) return false;
    this.#startWatching();
    return new Promise<boolean>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (v: boolean): void => {
        this.#waiters.delete(wake);
        signal?.removeEventListener('abort', onAbort);
        if (timer) clearTimeout(timer);
        resolve(v);
      };
      const wake = (): void => {
        void this.headPosition().then(
          (h) => {
            if (h > afterPosition) done(true);
            else if (this.#closed) done(false);
          },
          () => done(false),
        );
      };
      const onAbort = (): void => done(false);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) timer = setTimeout(() => done(false), timeoutMs);
      this.#waiters.add(wake);
      wake();
    });
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
    if (this.#waiters.size === 0) this.#stopWatching();
  }

  #startWatching(): void {
    if (this.#watcher || this.#closed) return;
    try {
      this.#watcher = watch(this.#logDir, { persistent: false }, () => this.#notify());
      this.#watcher.on('error', () => undefined);
    } catch {
      this.#watcher = null;
    }
    // inotify can miss events (e.g. on some network filesystems): poll as a backstop.
    this.#pollTimer = setInterval(() => this.#notify(), 250);
    this.#pollTimer.unref();
  }

  #stopWatching(): void {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#pollTimer) clearInterval(this.#pollTimer);
    this.#pollTimer = null;
  }

  async stats(): Promise<BackendStats> {
    await this.#refresh();
    let bytes = 0;
    for (const seg of this.#segments) {
      try {
        bytes += (await (await this.#segmentFh(seg)).stat()).size;
      } catch {
        /* vanished */
      }
    }
    const n = this.#visible;
    return {
      kind: this.kind,
      entries: n,
      events: await this.headPosition(),
      streams: this.#table.streams.size,
      bytes,
      segments: this.#segments.length,
      firstCommitTimeNs: n > 0 ? this.#table.timeOf(0) : null,
      lastCommitTimeNs: n > 0 ? this.#table.timeOf(n - 1) : null,
      location: this.#dir,
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    // Let queued appends finish first.
    await this.#queue.whenIdle();
    this.#closed = true;
    this.#stopWatching();
    for (const w of [...this.#waiters]) w();
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#lingerTimer = null;
    await this.#mutex.run(async () => {
      await this.#lock?.release();
      await this.#closeHandles();
    });
  }

  async #closeHandles(): Promise<void> {
    for (const seg of this.#segments) {
      await seg.fh?.close().catch(() => undefined);
      seg.fh = null;
    }
    await this.#indexFh?.close().catch(() => undefined);
    this.#indexFh = null;
  }
}

/** Drop the first `n` written bytes from a list of parts. */
function afterWritten(parts: Buffer[], written: number): Buffer[] {
  let n = written;
  let i = 0;
  while (i < parts.length && n >= parts[i]!.length) n -= parts[i++]!.length;
  const rest = parts.slice(i);
  if (n > 0 && rest.length > 0) rest[0] = rest[0]!.subarray(n);
  return rest;
}

const IOV_MAX = 1024;

/** writev, continuing after short writes. */
function writevFullySync(fd: number, parts: Buffer[], position: number): void {
  let rest = parts;
  let pos = position;
  while (rest.length > 0) {
    const n = writevSync(fd, rest.slice(0, IOV_MAX), pos);
    if (n === 0) throw new Error('short write');
    pos += n;
    rest = afterWritten(rest, n);
  }
}

async function writevFully(fh: FileHandle, parts: Buffer[], position: number): Promise<void> {
  let rest = parts;
  let pos = position;
  while (rest.length > 0) {
    const { bytesWritten: n } = await fh.writev(rest.slice(0, IOV_MAX), pos);
    if (n === 0) throw new Error('short write');
    pos += n;
    rest = afterWritten(rest, n);
  }
}

function writeFullySync(fd: number, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = writeSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new Error('short write');
    done += n;
  }
}


async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function hasLaterFrame(rest: Buffer): boolean {
  const magic = Buffer.alloc(4);
  magic.writeUInt32LE(FRAME_MAGIC, 0);
  let at = rest.indexOf(magic, 1);
  while (at >= 0) {
    if (decodeFrame(rest, at).kind === 'frame') return true;
    at = rest.indexOf(magic, at + 1);
  }
  return false;
}
