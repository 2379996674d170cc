/**
 * Our NBD server on its own, for bench/nbd.ts: one export of a
 * MemoryBlockDevice (or, with --file, a raw file; with --vdisk, a zos vdisk
 * whose every write goes to the tlog) in a process of its own, so that the
 * benchmark driver and fio's load do not share its event loop.
 *
 *   node bench/nbd-serve.ts --size BYTES [--name NAME] [--file PATH | --vdisk DATADIR] [--port 0]
 *
 * --vdisk DATADIR: initialise a zos data directory there (file log, fresh
 * key), open a VdiskManager on it, create vdisk NAME of --size bytes (block
 * size 4096) and serve the manager as the export provider, exactly as
 * `zos vdisk serve` wires it (scratch wiring: Tlog.open → VdiskManager.open →
 * create → new NbdServer({ exports: manager })).
 *
 * Once listening it prints one JSON line, {"port":N,"pid":P}. Then, for each
 * line "stats" on stdin, it prints one JSON line of memory figures and
 * counters; for each line "drain", once the vdisk's writes so far are in the
 * log and its view, {"drainMs":T} (at once for the other devices). Lines
 * "profile-start" and "profile-stop FILE" run V8's CPU profiler (through
 * node:inspector) and write FILE.cpuprofile; each answers {"ok":true} or
 * {"error":...}. It exits when stdin closes (the parent went away) or on
 * SIGTERM / SIGINT. Server errors (onError) are counted and printed on stderr.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { getHeapSpaceStatistics } from 'node:v8';
import { MemoryBlockDevice, NbdServer, type BlockDevice, type ExportProvider } from '../nbd/index.ts';
import { Tlog, initDataDir } from '../tlog/index.ts';
import { VdiskManager } from '../vdisk/index.ts';
import { FileBlockDevice } from './file-block-device.ts';

// bench/nbd.ts starts this process with zos vdisk serve's V8 flags and malloc settings (cli/serve-process.ts).

const { values } = parseArgs({
  options: {
    size: { type: 'string' },
    name: { type: 'string', default: 'bench' },
    file: { type: 'string' },
    vdisk: { type: 'string' },
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
  },
  strict: true,
});
const size = Number(values.size);
if (!Number.isSafeInteger(size) || size <= 0) {
  process.stderr.write('nbd-serve: --size BYTES is required (a positive integer)\n');
  process.exit(2);
}
const name = values.name;
if (values.file && values.vdisk) {
  process.stderr.write('nbd-serve: --file and --vdisk exclude each other\n');
  process.exit(2);
}

let errors = 0;
let warnings = 0;
let opened = 0;
let dev: BlockDevice | null = null;
let log: Tlog | null = null;
let manager: VdiskManager | null = null;
let exportsOf: ExportProvider;
if (values.vdisk) {
  initDataDir(values.vdisk);
  log = await Tlog.open({ dataDir: values.vdisk });
  manager = await VdiskManager.open(log, {
    onWarning: (w) => {
      warnings++;
      if (warnings <= 20) process.stderr.write(`nbd-serve: vdisk warning: ${w}\n`);
    },
  });
  await manager.create(name, size);
  const m = manager;
  exportsOf = {
    list: () => m.list(),
    open: async (n) => {
      const vd = await m.open(n);
      if (vd) opened++;
      return vd;
    },
  };
} else {
  const d: BlockDevice = values.file ? await FileBlockDevice.open(values.file, { size }) : new MemoryBlockDevice(size);
  dev = d;
  exportsOf = {
    list: () => [{ name }],
    open: (n) => {
      if (n !== name) return null;
      opened++;
      return d;
    },
  };
}

const server = new NbdServer({
  exports: exportsOf,
  onError: (err) => {
    errors++;
    if (errors <= 20) process.stderr.write(`nbd-serve: server error: ${(err as Error)?.stack ?? String(err)}\n`);
  },
});
if (manager) manager.onDisconnect = (n) => server.disconnectExport(n);
const addr = await server.listen(Number(values.port), values.host);
process.stdout.write(`${JSON.stringify({ port: addr.port, pid: process.pid, backend: values.vdisk ? 'vdisk' : values.file ? 'file' : 'memory' })}\n`);

let closing = false;
const shutdown = async (code: number): Promise<void> => {
  if (closing) return;
  closing = true;
  // A vdisk makes its writes durable and checkpoints its view on close: give it longer.
  const force = setTimeout(() => process.exit(code), manager ? 30_000 : 2000);
  force.unref();
  await server.close().catch(() => {});
  if (dev instanceof FileBlockDevice) await dev.close().catch(() => {});
  if (manager) await manager.close().catch((e: unknown) => process.stderr.write(`nbd-serve: vdisk close: ${String(e)}\n`));
  if (log) await log.close().catch(() => {});
  process.exit(code);
};
process.once('SIGTERM', () => void shutdown(0));
process.once('SIGINT', () => void shutdown(0));

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = line.trim();
  if (cmd === 'profile-start' || cmd.startsWith('profile-stop ')) {
    void profile(cmd).then(
      () => process.stdout.write('{"ok":true}\n'),
      (err: unknown) => process.stdout.write(`${JSON.stringify({ error: String(err) })}\n`),
    );
    return;
  }
  if (cmd === 'drain') {
    void drain().then((r) => process.stdout.write(`${JSON.stringify(r)}\n`));
    return;
  }
  if (cmd !== 'stats') return;
  void stats().then((s) => process.stdout.write(`${JSON.stringify(s, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`));
});

let session: Session | null = null;
async function profile(cmd: string): Promise<void> {
  if (!session) {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 500 });
  }
  if (cmd === 'profile-start') {
    await session.post('Profiler.start');
    return;
  }
  const { profile: p } = await session.post('Profiler.stop');
  writeFileSync(cmd.slice('profile-stop '.length), JSON.stringify(p));
}

/** Vdisk: wait until every write so far is in the log and the view (the backlog left by a fio run); others: nothing to wait for. */
async function drain(): Promise<{ drainMs: number; error?: string }> {
  const t0 = performance.now();
  if (!manager) return { drainMs: 0 };
  try {
    await (await manager.get(name)).drain();
    return { drainMs: performance.now() - t0 };
  } catch (err) {
    return { drainMs: performance.now() - t0, error: String(err) };
  }
}

async function stats(): Promise<Record<string, unknown>> {
  const m = process.memoryUsage();
  // Committed bytes per V8 heap space (new, old, large object…): where heapTotal goes.
  const heapSpaces = Object.fromEntries(getHeapSpaceStatistics().map((x) => [x.space_name, x.physical_space_size]));
  const base = { rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, heapSpaces, connections: server.connections, opened, errors, warnings };
  if (!manager || !log) return base;
  try {
    // The view's counters as they are (no drain: that would wait for the writes in flight).
    const vd = await manager.get(name);
    const s = vd.store;
    const logStats = await log.stats();
    return { ...base, vdisk: { slots: s.slots, records: s.records, version: s.appliedVersion, position: s.appliedPosition, log: { entries: logStats.entries, events: logStats.events, bytes: logStats.bytes, segments: logStats.segments } } };
  } catch (err) {
    return { ...base, vdiskError: String(err) };
  }
}
lines.on('close', () => void shutdown(0));
