/**
 * A user's mailbox as delivery, POP3, the CLI and the sweep see it: INBOX (the `MBX#<user>`
 * partition: a META item with counters, one item per message in UID order), the maildrop lease,
 * idempotency markers for deliveries and a reference count per raw blob so a message shared by
 * several mailboxes or folders is deleted with its last reference. Item layout: keys.ts.
 *
 * The writes (deliver, remove, setFlags, purge) go through FolderStore (folders.ts), the model of
 * every folder, so that each also bumps the user's MODSEQ, writes its change item and keeps the
 * usage over every folder (the quota's measure) in the same transaction.
 *
 * Holds: a raw message must outlive every mailbox entry AND every job still working on it (the
 * outbound worker relaying it, an inbound job that will retry a full mailbox later). A worker
 * calls `holdBlob(key, 'inbound:<job id>')` before its first delivery and `releaseBlob` when its
 * work is done; both are idempotent per holder, so queue redeliveries do not miscount.
 */
import { isStorageError, type AttrValue, type Blobs, type Item, type Tables, putIfAbsent } from '../storage/ports.js';
import { FolderStore, toMessage, type FolderMessage, type FolderStoreOptions } from './folders.js';
import { backoff, folderKeys, INBOX, mailboxKeys, MAX_ATTEMPTS } from './keys.js';

export { mailboxKeys, NoSuchMailbox, QuotaExceeded } from './keys.js';

/** Counters of one mailbox. */
export interface MailboxMeta {
  count: number;
  bytes: number;
  /** The UID the next message will get (RFC 3501 §2.3.1.1 UIDNEXT; also POP3 UIDL). */
  uidNext: number;
  /** Changes only if UIDs are ever reused; set once when the mailbox is created. */
  uidValidity: number;
}

/** One message in a mailbox (INBOX as POP3 sees it: a folder message without its MODSEQ). */
export type MessageEntry = Omit<FolderMessage, 'modseq'>;

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
  /** The change log's horizon and gap grace. */
  changeLog?: FolderStoreOptions['changeLog'];
}

function toEntry(item: Item): MessageEntry {
  const { modseq, ...entry } = toMessage(item);
  void modseq; // POP3's view of a message has no MODSEQ
  return entry;
}

function toMeta(item: Item): MailboxMeta {
  return { count: Number(item.count ?? 0), bytes: Number(item.bytes ?? 0), uidNext: Number(item.uidNext ?? 1), uidValidity: Number(item.uidValidity) };
}

/** The mailbox of every user: delivery, listing, removal and the maildrop lease. */
export class MailboxStore {
  private readonly now: () => Date;
  private readonly pageSize: number;
  /** Every folder of the same users; INBOX writes go through it. */
  readonly folders: FolderStore;

  constructor(
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    options: MailboxStoreOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    this.pageSize = options.pageSize ?? 500;
    this.folders = new FolderStore(tables, blobs, options);
  }

  private epoch(): number {
    return Math.floor(this.now().getTime() / 1000);
  }

  /** Creates the META item if absent (uidValidity = creation time in epoch seconds) and returns it. */
  private async ensureMeta(user: string): Promise<Item> {
    const existing = await this.tables.get(mailboxKeys.meta(user));
    if (existing) return existing;
    // The same item FolderStore.folderMeta makes; here without its one-time upgrade write, so a
    // reader that may not write mailbox items (the SMTP listener) can call meta().
    await putIfAbsent(this.tables, {
      ...mailboxKeys.meta(user),
      count: 0,
      bytes: 0,
      unseen: 0,
      unseenKnown: true,
      uidNext: 1,
      uidValidity: this.epoch(),
      highestModSeq: 0,
    });
    return (await this.tables.get(mailboxKeys.meta(user)))!;
  }

  /**
   * Adds a message to INBOX. Idempotent on (jobId, user): a second call returns the first uid with
   * duplicate=true. Throws QuotaExceeded when the user's quota (over every folder) would be passed
   * and NoSuchMailbox for an unknown user. See FolderStore.append: the uid comes from an atomic
   * counter first, then counters, message, marker, blob reference, usage and change item commit in
   * one transaction; a refused delivery burns its uid (UIDs stay strictly ascending, which is all
   * RFC 1939 UIDL and RFC 3501 §2.3.1.1 ask).
   */
  async deliver(user: string, m: DeliveryInput): Promise<{ uid: number; duplicate: boolean }> {
    const r = await this.folders.append(user, INBOX, {
      key: m.jobId,
      jobId: m.jobId,
      blobKey: m.blobKey,
      size: m.size,
      receivedAt: m.receivedAt,
      summary: m.summary,
      ...(m.markerTtlSeconds !== undefined ? { markerTtlSeconds: m.markerTtlSeconds } : {}),
    });
    return { uid: r.uid, duplicate: r.duplicate };
  }

  /** Bytes the user's messages take in every folder, for a quota check ahead of delivery (reads
   * only: before the usage item exists, INBOX holds everything). */
  async usedBytes(user: string): Promise<number> {
    const usage = await this.tables.get(folderKeys.usage(user));
    if (usage) return Number(usage.bytes ?? 0);
    return Number((await this.tables.get(mailboxKeys.meta(user)))?.bytes ?? 0);
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
   * Removes messages from INBOX and adjusts the counters; deletes a raw blob when nothing
   * references it any more. Idempotent: an absent uid is skipped. A few uids share one
   * transaction (FolderStore.expunge), so a big POP3 QUIT is a few round trips.
   */
  async remove(user: string, uids: number[]): Promise<void> {
    await this.folders.expunge(user, INBOX, uids);
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
    await this.folders.setFlags(user, INBOX, uid, flags);
  }

  /** Removes every message and folder of a user, with INBOX's counters (for `user remove`).
   * Returns how many INBOX messages went. */
  async purge(user: string): Promise<number> {
    const uids = (await this.list(user)).map((e) => e.uid);
    await this.remove(user, uids);
    await this.folders.purgeFolders(user);
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
