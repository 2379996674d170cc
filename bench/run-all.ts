/**
 * Run every benchmark, each in its own Node process, then print a summary
 * of the headline figures and targets.
 *
 *   npm run bench            # full run (a few minutes); results in bench/results/
 *   npm run bench:smoke      # tiny sizes (CI); results in bench/results/smoke/
 *   npx node bench/run-all.ts [--smoke] [--dir /path/on/the/disk] [--only append,replay,crypto,kafka-append,nbd,vdisk-rollback]
 *
 * Exits non-zero when a benchmark fails (crashes, wrong counts); missing a
 * performance target is reported, not an error.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, fmtRatio, nowMs, printTable, writeResult, type Cell } from './lib.ts';

const BENCHES = ['append', 'replay', 'crypto', 'kafka-append', 'nbd', 'vdisk-rollback'] as const;
type BenchName = (typeof BENCHES)[number];

const { values } = parseArgs({
  options: {
    smoke: { type: 'boolean' },
    dir: { type: 'string' },
    only: { type: 'string' },
    help: { type: 'boolean' },
  },
  strict: true,
});
if (values.help) {
  process.stdout.write(`usage: npx node bench/run-all.ts [--smoke] [--dir DIR] [--only ${BENCHES.join(',')}]\n`);
  process.exit(0);
}
const smoke = values.smoke === true;
const only = values.only ? values.only.split(',').map((s) => s.trim()) : [...BENCHES];
for (const o of only) {
  if (!(BENCHES as readonly string[]).includes(o)) {
    process.stderr.write(`run-all: unknown benchmark ${o} (known: ${BENCHES.join(', ')})\n`);
    process.exit(2);
  }
}
const resultsDir = join(BENCH_DIR, 'results', ...(smoke ? ['smoke'] : []));
const childArgs = [...(smoke ? ['--smoke'] : []), ...(values.dir ? ['--dir', values.dir] : [])];
const timeoutMs = smoke ? 120_000 : 30 * 60_000;

function runChild(name: BenchName): Promise<{ code: number; seconds: number }> {
  const t0 = nowMs();
  return new Promise((resolve) => {
    process.stdout.write(`\n=== ${name} ${childArgs.join(' ')}\n`);
    const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', join(BENCH_DIR, `${name}.ts`), ...childArgs], { stdio: 'inherit' });
    const timer = setTimeout(() => {
      process.stderr.write(`run-all: ${name} exceeded ${timeoutMs / 1000} s; stopping it\n`);
      child.kill('SIGTERM');
    }, timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), seconds: (nowMs() - t0) / 1000 });
    });
  });
}

function readResult(name: BenchName): Record<string, unknown> | null {
  const p = join(resultsDir, `${name}.json`);
  if (!existsSync(p)) return null;
  return JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
}

interface AppendJson {
  small: Array<{ batch: number; concurrency: number; zos: { unitsPerSec: number }; sqlite: { unitsPerSec: number }; sqliteGrouped: { unitsPerSec: number } | null; fioEventsPerSec: number | null; ratios: { zosVsBestSqlite: number | null; zosVsFio: number | null } }>;
  large: Array<{ concurrency: number; zosMBps: number; ratios: Record<string, number | null> }>;
  targets: { appendVsSqlite: { worst: number; met: boolean }; largeVsFio: { best: number | null; met: boolean | null } };
}
interface ReplayJson {
  target: number;
  rows: Array<{ batch: number; eventsPerSec: number; cpuUsPerEvent: number }>;
}
interface KafkaAppendJson {
  skipped?: string;
  zos?: Array<{ batch: number; concurrency: number; eventsPerSec: number; ratios: { vsPerfDefault: number | null; vsPerfTuned: number | null } }>;
  e2e?: Array<{ batch: number; appendsPerSec: number; deliveryMs: { p50: number; p99: number } }>;
  target?: { perfDefaultRecordsPerSec: number | null; perfTunedRecordsPerSec: number | null; met: boolean | null; metVsTuned: boolean | null };
}
interface NbdJson {
  skipped?: string;
  results?: Record<string, Record<string, { iops: number; mbPerSec: number }>>;
  ratios?: Array<{
    workload: string;
    kind: 'random' | 'seq';
    target: number;
    vdiskVsQemu?: number | null;
    memVsQemu: number | null;
    fileVsQemu: number | null;
    memVsNbdkit: number | null;
  }>;
  targets?: { rssMiB: number; rssVdiskPeakMiB?: number | null; rssFilePeakMiB: number | null; rssMemEndMiB: number | null; rssMet: boolean | null; rssFileMet?: boolean | null };
}
interface VdiskRollbackJson {
  error?: string;
  rollback?: { ms: number; blocks: number };
  rebuild?: { ms: number };
  target?: { rebuildOverRollback: number; target: number; met: boolean };
  checksumsMatch?: boolean;
}
interface CryptoJson {
  cells: Array<{ lib: string; bytes: number; sealMBps: number; openMBps: number | null }>;
}

const runs: Array<{ name: BenchName; code: number; seconds: number }> = [];
for (const name of only as BenchName[]) runs.push({ name, ...(await runChild(name)) });

const rows: Cell[][] = [];
const summary: Record<string, unknown> = { runs };
const append = only.includes('append') ? (readResult('append') as unknown as AppendJson | null) : null;
if (append) {
  for (const s of append.small) {
    const best = Math.max(s.sqlite.unitsPerSec, s.sqliteGrouped?.unitsPerSec ?? 0);
    rows.push([`append ${s.batch}×${s.concurrency} events/s`, s.zos.unitsPerSec, best, fmtRatio(s.ratios.zosVsBestSqlite), '≥ 3× best SQLite', (s.ratios.zosVsBestSqlite ?? 0) >= 3 ? 'met' : 'not met']);
  }
  for (const l of append.large) {
    const r = l.ratios['zosVsFio65536'] ?? null;
    rows.push([`append 64 KiB ×${l.concurrency} MB/s`, l.zosMBps, r === null ? null : l.zosMBps / r, fmtRatio(r), '≥ 0.50× fio 64k', r === null ? 'no fio' : r >= 0.5 ? 'met' : 'not met']);
  }
  summary.append = append.targets;
}
const replay = only.includes('replay') ? (readResult('replay') as unknown as ReplayJson | null) : null;
if (replay) {
  for (const r of replay.rows) {
    rows.push([`replay ${r.batch} ev/entry events/s`, r.eventsPerSec, replay.target, fmtRatio(r.eventsPerSec / replay.target), '≥ 300k events/s', r.eventsPerSec >= replay.target ? 'met' : 'not met']);
  }
  summary.replay = replay.rows.map((r) => ({ batch: r.batch, eventsPerSec: r.eventsPerSec, met: r.eventsPerSec >= replay.target }));
}
const crypto = only.includes('crypto') ? (readResult('crypto') as unknown as CryptoJson | null) : null;
if (crypto) {
  for (const c of crypto.cells.filter((c) => c.lib.startsWith('sodium-native XChaCha'))) {
    const w = crypto.cells.find((x) => x.bytes === c.bytes && x.lib.startsWith('libsodium-wrappers'));
    rows.push([`crypto seal ${c.bytes} B MB/s (native vs wrappers)`, c.sealMBps, w?.sealMBps ?? null, fmtRatio(w ? c.sealMBps / w.sealMBps : null), '—', '—']);
  }
}
const kafka = only.includes('kafka-append') ? (readResult('kafka-append') as unknown as KafkaAppendJson | null) : null;
if (kafka?.skipped) {
  rows.push(['kafka append', null, null, null, '—', `skipped: ${kafka.skipped}`]);
} else if (kafka) {
  const perfDefault = kafka.target?.perfDefaultRecordsPerSec ?? null;
  for (const z of kafka.zos ?? []) {
    const r = z.ratios.vsPerfDefault;
    rows.push([`kafka append ${z.batch}×${z.concurrency} events/s`, z.eventsPerSec, perfDefault, fmtRatio(r), '≥ 1× perf tool', r === null ? 'no perf run' : r >= 1 ? 'met' : 'not met']);
  }
  for (const e of kafka.e2e ?? []) {
    rows.push([`kafka e2e latency p50 ms, ${e.batch} ev × ${e.appendsPerSec} appends/s`, e.deliveryMs.p50, null, null, '—', `p99 ${e.deliveryMs.p99.toFixed(1)} ms`]);
  }
  summary.kafkaAppend = kafka.target;
}
const nbd = only.includes('nbd') ? (readResult('nbd') as unknown as NbdJson | null) : null;
if (nbd?.skipped) {
  rows.push(['nbd (fio over NBD)', null, null, null, '—', `skipped: ${nbd.skipped}`]);
} else if (nbd) {
  // The targets are for the vdisk-backed server; without it (--only) the bare server on memory stands in.
  for (const r of nbd.ratios ?? []) {
    const hasVdisk = nbd.results?.['zos-vdisk'] !== undefined;
    const ours = nbd.results?.[hasVdisk ? 'zos-vdisk' : 'zos-mem']?.[r.workload];
    const qemu = nbd.results?.['qemu-nbd']?.[r.workload];
    const rv = hasVdisk ? (r.vdiskVsQemu ?? null) : r.memVsQemu;
    const unit = r.kind === 'seq' ? 'MB/s' : 'IOPS';
    const pickV = (c: { iops: number; mbPerSec: number } | undefined): number | null => (c ? (r.kind === 'seq' ? c.mbPerSec : c.iops) : null);
    const others = [r.memVsQemu === null || !hasVdisk ? '' : `; bare server on memory ${fmtRatio(r.memVsQemu)}`, r.fileVsQemu === null ? '' : `; raw file ${fmtRatio(r.fileVsQemu)}`].join('');
    rows.push([
      `nbd ${r.workload} ${unit} (${hasVdisk ? 'zos vdisk' : 'memory device'} vs qemu-nbd)`,
      pickV(ours),
      pickV(qemu),
      fmtRatio(rv),
      `≥ ${r.target}× qemu-nbd`,
      `${rv === null ? 'no qemu-nbd' : rv >= r.target ? 'met' : 'not met'}${others}`,
    ]);
  }
  const t = nbd.targets;
  if (t && t.rssVdiskPeakMiB !== undefined && t.rssVdiskPeakMiB !== null) {
    rows.push(['nbd vdisk server peak RSS MiB', t.rssVdiskPeakMiB, t.rssMiB, null, `≤ ${t.rssMiB} MiB`, t.rssMet === null ? '—' : t.rssMet ? 'met' : 'not met']);
  }
  if (t && t.rssFilePeakMiB !== null) {
    const met = t.rssFileMet ?? (t.rssFilePeakMiB <= t.rssMiB);
    rows.push(['nbd bare server peak RSS MiB (raw-file device)', t.rssFilePeakMiB, t.rssMiB, null, `≤ ${t.rssMiB} MiB`, met ? 'met' : 'not met']);
  }
  summary.nbd = { ratios: nbd.ratios, rss: nbd.targets };
}
const vr = only.includes('vdisk-rollback') ? (readResult('vdisk-rollback') as unknown as VdiskRollbackJson | null) : null;
if (vr?.error) {
  rows.push(['vdisk rollback vs rebuild', null, null, null, '≥ 10× faster', `error: ${vr.error.split('\n')[0]}`]);
} else if (vr?.rollback && vr.rebuild && vr.target) {
  rows.push([
    'vdisk rollback to mid ms (vs full rebuild ms)',
    vr.rollback.ms,
    vr.rebuild.ms,
    fmtRatio(vr.target.rebuildOverRollback),
    `≥ ${vr.target.target}× faster`,
    `${vr.target.met ? 'met' : 'not met'}; checksums ${vr.checksumsMatch ? 'match' : 'MISMATCH'}`,
  ]);
  summary.vdiskRollback = { ...vr.target, checksumsMatch: vr.checksumsMatch };
}
printTable(`Summary${smoke ? ' (SMOKE: tiny runs, figures meaningless)' : ''}`, ['figure', 'measured', 'peer / target', 'ratio', 'target', 'status'], rows);
printTable('Runs', ['benchmark', 'exit', 'seconds'], runs.map((r) => [r.name, r.code, r.seconds]));

writeResult('summary', { smoke, resultsDir, baseDir: values.dir ?? BENCH_DIR }, summary);
const failed = runs.filter((r) => r.code !== 0);
if (failed.length > 0) {
  process.stderr.write(`run-all: failed: ${failed.map((f) => `${f.name} (exit ${f.code})`).join(', ')}\n`);
  process.exit(1);
}
