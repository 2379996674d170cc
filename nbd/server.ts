/**
 * An NBD server: fixed newstyle handshake (EXPORT_NAME, GO, INFO, LIST, ABORT,
 * STRUCTURED_REPLY), then READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES, DISC,
 * with several exports and clients at once. Requests on a connection are
 * served concurrently (replies carry the client's cookie); a FLUSH waits for
 * the writes received before it. Hostile input gets the reply the protocol
 * prescribes, or the connection is closed; other clients are unaffected.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { BlockDevice, ExportProvider } from './block-device.ts';
import {
  CMD,
  CMD_FLAG,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeChunkHeader,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_OPTION_BYTES,
  NBD_ERR,
  OPT,
  OPTION_HEADER_BYTES,
  REP,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  TFLAG,
} from './protocol.ts';

export interface NbdServerOptions {
  exports: ExportProvider;
  /** Largest READ/WRITE payload accepted (default 32 MiB). */
  maxPayload?: number;
  /** Requests in flight per connection before we stop reading (default 128). */
  maxInFlight?: number;
  /** Seconds a client may take to finish the handshake (default 30). */
  handshakeTimeoutMs?: number;
  onError?: (err: unknown) => void;
}

class Closed extends Error {}

/** Replies queued on a socket beyond this make the server stop reading requests. */
const MAX_UNSENT_BYTES = 16 * 1024 * 1024;
/** Write payloads handed to the device and not yet answered, per connection, beyond which we stop reading. */
const MAX_WRITE_BYTES_IN_FLIGHT = 16 * 1024 * 1024;
/** Bytes read from a socket and not yet consumed; a request that needs more resumes reading. */
const PAUSE_READING_AT = 8 * 1024 * 1024;
const RESUME_READING_BELOW = 4 * 1024 * 1024;

/** Reads exact byte counts from a socket, with backpressure. */
class SocketReader {
  readonly #socket: Socket;
  #chunks: Buffer[] = [];
  #length = 0;
  #waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  #ended = false;

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#chunks.push(d);
      this.#length += d.length;
      if (this.#length > PAUSE_READING_AT) socket.pause();
      this.#wake();
    });
    const end = (): void => {
      this.#ended = true;
      this.#wake();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  #take(n: number): Buffer {
    let out: Buffer;
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#length -= n;
    if (this.#length < RESUME_READING_BELOW && this.#socket.isPaused()) this.#socket.resume();
    return out;
  }

  #wake(): void {
    const w = this.#waiter;
    if (!w) return;
    if (this.#length >= w.n) {
      this.#waiter = null;
      w.resolve(this.#take(w.n));
    } else if (this.#ended) {
      this.#waiter = null;
      w.reject(new Closed('client went away'));
    }
  }

  read(n: number): Promise<Buffer> {
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.#length >= n) return Promise.resolve(this.#take(n));
    if (this.#ended) return Promise.reject(new Closed('client went away'));
    return new Promise((resolve, reject) => {
      this.#waiter = { n, resolve, reject };
      if (this.#socket.isPaused()) this.#socket.resume();
    });
  }

  /** Skip n bytes without keeping them. */
  async discard(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      const k = Math.min(left, 1024 * 1024);
      await this.read(k);
      left -= k;
    }
  }
}

function transmissionFlags(dev: BlockDevice): number {
  let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.CAN_MULTI_CONN;
  if (dev.readOnly) f |= TFLAG.READ_ONLY;
  else f |= TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
  return f;
}

export class NbdServer {
  readonly #opts: Required<Pick<NbdServerOptions, 'maxPayload' | 'maxInFlight' | 'handshakeTimeoutMs'>> & NbdServerOptions;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  constructor(opts: NbdServerOptions) {
    this.#opts = { maxPayload: 32 * 1024 * 1024, maxInFlight: 128, handshakeTimeoutMs: 30_000, ...opts };
    // allowHalfOpen: a client may DISC and shut down its side while replies
    // to earlier requests are still on their way.
    this.#server = createServer({ allowHalfOpen: true }, (socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
      socket.setNoDelay(true);
      void this.#serve(socket).catch((err: unknown) => {
        if (!(err instanceof Closed)) this.#opts.onError?.(err);
        socket.destroy();
      });
    });
  }

  /** Listen on 127.0.0.1 unless told otherwise; port 0 picks a free one. */
  listen(port = 10809, host = '127.0.0.1'): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  get connections(): number {
    return this.#sockets.size;
  }

  /** Stop accepting; disconnect clients. */
  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  /** Disconnect every client that has `name` open (e.g. before a rollback). */
  disconnectExport(name: string): number {
    let n = 0;
    for (const s of this.#sockets) {
      if ((s as Socket & { nbdExport?: string }).nbdExport === name) {
        s.destroy();
        n++;
      }
    }
    return n;
  }

  async #serve(socket: Socket): Promise<void> {
    const reader = new SocketReader(socket);
    const send = (b: Buffer): void => {
      if (!socket.destroyed) socket.write(b);
    };
    const timer = setTimeout(() => socket.destroy(), this.#opts.handshakeTimeoutMs);
    let chosen: { name: string; dev: BlockDevice; structured: boolean } | null;
    try {
      send(encodeGreeting());
      chosen = await this.#handshake(reader, send);
    } finally {
      clearTimeout(timer);
    }
    if (!chosen) {
      socket.end();
      return;
    }
    (socket as Socket & { nbdExport?: string }).nbdExport = chosen.name;
    try {
      await this.#transmission(reader, socket, chosen.dev, chosen.structured);
    } finally {
      await this.#opts.exports.release?.(chosen.name, chosen.dev);
    }
  }

  async #handshake(reader: SocketReader, send: (b: Buffer) => void): Promise<{ name: string; dev: BlockDevice; structured: boolean } | null> {
    const clientFlags = (await reader.read(4)).readUInt32BE(0);
    if (clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) return null; // unknown flags: must close
    const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;
    let structured = false;
    for (;;) {
      const h = decodeOptionHeader(await reader.read(OPTION_HEADER_BYTES));
      if (h.magic !== IHAVEOPT) return null; // not an option: cannot resynchronise
      if (h.length > MAX_OPTION_BYTES) {
        if (h.option === OPT.EXPORT_NAME) return null;
        if (h.length > 16 * 1024 * 1024) return null;
        await reader.discard(h.length);
        send(encodeOptionReply(h.option, REP.ERR_TOO_BIG));
        continue;
      }
      const data = await reader.read(h.length);
      switch (h.option) {
        case OPT.EXPORT_NAME: {
          const name = data.toString('utf8');
          const dev = await this.#opts.exports.open(name);
          if (!dev) return null; // the protocol's only answer: close
          send(encodeExportNameReply(dev.size, transmissionFlags(dev), noZeroes));
          return { name, dev, structured };
        }
        case OPT.ABORT:
          send(encodeOptionReply(h.option, REP.ACK));
          return null;
        case OPT.LIST: {
          if (h.length !== 0) {
            send(encodeOptionReply(h.option, REP.ERR_INVALID));
            break;
          }
          for (const e of await this.#opts.exports.list()) send(encodeOptionReply(h.option, REP.SERVER, encodeServerEntry(e.name)));
          send(encodeOptionReply(h.option, REP.ACK));
          break;
        }
        case OPT.STRUCTURED_REPLY:
          if (h.length !== 0) send(encodeOptionReply(h.option, REP.ERR_INVALID));
          else {
            structured = true;
            send(encodeOptionReply(h.option, REP.ACK));
          }
          break;
        case OPT.INFO:
        case OPT.GO: {
          const req = decodeInfoRequest(data);
          if (!req) {
            send(encodeOptionReply(h.option, REP.ERR_INVALID));
            break;
          }
          const dev = await this.#opts.exports.open(req.name);
          if (!dev) {
            send(encodeOptionReply(h.option, REP.ERR_UNKNOWN, Buffer.from(`no export named "${req.name}"`)));
            break;
          }
          send(encodeOptionReply(h.option, REP.INFO, encodeInfoExport(dev.size, transmissionFlags(dev))));
          if (req.requests.includes(INFO.NAME)) send(encodeOptionReply(h.option, REP.INFO, encodeInfoText(INFO.NAME, req.name)));
          if (req.requests.includes(INFO.BLOCK_SIZE)) {
            send(encodeOptionReply(h.option, REP.INFO, encodeInfoBlockSize(1, dev.blockSize, this.#opts.maxPayload)));
          }
          send(encodeOptionReply(h.option, REP.ACK));
          if (h.option === OPT.GO) return { name: req.name, dev, structured };
          await this.#opts.exports.release?.(req.name, dev);
          break;
        }
        default:
          // STARTTLS, meta contexts (block status) and anything unknown.
          send(encodeOptionReply(h.option, REP.ERR_UNSUP));
      }
    }
  }

  async #transmission(reader: SocketReader, socket: Socket, dev: BlockDevice, structured: boolean): Promise<void> {
    const size = dev.size;
    const maxPayload = this.#opts.maxPayload;
    const inFlight = new Set<Promise<void>>();
    const writes = new Set<Promise<void>>();
    // Replies produced in the same turn of the event loop (e.g. 32 writes
    // answered at once) leave in one writev instead of one syscall each; a
    // read's header and data always share a segment (no-delay is on).
    let corked = false;
    const uncork = (): void => {
      corked = false;
      if (!socket.destroyed) socket.uncork();
    };
    const write = (b: Buffer | Buffer[]): void => {
      if (socket.destroyed) return;
      if (!corked) {
        corked = true;
        socket.cork();
        process.nextTick(uncork);
      }
      if (Array.isArray(b)) for (const x of b) socket.write(x);
      else socket.write(b);
    };
    const replyError = (cookie: bigint, err: number, message: string): void => {
      write(structured ? encodeErrorChunk(cookie, err, message) : encodeSimpleReply(cookie, err));
    };
    const replyOk = (cookie: bigint): void => {
      write(structured ? encodeChunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0) : encodeSimpleReply(cookie, 0));
    };
    const track = (p: Promise<void>, isWrite: boolean): void => {
      inFlight.add(p);
      if (isWrite) writes.add(p);
      void p.finally(() => {
        inFlight.delete(p);
        writes.delete(p);
      });
    };
    const failed = (cookie: bigint, err: unknown): void => {
      this.#opts.onError?.(err);
      replyError(cookie, NBD_ERR.EIO, 'I/O error');
    };

    let readBytesInFlight = 0;
    let writeBytesInFlight = 0;
    const KNOWN_FLAGS = CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.DF | CMD_FLAG.REQ_ONE | CMD_FLAG.FAST_ZERO;
    for (;;) {
      while (inFlight.size >= this.#opts.maxInFlight) await Promise.race(inFlight);
      // A client that does not read its replies must not make us buffer them
      // without bound: stop reading requests until the socket drains.
      while (socket.writableLength + readBytesInFlight > MAX_UNSENT_BYTES && !socket.destroyed) {
        if (readBytesInFlight > 0 && socket.writableLength <= MAX_UNSENT_BYTES) {
          await Promise.race(inFlight);
          continue;
        }
        await new Promise<void>((resolve) => {
          const done = (): void => {
            socket.off('drain', done);
            socket.off('close', done);
            resolve();
          };
          socket.once('drain', done);
          socket.once('close', done);
        });
      }
      if (socket.destroyed) break;
      let header: Buffer;
      try {
        header = await reader.read(REQUEST_HEADER_BYTES);
      } catch (err) {
        if (err instanceof Closed) break;
        throw err;
      }
      const r = decodeRequest(header);
      if (r.magic !== REQUEST_MAGIC) break; // cannot find the next request: hang up
      const fua = (r.flags & CMD_FLAG.FUA) !== 0;
      const end = r.offset + BigInt(r.length);
      const outOfRange = end > size;
      const offset = Number(r.offset);

      if (r.type === CMD.WRITE) {
        if (r.length > maxPayload) {
          // Too big to buffer: swallow it if we reasonably can, else hang up.
          if (r.length > 4 * maxPayload) break;
          await reader.discard(r.length);
          replyError(r.cookie, NBD_ERR.EINVAL, `write of ${r.length} bytes exceeds the ${maxPayload}-byte maximum`);
          continue;
        }
        // A device that is slow to take writes must not make us hold unbounded payloads.
        while (writeBytesInFlight > 0 && writeBytesInFlight + r.length > MAX_WRITE_BYTES_IN_FLIGHT) await Promise.race(writes);
        const data = await reader.read(r.length);
        if (r.flags & ~KNOWN_FLAGS) replyError(r.cookie, NBD_ERR.EINVAL, `unknown command flags 0x${r.flags.toString(16)}`);
        else if (dev.readOnly) replyError(r.cookie, NBD_ERR.EPERM, 'export is read-only');
        else if (outOfRange) replyError(r.cookie, NBD_ERR.ENOSPC, 'write beyond the end of the export');
        else if (r.length === 0) replyOk(r.cookie);
        else {
          const len = r.length;
          writeBytesInFlight += len;
          track(
            dev.write(offset, data, fua).finally(() => (writeBytesInFlight -= len)).then(() => replyOk(r.cookie), (e: unknown) => failed(r.cookie, e)),
            true,
          );
        }
        continue;
      }
      if (r.flags & ~KNOWN_FLAGS && r.type !== CMD.DISC) {
        replyError(r.cookie, NBD_ERR.EINVAL, `unknown command flags 0x${r.flags.toString(16)}`);
        continue;
      }
      switch (r.type) {
        case CMD.READ: {
          if (r.length > maxPayload) replyError(r.cookie, NBD_ERR.EINVAL, `read of ${r.length} bytes exceeds the ${maxPayload}-byte maximum`);
          else if (outOfRange) replyError(r.cookie, NBD_ERR.EINVAL, 'read beyond the end of the export');
          else if (r.length === 0) replyError(r.cookie, NBD_ERR.EINVAL, 'zero-length read');
          else {
            const cookie = r.cookie;
            const at = r.offset;
            const len = r.length;
            readBytesInFlight += len;
            track(
              dev.read(offset, r.length).finally(() => (readBytesInFlight -= len)).then(
                (data) => {
                  if (structured) {
                    const off = Buffer.alloc(8);
                    off.writeBigUInt64BE(at, 0);
                    write([encodeChunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_DATA, 8 + data.length), off, data]);
                  } else write([encodeSimpleReply(cookie, 0), data]);
                },
                (e: unknown) => failed(cookie, e),
              ),
              false,
            );
          }
          break;
        }
        case CMD.FLUSH: {
          const cookie = r.cookie;
          const before = [...writes];
          track(
            Promise.allSettled(before)
              .then(() => dev.flush())
              .then(() => replyOk(cookie), (e: unknown) => failed(cookie, e)),
            false,
          );
          break;
        }
        case CMD.TRIM:
        case CMD.WRITE_ZEROES: {
          if (dev.readOnly) replyError(r.cookie, NBD_ERR.EPERM, 'export is read-only');
          else if (outOfRange) {
            // proto.md: EINVAL for a trim beyond the end, ENOSPC for writes (WRITE_ZEROES is one).
            replyError(r.cookie, r.type === CMD.TRIM ? NBD_ERR.EINVAL : NBD_ERR.ENOSPC, 'request beyond the end of the export');
          }
          else if (r.length === 0) replyOk(r.cookie);
          else {
            const cookie = r.cookie;
            const op = r.type === CMD.TRIM ? dev.trim(offset, r.length, fua) : dev.writeZeroes(offset, r.length, fua);
            track(op.then(() => replyOk(cookie), (e: unknown) => failed(cookie, e)), true);
          }
          break;
        }
        case CMD.DISC:
          await Promise.allSettled([...inFlight]);
          socket.end();
          return;
        default:
          replyError(r.cookie, NBD_ERR.EINVAL, `unsupported command ${r.type}`);
      }
    }
    await Promise.allSettled([...inFlight]);
    socket.end();
  }
}
