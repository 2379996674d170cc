/**
 * Test helpers for the vdisk CLI tests: run `zos` and external clients
 * without blocking this process's event loop (tests keep NBD sockets open
 * while commands run), and start `zos vdisk serve` as a child process.
 *
 *   const serve = await startServe(t, dataDir);   // SIGKILLed at teardown if still running
 *   ... nbd://127.0.0.1:${serve.port}/NAME ...
 *   const { code, signal } = await serve.stop();  // SIGTERM, waits for the exit
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const ZOS = fileURLToPath(new URL('../../bin/zos.mjs', import.meta.url));

export interface TeardownContext {
  teardown(fn: () => unknown): void;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export const inCI = (): boolean => {
  const v = process.env.CI;
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
};

/** Run a program to its end without blocking the event loop; SIGKILL after timeoutMs. */
export function runAsync(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(opts.env ? { env: opts.env } : {}) });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(err.code === 'ENOENT' ? new Error(`${cmd} is not installed`) : err);
    });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The environment zos runs in: this data dir, the embedded file log, its own key file. */
export function zosEnv(dataDir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ZOS_DATA_DIR: dataDir, ...extra };
  if (!extra.ZOS_KEY_FILE) delete env.ZOS_KEY_FILE;
  if (!extra.ZOS_LOG) delete env.ZOS_LOG;
  return env;
}

/** Run `zos ARGS` on a data dir (the Node running the tests is Node 24, so no re-exec). */
export async function zos(dataDir: string, args: string[], timeoutMs = 120_000): Promise<{ code: number | null; out: string; err: string }> {
  const r = await runAsync(process.execPath, [ZOS, ...args], { timeoutMs, env: zosEnv(dataDir) });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

/** Parse JSON lines (one object per non-empty line). */
export function jsonLines<T = Record<string, unknown>>(text: string): T[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as T);
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
export const sha256File = (path: string): string => sha256(readFileSync(path));

export interface Serve {
  /** The NBD port and the pid of the process that serves (from its "listening" line). */
  port: number;
  pid: number;
  proc: ChildProcess;
  /** Milliseconds from spawn to the "listening" line. */
  startMs: number;
  stdout(): string;
  stderr(): string;
  /** Resolves when the child has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  running(): boolean;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL the server process (a crash) and wait for the exit. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  uri(name: string): string;
}

/**
 * Start `zos vdisk serve --listen 127.0.0.1:0 --json` on a data dir and wait
 * for its "listening" line. Killed (SIGKILL) at t's teardown if still running.
 */
export async function startServe(t: TeardownContext, dataDir: string, opts: { timeoutMs?: number; json?: boolean } = {}): Promise<Serve> {
  const json = opts.json ?? true;
  const t0 = Date.now();
  const proc = spawn(process.execPath, [ZOS, 'vdisk', 'serve', '--listen', '127.0.0.1:0', ...(json ? ['--json'] : [])], {
    env: zosEnv(dataDir),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  let exitedWith: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('close', (code, signal) => {
      exitedWith = { code, signal };
      resolve(exitedWith);
    }),
  );
  t.teardown(async () => {
    if (exitedWith) return;
    proc.kill('SIGKILL');
    await exited;
  });
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const listening = await new Promise<{ port: number; pid: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`zos vdisk serve did not start in ${opts.timeoutMs ?? 60_000} ms; stderr: ${err}`)), opts.timeoutMs ?? 60_000);
    const check = (): void => {
      const first = out.split('\n')[0]!;
      if (!out.includes('\n')) return;
      clearTimeout(timer);
      proc.stdout!.off('data', check);
      if (json) {
        const ev = JSON.parse(first) as { event: string; port: number; pid: number };
        if (ev.event !== 'listening') reject(new Error(`unexpected first line from serve: ${first}`));
        else resolve({ port: ev.port, pid: ev.pid });
      } else {
        const m = /on nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(first);
        if (!m) reject(new Error(`unexpected first line from serve: ${first}`));
        else resolve({ port: Number(m[1]), pid: proc.pid! });
      }
    };
    proc.stdout!.on('data', check);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`zos vdisk serve exited (code ${code}, signal ${signal}) before listening; stderr: ${err}`));
    });
  });
  const startMs = Date.now() - t0;
  return {
    port: listening.port,
    pid: listening.pid,
    proc,
    startMs,
    stdout: () => out,
    stderr: () => err,
    exited,
    running: () => exitedWith === null,
    stop: async () => {
      if (!exitedWith) proc.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (!exitedWith) {
        // The pid from the listening line is the serving process itself (also if bin/zos.mjs re-ran Node).
        process.kill(listening.pid, 'SIGKILL');
        if (listening.pid !== proc.pid) proc.kill('SIGKILL');
      }
      return exited;
    },
    uri: (name: string) => `nbd://127.0.0.1:${listening.port}/${name}`,
  };
}
