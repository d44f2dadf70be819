/**
 * The two-tier cache store: a memory tier (Buffers, LRU, bounded in bytes) in front of the object
 * tier (bodies in the Blobs port, metadata in Tables) that every proxy task shares.
 *
 * Tables layout (DESIGN.md):
 * - `CACHE#<url hash>` / `VARY#<variant hash>`: the versioned entry record, its size, blob key and
 *   the sort key of its LRU index item.
 * - `CACHELRU` / `<last use, ms, 15 digits>#<url hash>#<variant hash>`: LRU index for eviction.
 * - `CACHESTATS` / `STORE`: bytes and objects held by the object tier (atomic counters).
 * - `CACHEPURGE` / `<ms>#<url hash>#<random>`: recent purges, for the other tasks' memory tiers.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type CachePolicy from 'http-cache-semantics';
import type { Logger } from '../log.js';
import { isStorageError, type Blobs, type Item, type Tables, type TransactOp } from '../storage/ports.js';
import { CachedObject, policyClass, type EntryRecord, type PolicyClass } from './entry.js';
import { hashKey, variantKey, type HeaderMap } from './keys.js';
import { BodyWriter } from './body-writer.js';
import { KnownUrls } from './known-urls.js';
import { MemoryTier } from './memory.js';

/** Options of CacheStore. */
export interface CacheStoreOptions {
  tables: Tables;
  blobs: Blobs;
  log: Logger;
  /** Memory tier budget in bytes. @default 256 MiB */
  memoryBytes?: number;
  /** Object tier budget in bytes (LRU eviction above it). @default 10 GiB */
  cacheBytes?: number;
  /** Largest body stored at all. @default 100 MiB */
  maxObjectBytes?: number;
  /** Largest body kept in the memory tier. @default min(memoryBytes / 8, 8 MiB) */
  memoryObjectBytes?: number;
  /** Bodies waiting to be written to the object tier; past this, new ones stay in memory only. @default 1024 */
  persistBacklog?: number;
  /**
   * Uses of a response held in the memory tier (the request that stored it is the first) before
   * it is also written to the object tier; 1 writes every stored response. Responses too large for
   * the memory tier go to the object tier as they stream, whatever this says. @default 2
   */
  admitHits?: number;
  /** Concurrent object-tier writes. Kept below libuv's thread pool (4) because each local write
   * ends in fsyncs there, and DNS lookups for origins share that pool. @default 2 */
  persistConcurrency?: number;
  /** Heuristic freshness cap in seconds. @default 86400 */
  heuristicCapSeconds?: number;
  /**
   * True when other processes may add entries to the object tier (several proxy tasks sharing
   * S3 and DynamoDB): every memory miss then asks Tables. False (one proxy process on local
   * storage, or the proxy workers of one host telling each other what they stored: `stored`,
   * markStored) lets a miss skip that query for a URL the tier cannot hold (see KnownUrls); if a
   * second process does write the same storage after all, its entries are merely not seen until
   * a restart (a miss that could have been a hit, never a wrong answer). @default true
   */
  sharedObjectTier?: boolean;
  /**
   * Told the URL hash of every entry this store writes to the object tier, so that the other
   * writers of a local tier (the proxy workers of one host, containers/proxy/workers.ts) can mark
   * it with markStored and keep skipping the query for URLs the tier cannot hold.
   */
  stored?: (urlHash: string) => void;
  /**
   * The sibling proxy workers of this host's local object tier (containers/proxy/workers.ts). A
   * response kept in memory only (see admitHits) lives in one worker's memory tier, where a repeat
   * handed to another worker would not find it: `held` tells the siblings its URL hash, and a
   * sibling's miss on such a URL asks the holders (`ask`, resolving true once one has written it
   * to the object tier, see persistHeld) before it goes to the origin. So a repeat is a hit on
   * whichever worker it lands, and the one-hit responses still cost no object-tier write.
   */
  siblings?: { held: (urlHash: string) => void; ask: (url: string) => Promise<boolean> };
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

/** Statistics of the object tier as kept in Tables. */
export interface StoreTotals {
  bytes: number;
  objects: number;
}

export const STATS_PK = 'CACHESTATS';
const LRU_PK = 'CACHELRU';
/** Recent purges (`<ms>#<url hash>#<random>`, with the URL), kept an hour by TTL. */
const PURGE_PK = 'CACHEPURGE';
const PURGE_SLACK_MS = 5_000;
const TOUCH_EVERY_MS = 60_000;
const REFRESH_WRITE_MS = 5_000;

/** The cache: lookups across both tiers, writers for new bodies, refresh, purge, eviction. */
export class CacheStore {
  readonly memory: MemoryTier;
  readonly Policy: PolicyClass;
  readonly now: () => number;
  readonly maxObjectBytes: number;
  readonly memoryObjectBytes: number;
  readonly cacheBytes: number;
  readonly tables: Tables;
  readonly blobs: Blobs;
  readonly log: Logger;
  private readonly backlogLimit: number;
  private readonly admitHits: number;
  private readonly concurrency: number;
  private readonly backlog: CachedObject[] = [];
  private active = 0;
  private idle: (() => void)[] = [];
  private evicting: Promise<void> | undefined;
  private readonly writers = new Set<BodyWriter>();
  private lastSizeCheck = 0;
  private closed = false;
  private readonly known: KnownUrls | undefined;
  private readonly stored: ((urlHash: string) => void) | undefined;
  private readonly siblings: CacheStoreOptions['siblings'];
  /** URL hashes a sibling worker said it holds in memory only (markHeld); a clear bit spares the question. */
  private readonly heldElsewhere: KnownUrls | undefined;
  /** Resolves true once misses can skip the object tier for URLs it cannot hold (never with a shared tier). */
  readonly indexed: Promise<boolean>;

  constructor(options: CacheStoreOptions) {
    this.tables = options.tables;
    this.blobs = options.blobs;
    this.log = options.log;
    this.now = options.now ?? Date.now;
    const memoryBytes = options.memoryBytes ?? 256 * 1024 * 1024;
    this.memory = new MemoryTier(memoryBytes);
    this.maxObjectBytes = options.maxObjectBytes ?? 100 * 1024 * 1024;
    this.memoryObjectBytes = Math.min(options.memoryObjectBytes ?? Math.min(memoryBytes / 8, 8 * 1024 * 1024), this.maxObjectBytes);
    this.cacheBytes = options.cacheBytes ?? 10 * 1024 * 1024 * 1024;
    this.backlogLimit = options.persistBacklog ?? 1024;
    this.admitHits = Math.max(1, options.admitHits ?? 2);
    this.concurrency = options.persistConcurrency ?? 2;
    this.Policy = policyClass({ now: this.now, heuristicCapSeconds: options.heuristicCapSeconds });
    this.stored = options.stored;
    this.siblings = options.siblings;
    if (this.siblings) {
      this.heldElsewhere = new KnownUrls();
      this.heldElsewhere.ready = true;
    }
    if (options.sharedObjectTier === false) {
      this.known = new KnownUrls();
      this.indexed = this.loadKnown(this.known);
    } else this.indexed = Promise.resolve(false);
  }

  /** Reads the URL hashes of every entry from the LRU index (one item per entry). */
  private async loadKnown(known: KnownUrls): Promise<boolean> {
    try {
      let cursor: string | undefined;
      do {
        const page = await this.tables.query(LRU_PK, { limit: 1000, cursor });
        for (const item of page.items) if (typeof item.epk === 'string') known.add(item.epk.slice(ENTRY_PREFIX.length));
        cursor = page.cursor;
      } while (cursor !== undefined && !this.closed);
      known.ready = !this.closed;
    } catch (e) {
      // Not ready: every miss keeps asking Tables, as with a shared tier.
      this.log.warn({ err: e }, 'cache index not loaded; every miss queries the object tier');
    }
    return known.ready;
  }

  /** Another writer of this local tier stored an entry for the URL hash (see `stored`). */
  markStored(urlHash: string): void {
    this.known?.add(urlHash);
  }

  /** A sibling worker keeps a response for the URL hash in its memory tier only (see `siblings`). */
  markHeld(urlHash: string): void {
    this.heldElsewhere?.add(urlHash);
  }

  /**
   * A sibling worker missed on `url`, which this store may hold in memory only: writes every such
   * variant to the object tier now (ahead of the queue) and resolves true once the tier has one
   * (false: none held here).
   */
  async persistHeld(url: string): Promise<boolean> {
    const objs = this.memory.variants(url);
    await Promise.all(
      objs.map(async (obj) => {
        // A write already under way (or a refresh of a persisted entry) is waited for, not repeated.
        await Promise.allSettled([...(this.persisting.get(url) ?? [])]);
        if (obj.persisted || this.closed) return;
        if (obj.queued) {
          const i = this.backlog.indexOf(obj);
          if (i >= 0) this.backlog.splice(i, 1);
          obj.queued = false;
        }
        await this.startPersist(obj);
      }),
    );
    return objs.some((o) => o.persisted);
  }

  /** A new CachePolicy for a request/response pair, as a shared cache (RFC 9111 §3). */
  policy(req: CachePolicy.HttpRequest, res: CachePolicy.HttpResponse): CachePolicy {
    return new this.Policy(req, res, { shared: true });
  }

  /** The variant the request selects from the memory tier only (no I/O: a hit in memory is answered synchronously). */
  memoryGet(url: string, headers: HeaderMap): CachedObject | undefined {
    return this.memory.get(url, headers);
  }

  /** The variant the request selects from either tier; the memory tier is filled from the object tier. */
  async lookup(url: string, headers: HeaderMap): Promise<CachedObject | undefined> {
    const m = this.memory.get(url, headers);
    if (m) return m;
    const h = hashKey(url);
    if (this.known && !this.known.mayHold(h)) {
      // Not in the object tier; in a sibling worker's memory, perhaps: it writes it there if so.
      if (!this.heldElsewhere?.mayHold(h) || !(await this.siblings!.ask(url))) return undefined;
    }
    const pk = ENTRY_PREFIX + h;
    let items: Item[];
    try {
      items = (await this.tables.query(pk, { range: { beginsWith: 'VARY#' }, limit: 64 })).items;
    } catch (e) {
      this.log.warn({ err: e }, 'cache lookup failed; treating as a miss');
      return undefined;
    }
    for (const item of items) {
      let rec: EntryRecord;
      try {
        rec = JSON.parse(String(item.entry)) as EntryRecord;
      } catch {
        continue;
      }
      const obj = CachedObject.fromRecord(rec, this.Policy);
      if (!obj || obj.url !== url || variantKey(obj.vary, headers) !== obj.variant) continue;
      obj.lruKey = typeof item.lru === 'string' ? item.lru : '';
      if (obj.size <= this.memoryObjectBytes) {
        try {
          const { body } = await this.blobs.get(obj.blobKey);
          const buf = await readAll(body, obj.size);
          if (buf.length !== obj.size) throw new Error('stored body has the wrong length');
          obj.body = buf;
          this.memory.set(obj);
        } catch (e) {
          if (isStorageError(e, 'NotFound')) {
            await this.deleteEntry(pk, String(item.sk)).catch(() => undefined);
            return undefined;
          }
          this.log.warn({ err: e }, 'cache body unreadable; treating as a miss');
          return undefined;
        }
      }
      this.touch(obj);
      return obj;
    }
    return undefined;
  }

  /** The body of a stored object: its Buffer, or a stream of (a range of) its blob. */
  async openBody(obj: CachedObject, range?: { start: number; end: number }): Promise<Buffer | Readable> {
    if (obj.body) return range ? obj.body.subarray(range.start, range.end + 1) : obj.body;
    const { body, info } = await this.blobs.get(obj.blobKey, range ? { range } : undefined);
    // Cache bodies are stored without fsync (blobs.put durable: false): after a crash a body may
    // be short. The caller treats this error as a lost body and fetches from the origin again.
    if (info.size !== obj.size) {
      body.destroy();
      throw new Error(`stored body has ${info.size} bytes, the entry says ${obj.size}`);
    }
    return body;
  }

  /** A writer that stores a response body as it streams (call end() or abort()). */
  writer(url: string, variant: string, vary: string[], policy: CachePolicy, expectedLength?: number): BodyWriter {
    return new BodyWriter(this, url, variant, vary, policy, expectedLength);
  }

  /**
   * A fresh blob key for a new body of the variant (never reused, so readers never see a mix):
   * `<2 chars of the URL hash>/<URL hash>.<variant hash>.<store tag><sequence>`. The 4096 shared
   * folders (rather than one or two new folders per URL, each a mkdir and fsyncs of its parents on
   * the local family) keep a miss to one file creation; the random tag per store and the sequence
   * make keys unique across tasks and restarts without a random draw per object.
   */
  newBlobKey(url: string, variant: string): string {
    const h = hashKey(url);
    return `${h.slice(0, 2)}/${h}.${variant ? hashKey(variant).slice(0, 16) : '-'}.${this.keyTag}${(this.keySeq++).toString(36)}`;
  }

  private readonly keyTag = `${Date.now().toString(36)}${randomBytes(6).toString('hex')}-`;
  private keySeq = 0;

  /** Puts a complete in-memory object in the memory tier and queues it for the object tier. */
  adopt(obj: CachedObject): void {
    if (this.closed) return;
    if (obj.size <= this.memoryObjectBytes && this.memory.set(obj) && this.admitHits > 1) {
      this.siblings?.held(hashKey(obj.url));
      return;
    }
    this.admit(obj);
  }

  /**
   * Counts a use of a stored response; a response held only in memory is written to the object
   * tier at its `admitHits`-th use. Most responses a proxy stores are never asked for again (the
   * "one-hit wonders" that make up most objects in web traces); writing each of them is a file
   * creation, rename and Tables transaction for nothing (see docs/performance.md, Proxy), so, like the cache-on-second-hit rule of large CDNs, only responses asked for again
   * are shared through the object tier. A task that restarts or evicts a one-hit response fetches
   * it again; a second task that asks for it stores it in its own memory tier.
   */
  used(obj: CachedObject): void {
    if (obj.persisted || obj.queued) return;
    if (++obj.uses >= this.admitHits) this.admit(obj);
  }

  private admit(obj: CachedObject): void {
    if (this.backlog.length >= this.backlogLimit) {
      this.log.debug({ url: obj.url }, 'object tier backlog full; kept in memory only');
      return;
    }
    this.enqueue(obj);
  }

  private enqueue(obj: CachedObject): void {
    if (obj.queued) return;
    obj.queued = true;
    this.backlog.push(obj);
    this.pump();
  }

  /** Updates a stored object after a 304 (RFC 9111 §4.3.4): new headers, same body. */
  refresh(obj: CachedObject, policy: CachePolicy): void {
    obj.refresh(policy);
    // Rewriting the record on every 304 would make revalidation cost a Tables write; at most one
    // per entry every REFRESH_WRITE_MS is enough for other tasks (they revalidate on their own).
    const now = this.now();
    if (obj.persisted && now - obj.recordWrittenAt >= REFRESH_WRITE_MS && this.backlog.length < this.backlogLimit) this.enqueue(obj);
  }

  /** Removes every stored variant of a URL from both tiers (RFC 9111 §4.4); returns how many. */
  async purge(url: string): Promise<number> {
    const inMemory = this.memory.deleteUrl(url);
    for (let i = this.backlog.length - 1; i >= 0; i--) {
      if (this.backlog[i].url === url) this.backlog.splice(i, 1)[0].queued = false;
    }
    // A write of this URL already under way would put its record back after the delete below.
    await Promise.allSettled([...(this.persisting.get(url) ?? [])]);
    const pk = entryPk(url);
    const { items } = await this.tables.query(pk, { range: { beginsWith: 'VARY#' }, limit: 1000 });
    let inTables = 0;
    for (const item of items) if ((await this.deleteEntry(pk, String(item.sk))) !== undefined) inTables++;
    // Tell the other proxy tasks, whose memory tiers may hold the URL (see watchPurges).
    const now = this.now();
    await this.tables.put({
      pk: PURGE_PK,
      sk: `${String(now).padStart(15, '0')}#${hashKey(url)}#${randomBytes(4).toString('hex')}`,
      url,
      ttl: Math.ceil(now / 1000) + 3600,
    });
    return Math.max(inMemory, inTables);
  }

  /**
   * Polls the purge log that purge() writes, so that an invalidation (RFC 9111 §4.4) or a
   * `cache purge` made by any task also drops the URL from this task's memory tier within about
   * `intervalMs`. Returns a function that stops the polling.
   */
  watchPurges(intervalMs = 1000): () => void {
    let since = this.now();
    const seen = new Map<string, number>();
    let busy = false;
    const poll = async (): Promise<void> => {
      const now = this.now();
      // Clocks of different tasks differ a little: look back a few seconds and skip what was seen.
      const from = String(since - PURGE_SLACK_MS).padStart(15, '0');
      // Eventually consistent (half the price of the once-a-second poll): a purge written in the
      // last moment and missed now is still inside the next poll's 5 s look-back.
      const { items } = await this.tables.query(PURGE_PK, { range: { gt: from }, limit: 1000, consistent: false });
      for (const item of items) {
        if (seen.has(item.sk)) continue;
        seen.set(item.sk, now);
        if (typeof item.url === 'string') this.memory.deleteUrl(item.url);
      }
      for (const [sk, at] of seen) if (now - at > 4 * PURGE_SLACK_MS) seen.delete(sk);
      since = now;
    };
    const timer = setInterval(() => {
      if (busy) return;
      busy = true;
      poll()
        .catch((e: unknown) => this.log.debug({ err: e }, 'purge log poll failed'))
        .finally(() => (busy = false));
    }, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Object-tier totals from Tables. */
  async totals(): Promise<StoreTotals> {
    const item = await this.tables.get({ pk: STATS_PK, sk: 'STORE' });
    return { bytes: Number(item?.bytes ?? 0), objects: Number(item?.objects ?? 0) };
  }

  /** Resolves when every body being stored and every queued object-tier write has finished. */
  async flush(): Promise<void> {
    while (this.backlog.length > 0 || this.active > 0 || this.writers.size > 0) {
      await new Promise<void>((resolve) => this.idle.push(resolve));
    }
    if (this.evicting) await this.evicting;
  }

  /** Bookkeeping for flush(): a writer started. */
  writerOpened(w: BodyWriter): void {
    this.writers.add(w);
  }

  /** Bookkeeping for flush(): a writer ended or was aborted. */
  writerClosed(w: BodyWriter): void {
    if (!this.writers.delete(w)) return;
    if (this.writers.size === 0 && this.active === 0 && this.backlog.length === 0) for (const f of this.idle.splice(0)) f();
  }

  /** Finishes queued writes and stops taking new ones. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    this.memory.clear();
  }

  /** Object-tier writes under way, by URL, so that purge() can wait for them. */
  private readonly persisting = new Map<string, Set<Promise<void>>>();

  private pump(): void {
    while (this.active < this.concurrency && this.backlog.length > 0) {
      const obj = this.backlog.shift()!;
      obj.queued = false;
      void this.startPersist(obj);
    }
  }

  /** Writes an object to the object tier, counted as active and listed under its URL until done; never rejects. */
  private startPersist(obj: CachedObject): Promise<void> {
    this.active++;
    const done: Promise<void> = this.persist(obj)
      .catch((e: unknown) => this.log.warn({ err: e, url: obj.url }, 'cache object not persisted'))
      .finally(() => {
        this.persisting.get(obj.url)?.delete(done);
        if (this.persisting.get(obj.url)?.size === 0) this.persisting.delete(obj.url);
        this.active--;
        this.pump();
        if (this.active === 0 && this.backlog.length === 0 && this.writers.size === 0) for (const f of this.idle.splice(0)) f();
      });
    let set = this.persisting.get(obj.url);
    if (!set) this.persisting.set(obj.url, (set = new Set()));
    set.add(done);
    return done;
  }

  private async persist(obj: CachedObject): Promise<void> {
    if (!obj.persisted) {
      if (!obj.body) return;
      if (!obj.blobKey) obj.blobKey = this.newBlobKey(obj.url, obj.variant);
      await this.blobs.put(obj.blobKey, obj.body, { maxBytes: this.maxObjectBytes, durable: false });
    }
    await this.writeRecord(obj);
  }

  /** Writes (or rewrites) the Tables record of an object whose body is in blobs. */
  async writeRecord(obj: CachedObject): Promise<void> {
    const pk = entryPk(obj.url);
    const sk = entrySk(obj.variant);
    const old = await this.tables.get({ pk, sk });
    const lru = lruSk(this.now(), obj.url, obj.variant);
    const oldSize = old ? Number(old.size ?? 0) : 0;
    const oldLru = old && typeof old.lru === 'string' ? old.lru : '';
    const oldBlob = old && typeof old.blobKey === 'string' ? old.blobKey : '';
    const ops: TransactOp[] = [
      {
        put: { pk, sk, entry: JSON.stringify(obj.toRecord()), size: obj.size, blobKey: obj.blobKey, lru },
        condition: old ? { equals: { lru: oldLru } } : { exists: false },
      },
      { put: { pk: LRU_PK, sk: lru, epk: pk, esk: sk } },
      { update: { pk: STATS_PK, sk: 'STORE' }, changes: { add: { bytes: obj.size - oldSize, objects: old ? 0 : 1 } } },
    ];
    if (oldLru && oldLru !== lru) ops.push({ delete: { pk: LRU_PK, sk: oldLru } });
    try {
      await this.tables.transact(ops);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) {
        // Another writer replaced the entry meanwhile; theirs stands.
        if (oldBlob !== obj.blobKey && !obj.persisted) await this.blobs.delete(obj.blobKey).catch(() => undefined);
        return;
      }
      if (!obj.persisted) await this.blobs.delete(obj.blobKey).catch(() => undefined);
      throw e;
    }
    obj.persisted = true;
    this.known?.add(pk.slice(ENTRY_PREFIX.length));
    this.stored?.(pk.slice(ENTRY_PREFIX.length));
    obj.lruKey = lru;
    obj.touchedAt = this.now();
    obj.recordWrittenAt = obj.touchedAt;
    if (oldBlob && oldBlob !== obj.blobKey) await this.blobs.delete(oldBlob).catch(() => undefined);
    this.maybeEvict();
  }

  /** Moves an object-tier entry to most-recently used, at most once a minute per entry (memory
   * hits call this too, so that objects hot in memory are not evicted from the shared tier). */
  touch(obj: CachedObject): void {
    const now = this.now();
    if (!obj.lruKey || now - obj.touchedAt < TOUCH_EVERY_MS) return;
    obj.touchedAt = now;
    const pk = entryPk(obj.url);
    const sk = entrySk(obj.variant);
    const lru = lruSk(now, obj.url, obj.variant);
    if (lru === obj.lruKey) return;
    const old = obj.lruKey;
    this.tables
      .transact([
        { update: { pk, sk }, changes: { set: { lru } }, condition: { equals: { lru: old } } },
        { put: { pk: LRU_PK, sk: lru, epk: pk, esk: sk } },
        { delete: { pk: LRU_PK, sk: old } },
      ])
      .then(
        () => {
          obj.lruKey = lru;
        },
        () => undefined,
      );
  }

  private maybeEvict(): void {
    const now = this.now();
    if (this.evicting || now - this.lastSizeCheck < 1000) return;
    this.lastSizeCheck = now;
    this.evicting = this.evict()
      .then(() => undefined)
      .catch((e: unknown) => this.log.warn({ err: e }, 'cache eviction failed'))
      .finally(() => {
        this.evicting = undefined;
      });
  }

  /** Deletes least recently used entries until the object tier is within its budget. */
  async evict(): Promise<number> {
    let removed = 0;
    for (let round = 0; round < 1000; round++) {
      let { bytes } = await this.totals();
      if (bytes <= this.cacheBytes) break;
      const { items } = await this.tables.query(LRU_PK, { limit: 16 });
      if (items.length === 0) break;
      for (const idx of items) {
        if (bytes <= this.cacheBytes) break;
        const size = await this.deleteEntry(String(idx.epk), String(idx.esk), idx.sk);
        if (size !== undefined) {
          removed++;
          bytes -= size;
        } else await this.tables.delete({ pk: LRU_PK, sk: idx.sk }).catch(() => undefined);
      }
    }
    return removed;
  }

  /** Deletes one entry record, its LRU item and its blob; returns its size, or undefined if it
   * was gone or changed meanwhile. */
  private async deleteEntry(pk: string, sk: string, expectLru?: string): Promise<number | undefined> {
    const item = await this.tables.get({ pk, sk });
    if (!item) return undefined;
    const lru = typeof item.lru === 'string' ? item.lru : '';
    if (expectLru !== undefined && lru !== expectLru) return undefined;
    const ops: TransactOp[] = [
      { delete: { pk, sk }, condition: { equals: { lru } } },
      { update: { pk: STATS_PK, sk: 'STORE' }, changes: { add: { bytes: -Number(item.size ?? 0), objects: -1 } } },
    ];
    if (lru) ops.push({ delete: { pk: LRU_PK, sk: lru } });
    try {
      await this.tables.transact(ops);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return undefined;
      throw e;
    }
    if (typeof item.blobKey === 'string' && item.blobKey) await this.blobs.delete(item.blobKey).catch(() => undefined);
    return Number(item.size ?? 0);
  }
}

const ENTRY_PREFIX = 'CACHE#';

/** Tables partition key of a URL's entries. */
export function entryPk(url: string): string {
  return ENTRY_PREFIX + hashKey(url);
}

function entrySk(variant: string): string {
  return `VARY#${variant ? hashKey(variant) : '-'}`;
}

function lruSk(now: number, url: string, variant: string): string {
  return `${String(now).padStart(15, '0')}#${hashKey(url)}#${variant ? hashKey(variant) : '-'}`;
}

async function readAll(body: Readable, expected: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    const b = c as Buffer;
    n += b.length;
    if (n > expected) {
      body.destroy();
      break;
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks, Math.min(n, expected));
}
