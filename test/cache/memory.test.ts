/**
 * The memory tier's linked-list LRU checked against a plain reference model (a Map re-inserted on
 * every use, the textbook LRU) over a long random sequence of gets, sets, deletes and purges.
 */
import { describe, expect, it } from 'vitest';
import CachePolicy from 'http-cache-semantics';
import { CachedObject } from '../../core/cache/entry.js';
import { MemoryTier } from '../../core/cache/memory.js';
import { variantKey } from '../../core/cache/keys.js';

const OVERHEAD = 512;

function obj(url: string, size: number, vary: string[] = [], lang?: string): CachedObject {
  const policy = new CachePolicy({ url, headers: {} }, { status: 200, headers: { 'cache-control': 'max-age=60' } });
  const variant = variantKey(vary, lang === undefined ? {} : { 'accept-language': lang });
  return new CachedObject(url, variant, vary, policy, size, 0, Buffer.alloc(size), '');
}

/** The reference: keys in recency order (oldest first), costs, a byte budget. */
class Model {
  entries = new Map<string, { obj: CachedObject; cost: number }>();
  constructor(readonly max: number) {}
  key(o: CachedObject): string {
    return o.vary.length === 0 ? o.url : o.url + '\n' + o.variant;
  }
  used(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.cost;
    return n;
  }
  get(key: string): CachedObject | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.obj;
  }
  set(o: CachedObject): void {
    const cost = o.body!.length + OVERHEAD;
    if (cost > this.max) return;
    const key = this.key(o);
    this.entries.delete(key);
    // A changed Vary for the URL drops its other variants.
    for (const [k, e] of this.entries) if (e.obj.url === o.url && e.obj.vary.join() !== o.vary.join()) this.entries.delete(k);
    this.entries.set(key, { obj: o, cost });
    while (this.used() > this.max) this.entries.delete(this.entries.keys().next().value!);
  }
  deleteUrl(url: string): number {
    let n = 0;
    for (const [k, e] of this.entries)
      if (e.obj.url === url) {
        this.entries.delete(k);
        n++;
      }
    return n;
  }
}

describe('MemoryTier (byte-bounded LRU)', () => {
  it('matches a reference LRU over 20,000 random operations', () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const max = 20 * (1000 + OVERHEAD);
    const mem = new MemoryTier(max);
    const model = new Model(max);
    const urls = Array.from({ length: 40 }, (_, i) => `http://h/${i}`);
    const langs = ['en', 'fr', 'de'];
    for (let step = 0; step < 20_000; step++) {
      const url = urls[rand(urls.length)];
      const op = rand(10);
      // URLs 0..4 vary on Accept-Language; URL 5 switches between varying and not.
      const varying = Number(url.slice(9)) < 5 || (url.endsWith('/5') && rand(2) === 0);
      const lang = langs[rand(langs.length)];
      if (op < 5) {
        const headers = varying ? { 'accept-language': lang } : {};
        const got = mem.get(url, headers);
        // Every stored variant of a URL shares its Vary names (a change drops the others).
        const vary = [...model.entries.values()].find((e) => e.obj.url === url)?.obj.vary ?? [];
        const want = model.get(vary.length ? url + '\n' + variantKey(vary, headers) : url);
        expect(got).toBe(want);
      } else if (op < 9) {
        const size = op === 8 ? 30 * 1000 : 200 + rand(3000);
        const o = varying ? obj(url, size, ['accept-language'], lang) : obj(url, size);
        mem.set(o);
        model.set(o);
      } else {
        expect(mem.deleteUrl(url)).toBe(model.deleteUrl(url));
      }
      expect(mem.bytes).toBe(model.used());
      expect(mem.bytes).toBeLessThanOrEqual(max);
      expect(mem.size).toBe(model.entries.size);
      if (step % 97 === 0) expect(mem.keys()).toEqual([...model.entries.keys()].reverse());
    }
  });

  it('delete(obj) removes only that very object, not a newer one stored under the same key', () => {
    const mem = new MemoryTier(1e6);
    const a = obj('http://h/a', 10);
    const b = obj('http://h/a', 20);
    mem.set(a);
    mem.set(b);
    mem.delete(a);
    expect(mem.get('http://h/a', {})).toBe(b);
    mem.delete(b);
    expect(mem.get('http://h/a', {})).toBeUndefined();
    expect(mem.bytes).toBe(0);
  });

  it('variants(url) lists every stored variant of a URL and leaves the recency order alone', () => {
    const mem = new MemoryTier(1e6);
    const en = obj('http://h/v', 10, ['accept-language'], 'en');
    const fr = obj('http://h/v', 10, ['accept-language'], 'fr');
    const other = obj('http://h/w', 10);
    mem.set(en);
    mem.set(fr);
    mem.set(other);
    const order = mem.keys();
    expect(new Set(mem.variants('http://h/v'))).toEqual(new Set([en, fr]));
    expect(mem.variants('http://h/none')).toEqual([]);
    expect(mem.keys()).toEqual(order);
  });
});
