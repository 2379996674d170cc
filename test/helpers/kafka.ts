/**
 * Test helpers for the Kafka suite: a real single-node broker per test (or one
 * per test file), started and stopped by the test itself.
 *
 * Policy: `npm test` runs the Kafka tests whenever Java 17+ and Maven are
 * present. In CI (env CI set) a missing Java/Maven is a FAILURE with a clear
 * message, never a silent skip. Outside CI the tests are skipped with a
 * visible reason (also when ZOS_SKIP_KAFKA=1, which CI ignores).
 *
 *   import t from 'tap';
 *   import { kafkaSkip, startTestBroker } from '../helpers/kafka.ts';
 *   t.test('appends survive a broker kill', { skip: kafkaSkip() }, async (t) => {
 *     const broker = await startTestBroker(t);   // stopped and removed at t's teardown
 *     ... broker.bootstrap ...
 *   });
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkKafkaPrerequisites, startBroker, type Broker, type StartBrokerOptions } from '../../infra/kafka/index.ts';

export type { Broker } from '../../infra/kafka/index.ts';

export interface TeardownContext {
  teardown(fn: () => unknown): void;
}

const inCI = (): boolean => {
  const v = process.env.CI;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
};

let cached: { ok: boolean; why: string } | undefined;

/** Whether a broker can be run here: Java 17+ and Maven (or the jars already cached). Cached per process. */
export function kafkaAvailable(): { ok: boolean; why: string } {
  cached ??= checkKafkaPrerequisites();
  return cached;
}

/**
 * The `skip` option for a Kafka test: false when it must run; a reason string
 * when it may be skipped (outside CI only). In CI it is always false, so that a
 * missing Java/Maven makes startTestBroker fail the test instead.
 */
export function kafkaSkip(): string | false {
  if (inCI()) return false;
  if (process.env.ZOS_SKIP_KAFKA === '1') return 'ZOS_SKIP_KAFKA=1 (Kafka tests skipped; never in CI)';
  const a = kafkaAvailable();
  return a.ok ? false : `Kafka tests skipped outside CI: ${a.why}`;
}

function requireKafka(): void {
  const a = kafkaAvailable();
  if (!a.ok) {
    throw new Error(
      inCI()
        ? `CI: the Kafka suite needs a broker and none can be started (${a.why}). In CI a missing broker is a failure, never a skip.`
        : `no Kafka broker can be started: ${a.why}`,
    );
  }
}

/**
 * Start a broker with its own temp data dir for this test; at the test's
 * teardown it is SIGKILLed (its data is thrown away anyway) and its
 * data dir removed. Throws a clear error when Java/Maven are missing (fails the test).
 */
export async function startTestBroker(t: TeardownContext, opts: Omit<StartBrokerOptions, 'dataDir' | 'detached'> = {}): Promise<Broker> {
  requireKafka();
  const broker = await startInTempDir(opts);
  t.teardown(() => killAndRemove(broker));
  return broker;
}

async function killAndRemove(broker: Broker): Promise<void> {
  await broker.kill('SIGKILL');
  await broker.stop({ removeData: true }); // not running any more: only removes the data dir
}

async function startInTempDir(opts: Omit<StartBrokerOptions, 'dataDir' | 'detached'>): Promise<Broker> {
  const dataDir = mkdtempSync(join(tmpdir(), 'zos-kafka-test-'));
  try {
    return await startBroker({ ...opts, dataDir });
  } catch (e) {
    rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
}

let shared: Promise<Broker> | undefined;

/**
 * One broker for the whole test file (this process), started on first use
 * and stopped at `root`'s teardown (pass the `t` imported from 'tap').
 * Tests that kill or restart the broker should use startTestBroker instead.
 */
export function sharedTestBroker(root: TeardownContext): Promise<Broker> {
  if (!shared) {
    shared = (async () => {
      requireKafka();
      const broker = await startInTempDir({});
      root.teardown(() => killAndRemove(broker));
      return broker;
    })();
  }
  return shared;
}
