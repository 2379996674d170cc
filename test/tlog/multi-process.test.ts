/**
 * Several zos processes share one data directory: concurrent appenders never
 * interleave, lose or corrupt entries, and `zos log tail --follow` in another
 * process sees their appends live.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Tlog, initDataDir, type RecordedEvent } from '../../tlog/index.ts';
import { tempDir, waitFor } from '../helpers/tmp.ts';

const APPENDER = fileURLToPath(new URL('../fixtures/multi-appender.ts', import.meta.url));
const ZOS = fileURLToPath(new URL('../../bin/zos.mjs', import.meta.url));

interface Running {
  child: ChildProcess;
  stdout(): string;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(guard);
      resolve({ code, stdout, stderr });
    }),
  );
  return { child, stdout: () => stdout, done };
}

t.test('concurrent appenders in several processes, watched live by zos log tail --follow', async (t) => {
  const dir = tempDir(t);
  initDataDir(dir);
  const WORKERS = 4;
  const COUNT = 400;
  const tail = run([ZOS, 'log', 'tail', '--from', '0', '--follow', '--json'], { ZOS_DATA_DIR: dir });
  t.teardown(() => tail.child.kill('SIGKILL'));
  const workers = Array.from({ length: WORKERS }, (_, w) => run([APPENDER, dir, String(w), String(COUNT)]));
  const results = await Promise.all(workers.map((w) => w.done));
  for (const [w, r] of results.entries()) t.equal(r.code, 0, `worker ${w} finished: ${r.stderr}`);

  const total = WORKERS * COUNT + WORKERS * (COUNT / 4);
  const log = await Tlog.open({ dataDir: dir, readOnly: true });
  t.teardown(() => log.close());
  const all: RecordedEvent[] = [];
  for await (const e of log.readAll()) all.push(e);
  t.equal(all.length, total, 'every append is in the log');
  t.same(all.map((e) => e.position), all.map((_, i) => BigInt(i)), 'positions are dense and in order');
  const sharedKeys = new Set(all.filter((e) => e.stream === 'shared').map((e) => JSON.stringify(e.data)));
  t.equal(sharedKeys.size, WORKERS * COUNT, 'no shared event lost or duplicated');
  for (let w = 0; w < WORKERS; w++) {
    const own = all.filter((e) => e.stream === `own-${w}`);
    t.same(own.map((e) => e.version), own.map((_, i) => BigInt(i)), `own-${w}: contiguous versions`);
    t.same(own.map((e) => (e.data as { i: number }).i), own.map((_, i) => i), `own-${w}: in order`);
  }
  const report = await log.verify();
  t.ok(report.ok, 'the log verifies');

  // The follower in its own process sees all of it, live, in order.
  await waitFor(() => tail.stdout().split('\n').length - 1 >= total, 30_000, `zos log tail --follow to print ${total} events`);
  const lines = tail.stdout().trim().split('\n').map((l) => JSON.parse(l) as { position: number; stream: string });
  t.same(lines.map((l) => l.position), lines.map((_, i) => i), 'the follower saw every event once, in order');
  t.equal(tail.child.exitCode, null, 'the follower is still following');
});
