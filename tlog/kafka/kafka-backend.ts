/**
 * The Kafka/Redpanda backend (kafkajs). One topic per log, one partition: a
 * total order, so positions stay dense and every reader sees one sequence.
 *
 * Kafka has no conditional append, so a single writer owns the partition: a
 * transactional producer whose transactional id is derived from the topic.
 * Taking over (InitProducerId) bumps the epoch, which fences the previous
 * writer and aborts its open transaction; the new writer then reads the
 * partition to its end (read_committed) to rebuild stream heads, the position
 * and the chain — nothing but the log is needed: stateless.
 *
 * Each group commit is one transaction; appends resolve after the commit
 * (acks=all, idempotent). Readers use read_committed, so an aborted or fenced
 * writer's records are never visible. Record key = keyed stream hash, value =
 * the same sealed frame (format v1) the file backend stores; headers carry the
 * key id. Nothing in Kafka is plaintext.
 */
import kafkajs, { type Admin, type Kafka, type Producer, type Transaction } from 'kafkajs';
import { ZosError } from '../errors.ts';
import { decodeFrame, ZERO_CHAIN, type Frame } from '../frame.ts';
import type { BackendAppendResult, BackendStats, ChainSigner, LogBackend, TailState } from '../backend.ts';
import type { SealedEntry } from '../sealer.ts';
import type { ExpectedVersion } from '../types.ts';
import { nowNs } from '../clock.ts';
import { EntryTable } from '../entry-table.ts';
import { GroupCommitQueue, checkFrameLinks, planGroup, type GroupPlan, type PendingAppend } from '../group-commit.ts';
import { Mutex } from '../file/mutex.ts';
import { PartitionReader, type FetchedRecord } from './partition-reader.ts';
import type { KafkaLogAddress } from './kafka-url.ts';

const { Kafka: KafkaClient, logLevel } = kafkajs;

// kafkajs 2.2.4's request queue calls setTimeout with a negative delay when it
// is not throttled (harmless: Node clamps it to 1 ms), and Node 24 prints a
// TimeoutNegativeWarning every time. Drop exactly that warning.
const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const first = rest[0];
  const type = typeof first === 'string' ? first : (first as { type?: string } | undefined)?.type;
  if (type === 'TimeoutNegativeWarning' || (warning instanceof Error && warning.name === 'TimeoutNegativeWarning')) return;
  emitWarning(warning, ...rest);
}) as typeof process.emitWarning;

export const KAFKA_RECORD_FORMAT = '1';
const HEADER_KEY_ID = 'zos-kid';
const HEADER_FORMAT = 'zos-fmt';
const MAX_MESSAGE_BYTES = 65 * 1024 * 1024;

export interface KafkaBackendOptions {
  address: KafkaLogAddress;
  signer: ChainSigner;
  readOnly?: boolean;
  /** How long an append keeps retrying through a broker outage (default 30 s). */
  appendTimeoutMs?: number;
  /** Bound on connecting at start-up (default 10 s). */
  connectTimeoutMs?: number;
  clientId?: string;
  ssl?: boolean | { ca?: string[] };
  sasl?: { mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512'; username: string; password: string };
}

function errorText(err: unknown): string {
  const e = err as { name?: string; type?: string; message?: string };
  return `${e?.type ?? e?.name ?? 'error'}: ${e?.message ?? String(err)}`;
}

function isFencingError(err: unknown): boolean {
  for (let e = err as { type?: string; code?: number; cause?: unknown; originalError?: unknown } | undefined; e; e = (e.cause ?? e.originalError) as typeof e) {
    if (e.type === 'INVALID_PRODUCER_EPOCH' || e.type === 'PRODUCER_FENCED' || e.code === 47 || e.code === 90) return true;
    if (e.type === 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED') return true;
  }
  return false;
}

export class KafkaBackend implements LogBackend {
  readonly kind = 'kafka';
  readonly topic: string;
  readonly #address: KafkaLogAddress;
  readonly #signer: ChainSigner;
  readonly #readOnly: boolean;
  readonly #appendTimeoutMs: number;
  readonly #kafka: Kafka;
  readonly #table = new EntryTable();
  readonly #mutex = new Mutex();
  readonly #queue: GroupCommitQueue;
  #reader: PartitionReader | null = null;
  #admin: Admin | null = null;
  #producer: Producer | null = null;
  #openTxn: Transaction | null = null;
  #fenced: ZosError | null = null;
  #lastChain: Buffer = ZERO_CHAIN;
  #lastTime = 0n;
  /** Next offset to read from the partition. */
  #nextOffset = 0n;
  #bytes = 0;
  /** Entries sent in a transaction whose outcome is unknown, by nonce. */
  readonly #inDoubt = new Map<string, { pending: PendingAppend; found?: BackendAppendResult }>();
  #closed = false;
  damage: ZosError | null = null;

  private constructor(opts: KafkaBackendOptions) {
    this.#address = opts.address;
    this.topic = opts.address.topic;
    this.#signer = opts.signer;
    this.#readOnly = opts.readOnly ?? false;
    this.#appendTimeoutMs = opts.appendTimeoutMs ?? 30_000;
    const connectTimeout = opts.connectTimeoutMs ?? 10_000;
    this.#kafka = new KafkaClient({
      clientId: opts.clientId ?? 'zos',
      brokers: opts.address.brokers,
      connectionTimeout: Math.min(3000, connectTimeout),
      requestTimeout: 30_000,
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: Math.max(1000, connectTimeout / 3) },
      logLevel: logLevel.NOTHING,
      ...(opts.ssl === undefined ? {} : { ssl: opts.ssl }),
      ...(opts.sasl === undefined ? {} : { sasl: opts.sasl as never }),
    });
    this.#queue = new GroupCommitQueue((group) => this.#mutex.run(() => this.#commit(group)), 8 * 1024 * 1024);
  }

  static async open(opts: KafkaBackendOptions): Promise<KafkaBackend> {
    const b = new KafkaBackend(opts);
    const deadline = opts.connectTimeoutMs ?? 10_000;
    try {
      await withTimeout(b.#connect(), deadline, () => b.#unreachable(new Error(`no answer within ${deadline} ms`)));
    } catch (err) {
      await b.#disconnectAll();
      if (err instanceof ZosError) throw err;
      throw b.#unreachable(err);
    }
    return b;
  }

  #unreachable(err: unknown): ZosError {
    return new ZosError('TLOG_BACKEND_UNAVAILABLE', `cannot reach Kafka at ${this.#address.brokers.join(',')} (${errorText(err)}); check that the broker is running and ZOS_LOG / --log points at it`, {
      retriable: true,
      cause: err,
    });
  }

  async #connect(): Promise<void> {
    this.#admin = this.#kafka.admin();
    await this.#admin.connect();
    await this.#ensureTopic();
    this.#reader = await PartitionReader.connect(this.#kafka, this.topic, 0);
    await this.#catchUp();
  }

  async #ensureTopic(): Promise<void> {
    const admin = this.#admin!;
    const topics = await admin.listTopics();
    if (topics.includes(this.topic)) return;
    if (this.#readOnly) {
      throw new ZosError('TLOG_NOT_INITIALIZED', `Kafka topic ${this.topic} does not exist yet: append an event first (zos log append …) to create it`);
    }
    const cluster = await admin.describeCluster();
    const rf = Math.min(3, cluster.brokers.length);
    try {
      await admin.createTopics({
        waitForLeaders: true,
        topics: [
          {
            topic: this.topic,
            numPartitions: 1,
            replicationFactor: rf,
            configEntries: [
              { name: 'cleanup.policy', value: 'delete' },
              { name: 'retention.ms', value: '-1' },
              { name: 'retention.bytes', value: '-1' },
              { name: 'min.insync.replicas', value: String(Math.min(2, rf)) },
              { name: 'unclean.leader.election.enable', value: 'false' },
              { name: 'max.message.bytes', value: String(MAX_MESSAGE_BYTES) },
              { name: 'message.timestamp.type', value: 'CreateTime' },
            ],
          },
        ],
      });
    } catch (err) {
      if ((err as { type?: string }).type !== 'TOPIC_ALREADY_EXISTS') throw err;
    }
  }

  // ---------------------------------------------------------------- reading the partition

  /** Read everything committed beyond what the table holds. */
  async #catchUp(): Promise<void> {
    for (;;) {
      const r = await this.#reader!.fetch(this.#nextOffset, 0);
      for (const rec of r.records) this.#accept(rec);
      const progressed = r.nextOffset > this.#nextOffset;
      this.#nextOffset = r.nextOffset;
      if (this.#nextOffset >= r.lastStableOffset || !progressed) return;
    }
  }

  #accept(rec: FetchedRecord): void {
    const d = rec.value ? decodeFrame(rec.value) : ({ kind: 'corrupt', reason: 'empty record' } as const);
    if (d.kind !== 'frame') {
      throw new ZosError('TLOG_CORRUPT', `corrupt entry at position ${this.#table.head} (${this.topic} offset ${rec.offset}): ${d.kind === 'corrupt' ? d.reason : 'truncated'}; run zos log verify`, {
        context: { position: this.#table.head },
      });
    }
    const kid = rec.headers[HEADER_KEY_ID];
    if (kid !== undefined && !Buffer.from(kid as Buffer).equals(this.#signer.keyId)) {
      throw new ZosError('TLOG_WRONG_KEY', 'wrong key: this log was written with a different master key; use the key file it was created with (--key-file or ZOS_KEY_FILE)');
    }
    const f = d.frame;
    checkFrameLinks(f, this.#table, this.#lastChain, `${this.topic} offset ${rec.offset}`);
    this.#table.push({
      position: f.position,
      firstVersion: f.firstVersion,
      commitTimeNs: f.commitTimeNs,
      segment: 0,
      offset: Number(rec.offset),
      eventCount: f.eventCount,
      frameSize: f.size,
      streamKey: f.streamKey,
    });
    this.#lastChain = Buffer.from(f.chain);
    if (f.commitTimeNs > this.#lastTime) this.#lastTime = f.commitTimeNs;
    this.#bytes += f.size;
    const doubt = this.#inDoubt.get(f.nonce.toString('hex'));
    if (doubt) doubt.found = { position: f.position, firstVersion: f.firstVersion, commitTimeNs: f.commitTimeNs };
  }

  async #refresh(): Promise<void> {
    await this.#mutex.run(async () => {
      if (!this.#closed) await this.#catchUp();
    });
  }

  /** Frames at table entries [first, end), fetched sequentially. */
  async *#framesFromEntry(first: number, end: number): AsyncGenerator<Frame> {
    let i = first;
    let waitedMs = 0;
    while (i < end) {
      const want = this.#table.offsetOf(i);
      const r = await this.#reader!.fetch(BigInt(want), waitedMs === 0 ? 0 : 100);
      if (r.records.length === 0) {
        // Our own just-committed records become readable once the commit
        // marker lands (read_committed); give it a moment.
        if (waitedMs < 10_000) {
          waitedMs += 100;
          continue;
        }
        throw new ZosError('TLOG_CORRUPT', `entry at position ${this.#table.row(i).position} is missing from ${this.topic} offset ${want}`);
      }
      waitedMs = 0;
      for (const rec of r.records) {
        if (i >= end) return;
        if (rec.offset < BigInt(this.#table.offsetOf(i))) continue;
        const row = this.#table.row(i);
        const d = rec.value ? decodeFrame(rec.value) : null;
        if (!d || d.kind !== 'frame' || d.frame.position !== row.position || rec.offset !== BigInt(row.offset)) {
          throw new ZosError('TLOG_CORRUPT', `entry at position ${row.position} (${this.topic} offset ${row.offset}) does not match what was read before; run zos log verify`, {
            context: { position: row.position },
          });
        }
        yield d.frame;
        i++;
      }
    }
  }

  async *readFrames(fromPosition: bigint): AsyncGenerator<Frame> {
    await this.#refresh();
    const end = this.#table.length;
    if (end === 0 || fromPosition >= this.#table.head) return;
    let first = this.#table.entryForPosition(fromPosition < 0n ? 0n : fromPosition, end);
    if (first < 0) first = 0;
    yield* this.#framesFromEntry(first, end);
  }

  async *readStreamFrames(streamKey: Buffer, fromVersion: bigint, direction: 'forward' | 'backward'): AsyncGenerator<Frame> {
    await this.#refresh();
    const s = this.#table.stream(streamKey);
    if (!s) return;
    const start = this.#table.streamIndexForVersion(s, fromVersion);
    if (direction === 'forward') {
      for (let j = start; j < s.entries.length; j++) yield* this.#framesFromEntry(s.entries[j]!, s.entries[j]! + 1);
    } else {
      for (let j = Math.min(start, s.entries.length - 1); j >= 0; j--) yield* this.#framesFromEntry(s.entries[j]!, s.entries[j]! + 1);
    }
  }

  /** Every committed record from offset 0, without the table: what verify uses. */
  async *scanAll(): AsyncGenerator<Frame> {
    await this.#refresh();
    // Everything this process knows is committed (its own appends included)
    // must be read: a writer's last transaction becomes readable under
    // read_committed only once its commit marker lands, a moment after the
    // commit returned, so wait for it as #framesFromEntry does.
    const head = this.#table.head;
    let offset = 0n;
    let expectPos = 0n;
    let waitedMs = 0;
    for (;;) {
      const r = await this.#reader!.fetch(offset, waitedMs === 0 ? 0 : 100);
      for (const rec of r.records) {
        const d = rec.value ? decodeFrame(rec.value) : null;
        if (!d || d.kind !== 'frame') {
          throw new ZosError('TLOG_CORRUPT', `position ${expectPos}: ${d && d.kind === 'corrupt' ? d.reason : 'empty or truncated record'} (${this.topic} offset ${rec.offset})`, {
            context: { position: expectPos },
          });
        }
        expectPos = d.frame.position + BigInt(d.frame.eventCount);
        yield d.frame;
      }
      const progressed = r.nextOffset > offset;
      offset = r.nextOffset;
      if (expectPos < head) {
        if (progressed) waitedMs = 0;
        else if ((waitedMs += 100) > 10_000) {
          throw new ZosError('TLOG_CORRUPT', `the log ends at position ${expectPos} (${this.topic} offset ${offset}), but entries up to position ${head} were committed: they are missing`, {
            context: { position: expectPos },
          });
        }
        continue;
      }
      if (offset >= r.lastStableOffset || !progressed) return;
    }
  }

  async tailState(): Promise<TailState> {
    return { kind: 'clean' }; // Kafka has no torn tails: a batch is in the log whole or not at all.
  }

  async streamVersion(streamKey: Buffer): Promise<bigint> {
    await this.#refresh();
    return this.#table.stream(streamKey)?.version ?? -1n;
  }

  async headPosition(): Promise<bigint> {
    await this.#refresh();
    return this.#table.head;
  }

  async positionForTime(timeNs: bigint): Promise<bigint> {
    await this.#refresh();
    const i = this.#table.entryForTime(timeNs);
    return i >= this.#table.length ? this.#table.head : this.#table.row(i).position;
  }

  async waitForAppend(afterPosition: bigint, signal?: AbortSignal, timeoutMs = 1000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!signal?.aborted && !this.#closed) {
      if ((await this.headPosition()) > afterPosition) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      // Long-poll the broker: returns as soon as anything new is committed.
      await this.#mutex.run(async () => {
        if (this.#closed) return;
        const r = await this.#reader!.fetch(this.#nextOffset, Math.min(left, 500));
        for (const rec of r.records) this.#accept(rec);
        this.#nextOffset = r.nextOffset;
      });
    }
    return false;
  }

  // ---------------------------------------------------------------- writing

  append(entry: SealedEntry, expected: ExpectedVersion): Promise<BackendAppendResult> {
    if (this.#closed) return Promise.reject(new ZosError('TLOG_CLOSED', 'the log is closed'));
    if (this.#readOnly) return Promise.reject(new ZosError('TLOG_INVALID_ARGUMENT', 'this log was opened read-only'));
    if (this.#fenced) return Promise.reject(this.#fenced);
    return this.#queue.submit(entry, expected);
  }

  #fencedError(err: unknown): ZosError {
    return new ZosError('TLOG_FENCED', `another zos writer took over ${this.topic} (partition 0); this process can no longer append — nothing it sends now becomes visible. Restart it to take over again`, {
      cause: err,
    });
  }

  /** Become the partition's writer: fence any previous one, then read to the end. */
  async #becomeWriter(): Promise<void> {
    if (this.#producer && this.#openTxn) return;
    if (!this.#producer) {
      this.#producer = this.#kafka.producer({
        transactionalId: `${this.topic}.writer`,
        idempotent: true,
        maxInFlightRequests: 1,
        transactionTimeout: 60_000,
        allowAutoTopicCreation: false,
        // Right after a commit the coordinator answers the next transaction's
        // first request with CONCURRENT_TRANSACTIONS for a moment; Java's
        // client retries that after 20 ms, so must we (kafkajs would wait 200).
        retry: { retries: 8, initialRetryTime: 10, maxRetryTime: 2000 },
      });
      await this.#producer.connect();
    }
    // The first transaction() runs InitProducerId: that fences the old writer
    // and completes or aborts its open transaction before it returns.
    this.#openTxn = await this.#producer.transaction();
    await this.#catchUp();
  }

  async #dropWriter(): Promise<void> {
    const p = this.#producer;
    const txn = this.#openTxn;
    this.#producer = null;
    this.#openTxn = null;
    if (txn) await txn.abort().catch(() => undefined);
    if (p) await p.disconnect().catch(() => undefined);
  }

  async #commit(group: PendingAppend[]): Promise<void> {
    const deadline = Date.now() + this.#appendTimeoutMs;
    let remaining = group;
    let lastError: unknown = null;
    let delay = 100;
    while (remaining.length > 0) {
      if (this.#fenced) {
        for (const p of remaining) p.reject(this.#fenced);
        return;
      }
      try {
        await this.#becomeWriter();
        // Entries of an earlier, failed attempt that did land are done.
        remaining = this.#settleInDoubt(remaining);
        if (remaining.length === 0) return;
        const plan = planGroup(remaining, this.#table, this.#lastChain, this.#lastTime, nowNs(), this.#signer);
        for (const c of plan.conflicts) c.pending.reject(c.error);
        // A refused append is final: it must never be written by a later retry.
        remaining = plan.entries.map((e) => e.pending);
        if (remaining.length === 0) return;
        await this.#send(plan);
        return;
      } catch (err) {
        lastError = err;
        if (isFencingError(err)) {
          this.#fenced = this.#fencedError(err);
          await this.#dropWriter();
          continue;
        }
        if (err instanceof ZosError && !err.retriable) {
          await this.#dropWriter();
          for (const p of remaining) p.reject(err);
          return;
        }
        await this.#dropWriter();
        if (Date.now() + delay > deadline) break;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2000);
      }
    }
    if (remaining.length === 0) return;
    // Out of time. Entries that were sent may still land if their transaction
    // was already being committed; say so rather than guess.
    for (const p of remaining) {
      const sent = this.#inDoubt.has(p.entry.nonce.toString('hex'));
      this.#inDoubt.delete(p.entry.nonce.toString('hex'));
      p.reject(
        new ZosError('TLOG_BACKEND_UNAVAILABLE', sent
          ? `Kafka at ${this.#address.brokers.join(',')} failed while committing this append (${errorText(lastError)}); its outcome is unknown — re-read the stream before retrying`
          : `Kafka at ${this.#address.brokers.join(',')} is unavailable (${errorText(lastError)}); the append was not written — retry it`, {
          retriable: true,
          cause: lastError,
          context: { outcomeUnknown: sent },
        }),
      );
    }
  }

  /** Resolve pending entries that an earlier attempt committed; return the rest. */
  #settleInDoubt(group: PendingAppend[]): PendingAppend[] {
    const rest: PendingAppend[] = [];
    for (const p of group) {
      const k = p.entry.nonce.toString('hex');
      const d = this.#inDoubt.get(k);
      if (d?.found) {
        this.#inDoubt.delete(k);
        p.resolve(d.found);
      } else {
        this.#inDoubt.delete(k);
        rest.push(p);
      }
    }
    return rest;
  }

  async #send(plan: GroupPlan): Promise<void> {
    const txn = this.#openTxn!;
    this.#openTxn = null;
    const ts = (plan.commitTimeNs / 1_000_000n).toString();
    for (const e of plan.entries) this.#inDoubt.set(e.pending.entry.nonce.toString('hex'), { pending: e.pending });
    let meta: Awaited<ReturnType<Transaction['send']>>;
    try {
      meta = await txn.send({
        topic: this.topic,
        acks: -1,
        messages: plan.entries.map((e) => ({
          key: e.streamKey,
          value: Buffer.concat(e.parts, e.size),
          partition: 0,
          timestamp: ts,
          headers: { [HEADER_KEY_ID]: this.#signer.keyId, [HEADER_FORMAT]: KAFKA_RECORD_FORMAT },
        })),
      });
      await txn.commit();
    } catch (err) {
      await txn.abort().catch(() => undefined);
      throw err;
    }
    const base = meta.find((m) => m.partition === 0)?.baseOffset;
    for (const [i, e] of plan.entries.entries()) {
      this.#inDoubt.delete(e.pending.entry.nonce.toString('hex'));
      this.#table.push({
        position: e.position,
        firstVersion: e.firstVersion,
        commitTimeNs: plan.commitTimeNs,
        segment: 0,
        offset: base === undefined ? -1 : Number(base) + i,
        eventCount: e.eventCount,
        frameSize: e.size,
        streamKey: e.streamKey,
      });
      this.#lastChain = e.chain;
      this.#bytes += e.size;
    }
    this.#lastTime = plan.commitTimeNs;
    // Our records end here; the commit marker that follows (written by the
    // coordinator, possibly a moment later) is skipped by the next fetch.
    if (base !== undefined) this.#nextOffset = BigInt(base) + BigInt(plan.entries.length);
    else await this.#resyncOffsets();
    // The next group's transaction starts now, so a takeover is noticed early.
    this.#openTxn = await this.#producer!.transaction();
    for (const e of plan.entries) e.pending.resolve({ position: e.position, firstVersion: e.firstVersion, commitTimeNs: plan.commitTimeNs });
  }

  /** Rebuild the table from the partition when offsets are unknown. */
  async #resyncOffsets(): Promise<void> {
    this.#table.truncate(0);
    this.#lastChain = ZERO_CHAIN;
    this.#lastTime = 0n;
    this.#nextOffset = 0n;
    this.#bytes = 0;
    await this.#catchUp();
  }

  async stats(): Promise<BackendStats> {
    await this.#refresh();
    const n = this.#table.length;
    return {
      kind: this.kind,
      entries: n,
      events: this.#table.head,
      streams: this.#table.streams.size,
      bytes: this.#bytes,
      segments: 1,
      firstCommitTimeNs: n > 0 ? this.#table.timeOf(0) : null,
      lastCommitTimeNs: n > 0 ? this.#table.timeOf(n - 1) : null,
      location: `kafka://${this.#address.brokers.join(',')}/${this.#address.prefix} (topic ${this.topic})`,
    };
  }

  async #disconnectAll(): Promise<void> {
    await this.#dropWriter();
    await this.#reader?.close();
    this.#reader = null;
    await this.#admin?.disconnect().catch(() => undefined);
    this.#admin = null;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#queue.whenIdle();
    this.#closed = true;
    await this.#mutex.run(() => this.#disconnectAll());
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(onTimeout()), ms);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}
