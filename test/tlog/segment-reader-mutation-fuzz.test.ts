/**
 * Fuzz the segment reader with a real log: build a multi-segment log, then per
 * iteration copy it, damage its segment files at random (byte flips,
 * truncation, appended garbage, zeroed or deleted ranges, sometimes without the
 * entry index), and open it read-only and read-write. Open, verify() and
 * readAll() must each either succeed or fail with a ZosError naming a position
 * — never another exception, never hang — and whatever they return must be the
 * original data: a damaged log may end early, it may never show altered events.
 */
import t from 'tap';
import fc from 'fast-check';
import { cpSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tlog, ZosError, type RecordedEvent } from '../../tlog/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { buildLog, eventKey, segmentPaths, show, Timeout, within, type Append } from './fixtures/log.ts';
import { describe, fuzzSeed } from './fixtures/property.ts';

const ITERATIONS = Number(process.env.ZOS_FUZZ_ITERATIONS ?? 100);
const STEP_MS = 10_000;

type Mutation =
  | { kind: 'flip'; seg: number; at: number; xor: number }
  | { kind: 'header'; seg: number; at: number; xor: number }
  | { kind: 'truncate'; seg: number; at: number }
  | { kind: 'append'; seg: number; junk: Uint8Array }
  | { kind: 'zero'; seg: number; at: number; len: number }
  | { kind: 'cut'; seg: number; at: number; len: number };

interface Plan {
  mutations: Mutation[];
  deleteIndex: boolean;
}

// A fraction of the file size (fc.double would favour tiny values: doubles are dense near 0).
const unit = fc.integer({ min: 0, max: 999_999 }).map((n) => n / 1_000_000);
const seg = fc.nat();
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), seg, at: unit, xor: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('header' as const), seg, at: fc.integer({ min: 0, max: 63 }), xor: fc.integer({ min: 1, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), seg, at: unit }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('append' as const), seg, junk: fc.uint8Array({ minLength: 1, maxLength: 300 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('zero' as const), seg, at: unit, len: fc.integer({ min: 1, max: 600 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cut' as const), seg, at: unit, len: fc.integer({ min: 1, max: 600 }) }) },
);
// noBias: spread damage over the whole file instead of favouring offset 0.
const planArb: fc.Arbitrary<Plan> = fc.noBias(
  fc.record({
    mutations: fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
    deleteIndex: fc.boolean(),
  }),
);

function apply(dir: string, plan: Plan): string[] {
  const segs = segmentPaths(dir);
  const done: string[] = [];
  for (const m of plan.mutations) {
    const path = segs[m.seg % segs.length]!;
    const name = path.slice(-24);
    const size = statSync(path).size;
    switch (m.kind) {
      case 'flip': {
        if (size === 0) break;
        const b = readFileSync(path);
        const i = Math.floor(m.at * size);
        b[i]! ^= m.xor;
        writeFileSync(path, b);
        done.push(`${name}: xor byte ${i} with ${m.xor}`);
        break;
      }
      case 'header': {
        const b = readFileSync(path);
        if (m.at >= size) break;
        b[m.at]! ^= m.xor;
        writeFileSync(path, b);
        done.push(`${name}: xor header byte ${m.at} with ${m.xor}`);
        break;
      }
      case 'truncate': {
        const n = Math.floor(m.at * size);
        truncateSync(path, n);
        done.push(`${name}: truncate ${size} -> ${n}`);
        break;
      }
      case 'append':
        writeFileSync(path, m.junk, { flag: 'a' });
        done.push(`${name}: append ${m.junk.length} random bytes`);
        break;
      case 'zero': {
        const b = readFileSync(path);
        const i = Math.floor(m.at * size);
        b.fill(0, i, Math.min(size, i + m.len));
        writeFileSync(path, b);
        done.push(`${name}: zero [${i}, ${Math.min(size, i + m.len)})`);
        break;
      }
      case 'cut': {
        const b = readFileSync(path);
        const i = Math.floor(m.at * size);
        writeFileSync(path, Buffer.concat([b.subarray(0, i), b.subarray(Math.min(size, i + m.len))]));
        done.push(`${name}: delete bytes [${i}, ${Math.min(size, i + m.len)})`);
        break;
      }
    }
  }
  if (plan.deleteIndex) {
    rmSync(join(dir, 'index', 'entries.idx'), { force: true });
    done.push('index/entries.idx deleted');
  }
  return done;
}

/** Group messages that differ only in numbers and paths: "N× pattern — e.g. example". */
function summarise(items: Array<{ pattern: string; example: string }>): string[] {
  const groups = new Map<string, { n: number; example: string }>();
  for (const x of items) {
    const g = groups.get(x.pattern);
    if (g) g.n++;
    else groups.set(x.pattern, { n: 1, example: x.example });
  }
  return [...groups].map(([p, g]) => `${g.n}x ${p} -- e.g. ${g.example}`);
}

const pattern = (s: string): string => s.replace(/\/\S+\//g, '<dir>/').replace(/\d+/g, 'N');

/** Does this error say where the problem is? */
function namesPosition(err: ZosError): boolean {
  return typeof err.context.position === 'bigint' || /position \d+/.test(err.message);
}

t.test('randomly damaged segment files never crash, hang or show altered events', { timeout: 120_000 }, async (t) => {
  const seed = fuzzSeed();
  t.comment(`seed ${seed} (replay with ZOS_FUZZ_SEED=${seed})`);
  const root = tempDir(t);
  const pristine = join(root, 'pristine');

  // Several streams, 1–3 events per entry, payloads of varying size; 4 KiB segments.
  const appends: Append[] = [];
  for (let i = 0; i < 160; i++) {
    const n = 1 + (i % 3);
    appends.push({
      stream: `stream-${i % 4}`,
      events: Array.from({ length: n }, (_, j) => ({ type: j === 0 ? 'Created' : 'Changed', data: { i, j, note: 'n'.repeat((i * 7 + j) % 90) } })),
    });
  }
  const original = await buildLog(pristine, appends, { segmentMaxBytes: 4096 });
  const segCount = segmentPaths(pristine).length;
  t.ok(original.length > 300, `built ${original.length} events`);
  t.ok(segCount >= 8, `in ${segCount} segments`);
  const byPosition = original.map(eventKey);

  const crashes: string[] = []; // non-ZosError exceptions and hangs: never acceptable
  const unlocated: Array<{ pattern: string; example: string }> = []; // ZosErrors that do not say where the damage is
  const altered: string[] = []; // events that differ from what was appended
  const inconsistent: string[] = []; // verify ok but reads disagree with it
  const outcomes = { opened: 0, openFailed: 0, verifiedOk: 0, verifyFailed: 0 };

  const plans = fc.sample(planArb, { seed, numRuns: ITERATIONS });
  for (let it = 0; it < plans.length; it++) {
    const dir = join(root, `it-${it}`);
    cpSync(pristine, dir, { recursive: true });
    const what = apply(dir, plans[it]!).join('; ');

    for (const readOnly of [true, false]) {
      const label = `#${it} ${readOnly ? 'read-only' : 'read-write'} [${what}]`;
      const failed = (step: string, err: unknown): void => {
        if (err instanceof Timeout || !(err instanceof ZosError)) crashes.push(`${label} ${step}: ${describe(err)}`);
        else if (!namesPosition(err)) {
          unlocated.push({ pattern: `${readOnly ? 'read-only' : 'read-write'} ${step}: ${err.code}: ${pattern(err.message)}`, example: `${label}: ${err.message}` });
        }
      };
      const checkEvents = (events: RecordedEvent[]): void => {
        events.forEach((e, i) => {
          if (e.position !== BigInt(i)) altered.push(`${label}: event #${i} has position ${e.position}`);
          else if (eventKey(e) !== byPosition[i]) altered.push(`${label}: event at position ${i} differs from the one appended: ${eventKey(e)}`);
        });
      };

      let log: Tlog;
      try {
        log = await within(STEP_MS, 'Tlog.open', Tlog.open({ dataDir: dir, readOnly, segmentMaxBytes: 4096 }));
        outcomes.opened++;
      } catch (err) {
        outcomes.openFailed++;
        failed('open', err);
        continue;
      }
      try {
        const report = await within(STEP_MS, 'verify', log.verify());
        if (report.ok) {
          outcomes.verifiedOk++;
          if (report.events > BigInt(original.length)) inconsistent.push(`${label}: verify ok with ${report.events} events, only ${original.length} were appended`);
        } else {
          outcomes.verifyFailed++;
          const p = report.problem;
          if (!p || typeof p.position !== 'bigint' || p.position < 0n || p.position > BigInt(original.length)) {
            unlocated.push({ pattern: 'verify problem without a plausible position', example: `${label}: ${show(p)}` });
          }
        }
        const read: RecordedEvent[] = [];
        try {
          await within(
            STEP_MS,
            'readAll',
            (async () => {
              for await (const e of log.readAll()) read.push(e);
            })(),
          );
          if (report.ok && BigInt(read.length) !== report.events) {
            inconsistent.push(`${label}: verify ok with ${report.events} events but readAll returned ${read.length}`);
          }
        } catch (err) {
          failed('readAll', err);
        }
        checkEvents(read);
      } catch (err) {
        failed('verify', err);
      } finally {
        await within(STEP_MS, 'close', log.close()).catch((err: unknown) => failed('close', err));
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }

  t.comment(`outcomes: ${JSON.stringify(outcomes)}`);
  t.same(crashes, [], 'no exception other than ZosError, no step runs past its timeout');
  t.same(altered, [], 'every event returned is exactly the event appended at that position');
  t.same(inconsistent, [], 'when verify passes, reads agree with it');
  t.same(summarise(unlocated), [], 'every failure names the position of the damage (context.position or "position N" in the message)');
});

t.test('the fuzz harness detects damage at all (sanity check of the fixture)', async (t) => {
  // Without this, a harness that never really damaged anything would pass vacuously.
  const dir = tempDir(t);
  const appends: Append[] = Array.from({ length: 30 }, (_, i) => ({ stream: 's', events: [{ type: 'E', data: { i } }] }));
  await buildLog(dir, appends, { segmentMaxBytes: 4096 });
  const segs = segmentPaths(dir);
  const b = readFileSync(segs[0]!);
  b[200]! ^= 0xff;
  writeFileSync(segs[0]!, b);
  const log = await Tlog.open({ dataDir: dir, readOnly: true });
  t.teardown(() => log.close());
  const report = await log.verify();
  t.equal(report.ok, false, 'a flipped byte in the first segment fails verify');
  t.equal(typeof report.problem?.position, 'bigint');
});
