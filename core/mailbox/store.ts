/**
 * Per-user mailboxes over the Tables port: a META item with counters, one item per message in
 * UID order, a maildrop lease, idempotency markers for deliveries and a reference count per raw
 * blob so a message shared by several mailboxes is deleted with its last reference.
 *
 * | item               | pk               | sk                   |
 * |--------------------|------------------|----------------------|
 * | mailbox counters   | `MBX#<user>`     | `META`               | count, bytes, uidNext, uidValidity
 * | message            | `MBX#<user>`     | `UID#<10-digit uid>` | blobKey, size, receivedAt, summary, flags, jobId
 * | maildrop lease     | `MBX#<user>`     | `LEASE`              | holder, ttl
 * | delivery marker    | `JOB#<job id>`   | `RCPT#<user>`        | uid, ttl (30 days)
 * | blob references    | `BLOBREF#<key>`  | `META`               | refs (mailbox entries + holds)
 * | blob hold          | `BLOBREF#<key>`  | `HOLD#<holder>`      | a job still needing the blob
 *
 * Holds: a raw message must outlive every mailbox entry AND every job still working on it (the
 * outbound worker relaying it, an inbound job that will retry a full mailbox later). A worker
 * calls `holdBlob(key, 'inbound:<job id>')` before its first delivery and `releaseBlob` when its
 * work is done; both are idempotent per holder, so queue redeliveries do not miscount.
 */
import { isStorageError, type AttrValue, type Blobs, type Item, type Key, type Tables, type TransactOp, putIfAbsent } from '../storage/ports.js';
import { keys as accountKeys } from '../accounts/accounts.js';

/** The delivery would take the mailbox past its quota; nothing was stored. */
export class QuotaExceeded extends Error {
  constructor(
    readonly user: string,
    readonly quotaBytes: number,
    readonly usedBytes: number,
    readonly size: number,
  ) {
    super(`mailbox ${user} is full: ${usedBytes} + ${size} bytes would pass the quota of ${quotaBytes}`);
    this.name = 'QuotaExceeded';
  }
}

/** The user has no account (removed, or never created); nothing was stored. */
export class NoSuchMailbox extends Error {
  constructor(readonly user: string) {
    super(`no mailbox for ${user}`);
    this.name = 'NoSuchMailbox';
  }
}

/** Counters of one mailbox. */
export interface MailboxMeta {
  count: number;
  bytes: number;
  /** The UID the next message will get (RFC 3501 §2.3.1.1 UIDNEXT; also POP3 UIDL). */
  uidNext: number;
  /** Changes only if UIDs are ever reused; set once when the mailbox is created. */
  uidValidity: number;
}

/** One message in a mailbox. */
export interface MessageEntry {
  uid: number;
  blobKey: string;
  size: number;
  receivedAt: string;
  /** Header summary and part tree from `summarizeMessage`. */
  summary: Record<string, AttrValue>;
  flags: string[];
  jobId: string;
}

/** What `deliver` stores. */
export interface DeliveryInput {
  /** Idempotency key: a second deliver with the same (jobId, user) returns the first uid. */
  jobId: string;
  blobKey: string;
  size: number;
  receivedAt: string;
  summary: Record<string, AttrValue>;
  /** Lifetime of this delivery's idempotency marker; 0 keeps it for good (imports). @default the store's */
  markerTtlSeconds?: number;
}

/** Options of the store. */
export interface MailboxStoreOptions {
  /** Clock for leases, markers and uidValidity. Expiry is judged by the storage against real
   * time, so this may only be shifted slightly (tests). @default () => new Date() */
  now?: () => Date;
  /** Items per query page when listing. @default 500 */
  pageSize?: number;
  /** Lifetime of delivery markers in seconds; must outlive any redelivery of a job. @default 30 days */
  markerTtlSeconds?: number;
}

const UID_WIDTH = 10;
const MAX_ATTEMPTS = 50;
/** Uids per removal transaction: 12 deletes + 1 counter update + up to 12 blob references = 25. */
const REMOVE_BATCH = 12;

/** Key helpers, exported for tests and tools. */
export const mailboxKeys = {
  meta: (user: string): Key => ({ pk: `MBX#${user}`, sk: 'META' }),
  message: (user: string, uid: number): Key => ({ pk: `MBX#${user}`, sk: `UID#${String(uid).padStart(UID_WIDTH, '0')}` }),
  lease: (user: string): Key => ({ pk: `MBX#${user}`, sk: 'LEASE' }),
  marker: (jobId: string, user: string): Key => ({ pk: `JOB#${jobId}`, sk: `RCPT#${user}` }),
  blobRef: (blobKey: string): Key => ({ pk: `BLOBREF#${blobKey}`, sk: 'META' }),
  blobHold: (blobKey: string, holder: string): Key => ({ pk: `BLOBREF#${blobKey}`, sk: `HOLD#${holder}` }),
};

function toEntry(item: Item): MessageEntry {
  return {
    uid: Number(item.uid),
    blobKey: String(item.blobKey),
    size: Number(item.size),
    receivedAt: String(item.receivedAt),
    summary: (item.summary ?? {}) as Record<string, AttrValue>,
    flags: Array.isArray(item.flags) ? item.flags.map(String) : [],
    jobId: String(item.jobId ?? ''),
  };
}

function toMeta(item: Item): MailboxMeta {
  return { count: Number(item.count ?? 0), bytes: Number(item.bytes ?? 0), uidNext: Number(item.uidNext ?? 1), uidValidity: Number(item.uidValidity) };
}

/** Small random back-off between optimistic retries so racing writers spread out. */
function backoff(attempt: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 3)));
}

/** The mailbox of every user: delivery, listing, removal and the maildrop lease. */
export class MailboxStore {
  private readonly now: () => Date;
  private readonly markerTtl: number;
  private readonly pageSize: number;

  constructor(
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    options: MailboxStoreOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    this.markerTtl = options.markerTtlSeconds ?? 30 * 86400;
    this.pageSize = options.pageSize ?? 500;
  }

  private epoch(): number {
    return Math.floor(this.now().getTime() / 1000);
  }

  /** Creates the META item if absent (uidValidity = creation time in epoch seconds) and returns it. */
  private async ensureMeta(user: string): Promise<Item> {
    const existing = await this.tables.get(mailboxKeys.meta(user));
    if (existing) return existing;
    await putIfAbsent(this.tables, { ...mailboxKeys.meta(user), count: 0, bytes: 0, uidNext: 1, uidValidity: this.epoch() });
    return (await this.tables.get(mailboxKeys.meta(user)))!;
  }

  /**
   * Adds a message. Idempotent on (jobId, user): a second call returns the first uid with
   * duplicate=true. Throws QuotaExceeded when the user's quota would be passed and NoSuchMailbox
   * for an unknown user. The uid comes from an atomic counter first; then counters, message item,
   * marker and blob reference change in one transaction whose only conditions are the quota and
   * the marker, so concurrent deliveries to one mailbox need no read-modify-write loop (DynamoDB
   * may still cancel overlapping transactions; those are retried with the same uid). A refused
   * delivery burns its uid: UIDs stay strictly ascending, which is all RFC 1939 UIDL and RFC 3501
   * §2.3.1.1 ask.
   */
  async deliver(user: string, m: DeliveryInput): Promise<{ uid: number; duplicate: boolean }> {
    let uid = 0;
    for (let attempt = 0; ; attempt++) {
      const marker = await this.tables.get(mailboxKeys.marker(m.jobId, user));
      if (marker) return { uid: Number(marker.uid), duplicate: true };
      const account = await this.tables.get(accountKeys.user(user));
      if (!account) throw new NoSuchMailbox(user);
      const meta = toMeta(await this.ensureMeta(user));
      const quota = Number(account.quotaBytes ?? 0);
      if (quota > 0 && meta.bytes + m.size > quota) throw new QuotaExceeded(user, quota, meta.bytes, m.size);
      // The uid is ours alone once allocated, so a retry after a conflict reuses it.
      uid ||= Number((await this.tables.update(mailboxKeys.meta(user), { add: { uidNext: 1 } }, { condition: { exists: true } })).uidNext) - 1;
      const ops: TransactOp[] = [
        {
          update: mailboxKeys.meta(user),
          changes: { add: { count: 1, bytes: m.size } },
          // bytes + size <= quota, checked atomically with the write.
          condition: quota > 0 ? { lessThan: { bytes: quota - m.size + 1 } } : { exists: true },
        },
        {
          put: {
            ...mailboxKeys.message(user, uid),
            uid,
            blobKey: m.blobKey,
            size: m.size,
            receivedAt: m.receivedAt,
            summary: m.summary,
            flags: [],
            jobId: m.jobId,
          },
          condition: { exists: false },
        },
        { put: this.markerItem(m, user, uid), condition: { exists: false } },
        { update: mailboxKeys.blobRef(m.blobKey), changes: { add: { refs: 1 } } },
      ];
      try {
        await this.tables.transact(ops);
        return { uid, duplicate: false };
      } catch (e) {
        // ConditionFailed: a racing copy of this job (marker) or the quota, both re-checked above.
        // Unavailable: DynamoDB cancels concurrent transactions on one item (TransactionConflict).
        const again = isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable');
        if (!again || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
      }
    }
  }

  private markerItem(m: DeliveryInput, user: string, uid: number): Item {
    const ttl = m.markerTtlSeconds ?? this.markerTtl;
    return ttl > 0 ? { ...mailboxKeys.marker(m.jobId, user), uid, ttl: this.epoch() + ttl } : { ...mailboxKeys.marker(m.jobId, user), uid };
  }

  /** The uid an earlier deliver of (jobId, user) got, or undefined. */
  async delivered(jobId: string, user: string): Promise<number | undefined> {
    const marker = await this.tables.get(mailboxKeys.marker(jobId, user));
    return marker ? Number(marker.uid) : undefined;
  }

  /** The mailbox counters (the mailbox is created empty on first use). */
  async meta(user: string): Promise<MailboxMeta> {
    return toMeta(await this.ensureMeta(user));
  }

  /** Every message in UID order (pages through the partition). */
  async list(user: string): Promise<MessageEntry[]> {
    // Page by page rather than through entries(), whose per-message promise showed in the POP3
    // login (see docs/performance.md, Mail workers).
    const out: MessageEntry[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`MBX#${user}`, { range: { beginsWith: 'UID#' }, limit: this.pageSize, cursor });
      for (const item of page.items) out.push(toEntry(item));
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  /** Every message in UID order, a page at a time (memory bounded for big mailboxes). */
  async *entries(user: string): AsyncGenerator<MessageEntry> {
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`MBX#${user}`, { range: { beginsWith: 'UID#' }, limit: this.pageSize, cursor });
      for (const item of page.items) yield toEntry(item);
      cursor = page.cursor;
    } while (cursor);
  }

  /** The newest `limit` messages, newest first. */
  async newest(user: string, limit: number): Promise<MessageEntry[]> {
    const page = await this.tables.query(`MBX#${user}`, { range: { beginsWith: 'UID#' }, reverse: true, limit });
    return page.items.map(toEntry);
  }

  /** One message, or undefined. */
  async get(user: string, uid: number): Promise<MessageEntry | undefined> {
    const item = await this.tables.get(mailboxKeys.message(user, uid));
    return item ? toEntry(item) : undefined;
  }

  /**
   * Removes messages and adjusts the counters; deletes a raw blob when no mailbox references it
   * any more. Idempotent: an absent uid is skipped. Up to REMOVE_BATCH uids share one
   * transaction (a transaction holds at most 25 writes), so a big POP3 QUIT is a few round trips.
   */
  async remove(user: string, uids: number[]): Promise<void> {
    const unique = [...new Set(uids)];
    for (let i = 0; i < unique.length; i += REMOVE_BATCH) await this.removeBatch(user, unique.slice(i, i + REMOVE_BATCH));
  }

  private async removeBatch(user: string, uids: number[]): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const entries = (await Promise.all(uids.map((uid) => this.tables.get(mailboxKeys.message(user, uid)))))
        .filter((x): x is Item => x !== undefined)
        .map(toEntry);
      if (!entries.length) return;
      const perBlob = new Map<string, number>();
      for (const e of entries) perBlob.set(e.blobKey, (perBlob.get(e.blobKey) ?? 0) + 1);
      const blobKeys = [...perBlob.keys()];
      const refItems = await Promise.all(blobKeys.map((k) => this.tables.get(mailboxKeys.blobRef(k))));
      const lastRefs: string[] = [];
      const ops: TransactOp[] = entries.map((e) => ({ delete: mailboxKeys.message(user, e.uid), condition: { exists: true } }));
      ops.push({ update: mailboxKeys.meta(user), changes: { add: { count: -entries.length, bytes: -entries.reduce((n, e) => n + e.size, 0) } } });
      blobKeys.forEach((k, j) => {
        const ref = refItems[j];
        const refs = Number(ref?.refs ?? 0);
        const n = perBlob.get(k)!;
        if (refs <= n) {
          lastRefs.push(k);
          ops.push({ delete: mailboxKeys.blobRef(k), condition: ref ? { equals: { refs } } : { exists: false } });
        } else {
          ops.push({ update: mailboxKeys.blobRef(k), changes: { add: { refs: -n } }, condition: { equals: { refs } } });
        }
      });
      try {
        await this.tables.transact(ops);
      } catch (e) {
        // ConditionFailed: a racing delivery or removal changed a count; Unavailable: DynamoDB
        // cancelled overlapping transactions. Both are re-read and retried.
        const again = isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable');
        if (!again || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
        continue;
      }
      // After the commit: a crash here leaves an unreferenced blob (garbage), never a dangling entry.
      await Promise.all(lastRefs.map((k) => this.blobs.delete(k)));
      return;
    }
  }

  /** Keeps the blob alive for `holder` until `releaseBlob(key, holder)`. Idempotent per holder. */
  async holdBlob(blobKey: string, holder: string): Promise<void> {
    try {
      await this.tables.transact([
        { put: { ...mailboxKeys.blobHold(blobKey, holder), at: this.now().toISOString() }, condition: { exists: false } },
        { update: mailboxKeys.blobRef(blobKey), changes: { add: { refs: 1 } } },
      ]);
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e; // already held by this holder
    }
  }

  /** Drops `holder`'s hold; deletes the blob when nothing references it any more. Idempotent. */
  async releaseBlob(blobKey: string, holder: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (!(await this.tables.get(mailboxKeys.blobHold(blobKey, holder)))) return;
      const ref = await this.tables.get(mailboxKeys.blobRef(blobKey));
      const refs = Number(ref?.refs ?? 0);
      const last = refs <= 1;
      try {
        await this.tables.transact([
          { delete: mailboxKeys.blobHold(blobKey, holder), condition: { exists: true } },
          last
            ? { delete: mailboxKeys.blobRef(blobKey), condition: ref ? { equals: { refs } } : { exists: false } }
            : { update: mailboxKeys.blobRef(blobKey), changes: { add: { refs: -1 } }, condition: { equals: { refs } } },
        ]);
      } catch (e) {
        const again = isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable');
        if (!again || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
        continue;
      }
      if (last) await this.blobs.delete(blobKey);
      return;
    }
  }

  /** Replaces the flags of one message (IMAP later; `\Seen` for tools). */
  async setFlags(user: string, uid: number, flags: string[]): Promise<void> {
    await this.tables.update(mailboxKeys.message(user, uid), { set: { flags } }, { condition: { exists: true } });
  }

  /** Removes every message and the counters of a mailbox (for `user remove`). */
  async purge(user: string): Promise<number> {
    const uids = (await this.list(user)).map((e) => e.uid);
    await this.remove(user, uids);
    await this.tables.delete(mailboxKeys.meta(user));
    await this.tables.delete(mailboxKeys.lease(user));
    return uids.length;
  }

  /**
   * Takes the maildrop lease for `seconds` if it is free, expired, or already held by `holder`.
   * Lease writes (here, renew, release) are visible to every session at once but do not wait for
   * the disk (`durable: false`): a crash of the machine ends every session, so a lease it undid
   * would be moot, and a POP3 login and QUIT then wait for no fsync of their own. The deletions
   * QUIT commits are durable, and their fsync covers the lease writes before them.
   */
  async acquireLease(user: string, holder: string, seconds: number): Promise<boolean> {
    const item = { ...mailboxKeys.lease(user), holder, ttl: this.epoch() + seconds };
    try {
      await this.tables.put(item, { condition: { exists: false }, durable: false });
      return true;
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e;
    }
    try {
      await this.tables.put(item, { condition: { equals: { holder } }, durable: false });
      return true;
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return false;
      throw e;
    }
  }

  /** Extends a lease this holder still has; false when it expired or someone else took it. */
  async renewLease(user: string, holder: string, seconds: number): Promise<boolean> {
    try {
      await this.tables.update(mailboxKeys.lease(user), { ttl: this.epoch() + seconds }, { condition: { equals: { holder } }, durable: false });
      return true;
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return false;
      throw e;
    }
  }

  /** Gives the lease up if this holder has it; otherwise does nothing. */
  async releaseLease(user: string, holder: string): Promise<void> {
    try {
      await this.tables.delete(mailboxKeys.lease(user), { condition: { equals: { holder } }, durable: false });
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e;
    }
  }
}
