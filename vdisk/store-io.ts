/**
 * A process-wide pool of worker threads for block-store I/O (store-worker.ts):
 * sealing batches of new block versions and reading scattered slots. The main
 * thread answers NBD requests; the crypto and the many small preads of a
 * scattered read run beside it. Each store is opened on one worker, so its
 * seals stay in order.
 *
 * ZOS_VDISK_IO_WORKERS=0 turns the pool off (everything on the main thread).
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { ZosError } from '../tlog/index.ts';

interface Reply {
  id: number;
  ok: boolean;
  data?: ArrayBuffer;
  corrupt?: boolean;
  message?: string;
}

class PoolWorker {
  readonly worker: Worker;
  readonly #pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  #next = 0;
  #refs = 0;
  dead: Error | null = null;

  constructor() {
    this.worker = new Worker(new URL('./store-worker.ts', import.meta.url));
    this.worker.on('message', (r: Reply) => {
      const p = this.#pending.get(r.id);
      if (!p) return;
      this.#pending.delete(r.id);
      this.#ref(-1);
      p.resolve(r);
    });
    const fail = (err: Error): void => {
      this.dead = err;
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`block-store I/O worker exited (code ${code})`)));
    // After the listeners: adding a 'message' listener refs the worker's port again, and an idle
    // worker of the pool (never called) would then keep one-shot CLI commands from exiting.
    this.worker.unref();
  }

  /** Keep the process alive only while requests are pending. */
  #ref(d: number): void {
    this.#refs += d;
    if (this.#refs === 1 && d > 0) this.worker.ref();
    if (this.#refs === 0) this.worker.unref();
  }

  call(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Reply> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.#next++;
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ref(1);
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }
}

const pool: PoolWorker[] = [];
let nextStore = 0;

function poolSize(): number {
  const env = process.env.ZOS_VDISK_IO_WORKERS;
  return env !== undefined && /^\d+$/.test(env) ? Number(env) : Math.min(4, Math.max(1, availableParallelism()));
}

/**
 * The worker for the next store. Workers start as stores open (one store, one
 * worker: each costs a V8 isolate, ~20-30 MiB), up to the pool's size; dead
 * ones are replaced. null when the pool is off.
 */
function workerFor(id: number): PoolWorker | null {
  const size = poolSize();
  if (size === 0) return null;
  for (let i = pool.length - 1; i >= 0; i--) if (pool[i]!.dead) pool.splice(i, 1);
  if (pool.length < size) {
    const w = new PoolWorker();
    pool.push(w);
    return w;
  }
  return pool[id % pool.length]!;
}

const check = (r: Reply, what: string): Reply => {
  if (r.ok) return r;
  if (r.corrupt) throw new ZosError('VDISK_VIEW_CORRUPT', r.message ?? 'the block store is damaged; run "zos vdisk rebuild"');
  throw new ZosError('TLOG_IO', `block store ${what} failed: ${r.message ?? 'unknown error'}`);
};

/** One store's handle on the pool; null from open() when the pool is off. */
export class StoreIo {
  readonly #w: PoolWorker;
  readonly #id: number;

  private constructor(w: PoolWorker, id: number) {
    this.#w = w;
    this.#id = id;
  }

  static async open(path: string, dir: string, key: Buffer, blockSize: number, slotSize: number): Promise<StoreIo | null> {
    const id = nextStore++;
    const w = workerFor(id);
    if (!w) return null;
    check(await w.call({ op: 'open', store: id, path, dir, key: new Uint8Array(key), blockSize, slotSize }), 'open');
    return new StoreIo(w, id);
  }

  /** Plaintext of the given slots (ZERO and SKIP blocks read as zeroes). */
  async read(blocks: Float64Array, slots: Float64Array): Promise<Buffer> {
    const r = check(await this.#w.call({ op: 'read', store: this.#id, blocks, slots }), 'read');
    return Buffer.from(r.data!);
  }

  /**
   * Seal `data` (blocks.length whole blocks) into slots firstSlot… and write
   * them. With `give`, a `data` that spans its whole ArrayBuffer is moved to the
   * worker, not copied: the caller must not use it afterwards.
   */
  async seal(blocks: Float64Array, firstSlot: number, data: Buffer, give = false): Promise<void> {
    const movable = give && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
    check(await this.#w.call({ op: 'seal', store: this.#id, blocks, firstSlot, data }, movable ? [data.buffer as ArrayBuffer, blocks.buffer as ArrayBuffer] : [blocks.buffer as ArrayBuffer]), 'write');
  }

  async close(): Promise<void> {
    await this.#w.call({ op: 'close', store: this.#id }).catch(() => undefined);
  }
}
