/**
 * Tlog.open on a damaged log must not leak: every segment and index file it
 * opened before failing is closed again (and the writer lock released), so a
 * long-running process that retries or reports the failure does not run out of
 * file descriptors, and a later writer can take over.
 */
import t from 'tap';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tlog, ZosError } from '../../tlog/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { buildLog, readSegment, segmentPaths, type Append } from './fixtures/log.ts';

const FD_DIR = '/proc/self/fd';
const openFds = (): number => readdirSync(FD_DIR).length;

const appends: Append[] = Array.from({ length: 40 }, (_, i) => ({ stream: `s-${i % 2}`, events: [{ type: 'E', data: { i } }] }));

/** A log of several segments whose last segment has an entry removed from its middle. */
async function damagedLog(dir: string): Promise<void> {
  await buildLog(dir, appends, { segmentMaxBytes: 2048 });
  const segs = segmentPaths(dir);
  const last = segs[segs.length - 1]!;
  const { bytes, frames } = readSegment(last);
  if (frames.length < 3) throw new Error('fixture: last segment too small');
  const f = frames[1]!;
  writeFileSync(last, Buffer.concat([bytes.subarray(0, f.offset), bytes.subarray(f.offset + f.size)]));
}

t.test('opening and closing a healthy log leaves no descriptors behind (method check)', { skip: !existsSync(FD_DIR) && 'needs /proc/self/fd' }, async (t) => {
  const dir = join(tempDir(t), 'data');
  await buildLog(dir, appends, { segmentMaxBytes: 2048 });
  t.ok(segmentPaths(dir).length >= 3, 'fixture has several segments');
  const before = openFds();
  for (let i = 0; i < 5; i++) {
    const log = await Tlog.open({ dataDir: dir, readOnly: i % 2 === 0 });
    await log.verify();
    await log.close();
  }
  t.equal(openFds(), before, 'descriptor count unchanged');
});

for (const readOnly of [true, false]) {
  t.test(`a ${readOnly ? 'read-only' : 'read-write'} open that fails on a damaged log closes every file it opened`, { skip: !existsSync(FD_DIR) && 'needs /proc/self/fd' }, async (t) => {
    const dir = join(tempDir(t), 'data');
    await damagedLog(dir);
    const before = openFds();
    let failures = 0;
    for (let i = 0; i < 5; i++) {
      try {
        const log = await Tlog.open({ dataDir: dir, readOnly });
        await log.close(); // a future tolerant read-only open may succeed: then it must still not leak
      } catch (err) {
        t.ok(err instanceof ZosError, `fails with a ZosError (${(err as Error).message})`);
        failures++;
      }
    }
    t.comment(`${failures} of 5 opens failed`);
    t.equal(openFds(), before, `no descriptors leaked after ${failures} failed opens (before ${before}, after ${openFds()})`);
  });
}

t.test('after a failed read-write open the writer lock is free again', async (t) => {
  const dir = join(tempDir(t), 'data');
  await damagedLog(dir);
  await t.rejects(Tlog.open({ dataDir: dir }), { name: 'ZosError' }, 'the damaged log does not open for writing');
  // A second writer on the same directory must not wait for a lock nobody holds.
  const started = Date.now();
  await t.rejects(Tlog.open({ dataDir: dir }), { name: 'ZosError' }, 'the second attempt fails the same way');
  t.ok(Date.now() - started < 5_000, 'without waiting for a lock');
});
