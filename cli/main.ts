/**
 * zos — the command line. Human output by default, --json for machines.
 * Exit codes: 0 success, 2 usage error, 3 expected-version conflict, 1 anything else.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { readFileSync } from 'node:fs';
import { Tlog, ZosError, initDataDir, isZosError, readDataDirMeta, type ExpectedVersion, type RecordedEvent } from '../tlog/index.ts';
import { AuditIndex } from '../projections/index.ts';
import { eventJson, eventLine, humanBytes, makeOut, type Out } from './output.ts';
import { formatTime, parseTime } from './time.ts';
import { cmdVdisk } from './vdisk.ts';
import { UsageError, openLog, parseBig, parseCommand, parseCount, str, type Globals, type Opts } from './args.ts';

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, CONFLICT: 3 } as const;

const GLOBAL_HELP = `zos — event-sourced transaction log

Usage: zos [--data-dir DIR] [--key-file FILE] [--log URL] [--json] <command> [options]

Commands:
  init                         create the data directory and a new master key
  log append STREAM ...        append an event to a stream
  log read STREAM              read a stream's events
  log tail                     read the whole log; --follow to keep watching
  log verify                   check every entry: CRC, hash chain, decryption
  log stats                    size, counts and time range of the log
  log repair [--corrupt-tail]  cut a torn (or, with the flag, corrupt) tail, then verify
  audit                        who did what to which stream, when
  schema register TYPE         register an Avro schema for an event type
  vdisk ...                    virtual disks over NBD, every write in the log,
                               rollback to any point (zos vdisk --help)

Global options:
  --data-dir DIR   data directory (env ZOS_DATA_DIR; default ${defaultDataDir()})
  --key-file FILE  master key file (env ZOS_KEY_FILE; default DIR/master.key)
  --log URL        kafka://host:port[,host:port]/PREFIX to keep the log in Kafka or
                   Redpanda (env ZOS_LOG); default: the embedded file log in DIR
  --json           one JSON object per line
  -h, --help       help for any command

TIME is ISO-8601 (2026-11-21T10:42:00Z) or Unix nanoseconds.
Exit codes: 0 ok, 1 error, 2 usage error, 3 expected-version conflict.`;

const HELP: Record<string, string> = {
  init: `Usage: zos init [--data-dir DIR] [--key-file FILE]

Creates the data directory (mode 0700) and a new random master key (mode 0600).
Keep a copy of the key somewhere safe: without it the log cannot be read.
Running it again on an initialised directory changes nothing.`,
  'log append': `Usage: zos log append STREAM --type TYPE [--data JSON] [--actor NAME]
                      [--expect-version any|no-stream|exists|N] [--id UUID]
                      [--correlation-id ID] [--causation-id ID]

Appends one event. --data is JSON (default {}); --data @FILE reads it from a file.
With --expect-version the append fails (exit 3) unless the stream is at that version:
no-stream = the stream has no events, exists = it has some, N = its last event has version N.`,
  'log read': `Usage: zos log read STREAM [--from VERSION] [--backward] [--limit N] [--json]

Prints the stream's events in version order (or reverse with --backward).`,
  'log tail': `Usage: zos log tail [--from POSITION | --since TIME] [--follow] [--stream S] [--type T]
                    [--lines N] [--json]

Without --from/--since prints the last N events (default 20) of the whole log.
With --follow keeps printing new events as they are appended, also by other
processes, until interrupted. Resume after a stop with --from LAST_POSITION+1.`,
  'log verify': `Usage: zos log verify [--json]

Walks every entry from the start: frame CRCs, positions, the keyed hash chain,
decryption and decoding. Exits 0 only when everything checks out; otherwise
names the first bad position and what is wrong with it.`,
  'log stats': `Usage: zos log stats [--json]`,
  'log repair': `Usage: zos log repair

Opens the log for writing, which cuts an incomplete or zeroed tail (a write that
was never acknowledged), then verifies every entry. With --corrupt-tail also cuts
a corrupt last entry that nothing valid follows (after a power loss); the bytes
are kept in log/quarantine/. Damage followed by valid entries is never cut.`,
  audit: `Usage: zos audit [--actor A] [--type T] [--stream S] [--since TIME] [--until TIME]
                 [--limit N] [--json]

Answers from the audit index (a projection of the log, rebuilt when missing);
every match is re-read from the log and checked before it is printed.`,
  'schema register': `Usage: zos schema register TYPE --version N --file SCHEMA.avsc

Registers version N of the Avro schema for events of TYPE. The newest version
must be able to read all older ones. Events of unregistered types are stored
as MessagePack.`,
};

export function defaultDataDir(): string {
  const xdg = process.env.XDG_DATA_HOME;
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), '.local', 'share'), 'zos');
}

function parse(args: string[], options: Opts, command: string): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  return parseCommand(args, options, HELP[command] ?? GLOBAL_HELP);
}

function parseExpected(v: string | undefined): ExpectedVersion | undefined {
  if (v === undefined) return undefined;
  if (v === 'any' || v === 'no-stream' || v === 'exists') return v;
  if (/^\d+$/.test(v)) return BigInt(v);
  throw new UsageError(`--expect-version takes any, no-stream, exists or a version number (got "${v}")`);
}

async function withLog<T>(g: Globals, out: Out, readOnly: boolean, fn: (log: Tlog) => Promise<T>): Promise<T> {
  const log = await openLog(g, out, readOnly);
  try {
    return await fn(log);
  } finally {
    await log.close();
  }
}

// ------------------------------------------------------------------ commands

function cmdInit(g: Globals, out: Out): number {
  const r = initDataDir(g.dataDir, g.keyFile ?? join(g.dataDir, 'master.key'));
  if (out.json) out.obj({ dataDir: resolve(r.dataDir), keyFile: resolve(r.keyFile), created: r.created, logId: r.logId });
  else if (r.created) {
    out.line(`initialised ${resolve(r.dataDir)}`);
    out.line(`master key: ${resolve(r.keyFile)} (mode 0600) — back it up: without it the log cannot be read`);
  } else out.line(`${resolve(r.dataDir)} is already initialised (key ${resolve(r.keyFile)})`);
  return EXIT.OK;
}

function readData(v: string | undefined): unknown {
  if (v === undefined) return {};
  let text = v;
  if (v.startsWith('@')) {
    try {
      text = readFileSync(v.slice(1), 'utf8');
    } catch (err) {
      throw new UsageError(`--data ${v}: cannot read ${v.slice(1)} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--data is not valid JSON: ${(err as Error).message}`);
  }
}

async function cmdAppend(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      type: { type: 'string' },
      data: { type: 'string' },
      actor: { type: 'string' },
      'expect-version': { type: 'string' },
      id: { type: 'string' },
      'correlation-id': { type: 'string' },
      'causation-id': { type: 'string' },
    },
    'log append',
  );
  if (values.help) return help(out, 'log append');
  const stream = positionals[0];
  if (!stream || positionals.length > 1) throw new UsageError(`log append takes exactly one STREAM\n\n${HELP['log append']}`);
  const type = str(values.type);
  if (!type) throw new UsageError(`log append needs --type TYPE\n\n${HELP['log append']}`);
  const data = readData(str(values.data));
  const expected = parseExpected(str(values['expect-version']));
  const id = str(values.id);
  const actor = str(values.actor);
  const correlationId = str(values['correlation-id']);
  const causationId = str(values['causation-id']);
  return withLog(g, out, false, async (log) => {
    const r = await log.appendToStream(stream, [{ type, data, ...(id === undefined ? {} : { id }) }], {
      ...(expected === undefined ? {} : { expectedVersion: expected }),
      ...(actor === undefined ? {} : { actor }),
      ...(correlationId === undefined ? {} : { correlationId }),
      ...(causationId === undefined ? {} : { causationId }),
    });
    if (out.json) out.obj({ stream, position: r.position, version: r.firstVersion, time: formatTime(r.commitTimeNs) });
    else out.line(`appended ${type} to ${stream} at version ${r.firstVersion}, position ${r.position}`);
    return EXIT.OK;
  });
}

async function cmdRead(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { from: { type: 'string' }, backward: { type: 'boolean' }, limit: { type: 'string' } }, 'log read');
  if (values.help) return help(out, 'log read');
  const stream = positionals[0];
  if (!stream || positionals.length > 1) throw new UsageError(`log read takes exactly one STREAM\n\n${HELP['log read']}`);
  const from = parseBig(str(values.from), '--from');
  const limit = parseCount(str(values.limit), '--limit');
  return withLog(g, out, true, async (log) => {
    let n = 0;
    for await (const e of log.readStream(stream, {
      direction: values.backward ? 'backward' : 'forward',
      ...(from === undefined ? {} : { fromVersion: from }),
      ...(limit === undefined ? {} : { maxCount: limit }),
    })) {
      n++;
      if (out.json) out.obj(eventJson(e));
      else out.line(eventLine(e, false));
    }
    if (n === 0 && !out.json) {
      const v = await log.streamVersion(stream);
      out.line(v < 0n ? `stream ${stream} has no events` : `no events of ${stream} in that range (it is at version ${v})`);
    }
    return EXIT.OK;
  });
}

async function cmdTail(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values } = parse(
    args,
    { from: { type: 'string' }, since: { type: 'string' }, follow: { type: 'boolean', short: 'f' }, stream: { type: 'string' }, type: { type: 'string' }, lines: { type: 'string', short: 'n' } },
    'log tail',
  );
  if (values.help) return help(out, 'log tail');
  if (values.from !== undefined && values.since !== undefined) throw new UsageError('use either --from or --since, not both');
  const from = parseBig(str(values.from), '--from');
  const since = values.since === undefined ? undefined : parseTime(str(values.since)!, '--since');
  const lines = parseCount(str(values.lines), '--lines') ?? 20;
  const stream = str(values.stream);
  const type = str(values.type);
  const matches = (e: RecordedEvent): boolean => (stream === undefined || e.stream === stream) && (type === undefined || e.type === type);
  const print = (e: RecordedEvent): void => (out.json ? out.obj(eventJson(e)) : out.line(eventLine(e, true)));
  return withLog(g, out, true, async (log) => {
    let start: bigint;
    if (from !== undefined) start = from;
    else if (since !== undefined) start = await log.positionForTime(since);
    else {
      // The last N matching events.
      const head = await log.headPosition();
      if (stream === undefined && type === undefined) start = head > BigInt(lines) ? head - BigInt(lines) : 0n;
      else {
        const ring: RecordedEvent[] = [];
        for await (const e of log.readAll(0n)) {
          if (!matches(e)) continue;
          ring.push(e);
          if (ring.length > lines) ring.shift();
        }
        for (const e of ring) print(e);
        start = head;
        if (!values.follow) return EXIT.OK;
      }
    }
    const ac = new AbortController();
    const stop = (): void => ac.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    try {
      for await (const e of log.subscribe({ from: { position: start }, signal: ac.signal, stopAtEnd: !values.follow })) {
        if (matches(e)) print(e);
      }
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
    return EXIT.OK;
  });
}

async function cmdVerify(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values } = parse(args, {}, 'log verify');
  if (values.help) return help(out, 'log verify');
  return withLog(g, out, true, async (log) => {
    const total = await log.headPosition();
    const report = await log.verify((entries, events) => out.progress(`verifying: ${events}/${total} events (${entries} entries)`));
    out.endProgress();
    if (out.json) {
      out.obj({ ok: report.ok, entries: report.entries, events: report.events, streams: report.streams, problem: report.problem, tornTailBytes: report.tornTailBytes });
    } else if (report.ok) {
      out.line(`ok: ${report.events} events in ${report.entries} entries across ${report.streams} streams; CRCs, hash chain and decryption all check out`);
      if (report.tornTailBytes > 0) {
        out.warn(`${report.tornTailBytes} bytes of an incomplete, never-acknowledged append follow the last entry; the next writer cuts them`);
      }
    } else {
      const p = report.problem!;
      out.line(`FAILED at position ${p.position}: ${p.reason} [${p.code}]`);
      out.line(`${report.entries} entries (${report.events} events) before it check out.`);
    }
    return report.ok ? EXIT.OK : EXIT.ERROR;
  });
}

async function cmdStats(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values } = parse(args, {}, 'log stats');
  if (values.help) return help(out, 'log stats');
  return withLog(g, out, true, async (log) => {
    const s = await log.stats();
    const meta = readDataDirMeta(g.dataDir);
    if (out.json) {
      out.obj({ ...s, logId: meta.logId, firstTime: s.firstCommitTimeNs === null ? null : formatTime(s.firstCommitTimeNs), lastTime: s.lastCommitTimeNs === null ? null : formatTime(s.lastCommitTimeNs) });
      return EXIT.OK;
    }
    out.line(`data dir:  ${resolve(s.location)} (log ${meta.logId}, ${s.kind} backend)`);
    out.line(`events:    ${s.events} in ${s.entries} entries`);
    out.line(`streams:   ${s.streams}`);
    out.line(`size:      ${humanBytes(s.bytes)} in ${s.segments} segment${s.segments === 1 ? '' : 's'}`);
    if (s.firstCommitTimeNs !== null && s.lastCommitTimeNs !== null) {
      out.line(`time:      ${formatTime(s.firstCommitTimeNs)} .. ${formatTime(s.lastCommitTimeNs)}`);
    }
    return EXIT.OK;
  });
}

async function cmdRepair(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values } = parse(args, { 'corrupt-tail': { type: 'boolean' } }, 'log repair');
  if (values.help) return help(out, 'log repair');
  const log = await Tlog.open({
    dataDir: g.dataDir,
    ...(g.keyFile === undefined ? {} : { keyFile: g.keyFile }),
    ...(g.log === undefined ? {} : { log: g.log }),
    ...(values['corrupt-tail'] ? { repairCorruptTail: true } : {}),
    onWarning: (m) => out.warn(m),
  });
  try {
    const report = await log.verify();
    if (out.json) out.obj({ ok: report.ok, events: report.events, problem: report.problem });
    else if (report.ok) out.line(`log is consistent: ${report.events} events, every entry verified`);
    else out.line(`the tail is repaired, but the log is damaged at position ${report.problem!.position}: ${report.problem!.reason}. Entries after damage in the middle are never cut; restore the segment from a copy`);
    return report.ok ? EXIT.OK : EXIT.ERROR;
  } finally {
    await log.close();
  }
}

async function cmdAudit(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values } = parse(
    args,
    { actor: { type: 'string' }, type: { type: 'string' }, stream: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, limit: { type: 'string' } },
    'audit',
  );
  if (values.help) return help(out, 'audit');
  const since = values.since === undefined ? undefined : parseTime(str(values.since)!, '--since');
  const until = values.until === undefined ? undefined : parseTime(str(values.until)!, '--until');
  const limit = parseCount(str(values.limit), '--limit');
  const actor = str(values.actor);
  const type = str(values.type);
  const stream = str(values.stream);
  return withLog(g, out, true, async (log) => {
    const meta = readDataDirMeta(g.dataDir);
    const idx = await AuditIndex.open(log, log.viewDir('audit'), Buffer.from(meta.logId, 'hex'));
    try {
      await idx.catchUp((p) => out.progress(`indexing: position ${p}`));
      out.endProgress();
      let n = 0;
      for await (const e of idx.query({
        ...(actor === undefined ? {} : { actor }),
        ...(type === undefined ? {} : { type }),
        ...(stream === undefined ? {} : { stream }),
        ...(since === undefined ? {} : { sinceNs: since }),
        ...(until === undefined ? {} : { untilNs: until }),
        ...(limit === undefined ? {} : { limit }),
      })) {
        n++;
        if (out.json) out.obj(eventJson(e));
        else out.line(eventLine(e, true));
      }
      if (!out.json) out.line(`${n} matching event${n === 1 ? '' : 's'}`);
    } finally {
      await idx.close();
    }
    return EXIT.OK;
  });
}

async function cmdSchemaRegister(g: Globals, out: Out, args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { version: { type: 'string' }, file: { type: 'string' } }, 'schema register');
  if (values.help) return help(out, 'schema register');
  const type = positionals[0];
  const version = parseCount(str(values.version), '--version');
  const file = str(values.file);
  if (!type || version === undefined || !file) throw new UsageError(`schema register needs TYPE, --version and --file\n\n${HELP['schema register']}`);
  let schema: unknown;
  try {
    schema = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`${file} is not a readable JSON Avro schema: ${(err as Error).message}`);
  }
  return withLog(g, out, false, async (log) => {
    const r = await log.registerSchema(type, version, schema);
    if (out.json) out.obj({ type, version, added: r.added });
    else out.line(r.added ? `registered ${type} schema v${version}` : `${type} schema v${version} was already registered`);
    return EXIT.OK;
  });
}

function help(out: Out, command?: string): number {
  out.line(command ? HELP[command] ?? GLOBAL_HELP : GLOBAL_HELP);
  return EXIT.OK;
}

// ------------------------------------------------------------------ dispatch

export async function main(argv: string[], out?: Out): Promise<number> {
  // Global options may come before the command.
  const globals: Globals = { dataDir: process.env.ZOS_DATA_DIR || defaultDataDir(), log: process.env.ZOS_LOG || undefined, keyFile: process.env.ZOS_KEY_FILE || undefined, json: false };
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
    if (a === '--data-dir') globals.dataDir = next();
    else if (a.startsWith('--data-dir=')) globals.dataDir = a.slice('--data-dir='.length);
    else if (a === '--log') globals.log = next();
    else if (a.startsWith('--log=')) globals.log = a.slice('--log='.length);
    else if (a === '--key-file') globals.keyFile = next();
    else if (a.startsWith('--key-file=')) globals.keyFile = a.slice('--key-file='.length);
    else if (a === '--json') globals.json = true;
    else rest.push(a);
  }
  const o = out ?? makeOut(globals.json);
  if (globals.json && !o.json) o.json = true;
  const [cmd, sub, ...args] = rest;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') return help(o);
  if (cmd === '--version' || cmd === 'version') {
    o.line('zos 0.1.0 (record format v1)');
    return EXIT.OK;
  }
  switch (cmd) {
    case 'init':
      if (sub === '--help' || sub === '-h') return help(o, 'init');
      if (sub !== undefined) throw new UsageError(`init takes no arguments (got "${sub}")\n\n${HELP.init}`);
      return cmdInit(globals, o);
    case 'log': {
      const subArgs = args;
      switch (sub) {
        case 'append':
          return cmdAppend(globals, o, subArgs);
        case 'read':
          return cmdRead(globals, o, subArgs);
        case 'tail':
          return cmdTail(globals, o, subArgs);
        case 'verify':
          return cmdVerify(globals, o, subArgs);
        case 'stats':
          return cmdStats(globals, o, subArgs);
        case 'repair':
          return cmdRepair(globals, o, subArgs);
        case undefined:
        case '--help':
        case '-h':
          return help(o);
        default:
          throw new UsageError(`unknown command "log ${sub}"; see zos --help`);
      }
    }
    case 'audit':
      return cmdAudit(globals, o, sub === undefined ? [] : [sub, ...args]);
    case 'vdisk':
      return cmdVdisk(globals, o, sub, args);
    case 'schema':
      if (sub === 'register') return cmdSchemaRegister(globals, o, args);
      throw new UsageError(`unknown command "schema ${sub ?? ''}"; did you mean zos schema register?`);
    default:
      throw new UsageError(`unknown command "${cmd}"; see zos --help`);
  }
}

export function exitCodeFor(err: unknown): number {
  if (isZosError(err, 'CLI_USAGE') || isZosError(err, 'VDISK_INVALID')) return EXIT.USAGE;
  if (isZosError(err, 'TLOG_VERSION_CONFLICT')) return EXIT.CONFLICT;
  return EXIT.ERROR;
}

export async function run(argv: string[]): Promise<void> {
  let code: number;
  try {
    code = await main(argv);
  } catch (err) {
    code = exitCodeFor(err);
    if (err instanceof ZosError) process.stderr.write(`zos: ${err.message}\n`);
    else process.stderr.write(`zos: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
  }
  process.exitCode = code;
}
