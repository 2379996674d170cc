/**
 * Runtime settings of the long-running `zos vdisk serve` process. They must be
 * in place when the process starts (V8 sizes its heap at start-up and glibc
 * reads its tunables once), so bin/zos.mjs re-executes itself with them —
 * process.execve: the same pid, so signals, kill -9 and pid files keep working.
 * bench/nbd.ts starts its vdisk server with the same settings.
 *
 *  - --max-semi-space-size=8: V8's young generation otherwise grows to ~75 MiB
 *    under NBD traffic (a Buffer per request); 8 MiB semi-spaces keep it at
 *    ~14 MiB for a few more scavenges. (v8.setFlagsFromString after start-up
 *    does not shrink it: measured.)
 *  - MALLOC_MMAP_THRESHOLD_=1048576: buffers of 1 MiB and more (NBD payloads,
 *    log entries, sealed batches) are mmapped and go back to the kernel when
 *    freed. By default glibc raises its threshold after the first such free
 *    and serves them from the heap, which fragments: ~240 MiB of [heap] after
 *    filling a 1 GiB vdisk, against ~60 MiB with a fixed threshold.
 *  - MALLOC_ARENA_MAX=2: glibc's per-thread arenas (the libuv pool, the
 *    block-store worker) each keep freed buffers.
 * bench/nbd.ts measured peak RSS over its workloads: 528 MiB → ~300 MiB.
 */
export const SERVE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];
export const SERVE_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '1048576' };
/** Set in the re-executed process, so it does not re-execute again. */
export const SERVE_TUNED_ENV = 'ZOS_SERVE_TUNED';

/** Is this command line `zos [global options] vdisk serve …`? */
export function isServeCommand(args: readonly string[]): boolean {
  const i = args.indexOf('vdisk');
  return i >= 0 && args[i + 1] === 'serve' && !args.includes('--help') && !args.includes('-h');
}

/**
 * For `vdisk serve`, replace this process with one started with the serve
 * settings (same pid). Returns only when there is nothing to do or execve is
 * unavailable (the server then runs with Node's defaults).
 */
export function execTunedServe(entry: string, args: readonly string[]): void {
  if (!isServeCommand(args) || process.env[SERVE_TUNED_ENV] === '1') return;
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (typeof execve !== 'function') return;
  try {
    execve(process.execPath, [process.execPath, ...process.execArgv, ...SERVE_NODE_FLAGS, entry, ...args], { ...SERVE_ENV, ...process.env, [SERVE_TUNED_ENV]: '1' });
  } catch (err) {
    // Serving with Node's defaults beats not serving: say so and go on.
    process.stderr.write(`zos: could not restart with the server's memory settings (${(err as Error).message}); serving with Node's defaults\n`);
  }
}
