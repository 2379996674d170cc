/**
 * In-memory table of every entry in the log: where its frame is, which
 * stream it belongs to, its positions, versions and commit time. Built from
 * index/entries.idx plus a scan of whatever the index lacks. Column arrays keep
 * it compact (about 50 bytes per entry).
 */

class Column<T extends Float64Array | Uint32Array | BigInt64Array> {
  data: T;
  readonly #make: (n: number) => T;
  constructor(make: (n: number) => T) {
    this.#make = make;
    this.data = make(1024);
  }
  ensure(n: number): void {
    if (n <= this.data.length) return;
    let cap = this.data.length;
    while (cap < n) cap *= 2;
    const next = this.#make(cap);
    (next as unknown as { set(a: ArrayLike<unknown>): void }).set(this.data as ArrayLike<unknown>);
    this.data = next;
  }
}

export interface StreamState {
  id: number;
  key: Buffer;
  /** Current version: -1n when empty. */
  version: bigint;
  /** Entry indexes of this stream, in order. */
  entries: number[];
}

export interface EntryRow {
  position: bigint;
  firstVersion: bigint;
  commitTimeNs: bigint;
  segment: number;
  offset: number;
  eventCount: number;
  frameSize: number;
  streamKey: Buffer;
}

export class EntryTable {
  length = 0;
  readonly #pos = new Column((n) => new Float64Array(n));
  readonly #ver = new Column((n) => new Float64Array(n));
  readonly #time = new Column((n) => new BigInt64Array(n));
  readonly #seg = new Column((n) => new Uint32Array(n));
  readonly #off = new Column((n) => new Float64Array(n));
  readonly #cnt = new Column((n) => new Uint32Array(n));
  readonly #size = new Column((n) => new Uint32Array(n));
  readonly #stream = new Column((n) => new Uint32Array(n));
  readonly streams = new Map<string, StreamState>();
  readonly #streamList: StreamState[] = [];
  /** Next position to assign. */
  head = 0n;
  events = 0n;

  stream(key: Buffer): StreamState | undefined {
    return this.streams.get(key.toString('latin1'));
  }

  push(row: EntryRow): number {
    const i = this.length;
    const n = i + 1;
    for (const c of [this.#pos, this.#ver, this.#time, this.#seg, this.#off, this.#cnt, this.#size, this.#stream]) c.ensure(n);
    const k = row.streamKey.toString('latin1');
    let s = this.streams.get(k);
    if (!s) {
      s = { id: this.#streamList.length, key: Buffer.from(row.streamKey), version: -1n, entries: [] };
      this.streams.set(k, s);
      this.#streamList.push(s);
    }
    this.#pos.data[i] = Number(row.position);
    this.#ver.data[i] = Number(row.firstVersion);
    this.#time.data[i] = row.commitTimeNs;
    this.#seg.data[i] = row.segment;
    this.#off.data[i] = row.offset;
    this.#cnt.data[i] = row.eventCount;
    this.#size.data[i] = row.frameSize;
    this.#stream.data[i] = s.id;
    s.entries.push(i);
    s.version = row.firstVersion + BigInt(row.eventCount) - 1n;
    this.length = n;
    this.head = row.position + BigInt(row.eventCount);
    this.events += BigInt(row.eventCount);
    return i;
  }

  row(i: number): EntryRow {
    return {
      position: BigInt(this.#pos.data[i]!),
      firstVersion: BigInt(this.#ver.data[i]!),
      commitTimeNs: this.#time.data[i]!,
      segment: this.#seg.data[i]!,
      offset: this.#off.data[i]!,
      eventCount: this.#cnt.data[i]!,
      frameSize: this.#size.data[i]!,
      streamKey: this.#streamList[this.#stream.data[i]!]!.key,
    };
  }

  segmentOf(i: number): number {
    return this.#seg.data[i]!;
  }
  offsetOf(i: number): number {
    return this.#off.data[i]!;
  }
  sizeOf(i: number): number {
    return this.#size.data[i]!;
  }
  timeOf(i: number): bigint {
    return this.#time.data[i]!;
  }

  /** Index of the entry holding `position`, or -1 if before the first / beyond the end. */
  entryForPosition(position: bigint, limit = this.length): number {
    const p = Number(position);
    let lo = 0;
    let hi = limit - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#pos.data[mid]! <= p) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return -1;
    return p < this.#pos.data[found]! + this.#cnt.data[found]! ? found : -1;
  }

  /** First entry index whose commit time is >= t (limit if none). */
  entryForTime(t: bigint, limit = this.length): number {
    let lo = 0;
    let hi = limit;
    const times = this.#time.data;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (times[mid]! < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Position in the stream's entry list of the first entry with last version >= v. */
  streamIndexForVersion(s: StreamState, v: bigint): number {
    const target = Number(v);
    let lo = 0;
    let hi = s.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const e = s.entries[mid]!;
      if (this.#ver.data[e]! + this.#cnt.data[e]! - 1 < target) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Drop entries from index n on (used when a torn tail is cut). */
  truncate(n: number): void {
    if (n >= this.length) return;
    for (let i = this.length - 1; i >= n; i--) {
      const s = this.#streamList[this.#stream.data[i]!]!;
      s.entries.pop();
      const prev = s.entries[s.entries.length - 1];
      s.version = prev === undefined ? -1n : BigInt(this.#ver.data[prev]! + this.#cnt.data[prev]! - 1);
      this.events -= BigInt(this.#cnt.data[i]!);
    }
    this.length = n;
    this.head = n === 0 ? 0n : BigInt(this.#pos.data[n - 1]! + this.#cnt.data[n - 1]!);
  }
}
