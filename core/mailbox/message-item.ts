/**
 * A folder message's item: its shape as the model reads it (whole, or as a listing without the
 * summary), the attributes a copy keeps, and the paged reads of a folder's messages. Apart from
 * folders.ts (the writes) so that each stays a readable size; INBOX's items (MailboxStore) are
 * read the same way.
 */
import type { AttrValue, Item, Tables } from '../storage/ports.js';
import type { ChangeEntry } from './changes.js';
import { emailIdOf } from './email-ids.js';
import { UID_WIDTH } from './keys.js';

/** One message in a folder. */
export interface FolderMessage {
  uid: number;
  blobKey: string;
  size: number;
  /** INTERNALDATE. */
  receivedAt: string;
  summary: Record<string, AttrValue>;
  /** System flags (`\Seen`...) and keywords together. */
  flags: string[];
  jobId: string;
  /** The MODSEQ of its last change; 0 for a message untouched since the change log began. */
  modseq: number;
  /** Its JMAP thread (RFC 8621 §3); absent for a message filed before threads until the index
   * backfill (email-index.ts) reaches it. */
  threadId?: string;
}

/** A message item as the model reads it (MailboxStore reads INBOX's with it too). */
export function toMessage(item: Item): FolderMessage {
  return {
    uid: Number(item.uid),
    blobKey: String(item.blobKey),
    size: Number(item.size),
    receivedAt: String(item.receivedAt),
    summary: (item.summary ?? {}) as Record<string, AttrValue>,
    flags: Array.isArray(item.flags) ? item.flags.map(String) : [],
    jobId: String(item.jobId ?? ''),
    modseq: Number(item.modseq ?? 0),
    ...(typeof item.threadId === 'string' ? { threadId: item.threadId } : {}),
  };
}

/** What a listing reads of a message: all but its summary, job and thread. */
export type FolderListing = Pick<FolderMessage, 'uid' | 'blobKey' | 'size' | 'receivedAt' | 'flags' | 'modseq'>;
const LISTING_ATTRIBUTES = ['uid', 'blobKey', 'size', 'receivedAt', 'flags', 'modseq'];

function toListing(item: Item): FolderListing {
  return {
    uid: Number(item.uid),
    blobKey: String(item.blobKey),
    size: Number(item.size),
    receivedAt: String(item.receivedAt),
    flags: Array.isArray(item.flags) ? item.flags.map(String) : [],
    modseq: Number(item.modseq ?? 0),
  };
}

const uidSort = (n: number) => `UID#${String(n).padStart(UID_WIDTH, '0')}`;

/** A page of a folder partition's messages with `from` ≤ uid ≤ `to`, in UID order. */
export async function messagePage(
  tables: Tables,
  partition: string,
  range: { from?: number; to?: number; limit: number; cursor?: string },
): Promise<{ items: FolderMessage[]; cursor?: string }> {
  const page = await tables.query(partition, {
    range: { gte: uidSort(range.from ?? 1), lte: range.to === undefined ? 'UID#~' : uidSort(range.to) },
    limit: range.limit,
    cursor: range.cursor,
  });
  return { items: page.items.map(toMessage), ...(page.cursor ? { cursor: page.cursor } : {}) };
}

/**
 * Every message's listing fields in UID order, a page at a time. The summary is most of a
 * message's item, so the query projects it away (QueryOptions.attributes): locally it never
 * becomes a JavaScript string, on DynamoDB it is never sent.
 */
export async function* listingOf(tables: Tables, partition: string, pageSize: number): AsyncGenerator<FolderListing> {
  let cursor: string | undefined;
  do {
    const page = await tables.query(partition, { range: { gte: uidSort(0), lte: 'UID#~' }, limit: pageSize, cursor, attributes: LISTING_ATTRIBUTES });
    for (const item of page.items) yield toListing(item);
    cursor = page.cursor;
  } while (cursor);
}

/** The attributes a copy of a message keeps (everything but its uid and modseq). */
export function messageAttrs(m: FolderMessage): Record<string, AttrValue> {
  return {
    blobKey: m.blobKey,
    size: m.size,
    receivedAt: m.receivedAt,
    summary: m.summary,
    flags: m.flags,
    jobId: m.jobId,
    ...(m.threadId ? { threadId: m.threadId } : {}),
  };
}

/** The uids, Emails and threads of messages, as a change entry names them. */
export function emailsOf(ms: FolderMessage[]): Pick<ChangeEntry, 'uids' | 'emailIds' | 'threadIds'> {
  const threadIds = [...new Set(ms.flatMap((m) => (m.threadId ? [m.threadId] : [])))];
  return { uids: ms.map((m) => m.uid), emailIds: ms.map((m) => emailIdOf(m.blobKey)), ...(threadIds.length ? { threadIds } : {}) };
}
