/**
 * External programs the tests drive (real NBD clients, fio). Outside CI a
 * missing program skips the test with a visible reason; in CI it is a
 * failure, never a silent skip (.ci/run installs them).
 */
import { spawnSync } from 'node:child_process';

export function missingTools(tools: string[]): string[] {
  return tools.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).status !== 0);
}

const inCI = (): boolean => {
  const v = process.env.CI;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
};

/** tap's skip option: false when the test must run (always in CI). */
export function toolsSkip(tools: string[]): string | false {
  if (inCI()) return false;
  const missing = missingTools(tools);
  return missing.length === 0 ? false : `missing ${missing.join(', ')} (apt-get install libnbd-bin qemu-utils fio); never skipped in CI`;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a program with a time limit; throws with a clear message when it is not installed. */
export function run(cmd: string, args: string[], timeoutMs = 120_000): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new Error(`${cmd} is not installed (apt-get install libnbd-bin qemu-utils fio)`);
  }
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
