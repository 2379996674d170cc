/**
 * Record format v1: the plaintext inside an entry, before compression and
 * encryption. Avro (avsc), with this schema (the "EntryBody" v1):
 *
 *   record EntryBody {
 *     string stream;                       // the stream name (never stored in plaintext)
 *     array<EventEnvelope> events;
 *   }
 *   record EventEnvelope {
 *     fixed(16) id;                        // event id (UUID bytes)
 *     string type;
 *     int schemaVersion;                   // payload schema version; 0 for MessagePack
 *     enum PayloadEncoding { MSGPACK, AVRO } encoding;
 *     long timestampNs;                    // creation time, Unix ns
 *     union { null, string } actor;
 *     union { null, string } correlationId;
 *     union { null, string } causationId;
 *     bytes payload;
 *   }
 *
 * Stream version and global position are not inside the envelope: they are
 * assigned at commit and live in the (authenticated) frame header.
 */
import avro from 'avsc';
import { ZosError } from './errors.ts';

export const RECORD_FORMAT_VERSION = 1;

const bigLong = avro.types.LongType.__with({
  fromBuffer: (buf: Buffer) => buf.readBigInt64LE(),
  toBuffer: (n: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigInt64LE(n);
    return b;
  },
  fromJSON: (v: unknown) => BigInt(v as string),
  toJSON: (n: bigint) => n.toString(),
  isValid: (n: unknown) => typeof n === 'bigint',
  compare: (a: bigint, b: bigint) => (a === b ? 0 : a < b ? -1 : 1),
});

export const ENTRY_BODY_SCHEMA_V1 = {
  type: 'record',
  name: 'EntryBody',
  namespace: 'zos.tlog.v1',
  fields: [
    { name: 'stream', type: 'string' },
    {
      name: 'events',
      type: {
        type: 'array',
        items: {
          type: 'record',
          name: 'EventEnvelope',
          fields: [
            { name: 'id', type: { type: 'fixed', name: 'EventId', size: 16 } },
            { name: 'type', type: 'string' },
            { name: 'schemaVersion', type: 'int' },
            { name: 'encoding', type: { type: 'enum', name: 'PayloadEncoding', symbols: ['MSGPACK', 'AVRO'] } },
            { name: 'timestampNs', type: 'long' },
            { name: 'actor', type: ['null', 'string'] },
            { name: 'correlationId', type: ['null', 'string'] },
            { name: 'causationId', type: ['null', 'string'] },
            { name: 'payload', type: 'bytes' },
          ],
        },
      },
    },
  ],
} as const;

const entryBodyType = avro.Type.forSchema(ENTRY_BODY_SCHEMA_V1 as unknown as avro.Schema, {
  registry: { long: bigLong as unknown as avro.Type },
});

export interface EventEnvelope {
  id: Buffer;
  type: string;
  schemaVersion: number;
  encoding: 'MSGPACK' | 'AVRO';
  timestampNs: bigint;
  actor: string | null;
  correlationId: string | null;
  causationId: string | null;
  payload: Buffer;
}

export interface EntryBody {
  stream: string;
  events: EventEnvelope[];
}

export function encodeEntryBody(body: EntryBody): Buffer {
  return entryBodyType.toBuffer(body);
}

/** Decode an entry body; throws TLOG_BAD_RECORD on anything malformed. */
export function decodeEntryBody(buf: Buffer): EntryBody {
  let value: unknown;
  try {
    // fromBuffer rejects trailing bytes and truncated input.
    value = entryBodyType.fromBuffer(buf);
  } catch (err) {
    throw new ZosError('TLOG_BAD_RECORD', `entry body is not a valid v${RECORD_FORMAT_VERSION} record: ${(err as Error).message}`, { cause: err });
  }
  return value as EntryBody;
}

const HEX = /^[0-9a-f]{32}$/;

export function uuidToBytes(id: string): Buffer {
  const hex = id.replaceAll('-', '').toLowerCase();
  if (!HEX.test(hex)) throw new ZosError('TLOG_INVALID_ARGUMENT', `event id "${id}" is not a UUID (32 hex digits, dashes optional)`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
