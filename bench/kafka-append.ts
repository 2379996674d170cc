/**
 * zos on Kafka vs Kafka's own producer, on one local broker in one run.
 *
 *   npx node bench/kafka-append.ts [--seconds 10] [--smoke] [--only perf,zos,e2e]
 *
 * The benchmark starts its own single-node Apache Kafka broker
 * (infra/kafka: KRaft, loopback, 1 GiB heap, temp data dir) and stops it at
 * the end. It needs Java 17+ (and Maven once, to fetch the jars).
 *
 *  1. Kafka's ProducerPerformance tool, 256-byte records, acks=all, on a
 *     fresh topic: once with the producer's defaults (Kafka 4.x: linger.ms=5,
 *     batch.size=16384, idempotence on) and once tuned (linger.ms=5,
 *     batch.size=262144). Unless --records is given, shorter runs size each
 *     run so that it sends for at least --perf-seconds − 2 s (10 s by
 *     default). Full runs repeat both after the zos runs (the machine
 *     drifts); the ratios use the better run of each variant, i.e. the peer
 *     at its best.
 *  2. zos appends (Tlog on kafka://…, one transaction per group commit) of
 *     events whose encoded envelope is exactly 256 bytes, for each events
 *     per append (--batches) × appends in flight (--concurrency), each on a
 *     fresh topic, time-bounded (--seconds after --warmup). zos pays for what
 *     the perf tool does not do: Avro + LZ4 + XChaCha20-Poly1305 per entry, a
 *     keyed BLAKE2b hash chain, expected-version checks, and a Kafka
 *     transaction (AddPartitionsToTxn + Produce + EndTxn) per group commit.
 *  3. End-to-end latency: an appender at a fixed rate (--e2e BATCHxRATE,…,
 *     e.g. 1x1000 = 1000 appends/s of 1 event) and a subscriber on a second,
 *     read-only Tlog in the same process (subscribe from 'end'); each event
 *     carries process.hrtime.bigint() taken just before its append call, and
 *     the latency is measured when the subscriber receives it.
 *
 * Results: a table on stdout and bench/results/kafka-append.json
 * (smoke runs: bench/results/smoke/).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import kafkajs from 'kafkajs';
import { Tlog, initDataDir, nowNs } from '../tlog/index.ts';
import type { EventInput } from '../tlog/index.ts';
import { encodeEntryBody } from '../tlog/record.ts';
import { KAFKA_VERSION, checkKafkaPrerequisites, runProducerPerf, startBroker, type Broker, type ProducerPerfResult } from '../infra/kafka/index.ts';
import {
  MB,
  Meter,
  fmtNum,
  fmtRatio,
  makeTempDir,
  nowMs,
  parseBenchArgs,
  percentile,
  printTable,
  ratio,
  removeTempDir,
  runConcurrent,
  writeResult,
  type BenchArgs,
  type LoopResult,
  zosStreamAppender,
} from './lib.ts';

const RECORD_BYTES = 256;
const EVENT_TYPE = 'BenchEvent';
const TARGET_VS_PERF = 1.0;
const BROKER_HEAP_MB = 1024;
const TUNED_PROPS = { 'linger.ms': 5, 'batch.size': 262144 } as const;
const CLK_TCK = 100;

// ------------------------------------------------------------------ sizes

interface EventSizes {
  /** Characters of the random base64 string in `{ data: "…" }`. */
  dataChars: number;
  /** MessagePack bytes of the payload `{ data: "…" }`. */
  payloadBytes: number;
  /** Avro bytes of one EventEnvelope (id, type, schema version, encoding, timestamp, 3 null ids, payload): what zos seals per event. */
  envelopeBytes: number;
}

/** Avro size of one event envelope carrying `payloadBytes` of MessagePack, as tlog builds it. */
function envelopeSize(payloadBytes: number): number {
  const env = {
    id: randomBytes(16),
    type: EVENT_TYPE,
    schemaVersion: 0,
    encoding: 'MSGPACK' as const,
    timestampNs: nowNs(),
    actor: null,
    correlationId: null,
    causationId: null,
    payload: Buffer.alloc(payloadBytes),
  };
  // One event adds its envelope plus the array block count (1 byte) to an empty body.
  return encodeEntryBody({ stream: 's', events: [env] }).length - encodeEntryBody({ stream: 's', events: [] }).length - 1;
}

/** MessagePack size of `{ data: <n chars of ASCII> }`: fixmap(1) + fixstr "data"(5) + str header + n. */
function msgpackDataBytes(n: number): number {
  return 1 + 5 + (n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5) + n;
}

/** The string length whose event envelope is exactly `target` bytes. */
function sizeEvents(target: number): EventSizes {
  for (let n = 1; n < target; n++) {
    const payloadBytes = msgpackDataBytes(n);
    const envelopeBytes = envelopeSize(payloadBytes);
    if (envelopeBytes === target) return { dataChars: n, payloadBytes, envelopeBytes };
    if (envelopeBytes > target) break;
  }
  throw new Error(`no payload size gives a ${target}-byte event envelope`);
}

function randomText(chars: number): string {
  return randomBytes(Math.ceil((chars * 3) / 4) + 3)
    .toString('base64')
    .slice(0, chars);
}

/** `arrays` distinct arrays of `batch` events each, drawn from a pool of distinct random payloads. */
function makeBatches(batch: number, dataChars: number, arrays: number, poolSize = 8192): EventInput[][] {
  const pool: EventInput[] = Array.from({ length: Math.min(poolSize, batch * arrays) }, () => ({ type: EVENT_TYPE, data: { data: randomText(dataChars) } }));
  const out: EventInput[][] = [];
  let k = 0;
  for (let j = 0; j < arrays; j++) {
    const a: EventInput[] = new Array(batch);
    for (let i = 0; i < batch; i++) a[i] = pool[k++ % pool.length]!;
    out.push(a);
  }
  return out;
}

// ------------------------------------------------------------------ broker facts

/** CPU ms (user + system) used so far by a process, from /proc; null when unreadable. */
function procCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 (utime, stime) are at indexes 11 and 12 after the ")".
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return null;
  }
}

/** Bytes of a topic's partition 0 segment files (.log) on the broker. */
function topicLogBytes(broker: Broker, topic: string): number | null {
  const dir = join(broker.dataDir, 'kafka-logs', `${topic}-0`);
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith('.log'))
      .reduce((n, f) => n + statSync(join(dir, f)).size, 0);
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ 1. perf tool

interface PerfRun {
  variant: 'default' | 'tuned';
  /** Before the zos runs, or again after them (full runs: shows drift; the better run of each variant is the peer). */
  when: 'before' | 'after';
  topic: string;
  numRecords: number;
  extraProps: Record<string, string | number>;
  /** Records/s of the shorter runs that sized this one (none with --records, in smoke runs and for the repeat). */
  sizingRecordsPerSec: number[];
  recordsPerSec: number;
  mbPerSec: number;
  avgLatencyMs: number;
  maxLatencyMs: number;
  p50: number | null;
  p99: number | null;
  /** Wall time of the tool's process (JVM start-up included). */
  wallSeconds: number;
  /** Broker JVM CPU over the run, in cores (1.0 = one core busy the whole time). */
  brokerCores: number | null;
  /** Bytes per record in the topic's segment files afterwards. */
  brokerBytesPerRecord: number | null;
}

let topicSeq = 0;

/**
 * A new one-partition topic for the perf tool. Through kafkajs's admin client
 * rather than infra's createTopic (Kafka's TopicCommand): that starts a JVM,
 * 2–3 s per topic here.
 */
async function freshTopic(broker: Broker, name: string): Promise<string> {
  const topic = `perf-${name}-${++topicSeq}-${randomBytes(3).toString('hex')}`;
  const admin = new kafkajs.Kafka({ clientId: 'zos-bench', brokers: [broker.bootstrap], logLevel: kafkajs.logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const created = await admin.createTopics({
      waitForLeaders: true,
      topics: [{ topic, numPartitions: 1, replicationFactor: 1, configEntries: [{ name: 'retention.ms', value: '-1' }, { name: 'retention.bytes', value: '-1' }] }],
    });
    if (!created) throw new Error(`topic ${topic} already exists`);
  } finally {
    await admin.disconnect();
  }
  return topic;
}

async function perfOnce(broker: Broker, variant: PerfRun['variant'], when: PerfRun['when'], numRecords: number, sizing: number[]): Promise<PerfRun> {
  const extraProps: Record<string, string | number> = variant === 'tuned' ? { ...TUNED_PROPS } : {};
  const topic = await freshTopic(broker, variant);
  const cpu0 = procCpuMs(broker.pid);
  const t0 = nowMs();
  const r: ProducerPerfResult = await runProducerPerf({ bootstrap: broker.bootstrap, topic, numRecords, recordSize: RECORD_BYTES, acks: 'all', throughput: -1, extraProps });
  const wallMs = nowMs() - t0;
  const cpu1 = procCpuMs(broker.pid);
  const bytes = topicLogBytes(broker, topic);
  return {
    variant,
    when,
    topic,
    numRecords,
    extraProps,
    sizingRecordsPerSec: sizing,
    recordsPerSec: r.recordsPerSec,
    mbPerSec: r.mbPerSec,
    avgLatencyMs: r.avgLatencyMs,
    maxLatencyMs: r.maxLatencyMs,
    p50: r.p50 ?? null,
    p99: r.p99 ?? null,
    wallSeconds: wallMs / 1000,
    // The tool's JVM start-up is in the wall time too, so this slightly understates the broker's load while sending.
    brokerCores: cpu0 === null || cpu1 === null ? null : (cpu1 - cpu0) / wallMs,
    brokerBytesPerRecord: bytes === null ? null : bytes / numRecords,
  };
}

async function perfRun(broker: Broker, variant: PerfRun['variant'], when: PerfRun['when'], o: { fixedRecords: number | null; calibrationRecords: number; seconds: number }): Promise<PerfRun> {
  const done = (r: PerfRun): PerfRun => {
    process.stdout.write(
      `  perf ${variant} (${when} zos): ${fmtNum(r.numRecords)} records, ${fmtNum(r.recordsPerSec)} records/s (${fmtNum(r.mbPerSec)} MB/s), p50 ${r.p50 ?? '?'} ms, p99 ${r.p99 ?? '?'} ms, ${r.wallSeconds.toFixed(1)} s\n`,
    );
    return r;
  };
  if (o.fixedRecords !== null) return done(await perfOnce(broker, variant, when, o.fixedRecords, []));
  // Size the run from a short one, and again from any run that was too short:
  // the tool gets 2–4× faster once its JIT is warm, so one calibration is not enough.
  const minSeconds = Math.max(1, o.seconds - 2);
  const rates = [(await perfOnce(broker, variant, when, o.calibrationRecords, [])).recordsPerSec];
  for (let attempt = 1; ; attempt++) {
    const rate = rates[rates.length - 1]!;
    const n = Math.max(o.calibrationRecords, Math.ceil((rate * o.seconds * 1.1) / 100_000) * 100_000);
    const r = await perfOnce(broker, variant, when, n, [...rates]);
    const sent = n / r.recordsPerSec;
    if (sent >= minSeconds || attempt === 3) {
      if (sent < minSeconds) process.stdout.write(`  perf ${variant}: warning: the run sent for only ${sent.toFixed(1)} s; pass --records to make it longer\n`);
      return done(r);
    }
    process.stdout.write(`  perf ${variant}: ${fmtNum(n)} records took only ${sent.toFixed(1)} s (${fmtNum(r.recordsPerSec)} records/s); sizing again\n`);
    rates.push(r.recordsPerSec);
  }
}

// ------------------------------------------------------------------ 2. zos throughput

interface ZosRow {
  batch: number;
  concurrency: number;
  topic: string;
  result: LoopResult;
  eventsPerSec: number;
  /** Event envelopes (256 B each) per second, MB/s. */
  mbPerSec: number;
  /** MessagePack payload bytes per second, MB/s. */
  payloadMBps: number;
  appendsPerCommit: number | null;
  /** Sealed frame bytes (header + ciphertext + chain) per event, as zos counts them. */
  frameBytesPerEvent: number;
  /** Bytes per event in the topic's segment files (Kafka batch and record overhead, transaction markers included). */
  brokerBytesPerEvent: number | null;
  /** Broker JVM CPU over the measured window, cores. */
  brokerCores: number | null;
  ratios: { vsPerfDefault: number | null; vsPerfTuned: number | null };
}

function kafkaUrl(broker: Broker, prefix: string): string {
  return `kafka://${broker.bootstrap}/${prefix}`;
}

async function zosRun(broker: Broker, args: BenchArgs, o: { batch: number; concurrency: number; warmup: number; sizes: EventSizes }): Promise<ZosRow> {
  const prefix = `zos-b${o.batch}-c${o.concurrency}-${randomBytes(3).toString('hex')}`;
  const dir = makeTempDir(args.baseDir, 'kafka-zos');
  try {
    initDataDir(dir);
    const log = await Tlog.open({ dataDir: dir, log: kafkaUrl(broker, prefix) });
    try {
      const batches = makeBatches(o.batch, o.sizes.dataChars, Math.max(16, o.concurrency * 2));
      let k = 0;
      const { op, appendsPerCommit } = zosStreamAppender(log, o.concurrency, () => batches[k++ % batches.length]!);
      const meter = new Meter();
      // Broker CPU over the whole loop (warm-up included), normalised by the loop's wall time.
      const cpu0 = procCpuMs(broker.pid);
      const t0 = nowMs();
      await runConcurrent({ concurrency: o.concurrency, warmupSeconds: o.warmup, seconds: args.seconds, op }, meter);
      const wallMs = nowMs() - t0;
      const cpu1 = procCpuMs(broker.pid);
      const result = meter.result();
      const st = await log.stats();
      if (st.events !== BigInt(meter.totalUnits)) throw new Error(`zos holds ${st.events} events, the benchmark appended ${meter.totalUnits}`);
      const topic = `${prefix}.tlog`;
      const brokerBytes = topicLogBytes(broker, topic);
      return {
        batch: o.batch,
        concurrency: o.concurrency,
        topic,
        result,
        eventsPerSec: result.unitsPerSec,
        mbPerSec: (result.unitsPerSec * o.sizes.envelopeBytes) / MB,
        payloadMBps: (result.unitsPerSec * o.sizes.payloadBytes) / MB,
        appendsPerCommit: appendsPerCommit(),
        frameBytesPerEvent: st.bytes / Math.max(1, meter.totalUnits),
        brokerBytesPerEvent: brokerBytes === null ? null : brokerBytes / Math.max(1, meter.totalUnits),
        brokerCores: cpu0 === null || cpu1 === null ? null : (cpu1 - cpu0) / wallMs,
        ratios: { vsPerfDefault: null, vsPerfTuned: null },
      };
    } finally {
      await log.close();
    }
  } finally {
    removeTempDir(dir);
  }
}

// ------------------------------------------------------------------ 3. end-to-end latency

interface E2eRow {
  batch: number;
  appendsPerSec: number;
  /** Target events/s (batch × appends/s) and what was achieved over the measured window. */
  targetEventsPerSec: number;
  achievedEventsPerSec: number;
  seconds: number;
  events: number;
  /** Append call → subscriber (second, read-only Tlog) receives the event, ms. */
  deliveryMs: { p50: number; p90: number; p99: number; max: number; mean: number };
  /** Append call → append promise resolved (transaction committed), ms. */
  ackMs: { p50: number; p99: number; max: number };
  /** How late append calls started against their schedule (start + i / rate), ms: the appender's own jitter. */
  issueLagMs: { p99: number; max: number };
}

interface StampedData {
  /** process.hrtime.bigint() just before the append call, as a decimal string. */
  t: string;
  /** 1 = warm-up (not measured). */
  w: number;
  data: string;
}

class Samples {
  #a = new Float64Array(1 << 14);
  #n = 0;
  #sum = 0;
  add(x: number): void {
    if (this.#n === this.#a.length) {
      const b = new Float64Array(this.#a.length * 2);
      b.set(this.#a);
      this.#a = b;
    }
    this.#a[this.#n++] = x;
    this.#sum += x;
  }
  get count(): number {
    return this.#n;
  }
  summary(): { p50: number; p90: number; p99: number; max: number; mean: number } {
    const s = this.#a.slice(0, this.#n).sort();
    return { p50: percentile(s, 0.5), p90: percentile(s, 0.9), p99: percentile(s, 0.99), max: this.#n > 0 ? s[this.#n - 1]! : 0, mean: this.#n > 0 ? this.#sum / this.#n : 0 };
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function e2eRun(broker: Broker, args: BenchArgs, o: { batch: number; rate: number; seconds: number; warmup: number; sizes: EventSizes }): Promise<E2eRow> {
  const prefix = `zos-e2e-b${o.batch}-r${o.rate}-${randomBytes(3).toString('hex')}`;
  const dir = makeTempDir(args.baseDir, 'kafka-e2e');
  try {
    initDataDir(dir);
    const url = kafkaUrl(broker, prefix);
    const writer = await Tlog.open({ dataDir: dir, log: url });
    // The topic exists once the writer is open; the reader is a second, read-only log on it.
    const reader = await Tlog.open({ dataDir: dir, log: url, readOnly: true });
    const ac = new AbortController();
    const delivery = new Samples();
    const ack = new Samples();
    // Keep the payload near 256 B with the stamp inside: {t, w, data}.
    const pad = randomText(Math.max(1, o.sizes.dataChars - 30));
    let measuredSent = 0;
    let measuredGot = 0;
    let firstWasWarm: boolean | null = null;
    const allIn: { done: (() => void) | null } = { done: null };
    let sendingDone = false;
    const subscriber = (async () => {
      for await (const e of reader.subscribe({ from: 'end', signal: ac.signal })) {
        const now = process.hrtime.bigint();
        const d = e.data as StampedData;
        if (firstWasWarm === null) firstWasWarm = d.w === 1;
        if (d.w === 1) continue;
        delivery.add(Number(now - BigInt(d.t)) / 1e6);
        measuredGot++;
        if (sendingDone && measuredGot >= measuredSent) allIn.done?.();
      }
    })();

    const failures: unknown[] = [];
    const inflight = new Set<Promise<void>>();
    const issue = (warm: boolean): void => {
      const t = process.hrtime.bigint();
      const data: StampedData = { t: t.toString(), w: warm ? 1 : 0, data: pad };
      const events: EventInput[] = Array.from({ length: o.batch }, () => ({ type: EVENT_TYPE, data }));
      if (!warm) measuredSent += o.batch;
      const p = writer
        .appendToStream('e2e', events, { expectedVersion: 'any' })
        .then(
          () => {
            if (!warm) ack.add(Number(process.hrtime.bigint() - t) / 1e6);
          },
          (err: unknown) => void failures.push(err),
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
    };

    // Open loop: append i is due at start + i / rate, whether or not earlier ones are done.
    const lag = new Samples();
    const runPhase = async (seconds: number, warm: boolean): Promise<{ issued: number; ms: number }> => {
      const interval = 1000 / o.rate;
      const start = nowMs();
      const end = start + seconds * 1000;
      let i = 0;
      for (;;) {
        const now = nowMs();
        if (now >= end) break;
        const due = Math.min(Math.floor((now - start) / interval) + 1, Math.ceil((end - start) / interval));
        while (i < due) {
          if (!warm) lag.add(nowMs() - (start + i * interval));
          issue(warm);
          i++;
        }
        const next = start + i * interval;
        await sleep(Math.max(0, next - nowMs()));
      }
      return { issued: i, ms: nowMs() - start };
    };

    try {
      await runPhase(o.warmup, true);
      // The subscriber must be following before the measured phase starts.
      const waitUntil = nowMs() + 30_000;
      while (firstWasWarm === null) {
        if (nowMs() > waitUntil) throw new Error('the subscriber received nothing within 30 s of warm-up');
        issue(true);
        await sleep(20);
      }
      const phase = await runPhase(o.seconds, false);
      sendingDone = true;
      await Promise.all([...inflight]);
      if (measuredGot < measuredSent) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([new Promise<void>((r) => (allIn.done = r)), new Promise<void>((r) => (timer = setTimeout(r, 30_000)))]);
        clearTimeout(timer);
      }
      if (failures.length > 0) throw new Error(`${failures.length} e2e appends failed, first: ${String(failures[0])}`);
      if (firstWasWarm === false) throw new Error('the subscriber started after measured events were appended (warm-up too short)');
      if (measuredGot !== measuredSent) throw new Error(`the subscriber received ${measuredGot} of ${measuredSent} measured events within 30 s`);
      return {
        batch: o.batch,
        appendsPerSec: o.rate,
        targetEventsPerSec: o.rate * o.batch,
        achievedEventsPerSec: (phase.issued * o.batch * 1000) / phase.ms,
        seconds: phase.ms / 1000,
        events: measuredSent,
        deliveryMs: delivery.summary(),
        ackMs: (({ p50, p99, max }) => ({ p50, p99, max }))(ack.summary()),
        issueLagMs: (({ p99, max }) => ({ p99, max }))(lag.summary()),
      };
    } finally {
      ac.abort();
      await subscriber.catch(() => undefined);
      await writer.close();
      await reader.close();
    }
  } finally {
    removeTempDir(dir);
  }
}

// ------------------------------------------------------------------ main

/** A string option's raw value (parseBenchArgs has already validated argv). */
function stringOption(name: string): string | undefined {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { [name]: { type: 'string' } }, strict: false, allowPositionals: true });
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

function parseE2e(raw: string | undefined, fallback: Array<{ batch: number; rate: number }>): Array<{ batch: number; rate: number }> {
  if (raw === undefined) return fallback;
  const out = raw.split(',').map((s) => {
    const m = /^\s*(\d+)\s*[x×]\s*(\d+(?:\.\d+)?)\s*$/.exec(s);
    if (!m || Number(m[1]) <= 0 || Number(m[2]) <= 0) {
      process.stderr.write(`kafka-append: --e2e takes BATCHxRATE[,BATCHxRATE…], e.g. 1x1000,100x100 (got ${raw})\n`);
      process.exit(2);
    }
    return { batch: Number(m[1]), rate: Number(m[2]) };
  });
  return out;
}

async function main(): Promise<void> {
  const args = parseBenchArgs({
    name: 'kafka-append',
    description:
      "zos append throughput and end-to-end latency on a local Apache Kafka broker (started by the benchmark), next to Kafka's own ProducerPerformance tool (256-byte records, acks=all).",
    options: {
      only: { type: 'string', help: 'parts to run, comma-separated: perf,zos,e2e (default all)' },
      warmup: { type: 'string', help: 'warm-up seconds per zos configuration and e2e run (default 2, smoke 0.3)' },
      batches: { type: 'string', help: 'events per append, comma-separated (default 1,100,1000)' },
      concurrency: { type: 'string', help: 'appends in flight, comma-separated (default 1,64)' },
      records: { type: 'string', help: 'records per perf-tool run (default: sized by shorter runs to --perf-seconds)' },
      'perf-seconds': { type: 'string', help: 'wanted sending time of each perf-tool run when sizing it; runs shorter by over 2 s are sized again (default 12)' },
      'probe-records': { type: 'string', help: 'records of the first, sizing perf-tool run (default 500000)' },
      e2e: { type: 'string', help: 'end-to-end runs as BATCHxAPPENDS_PER_SEC, comma-separated (default 1x1000,100x100)' },
      'e2e-seconds': { type: 'string', help: 'measured seconds per e2e run (default 10, smoke 0.5)' },
      'no-perf-after': { type: 'boolean', help: 'skip repeating the perf-tool runs after the zos runs (a drift check; never in --smoke)' },
    },
    seconds: { full: 10, smoke: 0.5 },
  });
  const parts = new Set((stringOption('only') ?? 'perf,zos,e2e').split(',').map((s) => s.trim()));
  for (const p of parts) {
    if (!['perf', 'zos', 'e2e'].includes(p)) {
      process.stderr.write(`kafka-append: --only takes perf,zos,e2e (got ${p})\n`);
      process.exit(2);
    }
  }
  const warmup = args.number('warmup', 2, 0.3);
  const batches = args.numbers('batches', [1, 100, 1000], [1, 100, 1000]);
  const concurrencies = args.numbers('concurrency', [1, 64], [1, 64]);
  const fixedRecords = stringOption('records') !== undefined ? args.number('records', 0, 0) : args.smoke ? 20_000 : null;
  const perfSeconds = args.number('perf-seconds', 12, 1);
  const calibrationRecords = args.number('probe-records', 500_000, 20_000);
  const e2eSeconds = args.number('e2e-seconds', 10, 0.5);
  const e2eConfigs = parseE2e(
    stringOption('e2e'),
    [
      { batch: 1, rate: 1000 },
      { batch: 100, rate: 100 },
    ],
  );
  const pre = checkKafkaPrerequisites();
  if (!pre.ok) {
    // As in the test suite: CI must have Java (a missing one fails), elsewhere say why and skip.
    if (process.env.CI) {
      process.stderr.write(`kafka-append: ${pre.why}\n`);
      process.exit(1);
    }
    process.stdout.write(`kafka-append: skipped: ${pre.why}\n`);
    writeResult('kafka-append', args, { skipped: pre.why });
    return;
  }
  const sizes = sizeEvents(RECORD_BYTES);
  process.stdout.write(
    `kafka-append: Apache Kafka ${KAFKA_VERSION} (single node, KRaft, ${BROKER_HEAP_MB} MiB heap); perf tool ${RECORD_BYTES}-byte records acks=all; ` +
      `zos events { data: <${sizes.dataChars} random base64 chars> } = ${sizes.payloadBytes} B MessagePack payload, ${sizes.envelopeBytes} B event envelope; ` +
      `${args.seconds} s per zos configuration after ${warmup} s warm-up\n`,
  );

  const brokerDir = makeTempDir(args.baseDir, 'kafka-broker');
  const t0 = nowMs();
  const broker = await startBroker({ dataDir: brokerDir, heapMb: BROKER_HEAP_MB });
  process.stdout.write(`  broker ready at ${broker.bootstrap} in ${((nowMs() - t0) / 1000).toFixed(1)} s (data ${brokerDir})\n`);

  const perf: PerfRun[] = [];
  const zos: ZosRow[] = [];
  const e2e: E2eRow[] = [];
  try {
    if (parts.has('perf')) {
      for (const variant of ['default', 'tuned'] as const) {
        perf.push(await perfRun(broker, variant, 'before', { fixedRecords, calibrationRecords, seconds: perfSeconds }));
      }
    }
    // Preliminary ratios for the progress lines; the final ones use the better run of each variant.
    const perfDefault = perf.find((p) => p.variant === 'default') ?? null;
    if (parts.has('zos')) {
      for (const batch of batches) {
        for (const concurrency of concurrencies) {
          const row = await zosRun(broker, args, { batch, concurrency, warmup, sizes });
          const prelim = ratio(row.eventsPerSec, perfDefault?.recordsPerSec);
          zos.push(row);
          process.stdout.write(
            `  zos batch ${batch} × ${concurrency}: ${fmtNum(row.eventsPerSec)} events/s (${fmtNum(row.mbPerSec)} MB/s), ${fmtNum(row.result.opsPerSec)} appends/s, ` +
              `${row.appendsPerCommit === null ? '?' : fmtNum(row.appendsPerCommit)} appends/commit, p50 ${fmtNum(row.result.latencyMs.p50)} ms${
                prelim === null ? '' : `, ${fmtRatio(prelim)} perf default`
              }\n`,
          );
        }
      }
    }
    if (parts.has('e2e')) {
      for (const c of e2eConfigs) {
        const row = await e2eRun(broker, args, { ...c, seconds: e2eSeconds, warmup, sizes });
        e2e.push(row);
        process.stdout.write(
          `  e2e batch ${c.batch} at ${fmtNum(c.rate)} appends/s: ${fmtNum(row.events)} events, delivery p50 ${fmtNum(row.deliveryMs.p50)} ms, p99 ${fmtNum(row.deliveryMs.p99)} ms, max ${fmtNum(row.deliveryMs.max)} ms\n`,
        );
      }
    }
    if (parts.has('perf') && !args.smoke && !args.flag('no-perf-after')) {
      for (const before of perf.slice()) {
        perf.push(await perfRun(broker, before.variant, 'after', { fixedRecords: before.numRecords, calibrationRecords, seconds: perfSeconds }));
      }
    }
  } finally {
    await broker.stop({ removeData: true });
    removeTempDir(brokerDir);
  }
  const peer = (variant: PerfRun['variant']): number | null => {
    const runs = perf.filter((p) => p.variant === variant);
    return runs.length === 0 ? null : Math.max(...runs.map((p) => p.recordsPerSec));
  };
  for (const z of zos) z.ratios = { vsPerfDefault: ratio(z.eventsPerSec, peer('default')), vsPerfTuned: ratio(z.eventsPerSec, peer('tuned')) };

  report(args, { sizes, warmup, perfSeconds, e2eSeconds, perf, zos, e2e });
}

function report(
  args: BenchArgs,
  r: { sizes: EventSizes; warmup: number; perfSeconds: number; e2eSeconds: number; perf: PerfRun[]; zos: ZosRow[]; e2e: E2eRow[] },
): void {
  const smokeNote = args.smoke ? ' (SMOKE: tiny runs, figures meaningless)' : '';
  if (r.perf.length > 0) {
    printTable(
      `Kafka ProducerPerformance, ${RECORD_BYTES}-byte records, acks=all, one partition${smokeNote}`,
      ['producer', 'run', 'records', 'records/s', 'MB/s', 'avg ms', 'p50 ms', 'p99 ms', 'max ms', 'seconds', 'broker cores', 'B/record on broker'],
      r.perf.map((p) => [
        p.variant === 'default' ? 'default (linger.ms=5, batch.size=16384)' : 'tuned (linger.ms=5, batch.size=262144)',
        p.when,
        p.numRecords,
        p.recordsPerSec,
        p.mbPerSec,
        p.avgLatencyMs,
        p.p50,
        p.p99,
        p.maxLatencyMs,
        p.wallSeconds,
        p.brokerCores,
        p.brokerBytesPerRecord,
      ]),
    );
  }
  if (r.zos.length > 0) {
    printTable(
      `zos on Kafka: events of ${r.sizes.envelopeBytes} B (payload ${r.sizes.payloadBytes} B), events/s; MB/s of ${r.sizes.envelopeBytes}-B events${smokeNote}`,
      ['batch', 'conc', 'events/s', 'MB/s', 'payload MB/s', 'appends/s', 'app/commit', 'p50 ms', 'p99 ms', 'node cores', 'broker cores', 'µs CPU/ev', 'B/ev on broker', 'zos/perf default', 'zos/perf tuned'],
      r.zos.map((z) => [
        z.batch,
        z.concurrency,
        z.eventsPerSec,
        z.mbPerSec,
        z.payloadMBps,
        z.result.opsPerSec,
        z.appendsPerCommit,
        z.result.latencyMs.p50,
        z.result.latencyMs.p99,
        z.result.cpu.cores,
        z.brokerCores,
        z.result.units > 0 ? ((z.result.cpu.userMs + z.result.cpu.systemMs) * 1000) / z.result.units : null,
        z.brokerBytesPerEvent,
        fmtRatio(z.ratios.vsPerfDefault),
        fmtRatio(z.ratios.vsPerfTuned),
      ]),
    );
  }
  if (r.e2e.length > 0) {
    printTable(
      `End to end: append call → delivery to a subscriber on a second, read-only Tlog (same process), ms${smokeNote}`,
      ['batch', 'appends/s', 'events/s', 'events', 'p50', 'p90', 'p99', 'max', 'mean', 'ack p50', 'ack p99', 'issue lag p99', 'issue lag max'],
      r.e2e.map((e) => [e.batch, e.appendsPerSec, e.achievedEventsPerSec, e.events, e.deliveryMs.p50, e.deliveryMs.p90, e.deliveryMs.p99, e.deliveryMs.max, e.deliveryMs.mean, e.ackMs.p50, e.ackMs.p99, e.issueLagMs.p99, e.issueLagMs.max]),
    );
  }
  const best = r.zos.reduce<ZosRow | null>((b, z) => (b === null || z.eventsPerSec > b.eventsPerSec ? z : b), null);
  const bestOf = (variant: PerfRun['variant']): PerfRun | null =>
    r.perf.filter((p) => p.variant === variant).reduce<PerfRun | null>((b, p) => (b === null || p.recordsPerSec > b.recordsPerSec ? p : b), null);
  const perfDefault = bestOf('default');
  const perfTuned = bestOf('tuned');
  const target = {
    target: TARGET_VS_PERF,
    perfDefaultRecordsPerSec: perfDefault?.recordsPerSec ?? null,
    perfTunedRecordsPerSec: perfTuned?.recordsPerSec ?? null,
    best: best ? { batch: best.batch, concurrency: best.concurrency, eventsPerSec: best.eventsPerSec, vsPerfDefault: best.ratios.vsPerfDefault, vsPerfTuned: best.ratios.vsPerfTuned } : null,
    met: best?.ratios.vsPerfDefault == null ? null : best.ratios.vsPerfDefault >= TARGET_VS_PERF,
    metVsTuned: best?.ratios.vsPerfTuned == null ? null : best.ratios.vsPerfTuned >= TARGET_VS_PERF,
  };
  if (best && perfDefault) {
    process.stdout.write(
      `\ntarget: zos events/s ≥ ${TARGET_VS_PERF}× the perf tool's records/s: best zos (batch ${best.batch} × ${best.concurrency}) ${fmtNum(best.eventsPerSec)} events/s = ` +
        `${fmtRatio(best.ratios.vsPerfDefault)} default (${fmtNum(perfDefault.recordsPerSec)}) → ${target.met ? 'MET' : 'NOT MET'}` +
        (perfTuned ? `; ${fmtRatio(best.ratios.vsPerfTuned)} tuned (${fmtNum(perfTuned.recordsPerSec)}) → ${target.metVsTuned ? 'MET' : 'NOT MET'}` : '') +
        '\n',
    );
  }
  writeResult('kafka-append', args, {
    settings: {
      kafkaVersion: KAFKA_VERSION,
      brokerHeapMb: BROKER_HEAP_MB,
      recordBytes: RECORD_BYTES,
      event: { type: EVENT_TYPE, ...r.sizes },
      seconds: args.seconds,
      warmupSeconds: r.warmup,
      perfSeconds: r.perfSeconds,
      e2eSeconds: r.e2eSeconds,
      tunedProps: TUNED_PROPS,
    },
    perf: r.perf,
    zos: r.zos,
    e2e: r.e2e,
    target,
  });
}

await main();
