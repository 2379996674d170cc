/**
 * Render the committed results (bench/results/*.json) as Markdown tables, for
 * docs/benchmarks.md and docs/decisions/crypto-library.md.
 *
 *   npx node bench/render-markdown.ts [--dir bench/results]
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, MB, fmtNum, fmtRatio, type Cell, type LoopResult, type MachineInfo } from './lib.ts';

const { values } = parseArgs({ options: { dir: { type: 'string' } } });
const dir = values.dir ?? join(BENCH_DIR, 'results');

interface Common {
  date: string;
  started?: { date: string; git: { head: string | null; tlogDirty: boolean | null }; loadavg: number[] };
  machine: MachineInfo;
}
interface Fio {
  bs: number;
  iops: number;
  bytesPerSec: number;
  syncMeanUs: number | null;
}
type Run = LoopResult & { appendsPerCommit: number | null; bytesPerEvent: number };
interface AppendJson extends Common {
  sqlite: { version: string };
  fioVersion: string | null;
  settings: { seconds: number; windowSeconds: number; warmupSeconds: number };
  small: Array<{ batch: number; concurrency: number; zos: Run; sqlite: Run; sqliteGrouped: Run | null; fio: Fio | null; fioEventsPerSec: number | null; ratios: Record<string, number | null> }>;
  large: Array<{ concurrency: number; zos: Run; zosMBps: number; fio: Fio[]; ratios: Record<string, number | null> }>;
}
interface ReplayJson extends Common {
  settings: { events: number; passes: number };
  rows: Array<{ batch: number; entries: number; logBytes: number; openMs: number; eventsPerSec: number; bestEventsPerSec: number; cpuUsPerEvent: number; framesOnly: { eventsPerSec: number }; decodeShare: number }>;
}
interface CryptoJson extends Common {
  versions: { libsodiumWrappers: string; openssl: string };
  cells: Array<{ lib: string; bytes: number; sealOpsPerSec: number; sealMBps: number; openOpsPerSec: number | null; openMBps: number | null; sealVsWrappers: number | null; openVsWrappers: number | null }>;
}

const read = <T>(name: string): T | null => {
  const p = join(dir, `${name}.json`);
  return existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as T) : null;
};

function table(columns: string[], rows: Cell[][]): string {
  const cell = (c: Cell): string => (c === null ? '—' : typeof c === 'number' ? fmtNum(c) : c);
  const align = columns.map((_, i) => (rows.every((r) => typeof r[i] === 'number' || r[i] === null || /^[\d.,×%—–-]/.test(String(r[i]))) ? '---:' : '---'));
  return [`| ${columns.join(' | ')} |`, `| ${align.join(' | ')} |`, ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`)].join('\n');
}

const cpuUs = (r: LoopResult): number | null => (r.units > 0 ? ((r.cpu.userMs + r.cpu.systemMs) * 1000) / r.units : null);
const range = (w: number[]): string | null => (w.length === 0 ? null : `${fmtNum(Math.min(...w))}–${fmtNum(Math.max(...w))}`);
const provenance = (j: Common): string =>
  `${j.date} · commit ${j.started?.git.head?.slice(0, 10) ?? '?'}${j.started?.git.tlogDirty ? ' (tlog/ had uncommitted changes)' : ''} · load average at start ${j.started?.loadavg.join(' / ') ?? '?'}, at end ${j.machine.loadavg?.join(' / ') ?? '?'}`;

const out: string[] = [];
const a = read<AppendJson>('append');
if (a) {
  out.push(`### Append (${provenance(a)})`, '');
  out.push(`Events/s; ${a.settings.seconds} s per contender in ${a.settings.windowSeconds} s alternating windows after a ${a.settings.warmupSeconds} s warm-up. SQLite ${a.sqlite.version}; ${a.fioVersion ?? 'no fio'} at bs = 256 B × batch.`, '');
  out.push(
    table(
      ['batch', 'conc', 'zos', 'sqlite', 'sqlite-grouped', 'fio ev/s', 'zos/sqlite', 'zos/sqlite-grouped', 'zos/fio'],
      a.small.map((s) => [s.batch, s.concurrency, s.zos.unitsPerSec, s.sqlite.unitsPerSec, s.sqliteGrouped?.unitsPerSec ?? null, s.fioEventsPerSec, fmtRatio(s.ratios.zosVsSqlite ?? null), fmtRatio(s.ratios.zosVsSqliteGrouped ?? null), fmtRatio(s.ratios.zosVsFio ?? null)]),
    ),
    '',
  );
  out.push('Spread (slowest–fastest window, events/s; fio in writes/s) and cost:', '');
  out.push(
    table(
      ['batch', 'conc', 'zos range', 'sqlite range', 'grouped range', 'fio range', 'zos CPU µs/ev', 'sqlite CPU µs/ev', 'grouped CPU µs/ev', 'zos p50 / p99 ms', 'sqlite p50 / p99 ms', 'zos appends/commit', 'fio fdatasync µs'],
      a.small.map((s) => [
        s.batch,
        s.concurrency,
        range(s.zos.windows),
        range(s.sqlite.windows),
        s.sqliteGrouped ? range(s.sqliteGrouped.windows) : null,
        s.fio && 'windows' in s.fio ? range((s.fio as Fio & { windows: number[] }).windows) : null,
        cpuUs(s.zos),
        cpuUs(s.sqlite),
        s.sqliteGrouped ? cpuUs(s.sqliteGrouped) : null,
        `${fmtNum(s.zos.latencyMs.p50)} / ${fmtNum(s.zos.latencyMs.p99)}`,
        `${fmtNum(s.sqlite.latencyMs.p50)} / ${fmtNum(s.sqlite.latencyMs.p99)}`,
        s.zos.appendsPerCommit,
        s.fio?.syncMeanUs ?? null,
      ]),
    ),
    '',
  );
  const bs = a.large[0]?.fio.map((f) => f.bs) ?? [];
  const label = (b: number): string => (b >= 1 << 20 ? `${b >> 20} MiB` : `${b >> 10} KiB`);
  out.push('64 KiB incompressible events, one per append:', '');
  out.push(
    table(
      ['conc', 'zos MB/s', 'zos CPU µs/ev', 'zos appends/commit', ...bs.map((b) => `fio ${label(b)} MB/s`), ...bs.map((b) => `zos/fio ${label(b)}`)],
      a.large.map((l) => [
        l.concurrency,
        l.zosMBps,
        cpuUs(l.zos),
        l.zos.appendsPerCommit,
        ...bs.map((b) => {
          const f = l.fio.find((x) => x.bs === b);
          return f ? f.bytesPerSec / MB : null;
        }),
        ...bs.map((b) => fmtRatio(l.ratios[`zosVsFio${b}`] ?? null)),
      ]),
    ),
    '',
  );
}
const r = read<ReplayJson>('replay');
if (r) {
  out.push(`### Replay (${provenance(r)})`, '');
  out.push(`\`log.readAll()\` over ${fmtNum(r.settings.events)} events of ~256 B, median of ${r.settings.passes} passes, page cache warm.`, '');
  out.push(
    table(
      ['events/entry', 'entries', 'log MB', 'open ms', 'events/s', 'best pass', 'CPU µs/event', 'frames-only events/s', 'share in decrypt+decode'],
      r.rows.map((x) => [x.batch, x.entries, x.logBytes / 1e6, x.openMs, x.eventsPerSec, x.bestEventsPerSec, x.cpuUsPerEvent, x.framesOnly.eventsPerSec, `${(x.decodeShare * 100).toFixed(0)}%`]),
    ),
    '',
  );
}
const c = read<CryptoJson>('crypto');
if (c) {
  out.push(`### AEAD (${provenance(c)})`, '');
  out.push(`libsodium ${c.versions.libsodiumWrappers} (wrappers), OpenSSL ${c.versions.openssl}; one thread.`, '');
  out.push(
    table(
      ['library / cipher', 'bytes', 'seal ops/s', 'seal MB/s', 'open ops/s', 'open MB/s', 'seal vs wrappers', 'open vs wrappers'],
      c.cells.map((x) => [x.lib, x.bytes, x.sealOpsPerSec, x.sealMBps, x.openOpsPerSec, x.openMBps, fmtRatio(x.sealVsWrappers), fmtRatio(x.openVsWrappers)]),
    ),
    '',
  );
}
const m = (a ?? r ?? c)?.machine;
if (m) {
  out.push(`Machine: ${m.cpus} × ${m.cpuModel}, ${m.memGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}; logs on ${m.disk.device} (${m.disk.fsType}, mounted at ${m.disk.mount}${m.disk.model ? `, device id ${m.disk.model}` : ''}${m.disk.rotational === null ? '' : m.disk.rotational ? ', reports rotational' : ', non-rotational'}).`);
}
process.stdout.write(out.join('\n') + '\n');
