/**
 * At-rest confidentiality: nothing a caller puts into the log — stream names,
 * event types, actors, correlation ids, payloads, schema definitions — appears
 * in any file of the data directory (other than the key file), in plain UTF-8,
 * UTF-16, hex or base64. The master key's bytes appear only in master.key.
 * Every entry is sealed under a fresh random nonce: identical appends produce
 * different ciphertexts.
 */
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { sealTag, KeyRing, randomBytes } from '../../tlog/crypto.ts';
import { decodeFrame, encodeFrame, encodeHeader, type Frame } from '../../tlog/frame.ts';
import type { EntryBody } from '../../tlog/record.ts';
import { openEntryBody, sealEntry } from '../../tlog/sealer.ts';
import { openTempLog } from '../helpers/tmp.ts';
import { collect, readSegment, segmentPaths } from './fixtures/log.ts';

const SECRETS = {
  stream: 'SECRET-STREAM-xyz',
  otherStream: 'SECRET-OTHER-STREAM-qrs',
  type: 'SecretTypeAbc',
  actor: 'secret-actor-42',
  correlation: 'secret-correlation-9',
  causation: 'secret-causation-8',
  payload: 'very-private-payload-123',
  payloadKey: 'privateFieldName',
  schemaType: 'SecretSchemaType',
  schemaField: 'secretSchemaField',
};

function allFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...allFiles(p));
    else out.push(p);
  }
  return out;
}

/** Where (file, encoding) `needle` occurs among `files`. */
function occurrences(files: Array<[string, Buffer]>, needle: string): string[] {
  const forms: Array<[string, Buffer]> = [
    ['utf8', Buffer.from(needle, 'utf8')],
    ['utf16le', Buffer.from(needle, 'utf16le')],
    ['hex', Buffer.from(Buffer.from(needle).toString('hex'))],
    ['base64', Buffer.from(Buffer.from(needle).toString('base64').replace(/=+$/, '').slice(0, -2))],
  ];
  const hits: string[] = [];
  for (const [path, bytes] of files) {
    for (const [enc, form] of forms) if (bytes.includes(form)) hits.push(`${path} (${enc})`);
  }
  return hits;
}

t.test('no stream name, type, actor, id or payload is stored in plaintext anywhere in the data dir', async (t) => {
  const { log, dir } = await openTempLog(t);
  await log.registerSchema(SECRETS.schemaType, 1, {
    type: 'record',
    name: 'SecretRecord',
    fields: [{ name: SECRETS.schemaField, type: 'string' }],
  });
  // Small entries are stored uncompressed, large repetitive ones LZ4-compressed: cover both.
  await log.appendToStream(SECRETS.stream, [{ type: SECRETS.type, data: { [SECRETS.payloadKey]: SECRETS.payload } }], {
    actor: SECRETS.actor,
    correlationId: SECRETS.correlation,
    causationId: SECRETS.causation,
  });
  await log.appendToStream(
    SECRETS.stream,
    Array.from({ length: 20 }, () => ({ type: SECRETS.type, data: { [SECRETS.payloadKey]: SECRETS.payload.repeat(20) }, actor: SECRETS.actor })),
  );
  await log.appendToStream(SECRETS.otherStream, [{ type: SECRETS.schemaType, data: { [SECRETS.schemaField]: SECRETS.payload } }]);

  // The secrets really went in (and come back out with the key).
  const events = await collect(log.readStream(SECRETS.stream));
  t.equal(events.length, 21);
  t.equal(events[0]!.actor, SECRETS.actor);
  t.same(events[0]!.data, { [SECRETS.payloadKey]: SECRETS.payload });
  const avroEvents = await collect(log.readStream(SECRETS.otherStream));
  t.equal(avroEvents[0]!.encoding, 'avro', 'the schema-typed event is stored as Avro');
  await log.close();

  const keyFile = join(dir, 'master.key');
  const files = allFiles(dir)
    .filter((p) => p !== keyFile)
    .map((p): [string, Buffer] => [relative(dir, p), readFileSync(p)]);
  t.ok(
    files.some(([p]) => p.endsWith('.seg')),
    `segments are among the files searched: ${files.map(([p]) => p).join(', ')}`,
  );
  t.ok(
    files.some(([p]) => p.endsWith('entries.idx')),
    'the entry index is among the files searched',
  );
  t.ok(files.reduce((n, [, b]) => n + b.length, 0) > 2000, 'the files hold the data (not empty)');

  for (const [what, secret] of Object.entries(SECRETS)) {
    t.same(occurrences(files, secret), [], `${what} "${secret}" appears nowhere outside master.key`);
  }

  // The master key itself lives only in master.key.
  const key = Buffer.from(/^zos-master-key v1 (\S+)/.exec(readFileSync(keyFile, 'utf8'))![1]!, 'base64');
  const keyForms = [key, Buffer.from(key.toString('hex')), Buffer.from(key.toString('base64'))];
  const keyHits = files.filter(([, b]) => keyForms.some((k) => b.includes(k))).map(([p]) => p);
  t.same(keyHits, [], 'master key bytes appear in no other file');
});

t.test('the search above would find plaintext if it were there (method check)', async (t) => {
  const files: Array<[string, Buffer]> = [
    ['a', Buffer.from(`xx${SECRETS.payload}yy`)],
    ['b', Buffer.from(Buffer.from(SECRETS.stream).toString('hex'))],
    ['c', Buffer.from(`--${Buffer.from(SECRETS.actor).toString('base64')}--`)],
    ['d', Buffer.from(SECRETS.type, 'utf16le')],
  ];
  t.same(occurrences(files, SECRETS.payload), ['a (utf8)']);
  t.same(occurrences(files, SECRETS.stream), ['b (hex)']);
  t.same(occurrences(files, SECRETS.actor), ['c (base64)']);
  t.same(occurrences(files, SECRETS.type), ['d (utf16le)']);
});

/** Number of differing bits. */
function hamming(a: Buffer, b: Buffer): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    let x = a[i]! ^ b[i]!;
    while (x) {
      n += x & 1;
      x >>= 1;
    }
  }
  return n;
}

t.test('identical appends are sealed under distinct random nonces with different ciphertexts', async (t) => {
  const { log, dir } = await openTempLog(t, { segmentMaxBytes: 4096 });
  const id = '6f1c7a52-3b9e-4d21-8f0a-5c4e2b1d9a77';
  const N = 40;
  for (let i = 0; i < N; i++) {
    await log.appendToStream('same-stream', [{ id, type: 'Same', data: { same: 'content' } }], { actor: 'same-actor' });
  }
  await log.close();

  const frames: Frame[] = segmentPaths(dir).flatMap((p) => readSegment(p).frames.map((f) => f.frame));
  t.equal(frames.length, N, 'one frame per append');
  t.ok(segmentPaths(dir).length > 1, 'spread over several segments');
  const nonces = frames.map((f) => f.nonce.toString('hex'));
  t.equal(new Set(nonces).size, N, 'all nonces distinct');
  t.notOk(
    frames.some((f) => f.nonce.every((x) => x === 0)),
    'no all-zero nonce',
  );
  const cts = frames.map((f) => f.ciphertext.toString('hex'));
  t.equal(new Set(cts).size, N, 'all ciphertexts distinct');
  // A counter or a fixed prefix would leave consecutive nonces a few bits apart; random 192-bit nonces differ in ~96.
  const minDistance = Math.min(...frames.slice(1).map((f, i) => hamming(f.nonce, frames[i]!.nonce)));
  t.ok(minDistance > 40, `consecutive nonces look random (min Hamming distance ${minDistance} of 192 bits)`);
});

t.test('sealing the very same entry body twice gives different nonces and ciphertexts that both open to it', async (t) => {
  const keys = new KeyRing(randomBytes(32));
  const body: EntryBody = {
    stream: SECRETS.stream,
    events: [
      {
        id: Buffer.alloc(16, 1),
        type: SECRETS.type,
        schemaVersion: 0,
        encoding: 'MSGPACK',
        timestampNs: 123n,
        actor: SECRETS.actor,
        correlationId: null,
        causationId: null,
        payload: Buffer.from(SECRETS.payload),
      },
    ],
  };
  const a = sealEntry(keys, body);
  const b = sealEntry(keys, body);
  t.notOk(a.nonce.equals(b.nonce), 'nonces differ');
  t.notOk(a.ciphertext.equals(b.ciphertext), 'ciphertexts differ');
  t.ok(a.streamKey.equals(b.streamKey), 'same stream key (a keyed hash of the name)');
  t.notOk(a.streamKey.includes(Buffer.from(SECRETS.stream)), 'stream key does not contain the name');
  t.notOk(a.ciphertext.includes(Buffer.from(SECRETS.payload)), 'ciphertext does not contain the payload');
  for (const s of [a, b]) {
    const header = encodeHeader({ flags: s.flags, eventCount: 1, position: 0n, firstVersion: 0n, commitTimeNs: 1n, streamKey: s.streamKey, prevChain: Buffer.alloc(32), nonce: s.nonce });
    const d = decodeFrame(encodeFrame(header, s.ciphertext, keys.chain(header, sealTag(s.ciphertext))));
    if (d.kind !== 'frame') {
      t.fail(`frame does not decode: ${d.kind}`);
      continue;
    }
    const opened = openEntryBody(keys, d.frame);
    t.equal(opened.stream, SECRETS.stream);
    t.ok(opened.events[0]!.payload.equals(Buffer.from(SECRETS.payload)), 'opens to the same payload');
  }
});
