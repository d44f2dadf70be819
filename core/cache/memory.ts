/**
 * The memory tier: stored variants with their bodies as Buffers, bounded in total bytes, evicting
 * the least recently used. A Map keeps insertion order, so moving an entry to the end on each hit
 * is the whole LRU (written here rather than taken from a package: it is a dozen lines and sits on
 * the hottest path).
 */
import type { CachedObject } from './entry.js';
import { variantKey, type HeaderMap } from './keys.js';

/** Bytes counted for an entry beyond its body: headers and bookkeeping, roughly. */
const OVERHEAD = 512;

/** An LRU of cached objects bounded by the sum of their body sizes. */
export class MemoryTier {
  private readonly lru = new Map<string, CachedObject>();
  /** Vary field names last seen for each URL, and the keys of its variants. */
  private readonly urls = new Map<string, { vary: string[]; keys: Set<string> }>();
  private used = 0;

  /** @param maxBytes total budget; 0 turns the tier off. */
  constructor(readonly maxBytes: number) {}

  /** Bytes in use. */
  get bytes(): number {
    return this.used;
  }

  /** Number of stored variants. */
  get size(): number {
    return this.lru.size;
  }

  /** The variant of `url` that the request selects, moved to most-recently used. */
  get(url: string, headers: HeaderMap): CachedObject | undefined {
    const u = this.urls.get(url);
    if (!u) return undefined;
    const key = u.vary.length === 0 ? url : url + '\n' + variantKey(u.vary, headers);
    const obj = this.lru.get(key);
    if (obj === undefined) return undefined;
    this.lru.delete(key);
    this.lru.set(key, obj);
    return obj;
  }

  /** Adds or replaces a variant; evicts least recently used ones to stay within the budget. */
  set(obj: CachedObject): void {
    if (!obj.body) return;
    const cost = obj.body.length + OVERHEAD;
    if (cost > this.maxBytes) return;
    const key = obj.vary.length === 0 ? obj.url : obj.url + '\n' + obj.variant;
    this.removeKey(key);
    let u = this.urls.get(obj.url);
    if (!u) {
      u = { vary: obj.vary, keys: new Set() };
      this.urls.set(obj.url, u);
    } else if (u.vary.join() !== obj.vary.join()) {
      // The origin changed its Vary: older variants can no longer be selected.
      for (const k of [...u.keys]) this.removeKey(k);
      u = { vary: obj.vary, keys: new Set() };
      this.urls.set(obj.url, u);
    }
    u.keys.add(key);
    this.lru.set(key, obj);
    this.used += cost;
    while (this.used > this.maxBytes) {
      const oldest = this.lru.keys().next();
      if (oldest.done) break;
      this.removeKey(oldest.value);
    }
  }

  /** Removes one variant if it is this very object (a newer one may have replaced it). */
  delete(obj: CachedObject): void {
    const key = obj.vary.length === 0 ? obj.url : obj.url + '\n' + obj.variant;
    if (this.lru.get(key) === obj) this.removeKey(key);
  }

  /** Removes every variant of a URL; returns how many there were. */
  deleteUrl(url: string): number {
    const u = this.urls.get(url);
    if (!u) return 0;
    const n = u.keys.size;
    for (const k of [...u.keys]) this.removeKey(k);
    this.urls.delete(url);
    return n;
  }

  /** Drops everything. */
  clear(): void {
    this.lru.clear();
    this.urls.clear();
    this.used = 0;
  }

  private removeKey(key: string): void {
    const obj = this.lru.get(key);
    if (!obj) return;
    this.lru.delete(key);
    this.used -= (obj.body?.length ?? 0) + OVERHEAD;
    const u = this.urls.get(obj.url);
    if (u) {
      u.keys.delete(key);
      if (u.keys.size === 0) this.urls.delete(obj.url);
    }
  }
}
