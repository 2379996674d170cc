/**
 * Smoke test of the real Kafka broker infrastructure (infra/kafka/broker.ts):
 * a single-node KRaft Apache Kafka 4.1.1 starts, takes a topic, an idempotent
 * acks=all write and a read; a SIGKILLed broker restarts with the write intact;
 * an unreachable broker fails a client within a bounded time; Kafka's own
 * ProducerPerformance runs against it.
 */
import t, { type Test } from 'tap';
import kafkajs from 'kafkajs';
import { connect, type Socket } from 'node:net';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createTopic, freePorts, parseProducerPerf, runProducerPerf } from '../../infra/kafka/index.ts';
import { kafkaSkip, startTestBroker, type Broker } from '../helpers/kafka.ts';

const { Kafka, logLevel } = kafkajs;
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const skip = kafkaSkip();

function client(bootstrap: string, extra: Partial<kafkajs.KafkaConfig> = {}): kafkajs.Kafka {
  return new Kafka({ clientId: 'zos-infra-test', brokers: [bootstrap], logLevel: logLevel.NOTHING, ...extra });
}

/** Read `count` messages of `topic` from the beginning with a fresh consumer group. */
async function readAll(bootstrap: string, topic: string, count: number, timeoutMs = 30_000): Promise<{ key: string; value: string; offset: string }[]> {
  const consumer = client(bootstrap).consumer({ groupId: `g-${Date.now()}-${Math.random()}` });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    const got: { key: string; value: string; offset: string }[] = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`read ${got.length}/${count} messages of ${topic} in ${timeoutMs} ms`)), timeoutMs);
      consumer
        .run({
          eachMessage: async ({ message }) => {
            got.push({ key: String(message.key), value: String(message.value), offset: message.offset });
            if (got.length >= count) {
              clearTimeout(timer);
              resolve();
            }
          },
        })
        .catch(reject);
    });
    return got;
  } finally {
    await consumer.disconnect();
  }
}

t.test('a real single-node Kafka broker: write, read, kill -9, restart, read again', { skip }, async (t) => {
  const started = Date.now();
  const broker: Broker = await startTestBroker(t);
  t.comment(`broker ready at ${broker.bootstrap} in ${Date.now() - started} ms (pid ${broker.pid}, data ${broker.dataDir})`);
  t.match(broker.bootstrap, /^127\.0\.0\.1:\d+$/, 'loopback bootstrap address');
  t.match(broker.logTail(200), /Kafka Server started/, 'server.log shows the startup line');

  const topic = 'zos-smoke';
  const admin = client(broker.bootstrap).admin();
  await admin.connect();
  t.ok(
    await admin.createTopics({
      waitForLeaders: true,
      topics: [{ topic, numPartitions: 1, replicationFactor: 1, configEntries: [{ name: 'min.insync.replicas', value: '1' }] }],
    }),
    'topic created',
  );
  t.same(await admin.listTopics().then((l) => l.includes(topic)), true, 'topic listed');
  await admin.disconnect();

  const producer = client(broker.bootstrap).producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const sent = await producer.send({
    topic,
    acks: -1,
    messages: [
      { key: 'k1', value: 'hello kafka' },
      { key: 'k2', value: 'second' },
    ],
  });
  await producer.disconnect();
  t.equal(sent[0]?.errorCode, 0, 'acks=all idempotent write acknowledged');
  t.equal(sent[0]?.baseOffset, '0', 'at offset 0');

  const before = await readAll(broker.bootstrap, topic, 2);
  t.same(
    before.map((m) => [m.key, m.value, m.offset]),
    [
      ['k1', 'hello kafka', '0'],
      ['k2', 'second', '1'],
    ],
    'read back',
  );

  const oldPid = broker.pid;
  await broker.kill('SIGKILL');
  t.throws(() => process.kill(oldPid, 0), 'the JVM is gone after kill -9');

  const restartedAt = Date.now();
  await broker.restart();
  t.comment(`restarted after SIGKILL in ${Date.now() - restartedAt} ms (pid ${broker.pid})`);
  t.not(broker.pid, oldPid, 'a new JVM');
  t.ok(existsSync(`${broker.dataDir}/kafka-logs/meta.properties`), 'same data dir, not reformatted');

  const after = await readAll(broker.bootstrap, topic, 2);
  t.same(
    after.map((m) => [m.key, m.value, m.offset]),
    before.map((m) => [m.key, m.value, m.offset]),
    'the acknowledged writes survived the broker kill -9',
  );

  // Kafka's own producer benchmark, briefly, on a topic made by Kafka's TopicCommand.
  await createTopic(broker.bootstrap, 'zos-perf', { partitions: 1, config: { 'min.insync.replicas': 1 } });
  const perf = await runProducerPerf({ bootstrap: broker.bootstrap, topic: 'zos-perf', numRecords: 2000, recordSize: 100, acks: 'all', throughput: -1 });
  t.comment(`ProducerPerformance: ${perf.recordsPerSec} records/s, ${perf.mbPerSec} MB/s, avg ${perf.avgLatencyMs} ms, p99 ${perf.p99} ms`);
  t.ok(perf.recordsPerSec > 0, 'records/s parsed');
  t.ok(perf.avgLatencyMs >= 0, 'avg latency parsed');
  t.type(perf.p50, 'number', 'p50 parsed');
  t.type(perf.p99, 'number', 'p99 parsed');
});

/**
 * A loopback address that behaves like an unreachable host: a child process
 * listens with backlog 1 and then blocks its event loop, so it never accepts;
 * once its accept queue is full the kernel drops further SYNs and connects hang.
 */
async function blackhole(t: Test): Promise<number> {
  const code =
    "const s=require('net').createServer();s.listen({port:0,host:'127.0.0.1',backlog:1},()=>{" +
    "process.stdout.write(s.address().port+'\\n');Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0,60000);process.exit(0)})";
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    child.once('exit', (c) => reject(new Error(`blackhole child exited (${c})`)));
  });
  // Fill the accept queue (bounded): stop at the first connect that hangs.
  const held: Socket[] = [];
  t.teardown(() => held.forEach((s) => s.destroy()));
  for (let i = 0; i < 8; i++) {
    const s = connect({ host: '127.0.0.1', port });
    held.push(s);
    const ok = await new Promise<boolean>((r) => {
      const timer = setTimeout(() => r(false), 300);
      s.once('connect', () => {
        clearTimeout(timer);
        r(true);
      });
      s.once('error', () => {
        clearTimeout(timer);
        r(false);
      });
    });
    if (!ok) break;
  }
  return port;
}

t.test('an unreachable broker fails a kafkajs client within a bounded time', async (t) => {
  // Loopback only: a port nobody listens on (connection refused at once), and
  // a listener whose full accept queue drops SYNs (connects hang: connectionTimeout).
  const [closedPort] = await freePorts(1);
  const hangingPort = await blackhole(t);
  for (const [what, port, boundMs] of [
    ['refused', closedPort!, 10_000],
    ['connect hangs', hangingPort, 15_000],
  ] as const) {
    const k = client(`127.0.0.1:${port}`, { connectionTimeout: 1000, retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000 } });
    const producer = k.producer();
    const t0 = Date.now();
    const err = await producer.connect().then(
      () => undefined,
      (e: Error) => e,
    );
    const ms = Date.now() - t0;
    await producer.disconnect().catch(() => {});
    t.ok(err, `${what}: connect fails`);
    t.match(`${err?.name}: ${err?.message}`, /KafkaJS.*(Connection|connect)/i, `${what}: a KafkaJS connection error (${err?.name}: ${err?.message})`);
    t.ok(ms < boundMs, `${what}: within ${boundMs} ms (took ${ms} ms)`);
    t.comment(`${what}: ${err?.name} after ${ms} ms`);
  }
});

t.test('ProducerPerformance summary parsing', async (t) => {
  const raw =
    '1000 records sent, 500.2 records/sec (0.05 MB/sec), 12.3 ms avg latency, 99.0 ms max latency.\n' +
    '2000 records sent, 4366.812227 records/sec (0.42 MB/sec), 38.94 ms avg latency, 213.00 ms max latency, 34 ms 50th, 67 ms 95th, 70 ms 99th, 213 ms 99.9th.\n';
  const r = parseProducerPerf(raw);
  t.same(
    { ...r, raw: undefined },
    { recordsPerSec: 4366.812227, mbPerSec: 0.42, avgLatencyMs: 38.94, maxLatencyMs: 213, p50: 34, p95: 67, p99: 70, p999: 213, raw: undefined },
  );
  t.throws(() => parseProducerPerf('nothing here'), /no ProducerPerformance summary/);
});
