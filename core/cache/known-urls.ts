/**
 * Which URLs the local object tier may hold (CacheStore's shortcut past a Tables query on a miss),
 * and which a sibling proxy worker holds in memory only (CacheStoreOptions.siblings).
 */
/**
 * The URLs the object tier may hold, as a bitmap over 24 bits of their hash (2 MiB whatever the
 * cache size): loaded from the LRU index at start, a bit set for every record this store writes.
 * A clear bit proves the tier has no entry for the URL (no other process writes it, see
 * sharedObjectTier); a set bit, stale or shared by another URL, only costs the usual query. Written
 * here because it is a dozen lines and a Bloom filter package would add nothing: the key is
 * already a cryptographic hash.
 */
export class KnownUrls {
  private readonly bits = new Uint8Array(1 << 21);
  /** Until the LRU index has been read, every URL may be held. */
  ready = false;

  add(urlHash: string): void {
    const i = KnownUrls.index(urlHash);
    this.bits[i >>> 3] |= 1 << (i & 7);
  }

  mayHold(urlHash: string): boolean {
    if (!this.ready) return true;
    const i = KnownUrls.index(urlHash);
    return (this.bits[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** 24 bits from the first four base64url characters of the hash. */
  private static index(h: string): number {
    return ((B64[h.charCodeAt(0)] << 18) | (B64[h.charCodeAt(1)] << 12) | (B64[h.charCodeAt(2)] << 6) | B64[h.charCodeAt(3)]) >>> 0;
  }
}

/** base64url character code to its 6-bit value. */
const B64 = (() => {
  const t = new Uint8Array(128);
  const a = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  for (let i = 0; i < a.length; i++) t[a.charCodeAt(i)] = i;
  return t;
})();
