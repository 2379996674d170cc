/**
 * When sealing tries LZ4: incompressible entries skip it even when one part of
 * them compresses well (an entry of several random 1 MiB events with small
 * compressible pieces between them, as vdisk appends are), compressible ones
 * use it.
 */
import t from 'tap';
import { KeyRing, randomBytes } from '../../tlog/crypto.ts';
import { FLAG_LZ4 } from '../../tlog/frame.ts';
import type { EntryBody, EventEnvelope } from '../../tlog/record.ts';
import { sealEntry } from '../../tlog/sealer.ts';

const keys = new KeyRing(randomBytes(32));
const ev = (payload: Buffer): EventEnvelope => ({
  id: randomBytes(16),
  type: 'VdiskBlocksWritten',
  schemaVersion: 1,
  encoding: 'AVRO',
  timestampNs: 1n,
  actor: null,
  correlationId: null,
  causationId: null,
  payload,
});
const body = (...payloads: Buffer[]): EntryBody => ({ stream: 'vdisk-x', events: payloads.map(ev) });

t.test('random data with a compressible piece at the midpoint is not compressed', async (t) => {
  // The body's midpoint lands in the zeroes at the start of the second payload.
  const sealed = sealEntry(keys, body(randomBytes(1 << 20), Buffer.concat([Buffer.alloc(16 * 1024), randomBytes(1 << 20)])));
  t.equal(sealed.flags & FLAG_LZ4, 0, 'stored without LZ4');
});

t.test('compressible large entries are compressed', async (t) => {
  const text = Buffer.from('zos vdisk block '.repeat(1 << 16));
  const sealed = sealEntry(keys, body(text, text));
  t.equal(sealed.flags & FLAG_LZ4, FLAG_LZ4, 'stored with LZ4');
  t.ok(sealed.ciphertext.length < text.length / 4, 'and much smaller');
});

t.test('half compressible, half random: compressed when it pays', async (t) => {
  const sealed = sealEntry(keys, body(Buffer.alloc(1 << 20, 7), randomBytes(1 << 20)));
  t.equal(sealed.flags & FLAG_LZ4, FLAG_LZ4, 'stored with LZ4');
  t.ok(sealed.ciphertext.length < 1.2 * (1 << 20), 'about half the size');
});
