/**
 * A BlockDevice on a raw file, for bench/nbd.ts: pread/pwrite through a
 * fs/promises FileHandle (libuv's thread pool), flush = fdatasync. It makes
 * our NBD server comparable with `qemu-nbd -f raw --cache=writeback` on a
 * file of the same size. Not a product: no locking, trim is ignored (a hint
 * the protocol lets a server drop).
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { BlockDevice } from '../nbd/index.ts';

const ZERO_CHUNK = 1024 * 1024;

export class FileBlockDevice implements BlockDevice {
  readonly size: bigint;
  readonly readOnly: boolean;
  readonly blockSize = 4096;
  readonly #fh: FileHandle;
  #zeroes: Buffer | null = null;

  constructor(fh: FileHandle, size: number, readOnly: boolean) {
    this.#fh = fh;
    this.size = BigInt(size);
    this.readOnly = readOnly;
  }

  /** Open `path` (which must exist); with `size`, grow it (sparsely) to at least that many bytes. */
  static async open(path: string, opts: { size?: number; readOnly?: boolean } = {}): Promise<FileBlockDevice> {
    const readOnly = opts.readOnly ?? false;
    const fh = await open(path, readOnly ? 'r' : 'r+');
    try {
      let size = (await fh.stat()).size;
      if (opts.size !== undefined && size < opts.size) {
        if (readOnly) throw new Error(`${path} is ${size} bytes, less than ${opts.size}`);
        await fh.truncate(opts.size);
        size = opts.size;
      }
      return new FileBlockDevice(fh, size, readOnly);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.#fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done); // past the end of a file shorter than the device: zeroes
        break;
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.#fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    if (fua) await this.#fh.datasync();
  }

  async flush(): Promise<void> {
    await this.#fh.datasync();
  }

  async trim(_offset: number, _length: number, fua: boolean): Promise<void> {
    if (fua) await this.#fh.datasync();
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const zeroes = (this.#zeroes ??= Buffer.alloc(ZERO_CHUNK));
    let done = 0;
    while (done < length) {
      const n = Math.min(ZERO_CHUNK, length - done);
      const { bytesWritten } = await this.#fh.write(zeroes, 0, n, offset + done);
      done += bytesWritten;
    }
    if (fua) await this.#fh.datasync();
  }

  close(): Promise<void> {
    return this.#fh.close();
  }
}
