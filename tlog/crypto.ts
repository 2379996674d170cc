/**
 * Key hierarchy and primitives (libsodium through sodium-native; see
 * docs/decisions/crypto-library.md for why not libsodium-wrappers).
 *
 *   master key (32 B, random, file mode 0600)
 *     ├─ kdf(1, "zos-name") → name key   : streamKey = BLAKE2b-256(nameKey, stream name)
 *     ├─ kdf(2, "zos-chan") → chain key  : chain_n   = BLAKE2b-256(chainKey, header_n ‖ tag_n)
 *     ├─ kdf(3, "zos-strm") → stream root: entryKey  = BLAKE2b-256(streamRoot, streamKey)  (per stream)
 *     ├─ kdf(4, "zos-audt") → audit key  : term hashes in the audit index
 *     ├─ kdf(5, "zos-kid_") → key id     : first 16 bytes, stored in headers to detect a wrong key
 *     └─ kdf(6, "zos-view") → view root  : viewKey(label) = BLAKE2b-256(viewRoot, label) (projection files at rest)
 *
 * Entries are sealed with XChaCha20-Poly1305 under the stream's key with a fresh
 * random 24-byte nonce per entry (never a counter, never fixed).
 */
import sodium from 'sodium-native';

export const KEY_BYTES = 32;
export const NONCE_BYTES = 24;
export const TAG_BYTES = 16;
export const HASH_BYTES = 32;
export const KEY_ID_BYTES = 16;

const ctx = (s: string): Buffer => {
  const b = Buffer.from(s, 'ascii');
  if (b.length !== 8) throw new Error('kdf context must be 8 bytes');
  return b;
};

function derive(master: Uint8Array, id: number, context: string): Buffer {
  const out = Buffer.alloc(KEY_BYTES);
  sodium.crypto_kdf_derive_from_key(out, id, ctx(context), master);
  return out;
}

export function randomBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  sodium.randombytes_buf(b);
  return b;
}

export function hash32(input: Uint8Array, key?: Uint8Array): Buffer {
  const out = Buffer.alloc(HASH_BYTES);
  if (key) sodium.crypto_generichash(out, input, key);
  else sodium.crypto_generichash(out, input);
  return out;
}

export function hashParts(parts: Uint8Array[], key?: Uint8Array, bytes = HASH_BYTES): Buffer {
  const out = Buffer.alloc(bytes);
  if (key) sodium.crypto_generichash_batch(out, parts, key);
  else sodium.crypto_generichash_batch(out, parts);
  return out;
}

/** Derived keys for one master key. Holds key material: never log it. */
export class KeyRing {
  readonly keyId: Buffer;
  readonly #nameKey: Buffer;
  readonly #chainKey: Buffer;
  readonly #streamRoot: Buffer;
  readonly #auditKey: Buffer;
  readonly #viewRoot: Buffer;
  readonly #streamKeys = new Map<string, Buffer>();
  readonly #entryKeys = new Map<string, Buffer>();

  constructor(master: Uint8Array) {
    if (master.length !== KEY_BYTES) throw new Error(`master key must be ${KEY_BYTES} bytes`);
    this.#nameKey = derive(master, 1, 'zos-name');
    this.#chainKey = derive(master, 2, 'zos-chan');
    this.#streamRoot = derive(master, 3, 'zos-strm');
    this.#auditKey = derive(master, 4, 'zos-audt');
    this.keyId = derive(master, 5, 'zos-kid_').subarray(0, KEY_ID_BYTES);
    this.#viewRoot = derive(master, 6, 'zos-view');
  }

  /** A key for a projection's files at rest, one per label (e.g. "vdisk\0web1"). */
  viewKey(label: string): Buffer {
    return hash32(Buffer.from(label, 'utf8'), this.#viewRoot);
  }

  /** Keyed hash of a stream name: what the log stores instead of the name. */
  streamKey(stream: string): Buffer {
    let k = this.#streamKeys.get(stream);
    if (!k) {
      k = hash32(Buffer.from(stream, 'utf8'), this.#nameKey);
      if (this.#streamKeys.size > 100_000) this.#streamKeys.clear();
      this.#streamKeys.set(stream, k);
    }
    return k;
  }

  /** The per-stream AEAD key, derived from the stream key. */
  entryKey(streamKey: Buffer): Buffer {
    const id = streamKey.toString('latin1');
    let k = this.#entryKeys.get(id);
    if (!k) {
      k = hash32(streamKey, this.#streamRoot);
      if (this.#entryKeys.size > 100_000) this.#entryKeys.clear();
      this.#entryKeys.set(id, k);
    }
    return k;
  }

  readonly #chainInput = Buffer.alloc(120 + TAG_BYTES);

  /**
   * chain_n = BLAKE2b-256(chainKey, header_n ‖ tag_n), where tag_n is the
   * entry's Poly1305 tag. The header holds the previous chain value, the nonce
   * and the stream key; the tag authenticates the ciphertext under the stream's
   * key, so a changed ciphertext fails decryption and a changed, removed,
   * inserted or reordered entry breaks the chain — without hashing the whole
   * ciphertext on every write and read.
   */
  chain(header: Uint8Array, tag: Uint8Array): Buffer {
    if (header.length + tag.length !== this.#chainInput.length) return hashParts([header, tag], this.#chainKey);
    this.#chainInput.set(header, 0);
    this.#chainInput.set(tag, header.length);
    return hash32(this.#chainInput, this.#chainKey);
  }

  /** 16-byte keyed hash of an audit term (kind-prefixed), never the term itself. */
  auditTerm(kind: string, term: string): Buffer {
    return hashParts([Buffer.from(kind + '\0' + term, 'utf8')], this.#auditKey, 16);
  }
}

export function seal(plain: Uint8Array, ad: Uint8Array, key: Uint8Array): { nonce: Buffer; ciphertext: Buffer } {
  const nonce = randomBytes(NONCE_BYTES);
  const ciphertext = Buffer.allocUnsafe(plain.length + TAG_BYTES);
  sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(ciphertext, plain, ad, null, nonce, key);
  return { nonce, ciphertext };
}

/** Returns null when authentication fails (wrong key or tampered bytes). */
export function open(ciphertext: Uint8Array, ad: Uint8Array, nonce: Uint8Array, key: Uint8Array): Buffer | null {
  if (ciphertext.length < TAG_BYTES || nonce.length !== NONCE_BYTES) return null;
  const plain = Buffer.allocUnsafe(ciphertext.length - TAG_BYTES);
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(plain, null, ciphertext, ad, nonce, key);
  } catch {
    return null;
  }
  return plain;
}

/** The Poly1305 tag at the end of an AEAD ciphertext (what the chain covers). */
export function sealTag(ciphertext: Uint8Array): Uint8Array {
  return ciphertext.subarray(Math.max(0, ciphertext.length - TAG_BYTES));
}
