/**
 * The log contract: behaviour every backend must show, run unchanged against
 * each of them (file now, kafka next). A backend's test file calls
 * runLogContract with a factory that opens a fresh, empty log.
 */
import type { Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { isZosError, type Tlog, type RecordedEvent } from '../../../tlog/index.ts';
import { waitFor } from '../../helpers/tmp.ts';

export interface ContractLog {
  log: Tlog;
  /** Close and open the same log again (a restart). */
  reopen(): Promise<Tlog>;
}

export type LogFactory = (t: Test) => Promise<ContractLog>;

async function collect<T>(it: AsyncIterable<T>, max = Infinity): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) {
    out.push(x);
    if (out.length >= max) break;
  }
  return out;
}

async function expectConflict(t: Test, p: Promise<unknown>, expected: string, actual: string): Promise<void> {
  try {
    await p;
    t.fail(`append should have failed with a version conflict (expected ${expected}, actual ${actual})`);
  } catch (err) {
    t.ok(isZosError(err, 'TLOG_VERSION_CONFLICT'), `conflict error code (got ${(err as Error).message})`);
    if (isZosError(err)) {
      t.equal(err.context.expected, expected, 'error names the expected version');
      t.equal(err.context.actual, actual, 'error names the actual version');
      t.match(err.message, new RegExp(`expected version ${expected}.*actual ${actual}`));
    }
  }
}

export function runLogContract(t: Test, factory: LogFactory): void {
  t.test('appends with expected versions', async (t) => {
    const { log } = await factory(t);
    const a = await log.appendToStream('orders-1', [{ type: 'OrderPlaced', data: { qty: 2 } }], { expectedVersion: 'no-stream', actor: 'alice' });
    t.equal(a.firstVersion, 0n);
    t.equal(a.nextExpectedVersion, 0n);
    t.equal(a.position, 0n);
    const b = await log.appendToStream('orders-1', [{ type: 'OrderShipped', data: {} }], { expectedVersion: 0n });
    t.equal(b.firstVersion, 1n);
    t.equal(b.position, 1n);
    await expectConflict(t, log.appendToStream('orders-1', [{ type: 'X', data: {} }], { expectedVersion: 0n }), '0', '1');
    await expectConflict(t, log.appendToStream('orders-1', [{ type: 'X', data: {} }], { expectedVersion: 'no-stream' }), 'no-stream', '1');
    await expectConflict(t, log.appendToStream('nothing-here', [{ type: 'X', data: {} }], { expectedVersion: 'exists' }), 'exists', 'no-stream');
    await expectConflict(t, log.appendToStream('nothing-here', [{ type: 'X', data: {} }], { expectedVersion: 5n }), '5', 'no-stream');
    t.equal(await log.streamVersion('orders-1'), 1n, 'failed appends left nothing behind');
    t.equal(await log.streamVersion('nothing-here'), -1n);
    t.equal(await log.headPosition(), 2n);
    const c = await log.appendToStream('orders-1', [{ type: 'Any', data: {} }], { expectedVersion: 'any' });
    t.equal(c.firstVersion, 2n);
    const d = await log.appendToStream('orders-1', [{ type: 'Exists', data: {} }], { expectedVersion: 'exists' });
    t.equal(d.firstVersion, 3n);
  });

  t.test('a batch is appended atomically with consecutive versions and positions', async (t) => {
    const { log } = await factory(t);
    await log.appendToStream('other', [{ type: 'A', data: 1 }]);
    const r = await log.appendToStream('batch', [1, 2, 3, 4, 5].map((i) => ({ type: 'N', data: { i } })), { expectedVersion: 'no-stream' });
    t.equal(r.firstVersion, 0n);
    t.equal(r.nextExpectedVersion, 4n);
    t.equal(r.position, 1n);
    t.equal(r.lastPosition, 5n);
    const events = await collect(log.readStream('batch'));
    t.same(events.map((e) => e.data), [1, 2, 3, 4, 5].map((i) => ({ i })));
    t.same(events.map((e) => e.version), [0n, 1n, 2n, 3n, 4n]);
    t.same(events.map((e) => e.position), [1n, 2n, 3n, 4n, 5n]);
    // A conflicting batch adds none of its events.
    await expectConflict(t, log.appendToStream('batch', [{ type: 'N', data: 6 }, { type: 'N', data: 7 }], { expectedVersion: 2n }), '2', '4');
    t.equal((await collect(log.readStream('batch'))).length, 5);
  });

  t.test('event fields round-trip', async (t) => {
    const { log } = await factory(t);
    const id = '0f8fad5b-d9cb-469f-a165-70867728950e';
    const data = { n: 1.5, s: 'ünïcødé ✓', nested: { list: [1, 'two', null, true] }, bin: new Uint8Array([0, 1, 255]) };
    await log.appendToStream('fields', [{ type: 'Typed', data, id, actor: 'bob' }], { actor: 'alice', correlationId: 'corr-1', causationId: 'cause-1' });
    const [e] = await collect(log.readStream('fields'));
    t.ok(e);
    t.equal(e!.id, id);
    t.equal(e!.stream, 'fields');
    t.equal(e!.type, 'Typed');
    t.equal(e!.actor, 'bob', 'per-event actor overrides the append actor');
    t.equal(e!.correlationId, 'corr-1');
    t.equal(e!.causationId, 'cause-1');
    t.equal(e!.encoding, 'msgpack');
    t.same(e!.data, data);
    t.ok(e!.timestampNs > 1_600_000_000_000_000_000n, 'timestamp is Unix ns');
    t.ok(e!.commitTimeNs >= e!.timestampNs);
  });

  t.test('reads a stream forwards and backwards from a version', async (t) => {
    const { log } = await factory(t);
    for (let i = 0; i < 10; i++) {
      await log.appendToStream('s', [{ type: 'N', data: i }, { type: 'N', data: i + 100 }]);
      await log.appendToStream('noise', [{ type: 'X', data: i }]);
    }
    const fwd = await collect(log.readStream('s', { fromVersion: 5n }));
    t.same(fwd.map((e) => e.version), [5n, 6n, 7n, 8n, 9n, 10n, 11n, 12n, 13n, 14n, 15n, 16n, 17n, 18n, 19n]);
    const limited = await collect(log.readStream('s', { fromVersion: 3n, maxCount: 3 }));
    t.same(limited.map((e) => e.version), [3n, 4n, 5n]);
    const back = await collect(log.readStream('s', { direction: 'backward', fromVersion: 4n }));
    t.same(back.map((e) => e.version), [4n, 3n, 2n, 1n, 0n]);
    const lastTwo = await collect(log.readStream('s', { direction: 'backward', maxCount: 2 }));
    t.same(lastTwo.map((e) => e.version), [19n, 18n]);
    t.same(await collect(log.readStream('never-written')), []);
  });

  t.test('reads the whole log from a position, also from inside an entry', async (t) => {
    const { log } = await factory(t);
    await log.appendToStream('a', [0, 1, 2].map((i) => ({ type: 'N', data: i })));
    await log.appendToStream('b', [3, 4, 5].map((i) => ({ type: 'N', data: i })));
    const all = await collect(log.readAll());
    t.same(all.map((e) => e.data), [0, 1, 2, 3, 4, 5]);
    t.same(all.map((e) => e.position), [0n, 1n, 2n, 3n, 4n, 5n]);
    const mid = await collect(log.readAll(4n));
    t.same(mid.map((e) => e.data), [4, 5], 'starts exactly at position 4, inside the second entry');
    t.same(await collect(log.readAll(6n)), [], 'nothing beyond the end');
  });

  t.test('finds the position for a time', async (t) => {
    const { log } = await factory(t);
    const r1 = await log.appendToStream('t', [{ type: 'N', data: 1 }]);
    const r2 = await log.appendToStream('t', [{ type: 'N', data: 2 }]);
    const r3 = await log.appendToStream('t', [{ type: 'N', data: 3 }]);
    t.ok(r1.commitTimeNs < r2.commitTimeNs && r2.commitTimeNs < r3.commitTimeNs, 'commit times increase');
    t.equal(await log.positionForTime(0n), 0n);
    t.equal(await log.positionForTime(r2.commitTimeNs), r2.position);
    t.equal(await log.positionForTime(r2.commitTimeNs - 1n), r2.position);
    t.equal(await log.positionForTime(r3.commitTimeNs + 1n), 3n, 'after the last entry: the head');
  });

  t.test('subscriptions catch up, follow live, and resume by position', async (t) => {
    const { log, reopen } = await factory(t);
    for (let i = 0; i < 5; i++) await log.appendToStream('sub', [{ type: 'N', data: i }]);
    const seen: RecordedEvent[] = [];
    const ac = new AbortController();
    const consumer = (async () => {
      for await (const e of log.subscribe({ from: 'start', signal: ac.signal })) {
        seen.push(e);
        if (seen.length === 10) break;
      }
    })();
    await waitFor(() => seen.length === 5, 10_000, 'catch-up');
    for (let i = 5; i < 10; i++) await log.appendToStream('sub', [{ type: 'N', data: i }]);
    await consumer;
    ac.abort();
    t.same(seen.map((e) => e.data), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'all events, in order, once');

    // From the end: only new events.
    const fromEnd: RecordedEvent[] = [];
    const ac2 = new AbortController();
    const tailer = (async () => {
      for await (const e of log.subscribe({ from: 'end', signal: ac2.signal })) {
        fromEnd.push(e);
        if (fromEnd.length === 2) break;
      }
    })();
    // Give the subscription a moment to start at the current end, then append.
    await new Promise((r) => setImmediate(r));
    await log.appendToStream('sub', [{ type: 'N', data: 10 }, { type: 'N', data: 11 }]);
    await tailer;
    ac2.abort();
    t.same(fromEnd.map((e) => e.data), [10, 11]);

    // Resume after a "crash": a new instance, from the last processed position + 1.
    const last = seen[6]!.position;
    const log2 = await reopen();
    const resumed = await collect(log2.subscribe({ from: { position: last + 1n }, stopAtEnd: true }));
    t.same(resumed.map((e) => e.data), [7, 8, 9, 10, 11], 'no loss, no duplicates');
  });

  t.test('subscribes from a time', async (t) => {
    const { log } = await factory(t);
    await log.appendToStream('time', [{ type: 'N', data: 'before' }]);
    const r = await log.appendToStream('time', [{ type: 'N', data: 'at' }]);
    await log.appendToStream('time', [{ type: 'N', data: 'after' }]);
    const got = await collect(log.subscribe({ from: { time: r.commitTimeNs }, stopAtEnd: true }));
    t.same(got.map((e) => e.data), ['at', 'after']);
  });

  t.test('concurrent appends with the same expected version: exactly one wins', async (t) => {
    const { log } = await factory(t);
    await log.appendToStream('race', [{ type: 'N', data: 0 }], { expectedVersion: 'no-stream' });
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => log.appendToStream('race', [{ type: 'N', data: i }], { expectedVersion: 0n })),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    t.equal(won.length, 1, 'one winner');
    t.ok(results.filter((r) => r.status === 'rejected').every((r) => isZosError((r as PromiseRejectedResult).reason, 'TLOG_VERSION_CONFLICT')));
    t.equal(await log.streamVersion('race'), 1n);
  });

  t.test('many concurrent appenders lose nothing', async (t) => {
    const { log } = await factory(t);
    const n = 500;
    const results = await Promise.all(Array.from({ length: n }, (_, i) => log.appendToStream(`c-${i % 7}`, [{ type: 'N', data: i }])));
    const positions = results.map((r) => r.position).sort((a, b) => (a < b ? -1 : 1));
    t.same(positions, Array.from({ length: n }, (_, i) => BigInt(i)), 'positions are dense and unique');
    const all = await collect(log.readAll());
    t.equal(all.length, n);
    t.same(new Set(all.map((e) => e.data)).size, n);
    for (let s = 0; s < 7; s++) {
      const versions = (await collect(log.readStream(`c-${s}`))).map((e) => e.version);
      t.same(versions, versions.map((_, i) => BigInt(i)), `stream c-${s} versions are contiguous`);
    }
  });

  t.test('Avro payload schemas with versions; old events read with the new schema', async (t) => {
    const { log, reopen } = await factory(t);
    const v1 = { type: 'record', name: 'OrderPlaced', fields: [{ name: 'qty', type: 'int' }] };
    const v2 = { type: 'record', name: 'OrderPlaced', fields: [{ name: 'qty', type: 'int' }, { name: 'note', type: 'string', default: 'none' }] };
    await log.registerSchema('OrderPlaced', 1, v1);
    await log.appendToStream('avro', [{ type: 'OrderPlaced', data: { qty: 2 } }]);
    await log.registerSchema('OrderPlaced', 2, v2);
    await log.appendToStream('avro', [{ type: 'OrderPlaced', data: { qty: 3, note: 'gift' } }]);
    try {
      await log.appendToStream('avro', [{ type: 'OrderPlaced', data: { qty: 'many' } }]);
      t.fail('payload that does not match the schema is refused');
    } catch (err) {
      t.ok(isZosError(err, 'TLOG_INVALID_ARGUMENT'), 'schema mismatch is an invalid argument');
    }
    const incompatible = { type: 'record', name: 'OrderPlaced', fields: [{ name: 'qty', type: 'int' }, { name: 'must', type: 'string' }] };
    await t.rejects(log.registerSchema('OrderPlaced', 3, incompatible), { code: 'TLOG_SCHEMA_INCOMPATIBLE' });
    const check = async (l: Tlog): Promise<void> => {
      const events = await collect(l.readStream('avro'));
      t.same(events.map((e) => e.data), [{ qty: 2, note: 'none' }, { qty: 3, note: 'gift' }]);
      t.same(events.map((e) => [e.encoding, e.schemaVersion]), [['avro', 1], ['avro', 2]]);
    };
    await check(log);
    await check(await reopen()); // schemas are recovered from the log itself
  });

  t.test('rejects bad input with clear errors and appends nothing', async (t) => {
    const { log } = await factory(t);
    await t.rejects(log.appendToStream('x', []), { code: 'TLOG_INVALID_ARGUMENT' });
    await t.rejects(log.appendToStream('$system', [{ type: 'N', data: 1 }]), { code: 'TLOG_INVALID_ARGUMENT' });
    await t.rejects(log.appendToStream('', [{ type: 'N', data: 1 }]), { code: 'TLOG_INVALID_ARGUMENT' });
    await t.rejects(log.appendToStream('x', [{ type: 'N', data: 1, id: 'not-a-uuid' }]), { code: 'TLOG_INVALID_ARGUMENT' });
    await t.rejects(log.appendToStream('x', [{ type: '', data: 1 }]), { code: 'TLOG_INVALID_ARGUMENT' });
    await t.rejects(log.registerSchema('$SchemaRegistered', 1, { type: 'record', name: 'R', fields: [] }), { code: 'TLOG_INVALID_ARGUMENT' }, 'zos-internal types are reserved');
    const huge = randomBytes(65 * 1024 * 1024); // incompressible
    await t.rejects(log.appendToStream('x', [{ type: 'Big', data: huge }]), { code: 'TLOG_ENTRY_TOO_LARGE' });
    t.equal(await log.headPosition(), 0n);
  });

  t.test('large entries round-trip', async (t) => {
    const { log } = await factory(t);
    const big = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    await log.appendToStream('big', [{ type: 'Blob', data: big }]);
    const [e] = await collect(log.readStream('big'));
    t.ok(Buffer.from(e!.data as Uint8Array).equals(big));
  });

  t.test('everything survives a restart', async (t) => {
    const { log, reopen } = await factory(t);
    for (let i = 0; i < 50; i++) await log.appendToStream(`r-${i % 3}`, [{ type: 'N', data: i }]);
    const before = await collect(log.readAll());
    const log2 = await reopen();
    const after = await collect(log2.readAll());
    t.same(after, before);
    t.equal(await log2.streamVersion('r-0'), 16n);
    const r = await log2.appendToStream('r-0', [{ type: 'N', data: 50 }], { expectedVersion: 16n });
    t.equal(r.position, 50n);
    const report = await log2.verify();
    t.ok(report.ok, `verify: ${JSON.stringify(report.problem)}`);
    t.equal(report.events, 51n);
  });
}
