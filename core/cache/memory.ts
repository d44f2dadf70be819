/**
 * The memory tier: stored variants with their bodies as Buffers, bounded in total bytes, evicting
 * the least recently used. Written here rather than taken from a package: it sits on the hottest
 * path and needs byte accounting and per-URL variant sets that LRU packages do not keep.
 *
 * The recency order is an intrusive doubly linked list threaded through the entries, so a hit moves
 * its entry to the front with a few pointer writes (see docs/performance.md, Proxy).
 */
import type { CachedObject } from './entry.js';
import { variantKey, type HeaderMap } from './keys.js';

/** Bytes counted for an entry beyond its body: headers and bookkeeping, roughly. */
const OVERHEAD = 512;

/** A list node: one stored variant. */
interface Node {
  key: string;
  obj: CachedObject;
  cost: number;
  /** Towards the most recently used end. */
  newer: Node | undefined;
  /** Towards the least recently used end. */
  older: Node | undefined;
}

/** An LRU of cached objects bounded by the sum of their body sizes. */
export class MemoryTier {
  private readonly nodes = new Map<string, Node>();
  /** Vary field names last seen for each URL, and the keys of its variants. */
  private readonly urls = new Map<string, { vary: string[]; keys: Set<string> }>();
  private newest: Node | undefined;
  private oldest: Node | undefined;
  private used = 0;

  /** @param maxBytes total budget; 0 turns the tier off. */
  constructor(readonly maxBytes: number) {}

  /** Bytes in use. */
  get bytes(): number {
    return this.used;
  }

  /** Number of stored variants. */
  get size(): number {
    return this.nodes.size;
  }

  /** The variant of `url` that the request selects, moved to most-recently used. */
  get(url: string, headers: HeaderMap): CachedObject | undefined {
    const u = this.urls.get(url);
    if (!u) return undefined;
    const node = this.nodes.get(u.vary.length === 0 ? url : url + '\n' + variantKey(u.vary, headers));
    if (node === undefined) return undefined;
    if (node !== this.newest) {
      this.unlink(node);
      this.pushNewest(node);
    }
    return node.obj;
  }

  /** Adds or replaces a variant, evicting least recently used ones to stay within the budget;
   * false when the object has no body in memory or is larger than the whole budget. */
  set(obj: CachedObject): boolean {
    if (!obj.body) return false;
    const cost = obj.body.length + OVERHEAD;
    if (cost > this.maxBytes) return false;
    const key = keyOf(obj);
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
    const node: Node = { key, obj, cost, newer: undefined, older: undefined };
    this.nodes.set(key, node);
    this.pushNewest(node);
    this.used += cost;
    while (this.used > this.maxBytes && this.oldest) this.removeKey(this.oldest.key);
    return true;
  }

  /** Removes one variant if it is this very object (a newer one may have replaced it). */
  delete(obj: CachedObject): void {
    const key = keyOf(obj);
    if (this.nodes.get(key)?.obj === obj) this.removeKey(key);
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

  /** Every stored variant of a URL, without touching their recency. */
  variants(url: string): CachedObject[] {
    const u = this.urls.get(url);
    if (!u) return [];
    return [...u.keys].flatMap((k) => {
      const n = this.nodes.get(k);
      return n ? [n.obj] : [];
    });
  }

  /** Drops everything. */
  clear(): void {
    this.nodes.clear();
    this.urls.clear();
    this.newest = this.oldest = undefined;
    this.used = 0;
  }

  /** Keys from most to least recently used (for tests). */
  keys(): string[] {
    const out: string[] = [];
    for (let n = this.newest; n; n = n.older) out.push(n.key);
    return out;
  }

  private pushNewest(node: Node): void {
    node.older = this.newest;
    node.newer = undefined;
    if (this.newest) this.newest.newer = node;
    this.newest = node;
    if (!this.oldest) this.oldest = node;
  }

  private unlink(node: Node): void {
    if (node.newer) node.newer.older = node.older;
    else this.newest = node.older;
    if (node.older) node.older.newer = node.newer;
    else this.oldest = node.newer;
    node.newer = node.older = undefined;
  }

  private removeKey(key: string): void {
    const node = this.nodes.get(key);
    if (!node) return;
    this.nodes.delete(key);
    this.unlink(node);
    this.used -= node.cost;
    const u = this.urls.get(node.obj.url);
    if (u) {
      u.keys.delete(key);
      if (u.keys.size === 0) this.urls.delete(node.obj.url);
    }
  }
}

function keyOf(obj: CachedObject): string {
  return obj.vary.length === 0 ? obj.url : obj.url + '\n' + obj.variant;
}
