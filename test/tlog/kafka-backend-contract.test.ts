/**
 * The same log contract as the file backend, unchanged, against a real Kafka
 * broker (Apache Kafka from Maven Central, started by this test).
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Tlog, initDataDir } from '../../tlog/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { kafkaSkip, sharedTestBroker } from '../helpers/kafka.ts';
import { runLogContract } from './contract/log-contract.ts';

t.test('kafka backend', { skip: kafkaSkip() }, async (t) => {
  const broker = await sharedTestBroker(t);
  runLogContract(t, async (t) => {
    const dir = tempDir(t);
    initDataDir(dir);
    const log = `kafka://${broker.bootstrap}/contract-${randomBytes(6).toString('hex')}`;
    let current = await Tlog.open({ dataDir: dir, log });
    t.teardown(() => current.close());
    return {
      log: current,
      reopen: async () => {
        await current.close();
        current = await Tlog.open({ dataDir: dir, log });
        return current;
      },
    };
  });
});
