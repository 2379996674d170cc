/**
 * The tlog: the one API every part of zos appends to and reads from. It seals
 * events into entries (Avro → LZ4 → XChaCha20-Poly1305) and hands them to a
 * backend that orders, chains and stores them.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { KeyRing, randomBytes, sealTag } from './crypto.ts';
import { ZosError, isZosError } from './errors.ts';
import { CHAIN_BYTES, HEADER_BYTES, MAX_BODY_BYTES, ZERO_CHAIN, type Frame } from './frame.ts';
import { createKeyFile, loadKeyFile } from './keyfile.ts';
import { PayloadSchemas } from './payload-schemas.ts';
import { openEntryBody, sealEntry, toRecordedEvents } from './sealer.ts';
import { randomEventId, uuidToBytes, type EventEnvelope } from './record.ts';
import { nowNs } from './clock.ts';
import { FileBackend } from './file/file-backend.ts';
import type { KafkaBackend, KafkaBackendOptions } from './kafka/kafka-backend.ts';
import { isKafkaUrl, parseKafkaUrl } from './kafka/kafka-url.ts';
import type { BackendStats, LogBackend } from './backend.ts';
import {
  asPosition,
  type AppendOptions,
  type AppendResult,
  type EventInput,
  type ExpectedVersion,
  type Position,
  type RecordedEvent,
} from './types.ts';

export const DATA_DIR_FORMAT_VERSION = 1;
export const SCHEMA_STREAM = '$schemas';
const SCHEMA_REGISTERED = '$SchemaRegistered';

export interface DataDirMeta {
  format: 'zos-data-dir';
  version: number;
  logId: string;
  keyId: string;
  createdAt: string;
}

export interface TlogOpenOptions {
  dataDir: string;
  /** Where the log lives: a kafka:// address, or the data directory's file log (default; env ZOS_LOG). */
  log?: string;
  /** Raw 32-byte master key; otherwise read from keyFile / ZOS_KEY_FILE / <dataDir>/master.key. */
  key?: Buffer;
  keyFile?: string;
  readOnly?: boolean;
  segmentMaxBytes?: number;
  /** Cut a corrupt last entry that nothing valid follows (zos log repair --corrupt-tail). */
  repairCorruptTail?: boolean;
  /** Called with non-fatal warnings (e.g. a key file readable by others). */
  onWarning?: (message: string) => void;
}

export interface ReadStreamOptions {
  fromVersion?: bigint;
  direction?: 'forward' | 'backward';
  maxCount?: number;
}

export type StartFrom = 'start' | 'end' | { position: bigint } | { time: bigint };

export interface SubscribeOptions {
  from?: StartFrom;
  signal?: AbortSignal;
  /** Stop after catching up instead of following live. */
  stopAtEnd?: boolean;
}

export interface VerifyProblem {
  position: bigint;
  code: string;
  reason: string;
}

export interface VerifyReport {
  ok: boolean;
  entries: number;
  events: bigint;
  streams: number;
  problem: VerifyProblem | null;
  /** Bytes of an incomplete, never-acknowledged entry at the end (cut by the next writer). */
  tornTailBytes: number;
}

export function defaultKeyFile(dataDir: string): string {
  return join(dataDir, 'master.key');
}

function metaPath(dataDir: string): string {
  return join(dataDir, 'zos.json');
}

export function readDataDirMeta(dataDir: string): DataDirMeta {
  const p = metaPath(dataDir);
  if (!existsSync(p)) {
    throw new ZosError('TLOG_NOT_INITIALIZED', `${resolve(dataDir)} is not a zos data directory: run zos init (or pass --data-dir / ZOS_DATA_DIR)`);
  }
  let meta: DataDirMeta;
  try {
    meta = JSON.parse(readFileSync(p, 'utf8')) as DataDirMeta;
  } catch (err) {
    throw new ZosError('TLOG_CORRUPT', `${p} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (meta.format !== 'zos-data-dir' || typeof meta.logId !== 'string' || typeof meta.keyId !== 'string') {
    throw new ZosError('TLOG_CORRUPT', `${p} is not a zos data directory description`);
  }
  if (meta.version !== DATA_DIR_FORMAT_VERSION) {
    throw new ZosError('TLOG_UNSUPPORTED_FORMAT', `data directory format v${meta.version} is not supported (this build reads v${DATA_DIR_FORMAT_VERSION})`);
  }
  return meta;
}

export interface InitResult {
  dataDir: string;
  keyFile: string;
  created: boolean;
  logId: string;
}

/** Create a data directory and its master key. Idempotent when both exist and match. */
export function initDataDir(dataDir: string, keyFile = defaultKeyFile(dataDir)): InitResult {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  if (existsSync(metaPath(dataDir))) {
    const meta = readDataDirMeta(dataDir);
    const { key } = loadKeyFile(keyFile);
    if (new KeyRing(key).keyId.toString('hex') !== meta.keyId) {
      throw new ZosError('TLOG_WRONG_KEY', `${dataDir} is already initialised with a different master key than ${keyFile}`);
    }
    return { dataDir, keyFile, created: false, logId: meta.logId };
  }
  const key = existsSync(keyFile) ? loadKeyFile(keyFile).key : createKeyFile(keyFile);
  const meta: DataDirMeta = {
    format: 'zos-data-dir',
    version: DATA_DIR_FORMAT_VERSION,
    logId: randomBytes(16).toString('hex'),
    keyId: new KeyRing(key).keyId.toString('hex'),
    createdAt: new Date().toISOString(),
  };
  const tmp = `${metaPath(dataDir)}.tmp`;
  writeFileSync(tmp, JSON.stringify(meta, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, metaPath(dataDir));
  return { dataDir, keyFile, created: true, logId: meta.logId };
}

/** TLS/SASL for Kafka from ZOS_KAFKA_* variables (never logged). */
function kafkaSecurityFromEnv(): Pick<KafkaBackendOptions, 'ssl' | 'sasl'> {
  const env = process.env;
  const out: Pick<KafkaBackendOptions, 'ssl' | 'sasl'> = {};
  if (env.ZOS_KAFKA_SSL === '1' || env.ZOS_KAFKA_CA_FILE) {
    out.ssl = env.ZOS_KAFKA_CA_FILE ? { ca: [readFileSync(env.ZOS_KAFKA_CA_FILE, 'utf8')] } : true;
  }
  const mech = env.ZOS_KAFKA_SASL_MECHANISM;
  if (mech) {
    if (mech !== 'plain' && mech !== 'scram-sha-256' && mech !== 'scram-sha-512') {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `ZOS_KAFKA_SASL_MECHANISM must be plain, scram-sha-256 or scram-sha-512 (got ${mech})`);
    }
    out.sasl = { mechanism: mech, username: env.ZOS_KAFKA_SASL_USERNAME ?? '', password: env.ZOS_KAFKA_SASL_PASSWORD ?? '' };
  }
  return out;
}

function validateStreamName(stream: string, allowSystem = false): void {
  if (typeof stream !== 'string' || stream.length === 0 || Buffer.byteLength(stream) > 1024) {
    throw new ZosError('TLOG_INVALID_ARGUMENT', 'a stream name must be 1 to 1024 bytes of UTF-8');
  }
  if (!allowSystem && stream.startsWith('$')) {
    throw new ZosError('TLOG_INVALID_ARGUMENT', `stream names starting with "$" are reserved for zos (got ${stream})`);
  }
}

export class Tlog {
  readonly backend: LogBackend;
  readonly schemas = new PayloadSchemas();
  readonly dataDir: string | null;
  readonly #keys: KeyRing;
  #schemasLoadedTo = 0n;
  readonly #onWarning: ((message: string) => void) | undefined;

  private constructor(backend: LogBackend, keys: KeyRing, dataDir: string | null, onWarning?: (message: string) => void) {
    this.backend = backend;
    this.#keys = keys;
    this.dataDir = dataDir;
    this.#onWarning = onWarning;
  }

  /** Open a log in a data directory on the embedded file backend. */
  static async open(opts: TlogOpenOptions): Promise<Tlog> {
    const meta = readDataDirMeta(opts.dataDir);
    let key = opts.key;
    if (!key) {
      const file = opts.keyFile || process.env.ZOS_KEY_FILE || defaultKeyFile(opts.dataDir);
      const loaded = loadKeyFile(file);
      if (loaded.warning) opts.onWarning?.(loaded.warning);
      key = loaded.key;
    }
    const keys = new KeyRing(key);
    if (keys.keyId.toString('hex') !== meta.keyId) {
      throw new ZosError('TLOG_WRONG_KEY', 'wrong key: this data directory was created with a different master key; use the key file it was created with (--key-file or ZOS_KEY_FILE)');
    }
    const where = opts.log ?? process.env.ZOS_LOG;
    let backend: FileBackend | KafkaBackend;
    let viewRoot: string;
    if (where !== undefined && where !== '' && where !== 'file') {
      if (!isKafkaUrl(where)) throw new ZosError('TLOG_INVALID_ARGUMENT', `unknown log "${where}": use kafka://host:port[,host:port]/PREFIX, or leave --log / ZOS_LOG unset for the embedded file log`);
      const address = parseKafkaUrl(where);
      // Loaded on demand: kafkajs and the backend cost ~40 MiB of memory that the file log never needs.
      const { KafkaBackend } = await import('./kafka/kafka-backend.ts');
      backend = await KafkaBackend.open({ address, signer: keys, readOnly: opts.readOnly ?? false, ...kafkaSecurityFromEnv() });
      viewRoot = join(opts.dataDir, 'views', `kafka-${address.prefix}`);
    } else {
      backend = await FileBackend.open({
        dir: opts.dataDir,
        signer: keys,
        logId: Buffer.from(meta.logId, 'hex'),
        readOnly: opts.readOnly ?? false,
        ...(opts.segmentMaxBytes === undefined ? {} : { segmentMaxBytes: opts.segmentMaxBytes }),
        ...(opts.repairCorruptTail ? { repairCorruptTail: true } : {}),
      });
      viewRoot = join(opts.dataDir, 'views');
    }
    if (backend.damage) opts.onWarning?.(`${backend.damage.message.replace(/; run zos log verify$/, '')}; reads stop before it — run zos log verify`);
    const log = new Tlog(backend, keys, opts.dataDir, opts.onWarning);
    log.#viewRoot = viewRoot;
    try {
      await log.#loadSchemas();
    } catch (err) {
      await backend.close();
      throw err;
    }
    return log;
  }

  #viewRoot: string | null = null;

  /** Directory for a projection's files, distinct per log (file log or Kafka prefix). */
  viewDir(name: string): string {
    if (!this.#viewRoot) throw new ZosError('TLOG_INVALID_ARGUMENT', 'this log has no data directory for views');
    return join(this.#viewRoot, name);
  }

  /** Wrap an already opened backend (used by other backends and tests). */
  static async fromBackend(backend: LogBackend, key: Buffer): Promise<Tlog> {
    const log = new Tlog(backend, new KeyRing(key), null);
    await log.#loadSchemas();
    return log;
  }

  get keyId(): Buffer {
    return this.#keys.keyId;
  }

  /** A 32-byte key for one projection's files at rest (derived from the master key; never log it). */
  viewKey(label: string): Buffer {
    return this.#keys.viewKey(label);
  }

  /** Keyed 16-byte hash of an audit term (never the term itself). */
  auditTerm(kind: string, term: string): Buffer {
    return this.#keys.auditTerm(kind, term);
  }

  // ---------------------------------------------------------------- writing

  async appendToStream(stream: string, events: EventInput[], options: AppendOptions = {}): Promise<AppendResult> {
    validateStreamName(stream, stream === SCHEMA_STREAM);
    return this.#append(stream, events, options);
  }

  async #append(stream: string, events: EventInput[], options: AppendOptions): Promise<AppendResult> {
    if (!Array.isArray(events) || events.length === 0) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', 'an append needs at least one event');
    }
    const expected: ExpectedVersion = options.expectedVersion ?? 'any';
    if (typeof expected === 'bigint' && expected < -1n) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `expected version must be >= 0, "no-stream", "exists" or "any" (got ${expected})`);
    }
    const now = nowNs();
    const envelopes: EventEnvelope[] = events.map((e) => {
      if (!e || typeof e.type !== 'string' || e.type.length === 0) {
        throw new ZosError('TLOG_INVALID_ARGUMENT', 'every event needs a non-empty type');
      }
      const p = this.schemas.encode(e.type, e.data);
      return {
        id: e.id === undefined ? randomEventId() : uuidToBytes(e.id),
        type: e.type,
        schemaVersion: p.schemaVersion,
        encoding: p.encoding,
        timestampNs: now,
        actor: e.actor ?? options.actor ?? null,
        correlationId: options.correlationId ?? null,
        causationId: options.causationId ?? null,
        payload: p.bytes,
      };
    });
    const sealed = sealEntry(this.#keys, { stream, events: envelopes });
    const bodyBytes = HEADER_BYTES + sealed.ciphertext.length + CHAIN_BYTES;
    if (bodyBytes > MAX_BODY_BYTES) {
      throw new ZosError('TLOG_ENTRY_TOO_LARGE', `this append seals to ${bodyBytes} bytes, over the ${MAX_BODY_BYTES}-byte entry limit; split it into smaller appends`);
    }
    const exp = expected === -1n ? 'no-stream' : expected;
    try {
      const r = await this.backend.append(sealed, exp);
      const last = r.firstVersion + BigInt(events.length) - 1n;
      return {
        position: asPosition(r.position),
        lastPosition: asPosition(r.position + BigInt(events.length) - 1n),
        firstVersion: r.firstVersion,
        nextExpectedVersion: last,
        commitTimeNs: r.commitTimeNs,
      };
    } catch (err) {
      if (isZosError(err, 'TLOG_VERSION_CONFLICT')) {
        throw new ZosError('TLOG_VERSION_CONFLICT', `version conflict on stream ${stream}: ${err.message}`, {
          context: { ...err.context, stream },
        });
      }
      throw err;
    }
  }

  // ---------------------------------------------------------------- schemas

  /** Register an Avro schema for an event type, persisted in the log ($schemas). */
  async registerSchema(type: string, version: number, schema: unknown): Promise<{ added: boolean }> {
    if (typeof type !== 'string' || type.length === 0 || type.startsWith('$')) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `event types starting with "$" are reserved for zos; pick another type name (got "${type}")`);
    }
    await this.#loadSchemas();
    const before = this.#registered.has(`${type}\0${version}`);
    this.schemas.register(type, version, schema);
    if (before) return { added: false };
    this.#registered.add(`${type}\0${version}`);
    await this.#append(SCHEMA_STREAM, [{ type: SCHEMA_REGISTERED, data: { type, version, schema: JSON.stringify(schema) } }], {});
    return { added: true };
  }

  readonly #registered = new Set<string>();

  async #loadSchemas(): Promise<void> {
    const streamKey = this.#keys.streamKey(SCHEMA_STREAM);
    for await (const frame of this.backend.readStreamFrames(streamKey, this.#schemasLoadedTo, 'forward')) {
      const body = openEntryBody(this.#keys, frame);
      for (const e of body.events) {
        if (e.type !== SCHEMA_REGISTERED || e.encoding !== 'MSGPACK') continue;
        const d = this.schemas.decode(e.type, e.encoding, e.schemaVersion, e.payload) as { type: string; version: number; schema: string };
        try {
          this.schemas.register(d.type, d.version, JSON.parse(d.schema));
          this.#registered.add(`${d.type}\0${d.version}`);
        } catch (err) {
          // Two processes raced to register incompatible schemas: the first one in the log wins.
          this.#onWarning?.(`ignoring schema ${d.type} v${d.version} registered at stream version ${frame.firstVersion}: ${(err as Error).message}`);
        }
      }
      this.#schemasLoadedTo = frame.firstVersion + BigInt(frame.eventCount);
    }
  }

  // ---------------------------------------------------------------- reading

  #decode(frame: Frame, fromPosition: bigint): RecordedEvent[] {
    const body = openEntryBody(this.#keys, frame);
    const skip = fromPosition > frame.position ? Number(fromPosition - frame.position) : 0;
    return toRecordedEvents(frame, body, this.schemas, skip);
  }

  async #decodeWithSchemaReload(frame: Frame, fromPosition: bigint): Promise<RecordedEvent[]> {
    try {
      return this.#decode(frame, fromPosition);
    } catch (err) {
      if (!isZosError(err, 'TLOG_UNKNOWN_SCHEMA')) throw err;
      await this.#loadSchemas(); // another process may have registered it since
      return this.#decode(frame, fromPosition);
    }
  }

  async streamVersion(stream: string): Promise<bigint> {
    return this.backend.streamVersion(this.#keys.streamKey(stream));
  }

  async *readStream(stream: string, options: ReadStreamOptions = {}): AsyncGenerator<RecordedEvent> {
    const direction = options.direction ?? 'forward';
    const from = options.fromVersion ?? (direction === 'forward' ? 0n : BigInt(Number.MAX_SAFE_INTEGER));
    let left = options.maxCount ?? Infinity;
    const key = this.#keys.streamKey(stream);
    for await (const frame of this.backend.readStreamFrames(key, from, direction)) {
      const events = await this.#decodeWithSchemaReload(frame, 0n);
      if (direction === 'backward') events.reverse();
      for (const e of events) {
        if (direction === 'forward' ? e.version < from : e.version > from) continue;
        if (left-- <= 0) return;
        yield e;
      }
    }
  }

  /** The whole log in order, from a position (default 0) or from a time. */
  async *readAll(from: bigint | { time: bigint } = 0n, maxCount = Infinity): AsyncGenerator<RecordedEvent> {
    const fromPosition = typeof from === 'bigint' ? from : await this.backend.positionForTime(from.time);
    let left = maxCount;
    for await (const frame of this.backend.readFrames(fromPosition)) {
      for (const e of await this.#decodeWithSchemaReload(frame, fromPosition)) {
        if (left-- <= 0) return;
        yield e;
      }
    }
  }

  async positionForTime(timeNs: bigint): Promise<Position> {
    return asPosition(await this.backend.positionForTime(timeNs));
  }

  async headPosition(): Promise<Position> {
    return asPosition(await this.backend.headPosition());
  }

  /**
   * Catch up from a position, a time, the start or the end, then follow live.
   * Resume after a crash by passing the last processed position + 1.
   */
  async *subscribe(options: SubscribeOptions = {}): AsyncGenerator<RecordedEvent> {
    const from = options.from ?? 'start';
    let next: bigint;
    if (from === 'start') next = 0n;
    else if (from === 'end') next = await this.backend.headPosition();
    else if ('position' in from) next = from.position;
    else next = await this.backend.positionForTime(from.time);
    const signal = options.signal;
    while (!signal?.aborted) {
      for await (const frame of this.backend.readFrames(next)) {
        for (const e of await this.#decodeWithSchemaReload(frame, next)) {
          if (signal?.aborted) return;
          next = e.position + 1n;
          yield e;
        }
      }
      if (options.stopAtEnd) return;
      await this.backend.waitForAppend(next, signal, 1000);
    }
  }

  // ---------------------------------------------------------------- checking

  /** Walk the whole log: frame CRCs, positions, hash chain, decryption, decoding. */
  async verify(onProgress?: (entries: number, events: bigint) => void): Promise<VerifyReport> {
    let expectPos = 0n;
    let prevChain = ZERO_CHAIN;
    let prevTime = 0n;
    let entries = 0;
    const versions = new Map<string, bigint>();
    const fail = (position: bigint, code: string, reason: string): VerifyReport => ({
      ok: false,
      entries,
      events: expectPos,
      streams: versions.size,
      problem: { position, code, reason },
      tornTailBytes: 0,
    });
    try {
      for await (const frame of this.backend.scanAll()) {
        if (frame.position !== expectPos) {
          return fail(expectPos, 'TLOG_CORRUPT', `expected an entry at position ${expectPos}, found one at ${frame.position}: entries were removed, inserted or reordered`);
        }
        if (!frame.prevChain.equals(prevChain)) {
          return fail(expectPos, 'TLOG_CHAIN_BROKEN', 'the entry does not link to the previous one (hash chain broken): entries were removed, inserted or reordered');
        }
        const chain = this.#keys.chain(frame.headerBytes, sealTag(frame.ciphertext));
        if (!chain.equals(frame.chain)) {
          return fail(expectPos, 'TLOG_CHAIN_BROKEN', 'the chain value does not match the entry: it was modified (or the key is wrong)');
        }
        if (frame.commitTimeNs < prevTime) {
          return fail(expectPos, 'TLOG_CORRUPT', 'commit time goes backwards');
        }
        const k = frame.streamKey.toString('latin1');
        const v = versions.get(k) ?? -1n;
        if (frame.firstVersion !== v + 1n) {
          return fail(expectPos, 'TLOG_CORRUPT', `stream version ${frame.firstVersion} does not follow ${v}`);
        }
        try {
          await this.#decodeWithSchemaReload(frame, 0n);
        } catch (err) {
          const e = err as ZosError;
          return fail(expectPos, e.code ?? 'TLOG_BAD_RECORD', e.message);
        }
        versions.set(k, v + BigInt(frame.eventCount));
        prevChain = Buffer.from(frame.chain);
        prevTime = frame.commitTimeNs;
        expectPos += BigInt(frame.eventCount);
        entries++;
        if (onProgress && entries % 1000 === 0) onProgress(entries, expectPos);
      }
    } catch (err) {
      if (isZosError(err)) {
        const pos = typeof err.context.position === 'bigint' ? err.context.position : expectPos;
        return fail(pos, err.code, err.message);
      }
      throw err;
    }
    const tail = await this.backend.tailState();
    onProgress?.(entries, expectPos);
    return {
      ok: true,
      entries,
      events: expectPos,
      streams: versions.size,
      problem: null,
      tornTailBytes: tail.kind === 'torn' ? tail.bytes : 0,
    };
  }

  async stats(): Promise<BackendStats> {
    return this.backend.stats();
  }

  async close(): Promise<void> {
    await this.backend.close();
  }
}
