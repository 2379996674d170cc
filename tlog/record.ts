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
import { randomBytes } from './crypto.ts';

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
const envelopeType = avro.Type.forSchema(ENTRY_BODY_SCHEMA_V1.fields[1].type.items as unknown as avro.Schema, {
  registry: { long: bigLong as unknown as avro.Type },
});
const stringType = avro.Type.forSchema('string');
const countType = avro.Type.forSchema('long');
/** The smallest encoding of one EventEnvelope: 16-byte id + 8 one-byte fields. */
const MIN_ENVELOPE_BYTES = 24;

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

function bad(reason: string, cause?: unknown): ZosError {
  return new ZosError('TLOG_BAD_RECORD', `entry body is not a valid v${RECORD_FORMAT_VERSION} record: ${reason}`, cause === undefined ? {} : { cause });
}

function decodeAt(type: avro.Type, buf: Buffer, pos: number, what: string): { value: unknown; offset: number } {
  let r: { value: unknown; offset: number };
  try {
    r = type.decode(buf, pos) as { value: unknown; offset: number };
  } catch (err) {
    throw bad(`${what}: ${(err as Error).message}`, err);
  }
  if (r.offset < 0) throw bad(`${what} is truncated`);
  return r;
}

/**
 * Decode an entry body; throws TLOG_BAD_RECORD on anything malformed. The
 * events array is read block by block so that a declared item count can never
 * make it allocate more than the bytes could hold (or than `maxEvents`).
 */
export function decodeEntryBody(buf: Buffer, maxEvents = Number.MAX_SAFE_INTEGER): EntryBody {
  const s = decodeAt(stringType, buf, 0, 'stream name');
  let pos = s.offset;
  const events: EventEnvelope[] = [];
  for (;;) {
    const c = decodeAt(countType, buf, pos, 'event block count');
    pos = c.offset;
    let count = c.value as number;
    if (count === 0) break;
    if (count < 0) {
      count = -count;
      pos = decodeAt(countType, buf, pos, 'event block size').offset;
    }
    if (count > maxEvents - events.length) throw bad(`declares more events than the entry holds (${events.length + count} > ${maxEvents})`);
    if (count * MIN_ENVELOPE_BYTES > buf.length - pos) throw bad(`declares ${count} events in ${buf.length - pos} bytes`);
    for (let i = 0; i < count; i++) {
      const e = decodeAt(envelopeType, buf, pos, `event ${events.length}`);
      events.push(e.value as EventEnvelope);
      pos = e.offset;
    }
  }
  if (pos !== buf.length) throw bad(`${buf.length - pos} trailing bytes`);
  return { stream: s.value as string, events };
}

const HEX = /^[0-9a-f]{32}$/;

export function uuidToBytes(id: string): Buffer {
  const hex = id.replaceAll('-', '').toLowerCase();
  if (!HEX.test(hex)) throw new ZosError('TLOG_INVALID_ARGUMENT', `event id "${id}" is not a UUID (32 hex digits, dashes optional)`);
  return Buffer.from(hex, 'hex');
}

let idPool: Buffer = Buffer.alloc(0);
let idPoolAt = 0;

/** A random (version 4) UUID as 16 bytes, from a pooled random buffer. */
export function randomEventId(): Buffer {
  if (idPoolAt + 16 > idPool.length) {
    idPool = randomBytes(16 * 512);
    idPoolAt = 0;
  }
  const id = Buffer.from(idPool.subarray(idPoolAt, idPoolAt + 16));
  idPoolAt += 16;
  id[6] = (id[6]! & 0x0f) | 0x40;
  id[8] = (id[8]! & 0x3f) | 0x80;
  return id;
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
