/**
 * A raw NBD client for the hostile-client and fuzz tests: a `node:net`
 * socket with exact-length reads (each with a timeout), plus hand-written
 * encoders and decoders for the few messages the tests need. The constants
 * are spelled out here from the protocol document (NetworkBlockDevice/nbd,
 * doc/proto.md) rather than imported from nbd/protocol.ts, so that an
 * encoder bug in the server cannot hide itself from its own tests.
 */
import { connect, type Socket } from 'node:net';
import { MemoryBlockDevice, type BlockDevice } from '../../nbd/index.ts';

export const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
export const GREETING = Buffer.concat([Buffer.from('NBDMAGIC', 'latin1'), IHAVEOPT, Buffer.from([0x00, 0x03])]);
export const REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_MAGIC = 0x67446698;
export const STRUCTURED_MAGIC = 0x668e33ef;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  ERR_UNSUP: 0x80000001,
  ERR_INVALID: 0x80000003,
  ERR_UNKNOWN: 0x80000006,
  ERR_TOO_BIG: 0x80000009,
} as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28 } as const;
export const CHUNK = { NONE: 0, OFFSET_DATA: 1, ERROR: 0x8001 } as const;
export const FLAG_DONE = 1;

/** Transmission flags we expect: HAS_FLAGS|SEND_FLUSH|SEND_FUA|CAN_MULTI_CONN, plus TRIM|WRITE_ZEROES (rw) or READ_ONLY. */
export const TFLAGS_RW = 0x0001 | 0x0004 | 0x0008 | 0x0100 | 0x0020 | 0x0040;
export const TFLAGS_RO = 0x0001 | 0x0004 | 0x0008 | 0x0100 | 0x0002;

export const KiB = 1024;
export const MiB = 1024 * 1024;

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
export function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

/** C: IHAVEOPT u32 option u32 length data */
export function option(opt: number, data: Buffer = Buffer.alloc(0), magic: Buffer = IHAVEOPT): Buffer {
  return Buffer.concat([magic, u32(opt), u32(data.length), data]);
}
/** Only the 16-byte header, announcing `length` bytes the caller may or may not send. */
export function optionHeader(opt: number, length: number): Buffer {
  return Buffer.concat([IHAVEOPT, u32(opt), u32(length)]);
}
/** NBD_OPT_INFO / NBD_OPT_GO data. */
export function infoData(name: string, requests: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u16(requests.length), ...requests.map(u16)]);
}
/** S: REPLY_MAGIC u32 option u32 type u32 length data — the exact bytes expected. */
export function optionReplyBytes(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u64(REPLY_MAGIC), u32(opt), u32(type), u32(data.length), data]);
}
export function infoExportBytes(size: bigint, flags: number): Buffer {
  return Buffer.concat([u16(0), u64(size), u16(flags)]);
}

export interface Req {
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
  flags?: number;
}
export function request(r: Req, data?: Buffer): Buffer {
  const h = Buffer.concat([u32(REQUEST_MAGIC), u16(r.flags ?? 0), u16(r.type), u64(r.cookie), u64(r.offset), u32(r.length)]);
  return data ? Buffer.concat([h, data]) : h;
}
export function simpleReplyBytes(cookie: bigint, error: number): Buffer {
  return Buffer.concat([u32(SIMPLE_MAGIC), u32(error), u64(cookie)]);
}

/** A socket with a byte queue: read exactly n bytes, or learn that the peer closed. */
export class RawClient {
  readonly socket: Socket;
  #chunks: Buffer[] = [];
  #length = 0;
  #ended = false;
  #listeners = new Set<() => void>();
  error: Error | null = null;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#chunks.push(d);
      this.#length += d.length;
      this.#notify();
    });
    const end = (): void => {
      this.#ended = true;
      this.#notify();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', (e) => {
      this.error = e;
      end();
    });
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        s.setNoDelay(true);
        resolve(new RawClient(s));
      });
    });
  }

  get buffered(): number {
    return this.#length;
  }
  get ended(): boolean {
    return this.#ended;
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }

  /** Resolve once cond() holds (re-checked on every socket event); reject after timeoutMs. */
  until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!cond()) return;
        clearTimeout(timer);
        this.#listeners.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#listeners.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (have ${this.#length} bytes, ended=${this.#ended})`));
      }, timeoutMs);
      this.#listeners.add(check);
    });
  }

  #take(n: number): Buffer {
    const all = Buffer.concat(this.#chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.#chunks = rest.length ? [rest] : [];
    this.#length = rest.length;
    return out;
  }

  /** Exactly n bytes; rejects if the server closes first or nothing arrives in time. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    await this.until(() => this.#length >= n || this.#ended, timeoutMs, `${n} bytes`);
    if (this.#length < n) throw new Error(`server closed after ${this.#length} of ${n} expected bytes: ${this.#take(this.#length).toString('hex')}`);
    return this.#take(n);
  }

  /** Wait for the server to close; resolves with whatever arrived and was not yet read. */
  async closed(timeoutMs = 5000): Promise<Buffer> {
    await this.until(() => this.#ended, timeoutMs, 'the server to close the connection');
    return this.#take(this.#length);
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }
  destroy(): void {
    this.socket.destroy();
  }
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}
export async function readOptionReply(c: RawClient): Promise<OptionReply> {
  const h = await c.read(20);
  const magic = h.readBigUInt64BE(0);
  if (magic !== REPLY_MAGIC) throw new Error(`bad option reply magic ${magic.toString(16)} in ${h.toString('hex')}`);
  const length = h.readUInt32BE(16);
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await c.read(length) };
}

export async function readSimpleReply(c: RawClient, dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
  const h = await c.read(16);
  if (h.readUInt32BE(0) !== SIMPLE_MAGIC) throw new Error(`bad simple reply magic in ${h.toString('hex')}`);
  const error = h.readUInt32BE(4);
  return { error, cookie: h.readBigUInt64BE(8), data: error === 0 && dataLength > 0 ? await c.read(dataLength) : Buffer.alloc(0) };
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}
export async function readChunk(c: RawClient): Promise<Chunk> {
  const h = await c.read(20);
  if (h.readUInt32BE(0) !== STRUCTURED_MAGIC) throw new Error(`bad structured reply magic in ${h.toString('hex')}`);
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await c.read(h.readUInt32BE(16)) };
}

/** Connect, check the greeting byte for byte. */
export async function greet(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  const g = await c.read(18);
  if (!g.equals(GREETING)) throw new Error(`unexpected greeting ${g.toString('hex')}`);
  return c;
}

/** Greeting, client flags (FIXED_NEWSTYLE|NO_ZEROES), optional STRUCTURED_REPLY, then GO; returns the advertised size and flags. */
export async function openExport(port: number, name: string, opts: { structured?: boolean } = {}): Promise<{ c: RawClient; size: bigint; flags: number }> {
  const c = await greet(port);
  c.write(u32(3));
  if (opts.structured) {
    c.write(option(OPT.STRUCTURED_REPLY));
    const r = await readOptionReply(c);
    if (r.option !== OPT.STRUCTURED_REPLY || r.type !== REP.ACK || r.data.length) throw new Error(`STRUCTURED_REPLY refused: ${JSON.stringify(r)}`);
  }
  c.write(option(OPT.GO, infoData(name)));
  let size = -1n;
  let flags = -1;
  for (;;) {
    const r = await readOptionReply(c);
    if (r.option !== OPT.GO) throw new Error(`reply for option ${r.option}, expected GO`);
    if (r.type === REP.ACK) break;
    if (r.type !== REP.INFO) throw new Error(`GO ${name}: reply type ${r.type.toString(16)} ${r.data.toString()}`);
    if (r.data.readUInt16BE(0) === 0) {
      size = r.data.readBigUInt64BE(2);
      flags = r.data.readUInt16BE(10);
    }
  }
  if (size < 0n) throw new Error('GO succeeded without NBD_INFO_EXPORT');
  return { c, size, flags };
}

/** A block device whose operations finish after `delay()` ms; records the order of completions. */
export class SlowDevice implements BlockDevice {
  readonly inner: MemoryBlockDevice;
  readonly log: string[] = [];
  writesDone = 0;
  writesDoneAtFlush: number[] = [];
  readonly #delay: () => number;
  constructor(size: number, delay: () => number) {
    this.inner = new MemoryBlockDevice(size);
    this.#delay = delay;
  }
  get size(): bigint {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return false;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  #wait(): Promise<void> {
    return new Promise((r) => setTimeout(r, this.#delay()));
  }
  async read(offset: number, length: number): Promise<Buffer> {
    await this.#wait();
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Buffer): Promise<void> {
    await this.#wait();
    await this.inner.write(offset, data);
    this.writesDone++;
    this.log.push(`write ${offset}`);
  }
  async flush(): Promise<void> {
    this.writesDoneAtFlush.push(this.writesDone);
    this.log.push('flush');
  }
  async trim(offset: number, length: number): Promise<void> {
    await this.#wait();
    await this.inner.trim(offset, length);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.#wait();
    await this.inner.writeZeroes(offset, length);
  }
}

/** Resolve once cond() holds, polling every few ms; reject after timeoutMs. */
export async function eventually(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

let healthCookie = 1n;
/**
 * A well-behaved client on export `name` (simple replies): write a random
 * pattern, read it back, DISC, see the server close. Throws on any deviation.
 */
export async function wellBehaved(port: number, name = 'health'): Promise<void> {
  const { c, size } = await openExport(port, name);
  try {
    const len = 4096 + Math.floor(Math.random() * 4096);
    const off = BigInt(Math.floor(Math.random() * (Number(size) - len)));
    const pattern = Buffer.alloc(len);
    for (let i = 0; i < len; i++) pattern[i] = (i * 7 + Number(off)) & 0xff;
    const w = healthCookie++;
    c.write(request({ type: CMD.WRITE, cookie: w, offset: off, length: len }, pattern));
    const wr = await readSimpleReply(c);
    if (wr.cookie !== w || wr.error !== 0) throw new Error(`healthy write: cookie ${wr.cookie} error ${wr.error}`);
    const r = healthCookie++;
    c.write(request({ type: CMD.READ, cookie: r, offset: off, length: len }));
    const rr = await readSimpleReply(c, len);
    if (rr.cookie !== r || rr.error !== 0 || !rr.data.equals(pattern)) throw new Error('healthy read did not return the pattern');
    c.write(request({ type: CMD.DISC, cookie: healthCookie++, offset: 0n, length: 0 }));
    const rest = await c.closed();
    if (rest.length) throw new Error(`bytes after DISC: ${rest.toString('hex')}`);
  } finally {
    c.destroy();
  }
}
