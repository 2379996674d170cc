/**
 * Replay throughput: read the whole log back (`for await (const e of
 * log.readAll())`: frame read + CRC, decrypt, LZ4, Avro envelope, MessagePack
 * payload) on one JavaScript thread.
 *
 *   npx node bench/replay.ts [--events 500000] [--batches 100,1] [--passes 3] [--smoke]
 *
 * The log is built first with concurrent appenders (not measured), closed and
 * reopened; the segments are then in the page cache, so this measures the CPU
 * cost of replay, not the disk. A frames-only pass (backend.readFrames, no
 * decryption or decoding) shows how the time splits between I/O + framing and
 * decrypt + decode.
 */
import { Tlog, initDataDir } from '../tlog/index.ts';
import type { EventInput, ExpectedVersion } from '../tlog/index.ts';
import {
  cpuSince,
  makeJsonPayloadPool,
  nowMs,
  parseBenchArgs,
  printTable,
  runConcurrent,
  withTempDir,
  writeResult,
  type CpuTime,
} from './lib.ts';

const EVENT_BYTES = 256;
const TARGET_EVENTS_PER_SEC = 300_000;

interface Pass {
  events: number;
  seconds: number;
  eventsPerSec: number;
  cpu: CpuTime;
}

interface ReplayRow {
  batch: number;
  events: number;
  entries: number;
  logBytes: number;
  buildSeconds: number;
  openMs: number;
  passes: Pass[];
  /** Median of the full-decode passes. */
  eventsPerSec: number;
  bestEventsPerSec: number;
  /** µs of CPU per event (user + system), median pass. */
  cpuUsPerEvent: number;
  framesOnly: Pass;
  /** Share of the replay time spent outside backend.readFrames (decrypt, decompress, decode). */
  decodeShare: number;
}

async function main(): Promise<void> {
  const args = parseBenchArgs({
    name: 'replay',
    description: 'Full-log replay (decrypt + decompress + decode) events/s on one core.',
    options: {
      events: { type: 'string', help: 'events in the log (default 500000, smoke 2000)' },
      batches: { type: 'string', help: 'events per entry when building, comma-separated (default 100,1)' },
      passes: { type: 'string', help: 'measured full-decode passes; the median is reported (default 3, smoke 1)' },
      'build-concurrency': { type: 'string', help: 'appenders in flight while building (default 64)' },
    },
    seconds: { full: 0, smoke: 0 },
  });
  const events = Math.floor(args.number('events', 500_000, 2_000));
  const batches = args.numbers('batches', [100, 1], [100, 1]);
  const passes = Math.floor(args.number('passes', 3, 1));
  const buildConcurrency = Math.floor(args.number('build-concurrency', 64, 8));
  const pool = makeJsonPayloadPool(4096, EVENT_BYTES);
  process.stdout.write(`replay: ${events} events of ~${EVENT_BYTES} B, ${passes} passes per log; dir ${args.baseDir}\n`);

  const rows: ReplayRow[] = [];
  for (const batch of batches) {
    const row = await withTempDir(args.baseDir, 'replay', async (dir) => {
      initDataDir(dir);
      const buildSeconds = await build(dir, events, batch, buildConcurrency, pool);
      const t0 = nowMs();
      const log = await Tlog.open({ dataDir: dir, readOnly: true });
      const openMs = nowMs() - t0;
      try {
        const stats = await log.stats();
        const full: Pass[] = [];
        for (let p = 0; p < passes; p++) full.push(await replayPass(log, events));
        const framesOnly = await framesPass(log, events);
        const sorted = [...full].sort((a, b) => a.eventsPerSec - b.eventsPerSec);
        const median = sorted[Math.floor(sorted.length / 2)]!;
        return {
          batch,
          events,
          entries: stats.entries,
          logBytes: stats.bytes,
          buildSeconds,
          openMs,
          passes: full,
          eventsPerSec: median.eventsPerSec,
          bestEventsPerSec: sorted[sorted.length - 1]!.eventsPerSec,
          cpuUsPerEvent: ((median.cpu.userMs + median.cpu.systemMs) * 1000) / median.events,
          framesOnly,
          decodeShare: 1 - framesOnly.seconds / median.seconds,
        } satisfies ReplayRow;
      } finally {
        await log.close();
      }
    });
    rows.push(row);
    process.stdout.write(`  batch ${batch}: ${Math.round(row.eventsPerSec)} events/s\n`);
  }

  printTable(
    `Replay: log.readAll() over ${events} events of ~${EVENT_BYTES} B (median of ${passes} passes; page cache warm)`,
    ['events/entry', 'entries', 'MB', 'open ms', 'events/s', 'best', 'CPU cores', 'CPU µs/event', 'frames-only ev/s', 'decode share', 'target'],
    rows.map((r) => {
      const median = [...r.passes].sort((a, b) => a.eventsPerSec - b.eventsPerSec)[Math.floor(r.passes.length / 2)]!;
      return [
        r.batch,
        r.entries,
        r.logBytes / 1e6,
        r.openMs,
        r.eventsPerSec,
        r.bestEventsPerSec,
        median.cpu.cores,
        r.cpuUsPerEvent,
        r.framesOnly.eventsPerSec,
        `${(r.decodeShare * 100).toFixed(0)}%`,
        r.eventsPerSec >= TARGET_EVENTS_PER_SEC ? `MET (≥${TARGET_EVENTS_PER_SEC / 1000}k)` : `NOT MET (≥${TARGET_EVENTS_PER_SEC / 1000}k)`,
      ];
    }),
  );
  writeResult('replay', args, {
    settings: { events, batches, passes, buildConcurrency, eventBytes: EVENT_BYTES, baseDir: args.baseDir },
    target: TARGET_EVENTS_PER_SEC,
    rows,
  });
}

async function build(dir: string, events: number, batch: number, concurrency: number, pool: Array<Record<string, unknown>>): Promise<number> {
  const log = await Tlog.open({ dataDir: dir });
  try {
    const versions: Array<bigint | null> = Array.from({ length: concurrency }, () => null);
    let k = 0;
    let issued = 0;
    const t0 = nowMs();
    const res = await runConcurrent({
      concurrency,
      warmupSeconds: 0,
      seconds: 3600,
      maxOps: Math.ceil(events / batch),
      op: async (w) => {
        const n = Math.min(batch, events - issued);
        issued += n;
        if (n <= 0) return 0;
        const evs: EventInput[] = new Array(n);
        for (let i = 0; i < n; i++) evs[i] = { type: 'BenchEvent', data: pool[k++ % pool.length] };
        const v = versions[w] ?? null;
        const expectedVersion: ExpectedVersion = v === null ? 'no-stream' : v;
        versions[w] = (await log.appendToStream(`bench-${w}`, evs, { expectedVersion })).nextExpectedVersion;
        return n;
      },
    });
    if (res.totalUnits !== events) throw new Error(`built ${res.totalUnits} events, wanted ${events}`);
    return (nowMs() - t0) / 1000;
  } finally {
    await log.close();
  }
}

async function replayPass(log: Tlog, expected: number): Promise<Pass> {
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  let n = 0;
  let checksum = 0;
  for await (const e of log.readAll()) {
    n++;
    checksum += (e.data as { seq: number }).seq;
  }
  const ms = nowMs() - t0;
  if (n !== expected || !Number.isFinite(checksum)) throw new Error(`replay read ${n} events, expected ${expected}`);
  return { events: n, seconds: ms / 1000, eventsPerSec: (n * 1000) / ms, cpu: cpuSince(cpu0, ms) };
}

async function framesPass(log: Tlog, expected: number): Promise<Pass> {
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  let n = 0;
  for await (const f of log.backend.readFrames(0n)) n += f.eventCount;
  const ms = nowMs() - t0;
  if (n !== expected) throw new Error(`frames-only pass read ${n} events, expected ${expected}`);
  return { events: n, seconds: ms / 1000, eventsPerSec: (n * 1000) / ms, cpu: cpuSince(cpu0, ms) };
}

await main();
