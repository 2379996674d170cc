/**
 * Sealing: entry body → Avro → LZ4 (when it helps) → XChaCha20-Poly1305 under
 * the stream's key with a random nonce. Opening reverses it and turns the
 * envelopes into RecordedEvents using the frame header's position/version.
 */
import { compressSync, uncompressSync } from 'lz4-napi';
import { open, seal, sealTag, type KeyRing } from './crypto.ts';
import { ZosError } from './errors.ts';
import { entryAd, FLAG_LZ4, type Frame } from './frame.ts';
import { bytesToUuid, decodeEntryBody, encodeEntryBody, type EntryBody } from './record.ts';
import type { PayloadSchemas } from './payload-schemas.ts';
import { asPosition, type RecordedEvent } from './types.ts';

/** An entry ready for a backend: everything but position, version, time and chain. */
export interface SealedEntry {
  streamKey: Buffer;
  eventCount: number;
  flags: number;
  nonce: Buffer;
  ciphertext: Buffer;
  /** The ciphertext's Poly1305 tag: the chain value covers it. */
  tag: Uint8Array;
}

/** Plaintext smaller than this is stored uncompressed (LZ4 rarely wins there). */
const COMPRESS_MIN_BYTES = 96;

/**
 * Large inputs: try LZ4 on four 2 KiB samples spread over the body first, and
 * skip it when they do not shrink by 10 %. One sample in the middle was fooled
 * by entries of several events (a compressible header at the midpoint of
 * otherwise random block data).
 */
function looksCompressible(plain: Buffer): boolean {
  if (plain.length < 16 * 1024) return true;
  const window = 2048;
  let raw = 0;
  let packed = 0;
  for (let i = 1; i < 8; i += 2) {
    const at = Math.floor((plain.length * i) / 8);
    const sample = plain.subarray(at, at + window);
    raw += sample.length;
    packed += compressSync(sample).length;
  }
  return packed < raw * 0.9;
}

export function sealEntry(keys: KeyRing, body: EntryBody): SealedEntry {
  const streamKey = keys.streamKey(body.stream);
  const plain = encodeEntryBody(body);
  let flags = 0;
  let payload = plain;
  if (plain.length >= COMPRESS_MIN_BYTES && looksCompressible(plain)) {
    const compressed = compressSync(plain);
    if (compressed.length < plain.length) {
      payload = compressed;
      flags |= FLAG_LZ4;
    }
  }
  const { nonce, ciphertext } = seal(payload, entryAd(streamKey, flags), keys.entryKey(streamKey));
  return { streamKey, eventCount: body.events.length, flags, nonce, ciphertext, tag: sealTag(ciphertext) };
}

/** Decrypt and decode an entry's body. Throws TLOG_DECRYPT_FAILED / TLOG_BAD_RECORD. */
/** LZ4 cannot expand more than ~255×; and no entry body is larger than this. */
const MAX_PLAINTEXT_BYTES = 512 * 1024 * 1024;

export function openEntryBody(keys: KeyRing, frame: Frame): EntryBody {
  // The chain value authenticates the header (position, versions, time, flags)
  // as well as the ciphertext: check it before trusting any of them.
  if (!keys.chain(frame.headerBytes, sealTag(frame.ciphertext)).equals(frame.chain)) {
    throw new ZosError('TLOG_DECRYPT_FAILED', `entry at position ${frame.position} failed authentication: its header or ciphertext was changed, or the key is wrong`, {
      context: { position: frame.position },
    });
  }
  const plain = open(frame.ciphertext, entryAd(frame.streamKey, frame.flags), frame.nonce, keys.entryKey(frame.streamKey));
  if (!plain) {
    throw new ZosError('TLOG_DECRYPT_FAILED', `entry at position ${frame.position} failed authentication: the key is wrong or the entry was tampered with`, {
      context: { position: frame.position },
    });
  }
  let bytes = plain;
  if (frame.flags & FLAG_LZ4) {
    const declared = plain.length >= 4 ? plain.readUInt32LE(0) : -1;
    if (declared < 0 || declared > Math.min(MAX_PLAINTEXT_BYTES, (plain.length - 4) * 255 + 64)) {
      throw new ZosError('TLOG_BAD_RECORD', `entry at position ${frame.position} declares an impossible decompressed size (${declared} bytes from ${plain.length})`);
    }
    try {
      bytes = uncompressSync(plain);
      if (bytes.length !== declared) throw new Error(`decompressed to ${bytes.length} bytes, header says ${declared}`);
    } catch (err) {
      throw new ZosError('TLOG_BAD_RECORD', `entry at position ${frame.position} does not decompress: ${(err as Error).message}`, { cause: err });
    }
  }
  const body = decodeEntryBody(bytes, frame.eventCount);
  if (body.events.length !== frame.eventCount) {
    throw new ZosError('TLOG_BAD_RECORD', `entry at position ${frame.position} holds ${body.events.length} events but its header says ${frame.eventCount}`);
  }
  if (!keys.streamKey(body.stream).equals(frame.streamKey)) {
    throw new ZosError('TLOG_BAD_RECORD', `entry at position ${frame.position} names a stream that does not match its stream key`);
  }
  return body;
}

export function toRecordedEvents(
  frame: Frame,
  body: EntryBody,
  schemas: PayloadSchemas,
  fromIndex = 0,
): RecordedEvent[] {
  const out: RecordedEvent[] = [];
  for (let i = fromIndex; i < body.events.length; i++) {
    const e = body.events[i]!;
    out.push({
      id: bytesToUuid(e.id),
      stream: body.stream,
      type: e.type,
      version: frame.firstVersion + BigInt(i),
      position: asPosition(frame.position + BigInt(i)),
      timestampNs: e.timestampNs,
      commitTimeNs: frame.commitTimeNs,
      actor: e.actor,
      correlationId: e.correlationId,
      causationId: e.causationId,
      schemaVersion: e.schemaVersion,
      encoding: e.encoding === 'AVRO' ? 'avro' : 'msgpack',
      data: schemas.decode(e.type, e.encoding, e.schemaVersion, e.payload),
    });
  }
  return out;
}
