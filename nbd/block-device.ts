/**
 * What the NBD server serves: a block device. nbd/ knows block devices, not
 * events; the vdisk domain implements this interface on top of the tlog.
 */

export interface BlockDevice {
  /** Size in bytes. */
  readonly size: bigint;
  readonly readOnly: boolean;
  /** Preferred I/O size (reported to clients as the preferred block size). */
  readonly blockSize: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** With `fua`, resolve only once the data is durable. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Make every write that has completed so far durable. */
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
}

export interface ExportInfo {
  name: string;
  description?: string;
}

/** The set of exports a server offers; open() is called per client. */
export interface ExportProvider {
  list(): ExportInfo[] | Promise<ExportInfo[]>;
  /** The device for `name`, or null when there is no such export. */
  open(name: string): BlockDevice | null | Promise<BlockDevice | null>;
  /** Called when a client that opened `name` disconnects. */
  release?(name: string, device: BlockDevice): void | Promise<void>;
}

/** A sparse in-memory device (for tests and benchmarks). */
export class MemoryBlockDevice implements BlockDevice {
  readonly size: bigint;
  readonly readOnly: boolean;
  readonly blockSize = 4096;
  readonly #chunkSize = 64 * 1024;
  readonly #chunks = new Map<number, Buffer>();

  constructor(size: number, readOnly = false) {
    this.size = BigInt(size);
    this.readOnly = readOnly;
  }

  /** Visit the chunk pieces covering [offset, offset+length): (chunk index, offset within it, bytes, bytes done before). */
  #pieces(offset: number, length: number, fn: (idx: number, within: number, n: number, done: number) => void): void {
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const idx = Math.floor(pos / this.#chunkSize);
      const within = pos - idx * this.#chunkSize;
      const n = Math.min(this.#chunkSize - within, length - done);
      fn(idx, within, n, done);
      done += n;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    this.#pieces(offset, length, (idx, within, n, done) => this.#chunks.get(idx)?.copy(out, done, within, within + n));
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.#pieces(offset, data.length, (idx, within, n, done) => {
      let c = this.#chunks.get(idx);
      if (!c) {
        c = Buffer.alloc(this.#chunkSize);
        this.#chunks.set(idx, c);
      }
      data.copy(c, within, done, done + n);
    });
  }

  async flush(): Promise<void> {}

  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#pieces(offset, length, (idx, within, n) => {
      if (within === 0 && n === this.#chunkSize) this.#chunks.delete(idx);
      else this.#chunks.get(idx)?.fill(0, within, within + n);
    });
  }
}
