/**
 * fio over NBD: our server next to qemu-nbd and nbdkit, in one run.
 *
 *   npx node bench/nbd.ts [--seconds 10] [--rounds 2] [--size 1073741824] [--smoke]
 *                         [--only zos-vdisk,zos-mem,zos-file,qemu-nbd,nbdkit] [--workloads randwrite-4k-qd1,...]
 *
 * Contenders, each serving one export of --size bytes (1 GiB) on 127.0.0.1:
 *  - zos-vdisk: a zos vdisk (vdisk/: every write becomes a VdiskBlocksWritten
 *              event in the tlog, file backend, fdatasync before FLUSH/FUA
 *              replies; blocks kept in the vdisk's block store view) served
 *              by our NbdServer with the VdiskManager as export provider, in
 *              a Node process of its own (bench/nbd-serve.ts --vdisk) on a
 *              fresh data directory under the temp dir;
 *  - zos-mem:  our NbdServer on a MemoryBlockDevice, in a Node process of its
 *              own (bench/nbd-serve.ts), so fio's load does not share the
 *              driver's event loop;
 *  - zos-file: the same on a raw file (bench/file-block-device.ts:
 *              FileHandle pread/pwrite, flush = fdatasync), comparable with
 *  - qemu-nbd: `qemu-nbd -f raw --cache=writeback --aio=threads --persistent`
 *              on a raw file of the same size in the same directory;
 *  - nbdkit:   `nbdkit -f memory SIZE` (its sparse RAM allocator).
 *
 * Every server's RSS (/proc/PID/status VmRSS) is sampled every 200 ms while
 * it serves; VmHWM (peak) is read after the fill and after each workload.
 * After every fio run on the vdisk the driver waits until its acknowledged
 * writes are in the log (not measured; the wait is reported), so its backlog
 * does not run in the next contender's window. --profile-dir DIR writes a
 * CPU profile of our servers per fio run (bench/profile-summary.ts reads it).
 *
 * Every device is first filled by fio (1 MiB sequential writes, QD8) so that
 * reads hit data. Then each workload runs with `fio --ioengine=nbd` for
 * --seconds per contender, split into --rounds windows in which the
 * contenders take turns (rotating who goes first; this machine drifts), each
 * window after a short fio ramp. Workloads: 4k random write QD1 / QD32, 4k
 * random read QD1 / QD32, 1M sequential read / write QD8. fio's JSON gives
 * IOPS, bandwidth and total latency p50/p99 (submission to completion); /proc gives each server's
 * CPU over the windows and our processes' RSS after the fill and at the end.
 *
 * Results: tables on stdout and bench/results/nbd.json (smoke runs:
 * bench/results/smoke/). A missing qemu-nbd or nbdkit skips that contender
 * (in CI too: the ratios are then absent); without fio the benchmark is skipped
 * (an error under CI).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, ftruncateSync, readdirSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs, promisify } from 'node:util';
import {
  BENCH_DIR,
  FIO_MISSING,
  MB,
  findFio,
  fmtNum,
  fmtRatio,
  makeTempDir,
  nowMs,
  parseBenchArgs,
  printTable,
  ratio,
  removeTempDir,
  writeResult,
  type Cell,
} from './lib.ts';
import { SERVE_ENV, SERVE_NODE_FLAGS } from '../cli/serve-process.ts';

const execFileP = promisify(execFile);
const CLK_TCK = 100;
const MiB = 1024 * 1024;
const EXPORT = 'bench';
/** The issue's targets for the vdisk-backed server, against qemu-nbd. */
const TARGET_RANDOM = 1.0;
const TARGET_SEQ = 0.8;
const TARGET_RSS_MIB = 300;

// ------------------------------------------------------------------ what runs

const CONTENDERS = ['zos-vdisk', 'zos-mem', 'zos-file', 'qemu-nbd', 'nbdkit'] as const;
type ContenderId = (typeof CONTENDERS)[number];
const CONTENDER_LABEL: Record<ContenderId, string> = {
  'zos-vdisk': 'zos vdisk (tlog, file backend)',
  'zos-mem': 'zos (memory)',
  'zos-file': 'zos (raw file)',
  'qemu-nbd': 'qemu-nbd (raw file, writeback)',
  nbdkit: 'nbdkit memory',
};

interface Workload {
  id: string;
  label: string;
  rw: 'randwrite' | 'randread' | 'read' | 'write';
  bs: number;
  qd: number;
  kind: 'random' | 'seq';
}
const WORKLOADS: Workload[] = [
  { id: 'randwrite-4k-qd1', label: '4k randwrite QD1', rw: 'randwrite', bs: 4096, qd: 1, kind: 'random' },
  { id: 'randwrite-4k-qd32', label: '4k randwrite QD32', rw: 'randwrite', bs: 4096, qd: 32, kind: 'random' },
  { id: 'randread-4k-qd1', label: '4k randread QD1', rw: 'randread', bs: 4096, qd: 1, kind: 'random' },
  { id: 'randread-4k-qd32', label: '4k randread QD32', rw: 'randread', bs: 4096, qd: 32, kind: 'random' },
  { id: 'read-1m-qd8', label: '1M seq read QD8', rw: 'read', bs: MiB, qd: 8, kind: 'seq' },
  { id: 'write-1m-qd8', label: '1M seq write QD8', rw: 'write', bs: MiB, qd: 8, kind: 'seq' },
];

const args = parseBenchArgs({
  name: 'nbd',
  description: 'fio over NBD: our server (zos vdisk on the tlog, memory and raw-file devices; own process) vs qemu-nbd (raw file, writeback) and nbdkit memory.',
  options: {
    rounds: { type: 'string', help: 'windows per contender and workload, --seconds split among them (default 2; smoke 1)' },
    ramp: { type: 'string', help: 'fio ramp seconds before each window, not measured (default 0.5; smoke none)' },
    size: { type: 'string', help: 'device bytes (default 1073741824 = 1 GiB; smoke 256 MiB)' },
    only: { type: 'string', help: `contenders (default all: ${CONTENDERS.join(',')})` },
    workloads: { type: 'string', help: `workloads (default all: ${WORKLOADS.map((w) => w.id).join(',')})` },
    'profile-dir': { type: 'string', help: 'CPU-profile our servers during every fio run (fill, each window) into DIR/<server>-<phase>.cpuprofile; slows them' },
  },
  seconds: { full: 10, smoke: 1 },
});
const rounds = Math.max(1, Math.round(args.number('rounds', 2, 1)));
const rampRaw = args.number('ramp', 0.5, 0);
const deviceBytes = args.number('size', 1024 * MiB, 256 * MiB);
if (!Number.isSafeInteger(deviceBytes) || deviceBytes % MiB !== 0) {
  process.stderr.write('nbd: --size must be a whole number of MiB\n');
  process.exit(2);
}
const pick = <T extends string>(raw: string | undefined, known: readonly T[], what: string): T[] => {
  if (raw === undefined) return [...known];
  const list = raw.split(',').map((s) => s.trim());
  for (const x of list) {
    if (!(known as readonly string[]).includes(x)) {
      process.stderr.write(`nbd: unknown ${what} ${x} (known: ${known.join(', ')})\n`);
      process.exit(2);
    }
  }
  return list as T[];
};
/** A string option's raw value (parseBenchArgs has already validated argv). */
const argValue = (name: string): string | undefined => {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { [name]: { type: 'string' } }, strict: false, allowPositionals: true });
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
};
const wanted = pick<ContenderId>(argValue('only'), CONTENDERS, 'contender');
const workloads = pick(
  argValue('workloads'),
  WORKLOADS.map((w) => w.id),
  'workload',
).map((id) => WORKLOADS.find((w) => w.id === id)!);
const windowSeconds = args.seconds / rounds;
const profileDir = argValue('profile-dir') ?? null;
if (profileDir) mkdirSync(profileDir, { recursive: true });

// ------------------------------------------------------------------ processes

/** Every child we started; killed (SIGKILL) if we exit without stopping them. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

interface Server {
  id: ContenderId;
  label: string;
  pid: number;
  port: number;
  uri: string;
  command: string[];
  /** Last lines of the server's stderr (diagnostics). */
  stderr: () => string;
  /** Our servers only: process.memoryUsage() and counters. */
  stats?: () => Promise<ZosStats>;
  /** zos-vdisk: its data directory (log + views). */
  dataDir?: string;
  /** zos-vdisk: wait until the writes acknowledged so far are in the log and the view; ms waited. */
  drain?: () => Promise<number>;
  /** Our servers: start V8's CPU profiler / stop it and write the profile to a file. */
  profile?: (file: string | null) => Promise<void>;
  stop: () => Promise<void>;
}

interface ZosStats {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  connections: number;
  opened: number;
  errors: number;
  /** Vdisk warnings (e.g. a view rebuilt); vdisk servers only. */
  warnings?: number;
  vdisk?: { slots: number; records: number; version: string; position: string; log: { entries: number; events: string; bytes: number; segments: number } };
  vdiskError?: string;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ port, host: '127.0.0.1' });
    const done = (ok: boolean): void => {
      c.destroy();
      resolve(ok);
    };
    c.once('connect', () => done(true));
    c.once('error', () => done(false));
    c.setTimeout(1000, () => done(false));
  });
}

function keepTail(child: ChildProcess): () => string {
  let tail = '';
  child.stderr?.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4000);
  });
  return () => tail;
}

/** Stop a child: SIGTERM (or close its stdin), then SIGKILL after `graceMs`. */
function stopChild(child: ChildProcess, gentle: () => void = () => child.kill('SIGTERM'), graceMs = 3000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      children.delete(child);
      resolve();
      return;
    }
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      children.delete(child);
      resolve();
    });
    gentle();
  });
}

/** Start an external server and wait (≤ 10 s) until its port accepts connections. */
async function startExternal(id: ContenderId, cmd: string, argv: (port: number) => string[]): Promise<Server> {
  const port = await freePort();
  const a = argv(port);
  const child = spawn(cmd, a, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  const stderr = keepTail(child);
  let exited: string | null = null;
  child.once('exit', (code, sig) => (exited = `exited with ${code ?? sig}`));
  child.once('error', (e) => (exited = e.message));
  const until = nowMs() + 10_000;
  for (;;) {
    if (exited !== null) throw new Error(`${cmd} ${exited}: ${stderr()}`);
    if (await tcpOpen(port)) break;
    if (nowMs() > until) {
      await stopChild(child);
      throw new Error(`${cmd} did not listen on port ${port} within 10 s: ${stderr()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    id,
    label: CONTENDER_LABEL[id],
    pid: child.pid!,
    port,
    uri: `nbd://127.0.0.1:${port}/${EXPORT}`,
    command: [cmd, ...a],
    stderr,
    stop: () => stopChild(child),
  };
}

/** bench/nbd-serve.ts in its own Node process; resolves once it printed its port. */
async function startZos(id: ContenderId, backing: { file: string } | { vdisk: string } | null): Promise<Server> {
  const a = [
    '--disable-warning=ExperimentalWarning',
    // Started like zos vdisk serve (cli/serve-process.ts): its V8 flags and malloc settings.
    ...SERVE_NODE_FLAGS,
    join(BENCH_DIR, 'nbd-serve.ts'),
    '--size',
    String(deviceBytes),
    '--name',
    EXPORT,
    ...(backing && 'file' in backing ? ['--file', backing.file] : []),
    ...(backing && 'vdisk' in backing ? ['--vdisk', backing.vdisk] : []),
  ];
  const child = spawn(process.execPath, a, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...SERVE_ENV, ...process.env } });
  children.add(child);
  const stderr = keepTail(child);
  const lines = createInterface({ input: child.stdout! });
  const waiting: Array<(line: string) => void> = [];
  const queued: string[] = [];
  lines.on('line', (l) => {
    const w = waiting.shift();
    if (w) w(l);
    else queued.push(l);
  });
  const nextLine = (timeoutMs: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const q = queued.shift();
      if (q !== undefined) {
        resolve(q);
        return;
      }
      const t = setTimeout(() => reject(new Error(`nbd-serve did not answer within ${timeoutMs} ms: ${stderr()}`)), timeoutMs);
      const onExit = (): void => reject(new Error(`nbd-serve exited: ${stderr()}`));
      child.once('exit', onExit);
      waiting.push((l) => {
        clearTimeout(t);
        child.off('exit', onExit);
        resolve(l);
      });
    });
  let hello: { port: number; pid: number };
  try {
    hello = JSON.parse(await nextLine(15_000)) as { port: number; pid: number };
  } catch (err) {
    await stopChild(child);
    throw err;
  }
  return {
    id,
    label: CONTENDER_LABEL[id],
    pid: child.pid!,
    port: hello.port,
    uri: `nbd://127.0.0.1:${hello.port}/${EXPORT}`,
    command: [process.execPath, ...a],
    stderr,
    stats: async () => {
      child.stdin!.write('stats\n');
      return JSON.parse(await nextLine(5000)) as ZosStats;
    },
    profile: async (file) => {
      child.stdin!.write(file === null ? 'profile-start\n' : `profile-stop ${file}\n`);
      const r = JSON.parse(await nextLine(60_000)) as { ok?: boolean; error?: string };
      if (r.error) throw new Error(`nbd-serve profile: ${r.error}`);
    },
    ...(backing && 'vdisk' in backing
      ? {
          dataDir: backing.vdisk,
          drain: async () => {
            child.stdin!.write('drain\n');
            const r = JSON.parse(await nextLine(120_000)) as { drainMs: number; error?: string };
            if (r.error) throw new Error(`vdisk drain failed: ${r.error}`);
            return r.drainMs;
          },
        }
      : {}),
    // A vdisk drains its writes to the log and checkpoints its view on close.
    stop: () => stopChild(child, () => child.stdin!.end(), backing && 'vdisk' in backing ? 30_000 : 3000),
  };
}

function procCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  } catch {
    return null;
  }
}

/** VmRSS and VmHWM (peak) of a process, bytes. */
function procMem(pid: number): { rss: number; hwm: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return null;
  }
}

/**
 * Samples every server's VmRSS every 200 ms: the peak seen since the last
 * `take()`. VmHWM (the kernel's own peak) is read alongside by procMem.
 */
class RssSampler {
  readonly #peak = new Map<number, number>();
  readonly #timer: NodeJS.Timeout;
  constructor(pids: number[]) {
    const sample = (): void => {
      for (const pid of pids) {
        const m = procMem(pid);
        if (m && Number.isFinite(m.rss)) this.#peak.set(pid, Math.max(this.#peak.get(pid) ?? 0, m.rss));
      }
    };
    sample();
    this.#timer = setInterval(sample, 200);
    this.#timer.unref();
  }
  /** Peak VmRSS of `pid` since the last take (bytes), and restart. */
  take(pid: number): number | null {
    const m = procMem(pid);
    const v = Math.max(this.#peak.get(pid) ?? 0, m?.rss ?? 0);
    this.#peak.set(pid, 0);
    return v > 0 ? v : null;
  }
  stop(): void {
    clearInterval(this.#timer);
  }
}

/** Bytes of the files under `dir` (allocated size, like du), by top-level entry. */
function duBytes(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (p: string): number => {
    const st = statSync(p);
    if (!st.isDirectory()) return st.blocks * 512;
    let n = 0;
    for (const e of readdirSync(p)) n += walk(join(p, e));
    return n;
  };
  try {
    for (const e of readdirSync(dir)) out[e] = walk(join(dir, e));
  } catch {
    /* gone */
  }
  return out;
}

async function toolVersion(cmd: string, flag: string): Promise<string | null> {
  try {
    const { stdout, stderr } = await execFileP(cmd, [flag], { timeout: 10_000 });
    return (stdout || stderr).split('\n')[0]!.trim();
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ fio

interface FioWindow {
  iops: number;
  bytesPerSec: number;
  /** Total latency (submission + completion), µs. */
  latUs: { mean: number; p50: number; p99: number };
  runtimeMs: number;
  ios: number;
  /** fio's own CPU, cores (usr + sys). */
  fioCores: number;
  /** The server process's CPU over the fio run (ramp included), cores. */
  serverCores: number | null;
  /**
   * zos-vdisk: ms to drain after fio finished (writes acknowledged but not yet
   * in the log, at most the vdisk's overlay), so the backlog does not spill
   * into the next contender's window. Not counted in the window.
   */
  drainMs?: number;
  /** Wall time of the fio run (ramp included), and the server's CPU over it plus over the drain, ms. */
  wallMs: number;
  serverCpuMs: number | null;
}

interface FioJob {
  error: number;
  usr_cpu: number;
  sys_cpu: number;
  read: FioDir;
  write: FioDir;
}
interface FioDir {
  iops: number;
  bw_bytes: number;
  runtime: number;
  total_ios: number;
  lat_ns: { mean: number; percentile?: Record<string, number> };
}

/** Run fio with a hard deadline; returns its first job. */
function runFioJob(argv: string[], timeoutMs: number): Promise<FioJob> {
  return new Promise((resolve, reject) => {
    const child = spawn('fio', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const t = setTimeout(() => {
      err += `\n(killed after ${timeoutMs} ms)`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(t);
      children.delete(child);
      reject(e);
    });
    child.once('exit', (code, sig) => {
      clearTimeout(t);
      children.delete(child);
      if (code !== 0) {
        reject(new Error(`fio ${argv.join(' ')} exited with ${code ?? sig}: ${err.trim()}`));
        return;
      }
      try {
        const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] };
        const job = json.jobs[0];
        if (!job) throw new Error('fio printed no job');
        if (job.error !== 0) throw new Error(`fio job error ${job.error}: ${err.trim()}`);
        resolve(job);
      } catch (e) {
        reject(new Error(`fio output unreadable (${(e as Error).message}): ${out.slice(0, 500)} ${err}`));
      }
    });
  });
}

async function fio(server: Server, w: Pick<Workload, 'rw' | 'bs' | 'qd'>, o: { seconds: number | null; ramp: number; name: string }): Promise<FioWindow> {
  const argv = [
    `--name=${o.name}`,
    '--ioengine=nbd',
    `--uri=${server.uri}`,
    `--rw=${w.rw}`,
    `--bs=${w.bs}`,
    `--iodepth=${w.qd}`,
    `--size=${deviceBytes}`,
    '--randrepeat=0',
    '--norandommap',
    // Percentiles of the total latency: with the nbd engine a request is sent
    // while it is submitted, so completion latency alone (clat) misses part of it.
    '--lat_percentiles=1',
    '--output-format=json',
    ...(o.seconds === null ? [] : ['--time_based', `--runtime=${Math.max(1, Math.round(o.seconds * 1000))}ms`]),
    ...(o.ramp > 0 ? [`--ramp_time=${Math.round(o.ramp * 1000)}ms`] : []),
  ];
  // Time-bounded runs get their length plus a minute; the untimed fill, 10 s per GiB plus a minute.
  const timeoutMs = 60_000 + (o.seconds === null ? (deviceBytes / 2 ** 30) * 10_000 : (o.seconds + o.ramp) * 1000);
  const profiling = profileDir !== null && server.profile !== undefined;
  if (profiling) await server.profile!(null);
  const cpu0 = procCpuMs(server.pid);
  const t0 = nowMs();
  const job = await runFioJob(argv, timeoutMs);
  const wallMs = nowMs() - t0;
  const cpu1 = procCpuMs(server.pid);
  const drainMs = server.drain ? await server.drain() : undefined;
  const cpu2 = drainMs === undefined ? cpu1 : procCpuMs(server.pid);
  if (profiling) {
    let file = join(profileDir, `${server.id}-${o.name}.cpuprofile`);
    for (let k = 2; existsSync(file); k++) file = join(profileDir, `${server.id}-${o.name}-${k}.cpuprofile`);
    await server.profile!(file);
  }
  const d = w.rw === 'read' || w.rw === 'randread' ? job.read : job.write;
  const pct = d.lat_ns.percentile ?? {};
  const runtimeMs = d.runtime;
  return {
    iops: d.iops,
    bytesPerSec: d.bw_bytes,
    latUs: { mean: d.lat_ns.mean / 1000, p50: (pct['50.000000'] ?? NaN) / 1000, p99: (pct['99.000000'] ?? NaN) / 1000 },
    runtimeMs,
    ios: d.total_ios,
    fioCores: (job.usr_cpu + job.sys_cpu) / 100,
    serverCores: cpu0 === null || cpu1 === null ? null : (cpu1 - cpu0) / wallMs,
    ...(drainMs === undefined ? {} : { drainMs }),
    wallMs,
    serverCpuMs: cpu0 === null || cpu2 === null ? null : cpu2 - cpu0,
  };
}

interface Cell_ {
  iops: number;
  mbPerSec: number;
  latUs: { mean: number; p50: number; p99: number };
  fioCores: number;
  serverCores: number | null;
  /** zos-vdisk: longest drain after a window, ms. */
  drainMs: number | null;
  /** Server CPU per request, µs: CPU over the fio runs (ramps included) and the drains, over IOPS × wall time. */
  serverUsPerRequest: number | null;
  windows: FioWindow[];
}

/** Windows of one contender × workload as one figure, weighted by fio's runtime. */
function combine(ws: FioWindow[]): Cell_ {
  const ms = ws.reduce((a, w) => a + w.runtimeMs, 0);
  const avg = (f: (w: FioWindow) => number): number => (ms > 0 ? ws.reduce((a, w) => a + f(w) * w.runtimeMs, 0) / ms : 0);
  const cores = ws.every((w) => w.serverCores !== null) ? avg((w) => w.serverCores!) : null;
  return {
    iops: avg((w) => w.iops),
    mbPerSec: avg((w) => w.bytesPerSec) / MB,
    latUs: { mean: avg((w) => w.latUs.mean), p50: avg((w) => w.latUs.p50), p99: avg((w) => w.latUs.p99) },
    fioCores: avg((w) => w.fioCores),
    serverCores: cores,
    drainMs: ws.some((w) => w.drainMs !== undefined) ? Math.max(...ws.map((w) => w.drainMs ?? 0)) : null,
    serverUsPerRequest: ws.every((w) => w.serverCpuMs !== null)
      ? (ws.reduce((a, w) => a + w.serverCpuMs!, 0) * 1000) / Math.max(1e-9, ws.reduce((a, w) => a + (w.iops * w.wallMs) / 1000, 0))
      : null,
    windows: ws,
  };
}

// ------------------------------------------------------------------ main

const fioVersion = await findFio();
if (fioVersion === null) {
  if (process.env.CI) {
    process.stderr.write(`nbd: ${FIO_MISSING}\n`);
    process.exit(1);
  }
  process.stdout.write(`nbd: skipped: ${FIO_MISSING}\n`);
  writeResult('nbd', args, { skipped: FIO_MISSING });
  process.exit(0);
}
const versions = {
  fio: fioVersion,
  qemuNbd: await toolVersion('qemu-nbd', '--version'),
  nbdkit: await toolVersion('nbdkit', '--version'),
  node: process.version,
};

const tmp = makeTempDir(args.baseDir, 'nbd');
const skippedContenders: Record<string, string> = {};
const servers: Server[] = [];
const rawFile = (name: string): string => {
  const p = join(tmp, name);
  const fd = openSync(p, 'w');
  ftruncateSync(fd, deviceBytes);
  closeSync(fd);
  return p;
};

const results: Partial<Record<ContenderId, Record<string, Cell_>>> = {};
const fill: Partial<Record<ContenderId, { mbPerSec: number; seconds: number; drainMs?: number }>> = {};
interface MemoryFigures {
  afterFill: { rss: number; hwm: number } | null;
  end: { rss: number; hwm: number } | null;
  /** Peak VmRSS sampled every 200 ms, per phase ('fill', then each workload id), and VmHWM after it; bytes. */
  phases: Record<string, { peakRss: number | null; hwm: number | null }>;
  zos?: ZosStats;
}
const memory: Partial<Record<ContenderId, MemoryFigures>> = {};
/** zos-vdisk: bytes on disk (log, views) after the fill and at the end. */
const vdiskDisk: { afterFill?: Record<string, number>; end?: Record<string, number> } = {};
let sampler: RssSampler | null = null;
const t0 = nowMs();
try {
  for (const id of wanted) {
    try {
      if (id === 'zos-vdisk') servers.push(await startZos(id, { vdisk: join(tmp, 'vdisk-data') }));
      else if (id === 'zos-mem') servers.push(await startZos(id, null));
      else if (id === 'zos-file') servers.push(await startZos(id, { file: rawFile('zos.raw') }));
      else if (id === 'qemu-nbd') {
        if (versions.qemuNbd === null) throw new Error('qemu-nbd not found: apt-get install qemu-utils');
        const file = rawFile('qemu.raw');
        servers.push(
          await startExternal(id, 'qemu-nbd', (port) => ['-f', 'raw', '--cache=writeback', '--aio=threads', '-b', '127.0.0.1', '-p', String(port), '-x', EXPORT, '-e', '8', '--persistent', file]),
        );
      } else {
        if (versions.nbdkit === null) throw new Error('nbdkit not found: apt-get install nbdkit');
        servers.push(await startExternal(id, 'nbdkit', (port) => ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), '-e', EXPORT, 'memory', String(deviceBytes)]));
      }
    } catch (err) {
      skippedContenders[id] = (err as Error).message;
      process.stdout.write(`nbd: ${id} skipped: ${(err as Error).message}\n`);
    }
  }
  if (servers.length === 0) throw new Error('no contender could be started');
  process.stdout.write(
    `nbd: ${servers.map((s) => `${s.id} pid ${s.pid} port ${s.port}`).join('; ')}\n` +
      `nbd: device ${fmtNum(deviceBytes / MiB)} MiB; ${workloads.length} workloads × ${servers.length} contenders × ${rounds} window(s) of ${windowSeconds} s${rampRaw > 0 ? ` (+${rampRaw} s ramp)` : ''}\n`,
  );

  sampler = new RssSampler(servers.map((s) => s.pid));
  const phaseDone = (s: Server, phase: string): void => {
    const m = (memory[s.id] ??= { afterFill: null, end: null, phases: {} });
    m.phases[phase] = { peakRss: sampler!.take(s.pid), hwm: procMem(s.pid)?.hwm ?? null };
  };

  // Fill every device so reads hit data (and the files are allocated; every vdisk block is in its log and view).
  for (const s of servers) {
    const w = await fio(s, { rw: 'write', bs: MiB, qd: 8 }, { seconds: null, ramp: 0, name: 'fill' });
    fill[s.id] = { mbPerSec: w.bytesPerSec / MB, seconds: w.runtimeMs / 1000, ...(w.drainMs === undefined ? {} : { drainMs: w.drainMs }) };
    memory[s.id] = { afterFill: procMem(s.pid), end: null, phases: {} };
    phaseDone(s, 'fill');
    if (s.dataDir) vdiskDisk.afterFill = duBytes(s.dataDir);
    process.stdout.write(`  fill ${s.id}: ${fmtNum(w.bytesPerSec / MB)} MB/s in ${(w.runtimeMs / 1000).toFixed(1)} s${w.drainMs === undefined ? '' : ` (+${fmtNum(w.drainMs)} ms to drain into the log)`}\n`);
  }

  for (const wl of workloads) {
    const windows = new Map<ContenderId, FioWindow[]>(servers.map((s) => [s.id, []]));
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < servers.length; k++) {
        const s = servers[(k + r) % servers.length]!;
        const w = await fio(s, wl, { seconds: windowSeconds, ramp: rampRaw, name: wl.id });
        windows.get(s.id)!.push(w);
      }
    }
    const line: string[] = [];
    for (const s of servers) {
      phaseDone(s, wl.id);
      const c = combine(windows.get(s.id)!);
      (results[s.id] ??= {})[wl.id] = c;
      line.push(`${s.id} ${fmtNum(c.iops)} IOPS ${fmtNum(c.mbPerSec)} MB/s`);
    }
    process.stdout.write(`  ${wl.label}: ${line.join(' · ')}\n`);
  }

  for (const s of servers) {
    const m = (memory[s.id] ??= { afterFill: null, end: null, phases: {} });
    m.end = procMem(s.pid);
    if (s.stats) m.zos = await s.stats();
    if (s.dataDir) vdiskDisk.end = duBytes(s.dataDir);
  }
} finally {
  sampler?.stop();
  await Promise.all(servers.map((s) => s.stop()));
  removeTempDir(tmp);
}
const totalSeconds = (nowMs() - t0) / 1000;

// ------------------------------------------------------------------ report

const get = (id: ContenderId, wl: string): Cell_ | null => results[id]?.[wl] ?? null;
const present = servers.map((s) => s.id);
const rows: Cell[][] = [];
for (const wl of workloads) {
  for (const id of present) {
    const c = get(id, wl.id);
    if (!c) continue;
    const ws = c.windows.map((w) => w.iops);
    const spread = ws.length > 1 ? `${fmtNum(Math.min(...ws))}–${fmtNum(Math.max(...ws))}` : null;
    rows.push([wl.label, CONTENDER_LABEL[id], c.iops, spread, c.mbPerSec, c.latUs.p50, c.latUs.p99, c.serverCores, c.serverUsPerRequest, c.fioCores, c.drainMs]);
  }
}
printTable(
  `fio over NBD, ${fmtNum(deviceBytes / MiB)} MiB device, ${args.seconds} s per cell (${rounds} × ${windowSeconds} s windows)${args.smoke ? ' — SMOKE: figures meaningless' : ''}`,
  ['workload', 'server', 'IOPS', 'IOPS per window', 'MB/s', 'lat p50 µs', 'lat p99 µs', 'server cores', 'server µs CPU/req', 'fio cores', 'drain ms'],
  rows,
);

interface RatioRow {
  workload: string;
  kind: Workload['kind'];
  target: number;
  vdiskVsQemu: number | null;
  vdiskVsNbdkit: number | null;
  memVsQemu: number | null;
  memVsNbdkit: number | null;
  fileVsQemu: number | null;
  fileVsNbdkit: number | null;
}
const ratioRows: RatioRow[] = workloads.map((wl) => {
  const r = (a: ContenderId, b: ContenderId): number | null => ratio(get(a, wl.id)?.iops, get(b, wl.id)?.iops);
  return {
    workload: wl.id,
    kind: wl.kind,
    target: wl.kind === 'random' ? TARGET_RANDOM : TARGET_SEQ,
    vdiskVsQemu: r('zos-vdisk', 'qemu-nbd'),
    vdiskVsNbdkit: r('zos-vdisk', 'nbdkit'),
    memVsQemu: r('zos-mem', 'qemu-nbd'),
    memVsNbdkit: r('zos-mem', 'nbdkit'),
    fileVsQemu: r('zos-file', 'qemu-nbd'),
    fileVsNbdkit: r('zos-file', 'nbdkit'),
  };
});
const status = (x: number | null, target: number): string => (x === null ? '—' : x >= target ? 'met' : 'not met');
printTable(
  'Ratios of IOPS (= ratios of MB/s); the targets are for the vdisk, vs qemu-nbd (the bare server on memory / a raw file for comparison)',
  ['workload', 'vdisk / qemu-nbd', 'vdisk / nbdkit', 'zos mem / qemu-nbd', 'zos file / qemu-nbd', 'zos mem / nbdkit', 'zos file / nbdkit', 'target', 'vdisk'],
  ratioRows.map((r, i) => [
    workloads[i]!.label,
    fmtRatio(r.vdiskVsQemu),
    fmtRatio(r.vdiskVsNbdkit),
    fmtRatio(r.memVsQemu),
    fmtRatio(r.fileVsQemu),
    fmtRatio(r.memVsNbdkit),
    fmtRatio(r.fileVsNbdkit),
    `≥ ${r.target.toFixed(1)}×`,
    status(r.vdiskVsQemu, r.target),
  ]),
);

const mib = (b: number | null | undefined): number | null => (b === null || b === undefined || !Number.isFinite(b) ? null : b / MiB);
const sampledPeak = (id: ContenderId): number | null => {
  const ps = Object.values(memory[id]?.phases ?? {})
    .map((p) => p.peakRss)
    .filter((x): x is number => x !== null);
  return ps.length ? Math.max(...ps) : null;
};
printTable(
  `Server memory (MiB): after the fill and at the end; target for the vdisk server ≤ ${TARGET_RSS_MIB} MiB serving a ${fmtNum(deviceBytes / MiB)} MiB vdisk (the issue: 1 GiB)`,
  ['server', 'RSS after fill', 'RSS at end', 'peak RSS (VmHWM)', 'peak RSS sampled', 'JS heap used', 'Buffers (arrayBuffers)', 'server errors'],
  present.map((id) => {
    const m = memory[id];
    return [CONTENDER_LABEL[id], mib(m?.afterFill?.rss), mib(m?.end?.rss), mib(m?.end?.hwm), mib(sampledPeak(id)), mib(m?.zos?.heapUsed), mib(m?.zos?.arrayBuffers), m?.zos?.errors ?? null];
  }),
);
const phases = ['fill', ...workloads.map((w) => w.id)];
printTable(
  'Peak RSS per phase (MiB; VmRSS sampled every 200 ms during the fill and during each workload\'s windows)',
  ['phase', ...present],
  phases.map((ph) => [ph, ...present.map((id) => mib(memory[id]?.phases[ph]?.peakRss))]),
);
const vdiskRss = mib(memory['zos-vdisk']?.end?.hwm);
const fileRss = mib(memory['zos-file']?.end?.hwm);
const memRss = mib(memory['zos-mem']?.end?.rss);
const memData = mib(memory['zos-mem']?.zos?.arrayBuffers);
const within = (x: number | null): string => (x === null ? '—' : x <= TARGET_RSS_MIB ? 'within' : 'OVER');
process.stdout.write(
  `\nRSS: zos vdisk peak ${vdiskRss === null ? '—' : fmtNum(vdiskRss)} MiB → ${within(vdiskRss)} ${TARGET_RSS_MIB} MiB; ` +
    `zos (raw file) peak ${fileRss === null ? '—' : fmtNum(fileRss)} MiB; ` +
    `zos (memory) ${memRss === null ? '—' : fmtNum(memRss)} MiB, of which ${memData === null ? '—' : fmtNum(memData)} MiB are the device's own Buffers\n`,
);
const vz = memory['zos-vdisk']?.zos?.vdisk;
if (vz || vdiskDisk.end) {
  const gib = (b: number | undefined): string => (b === undefined ? '—' : `${(b / 2 ** 30).toFixed(2)} GiB`);
  process.stdout.write(
    `vdisk at the end: ${vz ? `${fmtNum(vz.log.entries)} log entries, ${fmtNum(Number(vz.log.events))} events, ${fmtNum(vz.slots)} block versions in the view, ${fmtNum(vz.records)} history records; ` : ''}` +
      `on disk after the fill: log ${gib(vdiskDisk.afterFill?.log)}, views ${gib(vdiskDisk.afterFill?.views)}; at the end: log ${gib(vdiskDisk.end?.log)}, views ${gib(vdiskDisk.end?.views)}\n`,
  );
}
for (const [id, why] of Object.entries(skippedContenders)) process.stdout.write(`skipped ${id}: ${why}\n`);
const errors = present.map((id) => memory[id]?.zos?.errors ?? 0).reduce((a, b) => a + b, 0);
for (const s of servers) {
  // qemu-nbd logs the readiness probe (a bare TCP connect) as a failed negotiation.
  const tail = s
    .stderr()
    .split('\n')
    .filter((l) => !l.includes('Failed to read flags'))
    .join('\n')
    .trim();
  if (tail) process.stdout.write(`\n${s.id} stderr (tail):\n${tail}\n`);
}

writeResult('nbd', args, {
  versions,
  settings: {
    deviceBytes,
    seconds: args.seconds,
    rounds,
    windowSeconds,
    rampSeconds: rampRaw,
    export: EXPORT,
    workloads,
    fioOptions: '--ioengine=nbd --randrepeat=0 --norandommap --time_based; fill: --rw=write --bs=1M --iodepth=8 over the whole device',
    rssSampleMs: 200,
    profiled: profileDir !== null,
  },
  contenders: servers.map((s) => ({ id: s.id, label: s.label, command: s.command.join(' ') })),
  skippedContenders,
  fill,
  results,
  ratios: ratioRows,
  memory,
  vdiskDisk,
  targets: {
    randomVsQemu: TARGET_RANDOM,
    seqVsQemu: TARGET_SEQ,
    rssMiB: TARGET_RSS_MIB,
    rssVdiskPeakMiB: vdiskRss,
    rssVdiskSampledPeakMiB: mib(sampledPeak('zos-vdisk')),
    rssFilePeakMiB: fileRss,
    rssMemEndMiB: memRss,
    rssMet: vdiskRss === null ? null : vdiskRss <= TARGET_RSS_MIB,
    rssFileMet: fileRss === null ? null : fileRss <= TARGET_RSS_MIB,
  },
  serverErrors: errors,
  totalSeconds,
});
if (errors > 0) {
  process.stderr.write(`nbd: our server reported ${errors} error(s)\n`);
  process.exit(1);
}
