/**
 * Shared helpers of the benchmarks: argument parsing, temp directories,
 * time-bounded concurrent loops, fio, machine facts, tables and result files.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { availableParallelism, cpus, loadavg, release, totalmem, tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import type { EventInput, ExpectedVersion, Tlog } from '../tlog/index.ts';

const execFileP = promisify(execFile);

// ------------------------------------------------------------------ arguments

export interface OptionSpec {
  type: 'string' | 'boolean';
  help: string;
}

const COMMON_OPTIONS: Record<string, OptionSpec> = {
  smoke: { type: 'boolean', help: 'tiny sizes and durations (CI); results go to bench/results/smoke/' },
  seconds: { type: 'string', help: 'measured seconds per configuration' },
  dir: { type: 'string', help: `directory for temporary logs and fio files (default ${tmpdir()})` },
  out: { type: 'string', help: 'directory for the JSON result (default bench/results[/smoke])' },
  help: { type: 'boolean', help: 'show this help' },
};

export interface BenchArgs {
  smoke: boolean;
  /** Measured seconds per configuration. */
  seconds: number;
  /** Where temporary data directories live. */
  baseDir: string;
  resultsDir: string;
  /** A number option: `--name N`, else the smoke or full default. */
  number(name: string, full: number, smoke: number): number;
  /** A comma-separated list of numbers. */
  numbers(name: string, full: number[], smoke: number[]): number[];
  flag(name: string): boolean;
}

export const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url));
export const REPO_DIR = join(BENCH_DIR, '..');

/**
 * Parse argv for one benchmark. Unknown options are an error. Exits with the
 * usage on --help.
 */
export function parseBenchArgs(opts: {
  name: string;
  description: string;
  options?: Record<string, OptionSpec>;
  seconds: { full: number; smoke: number };
  argv?: string[];
}): BenchArgs {
  const all = { ...COMMON_OPTIONS, ...(opts.options ?? {}) };
  const config: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [k, v] of Object.entries(all)) config[k] = { type: v.type };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: opts.argv ?? process.argv.slice(2), options: config, strict: true, allowPositionals: false }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (err) {
    process.stderr.write(`${opts.name}: ${(err as Error).message}\n\n${usage(opts.name, opts.description, all)}`);
    process.exit(2);
  }
  if (values.help === true) {
    process.stdout.write(usage(opts.name, opts.description, all));
    process.exit(0);
  }
  const smoke = values.smoke === true;
  const load = loadavg()[0] ?? 0;
  if (!smoke && load > availableParallelism() / 2) {
    process.stderr.write(`${opts.name}: warning: load average ${load.toFixed(2)} on ${availableParallelism()} CPUs: other work is running, results will be noisy\n`);
  }
  const num = (name: string, full: number, smokeValue: number): number => {
    const raw = values[name];
    if (typeof raw !== 'string') return smoke ? smokeValue : full;
    const n = Number(raw);
    if (!Number.isFinite(n) || n <= 0) {
      process.stderr.write(`${opts.name}: --${name} must be a positive number (got ${raw})\n`);
      process.exit(2);
    }
    return n;
  };
  const baseDir = typeof values.dir === 'string' ? values.dir : tmpdir();
  mkdirSync(baseDir, { recursive: true });
  const resultsDir = typeof values.out === 'string' ? values.out : join(BENCH_DIR, 'results', ...(smoke ? ['smoke'] : []));
  return {
    smoke,
    seconds: num('seconds', opts.seconds.full, opts.seconds.smoke),
    baseDir,
    resultsDir,
    number: num,
    numbers(name, full, smokeValue) {
      const raw = values[name];
      if (typeof raw !== 'string') return smoke ? smokeValue : full;
      const list = raw.split(',').map((s) => Number(s.trim()));
      if (list.length === 0 || list.some((n) => !Number.isFinite(n) || n <= 0)) {
        process.stderr.write(`${opts.name}: --${name} must be a comma-separated list of positive numbers (got ${raw})\n`);
        process.exit(2);
      }
      return list;
    },
    flag: (name) => values[name] === true,
  };
}

function usage(name: string, description: string, options: Record<string, OptionSpec>): string {
  const lines = [`usage: npx node bench/${name}.ts [options]`, '', description, '', 'options:'];
  for (const [k, v] of Object.entries(options)) lines.push(`  --${k}${v.type === 'string' ? ' VALUE' : ''}`.padEnd(24) + v.help);
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------------ temp dirs

const liveTempDirs = new Set<string>();
let cleanupHooked = false;

function hookCleanup(): void {
  if (cleanupHooked) return;
  cleanupHooked = true;
  const cleanAll = (): void => {
    for (const d of liveTempDirs) rmSync(d, { recursive: true, force: true });
    liveTempDirs.clear();
  };
  process.on('exit', cleanAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      cleanAll();
      process.exit(130);
    });
  }
}

/** A fresh directory under `base`; removed by removeTempDir, or at exit / Ctrl-C at the latest. */
export function makeTempDir(base: string, prefix: string): string {
  hookCleanup();
  const dir = mkdtempSync(join(base, `zos-bench-${prefix}-`));
  liveTempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  liveTempDirs.delete(dir);
}

/** A fresh directory under `base`, removed when `fn` settles (and on exit / Ctrl-C). */
export async function withTempDir<T>(base: string, prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir(base, prefix);
  try {
    return await fn(dir);
  } finally {
    removeTempDir(dir);
  }
}

// ------------------------------------------------------------------ timing

export const nowMs = (): number => performance.now();

export interface CpuTime {
  userMs: number;
  systemMs: number;
  /** (user + system) / wall: 1.0 = one core busy the whole time. */
  cores: number;
}

export function cpuSince(start: NodeJS.CpuUsage, wallMs: number): CpuTime {
  const d = process.cpuUsage(start);
  const userMs = d.user / 1000;
  const systemMs = d.system / 1000;
  return { userMs, systemMs, cores: wallMs > 0 ? (userMs + systemMs) / wallMs : 0 };
}

export interface LoopResult {
  /** Units (events, bytes…) completed inside the measured windows. */
  units: number;
  /** Operations (append calls…) completed inside the measured windows. */
  ops: number;
  seconds: number;
  unitsPerSec: number;
  opsPerSec: number;
  /** units/s of each measured window, in order (the spread across time). */
  windows: number[];
  /** Latency of one operation, milliseconds. */
  latencyMs: { p50: number; p99: number; max: number };
  cpu: CpuTime;
  /** Units completed overall, warm-up and drain included (for sanity checks). */
  totalUnits: number;
}

const MAX_LATENCY_SAMPLES = 1_000_000;

/** Accumulates measured windows (units, time, CPU, latencies) of one contender. */
export class Meter {
  units = 0;
  ops = 0;
  ms = 0;
  userMs = 0;
  systemMs = 0;
  totalUnits = 0;
  readonly windows: number[] = [];
  #lat = new Float64Array(1 << 16);
  #latN = 0;

  addLatency(ms: number): void {
    if (this.#latN >= MAX_LATENCY_SAMPLES) return;
    if (this.#latN === this.#lat.length) {
      const bigger = new Float64Array(Math.min(MAX_LATENCY_SAMPLES, this.#lat.length * 2));
      bigger.set(this.#lat);
      this.#lat = bigger;
    }
    this.#lat[this.#latN++] = ms;
  }

  result(): LoopResult {
    const seconds = this.ms / 1000;
    const sorted = this.#lat.slice(0, this.#latN).sort();
    return {
      units: this.units,
      ops: this.ops,
      seconds,
      unitsPerSec: seconds > 0 ? this.units / seconds : 0,
      opsPerSec: seconds > 0 ? this.ops / seconds : 0,
      windows: [...this.windows],
      latencyMs: { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: this.#latN > 0 ? sorted[this.#latN - 1]! : 0 },
      cpu: { userMs: this.userMs, systemMs: this.systemMs, cores: this.ms > 0 ? (this.userMs + this.systemMs) / this.ms : 0 },
      totalUnits: this.totalUnits,
    };
  }
}

/**
 * Run `concurrency` workers, each keeping one `op` in flight, for a warm-up
 * then one measured window, adding it to `meter`. `op` returns the units it
 * completed. Workers stop issuing at the end of the window (or after
 * `maxOps`); in-flight operations are awaited but not counted. Call again
 * with the same meter to add more windows (e.g. interleaved with a peer's).
 */
export async function runConcurrent(
  opts: {
    concurrency: number;
    warmupSeconds: number;
    seconds: number;
    op: (worker: number) => Promise<number>;
    maxOps?: number;
  },
  meter: Meter = new Meter(),
): Promise<Meter> {
  const start = nowMs();
  const measureFrom = start + opts.warmupSeconds * 1000;
  const measureTo = measureFrom + opts.seconds * 1000;
  const maxOps = opts.maxOps ?? Number.MAX_SAFE_INTEGER;
  let issued = 0;
  let units = 0;
  let t0 = -1;
  let t1 = -1;
  let cpu0: NodeJS.CpuUsage = process.cpuUsage();
  let cpu: NodeJS.CpuUsage = { user: 0, system: 0 };
  const worker = async (w: number): Promise<void> => {
    while (t1 < 0 && issued < maxOps) {
      const before = nowMs();
      if (before >= measureTo) break;
      issued++;
      const n = await opts.op(w);
      const after = nowMs();
      meter.totalUnits += n;
      if (t0 < 0 && after >= measureFrom) {
        // The first completion past the warm-up opens the window.
        t0 = after;
        cpu0 = process.cpuUsage();
        continue;
      }
      if (t0 < 0 || t1 >= 0) continue;
      if (after >= measureTo || issued >= maxOps) {
        t1 = after;
        cpu = process.cpuUsage(cpu0);
        continue;
      }
      units += n;
      meter.ops++;
      meter.addLatency(after - before);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, (_, w) => worker(w)));
  if (t0 < 0) t0 = start;
  if (t1 < 0) {
    t1 = nowMs();
    cpu = process.cpuUsage(cpu0);
  }
  meter.units += units;
  meter.ms += t1 - t0;
  meter.userMs += cpu.user / 1000;
  meter.systemMs += cpu.system / 1000;
  meter.windows.push(t1 > t0 ? (units * 1000) / (t1 - t0) : 0);
  return meter;
}

export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

/** Run `fn` repeatedly (in chunks of `chunk` calls) for `seconds`; returns calls/s. */
export function timeSync(seconds: number, chunk: number, fn: () => void, maxCalls = Number.MAX_SAFE_INTEGER): { calls: number; seconds: number; callsPerSec: number } {
  const t0 = nowMs();
  const until = t0 + seconds * 1000;
  let calls = 0;
  let t = t0;
  while (t < until && calls < maxCalls) {
    for (let i = 0; i < chunk; i++) fn();
    calls += chunk;
    t = nowMs();
  }
  const s = (t - t0) / 1000;
  return { calls, seconds: s, callsPerSec: s > 0 ? calls / s : 0 };
}

// ------------------------------------------------------------------ payloads

/**
 * A pool of JSON-ish event payloads of about `bytes` bytes as JSON (random,
 * mostly incompressible text), reused round-robin so generating them costs
 * nothing in the measured loop.
 */
export function makeJsonPayloadPool(count: number, bytes = 256): Array<Record<string, unknown>> {
  const pool: Array<Record<string, unknown>> = [];
  for (let i = 0; i < count; i++) {
    const base = {
      seq: i,
      account: `acct-${randomBytes(6).toString('hex')}`,
      amount: Math.round(Math.random() * 1e6) / 100,
      currency: 'EUR',
      tags: ['bench', i % 2 === 0 ? 'even' : 'odd'],
      memo: '',
    };
    const fixed = JSON.stringify(base).length;
    const memoLen = Math.max(0, bytes - fixed);
    base.memo = randomBytes(memoLen).toString('base64').slice(0, memoLen);
    pool.push(base);
  }
  return pool;
}

/** Incompressible binary payloads. */
export function makeBinaryPayloadPool(count: number, bytes: number): Buffer[] {
  return Array.from({ length: count }, () => randomBytes(bytes));
}

// ------------------------------------------------------------------ fio

export interface FioResult {
  bs: number;
  iops: number;
  bytesPerSec: number;
  /** Mean fdatasync latency, microseconds (null when fio did not report it). */
  syncMeanUs: number | null;
  runtimeMs: number;
}

let fioVersion: string | null | undefined;

/** fio's version, or null when fio is not installed. */
export async function findFio(): Promise<string | null> {
  if (fioVersion !== undefined) return fioVersion;
  try {
    const { stdout } = await execFileP('fio', ['--version']);
    fioVersion = stdout.trim();
  } catch {
    fioVersion = null;
  }
  return fioVersion;
}

export const FIO_MISSING = 'fio not found: apt-get install fio';

/** Several fio windows of one block size as one result (time-weighted); `windows` holds each window's writes/s. */
export function combineFio(runs: FioResult[]): (FioResult & { windows: number[] }) | null {
  const first = runs[0];
  if (!first) return null;
  const ms = runs.reduce((a, r) => a + r.runtimeMs, 0);
  const w = (f: (r: FioResult) => number): number => (ms > 0 ? runs.reduce((a, r) => a + f(r) * r.runtimeMs, 0) / ms : 0);
  const syncs = runs.filter((r) => r.syncMeanUs !== null);
  return {
    bs: first.bs,
    iops: w((r) => r.iops),
    bytesPerSec: w((r) => r.bytesPerSec),
    syncMeanUs: syncs.length > 0 ? syncs.reduce((a, r) => a + (r.syncMeanUs ?? 0), 0) / syncs.length : null,
    runtimeMs: ms,
    windows: runs.map((r) => r.iops),
  };
}

/**
 * Sequential writes with fdatasync after every write, `bs` bytes each, in a
 * fresh file under `dir` (the same filesystem as the logs).
 */
export async function runFio(opts: { dir: string; bs: number; seconds: number; sizeBytes?: number }): Promise<FioResult> {
  return withTempDir(opts.dir, 'fio', async (d) => {
    const file = join(d, 'fio.dat');
    const size = opts.sizeBytes ?? 2 * 1024 * 1024 * 1024;
    const args = [
      '--name=zos-bench',
      `--filename=${file}`,
      '--rw=write',
      `--bs=${opts.bs}`,
      `--size=${size}`,
      '--fdatasync=1',
      `--runtime=${Math.max(1, Math.round(opts.seconds * 1000))}ms`,
      '--time_based',
      '--output-format=json',
    ];
    const { stdout } = await execFileP('fio', args, { maxBuffer: 64 * 1024 * 1024 });
    const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
      jobs: Array<{ write: { iops: number; bw_bytes: number; runtime: number }; sync?: { lat_ns?: { mean?: number } } }>;
    };
    const job = json.jobs[0];
    if (!job) throw new Error('fio printed no job');
    const mean = job.sync?.lat_ns?.mean;
    return {
      bs: opts.bs,
      iops: job.write.iops,
      bytesPerSec: job.write.bw_bytes,
      syncMeanUs: typeof mean === 'number' ? mean / 1000 : null,
      runtimeMs: job.write.runtime,
    };
  });
}

// ------------------------------------------------------------------ machine

export interface MachineInfo {
  node: string;
  kernel: string;
  cpus: number;
  cpuModel: string;
  memGiB: number;
  /** 1, 5 and 15 minute load averages when the result was written (other work on the machine skews results; see also started.loadavg). */
  loadavg: number[];
  disk: { path: string; mount: string; device: string; fsType: string; rotational: boolean | null; model: string | null };
}

export function machineInfo(dir: string): MachineInfo {
  const real = realpathSync(dir);
  let mount = '/';
  let device = 'unknown';
  let fsType = 'unknown';
  try {
    for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [dev, mnt, type] = line.split(' ');
      if (!dev || !mnt || !type) continue;
      const m = mnt.replaceAll('\\040', ' ');
      if ((real === m || real.startsWith(m.endsWith('/') ? m : `${m}/`)) && m.length >= mount.length) {
        if (m.length > mount.length || device === 'unknown' || m === mount) {
          mount = m;
          device = dev;
          fsType = type;
        }
      }
    }
  } catch {
    /* not Linux */
  }
  const sysBlock = blockDeviceSysDir(device);
  const readSys = (p: string): string | null => {
    if (!sysBlock) return null;
    try {
      return readFileSync(join(sysBlock, p), 'utf8').trim();
    } catch {
      return null;
    }
  };
  const rot = readSys('queue/rotational');
  return {
    node: process.version,
    kernel: release(),
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memGiB: Math.round(totalmem() / 2 ** 30),
    loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    disk: { path: real, mount, device, fsType, rotational: rot === null ? null : rot === '1', model: readSys('device/model') ?? readSys('device/vendor') },
  };
}

/** /sys directory of the whole disk holding `device` (a partition's parent). */
function blockDeviceSysDir(device: string): string | null {
  const name = basename(device);
  const cls = `/sys/class/block/${name}`;
  if (!existsSync(cls)) return null;
  const real = realpathSync(cls);
  return existsSync(join(real, 'partition')) ? dirname(real) : real;
}

// ------------------------------------------------------------------ output

export type Cell = string | number | null;

/** Print an aligned table: numbers right-aligned, text left-aligned, null as "—". */
export function printTable(title: string, columns: string[], rows: Cell[][]): void {
  const text = rows.map((r) => r.map((c) => (c === null ? '—' : typeof c === 'number' ? fmtNum(c) : c)));
  const widths = columns.map((c, i) => Math.max(c.length, ...text.map((r) => (r[i] ?? '').length)));
  const isNum = columns.map((_, i) => rows.every((r) => typeof r[i] === 'number' || r[i] === null || /^[\d.,×%—-]/.test(String(r[i]))));
  const line = (cells: string[]): string => cells.map((c, i) => (isNum[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  const out = [`\n${title}`, line(columns), widths.map((w) => '-'.repeat(w)).join('  '), ...text.map(line)];
  process.stdout.write(out.join('\n') + '\n');
}

export function fmtNum(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Number.isInteger(n)) return n.toLocaleString('en-US');
  const abs = Math.abs(n);
  if (abs >= 100) return Math.round(n).toLocaleString('en-US');
  if (abs >= 10) return n.toFixed(1);
  if (abs >= 1) return n.toFixed(2);
  return n.toFixed(3);
}

export function fmtRatio(x: number | null): string | null {
  return x === null || !Number.isFinite(x) ? null : `${x.toFixed(2)}×`;
}

export const MB = 1_000_000;

export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b;
}

/** The commit measured, and whether tlog/ (and vdisk/, nbd/) had uncommitted changes then. */
export function gitState(): { head: string | null; tlogDirty: boolean | null; vdiskDirty: boolean | null; nbdDirty: boolean | null } {
  const git = (...a: string[]): string | null => {
    try {
      return execFileSync('git', a, { cwd: REPO_DIR, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return null;
    }
  };
  const head = git('rev-parse', 'HEAD');
  const dirty = (dir: string): boolean | null => {
    const out = git('status', '--porcelain', '--', dir);
    return out === null ? null : out.length > 0;
  };
  return { head, tlogDirty: dirty('tlog'), vdiskDirty: dirty('vdisk'), nbdDirty: dirty('nbd') };
}

/** Captured when the benchmark process starts, i.e. when the code under test was loaded. */
const AT_START = { date: new Date().toISOString(), git: gitState(), loadavg: loadavg().map((x) => Math.round(x * 100) / 100) };

/** Write the result JSON (atomically) and print it as one line. */
export function writeResult(name: string, args: Pick<BenchArgs, 'smoke' | 'resultsDir' | 'baseDir'>, data: Record<string, unknown>): string {
  mkdirSync(args.resultsDir, { recursive: true });
  const doc = {
    bench: name,
    date: new Date().toISOString(),
    started: AT_START,
    smoke: args.smoke,
    argv: process.argv.slice(2),
    machine: machineInfo(args.baseDir),
    ...data,
  };
  const json = JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  const path = join(args.resultsDir, `${name}.json`);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(JSON.parse(json), null, 2) + '\n');
  renameSync(tmp, path);
  process.stdout.write(`\nJSON ${json}\nwrote ${path}\n`);
  return path;
}

/**
 * One appender per worker, each on its own stream `bench-W` with exact
 * expected versions (as a real writer would), counting appends and group
 * commits: every entry of one group commit shares its commit time and the
 * group's appends resolve together, so counting commit-time changes counts commits.
 */
export function zosStreamAppender(
  log: Tlog,
  concurrency: number,
  eventsFor: () => EventInput[],
): { op: (w: number) => Promise<number>; appendsPerCommit: () => number | null } {
  const versions: Array<bigint | null> = Array.from({ length: concurrency }, () => null);
  let appends = 0;
  let commits = 0;
  let lastCommit = -1n;
  const op = async (w: number): Promise<number> => {
    const events = eventsFor();
    const v = versions[w] ?? null;
    const expectedVersion: ExpectedVersion = v === null ? 'no-stream' : v;
    const r = await log.appendToStream(`bench-${w}`, events, { expectedVersion });
    versions[w] = r.nextExpectedVersion;
    appends++;
    if (r.commitTimeNs !== lastCommit) {
      commits++;
      lastCommit = r.commitTimeNs;
    }
    return events.length;
  };
  return { op, appendsPerCommit: () => (commits > 0 ? appends / commits : null) };
}

