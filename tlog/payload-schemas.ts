/**
 * Event payload encoding. A type with a registered Avro schema is stored as
 * Avro with its schema version; reading an old version resolves it to the
 * newest registered schema (Avro schema resolution). Unregistered types are
 * stored as MessagePack.
 */
import avro from 'avsc';
import { Decoder, Encoder } from '@msgpack/msgpack';

// One encoder and decoder for the process: creating them per event dominated
// encoding cost (each new encoder allocates and grows its own buffer).
const encoder = new Encoder();
const decoder = new Decoder();
import { ZosError } from './errors.ts';

export interface EncodedPayload {
  encoding: 'MSGPACK' | 'AVRO';
  schemaVersion: number;
  bytes: Buffer;
}

interface TypeSchemas {
  versions: Map<number, avro.Type>;
  latest: number;
  resolvers: Map<number, avro.Resolver>;
}

export class PayloadSchemas {
  readonly #types = new Map<string, TypeSchemas>();

  /**
   * Register version `version` of the Avro schema for `type`. The newest
   * version must be able to read every older one, or registration fails.
   * Registering the same version twice with an identical schema is a no-op.
   */
  register(type: string, version: number, schema: unknown): void {
    if (!Number.isInteger(version) || version < 1) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `schema version for ${type} must be an integer >= 1 (got ${version})`);
    }
    let avroType: avro.Type;
    try {
      avroType = avro.Type.forSchema(schema as avro.Schema);
    } catch (err) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `schema ${type} v${version} is not a valid Avro schema: ${(err as Error).message}`, { cause: err });
    }
    let entry = this.#types.get(type);
    if (!entry) {
      entry = { versions: new Map(), latest: 0, resolvers: new Map() };
      this.#types.set(type, entry);
    }
    const existing = entry.versions.get(version);
    if (existing) {
      if (existing.fingerprint().equals(avroType.fingerprint())) return;
      throw new ZosError('TLOG_SCHEMA_INCOMPATIBLE', `schema ${type} v${version} is already registered with a different definition; register a new version instead`);
    }
    const latest = Math.max(entry.latest, version);
    const reader = latest === version ? avroType : entry.versions.get(latest)!;
    const all = new Map(entry.versions).set(version, avroType);
    for (const [v, writer] of all) {
      if (v === latest) continue;
      try {
        reader.createResolver(writer);
      } catch (err) {
        throw new ZosError('TLOG_SCHEMA_INCOMPATIBLE', `schema ${type} v${latest} cannot read v${v}: ${(err as Error).message}`, { cause: err });
      }
    }
    entry.versions.set(version, avroType);
    entry.latest = latest;
    entry.resolvers.clear();
  }

  has(type: string): boolean {
    return this.#types.has(type);
  }

  latestVersion(type: string): number {
    return this.#types.get(type)?.latest ?? 0;
  }

  encode(type: string, data: unknown): EncodedPayload {
    const entry = this.#types.get(type);
    if (!entry) {
      let bytes: Uint8Array;
      try {
        bytes = encoder.encode(data);
      } catch (err) {
        throw new ZosError('TLOG_INVALID_ARGUMENT', `payload of ${type} cannot be encoded as MessagePack: ${(err as Error).message}`, { cause: err });
      }
      return { encoding: 'MSGPACK', schemaVersion: 0, bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    }
    const avroType = entry.versions.get(entry.latest)!;
    const errors: string[] = [];
    if (!avroType.isValid(data, { errorHook: (path) => errors.push(path.join('.') || '(root)') })) {
      throw new ZosError('TLOG_INVALID_ARGUMENT', `payload of ${type} does not match its schema v${entry.latest} at: ${errors.join(', ')}`);
    }
    return { encoding: 'AVRO', schemaVersion: entry.latest, bytes: avroType.toBuffer(data) };
  }

  decode(type: string, encoding: 'MSGPACK' | 'AVRO', schemaVersion: number, bytes: Buffer): unknown {
    if (encoding === 'MSGPACK') {
      try {
        return decoder.decode(bytes);
      } catch (err) {
        throw new ZosError('TLOG_BAD_RECORD', `payload of ${type} is not valid MessagePack: ${(err as Error).message}`, { cause: err });
      }
    }
    const entry = this.#types.get(type);
    const writer = entry?.versions.get(schemaVersion);
    if (!entry || !writer) {
      throw new ZosError('TLOG_UNKNOWN_SCHEMA', `event type ${type} was written with Avro schema v${schemaVersion}, which is not registered; register it (zos schema register) to read it`);
    }
    try {
      if (schemaVersion === entry.latest) return writer.fromBuffer(bytes);
      let resolver = entry.resolvers.get(schemaVersion);
      if (!resolver) {
        resolver = entry.versions.get(entry.latest)!.createResolver(writer);
        entry.resolvers.set(schemaVersion, resolver);
      }
      return entry.versions.get(entry.latest)!.fromBuffer(bytes, resolver);
    } catch (err) {
      throw new ZosError('TLOG_BAD_RECORD', `payload of ${type} v${schemaVersion} could not be decoded: ${(err as Error).message}`, { cause: err });
    }
  }
}
