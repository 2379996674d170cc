/**
 * One process at a time holds a log's vdisks: the one serving them, or a CLI
 * command when nothing serves them. The holder listens on a Linux abstract
 * Unix socket named after the data directory and log: binding it is the lock
 * (the kernel frees it when the holder dies, even by kill -9), and the same
 * socket takes control requests, so `zos vdisk rollback` run while
 * `zos vdisk serve` is up is carried out by the server, which disconnects the
 * vdisk's NBD clients first.
 *
 * Abstract sockets have no file permissions, so every request carries a token
 * that the holder writes to DATA_DIR/run/vdisk-control.token (mode 0600) at
 * start: only users who can read the data directory can send requests.
 *
 * Protocol: one JSON object per line. Request {token, op, args}; the holder
 * answers with any number of {progress: {phase, done, total}} and
 * {item: ...} lines, then {result: ...} or {error: {code, message}}.
 * bigints travel as {"$big": "123"}.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { mkdirSync, readFileSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { isAbsolute, join } from 'node:path';
import { ZosError, ERROR_CODES, type ErrorCode } from '../tlog/index.ts';
import type { VdiskManager, Target } from './manager.ts';
import type { Progress } from './vdisk.ts';

export const CONTROL_PROTOCOL_VERSION = 1;

const replacer = (_k: string, v: unknown): unknown => (typeof v === 'bigint' ? { $big: v.toString() } : v);
const reviver = (_k: string, v: unknown): unknown =>
  v !== null && typeof v === 'object' && typeof (v as { $big?: unknown }).$big === 'string' && Object.keys(v).length === 1 ? BigInt((v as { $big: string }).$big) : v;
const line = (o: unknown): string => JSON.stringify(o, replacer) + '\n';

/** The lock/control socket name for a data directory and log address. */
export function vdiskHostName(dataDir: string, log: string | undefined): string {
  const st = statSync(dataDir);
  const where = log === undefined || log === '' || log === 'file' ? 'file' : log;
  const id = createHash('sha256').update(`${st.dev}:${st.ino}\0${where}`).digest('hex').slice(0, 32);
  return `\0zos-vdisk-${id}`;
}

const tokenPath = (dataDir: string): string => join(dataDir, 'run', 'vdisk-control.token');

export type VdiskOp = 'hello' | 'create' | 'list' | 'info' | 'history' | 'rollback' | 'clone' | 'snapshot' | 'export' | 'delete' | 'rebuild';

export interface OpSink {
  progress: Progress;
  item: (item: unknown) => void;
}

const argStr = (args: Record<string, unknown>, k: string): string => {
  const v = args[k];
  if (typeof v !== 'string') throw new ZosError('VDISK_INVALID', `request argument ${k} must be a string`);
  return v;
};

function argTarget(v: unknown): Target {
  if (v === undefined || v === 'now') return 'now';
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.position === 'bigint') return { position: o.position };
    if (typeof o.time === 'bigint') return { time: o.time };
    if (typeof o.snapshot === 'string') return { snapshot: o.snapshot };
  }
  throw new ZosError('VDISK_INVALID', 'a target is "now", {position}, {time} or {snapshot}');
}

/** Carry out one vdisk operation on a manager (locally, or for a control request). */
export async function dispatchVdiskOp(m: VdiskManager, op: VdiskOp, args: Record<string, unknown>, sink: OpSink): Promise<unknown> {
  return m.withProgress(sink.progress, async () => {
    switch (op) {
      case 'hello':
        return { pid: process.pid, protocol: CONTROL_PROTOCOL_VERSION };
      case 'create':
        return m.create(argStr(args, 'name'), Number(args.size), args.blockSize === undefined ? 4096 : Number(args.blockSize));
      case 'list':
        return m.vdisks();
      case 'info':
        return m.info(argStr(args, 'name'));
      case 'history':
        for await (const h of m.history(argStr(args, 'name'))) sink.item(h);
        return null;
      case 'rollback':
        return m.rollback(argStr(args, 'name'), argTarget(args.to));
      case 'clone':
        return m.clone(argStr(args, 'source'), argStr(args, 'name'), argTarget(args.at));
      case 'snapshot':
        return { position: await m.snapshot(argStr(args, 'name'), argStr(args, 'snapshot')) };
      case 'export': {
        const file = argStr(args, 'file');
        if (!isAbsolute(file)) throw new ZosError('VDISK_INVALID', 'export needs an absolute file path');
        return m.export(argStr(args, 'name'), file, argTarget(args.at));
      }
      case 'delete':
        await m.delete(argStr(args, 'name'));
        return null;
      case 'rebuild':
        return m.rebuild(argStr(args, 'name'));
      default:
        throw new ZosError('VDISK_INVALID', `unknown vdisk operation "${String(op)}"`);
    }
  });
}

/** Holds the vdisks of one data directory + log and answers control requests. */
export class VdiskHost {
  readonly #server: Server;
  readonly #token: Buffer;
  #manager: VdiskManager | null = null;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, token: Buffer) {
    this.#server = server;
    this.#token = token;
  }

  /**
   * Take the lock. Throws VDISK_BUSY when another process holds it. Requests
   * that arrive before `attach` wait for it.
   */
  static async acquire(dataDir: string, log: string | undefined): Promise<VdiskHost> {
    const name = vdiskHostName(dataDir, log);
    const server = createServer({ allowHalfOpen: false });
    await new Promise<void>((res, rej) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE') rej(new ZosError('VDISK_BUSY', `the vdisks of ${dataDir}${log ? ` (${log})` : ''} are held by another zos process (zos vdisk serve, or a vdisk command still running)`));
        else rej(err);
      });
      server.listen({ path: name, exclusive: true }, () => res());
    });
    server.removeAllListeners('error');
    server.on('error', () => undefined);
    const token = randomBytes(32);
    const p = tokenPath(dataDir);
    mkdirSync(join(dataDir, 'run'), { recursive: true, mode: 0o700 });
    writeFileSync(`${p}.tmp`, token.toString('hex') + '\n', { mode: 0o600 });
    renameSync(`${p}.tmp`, p);
    const host = new VdiskHost(server, token);
    server.on('connection', (s) => host.#serve(s));
    return host;
  }

  #waiting: Array<() => void> = [];

  attach(m: VdiskManager): void {
    this.#manager = m;
    for (const w of this.#waiting) w();
    this.#waiting = [];
  }

  #serve(socket: Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.setEncoding('utf8');
    let buf = '';
    let busy = false;
    socket.on('data', (d: string) => {
      buf += d;
      if (buf.length > 1 << 20) socket.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0 || busy) return;
      busy = true;
      const text = buf.slice(0, nl);
      void this.#handle(socket, text);
    });
  }

  async #handle(socket: Socket, text: string): Promise<void> {
    const send = (o: unknown): void => {
      if (!socket.destroyed) socket.write(line(o));
    };
    try {
      const req = JSON.parse(text, reviver) as { token?: unknown; op?: unknown; args?: unknown };
      const tok = typeof req.token === 'string' ? Buffer.from(req.token, 'hex') : Buffer.alloc(0);
      if (tok.length !== this.#token.length || !timingSafeEqual(tok, this.#token)) {
        throw new ZosError('VDISK_BUSY', 'the control request was refused: its token does not match DATA_DIR/run/vdisk-control.token (run the command as the user that owns the data directory)');
      }
      if (!this.#manager) await new Promise<void>((r) => this.#waiting.push(r));
      let lastProgress = 0;
      const result = await dispatchVdiskOp(this.#manager!, req.op as VdiskOp, (req.args ?? {}) as Record<string, unknown>, {
        progress: (phase, done, total) => {
          const now = Date.now();
          if (done < total && now - lastProgress < 100) return;
          lastProgress = now;
          send({ progress: { phase, done, total } });
        },
        item: (item) => send({ item }),
      });
      send({ result });
    } catch (err) {
      const e = err as ZosError;
      send({ error: { code: typeof e.code === 'string' ? e.code : 'TLOG_IO', message: e instanceof ZosError ? e.message : `unexpected error: ${String(err)}` } });
    } finally {
      socket.end();
    }
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/**
 * Send a request to the process holding the vdisks. Returns undefined when no
 * process holds them (the caller then does the work itself).
 */
export async function callVdiskHost(dataDir: string, log: string | undefined, op: VdiskOp, args: Record<string, unknown>, sink: OpSink): Promise<{ result: unknown } | undefined> {
  const name = vdiskHostName(dataDir, log);
  const socket = await new Promise<Socket | null>((res, rej) => {
    const s = connect({ path: name });
    s.once('connect', () => res(s));
    s.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? res(null) : rej(err)));
  });
  if (!socket) return undefined;
  let token = '';
  try {
    token = readFileSync(tokenPath(dataDir), 'utf8').trim();
  } catch {
    // The holder writes it right after taking the lock; without it the request is refused with a clear error.
  }
  socket.setEncoding('utf8');
  socket.write(line({ token, op, args }));
  return new Promise((res, rej) => {
    let buf = '';
    let done = false;
    socket.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const msg = JSON.parse(buf.slice(0, nl), reviver) as { progress?: { phase: string; done: number; total: number }; item?: unknown; result?: unknown; error?: { code: string; message: string } };
        buf = buf.slice(nl + 1);
        if (msg.progress) sink.progress(msg.progress.phase, msg.progress.done, msg.progress.total);
        else if ('item' in msg) sink.item(msg.item);
        else if (msg.error) {
          done = true;
          const code = (msg.error.code in ERROR_CODES ? msg.error.code : 'TLOG_IO') as ErrorCode;
          rej(new ZosError(code, msg.error.message));
        } else if ('result' in msg) {
          done = true;
          res({ result: msg.result });
        }
      }
    });
    socket.on('error', (err) => {
      if (!done) rej(new ZosError('VDISK_BUSY', `lost the connection to the process holding the vdisks: ${err.message}; check it is still running`));
    });
    socket.on('close', () => {
      if (!done) rej(new ZosError('VDISK_BUSY', 'the process holding the vdisks closed the connection before answering; check it is still running'));
    });
  });
}
