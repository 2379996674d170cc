/**
 * Block-store I/O off the main thread: sealing new block versions into slots
 * and writing them, and reading + opening scattered slots. The main thread
 * keeps the index and decides which slots; this thread only moves and
 * transforms bytes (see store-io.ts for the protocol).
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import sodium from 'sodium-native';

const NONCE = 24;
const TAG = 16;
const ZERO = -1;
const SKIP = -2;

interface StoreState {
  fd: number;
  key: Buffer;
  blockSize: number;
  slotSize: number;
  dir: string;
}

const stores = new Map<number, StoreState>();
const ad = Buffer.alloc(16);

function setAd(block: number, slot: number): Buffer {
  ad.writeUInt32LE(block % 0x1_0000_0000, 0);
  ad.writeUInt32LE(Math.floor(block / 0x1_0000_0000), 4);
  ad.writeUInt32LE(slot % 0x1_0000_0000, 8);
  ad.writeUInt32LE(Math.floor(slot / 0x1_0000_0000), 12);
  return ad;
}

class Corrupt extends Error {}

function read(s: StoreState, blocks: Float64Array, slots: Float64Array): ArrayBuffer {
  const n = blocks.length;
  const out = Buffer.alloc(n * s.blockSize);
  let raw = Buffer.allocUnsafe(s.slotSize * 16);
  for (let i = 0; i < n; ) {
    const slot = slots[i]!;
    if (slot === ZERO || slot === SKIP) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < n && slots[j] === slot + (j - i)) j++;
    const count = j - i;
    const len = count * s.slotSize;
    if (raw.length < len) raw = Buffer.allocUnsafe(len);
    const got = readSync(s.fd, raw, 0, len, slot * s.slotSize);
    if (got !== len) throw new Corrupt(`the block store in ${s.dir} is truncated at slot ${slot}; it is a cache: run "zos vdisk rebuild" for this vdisk`);
    for (let k = 0; k < count; k++) {
      const o = k * s.slotSize;
      const block = blocks[i + k]!;
      try {
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
          out.subarray((i + k) * s.blockSize, (i + k + 1) * s.blockSize),
          null,
          raw.subarray(o + NONCE, o + s.slotSize),
          setAd(block, slot + k),
          raw.subarray(o, o + NONCE),
          s.key,
        );
      } catch {
        throw new Corrupt(`the block store in ${s.dir} is damaged (block ${block}, slot ${slot + k} fails authentication); it is a cache: run "zos vdisk rebuild" for this vdisk`);
      }
    }
    i = j;
  }
  // Buffer.alloc of more than half a pool has an ArrayBuffer of its own: move it, do not copy it.
  return out.byteOffset === 0 && out.length === out.buffer.byteLength ? (out.buffer as ArrayBuffer) : (out.buffer.slice(out.byteOffset, out.byteOffset + out.length) as ArrayBuffer);
}

/** Sealed slots are built here and written before the next message: one buffer, reused. */
let sealed = Buffer.allocUnsafe(0);

function seal(s: StoreState, blocks: Float64Array, firstSlot: number, data: Buffer): void {
  const n = blocks.length;
  if (sealed.length < n * s.slotSize) sealed = Buffer.allocUnsafe(Math.max(n * s.slotSize, Math.min(2 * sealed.length, 4 << 20)));
  const out = sealed.subarray(0, n * s.slotSize);
  for (let i = 0; i < n; i++) {
    const o = i * s.slotSize;
    sodium.randombytes_buf(out.subarray(o, o + NONCE));
    sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
      out.subarray(o + NONCE, o + s.slotSize),
      data.subarray(i * s.blockSize, (i + 1) * s.blockSize),
      setAd(blocks[i]!, firstSlot + i),
      null,
      out.subarray(o, o + NONCE),
      s.key,
    );
  }
  let done = 0;
  while (done < out.length) done += writeSync(s.fd, out, done, out.length - done, firstSlot * s.slotSize + done);
}

type Msg =
  | { id: number; op: 'open'; store: number; path: string; dir: string; key: Uint8Array; blockSize: number; slotSize: number }
  | { id: number; op: 'close'; store: number }
  | { id: number; op: 'read'; store: number; blocks: Float64Array; slots: Float64Array }
  | { id: number; op: 'seal'; store: number; blocks: Float64Array; firstSlot: number; data: Uint8Array };

parentPort!.on('message', (m: Msg) => {
  try {
    switch (m.op) {
      case 'open':
        stores.set(m.store, { fd: openSync(m.path, 'r+'), key: Buffer.from(m.key), blockSize: m.blockSize, slotSize: m.slotSize, dir: m.dir });
        parentPort!.postMessage({ id: m.id, ok: true });
        return;
      case 'close': {
        const s = stores.get(m.store);
        stores.delete(m.store);
        if (s) {
          s.key.fill(0);
          closeSync(s.fd);
        }
        parentPort!.postMessage({ id: m.id, ok: true });
        return;
      }
      case 'read': {
        const data = read(stores.get(m.store)!, m.blocks, m.slots);
        parentPort!.postMessage({ id: m.id, ok: true, data }, [data]);
        return;
      }
      case 'seal':
        seal(stores.get(m.store)!, m.blocks, m.firstSlot, Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength));
        parentPort!.postMessage({ id: m.id, ok: true });
        return;
    }
  } catch (err) {
    parentPort!.postMessage({ id: m.id, ok: false, corrupt: err instanceof Corrupt, message: err instanceof Error ? err.message : String(err) });
  }
});
