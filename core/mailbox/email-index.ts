/**
 * The Email index JMAP needs beside the folder model (RFC 8621): where each Email is (its folders
 * and UIDs, by emailId) and which thread it belongs to. FolderStore adds this module's ops to the
 * transactions of append, copy, move and expunge, so the index never disagrees with the folders;
 * this module only builds ops and reads. Keys: keys.ts `indexKeys`.
 *
 * Threads (RFC 8621 §3): a message joins the thread of an earlier message of the user when one
 * names the other in Message-ID / In-Reply-To / References and both have the same base subject;
 * otherwise it starts one. The `MID#` items map a hashed Message-ID to a thread and are written
 * both for a message's own id and for the ids it refers to, so a reply filed before its parent
 * still meets it: the parent then finds its own id already claimed by the reply's thread. They are
 * put-if-absent inside the filing transaction: of two racing messages of one thread one commits
 * first and the other, retried, joins it. Thread membership items are sorted by receivedAt
 * (Thread/get's order) and never deleted with their Email: readers drop members no location holds
 * (an Email expunged in one folder may live on in another; only the locations know).
 *
 * Messages filed before the index existed get their items from `backfill` (online, idempotent,
 * resumable; marker `BACKFILLED` when done).
 */
import { filterHeaderFields } from '../mail/imap-structure.js';
import { messageIds } from '../mail/mime.js';
import { isStorageError, type AttrValue, type Blobs, type Item, type Tables, type TransactOp } from '../storage/ports.js';
import { bareMessageId, emailIdOf, messageIdKey, newThreadId, subjectKey } from './email-ids.js';
import type { FolderMessage, FolderStore } from './folders.js';
import { backoff, folderKeys, indexKeys, MAX_ATTEMPTS } from './keys.js';

/** One place an Email is. */
export interface EmailLocation {
  emailId: string;
  folderId: string;
  uid: number;
  /** Absent for a message filed before threads (until the backfill reaches it). */
  threadId?: string;
  receivedAt: string;
  size: number;
}

/** One member of a thread as the index keeps it. */
export interface ThreadMember {
  emailId: string;
  receivedAt: string;
  /** The MODSEQ of the change that filed it (0: filed before the index, by the backfill). */
  modseq: number;
}

/** A message's thread, decided before its filing transaction, and the index ops that go in it. */
export interface ThreadPlan {
  emailId: string;
  threadId: string;
  /** The ops for the filing transaction under `modseq`: Message-ID claims and the membership. */
  ops(modseq: number): TransactOp[];
}

/** What threading reads from a message: the summary's headers (mime.ts summarizeMessage). */
export interface ThreadInput {
  blobKey: string;
  receivedAt: string;
  summary: Record<string, AttrValue>;
}

/** Referenced Message-IDs looked up per message: its own, In-Reply-To, the nearest References. */
const MAX_LOOKUPS = 12;
/** Message-ID claims written per message (each one op of the filing transaction). */
const MAX_CLAIMS = 5;
/** Parallel queries of one `locations` call. */
const CONCURRENCY = 16;
/** How much of an old message's header the backfill reads for In-Reply-To and References. */
const HEADER_BYTES = 64 * 1024;

const strings = (v: AttrValue | undefined): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** Runs `fn` over `xs` with at most `n` at a time, results in order. */
async function pool<T, R>(xs: T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(xs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, xs.length) }, async () => {
      while (next < xs.length) {
        const i = next++;
        out[i] = await fn(xs[i]!);
      }
    }),
  );
  return out;
}

function toLocation(item: Item): EmailLocation {
  return {
    emailId: String(item.emailId),
    folderId: String(item.folderId),
    uid: Number(item.uid),
    ...(typeof item.threadId === 'string' ? { threadId: item.threadId } : {}),
    receivedAt: String(item.receivedAt ?? ''),
    size: Number(item.size ?? 0),
  };
}

/** Reads and builds the Email index's items. */
export class EmailIndex {
  constructor(
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    private readonly pageSize = 500,
  ) {}

  // ------------------------------------------------------------------------------------------
  // Ops for FolderStore's transactions

  /** Puts the location of a message just filed (or copied, or moved) in `folderId` at `uid`. */
  locationOp(user: string, folderId: string, uid: number, m: { blobKey: string; threadId?: string; receivedAt: string; size: number }): TransactOp {
    const emailId = emailIdOf(m.blobKey);
    return {
      put: {
        ...indexKeys.location(user, emailId, folderId, uid),
        emailId,
        folderId,
        uid,
        ...(m.threadId ? { threadId: m.threadId } : {}),
        receivedAt: m.receivedAt,
        size: m.size,
      },
    };
  }

  /** Deletes the location of a message leaving `folderId` (absent for old data: a no-op then). */
  unlocateOp(user: string, folderId: string, uid: number, blobKey: string): TransactOp {
    return { delete: indexKeys.location(user, emailIdOf(blobKey), folderId, uid) };
  }

  /**
   * Decides the thread of a message about to be filed: the thread the same raw message already
   * has in another folder, else one found through its Message-IDs (same base subject), else new.
   * Re-run on every retry of the filing transaction (a lost Message-ID claim means a racer filed a
   * message of the same thread first).
   */
  async plan(user: string, m: ThreadInput): Promise<ThreadPlan> {
    const emailId = emailIdOf(m.blobKey);
    const own = bareMessageId(String(m.summary.messageId ?? ''));
    const parents = [...strings(m.summary.inReplyTo), ...strings(m.summary.references).reverse()];
    const ids = [...new Set([own, ...parents].filter((id) => id !== ''))].slice(0, MAX_LOOKUPS);
    // Own id first only when the message has one (a missing Message-ID claims nothing).
    const keys = ids.map(messageIdKey);
    const [same, claims] = await Promise.all([
      this.tables.query(indexKeys.locations(user), { range: { beginsWith: `${emailId}#` }, limit: 5 }),
      Promise.all(keys.map((k) => this.tables.get(indexKeys.messageId(user, k)))),
    ]);
    const subject = subjectKey(String(m.summary.subject ?? ''));
    const known = same.items.map(toLocation).find((l) => l.threadId)?.threadId;
    const joined = claims.find((c) => c && c.subject === subject)?.threadId;
    const threadId = known ?? (typeof joined === 'string' ? joined : newThreadId());
    const unclaimed = keys.filter((_, i) => !claims[i]).slice(0, MAX_CLAIMS);
    return {
      emailId,
      threadId,
      ops: (modseq) => [
        ...unclaimed.map((k): TransactOp => ({ put: { ...indexKeys.messageId(user, k), threadId, subject }, condition: { exists: false } })),
        { put: { ...indexKeys.member(user, threadId, m.receivedAt, emailId), emailId, receivedAt: m.receivedAt, modseq } },
      ],
    };
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  /** Where each Email is (folders and UIDs); an Email with no location is absent from the map. */
  async locations(user: string, emailIds: string[]): Promise<Map<string, EmailLocation[]>> {
    const unique = [...new Set(emailIds)];
    const found = await pool(unique, CONCURRENCY, async (id) => {
      const out: EmailLocation[] = [];
      let cursor: string | undefined;
      do {
        const page = await this.tables.query(indexKeys.locations(user), { range: { beginsWith: `${id}#` }, limit: this.pageSize, cursor });
        out.push(...page.items.map(toLocation));
        cursor = page.cursor;
      } while (cursor);
      return out;
    });
    const map = new Map<string, EmailLocation[]>();
    unique.forEach((id, i) => {
      if (found[i]!.length) map.set(id, found[i]!);
    });
    return map;
  }

  /** Every member item of a thread, receivedAt order, including Emails since destroyed. */
  async members(user: string, threadId: string): Promise<ThreadMember[]> {
    const out: ThreadMember[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(indexKeys.threads(user), { range: { beginsWith: `${threadId}#` }, limit: this.pageSize, cursor });
      out.push(...page.items.map((i) => ({ emailId: String(i.emailId), receivedAt: String(i.receivedAt), modseq: Number(i.modseq ?? 0) })));
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  /** The Emails of a thread that still exist, oldest first (RFC 8621 §3 Thread.emailIds), and the
   * MODSEQ at which the thread began (its first member's filing; 0 before the index). */
  async thread(user: string, threadId: string): Promise<{ emailIds: string[]; createdModseq: number }> {
    const members = await this.members(user, threadId);
    const ids = [...new Set(members.map((m) => m.emailId))];
    const live = await this.locations(user, ids);
    return {
      emailIds: ids.filter((id) => live.has(id)),
      createdModseq: members.reduce((min, m) => Math.min(min, m.modseq), Number.MAX_SAFE_INTEGER),
    };
  }

  // ------------------------------------------------------------------------------------------
  // Existing data

  /** Whether the user's old messages have been indexed. */
  async isBackfilled(user: string): Promise<boolean> {
    return (await this.tables.get(indexKeys.backfilled(user))) !== undefined;
  }

  /**
   * Indexes the messages a user filed before the index existed (no `threadId` on the item): per
   * message one transaction sets its threadId (on condition it has not changed) and puts its
   * location, thread member and Message-ID claims. Idempotent and resumable (a message that has
   * its threadId is skipped; a crash leaves the marker unwritten, so the next call goes on), and
   * online: deliveries, flags and expunges may run meanwhile (a message expunged under it fails
   * its condition and is skipped). Returns how many messages it indexed.
   */
  async backfill(folders: FolderStore, user: string): Promise<number> {
    if (await this.isBackfilled(user)) return 0;
    let done = 0;
    for (const folder of await folders.list(user)) {
      for await (const m of folders.entries(user, folder.id)) {
        if (m.threadId) continue;
        if (await this.backfillOne(folders, user, folder.id, m)) done++;
      }
    }
    await this.tables.put({ ...indexKeys.backfilled(user), at: new Date().toISOString(), count: done });
    return done;
  }

  private async backfillOne(folders: FolderStore, user: string, folderId: string, first: FolderMessage): Promise<boolean> {
    let m: FolderMessage | undefined = first;
    for (let attempt = 0; m && !m.threadId; attempt++) {
      const summary = await this.withReferences(m);
      const plan = await this.plan(user, { blobKey: m.blobKey, receivedAt: m.receivedAt, summary });
      const key = folderKeys.message(user, folderId, m.uid);
      try {
        await this.tables.transact([
          { update: key, changes: { set: { threadId: plan.threadId } }, condition: { exists: true, equals: { modseq: m.modseq || null, threadId: null } } },
          this.locationOp(user, folderId, m.uid, { ...m, threadId: plan.threadId }),
          ...plan.ops(0),
        ]);
        return true;
      } catch (e) {
        const retry = isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable');
        if (!retry || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
        m = await folders.get(user, folderId, m.uid); // changed, expunged, or indexed meanwhile
      }
    }
    return false;
  }

  /** The summary, with In-Reply-To and References read from the raw header when it was made
   * before the summary kept them (then it has neither key). */
  private async withReferences(m: FolderMessage): Promise<Record<string, AttrValue>> {
    if ('inReplyTo' in m.summary || 'references' in m.summary || m.size <= 0) return m.summary;
    let header: Buffer;
    try {
      const { body } = await this.blobs.get(m.blobKey, { range: { start: 0, end: Math.min(m.size, HEADER_BYTES) - 1 } });
      const chunks: Buffer[] = [];
      for await (const c of body) chunks.push(c as Buffer);
      header = Buffer.concat(chunks);
    } catch (e) {
      if (isStorageError(e, 'NotFound')) return m.summary; // blob gone: thread by Message-ID only
      throw e;
    }
    const value = (name: string) =>
      filterHeaderFields(header, [name], false)
        .toString('latin1')
        .replace(new RegExp(`^${name}:`, 'gim'), ' ');
    const inReplyTo = messageIds(value('in-reply-to'));
    const references = messageIds(value('references')).slice(-20);
    return { ...m.summary, ...(inReplyTo.length ? { inReplyTo } : {}), ...(references.length ? { references } : {}) };
  }
}
