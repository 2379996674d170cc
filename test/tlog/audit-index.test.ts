/** The audit index is a projection: exact answers, rebuildable, no plaintext. */
import t from 'tap';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AuditIndex } from '../../projections/index.ts';
import { readDataDirMeta, type RecordedEvent } from '../../tlog/index.ts';
import { openTempLog } from '../helpers/tmp.ts';

async function collect(it: AsyncIterable<RecordedEvent>): Promise<string[]> {
  const out: string[] = [];
  for await (const e of it) out.push(`${e.position}:${e.stream}:${e.type}:${e.actor}`);
  return out;
}

t.test('answers by actor, type, stream and time; rebuilds to the same answers', async (t) => {
  const { log, dir } = await openTempLog(t);
  const actors = ['alice', 'bob', 'carol-the-auditor'];
  const times: bigint[] = [];
  for (let i = 0; i < 300; i++) {
    const r = await log.appendToStream(`vm-${i % 4}`, [{ type: i % 3 === 0 ? 'VmStarted' : 'DiskWritten', data: { i } }], { actor: actors[i % 3]! });
    times.push(r.commitTimeNs);
  }
  // A batch with per-event actors.
  await log.appendToStream('vm-9', [{ type: 'VmStopped', data: {}, actor: 'bob' }, { type: 'VmStopped', data: {}, actor: 'carol-the-auditor' }], { actor: 'alice' });
  const viewDir = join(dir, 'views', 'audit');
  const logId = Buffer.from(readDataDirMeta(dir).logId, 'hex');
  const idx = await AuditIndex.open(log, viewDir, logId);

  const all: RecordedEvent[] = [];
  for await (const e of log.readAll()) all.push(e);
  const expect = (f: (e: RecordedEvent) => boolean): string[] => all.filter(f).map((e) => `${e.position}:${e.stream}:${e.type}:${e.actor}`);

  const queries = [
    { q: { actor: 'bob' }, f: (e: RecordedEvent) => e.actor === 'bob' },
    { q: { type: 'VmStarted' }, f: (e: RecordedEvent) => e.type === 'VmStarted' },
    { q: { stream: 'vm-2', actor: 'carol-the-auditor' }, f: (e: RecordedEvent) => e.stream === 'vm-2' && e.actor === 'carol-the-auditor' },
    { q: { sinceNs: times[100]!, untilNs: times[199]! }, f: (e: RecordedEvent) => e.commitTimeNs >= times[100]! && e.commitTimeNs <= times[199]! },
    { q: { actor: 'alice', sinceNs: times[250]! }, f: (e: RecordedEvent) => e.actor === 'alice' && e.commitTimeNs >= times[250]! },
    { q: { actor: 'nobody' }, f: () => false },
  ];
  const first: string[][] = [];
  for (const { q, f } of queries) {
    const got = await collect(idx.query(q));
    t.same(got, expect(f), `query ${JSON.stringify(q, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    first.push(got);
  }
  t.same(await collect(idx.query({ actor: 'bob', limit: 3 })), expect((e) => e.actor === 'bob').slice(0, 3), 'limit');
  t.equal(idx.indexedEvents, all.length);

  const rows = readFileSync(join(viewDir, 'rows.v1'));
  for (const s of ['alice', 'carol-the-auditor', 'VmStarted', 'vm-2']) t.equal(rows.indexOf(s), -1, `no plaintext "${s}" in the index`);
  await idx.close();

  // It is a cache: delete it and it rebuilds to the same answers.
  rmSync(viewDir, { recursive: true, force: true });
  const rebuilt = await AuditIndex.open(log, viewDir, logId);
  for (const [i, { q }] of queries.entries()) t.same(await collect(rebuilt.query(q)), first[i], `rebuilt answers query ${i}`);
  t.ok(readFileSync(join(viewDir, 'rows.v1')).equals(rows), 'rebuilt index is byte-identical');

  // It follows new appends.
  await log.appendToStream('vm-0', [{ type: 'VmStarted', data: {} }], { actor: 'dave' });
  t.equal((await collect(rebuilt.query({ actor: 'dave' }))).length, 1);
  await rebuilt.close();
});
