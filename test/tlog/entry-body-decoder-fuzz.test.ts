/**
 * Fuzz the entry-body decoder (tlog/record.ts, Avro): on any input it returns a
 * body or throws ZosError TLOG_BAD_RECORD — no other exception, no hang, and no
 * allocation driven by a length the input merely declares.
 *
 * The decoder runs in a child process (tiny inputs, capped V8 heap, timeout):
 * a runaway allocation then kills the child and fails the test with the input
 * that did it, instead of taking the test runner down.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runIsolated } from './fixtures/child.ts';
import { fuzzSeed } from './fixtures/property.ts';

interface Outcome {
  outcome: 'ok' | 'zos-error' | 'other-error';
  code?: string;
  message?: string;
  ms: number;
  maxRssMb: number;
}

/** Avro long (zigzag varint). */
function avroLong(n: bigint): Buffer {
  let z = n >= 0n ? n * 2n : -n * 2n - 1n;
  const out: number[] = [];
  while (z >= 0x80n) {
    out.push(Number(z & 0x7fn) | 0x80);
    z >>= 7n;
  }
  out.push(Number(z));
  return Buffer.from(out);
}

/** An EntryBody prefix: stream "s", then an events-array block declaring `count` items (and nothing else). */
function declaredEvents(count: bigint, blockBytes?: bigint): Buffer {
  const parts = [avroLong(1n), Buffer.from('s'), avroLong(count)];
  if (blockBytes !== undefined) parts.push(avroLong(blockBytes));
  return Buffer.concat(parts);
}

t.test('random and mutated entry bodies only ever throw TLOG_BAD_RECORD (isolated fuzz run)', { timeout: 180_000 }, async (t) => {
  const seed = fuzzSeed();
  const dir = mkdtempSync(join(tmpdir(), 'zos-fuzz-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const last = join(dir, 'last-input.hex');
  const run = runIsolated<{ failures: string[]; maxRssMb: number }>(['fuzz-entry-body', String(seed), '600', last], {
    heapMb: 256,
    timeoutMs: 120_000,
  });
  if (!run.result) {
    let input = '(none)';
    try {
      input = readFileSync(last, 'utf8');
    } catch {
      /* the child died before its first decode */
    }
    t.fail(`decodeEntryBody fuzz did not finish: ${run.how}; last input (hex) ${input}; replay with ZOS_FUZZ_SEED=${seed}; stderr: ${run.stderrTail}`);
    return;
  }
  t.same(run.result.failures, [], `every property holds (seed ${seed})`);
});

// 5–12 byte inputs that declare an events array of `count` entries. Decoding
// them must fail fast as TLOG_BAD_RECORD without allocating per declared item:
// the child has a 64 MB heap and 15 s.
const declared: Array<[string, Buffer]> = [
  ['1e6 events', declaredEvents(1_000_000n)],
  ['1e8 events', declaredEvents(100_000_000n)],
  ['2^31-1 events', declaredEvents(2n ** 31n - 1n)],
  ['2^32-1 events', declaredEvents(2n ** 32n - 1n)],
  ['2^53 events', declaredEvents(2n ** 53n)],
  ['-1e8 events in a sized block', declaredEvents(-100_000_000n, 100n)],
];

for (const [name, input] of declared) {
  t.test(`an entry body declaring ${name} in ${input.length} bytes is rejected without allocating for them`, { timeout: 30_000 }, async (t) => {
    const run = runIsolated<Outcome>(['entry-body', input.toString('hex')], { heapMb: 64, timeoutMs: 15_000 });
    if (!run.result) {
      t.fail(`decodeEntryBody(${input.toString('hex')}) did not return: ${run.how}; stderr: ${run.stderrTail}`);
      return;
    }
    t.equal(run.result.outcome, 'zos-error', `throws a ZosError (${run.result.message ?? 'no message'})`);
    t.equal(run.result.code, 'TLOG_BAD_RECORD');
    t.ok(run.result.ms < 1000, `fails fast (${run.result.ms.toFixed(0)} ms)`);
  });
}
