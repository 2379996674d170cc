// Minimal typings for the parts of sodium-native zos uses (the package ships none).
declare module 'sodium-native' {
  type Buf = Uint8Array;
  interface Sodium {
    randombytes_buf(buf: Buf): void;
    crypto_generichash(output: Buf, input: Buf, key?: Buf): void;
    crypto_generichash_batch(output: Buf, batch: Buf[], key?: Buf): void;
    crypto_kdf_derive_from_key(subkey: Buf, subkeyId: number, ctx: Buf, key: Buf): void;
    crypto_aead_xchacha20poly1305_ietf_encrypt(c: Buf, m: Buf, ad: Buf | null, nsec: null, npub: Buf, k: Buf): number;
    crypto_aead_xchacha20poly1305_ietf_decrypt(m: Buf, nsec: null, c: Buf, ad: Buf | null, npub: Buf, k: Buf): number;
    sodium_memzero(buf: Buf): void;
    crypto_aead_xchacha20poly1305_ietf_ABYTES: number;
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES: number;
    crypto_aead_xchacha20poly1305_ietf_KEYBYTES: number;
    crypto_kdf_KEYBYTES: number;
    crypto_kdf_CONTEXTBYTES: number;
  }
  const sodium: Sodium;
  export default sodium;
}
