import t from 'tap';
import { Tlog, initDataDir } from '../../tlog/index.ts';
import { tempDir } from '../helpers/tmp.ts';
import { runLogContract } from './contract/log-contract.ts';

// Small segments so the contract also exercises segment rotation.
for (const segmentMaxBytes of [undefined, 4096]) {
  t.test(`file backend${segmentMaxBytes ? ` (${segmentMaxBytes}-byte segments)` : ''}`, async (t) => {
    runLogContract(t, async (t) => {
      const dir = tempDir(t);
      initDataDir(dir);
      const opts = { dataDir: dir, ...(segmentMaxBytes ? { segmentMaxBytes } : {}) };
      let current = await Tlog.open(opts);
      t.teardown(() => current.close());
      return {
        log: current,
        reopen: async () => {
          await current.close();
          current = await Tlog.open(opts);
          return current;
        },
      };
    });
  });
}
