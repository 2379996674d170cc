/**
 * Crash test: a child appends continuously and reports every acknowledged
 * append; we kill -9 it at random moments, many times. After every reopen each
 * acknowledged event is present exactly once, in order, and the log verifies.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Tlog, initDataDir } from '../../tlog/index.ts';
import { tempDir } from '../helpers/tmp.ts';

const CHILD = fileURLToPath(new URL('../fixtures/crash-appender.ts', import.meta.url));
const ROUNDS = Number(process.env.ZOS_CRASH_ROUNDS ?? 25);

interface Ack {
  run: number;
  seq: number;
  position: bigint;
}

function runAndKill(dataDir: string, run: number, killAfterMs: number): Promise<Ack[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dataDir, String(run)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const acks: Ack[] = [];
    let buf = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === 'ready') {
          timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
          continue;
        }
        const [, r, s, p] = line.split(' ');
        acks.push({ run: Number(r), seq: Number(s), position: BigInt(p!) });
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // Safety net: never let a child outlive the test.
    const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code, signal) => {
      clearTimeout(guard);
      if (timer) clearTimeout(timer);
      if (signal !== 'SIGKILL') reject(new Error(`child exited on its own (code ${code}): ${stderr}`));
      else resolve(acks);
    });
  });
}

t.test(`kill -9 during appends, ${ROUNDS} times: nothing acknowledged is lost`, async (t) => {
  const dir = tempDir(t);
  initDataDir(dir);
  const allAcks: Ack[] = [];
  for (let run = 0; run < ROUNDS; run++) {
    const killAfter = 20 + Math.floor(Math.random() * 400);
    const acks = await runAndKill(dir, run, killAfter);
    allAcks.push(...acks);

    const log = await Tlog.open({ dataDir: dir, segmentMaxBytes: 512 * 1024 });
    try {
      const seen = new Map<string, bigint>();
      let lastPos = -1n;
      const lastSeqOfRun = new Map<number, number>();
      let dupes = 0;
      let disorder = 0;
      for await (const e of log.readStream('crash')) {
        const d = e.data as { run: number; seq: number };
        const key = `${d.run}:${d.seq}`;
        if (seen.has(key)) dupes++;
        seen.set(key, e.position);
        if (e.position <= lastPos) disorder++;
        lastPos = e.position;
        const prev = lastSeqOfRun.get(d.run) ?? -1;
        if (d.seq <= prev) disorder++;
        lastSeqOfRun.set(d.run, d.seq);
      }
      const missing = allAcks.filter((a) => seen.get(`${a.run}:${a.seq}`) !== a.position);
      t.equal(dupes, 0, `round ${run}: no event twice`);
      t.equal(disorder, 0, `round ${run}: events in order`);
      t.equal(missing.length, 0, `round ${run}: all ${allAcks.length} acknowledged events present at their positions (${acks.length} new, killed after ${killAfter} ms)`);
      const report = await log.verify();
      t.ok(report.ok, `round ${run}: log verifies ${report.problem ? JSON.stringify(report.problem, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) : ''}`);
    } finally {
      await log.close();
    }
  }
  t.ok(allAcks.length > ROUNDS, `the children acknowledged ${allAcks.length} appends in total`);
});
