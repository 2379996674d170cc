/**
 * The Kafka backend under faults, against a real broker: a writer fenced by
 * another, the broker killed with -9 and restarted during appends, a writer
 * killed mid-batch, and a dead broker at start-up.
 */
import tap from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Tlog, initDataDir, isZosError, type RecordedEvent } from '../../tlog/index.ts';
import { tempDir, waitFor } from '../helpers/tmp.ts';
import { kafkaSkip, sharedTestBroker, startTestBroker } from '../helpers/kafka.ts';

const APPENDER = fileURLToPath(new URL('../fixtures/kafka-appender.ts', import.meta.url));

interface Child {
  proc: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

function appender(args: string[]): Child {
  const proc = spawn(process.execPath, [APPENDER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buf = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const guard = setTimeout(() => proc.kill('SIGKILL'), 180_000);
  const exited = new Promise<number | null>((resolve) =>
    proc.on('exit', (code) => {
      clearTimeout(guard);
      if (code !== 0 && code !== null && stderr) lines.push(`stderr ${stderr}`);
      resolve(code);
    }),
  );
  return { proc, lines, exited };
}

const acks = (c: Child): Map<number, bigint> => {
  const m = new Map<number, bigint>();
  for (const l of c.lines) {
    const [k, s, p] = l.split(' ');
    if (k === 'ack') m.set(Number(s), BigInt(p!));
  }
  return m;
};

async function readStream(dir: string, log: string, stream: string): Promise<RecordedEvent[]> {
  const reader = await Tlog.open({ dataDir: dir, log, readOnly: true });
  try {
    const out: RecordedEvent[] = [];
    for await (const e of reader.readStream(stream)) out.push(e);
    return out;
  } finally {
    await reader.close();
  }
}

tap.test('kafka faults', { skip: kafkaSkip() }, async (t) => {
  t.test('a second writer fences the first: clear error, nothing after fencing visible', async (t) => {
    const broker = await sharedTestBroker(tap);
    const dir = tempDir(t);
    initDataDir(dir);
    const log = `kafka://${broker.bootstrap}/fence-${randomBytes(4).toString('hex')}`;
    const a = await Tlog.open({ dataDir: dir, log });
    t.teardown(() => a.close());
    for (let i = 0; i < 5; i++) await a.appendToStream('s', [{ type: 'A', data: { i } }]);

    // Another process takes over the partition and appends.
    const b = appender([dir, log, 's', '1', '1', '3']);
    t.equal(await b.exited, 0, `second writer ran: ${b.lines.join(' | ')}`);
    t.equal(acks(b).size, 3);

    // The first writer is fenced: a clear, non-retriable error, and nothing it sends shows up.
    let fenced: unknown = null;
    try {
      await a.appendToStream('s', [{ type: 'A', data: { i: 'after-fencing' } }]);
    } catch (err) {
      fenced = err;
    }
    t.ok(isZosError(fenced, 'TLOG_FENCED'), `fenced writer gets TLOG_FENCED (got ${String(fenced)})`);
    t.match((fenced as Error).message, /another zos writer took over/);
    await t.rejects(a.appendToStream('s', [{ type: 'A', data: { i: 'again' } }]), { code: 'TLOG_FENCED' }, 'and stays fenced');

    const events = await readStream(dir, log, 's');
    t.same(events.map((e) => e.type), ['A', 'A', 'A', 'A', 'A', 'Tick', 'Tick', 'Tick'], 'only pre-fencing and new-writer events');
    t.same(events.map((e) => e.version), events.map((_, i) => BigInt(i)));
    const verifier = await Tlog.open({ dataDir: dir, log, readOnly: true });
    const report = await verifier.verify();
    await verifier.close();
    t.ok(report.ok, 'the log verifies');
  });

  t.test('kill -9 the broker during appends: every acknowledged append once, in order', async (t) => {
    const broker = await startTestBroker(t);
    const dir = tempDir(t);
    initDataDir(dir);
    const log = `kafka://${broker.bootstrap}/crash-${randomBytes(4).toString('hex')}`;
    const child = appender([dir, log, 'steady', '1', '4']);
    t.teardown(() => child.proc.kill('SIGKILL'));
    await waitFor(() => acks(child).size >= 200, 60_000, '200 acknowledged appends');
    await broker.kill('SIGKILL');
    const atKill = acks(child).size;
    await broker.restart();
    await waitFor(() => acks(child).size >= atKill + 200, 90_000, '200 more acknowledged appends after the restart');
    child.proc.kill('SIGTERM');
    await child.exited;

    const acked = acks(child);
    const errors = child.lines.filter((l) => l.startsWith('err '));
    for (const e of errors) t.match(e, /^err \d+ TLOG_BACKEND_UNAVAILABLE [01] /, `failed append has a clear retriable error: ${e.slice(0, 160)}`);
    const events = await readStream(dir, log, 'steady');
    const seen = new Map<number, number>();
    for (const e of events) {
      const seq = (e.data as { seq: number }).seq;
      seen.set(seq, (seen.get(seq) ?? 0) + 1);
    }
    t.equal([...seen.values()].filter((n) => n > 1).length, 0, 'nothing duplicated');
    const missing = [...acked.keys()].filter((s) => seen.get(s) !== 1);
    t.equal(missing.length, 0, `all ${acked.size} acknowledged appends present (${errors.length} failed during the outage)`);
    const notWritten = errors.filter((l) => l.split(' ')[3] === '0').map((l) => Number(l.split(' ')[1]));
    t.equal(notWritten.filter((s) => seen.has(s)).length, 0, 'appends reported as not written are absent');
    // Positions as acknowledged, and in order.
    const byPos = new Map<bigint, number>(events.map((e) => [e.position, (e.data as { seq: number }).seq]));
    t.equal([...acked].filter(([s, p]) => byPos.get(p) !== s).length, 0, 'each at its acknowledged position');
    t.same(events.map((e) => e.version), events.map((_, i) => BigInt(i)), 'versions contiguous');
    const verifier = await Tlog.open({ dataDir: dir, log, readOnly: true });
    const report = await verifier.verify();
    await verifier.close();
    t.ok(report.ok, `zos log verify passes afterwards ${JSON.stringify(report.problem, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
  });

  t.test('kill -9 a writer mid-batch: no partial batch, the next writer continues the chain', async (t) => {
    const broker = await sharedTestBroker(tap);
    const dir = tempDir(t);
    initDataDir(dir);
    const log = `kafka://${broker.bootstrap}/midbatch-${randomBytes(4).toString('hex')}`;
    const BATCH = 50;
    for (let round = 0; round < 3; round++) {
      const child = appender([dir, log, 'batches', String(BATCH), '8']);
      await waitFor(() => acks(child).size >= 20, 60_000, 'appends before the kill').catch((err: Error) => {
        throw new Error(`round ${round}: ${err.message}; child said: ${child.lines.slice(-5).join(' | ')}`);
      });
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 50)));
      child.proc.kill('SIGKILL');
      await child.exited;
    }
    const next = await Tlog.open({ dataDir: dir, log });
    const r = await next.appendToStream('batches', [{ type: 'After', data: {} }]);
    await next.close();
    const events = await readStream(dir, log, 'batches');
    const perBatch = new Map<string, number>();
    for (const e of events) {
      if (e.type !== 'Tick') continue;
      const d = e.data as { writer: number; seq: number };
      const k = `${d.writer}:${d.seq}`;
      perBatch.set(k, (perBatch.get(k) ?? 0) + 1);
    }
    t.ok(perBatch.size > 0);
    t.same([...perBatch.values()].filter((n) => n !== BATCH), [], 'every batch is whole');
    t.equal(events[events.length - 1]!.type, 'After');
    t.equal(r.position, BigInt(events.length - 1), 'the next writer appended right after the last whole batch');
    const verifier = await Tlog.open({ dataDir: dir, log, readOnly: true });
    const report = await verifier.verify();
    await verifier.close();
    t.ok(report.ok, 'the chain continues unbroken');
  });

  t.test('a dead broker at start-up: a clear error naming the address, in bounded time', async (t) => {
    const dir = tempDir(t);
    initDataDir(dir);
    // A port nothing listens on.
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const started = Date.now();
    let error: unknown = null;
    try {
      await Tlog.open({ dataDir: dir, log: `kafka://127.0.0.1:${port}/dead` });
    } catch (err) {
      error = err;
    }
    const took = Date.now() - started;
    t.ok(isZosError(error, 'TLOG_BACKEND_UNAVAILABLE'), `unavailable error (got ${String(error)})`);
    t.match((error as Error).message, new RegExp(`127\\.0\\.0\\.1:${port}`), 'names the address');
    t.ok((error as { retriable?: boolean }).retriable, 'retriable');
    t.ok(took < 20_000, `within a bounded time (${took} ms)`);
  });
});
