/**
 * The three storage ports every protocol server and worker speaks to (DESIGN.md, "Storage ports").
 * Two adapter families implement them: `local/` (files + SQLite) and `aws/` (S3, DynamoDB, SQS).
 * Adapters translate every backend error into a StorageError below; nothing backend-specific
 * (SqliteError, ConditionalCheckFailedException, NoSuchKey, ...) leaves an adapter folder.
 */
import type { Readable } from 'node:stream';

/** What kind of failure a storage call met. Only `Unavailable` is worth retrying as is. */
export type StorageErrorCode = 'NotFound' | 'ConditionFailed' | 'TooLarge' | 'Unavailable' | 'Invalid';

/** A storage failure in domain terms, with the backend's error kept as `cause`. */
export class StorageError extends Error {
  constructor(
    readonly code: StorageErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = `StorageError(${code})`;
  }
  /** True when the same call may succeed later (throttling, network, a busy database). */
  get retryable(): boolean {
    return this.code === 'Unavailable';
  }
}

/** The key or item does not exist (an expired item counts as absent). */
export class NotFound extends StorageError {
  constructor(what: string, options?: { cause?: unknown }) {
    super('NotFound', `not found: ${what}`, options);
  }
}
/** A conditional write lost: the condition did not hold. */
export class ConditionFailed extends StorageError {
  constructor(what: string, options?: { cause?: unknown }) {
    super('ConditionFailed', `condition failed: ${what}`, options);
  }
}
/** A blob was longer than the caller's maxBytes; nothing was stored. */
export class TooLarge extends StorageError {
  constructor(
    readonly limit: number,
    options?: { cause?: unknown },
  ) {
    super('TooLarge', `larger than ${limit} bytes`, options);
  }
}
/** The backend could not be reached or refused for load; retry later. */
export class Unavailable extends StorageError {
  constructor(what: string, options?: { cause?: unknown }) {
    super('Unavailable', `unavailable: ${what}`, options);
  }
}
/** The call itself was malformed (bad key, too many writes, delay out of range). */
export class InvalidRequest extends StorageError {
  constructor(what: string, options?: { cause?: unknown }) {
    super('Invalid', `invalid request: ${what}`, options);
  }
}

export function isStorageError(e: unknown, code?: StorageErrorCode): e is StorageError {
  return e instanceof StorageError && (code === undefined || e.code === code);
}

// ---------------------------------------------------------------------------------------------
// Blobs

/** What is known of a stored blob. `sha256` (hex) is always returned by put; head/get return it
 * when the backend kept it. */
export interface BlobInfo {
  key: string;
  size: number;
  sha256?: string;
  contentType?: string;
  /** Small string metadata set at put time (lower-case keys, ASCII values). */
  metadata?: Record<string, string>;
  lastModified?: Date;
}

export type BlobBody = Readable | AsyncIterable<Uint8Array> | Uint8Array | string;

export interface BlobPutOptions {
  /** Refuse (TooLarge) and store nothing when the body is longer than this. @default unbounded */
  maxBytes?: number;
  /** Put-if-absent: ConditionFailed when the key already exists; exactly one racer wins. */
  ifAbsent?: boolean;
  contentType?: string;
  metadata?: Record<string, string>;
  /**
   * false: the put may return before the object is on disk, so a crash or power loss may lose it
   * or leave it shorter than written (never another object's bytes: it is still written under a
   * temporary name and renamed). For a cache that checks the size it expects on every read; never
   * for mail. What each family does with it: local skips the file and folder fsyncs; aws ignores
   * it (an S3 put is durable when it returns). Either way the caller may not rely on losing it.
   * @default true
   */
  durable?: boolean;
}

/** Reads a small object whole, synchronously; see `Blobs.smallReader`. */
export interface SmallBlobReader {
  /**
   * The body when it is at most `maxBytes` long, else undefined (then use `get`); NotFound like
   * `get`. `into`: a buffer to read into when big enough (the body is then a view of it), so a
   * caller reading one object after another allocates once.
   */
  readSmallSync(key: string, options?: { maxBytes?: number; sizeHint?: number; into?: Buffer }): Buffer | undefined;
}

/** An inclusive byte range, as in HTTP `Range: bytes=start-end`; `end` defaults to the last byte. */
export interface ByteRange {
  start: number;
  end?: number;
}

export interface BlobListPage {
  items: BlobInfo[];
  /** Pass back as `cursor` to continue; absent on the last page. */
  cursor?: string;
}

/** Immutable objects addressed by key. A put is atomic: readers see the whole object or none. */
export interface Blobs {
  /** Streams the body in; resolves once it is durable (local: fsynced and renamed). */
  put(key: string, body: BlobBody, options?: BlobPutOptions): Promise<BlobInfo>;
  /** A stream of the object (or of the range). NotFound when absent. */
  get(key: string, options?: { range?: ByteRange }): Promise<{ info: BlobInfo; body: Readable }>;
  /** NotFound when absent. */
  head(key: string): Promise<BlobInfo>;
  /** Idempotent: deleting an absent key succeeds. */
  delete(key: string): Promise<void>;
  /** Keys in lexicographic order under a prefix. */
  list(prefix: string, options?: { limit?: number; cursor?: string }): Promise<BlobListPage>;
  /**
   * A reader of small objects that blocks the event loop for one short read, or undefined when the
   * adapter has none. Local files have one: an object in the page cache is read in a few system
   * calls, fewer than `get`'s thread-pool round trips (see docs/performance.md, Local storage).
   * S3 refuses (undefined): every read is a network request. A wrapper that leaves it out refuses
   * too. The reader's calls are not timed by instrument.ts; the caller counts what it does.
   */
  smallReader?(): SmallBlobReader | undefined;
  close?(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Tables

/** Attribute values are JSON values. `pk`, `sk` and `ttl` are reserved attribute names. */
export type AttrValue = string | number | boolean | null | AttrValue[] | { [k: string]: AttrValue };

export interface Key {
  pk: string;
  sk: string;
}

/** An item: its key, an optional expiry (`ttl`, epoch seconds) and any other attributes. After its
 * ttl an item is absent for every read and condition, even before the backend removes it. */
export interface Item extends Key {
  ttl?: number;
  [attr: string]: AttrValue | undefined;
}

/**
 * A condition on the current item. All given parts must hold (AND).
 * - `exists: false`: there is no live item at the key (an expired one counts as absent).
 * - `exists: true`: there is a live item.
 * - `equals`: each named attribute equals the value (`null` means: attribute absent or null).
 * - `lessThan` / `greaterThan`: numeric comparisons of attributes (absent attribute: fails).
 */
export interface Condition {
  exists?: boolean;
  equals?: Record<string, AttrValue>;
  lessThan?: Record<string, number>;
  greaterThan?: Record<string, number>;
}

/** An update: set attributes, add to numeric counters (absent counts as 0), remove attributes. */
export interface Update {
  set?: Record<string, AttrValue>;
  add?: Record<string, number>;
  remove?: string[];
  /** Set or change the item's expiry (epoch seconds); `null` clears it. */
  ttl?: number | null;
}

/** Bounds on the sort key for a query; strings compare by UTF-8 bytes (as DynamoDB does). */
export interface SortRange {
  beginsWith?: string;
  gte?: string;
  gt?: string;
  lte?: string;
  lt?: string;
}

export interface QueryOptions {
  range?: SortRange;
  /** Descending sort-key order. @default false */
  reverse?: boolean;
  /** At most this many items in the page. @default 100 */
  limit?: number;
  /** From a previous page's `cursor`. */
  cursor?: string;
  /** Strongly consistent read (DynamoDB ConsistentRead). @default true */
  consistent?: boolean;
  /**
   * Only these attributes of each item (a projection), with its `pk`, `sk` and `ttl`; an attribute
   * the item lacks is left out. For a caller that reads a few small attributes of items that also
   * hold large ones (a message's flags beside its stored summary): locally the rest never
   * reaches JavaScript, on DynamoDB it is never sent (the read costs the same capacity either
   * way). @default all
   */
  attributes?: string[];
}

export interface QueryPage {
  items: Item[];
  cursor?: string;
}

/** One write in a transaction. */
export type TransactOp =
  | { put: Item; condition?: Condition }
  | { update: Key; changes: Update; condition?: Condition }
  | { delete: Key; condition?: Condition }
  | { check: Key; condition: Condition };

/**
 * The writes one transaction may hold on every family (DynamoDB's classic limit). Code that sizes
 * batches for this works everywhere; code that can use bigger ones asks the adapter
 * (`Tables.maxTransactionOps`).
 */
export const MAX_TRANSACTION_OPS = 25;

/** Options of a single-item write. */
export interface TableWriteOptions {
  /** The write happens only if this holds; ConditionFailed otherwise. */
  condition?: Condition;
  /**
   * false: the write may resolve before it is on disk. It is visible to every reader at once and
   * survives a crash of the process, but an operating-system crash or power loss may undo it (with
   * every write after it, never one before). For items a restart makes moot, like a POP3 lease.
   * What each family does with it: local commits without waiting for (or starting) the WAL fsync;
   * aws ignores it (a DynamoDB write is durable when it returns). @default true
   */
  durable?: boolean;
}

/** Items addressed by partition key + sort key, with conditional writes and transactions. */
export interface Tables {
  /**
   * The most writes this adapter takes in one `transact` (at least MAX_TRANSACTION_OPS):
   * DynamoDB's TransactWriteItems takes 100; SQLite, one local transaction, more. A bulk flag
   * change of 1,000 messages is one transaction locally instead of fifty fsyncs.
   */
  readonly maxTransactionOps: number;
  /**
   * The live item, or undefined (expired items are undefined). `consistent: false` allows a read
   * that may miss writes of the last second or so (DynamoDB's eventually consistent read, half the
   * price); only for data that may be that stale, never for conditions, markers or counters.
   */
  get(key: Key, options?: { consistent?: boolean }): Promise<Item | undefined>;
  /** Writes the whole item. ConditionFailed when `condition` does not hold. */
  put(item: Item, options?: TableWriteOptions): Promise<void>;
  /** Changes (or creates) the item and returns it as it is after the change. */
  update(key: Key, changes: Update, options?: TableWriteOptions): Promise<Item>;
  /** Idempotent when unconditional. ConditionFailed when `condition` does not hold. */
  delete(key: Key, options?: TableWriteOptions): Promise<void>;
  /** Items of one partition in sort-key order. */
  query(pk: string, options?: QueryOptions): Promise<QueryPage>;
  /** All or nothing; ConditionFailed (naming the failing op index) when any condition fails. */
  transact(ops: TransactOp[]): Promise<void>;
  close?(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Queues

/** The logical queues of the system; adapters map them to SQS URLs or SQLite rows. */
export type QueueName = 'inbound' | 'outbound' | 'inbound-dlq' | 'outbound-dlq';

/** SQS's bounds, kept by both families so that code behaves the same on each. */
export const MAX_DELAY_SECONDS = 900;
export const MAX_VISIBILITY_SECONDS = 12 * 60 * 60;
export const MAX_RECEIVE_BATCH = 10;

export interface ReceivedMessage {
  id: string;
  /** Handle for delete / changeVisibility; valid for this receipt only. */
  receipt: string;
  body: string;
  /** How many times this message has been received, this time included. */
  receiveCount: number;
  sentAt: Date;
}

export interface QueueStats {
  visible: number;
  inFlight: number;
  delayed: number;
  /** Age of the oldest message in seconds, when known. */
  oldestAgeSeconds?: number;
}

/**
 * At-least-once queues with a visibility timeout. A message whose receive count would pass the
 * queue's maxReceives is moved to its dead-letter queue instead of being delivered again.
 */
export interface Queues {
  /** Returns the message id. Delay 0..MAX_DELAY_SECONDS. */
  send(queue: QueueName, body: string, options?: { delaySeconds?: number }): Promise<string>;
  /** Up to `max` messages, hidden for `visibilitySeconds`; waits up to `waitSeconds` for one. */
  receive(queue: QueueName, options?: { max?: number; visibilitySeconds?: number; waitSeconds?: number; signal?: AbortSignal }): Promise<ReceivedMessage[]>;
  /** Removes the message for good. Idempotent for a receipt already used. */
  delete(queue: QueueName, receipt: string): Promise<void>;
  /** Hides the message for `seconds` from now (0..MAX_VISIBILITY_SECONDS). */
  changeVisibility(queue: QueueName, receipt: string, seconds: number): Promise<void>;
  /** Approximate counts, as SQS gives them. */
  stats(queue: QueueName): Promise<QueueStats>;
  close?(): Promise<void>;
}

/**
 * What a family's engine does beyond the common contract, declared so that callers choose by what
 * the store can do and never by which engine it is (nothing outside core/storage names a family).
 */
export interface StorageCapabilities {
  /**
   * Other processes (other tasks, Lambda functions) read and write the same blobs and items at
   * the same time, so a process cannot learn what the object tier holds from its own writes.
   * false: one process owns the data folder (the CLI aside). The proxy's `sharedObjectTier`.
   */
  readonly sharedBetweenProcesses: boolean;
  /**
   * A Tables read is a billed network round trip, so keeping a lookup for a few seconds pays
   * (`mail.accountCacheSeconds`). false: reads are local and cheaper than staleness.
   */
  readonly costlyReads: boolean;
  /**
   * A short receive may return only some of the visible messages of a small queue (SQS samples
   * its servers); a listing that must see each message (`dlq list`) long-polls for this many
   * seconds. 0: a receive sees every visible message at once.
   */
  readonly listingWaitSeconds: number;
  /**
   * The name the deployment's alarms know this store by (the dimension of the outbound age
   * metric, core/mail/outbound-age.ts); undefined where no alarm reads the process's metric lines.
   */
  readonly monitoredAs?: string;
}

/**
 * What a store gives a worker thread of this process so that `openStorage` there opens the same
 * data and shares what must be shared with this thread (locally: the database's commit and lock
 * counters and the queues' wake-ups). Structured-clonable (pass it in `workerData`); opaque: only
 * the family that made it reads it.
 */
declare const threadHandover: unique symbol;
export interface ThreadHandover {
  readonly [threadHandover]: true;
}

/** The three ports together, as opened from configuration by `open.ts`. */
export interface Storage {
  /** What the engine behind the ports can do (see StorageCapabilities). */
  readonly capabilities: StorageCapabilities;
  /**
   * The handover for one worker thread of this process (call it before starting the thread; the
   * same handover serves a restarted thread). The store on the other thread is opened with
   * `openStorage(config, log, { thread })` and must be closed before this one.
   */
  forWorkerThread(): ThreadHandover;
  /** Raw messages (mail bucket / data/blobs/mail). */
  mail: Blobs;
  /** Proxy cache objects (cache bucket / data/blobs/cache). */
  cache: Blobs;
  tables: Tables;
  queues: Queues;
  /** Cheap liveness probe of every backend, for the health endpoint. */
  check(): Promise<Record<string, boolean>>;
  close(): Promise<void>;
}

/** Writes the item only when no live item has its key; true when this call wrote it. The idiom
 * for idempotency markers and first-time initialisation. */
export async function putIfAbsent(tables: Tables, item: Item): Promise<boolean> {
  try {
    await tables.put(item, { condition: { exists: false } });
    return true;
  } catch (e) {
    if (isStorageError(e, 'ConditionFailed')) return false;
    throw e;
  }
}
