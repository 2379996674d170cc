/**
 * AEAD throughput of the candidate libraries at zos's entry sizes, used the
 * way tlog/crypto.ts uses them (a fresh output buffer per call, 44-byte
 * associated data like an entry's "zos/entry/v1" ‖ streamKey):
 *
 *   libsodium-wrappers  XChaCha20-Poly1305 (WebAssembly)
 *   sodium-native       XChaCha20-Poly1305 (native libsodium; what zos uses)
 *   node:crypto         ChaCha20-Poly1305 and AES-256-GCM (OpenSSL; 12-byte nonces)
 *
 * plus BLAKE2b-256 through sodium-native, which zos runs over every
 * ciphertext for the hash chain (not an AEAD; for scale).
 *
 *   npx node bench/crypto.ts [--seconds 1] [--sizes 256,4096,65536] [--smoke]
 *
 * The nonce is fixed inside the timed loop: this measures the cipher, not the
 * random number generator (zos draws a random 24-byte nonce per entry).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import sodiumNative from 'sodium-native';
import sodiumWrappers from 'libsodium-wrappers';
import { MB, fmtRatio, parseBenchArgs, printTable, ratio, timeSync, writeResult } from './lib.ts';

interface Aead {
  name: string;
  /** What tlog/crypto.ts would need to use it. */
  nonceBytes: number;
  seal(plain: Uint8Array, ad: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array;
  open(ct: Uint8Array, ad: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array;
}

const TAG = 16;

function nodeAead(name: string, cipher: 'chacha20-poly1305' | 'aes-256-gcm'): Aead {
  return {
    name,
    nonceBytes: 12,
    seal(plain, ad, nonce, key) {
      const c = cipher === 'aes-256-gcm' ? createCipheriv(cipher, key, nonce, { authTagLength: TAG }) : createCipheriv(cipher, key, nonce, { authTagLength: TAG });
      c.setAAD(ad, { plaintextLength: plain.length });
      const body = c.update(plain);
      c.final();
      return Buffer.concat([body, c.getAuthTag()]);
    },
    open(ct, ad, nonce, key) {
      const d = cipher === 'aes-256-gcm' ? createDecipheriv(cipher, key, nonce, { authTagLength: TAG }) : createDecipheriv(cipher, key, nonce, { authTagLength: TAG });
      d.setAAD(ad, { plaintextLength: ct.length - TAG });
      d.setAuthTag(ct.subarray(ct.length - TAG));
      const out = d.update(ct.subarray(0, ct.length - TAG));
      d.final();
      return out;
    },
  };
}

const AEADS: Aead[] = [
  {
    name: 'libsodium-wrappers XChaCha20-Poly1305',
    nonceBytes: 24,
    seal: (plain, ad, nonce, key) => sodiumWrappers.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, ad, null, nonce, key),
    open: (ct, ad, nonce, key) => sodiumWrappers.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ct, ad, nonce, key),
  },
  {
    name: 'sodium-native XChaCha20-Poly1305',
    nonceBytes: 24,
    seal(plain, ad, nonce, key) {
      const out = Buffer.allocUnsafe(plain.length + TAG);
      sodiumNative.crypto_aead_xchacha20poly1305_ietf_encrypt(out, plain, ad, null, nonce, key);
      return out;
    },
    open(ct, ad, nonce, key) {
      const out = Buffer.allocUnsafe(ct.length - TAG);
      sodiumNative.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, ct, ad, nonce, key);
      return out;
    },
  },
  nodeAead('node:crypto ChaCha20-Poly1305', 'chacha20-poly1305'),
  nodeAead('node:crypto AES-256-GCM', 'aes-256-gcm'),
];

const BASELINE = 'libsodium-wrappers XChaCha20-Poly1305';

interface Cell {
  lib: string;
  bytes: number;
  sealOpsPerSec: number;
  sealMBps: number;
  openOpsPerSec: number | null;
  openMBps: number | null;
  /** seal and open speed relative to libsodium-wrappers at this size. */
  sealVsWrappers: number | null;
  openVsWrappers: number | null;
}

async function main(): Promise<void> {
  const args = parseBenchArgs({
    name: 'crypto',
    description: 'AEAD throughput: libsodium-wrappers vs sodium-native vs node:crypto.',
    options: { sizes: { type: 'string', help: 'message sizes in bytes, comma-separated (default 256,4096,65536)' } },
    seconds: { full: 1, smoke: 0.05 },
  });
  const sizes = args.numbers('sizes', [256, 4096, 65536], [256, 4096, 65536]).map(Math.floor);
  await sodiumWrappers.ready;
  const versions = {
    libsodiumWrappers: sodiumWrappers.SODIUM_VERSION_STRING,
    openssl: process.versions.openssl ?? 'unknown',
    node: process.version,
  };
  process.stdout.write(`crypto: ${args.seconds} s per cell; libsodium (wrappers) ${versions.libsodiumWrappers}, OpenSSL ${versions.openssl}\n`);
  checkAgreement();

  const key = randomBytes(32);
  const ad = Buffer.concat([Buffer.from('zos/entry/v1', 'ascii'), randomBytes(32)]);
  const cells: Cell[] = [];
  for (const bytes of sizes) {
    const plain = randomBytes(bytes);
    const chunk = Math.max(1, Math.floor(65536 / bytes));
    const warm = Math.min(0.5, args.seconds / 2);
    for (const a of AEADS) {
      const nonce = randomBytes(a.nonceBytes);
      const ct = a.seal(plain, ad, nonce, key);
      if (!Buffer.from(a.open(ct, ad, nonce, key)).equals(plain)) throw new Error(`${a.name} does not round-trip`);
      timeSync(warm, chunk, () => a.seal(plain, ad, nonce, key));
      const s = timeSync(args.seconds, chunk, () => a.seal(plain, ad, nonce, key));
      timeSync(warm, chunk, () => a.open(ct, ad, nonce, key));
      const o = timeSync(args.seconds, chunk, () => a.open(ct, ad, nonce, key));
      cells.push({
        lib: a.name,
        bytes,
        sealOpsPerSec: s.callsPerSec,
        sealMBps: (s.callsPerSec * bytes) / MB,
        openOpsPerSec: o.callsPerSec,
        openMBps: (o.callsPerSec * bytes) / MB,
        sealVsWrappers: null,
        openVsWrappers: null,
      });
    }
    // BLAKE2b-256 of the ciphertext: zos's per-entry content hash.
    const out = Buffer.alloc(32);
    timeSync(warm, chunk, () => sodiumNative.crypto_generichash(out, plain));
    const h = timeSync(args.seconds, chunk, () => sodiumNative.crypto_generichash(out, plain));
    cells.push({ lib: 'sodium-native BLAKE2b-256 (hash, not AEAD)', bytes, sealOpsPerSec: h.callsPerSec, sealMBps: (h.callsPerSec * bytes) / MB, openOpsPerSec: null, openMBps: null, sealVsWrappers: null, openVsWrappers: null });
  }
  for (const c of cells) {
    const base = cells.find((b) => b.lib === BASELINE && b.bytes === c.bytes);
    if (!base || c.openOpsPerSec === null) continue;
    c.sealVsWrappers = ratio(c.sealOpsPerSec, base.sealOpsPerSec);
    c.openVsWrappers = ratio(c.openOpsPerSec, base.openOpsPerSec);
  }
  printTable(
    'AEAD throughput (one thread; seal = encrypt, open = decrypt + verify)',
    ['library / cipher', 'bytes', 'seal ops/s', 'seal MB/s', 'open ops/s', 'open MB/s', 'seal vs wrappers', 'open vs wrappers'],
    cells.map((c) => [c.lib, c.bytes, c.sealOpsPerSec, c.sealMBps, c.openOpsPerSec, c.openMBps, fmtRatio(c.sealVsWrappers), fmtRatio(c.openVsWrappers)]),
  );
  writeResult('crypto', args, { settings: { seconds: args.seconds, sizes, adBytes: ad.length }, versions, cells });
}

/** Both libsodium builds must produce the same XChaCha20-Poly1305 bytes. */
function checkAgreement(): void {
  const key = randomBytes(32);
  const nonce = randomBytes(24);
  const ad = randomBytes(44);
  const plain = randomBytes(1000);
  const a = AEADS[0]!.seal(plain, ad, nonce, key);
  const b = AEADS[1]!.seal(plain, ad, nonce, key);
  if (!Buffer.from(a).equals(Buffer.from(b))) throw new Error('libsodium-wrappers and sodium-native disagree on XChaCha20-Poly1305');
}

await main();
