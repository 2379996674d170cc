/** The same zos walk-through with ZOS_LOG pointing at a real Kafka broker. */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { tempDir } from '../helpers/tmp.ts';
import { kafkaSkip, sharedTestBroker } from '../helpers/kafka.ts';
import { walkThrough, zosRaw } from './walkthrough.ts';

t.test('zos on kafka: same commands, same behaviour', { skip: kafkaSkip() }, async (tt) => {
  const broker = await sharedTestBroker(t);
  const env = { ZOS_LOG: `kafka://${broker.bootstrap}/cli-${randomBytes(4).toString('hex')}` };
  await walkThrough(tt, tempDir(tt), env);

  tt.test('--log on the command line works too, and stats names the topic', async (tt) => {
    const dir = tempDir(tt);
    tt.equal(zosRaw(dir, ['init']).code, 0);
    const log = `kafka://${broker.bootstrap}/cli-flag-${randomBytes(4).toString('hex')}`;
    const r = zosRaw(dir, ['--log', log, 'log', 'append', 's', '--type', 'T']);
    tt.equal(r.code, 0, r.err);
    const s = zosRaw(dir, ['--log', log, '--json', 'log', 'stats']);
    const stats = JSON.parse(s.out) as { kind: string; events: number; location: string };
    tt.equal(stats.kind, 'kafka');
    tt.equal(stats.events, 1);
    tt.match(stats.location, /topic cli-flag-[0-9a-f]+\.tlog/);
    const bad = zosRaw(dir, ['--log', 'kafka://127.0.0.1:1/x', 'log', 'read', 's']);
    tt.equal(bad.code, 1);
    tt.match(bad.err, /cannot reach Kafka at 127\.0\.0\.1:1/);
  });
});
