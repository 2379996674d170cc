/**
 * zos vdisk …: virtual disks over NBD, every write in the log.
 *
 * Every command except serve runs through whichever process holds the vdisks
 * (vdisk/host.ts): the running `zos vdisk serve` if there is one, otherwise
 * this process takes the lock for the duration of the command.
 */
import { resolve } from 'node:path';
import { ZosError, isZosError, readDataDirMeta } from '../tlog/index.ts';
import { NbdServer } from '../nbd/index.ts';
import { VdiskHost, VdiskManager, callVdiskHost, dispatchVdiskOp, type HistoryEntry, type OpSink, type VdiskInfo, type VdiskOp } from '../vdisk/index.ts';
import { UsageError, openLog, parseCommand, parseCount, str, type Globals } from './args.ts';
import { humanBytes, type Out } from './output.ts';
import { formatTime, parseTime } from './time.ts';

const AT = 'TIME|@POSITION';

export const VDISK_HELP: Record<string, string> = {
  vdisk: `Usage: zos vdisk <command> [options]

Virtual disks served over NBD; every write is an event in the log.

Commands:
  create NAME --size SIZE [--block-size N]   a new, empty vdisk (SIZE: bytes or 512M, 1G, 2T)
  serve [--listen HOST:PORT]                 serve every vdisk as an NBD export named after it
  list                                       the vdisks, their sizes and snapshots
  info NAME                                  one vdisk: size, positions, snapshots, block store
  history NAME [--limit N]                   writes, flushes, snapshots, rollbacks, with times and positions
  rollback NAME --to ${AT} | --snapshot S
                                             make the vdisk what it was then (an event: it can be undone)
  clone NAME NEW [--at ${AT} | --snapshot S] a new vdisk with NAME's content at that point
  snapshot NAME --name S                     name the current point, to roll back or clone from
  export NAME FILE [--at ${AT} | --snapshot S]  write a raw image (zero blocks stay holes)
  delete NAME                                delete the vdisk (its history stays in the log)
  rebuild NAME                               drop the vdisk's block store (a cache) and replay it from the log

TIME is ISO-8601 or Unix nanoseconds; @POSITION is a log position (see history).
While zos vdisk serve runs, these commands are carried out by the server.`,
  create: `Usage: zos vdisk create NAME --size SIZE [--block-size N]

SIZE is bytes or a number with K, M, G or T (powers of 1024); it must be a
multiple of the block size (default 4096; a power of two from 512 to 65536).`,
  serve: `Usage: zos vdisk serve [--listen HOST:PORT]

Serves every vdisk as an NBD export named after it (default 127.0.0.1:10809;
port 0 picks a free one). Clients: qemu-io -f raw nbd://127.0.0.1:10809/NAME,
nbdinfo, nbdcopy, qemu-img, fio, nbdfuse, qemu. A WRITE is answered once it is
in memory and on its way to the log; FLUSH and FUA are answered only once the
log has made the writes durable. Rolling back or deleting a vdisk disconnects its
clients; reconnecting clients see the new content. Stops on SIGINT or SIGTERM
after making every write durable.`,
  list: `Usage: zos vdisk list [--json]`,
  history: `Usage: zos vdisk history NAME [--limit N] [--json]

Every event of the vdisk, oldest first (--limit N: the newest N). A write line
counts the data blocks and zeroed blocks of one batch of NBD writes; "flush"
marks a batch a FLUSH or FUA asked to be durable.`,
  rollback: `Usage: zos vdisk rollback NAME --to ${AT} | --snapshot S

Makes the vdisk's content what it was at that time or right after that log
position. The rollback is itself an event: history stays, and rolling back to a
point after the rollback's target (but before the rollback) undoes it. Its cost is
proportional to the blocks changed since the target. NBD clients of the vdisk are
disconnected first; when they reconnect they see the rolled-back content.`,
  clone: `Usage: zos vdisk clone NAME NEW [--at ${AT} | --snapshot S]

Creates vdisk NEW with NAME's content at that point (default: now).`,
  snapshot: `Usage: zos vdisk snapshot NAME --name S

Records a named point in the vdisk's history (after every write so far).`,
  export: `Usage: zos vdisk export NAME FILE [--at ${AT} | --snapshot S]

Writes the vdisk's content (default: now) to FILE as a raw image.`,
  delete: `Usage: zos vdisk delete NAME

Deletes the vdisk and its block store. Its events stay in the log, so clones
made from it and the audit trail keep working; the name can be created again.`,
  rebuild: `Usage: zos vdisk rebuild NAME

Deletes the vdisk's block store (a cache under DATA_DIR/views) and replays it
from the log, e.g. after "block store is damaged" errors.`,
  info: `Usage: zos vdisk info NAME [--json]`,
};

const SIZE_RE = /^(\d+)([KMGT]?)(i?B)?$/i;

export function parseSize(v: string | undefined, flag: string): number {
  const m = v === undefined ? null : SIZE_RE.exec(v.trim());
  if (!m) throw new UsageError(`${flag} takes a size: bytes or a number with K, M, G or T, e.g. 1G (got "${v ?? ''}")`);
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${flag} ${v} is too large`);
  return n;
}

/** --to/--at TIME|@POSITION, or --snapshot S. */
function parseTarget(at: string | undefined, snapshot: string | undefined, flag: string): unknown {
  if (at !== undefined && snapshot !== undefined) throw new UsageError(`give ${flag} or --snapshot, not both`);
  if (snapshot !== undefined) return { snapshot };
  if (at === undefined) return 'now';
  if (at.startsWith('@')) {
    if (!/^@\d+$/.test(at)) throw new UsageError(`${flag} @POSITION takes a whole number after @ (got "${at}")`);
    return { position: BigInt(at.slice(1)) };
  }
  return { time: parseTime(at, flag) };
}

function progressSink(out: Out, item: (x: unknown) => void = () => undefined): OpSink {
  return {
    progress: (phase, done, total) => {
      const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
      const width = 30;
      const fill = Math.round((pct / 100) * width);
      out.progress(`${phase} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}% (${done}/${total})`);
    },
    item,
  };
}

/** Run an operation in the process holding the vdisks, or here when none does. */
async function runOp(g: Globals, out: Out, op: VdiskOp, args: Record<string, unknown>, item?: (x: unknown) => void): Promise<unknown> {
  readDataDirMeta(g.dataDir); // a clear "run zos init" error before anything else
  const sink = progressSink(out, item);
  try {
    for (let attempt = 0; ; attempt++) {
      const remote = await callVdiskHost(g.dataDir, g.log, op, args, sink);
      if (remote) return remote.result;
      let host: VdiskHost;
      try {
        host = await VdiskHost.acquire(g.dataDir, g.log);
      } catch (err) {
        // Another command took the lock between our two attempts: ask it instead.
        if (isZosError(err, 'VDISK_BUSY') && attempt < 20) continue;
        throw err;
      }
      try {
        const log = await openLog(g, out, false);
        try {
          const m = await VdiskManager.open(log, { onWarning: (w) => out.warn(w) });
          host.attach(m);
          try {
            return await dispatchVdiskOp(m, op, args, sink);
          } finally {
            await m.close();
          }
        } finally {
          await log.close();
        }
      } finally {
        await host.close();
      }
    }
  } finally {
    out.endProgress();
  }
}

function infoJson(v: VdiskInfo): Record<string, unknown> {
  return {
    name: v.name,
    size: v.size,
    blockSize: v.blockSize,
    createdPosition: v.createdPosition,
    version: v.version,
    position: v.position,
    snapshots: v.snapshots.map((s) => ({ name: s.name, position: s.position })),
    storedBlockVersions: v.slots,
    historyRecords: v.records,
  };
}

function historyLine(h: HistoryEntry): string {
  let what: string;
  switch (h.type) {
    case 'VdiskCreated':
      what = `created  ${humanBytes(h.size ?? 0)}, ${h.blockSize}-byte blocks`;
      break;
    case 'VdiskBlocksWritten':
      what = `write    ${h.blocks} block${h.blocks === 1 ? '' : 's'}${h.zeroed ? `, ${h.zeroed} zeroed` : ''}${h.flushed ? '  (flush)' : ''}`;
      break;
    case 'VdiskSnapshotted':
      what = `snapshot "${h.snapshot}"`;
      break;
    case 'VdiskRolledBack':
      what = `rollback to @${h.toPosition}${h.snapshot ? ` (snapshot "${h.snapshot}")` : ''}`;
      break;
    case 'VdiskCloned':
      what = `cloned   from ${h.source} at @${h.atPosition}, ${humanBytes(h.size ?? 0)}`;
      break;
    case 'VdiskDeleted':
      what = 'deleted';
      break;
    default:
      what = h.type;
  }
  return `${`@${h.position}`.padStart(9)}  ${formatTime(h.timeNs).slice(0, 23)}Z  ${what}`;
}

function historyJson(h: HistoryEntry): Record<string, unknown> {
  return { ...h, time: formatTime(h.timeNs), timeNs: h.timeNs.toString() };
}

function needName(positionals: string[], n: number, help: string, what = 'NAME'): string[] {
  if (positionals.length !== n) throw new UsageError(`expected ${what}\n\n${help}`);
  return positionals;
}

async function cmdServe(g: Globals, out: Out, args: string[]): Promise<number> {
  // Its V8 and malloc settings are applied at start-up by bin/zos.mjs (cli/serve-process.ts).
  const { values } = parseCommand(args, { listen: { type: 'string' } }, VDISK_HELP.serve!);
  if (values.help) return (out.line(VDISK_HELP.serve!), 0);
  const listen = str(values.listen) ?? '127.0.0.1:10809';
  const m = /^(.*):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--listen takes HOST:PORT, e.g. 127.0.0.1:10809 (got "${listen}")`);
  const bindHost = m[1]!.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  readDataDirMeta(g.dataDir);
  const host = await VdiskHost.acquire(g.dataDir, g.log);
  let stopping: (() => void) | null = null;
  const stopped = new Promise<void>((r) => (stopping = r));
  const stop = (): void => stopping?.();
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    const log = await openLog(g, out, false);
    try {
      const sink = progressSink(out);
      const mgr = await VdiskManager.open(log, { onWarning: (w) => out.warn(w), progress: sink.progress });
      try {
        const vdisks = await mgr.vdisks();
        out.endProgress();
        const server = new NbdServer({ exports: mgr, onError: (err) => out.warn(`nbd: ${err instanceof Error ? err.message : String(err)}`) });
        mgr.onDisconnect = (name) => void server.disconnectExport(name);
        host.attach(mgr);
        const addr = await server.listen(Number(m[2]), bindHost);
        const url = `nbd://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
        if (out.json) out.obj({ event: 'listening', address: addr.address, port: addr.port, url, vdisks: vdisks.map((v) => v.name), pid: process.pid });
        else {
          out.line(`serving ${vdisks.length} vdisk${vdisks.length === 1 ? '' : 's'} on ${url}/NAME${vdisks.length ? ` (${vdisks.map((v) => v.name).join(', ')})` : ''}`);
          out.line('vdisks created later are served too; Ctrl-C stops after making every write durable');
        }
        await stopped;
        await server.close();
      } finally {
        await mgr.close();
      }
    } finally {
      await log.close();
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await host.close();
  }
  if (out.json) out.obj({ event: 'stopped' });
  else out.line('stopped; every write is durable in the log');
  return 0;
}

export async function cmdVdisk(g: Globals, out: Out, sub: string | undefined, args: string[]): Promise<number> {
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') return (out.line(VDISK_HELP.vdisk!), 0);
  const help = VDISK_HELP[sub];
  if (!help || sub === 'vdisk') throw new UsageError(`unknown command "vdisk ${sub}"; see zos vdisk --help`);
  if (sub === 'serve') return cmdServe(g, out, args);
  const opts = {
    size: { type: 'string' },
    'block-size': { type: 'string' },
    limit: { type: 'string' },
    to: { type: 'string' },
    at: { type: 'string' },
    snapshot: { type: 'string' },
    name: { type: 'string' },
  } as const;
  const { values, positionals } = parseCommand(args, opts, help);
  if (values.help) return (out.line(help), 0);
  const allowed: Record<string, string[]> = {
    create: ['size', 'block-size'],
    list: [],
    info: [],
    history: ['limit'],
    rollback: ['to', 'snapshot'],
    clone: ['at', 'snapshot'],
    snapshot: ['name'],
    export: ['at', 'snapshot'],
    delete: [],
    rebuild: [],
  };
  for (const k of Object.keys(values)) {
    if (k === 'help' || k === 'json' || values[k] === undefined) continue;
    if (!allowed[sub]!.includes(k)) throw new UsageError(`vdisk ${sub} does not take --${k}\n\n${help}`);
  }
  switch (sub) {
    case 'create': {
      const [name] = needName(positionals, 1, help);
      if (values.size === undefined) throw new UsageError(`vdisk create needs --size\n\n${help}`);
      const size = parseSize(str(values.size), '--size');
      const blockSize = values['block-size'] === undefined ? 4096 : parseSize(str(values['block-size']), '--block-size');
      const v = (await runOp(g, out, 'create', { name, size, blockSize })) as VdiskInfo;
      if (out.json) out.obj(infoJson(v));
      else out.line(`created vdisk ${v.name}: ${humanBytes(v.size)}, ${v.blockSize}-byte blocks (log position ${v.createdPosition})`);
      return 0;
    }
    case 'list': {
      needName(positionals, 0, help, 'no arguments');
      const all = (await runOp(g, out, 'list', {})) as VdiskInfo[];
      if (out.json) for (const v of all) out.obj(infoJson(v));
      else if (all.length === 0) out.line('no vdisks; create one with zos vdisk create NAME --size 1G');
      else {
        out.line(`${'NAME'.padEnd(24)} ${'SIZE'.padStart(10)} ${'BLOCK'.padStart(6)} ${'CREATED'.padStart(9)} ${'LAST'.padStart(9)}  SNAPSHOTS`);
        for (const v of all) {
          out.line(`${v.name.padEnd(24)} ${humanBytes(v.size).padStart(10)} ${String(v.blockSize).padStart(6)} ${`@${v.createdPosition}`.padStart(9)} ${`@${v.position}`.padStart(9)}  ${v.snapshots.map((s) => `${s.name}@${s.position}`).join(', ') || '-'}`);
        }
      }
      return 0;
    }
    case 'info': {
      const [name] = needName(positionals, 1, help);
      const v = (await runOp(g, out, 'info', { name })) as VdiskInfo;
      if (out.json) out.obj(infoJson(v));
      else {
        out.line(`${v.name}: ${humanBytes(v.size)}, ${v.blockSize}-byte blocks, created at @${v.createdPosition}, last event @${v.position} (stream version ${v.version})`);
        out.line(`block store: ${v.slots} block versions, ${v.records} history records; snapshots: ${v.snapshots.map((s) => `${s.name}@${s.position}`).join(', ') || 'none'}`);
      }
      return 0;
    }
    case 'history': {
      const [name] = needName(positionals, 1, help);
      const limit = parseCount(str(values.limit), '--limit');
      const items: HistoryEntry[] = [];
      const print = (h: HistoryEntry): void => (out.json ? out.obj(historyJson(h)) : out.line(historyLine(h)));
      await runOp(g, out, 'history', { name }, (x) => {
        const h = x as HistoryEntry;
        if (limit === undefined) print(h);
        else {
          items.push(h);
          if (items.length > limit) items.shift();
        }
      });
      for (const h of items) print(h);
      return 0;
    }
    case 'rollback': {
      const [name] = needName(positionals, 1, help);
      if (values.to === undefined && values.snapshot === undefined) throw new UsageError(`vdisk rollback needs --to ${AT} or --snapshot S\n\n${help}`);
      const r = (await runOp(g, out, 'rollback', { name, to: parseTarget(str(values.to), str(values.snapshot), '--to') })) as { position: bigint; toPosition: bigint; blocks: number };
      if (out.json) out.obj({ name, position: r.position, toPosition: r.toPosition, blocksChanged: r.blocks });
      else out.line(`rolled back ${name} to @${r.toPosition}: ${r.blocks} block${r.blocks === 1 ? '' : 's'} changed (rollback recorded at @${r.position}; roll back to a later point to undo it)`);
      return 0;
    }
    case 'clone': {
      const [source, name] = needName(positionals, 2, help, 'NAME NEW');
      const v = (await runOp(g, out, 'clone', { source, name, at: parseTarget(str(values.at), str(values.snapshot), '--at') })) as VdiskInfo;
      if (out.json) out.obj(infoJson(v));
      else out.line(`cloned ${source} into ${v.name} (${humanBytes(v.size)}; clone recorded at @${v.createdPosition})`);
      return 0;
    }
    case 'snapshot': {
      const [name] = needName(positionals, 1, help);
      const snap = str(values.name);
      if (snap === undefined) throw new UsageError(`vdisk snapshot needs --name S\n\n${help}`);
      const r = (await runOp(g, out, 'snapshot', { name, snapshot: snap })) as { position: bigint };
      if (out.json) out.obj({ name, snapshot: snap, position: r.position });
      else out.line(`snapshot "${snap}" of ${name} at @${r.position}`);
      return 0;
    }
    case 'export': {
      const [name, file] = needName(positionals, 2, help, 'NAME FILE');
      const r = (await runOp(g, out, 'export', { name, file: resolve(file!), at: parseTarget(str(values.at), str(values.snapshot), '--at') })) as { position: bigint; bytes: number; dataBlocks: number };
      if (out.json) out.obj({ name, file: resolve(file!), position: r.position, bytes: r.bytes, dataBlocks: r.dataBlocks });
      else out.line(`exported ${name} as of @${r.position} to ${file}: ${humanBytes(r.bytes)} (${r.dataBlocks} data blocks, the rest holes)`);
      return 0;
    }
    case 'delete': {
      const [name] = needName(positionals, 1, help);
      await runOp(g, out, 'delete', { name });
      if (out.json) out.obj({ name, deleted: true });
      else out.line(`deleted vdisk ${name} (its history stays in the log)`);
      return 0;
    }
    case 'rebuild': {
      const [name] = needName(positionals, 1, help);
      const v = (await runOp(g, out, 'rebuild', { name })) as VdiskInfo;
      if (out.json) out.obj(infoJson(v));
      else out.line(`rebuilt the block store of ${name} from the log (up to @${v.position})`);
      return 0;
    }
  }
  throw new ZosError('CLI_USAGE', `unknown command "vdisk ${sub}"`);
}
