/** Test helpers: temp data directories that clean up after themselves. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tlog, initDataDir, type TlogOpenOptions } from '../../tlog/index.ts';

export interface TestContext {
  teardown(fn: () => unknown): void;
}

export function tempDir(t: TestContext, prefix = 'zos-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh initialised data dir and an open log on it (closed at teardown). */
export async function openTempLog(
  t: TestContext,
  opts: Partial<TlogOpenOptions> = {},
): Promise<{ log: Tlog; dir: string }> {
  const dir = tempDir(t);
  initDataDir(dir);
  const log = await Tlog.open({ dataDir: dir, ...opts });
  t.teardown(() => log.close());
  return { log, dir };
}

/** Wait until `cond` is true, polling; fails after `ms`. Never a fixed sleep. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
