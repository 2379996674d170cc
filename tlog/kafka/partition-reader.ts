/**
 * Precise reads of one Kafka partition: fetch from an offset, read_committed,
 * no consumer group. kafkajs 2.2.4 (the chosen client) has no public
 * "fetch at offset" API, so this uses its internal cluster and broker objects
 * and its own aborted-transaction filter (src/consumer/batch.js). kafkajs is
 * pinned and unmaintained, so these internals will not move; the contract and
 * fault tests against a real broker guard this file.
 */
import { createRequire } from 'node:module';
import type { Kafka } from 'kafkajs';

const require = createRequire(import.meta.url);
// eslint-disable-next-line @typescript-eslint/no-require-imports
const Batch = require('kafkajs/src/consumer/batch.js') as new (
  topic: string,
  fetchedOffset: string,
  partitionData: unknown,
) => { messages: RawMessage[]; rawMessages: RawMessage[] };

const READ_COMMITTED = 1;

interface RawMessage {
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  timestamp: string;
  headers?: Record<string, Buffer | string | undefined>;
  isControlRecord?: boolean;
}

interface InternalBroker {
  fetch(req: unknown): Promise<{ responses: Array<{ topicName: string; partitions: Array<Record<string, unknown> & { partition: number; highWatermark: string; lastStableOffset?: string }> }> }>;
}

interface InternalCluster {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  addTargetTopic(topic: string): Promise<void>;
  refreshMetadata(): Promise<void>;
  findLeaderForPartitions(topic: string, partitions: number[]): Record<string, number[]>;
  findBroker(q: { nodeId: string }): Promise<InternalBroker>;
}

export interface FetchedRecord {
  offset: bigint;
  key: Buffer | null;
  value: Buffer | null;
  timestampMs: bigint;
  headers: Record<string, Buffer | string | undefined>;
}

export interface FetchResult {
  records: FetchedRecord[];
  /** Offset to fetch next (past filtered control/aborted records too). */
  nextOffset: bigint;
  /** Last stable offset: committed data ends before it. */
  lastStableOffset: bigint;
  highWatermark: bigint;
}

export class PartitionReader {
  readonly topic: string;
  readonly partition: number;
  readonly #cluster: InternalCluster;

  private constructor(cluster: InternalCluster, topic: string, partition: number) {
    this.#cluster = cluster;
    this.topic = topic;
    this.partition = partition;
  }

  static async connect(kafka: Kafka, topic: string, partition = 0): Promise<PartitionReader> {
    const sym = Object.getOwnPropertySymbols(kafka).find((s) => s.description === 'private:Kafka:createCluster');
    if (!sym) throw new Error('kafkajs internals changed: cannot create a cluster (is kafkajs 2.2.4 installed?)');
    const create = (kafka as unknown as Record<symbol, (o: unknown) => InternalCluster>)[sym]!;
    const cluster = create({ metadataMaxAge: 300_000, allowAutoTopicCreation: false, isolationLevel: READ_COMMITTED });
    await cluster.connect();
    await cluster.addTargetTopic(topic);
    return new PartitionReader(cluster, topic, partition);
  }

  async #leader(): Promise<InternalBroker> {
    const byNode = this.#cluster.findLeaderForPartitions(this.topic, [this.partition]);
    const nodeId = Object.keys(byNode)[0];
    if (nodeId === undefined) {
      await this.#cluster.refreshMetadata();
      throw Object.assign(new Error(`no leader for ${this.topic}/${this.partition}`), { retriable: true });
    }
    return this.#cluster.findBroker({ nodeId });
  }

  /** One fetch at `offset`; waits up to maxWaitMs for data when there is none. */
  async fetch(offset: bigint, maxWaitMs = 0, maxBytes = 16 * 1024 * 1024): Promise<FetchResult> {
    let broker: InternalBroker;
    let res: Awaited<ReturnType<InternalBroker['fetch']>>;
    try {
      broker = await this.#leader();
      res = await broker.fetch({
        replicaId: -1,
        isolationLevel: READ_COMMITTED,
        maxWaitTime: maxWaitMs,
        minBytes: 1,
        maxBytes,
        topics: [{ topic: this.topic, partitions: [{ partition: this.partition, fetchOffset: offset.toString(), maxBytes }] }],
      });
    } catch (err) {
      const e = err as { type?: string; name?: string };
      // Past the end (e.g. just past our own records, before the commit
      // marker lands): nothing to read yet.
      if (e.type === 'OFFSET_OUT_OF_RANGE') return { records: [], nextOffset: offset, lastStableOffset: offset, highWatermark: offset };
      if (e.type === 'NOT_LEADER_FOR_PARTITION' || e.type === 'LEADER_NOT_AVAILABLE' || e.type === 'UNKNOWN_TOPIC_OR_PARTITION' || e.name === 'KafkaJSConnectionError' || e.name === 'KafkaJSBrokerNotFound') {
        await this.#cluster.refreshMetadata().catch(() => undefined);
      }
      throw err;
    }
    const pd = res.responses[0]?.partitions.find((p) => p.partition === this.partition);
    if (!pd) throw new Error(`fetch response lacks ${this.topic}/${this.partition}`);
    const batch = new Batch(this.topic, offset.toString(), pd);
    let next = offset;
    for (const m of batch.rawMessages) {
      const o = BigInt(m.offset);
      if (o >= next) next = o + 1n;
    }
    const records: FetchedRecord[] = batch.messages.map((m) => ({
      offset: BigInt(m.offset),
      key: m.key,
      value: m.value,
      timestampMs: BigInt(m.timestamp),
      headers: m.headers ?? {},
    }));
    const hw = BigInt(pd.highWatermark);
    const lso = pd.lastStableOffset !== undefined && BigInt(pd.lastStableOffset) >= 0n ? BigInt(pd.lastStableOffset) : hw;
    return { records, nextOffset: next, lastStableOffset: lso, highWatermark: hw };
  }

  async close(): Promise<void> {
    await this.#cluster.disconnect().catch(() => undefined);
  }
}
