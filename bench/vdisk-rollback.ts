/**
 * Vdisk rollback vs full rebuild: how much cheaper is rolling a vdisk back
 * through its block-history index than replaying its whole stream?
 *
 *   npx node bench/vdisk-rollback.ts [--size 268435456] [--writes 500000] [--flush-every 1000]
 *                                    [--profile-dir DIR] [--smoke]
 *
 * 1. Build: a fresh data directory (file log), a vdisk of --size bytes (block
 *    size 4096), and --writes random 4 KiB writes at 4 KiB-aligned offsets
 *    through the Vdisk BlockDevice API (manager.get(name).write(offset, buf,
 *    false)), a flush() every --flush-every writes. Every block written is
 *    fresh random bytes (LZ4 cannot shrink it). The position after the
 *    middle write's flush is "mid", after the last one "end".
 * 2. Reference images: manager.export(name, file, {position: mid}) and the
 *    export of the current state; their SHA-256.
 * 3. Rollback to mid (timed): manager.rollback(name, {position: mid}); then
 *    export, and the checksum must equal the mid image's.
 * 4. Roll forward to end (timed; the rollback is an event, so it can be
 *    undone): the export must equal the end image again.
 * 5. Full rebuild (timed): manager.rebuild(name) deletes the vdisk's view and
 *    replays its stream from the start (every block re-read from the log,
 *    decrypted, decoded and sealed into a fresh block store); its export must
 *    equal the end image.
 *
 * Target (issue 4): rollback ≥ 10× faster than a full rebuild. The log is in
 * the page cache (just written), so the rebuild is CPU-bound here; on a cold
 * cache it would be slower still. With --profile-dir, each timed phase (and
 * the build) is profiled separately through node:inspector into DIR
 * (summarise with bench/profile-summary.ts).
 *
 * Results: tables on stdout and bench/results/vdisk-rollback.json (smoke:
 * bench/results/smoke/). A checksum mismatch is an error (exit 1).
 */
import { createHash, randomFillSync } from 'node:crypto';
import { createReadStream, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Tlog, initDataDir } from '../tlog/index.ts';
import { VdiskManager } from '../vdisk/index.ts';
import { cpuSince, fmtNum, fmtRatio, makeTempDir, nowMs, parseBenchArgs, printTable, removeTempDir, writeResult, type CpuTime } from './lib.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;
const NAME = 'bench';
const TARGET_RATIO = 10;

const args = parseBenchArgs({
  name: 'vdisk-rollback',
  description: 'A vdisk with many random 4 KiB writes in its history: rollback to the middle (block-history index) vs a full rebuild from the log, with checksums.',
  options: {
    size: { type: 'string', help: 'vdisk bytes (default 268435456 = 256 MiB; smoke 16 MiB)' },
    writes: { type: 'string', help: 'random 4 KiB writes in the history (default 500000; smoke 20000)' },
    'flush-every': { type: 'string', help: 'flush() after this many writes (default 1000)' },
    'profile-dir': { type: 'string', help: 'write a .cpuprofile of the build, rollback, roll-forward and rebuild phases here' },
  },
  seconds: { full: 0, smoke: 0 },
});
const size = args.number('size', 256 * MiB, 16 * MiB);
const writes = Math.floor(args.number('writes', 500_000, 20_000));
const flushEvery = Math.floor(args.number('flush-every', 1000, 1000));
if (!Number.isSafeInteger(size) || size % BLOCK !== 0) {
  process.stderr.write(`vdisk-rollback: --size must be a multiple of ${BLOCK}\n`);
  process.exit(2);
}
/** --profile-dir's value (parseBenchArgs has validated argv already). */
const profDir = ((): string | null => {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { 'profile-dir': { type: 'string' } }, strict: false, allowPositionals: true });
  const v = values['profile-dir'];
  return typeof v === 'string' ? v : null;
})();
const blocks = size / BLOCK;

// ------------------------------------------------------------------ helpers

let session: Session | null = null;
async function profiled<T>(phase: string, fn: () => Promise<T>): Promise<T> {
  if (!profDir) return fn();
  if (!session) {
    mkdirSync(profDir, { recursive: true });
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 500 });
  }
  await session.post('Profiler.start');
  try {
    return await fn();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    const file = join(profDir, `vdisk-rollback-${phase}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    process.stdout.write(`  profile: ${file}\n`);
  }
}

interface Timed<T> {
  ms: number;
  cpu: CpuTime;
  value: T;
}
async function timed<T>(phase: string, fn: () => Promise<T>): Promise<Timed<T>> {
  return profiled(phase, async () => {
    const cpu0 = process.cpuUsage();
    const t0 = nowMs();
    const value = await fn();
    const ms = nowMs() - t0;
    return { ms, cpu: cpuSince(cpu0, ms), value };
  });
}

function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/** Allocated bytes under `dir`, recursively (like du). */
function duBytes(dir: string): number {
  const st = statSync(dir);
  if (!st.isDirectory()) return st.blocks * 512;
  let n = 0;
  for (const e of readdirSync(dir)) n += duBytes(join(dir, e));
  return n;
}

// ------------------------------------------------------------------ main

const tmp = makeTempDir(args.baseDir, 'vdisk-rollback');
const dataDir = join(tmp, 'data');
let failed: string | null = null;
const out: Record<string, unknown> = {};
try {
  process.stdout.write(
    `vdisk-rollback: ${fmtNum(size / MiB)} MiB vdisk (${fmtNum(blocks)} blocks of ${BLOCK} B), ${fmtNum(writes)} random 4 KiB writes, flush every ${fmtNum(flushEvery)}; dir ${tmp}\n`,
  );
  initDataDir(dataDir);
  const log = await Tlog.open({ dataDir });
  const warnings: string[] = [];
  const manager = await VdiskManager.open(log, { onWarning: (w) => warnings.push(w) });
  await manager.create(NAME, size, BLOCK);

  // 1. Build the history.
  const midWrite = Math.floor(writes / 2 / flushEvery) * flushEvery || Math.floor(writes / 2);
  let mid = -1n;
  const build = await timed('build', async () => {
    const vd = await manager.get(NAME);
    for (let i = 1; i <= writes; i++) {
      // A fresh buffer per write, as the NBD server hands over: the vdisk may keep it until logged.
      const buf = randomFillSync(Buffer.allocUnsafeSlow(BLOCK));
      const block = Math.floor(Math.random() * blocks);
      await vd.write(block * BLOCK, buf, false);
      if (i % flushEvery === 0 || i === writes || i === midWrite) await vd.flush();
      if (i === midWrite) {
        await vd.drain();
        mid = vd.store.appliedPosition;
      }
      if (i % 50_000 === 0) process.stdout.write(`  build: ${fmtNum(i)} writes\n`);
    }
    await vd.drain();
    return { end: vd.store.appliedPosition, records: vd.store.records, slots: vd.store.slots };
  });
  const end = build.value.end;
  const logStats = await log.stats();
  const bytesAfterBuild = { log: duBytes(join(dataDir, 'log')), views: duBytes(join(dataDir, 'views')) };
  process.stdout.write(
    `  built in ${(build.ms / 1000).toFixed(1)} s (${fmtNum((writes * 1000) / build.ms)} writes/s, ${fmtNum(build.cpu.cores)} cores); ` +
      `log: ${fmtNum(logStats.entries)} entries, ${fmtNum(Number(logStats.events))} events, ${fmtNum(logStats.bytes / MiB)} MiB; ` +
      `view: ${fmtNum(build.value.slots)} block versions, ${fmtNum(build.value.records)} history records; mid = position ${mid}, end = ${end}\n`,
  );

  // 2. Reference images.
  const midImage = join(tmp, 'mid.raw');
  const endImage = join(tmp, 'end.raw');
  const exportMid = await timed('export-mid', () => manager.export(NAME, midImage, { position: mid }));
  const exportEnd = await timed('export-end', () => manager.export(NAME, endImage));
  const midSum = await sha256File(midImage);
  const endSum = await sha256File(endImage);
  if (midSum === endSum) throw new Error('the mid and end images are identical: the history is too short to tell them apart');

  const check = async (label: string, want: string): Promise<{ sha256: string; ok: boolean; exportMs: number }> => {
    const file = join(tmp, `${label}.raw`);
    const t0 = nowMs();
    await manager.export(NAME, file);
    const exportMs = nowMs() - t0;
    const sha256 = await sha256File(file);
    const ok = sha256 === want;
    if (!ok && failed === null) failed = `${label}: export checksum ${sha256.slice(0, 16)}… differs from the expected ${want.slice(0, 16)}…`;
    return { sha256, ok, exportMs };
  };

  // 3. Roll back to the middle.
  const rollback = await timed('rollback', () => manager.rollback(NAME, { position: mid }));
  const afterRollback = await check('after-rollback', midSum);
  process.stdout.write(`  rollback to ${mid}: ${fmtNum(rollback.ms)} ms, ${fmtNum(rollback.value.blocks)} blocks changed; checksum ${afterRollback.ok ? 'matches' : 'DIFFERS from'} the export at mid\n`);

  // 4. Roll forward again (undo the rollback).
  const rollForward = await timed('rollforward', () => manager.rollback(NAME, { position: end }));
  const afterRollForward = await check('after-rollforward', endSum);
  process.stdout.write(
    `  roll forward to ${end}: ${fmtNum(rollForward.ms)} ms, ${fmtNum(rollForward.value.blocks)} blocks changed; checksum ${afterRollForward.ok ? 'matches' : 'DIFFERS from'} the export at end\n`,
  );

  // 5. Full rebuild from the start of the log.
  const rebuild = await timed('rebuild', () => manager.rebuild(NAME));
  const afterRebuild = await check('after-rebuild', endSum);
  process.stdout.write(
    `  rebuild: ${fmtNum(rebuild.ms / 1000)} s (${fmtNum(rebuild.value.slots)} block versions, ${fmtNum(rebuild.value.records)} records); checksum ${afterRebuild.ok ? 'matches' : 'DIFFERS from'} the export at end\n`,
  );
  const bytesAtEnd = { log: duBytes(join(dataDir, 'log')), views: duBytes(join(dataDir, 'views')) };

  await manager.close();
  await log.close();

  const ratio = rebuild.ms / rollback.ms;
  const logMiB = logStats.bytes / MiB;
  printTable(
    `Vdisk rollback vs full rebuild: ${fmtNum(size / MiB)} MiB vdisk, ${fmtNum(writes)} random 4 KiB writes${args.smoke ? ' — SMOKE: figures meaningless' : ''}`,
    ['operation', 'ms', 'CPU cores', 'blocks changed / replayed', 'checksum'],
    [
      ['rollback to mid (position ' + mid + ')', rollback.ms, rollback.cpu.cores, rollback.value.blocks, afterRollback.ok ? 'matches export at mid' : 'MISMATCH'],
      ['roll forward to end (position ' + end + ')', rollForward.ms, rollForward.cpu.cores, rollForward.value.blocks, afterRollForward.ok ? 'matches export at end' : 'MISMATCH'],
      ['full rebuild (delete view, replay the stream)', rebuild.ms, rebuild.cpu.cores, rebuild.value.slots, afterRebuild.ok ? 'matches export at end' : 'MISMATCH'],
      ['export at mid (reference)', exportMid.ms, exportMid.cpu.cores, exportMid.value.dataBlocks, midSum.slice(0, 16)],
      ['export at end (reference)', exportEnd.ms, exportEnd.cpu.cores, exportEnd.value.dataBlocks, endSum.slice(0, 16)],
    ],
  );
  printTable(
    'Build and sizes',
    ['figure', 'value'],
    [
      ['build: writes/s through Vdisk.write (flush every ' + flushEvery + ')', (writes * 1000) / build.ms],
      ['build: seconds', build.ms / 1000],
      ['build: CPU cores', build.cpu.cores],
      ['log entries / events', `${fmtNum(logStats.entries)} / ${fmtNum(Number(logStats.events))}`],
      ['log MiB (stats) / on disk', `${fmtNum(logMiB)} / ${fmtNum(bytesAfterBuild.log / MiB)}`],
      ['views MiB on disk after build / at end', `${fmtNum(bytesAfterBuild.views / MiB)} / ${fmtNum(bytesAtEnd.views / MiB)}`],
      ['rebuild: log MB/s replayed', logStats.bytes / 1e6 / (rebuild.ms / 1000)],
      ['rebuild: block versions/s', (rebuild.value.slots * 1000) / rebuild.ms],
    ],
  );
  process.stdout.write(
    `\nrollback ${fmtNum(rollback.ms)} ms vs full rebuild ${fmtNum(rebuild.ms)} ms: ${fmtRatio(ratio)} faster → target ≥ ${TARGET_RATIO}× ${ratio >= TARGET_RATIO ? 'met' : 'NOT MET'}` +
      `; checksums ${afterRollback.ok && afterRollForward.ok && afterRebuild.ok ? 'all match' : 'MISMATCH'}\n`,
  );
  if (warnings.length) process.stdout.write(`vdisk warnings:\n  ${warnings.join('\n  ')}\n`);

  Object.assign(out, {
    settings: { size, blockSize: BLOCK, blocks, writes, flushEvery, midWrite, data: 'a fresh random 4 KiB buffer per write (randomFillSync), 4 KiB-aligned random offsets' },
    positions: { mid, end },
    build: { ms: build.ms, cpu: build.cpu, writesPerSec: (writes * 1000) / build.ms, records: build.value.records, slots: build.value.slots },
    log: { entries: logStats.entries, events: logStats.events, bytes: logStats.bytes, segments: logStats.segments },
    disk: { afterBuild: bytesAfterBuild, atEnd: bytesAtEnd },
    exports: {
      mid: { ms: exportMid.ms, dataBlocks: exportMid.value.dataBlocks, sha256: midSum },
      end: { ms: exportEnd.ms, dataBlocks: exportEnd.value.dataBlocks, sha256: endSum },
    },
    rollback: { ms: rollback.ms, cpu: rollback.cpu, position: rollback.value.position, toPosition: rollback.value.toPosition, blocks: rollback.value.blocks, check: afterRollback },
    rollForward: {
      ms: rollForward.ms,
      cpu: rollForward.cpu,
      position: rollForward.value.position,
      toPosition: rollForward.value.toPosition,
      blocks: rollForward.value.blocks,
      check: afterRollForward,
    },
    rebuild: { ms: rebuild.ms, cpu: rebuild.cpu, slots: rebuild.value.slots, records: rebuild.value.records, logMBps: logStats.bytes / 1e6 / (rebuild.ms / 1000), check: afterRebuild },
    target: { rebuildOverRollback: ratio, target: TARGET_RATIO, met: ratio >= TARGET_RATIO },
    checksumsMatch: afterRollback.ok && afterRollForward.ok && afterRebuild.ok,
    warnings,
  });
} catch (err) {
  failed ??= (err as Error).stack ?? String(err);
} finally {
  if (session) (session as Session).disconnect();
  removeTempDir(tmp);
}

writeResult('vdisk-rollback', args, { ...out, ...(failed ? { error: failed } : {}) });
if (failed) {
  process.stderr.write(`vdisk-rollback: ${failed}\n`);
  process.exit(1);
}
