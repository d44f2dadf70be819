/**
 * Flag changes (IMAP STORE and UID STORE with UNCHANGEDSINCE, FETCH of a body without PEEK, JMAP
 * Email/set keywords, POP3's and webmail's marks), split out of folders.ts, whose FolderStore
 * calls `storeFlags` here with the few of its parts a flag change needs.
 *
 * A batch of messages costs one read of their flag state and one write per message that changes:
 * - The read is one range query over the batch's UIDs (paged, with a projection to the few small
 *   attributes a flag change needs, never the stored summary) when the UIDs are dense, as
 *   `STORE 1:*` or a client's range is; scattered UIDs (a few Emails picked by JMAP) are read one
 *   by one.
 * - The write of a message is a conditional partial update: flags and MODSEQ set, on condition
 *   that the MODSEQ is still the one read (so a racing change makes the batch re-read and retry).
 *   DynamoDB does it as one UpdateItem in the transaction; SQLite as one UPDATE with json_set
 *   (core/storage/local/sqlite-tables.ts), neither reading nor rewriting the rest of the item.
 * The batch's counters (unseen, HIGHESTMODSEQ) and its change-log entry commit in the same
 * transaction, as every FolderStore write does.
 */
import { isStorageError, type Item, type Tables, type TransactOp } from '../storage/ports.js';
import type { ChangeEntry, ChangeLog } from './changes.js';
import { emailIdOf } from './email-ids.js';
import { backoff, folderKeys, MAX_ATTEMPTS, UID_WIDTH } from './keys.js';

/** How `storeFlags` changes flags (IMAP STORE FLAGS, +FLAGS, -FLAGS). */
export interface FlagChange {
  mode: 'add' | 'remove' | 'replace';
  flags: string[];
  /** RFC 7162 UNCHANGEDSINCE: leave (and report) messages whose modseq is above this. */
  unchangedSince?: number;
}

/** What a flag change returns: the messages it changed, and those UNCHANGEDSINCE left alone. */
export interface FlagResult {
  updated: { uid: number; flags: string[]; modseq: number }[];
  modified: number[];
}

/** The parts of FolderStore a flag change uses (its transactions keep counters and change log). */
export interface FlagStore {
  tables: Tables;
  changes: ChangeLog;
  /** Makes the folder's META ready for conditional writes; NoSuchFolder when it is missing. */
  folderMeta(user: string, folderId: string): Promise<Item>;
  /** The folder's counter change under `modseq`, conditional on the folder's MODSEQ order. */
  countersOp(user: string, folderId: string, modseq: number, add: { unseen: number }): TransactOp;
  /** Commits a transaction that records a change and tells this process's sessions. */
  commit(user: string, ops: TransactOp[]): Promise<void>;
}

/** The system flags by their lower case (a STORE runs this once per flag per message). */
const SYSTEM_FLAGS = new Map(['\\Seen', '\\Answered', '\\Flagged', '\\Deleted', '\\Draft'].map((f) => [f.toLowerCase(), f]));

/** Flags deduplicated case-insensitively (RFC 9051 §2.3.2), system flags in their usual case. */
export function normalizeFlags(flags: string[]): string[] {
  const out = new Map<string, string>();
  for (const f of flags) {
    const lower = f.toLowerCase();
    if (!out.has(lower)) out.set(lower, SYSTEM_FLAGS.get(lower) ?? f);
  }
  return [...out.values()];
}

export const isSeen = (flags: string[]) => flags.includes('\\Seen');

/** The attributes of a message item a flag change reads (its change entry names the Email and
 * thread, from the blob key and thread id). */
const FLAG_ATTRIBUTES = ['flags', 'modseq', 'blobKey', 'threadId'];

/** A range read pays when at most this many UIDs of the range are not asked for per one that is. */
const DENSE = 4;

/** Flags as stored (an item written by older code may lack them). */
const flagsOf = (item: Item): string[] => (Array.isArray(item.flags) ? item.flags.map(String) : []);

const uidOf = (item: Item): number => Number(item.sk.slice(4));

/**
 * The flag state of the messages `uids` (sorted, unique) that exist: one paged range query when
 * the UIDs are dense, else one read per UID.
 */
async function readBatch(tables: Tables, user: string, folderId: string, uids: number[]): Promise<Item[]> {
  const first = uids[0]!;
  const last = uids[uids.length - 1]!;
  const span = last - first + 1;
  if (span > DENSE * uids.length) {
    const items = await Promise.all(uids.map((uid) => tables.get(folderKeys.message(user, folderId, uid))));
    return items.filter((x): x is Item => !!x);
  }
  const pad = (n: number) => `UID#${String(n).padStart(UID_WIDTH, '0')}`;
  const wanted = new Set(uids);
  const out: Item[] = [];
  let cursor: string | undefined;
  do {
    const page = await tables.query(folderKeys.partition(user, folderId), {
      range: { gte: pad(first), lte: pad(last) },
      attributes: FLAG_ATTRIBUTES,
      limit: Math.min(span, 1000),
      cursor,
    });
    for (const item of page.items) if (wanted.has(uidOf(item))) out.push(item);
    cursor = page.cursor;
  } while (cursor);
  return out;
}

/**
 * Changes flags of messages. With `unchangedSince`, a message whose modseq is above it is left as
 * it is and listed in `modified` (RFC 7162 §3.2). Messages whose flags would not change get no
 * new MODSEQ. Absent uids are skipped. Batches are as large as the adapter's transactions (less
 * the counters and the change item), each one commit.
 */
export async function storeFlags(store: FlagStore, user: string, folderId: string, uids: number[], change: FlagChange): Promise<FlagResult> {
  const flags = normalizeFlags(change.flags);
  const lower = new Set(flags.map((f) => f.toLowerCase()));
  const result: FlagResult = { updated: [], modified: [] };
  const unique = [...new Set(uids)].sort((a, b) => a - b);
  await store.folderMeta(user, folderId);
  const size = store.tables.maxTransactionOps - 2;
  for (let i = 0; i < unique.length; i += size) {
    const batch = unique.slice(i, i + size);
    for (let attempt = 0; ; attempt++) {
      const items = await readBatch(store.tables, user, folderId, batch);
      const changes: { item: Item; before: string[]; after: string[] }[] = [];
      const modified: number[] = [];
      for (const item of items) {
        if (change.unchangedSince !== undefined && Number(item.modseq ?? 0) > change.unchangedSince) {
          modified.push(uidOf(item));
          continue;
        }
        const before = flagsOf(item);
        const after =
          change.mode === 'replace' ? flags : change.mode === 'add' ? normalizeFlags([...before, ...flags]) : before.filter((f) => !lower.has(f.toLowerCase()));
        const same = after.length === before.length && after.every((f) => before.includes(f));
        if (!same) changes.push({ item, before, after });
      }
      if (!changes.length) {
        result.modified.push(...modified);
        break;
      }
      const modseq = await store.changes.allocate(user);
      const unseen = changes.reduce((n, c) => n + (isSeen(c.before) ? 1 : 0) - (isSeen(c.after) ? 1 : 0), 0);
      const ops: TransactOp[] = changes.map((c) => ({
        update: { pk: c.item.pk, sk: c.item.sk },
        changes: { set: { flags: c.after, modseq } },
        condition: { exists: true, equals: { modseq: c.item.modseq ?? null } },
      }));
      ops.push(store.countersOp(user, folderId, modseq, { unseen }));
      ops.push(store.changes.op(user, modseq, [{ kind: 'flags', folder: folderId, ...emailsOfItems(changes.map((c) => c.item)) }]));
      try {
        await store.commit(user, ops);
        for (const c of changes) result.updated.push({ uid: uidOf(c.item), flags: c.after, modseq });
        result.modified.push(...modified);
        break;
      } catch (e) {
        // ConditionFailed: a message changed (or went) since the read, or the folder's MODSEQ
        // moved on; Unavailable: DynamoDB cancelled overlapping transactions. Re-read and retry.
        if (!(isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable')) || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
      }
    }
  }
  return result;
}

/** The uids, Emails and threads of message items, as a change entry names them. */
function emailsOfItems(items: Item[]): Pick<ChangeEntry, 'uids' | 'emailIds' | 'threadIds'> {
  const threadIds = [...new Set(items.flatMap((m) => (typeof m.threadId === 'string' ? [m.threadId] : [])))];
  return { uids: items.map(uidOf), emailIds: items.map((m) => emailIdOf(String(m.blobKey))), ...(threadIds.length ? { threadIds } : {}) };
}
