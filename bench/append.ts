/**
 * Append throughput: zos (file backend) vs an SQLite event table at equal
 * durability vs the disk's own limit (fio, sequential writes + fdatasync).
 *
 *   npx node bench/append.ts [--seconds 5] [--dir /path/on/the/disk] [--smoke]
 *
 * Each configuration gets fresh data directories; after a warm-up, the
 * contenders (zos, SQLite, SQLite with group commit, fio) are measured in
 * alternating windows of --window seconds until each has had --seconds, so a
 * disk whose speed drifts (shared and virtual disks do) treats them alike.
 * "Batch" = events per append call (one atomic entry / one transaction);
 * "concurrency" = append promises in flight, each appender on its own stream
 * with expected-version checks.
 */
import { join } from 'node:path';
import { Tlog, initDataDir } from '../tlog/index.ts';
import type { EventInput } from '../tlog/index.ts';
import {
  FIO_MISSING,
  MB,
  Meter,
  combineFio,
  findFio,
  fmtNum,
  fmtRatio,
  makeTempDir,
  removeTempDir,
  makeBinaryPayloadPool,
  makeJsonPayloadPool,
  parseBenchArgs,
  printTable,
  ratio,
  runConcurrent,
  runFio,
  withTempDir,
  writeResult,
  type BenchArgs,
  type FioResult,
  type LoopResult,
  zosStreamAppender,
} from './lib.ts';
import { GroupCommitter, SqliteEventStore, type SqliteAppend } from './sqlite-store.ts';

const EVENT_BYTES = 256;
const LARGE_BYTES = 64 * 1024;
const ZOS_TARGET_VS_SQLITE = 3;
const ZOS_TARGET_VS_FIO_LARGE = 0.5;

interface StoreRun extends LoopResult {
  /** Bytes on disk per event after the run (log + index, or db + WAL). */
  bytesPerEvent: number;
  /** Appends per fdatasync / transaction, when known. */
  appendsPerCommit: number | null;
}

type FioRun = NonNullable<ReturnType<typeof combineFio>>;

interface SmallRow {
  batch: number;
  concurrency: number;
  zos: StoreRun;
  sqlite: StoreRun;
  /** Group-committed SQLite (all queued batches in one transaction); only with concurrency > 1. */
  sqliteGrouped: StoreRun | null;
  /** fio at bs = 256 B × batch, measured in windows interleaved with the others. */
  fio: FioRun | null;
  /** fio writes/s × batch: events/s if every batch were one synced write. */
  fioEventsPerSec: number | null;
  ratios: { zosVsSqlite: number | null; zosVsSqliteGrouped: number | null; zosVsBestSqlite: number | null; zosVsFio: number | null };
}

interface LargeRow {
  concurrency: number;
  zos: StoreRun;
  zosMBps: number;
  fio: FioRun[];
  ratios: Record<string, number | null>;
}

/** One side of a comparison: measured in windows interleaved with its peers'. */
interface Contender<R> {
  name: string;
  window(seconds: number, warmupSeconds: number): Promise<void>;
  finish(): Promise<R>;
}

/**
 * Measure the contenders in alternating windows of about `windowSeconds`
 * (rotating who goes first), so that a disk whose speed drifts over time
 * (shared or virtual disks do) treats them alike. Each gets `seconds` in all.
 */
async function interleave(contenders: Array<Contender<unknown>>, seconds: number, windowSeconds: number, warmup: number): Promise<void> {
  const rounds = Math.max(1, Math.round(seconds / windowSeconds));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < contenders.length; i++) {
      await contenders[(i + r) % contenders.length]!.window(seconds / rounds, r === 0 ? warmup : 0);
    }
  }
}

async function main(): Promise<void> {
  const args = parseBenchArgs({
    name: 'append',
    description: 'Append throughput of zos vs an SQLite event table (node:sqlite, WAL, synchronous=FULL) vs fio.',
    options: {
      warmup: { type: 'string', help: 'warm-up seconds per contender and configuration (default 1, smoke 0.1)' },
      window: { type: 'string', help: 'seconds of one measured window; contenders alternate windows (default 1)' },
      batches: { type: 'string', help: 'events per append, comma-separated (default 1,10,100)' },
      concurrency: { type: 'string', help: 'appends in flight, comma-separated (default 1,64)' },
      'large-fio-bs': { type: 'string', help: 'fio block sizes for the 64 KiB test (default 65536,1048576)' },
    },
    seconds: { full: 5, smoke: 0.3 },
  });
  const warmup = args.number('warmup', 1, 0.1);
  const windowSeconds = args.number('window', 1, 1);
  const batches = args.numbers('batches', [1, 10, 100], [1, 10, 100]);
  const concurrencies = args.numbers('concurrency', [1, 64], [1, 64]);
  const largeFioBs = args.numbers('large-fio-bs', [65536, 1048576], [65536, 1048576]);
  const fioVersion = await findFio();
  if (!fioVersion) process.stdout.write(`${FIO_MISSING} — the fio columns are skipped\n`);
  const pool = makeJsonPayloadPool(4096, EVENT_BYTES);
  const sqliteVersion = await withTempDir(args.baseDir, 'sqlite-version', async (d) => {
    const s = new SqliteEventStore(join(d, 'v.db'));
    const v = { version: s.sqliteVersion, journalMode: s.journalMode, synchronous: s.synchronous };
    s.close();
    return v;
  });
  process.stdout.write(
    `append: ${args.seconds} s per contender and configuration, in ${windowSeconds} s windows, after ${warmup} s warm-up; SQLite ${sqliteVersion.version} (journal_mode=${sqliteVersion.journalMode}, synchronous=${sqliteVersion.synchronous}); ${fioVersion ?? 'no fio'}; dir ${args.baseDir}\n`,
  );

  const small: SmallRow[] = [];
  for (const batch of batches) {
    for (const concurrency of concurrencies) {
      const opts = { batch, concurrency, args };
      const zosC = await zosContender({ ...opts, data: (i) => pool[i % pool.length] });
      const sqliteC = sqliteContender({ ...opts, pool, grouped: false });
      const groupedC = concurrency > 1 ? sqliteContender({ ...opts, pool, grouped: true }) : null;
      const fioC = fioVersion ? fioContender(args, EVENT_BYTES * batch) : null;
      await interleave([zosC, sqliteC, ...(groupedC ? [groupedC] : []), ...(fioC ? [fioC] : [])], args.seconds, windowSeconds, warmup);
      const zos = await zosC.finish();
      const sqlite = await sqliteC.finish();
      const sqliteGrouped = groupedC ? await groupedC.finish() : null;
      const fio = fioC ? await fioC.finish() : null;
      const fioEventsPerSec = fio ? fio.iops * batch : null;
      const best = Math.max(sqlite.unitsPerSec, sqliteGrouped?.unitsPerSec ?? 0);
      small.push({
        batch,
        concurrency,
        zos,
        sqlite,
        sqliteGrouped,
        fio,
        fioEventsPerSec,
        ratios: {
          zosVsSqlite: ratio(zos.unitsPerSec, sqlite.unitsPerSec),
          zosVsSqliteGrouped: ratio(zos.unitsPerSec, sqliteGrouped?.unitsPerSec),
          zosVsBestSqlite: ratio(zos.unitsPerSec, best),
          zosVsFio: ratio(zos.unitsPerSec, fioEventsPerSec),
        },
      });
      process.stdout.write(
        `  batch ${batch} × ${concurrency}: zos ${Math.round(zos.unitsPerSec)} ev/s, sqlite ${Math.round(sqlite.unitsPerSec)}${sqliteGrouped ? `, sqlite-grouped ${Math.round(sqliteGrouped.unitsPerSec)}` : ''}${fioEventsPerSec === null ? '' : `, fio ${Math.round(fioEventsPerSec)}`} ev/s\n`,
      );
    }
  }

  // 64 KiB incompressible events, one per append.
  const bigPool = makeBinaryPayloadPool(32, LARGE_BYTES);
  const large: LargeRow[] = [];
  for (const concurrency of concurrencies) {
    const zosC = await zosContender({ batch: 1, concurrency, args, data: (i) => bigPool[i % bigPool.length] });
    const fioCs = fioVersion ? largeFioBs.map((bs) => fioContender(args, bs)) : [];
    await interleave([zosC, ...fioCs], args.seconds, windowSeconds, warmup);
    const zos = await zosC.finish();
    const fio: FioRun[] = [];
    for (const f of fioCs) fio.push(await f.finish());
    const zosMBps = (zos.unitsPerSec * LARGE_BYTES) / MB;
    const ratios: Record<string, number | null> = {};
    for (const f of fio) ratios[`zosVsFio${f.bs}`] = ratio(zosMBps, f.bytesPerSec / MB);
    large.push({ concurrency, zos, zosMBps, fio, ratios });
    process.stdout.write(`  64 KiB × ${concurrency}: zos ${zosMBps.toFixed(1)} MB/s${fio.map((f) => `, fio bs=${f.bs} ${(f.bytesPerSec / MB).toFixed(1)} MB/s`).join('')}\n`);
  }

  report(args, { sqliteVersion, fioVersion, warmup, windowSeconds, small, large });
}

/** CPU µs (user + system) per unit measured. */
const cpuPerUnitUs = (r: LoopResult): number | null => (r.units > 0 ? ((r.cpu.userMs + r.cpu.systemMs) * 1000) / r.units : null);

const range = (w: number[]): string | null => (w.length === 0 ? null : `${fmtNum(Math.min(...w))}–${fmtNum(Math.max(...w))}`);

function report(
  args: BenchArgs,
  r: {
    sqliteVersion: { version: string; journalMode: string; synchronous: number };
    fioVersion: string | null;
    warmup: number;
    windowSeconds: number;
    small: SmallRow[];
    large: LargeRow[];
  },
): void {
  const fioNote = r.fioVersion ? '' : ` (${FIO_MISSING})`;
  printTable(
    `Append, ${EVENT_BYTES}-byte JSON-ish events, events/s (SQLite ${r.sqliteVersion.version}, WAL, synchronous=FULL; fio: bs = ${EVENT_BYTES} B × batch, one fdatasync per write)${fioNote}`,
    ['batch', 'conc', 'zos', 'sqlite', 'sqlite-grouped', 'fio ev/s', 'zos/sqlite', 'zos/sqlite-grp', 'zos/fio'],
    r.small.map((s) => [
      s.batch,
      s.concurrency,
      s.zos.unitsPerSec,
      s.sqlite.unitsPerSec,
      s.sqliteGrouped?.unitsPerSec ?? null,
      s.fioEventsPerSec,
      fmtRatio(s.ratios.zosVsSqlite),
      fmtRatio(s.ratios.zosVsSqliteGrouped),
      fmtRatio(s.ratios.zosVsFio),
    ]),
  );
  printTable(
    `Spread: events/s of the slowest and fastest ${r.windowSeconds} s window`,
    ['batch', 'conc', 'zos', 'sqlite', 'sqlite-grouped', 'fio writes/s'],
    r.small.map((s) => [s.batch, s.concurrency, range(s.zos.windows), range(s.sqlite.windows), s.sqliteGrouped ? range(s.sqliteGrouped.windows) : null, s.fio ? range(s.fio.windows) : null]),
  );
  printTable(
    'Details: latency per append call (ms), CPU µs per event (user + system, all threads), appends per commit, bytes on disk per event, fio fdatasync µs',
    ['batch', 'conc', 'zos p50', 'zos p99', 'zos µs/ev', 'zos app/commit', 'zos B/ev', 'sqlite p50', 'sqlite p99', 'sqlite µs/ev', 'grp p50', 'grp p99', 'grp µs/ev', 'grp app/txn', 'sqlite B/ev', 'fio sync µs'],
    r.small.map((s) => [
      s.batch,
      s.concurrency,
      s.zos.latencyMs.p50,
      s.zos.latencyMs.p99,
      cpuPerUnitUs(s.zos),
      s.zos.appendsPerCommit,
      s.zos.bytesPerEvent,
      s.sqlite.latencyMs.p50,
      s.sqlite.latencyMs.p99,
      cpuPerUnitUs(s.sqlite),
      s.sqliteGrouped?.latencyMs.p50 ?? null,
      s.sqliteGrouped?.latencyMs.p99 ?? null,
      s.sqliteGrouped ? cpuPerUnitUs(s.sqliteGrouped) : null,
      s.sqliteGrouped?.appendsPerCommit ?? null,
      s.sqlite.bytesPerEvent,
      s.fio?.syncMeanUs ?? null,
    ]),
  );
  const bsLabel = (bs: number): string => (bs >= 1 << 20 ? `${bs >> 20}M` : `${bs >> 10}k`);
  const fioBs = r.large[0]?.fio.map((f) => f.bs) ?? [];
  printTable(
    `Append, ${LARGE_BYTES >> 10} KiB incompressible events (one per append) vs fio sequential write + fdatasync${fioNote}`,
    ['conc', 'zos MB/s', 'zos ev/s', 'p50 ms', 'p99 ms', 'zos cores', 'µs/ev', 'app/commit', ...fioBs.map((bs) => `fio ${bsLabel(bs)} MB/s`), ...fioBs.map((bs) => `zos/fio ${bsLabel(bs)}`)],
    r.large.map((l) => [
      l.concurrency,
      l.zosMBps,
      l.zos.unitsPerSec,
      l.zos.latencyMs.p50,
      l.zos.latencyMs.p99,
      l.zos.cpu.cores,
      cpuPerUnitUs(l.zos),
      l.zos.appendsPerCommit,
      ...fioBs.map((bs) => {
        const f = l.fio.find((x) => x.bs === bs);
        return f ? f.bytesPerSec / MB : null;
      }),
      ...fioBs.map((bs) => fmtRatio(l.ratios[`zosVsFio${bs}`] ?? null)),
    ]),
  );

  // Targets from the issue.
  const vsSqlite = r.small.map((s) => s.ratios.zosVsBestSqlite ?? 0);
  const minVsSqlite = vsSqlite.length > 0 ? Math.min(...vsSqlite) : 0;
  const largeRatios = r.large.map((l) => l.ratios[`zosVsFio${LARGE_BYTES}`]).filter((x): x is number => typeof x === 'number');
  const largeVsFio = largeRatios.length > 0 ? Math.max(...largeRatios) : null;
  const targets = {
    appendVsSqlite: {
      target: ZOS_TARGET_VS_SQLITE,
      worst: minVsSqlite,
      met: minVsSqlite >= ZOS_TARGET_VS_SQLITE,
      perConfig: r.small.map((s) => ({ batch: s.batch, concurrency: s.concurrency, ratio: s.ratios.zosVsBestSqlite })),
    },
    largeVsFio: { target: ZOS_TARGET_VS_FIO_LARGE, best: largeVsFio, met: largeVsFio === null ? null : largeVsFio >= ZOS_TARGET_VS_FIO_LARGE },
  };
  process.stdout.write(
    `\ntarget: zos ≥ ${ZOS_TARGET_VS_SQLITE}× the best SQLite variant in every configuration: worst ${minVsSqlite.toFixed(2)}× → ${targets.appendVsSqlite.met ? 'MET' : 'NOT MET'}\n` +
      `target: 64 KiB entries ≥ ${ZOS_TARGET_VS_FIO_LARGE * 100}% of fio bs=64k bandwidth: ${largeVsFio === null ? `unknown (${FIO_MISSING})` : `best ${(largeVsFio * 100).toFixed(0)}% → ${targets.largeVsFio.met ? 'MET' : 'NOT MET'}`}\n`,
  );
  writeResult('append', args, {
    settings: { seconds: args.seconds, windowSeconds: r.windowSeconds, warmupSeconds: r.warmup, eventBytes: EVENT_BYTES, largeBytes: LARGE_BYTES, baseDir: args.baseDir },
    sqlite: r.sqliteVersion,
    fioVersion: r.fioVersion,
    small: r.small,
    large: r.large,
    targets,
  });
}

// ------------------------------------------------------------------ fio

function fioContender(args: BenchArgs, bs: number): Contender<FioRun> {
  const runs: FioResult[] = [];
  return {
    name: `fio ${bs}`,
    async window(seconds) {
      runs.push(await runFio({ dir: args.baseDir, bs, seconds }));
    },
    async finish() {
      const f = combineFio(runs);
      if (!f) throw new Error('fio ran no window');
      return f;
    },
  };
}

// ------------------------------------------------------------------ zos

async function zosContender(o: { batch: number; concurrency: number; args: BenchArgs; data: (i: number) => unknown }): Promise<Contender<StoreRun>> {
  const dir = makeTempDir(o.args.baseDir, 'zos');
  initDataDir(dir);
  const log = await Tlog.open({ dataDir: dir });
  const meter = new Meter();
  let k = 0;
  const { op, appendsPerCommit } = zosStreamAppender(log, o.concurrency, () => {
    const events: EventInput[] = new Array(o.batch);
    for (let i = 0; i < o.batch; i++) events[i] = { type: 'BenchEvent', data: o.data(k++) };
    return events;
  });
  return {
    name: 'zos',
    async window(seconds, warmupSeconds) {
      await runConcurrent({ concurrency: o.concurrency, warmupSeconds, seconds, op }, meter);
    },
    async finish() {
      try {
        const st = await log.stats();
        if (st.events !== BigInt(meter.totalUnits)) throw new Error(`zos holds ${st.events} events, the benchmark appended ${meter.totalUnits}`);
        return { ...meter.result(), bytesPerEvent: st.bytes / Math.max(1, meter.totalUnits), appendsPerCommit: appendsPerCommit() };
      } finally {
        await log.close();
        removeTempDir(dir);
      }
    },
  };
}

// ------------------------------------------------------------------ sqlite

function sqliteContender(o: { batch: number; concurrency: number; args: BenchArgs; pool: Array<Record<string, unknown>>; grouped: boolean }): Contender<StoreRun> {
  const dir = makeTempDir(o.args.baseDir, o.grouped ? 'sqlite-grouped' : 'sqlite');
  const store = new SqliteEventStore(join(dir, 'events.db'));
  const group = o.grouped ? new GroupCommitter(store) : null;
  const meter = new Meter();
  const versions: Array<number | null> = Array.from({ length: o.concurrency }, () => null);
  let k = 0;
  let appends = 0;
  const op = async (w: number): Promise<number> => {
    const events = new Array<{ type: string; data: unknown }>(o.batch);
    for (let i = 0; i < o.batch; i++) events[i] = { type: 'BenchEvent', data: o.pool[k++ % o.pool.length] };
    const a: SqliteAppend = { stream: `bench-${w}`, expected: versions[w] ?? null, events };
    appends++;
    if (group) {
      versions[w] = await group.append(a);
    } else {
      // One transaction per append; the synchronous API serialises appenders.
      const r = store.appendTx([a])[0];
      if (typeof r !== 'number') throw r ?? new Error('no result');
      versions[w] = r;
    }
    return o.batch;
  };
  return {
    name: o.grouped ? 'sqlite-grouped' : 'sqlite',
    async window(seconds, warmupSeconds) {
      await runConcurrent({ concurrency: o.concurrency, warmupSeconds, seconds, op }, meter);
    },
    async finish() {
      try {
        const n = store.count();
        if (n !== meter.totalUnits) throw new Error(`SQLite holds ${n} events, the benchmark appended ${meter.totalUnits}`);
        const txns = group ? group.transactions : appends;
        return { ...meter.result(), bytesPerEvent: store.bytes() / Math.max(1, n), appendsPerCommit: txns > 0 ? appends / txns : null };
      } finally {
        store.close();
        removeTempDir(dir);
      }
    },
  };
}

await main();
