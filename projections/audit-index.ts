/**
 * The audit index: a projection of the log that answers "who did what to which
 * stream, when". It is a cache — delete views/audit/ and it rebuilds from the
 * log — never a second source of truth: every candidate it finds is re-read
 * from the log, decrypted and checked before it is returned.
 *
 * File format v1 — views/audit/rows.v1
 *   header (32 B): magic:8B = "ZOSAUD\0\1"  version:u32 = 1  rowBytes:u32 = 32  logId:16B
 *   row (32 B) for position p at offset 32 + 32·p:
 *     position:u64  actor:8B  type:8B  stream:8B
 *   where each 8-byte field is a keyed hash of the term (the audit key is derived
 *   from the master key), so the index holds no names in plaintext.
 */
import { open, mkdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { RecordedEvent, Tlog } from '../tlog/index.ts';

const MAGIC = Buffer.from('ZOSAUD\0\x01', 'latin1');
const VERSION = 1;
const HEADER = 32;
const ROW = 32;
const NULL_TERM = Buffer.alloc(8);

export interface AuditQuery {
  actor?: string;
  type?: string;
  stream?: string;
  sinceNs?: bigint;
  untilNs?: bigint;
  limit?: number;
}

export class AuditIndex {
  readonly #log: Tlog;
  readonly #path: string;
  readonly #logId: Buffer;
  #fh: FileHandle | null = null;
  #rows = 0;

  private constructor(log: Tlog, dir: string, logId: Buffer) {
    this.#log = log;
    this.#path = join(dir, 'rows.v1');
    this.#logId = logId;
  }

  static async open(log: Tlog, dir: string, logId: Buffer): Promise<AuditIndex> {
    const idx = new AuditIndex(log, dir, logId);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await idx.#openFile();
    return idx;
  }

  async #openFile(): Promise<void> {
    const fh = await open(this.#path, 'a+', 0o600);
    await fh.close();
    this.#fh = await open(this.#path, 'r+');
    const { size } = await this.#fh.stat();
    const head = Buffer.alloc(HEADER);
    if (size >= HEADER) await this.#fh.read(head, 0, HEADER, 0);
    const ok = size >= HEADER && head.subarray(0, 8).equals(MAGIC) && head.readUInt32LE(8) === VERSION && head.subarray(16, 32).equals(this.#logId);
    if (!ok) {
      const h = Buffer.alloc(HEADER);
      MAGIC.copy(h, 0);
      h.writeUInt32LE(VERSION, 8);
      h.writeUInt32LE(ROW, 12);
      this.#logId.copy(h, 16);
      await this.#fh.truncate(0);
      await this.#fh.write(h, 0, HEADER, 0);
      this.#rows = 0;
      return;
    }
    this.#rows = Math.floor((size - HEADER) / ROW);
    // A torn last row (crash while writing) is dropped and rewritten.
    if (this.#rows > 0) {
      const last = Buffer.alloc(ROW);
      await this.#fh.read(last, 0, ROW, HEADER + (this.#rows - 1) * ROW);
      if (last.readBigUInt64LE(0) !== BigInt(this.#rows - 1)) this.#rows = 0;
    }
  }

  #term(kind: string, value: string | null): Buffer {
    return value === null ? NULL_TERM : this.#log.auditTerm(kind, value).subarray(0, 8);
  }

  /** Index everything appended since the last call. */
  async catchUp(onProgress?: (position: bigint) => void): Promise<number> {
    const fh = this.#fh!;
    let added = 0;
    const batch: Buffer[] = [];
    let batchStart = this.#rows;
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return;
      const buf = Buffer.concat(batch);
      await fh.write(buf, 0, buf.length, HEADER + batchStart * ROW);
      batchStart += batch.length;
      batch.length = 0;
    };
    for await (const e of this.#log.readAll(BigInt(this.#rows))) {
      if (e.position !== BigInt(this.#rows)) break;
      const row = Buffer.alloc(ROW);
      row.writeBigUInt64LE(e.position, 0);
      this.#term('actor', e.actor).copy(row, 8);
      this.#term('type', e.type).copy(row, 16);
      this.#term('stream', e.stream).copy(row, 24);
      batch.push(row);
      this.#rows++;
      added++;
      if (batch.length >= 4096) {
        await flush();
        onProgress?.(e.position);
      }
    }
    await flush();
    return added;
  }

  get indexedEvents(): number {
    return this.#rows;
  }

  /** Matching events in log order, each re-read and checked against the log. */
  async *query(q: AuditQuery): AsyncGenerator<RecordedEvent> {
    await this.catchUp();
    const from = q.sinceNs === undefined ? 0 : Number(await this.#log.positionForTime(q.sinceNs));
    const to = q.untilNs === undefined ? this.#rows : Math.min(this.#rows, Number(await this.#log.positionForTime(q.untilNs + 1n)));
    const want: Array<[number, Buffer]> = [];
    if (q.actor !== undefined) want.push([8, this.#term('actor', q.actor)]);
    if (q.type !== undefined) want.push([16, this.#term('type', q.type)]);
    if (q.stream !== undefined) want.push([24, this.#term('stream', q.stream)]);
    let left = q.limit ?? Infinity;
    const chunkRows = 8192;
    const buf = Buffer.alloc(chunkRows * ROW);
    for (let at = from; at < to && left > 0; at += chunkRows) {
      const n = Math.min(chunkRows, to - at);
      await this.#fh!.read(buf, 0, n * ROW, HEADER + at * ROW);
      for (let i = 0; i < n && left > 0; i++) {
        const o = i * ROW;
        if (!want.every(([off, h]) => buf.compare(h, 0, 8, o + off, o + off + 8) === 0)) continue;
        for await (const e of this.#log.readAll(BigInt(at + i), 1)) {
          if (q.actor !== undefined && e.actor !== q.actor) continue;
          if (q.type !== undefined && e.type !== q.type) continue;
          if (q.stream !== undefined && e.stream !== q.stream) continue;
          if (q.sinceNs !== undefined && e.commitTimeNs < q.sinceNs) continue;
          if (q.untilNs !== undefined && e.commitTimeNs > q.untilNs) continue;
          left--;
          yield e;
        }
      }
    }
  }

  async close(): Promise<void> {
    await this.#fh?.close();
    this.#fh = null;
  }
}
