/**
 * A user's folders and the messages in them, over the Tables and Blobs ports: the model IMAP
 * (issue 21) and JMAP (issue 22) are built on. Item layout: keys.ts; change log: changes.ts.
 *
 * Why a FolderStore beside MailboxStore rather than a bigger MailboxStore: MailboxStore's callers
 * (SMTP policy, inbound worker, POP3 maildrop, CLI, sweep) see one mailbox per user and keep that
 * API unchanged; MailboxStore delegates its writes (deliver, remove, setFlags, purge) to this
 * class, so INBOX has one write path whichever protocol changes it, and every write bumps the
 * user's MODSEQ, writes its change item and keeps the usage item in the same transaction.
 *
 * - INBOX is the `MBX#<user>` partition as it always was (no rewrite of old data). Its META gets
 *   the new counters lazily: `highestModSeq` (set to 0 once, conditionally) and `unseen` (counted
 *   once by a scan, stored only if no write touched the folder meanwhile).
 * - Other folders have an immutable random id, so a rename changes one registry item and no
 *   message: UIDs and UIDVALIDITY stay valid. The hierarchy is kept as parent ids (JMAP's model);
 *   the full name is derived with the delimiter `/` (not `.`, which ordinary names such as
 *   "Archive 2024.1" or "Re: v1.2" hold; `/` is what most IMAP servers and clients show).
 *   Names are stored as UTF-8 (IMAP4rev2); modified UTF-7 is the IMAP layer's business.
 * - Usage over every folder lives in `USAGE`, made on first use from INBOX's bytes (the only
 *   folder old data can have); the quota is checked against it atomically with each write.
 * - Every write is one transaction of at most MAX_TRANSACTION_OPS writes; batches are sized for
 *   that (BATCH). A MOVE batch is one transaction: a message is in exactly one of the folders.
 */
import { randomBytes } from 'node:crypto';
import { keys as accountKeys } from '../accounts/accounts.js';
import { lessonOp, sendLesson, type LessonKind } from '../mail/spam-learn.js';
import { ConditionFailed, isStorageError, type AttrValue, type Blobs, type Item, type Queues, type Tables, type TransactOp } from '../storage/ports.js';
import { ChangeLog, type ChangeLogOptions, type ChangeEntry } from './changes.js';
import { emailIdOf } from './email-ids.js';
import { EmailIndex } from './email-index.js';
import { isSeen, normalizeFlags, storeFlags, type FlagChange, type FlagResult } from './flags.js';
import { publishMailboxChange } from './notify.js';
import { backoff, FolderError, folderKeys, INBOX, indexKeys, mailboxKeys, MAX_ATTEMPTS, NoSuchMailbox, QuotaExceeded, UID_WIDTH } from './keys.js';

/** The hierarchy delimiter of folder names (see the file header for why `/`). */
export const DELIMITER = '/';

/** Special uses (RFC 6154) made at first use, and the name each gets. */
export const SPECIAL_USES = { '\\Sent': 'Sent', '\\Drafts': 'Drafts', '\\Trash': 'Trash', '\\Junk': 'Junk', '\\Archive': 'Archive' } as const;
export type SpecialUse = keyof typeof SPECIAL_USES;

/** Messages per transaction (MAX_TRANSACTION_OPS = 25). Expunge and copy write at most 3 items
 * per message (message, its Email location, blob reference) plus 4 (counters, usage made from
 * INBOX's counters: 2, change item): 3 × 7 + 4 = 25. A move writes 4 per message (message and
 * location, put in one folder and deleted in the other) plus 5 (two folders' counters, usage: 2,
 * change item): 4 × 5 + 5 = 25. A copy or move into or out of Junk also writes its spam lesson
 * (core/mail/spam-learn.ts) and takes one message fewer per batch. */
const BATCH = 7;
const MOVE_BATCH = 5;
const ROOT = '';

/** One folder as a client sees it. */
export interface FolderInfo {
  id: string;
  /** Full name with `/` between levels; `INBOX` for INBOX. */
  name: string;
  parentId: string;
  specialUse?: SpecialUse;
  subscribed: boolean;
}

/** Counters of one folder (IMAP STATUS / SELECT, JMAP Mailbox counts). */
export interface FolderStatus {
  count: number;
  unseen: number;
  bytes: number;
  uidNext: number;
  uidValidity: number;
  /** The MODSEQ of the folder's last change; 0 when nothing changed since the change log began. */
  highestModSeq: number;
}

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

/** What `append` stores. The raw message must already be durable in blobs. */
export interface AppendInput {
  /** Idempotency key: a second append with the same key returns the first uid. @default none */
  key?: string;
  blobKey: string;
  size: number;
  receivedAt: string;
  summary: Record<string, AttrValue>;
  flags?: string[];
  /** Lifetime of the idempotency marker; 0 keeps it for good. @default the store's */
  markerTtlSeconds?: number;
  /** Recorded with the message (the inbound job, for delivery). @default the key or '' */
  jobId?: string;
}

export interface FolderStoreOptions {
  /** @default () => new Date() */
  now?: () => Date;
  /** Items per query page. @default 500 */
  pageSize?: number;
  /** Lifetime of idempotency markers in seconds. @default 30 days */
  markerTtlSeconds?: number;
  changeLog?: ChangeLogOptions;
  /** Where the job of a spam lesson goes (a move into or out of Junk, core/mail/spam-learn.ts).
   * Without it the lesson is still recorded, and the sweep sends it. */
  learnQueue?: Queues;
}

const retryable = (e: unknown) => isStorageError(e, 'ConditionFailed') || isStorageError(e, 'Unavailable');

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

/** Checks one level of a folder name. */
function checkLeaf(leaf: string): void {
  // Control characters have no place in a name; `*` and `%` are LIST wildcards (RFC 9051 §6.3.9).
  if (!leaf || /[\x00-\x1f\x7f*%]/.test(leaf) || Buffer.byteLength(leaf) > 255) throw new FolderError('BadName', `bad folder name level "${leaf}"`);
}

/** Splits a full name into levels; INBOX (any case) is the reserved top level. */
function splitName(name: string): string[] {
  const parts = name.split(DELIMITER);
  if (parts.length > 1 && parts[parts.length - 1] === '') parts.pop(); // "a/b/" names a/b (RFC 9051 §6.3.4)
  parts.forEach(checkLeaf);
  if (parts[0]!.toUpperCase() === INBOX) parts[0] = INBOX;
  return parts;
}

/** The USAGE item, or (before it exists) INBOX's META to make it from; `bytes` in use now. */
interface UsageBase {
  usage?: Item;
  inbox?: Item;
  bytes: number;
}

interface Registry {
  items: Item[];
  byId: Map<string, Item>;
}

/** Every folder of every user: registry, counters, messages, flags, copy/move, the change log. */
export class FolderStore {
  readonly changes: ChangeLog;
  /** Users whose pre-index messages this process has seen backfilled (ensureIndexed). */
  private readonly indexed = new Set<string>();
  /** Where each Email is and its thread (JMAP); kept in the same transactions as the folders. */
  readonly index: EmailIndex;
  private readonly now: () => Date;
  private readonly pageSize: number;
  private readonly markerTtl: number;
  private readonly learnQueue?: Queues;

  constructor(
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    options: FolderStoreOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    this.pageSize = options.pageSize ?? 500;
    this.markerTtl = options.markerTtlSeconds ?? 30 * 86400;
    this.learnQueue = options.learnQueue;
    this.changes = new ChangeLog(tables, { now: this.now, ...options.changeLog });
    this.index = new EmailIndex(tables, blobs, this.pageSize);
  }

  /** Indexes a user's messages filed before the Email index (JMAP calls it on first use). */
  async ensureIndexed(user: string): Promise<void> {
    // Once done it stays done (everything filed since is indexed as it is filed), so a process
    // asks the store only once per user instead of on every JMAP lookup.
    if (this.indexed.has(user)) return;
    if (!(await this.index.isBackfilled(user))) await this.index.backfill(this, user);
    this.indexed.add(user);
  }

  private epoch(): number {
    return Math.floor(this.now().getTime() / 1000);
  }

  // ------------------------------------------------------------------------------------------
  // Counters

  /**
   * The folder's META, made ready for conditional writes: INBOX's is created on first use, and an
   * INBOX made by older code gets `highestModSeq: 0` once. NoSuchFolder for another missing folder.
   */
  async folderMeta(user: string, folderId: string): Promise<Item> {
    const key = folderKeys.meta(user, folderId);
    let item = await this.tables.get(key);
    if (!item) {
      if (folderId !== INBOX) throw new FolderError('NoSuchFolder', `no folder ${folderId}`);
      const fresh = { ...key, count: 0, bytes: 0, unseen: 0, unseenKnown: true, uidNext: 1, uidValidity: this.epoch(), highestModSeq: 0, lastUid: 0 };
      try {
        await this.tables.put(fresh, { condition: { exists: false } });
      } catch (e) {
        if (!isStorageError(e, 'ConditionFailed')) throw e;
      }
      item = (await this.tables.get(key))!;
    }
    // Counters older code did not keep: the folder's MODSEQ and its highest committed UID (0 is
    // below every UID allocated from now on, which is all the ordering condition needs).
    const missing: Record<string, number> = {};
    if (item.highestModSeq === undefined || item.highestModSeq === null) missing.highestModSeq = 0;
    if (item.lastUid === undefined || item.lastUid === null) missing.lastUid = 0;
    if (Object.keys(missing).length > 0) {
      try {
        const absent = Object.fromEntries(Object.keys(missing).map((k) => [k, null]));
        item = await this.tables.update(key, { set: missing }, { condition: { exists: true, equals: absent } });
      } catch (e) {
        if (!isStorageError(e, 'ConditionFailed')) throw e;
        item = (await this.tables.get(key))!;
      }
    }
    return item;
  }

  /** The user's usage over every folder (reads only: before the USAGE item exists, INBOX holds
   * everything). */
  async usage(user: string): Promise<{ bytes: number; count: number }> {
    const item = (await this.tables.get(folderKeys.usage(user))) ?? (await this.tables.get(folderKeys.meta(user, INBOX)));
    return { bytes: Number(item?.bytes ?? 0), count: Number(item?.count ?? 0) };
  }

  /** What a write needs to keep the usage: the USAGE item, or INBOX's counters to make it from. */
  private async usageBase(user: string, inbox?: Item): Promise<UsageBase> {
    const usage = await this.tables.get(folderKeys.usage(user));
    if (usage) return { usage, bytes: Number(usage.bytes ?? 0) };
    const meta = inbox ?? (await this.folderMeta(user, INBOX));
    return { inbox: meta, bytes: Number(meta.bytes ?? 0) };
  }

  /**
   * Adds the usage change to `ops`, conditional on the quota when it grows. The first write of a
   * user through this model makes the USAGE item, from INBOX's counters as read (the only folder
   * older data has) and on condition that they are still those: merged into the transaction's
   * INBOX META update when there is one (a transaction may not name an item twice), otherwise as
   * a check. No transaction of its own, so a delivery stays one transaction.
   */
  private addUsage(ops: TransactOp[], user: string, base: UsageBase, quota: number, bytes: number, count: number): void {
    if (base.usage) {
      ops.push({
        update: folderKeys.usage(user),
        changes: { add: { bytes, count } },
        condition: quota > 0 && bytes > 0 ? { lessThan: { bytes: quota - bytes + 1 } } : { exists: true },
      });
      return;
    }
    const inbox = base.inbox!;
    const pinned = { bytes: Number(inbox.bytes ?? 0), count: Number(inbox.count ?? 0) };
    ops.push({ put: { ...folderKeys.usage(user), bytes: pinned.bytes + bytes, count: pinned.count + count }, condition: { exists: false } });
    const metaKey = folderKeys.meta(user, INBOX);
    const own = ops.find((op) => 'update' in op && op.update.pk === metaKey.pk && op.update.sk === metaKey.sk) as
      Extract<TransactOp, { update: unknown }> | undefined;
    if (own) own.condition = { ...own.condition, equals: { ...own.condition?.equals, ...pinned } };
    else ops.push({ check: metaKey, condition: { equals: pinned } });
  }

  /** The folder's counters. An INBOX from older code has its unseen count made once here. */
  async status(user: string, folderId: string): Promise<FolderStatus> {
    let meta = await this.folderMeta(user, folderId);
    if (meta.unseenKnown !== true) meta = await this.countUnseen(user, folderId, meta);
    return {
      count: Number(meta.count ?? 0),
      unseen: Math.max(0, Number(meta.unseen ?? 0)),
      bytes: Number(meta.bytes ?? 0),
      uidNext: Number(meta.uidNext ?? 1),
      uidValidity: Number(meta.uidValidity),
      highestModSeq: Number(meta.highestModSeq ?? 0),
    };
  }

  /** Scans the folder for unseen messages and stores the count if no write touched the folder
   * meanwhile (every write moves highestModSeq); otherwise tries again. */
  private async countUnseen(user: string, folderId: string, meta: Item): Promise<Item> {
    for (let attempt = 0; ; attempt++) {
      let unseen = 0;
      for await (const m of this.entries(user, folderId)) if (!isSeen(m.flags)) unseen++;
      try {
        return await this.tables.update(
          folderKeys.meta(user, folderId),
          { set: { unseen, unseenKnown: true } },
          { condition: { equals: { highestModSeq: meta.highestModSeq ?? null, unseenKnown: null } } },
        );
      } catch (e) {
        if (!isStorageError(e, 'ConditionFailed')) throw e;
        meta = await this.folderMeta(user, folderId);
        if (meta.unseenKnown === true) return meta;
        if (attempt >= 5) return { ...meta, unseen }; // busy folder: this scan's count, unstored
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Folders

  private async registry(user: string): Promise<Registry> {
    const items: Item[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`MBX#${user}`, { range: { beginsWith: 'FOLDER#' }, limit: this.pageSize, cursor });
      items.push(...page.items);
      cursor = page.cursor;
    } while (cursor);
    return { items, byId: new Map(items.map((i) => [String(i.id), i])) };
  }

  private fullName(reg: Registry, item: Item): string {
    const names: string[] = [];
    let cur: Item | undefined = item;
    for (let depth = 0; cur && depth < 100; depth++) {
      names.unshift(String(cur.leaf));
      const parent: string = String(cur.parentId ?? ROOT);
      if (parent === INBOX) names.unshift(INBOX);
      cur = parent === ROOT || parent === INBOX ? undefined : reg.byId.get(parent);
    }
    return names.join(DELIMITER);
  }

  private info(reg: Registry, item: Item): FolderInfo {
    return {
      id: String(item.id),
      name: this.fullName(reg, item),
      parentId: String(item.parentId ?? ROOT),
      ...(item.specialUse ? { specialUse: item.specialUse as SpecialUse } : {}),
      subscribed: item.subscribed !== false,
    };
  }

  /** Every folder, INBOX first, then by name. Finishes deletions a crash left half done. */
  async list(user: string): Promise<FolderInfo[]> {
    const reg = await this.registry(user);
    for (const item of reg.items.filter((i) => i.deleting === true)) await this.finishDelete(user, String(item.id));
    const inbox = await this.folderMeta(user, INBOX);
    const live = reg.items.filter((i) => i.deleting !== true);
    const out = live.map((i) => this.info(reg, i)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return [{ id: INBOX, name: INBOX, parentId: ROOT, subscribed: inbox.unsubscribed !== true }, ...out];
  }

  /** The folders, with the special-use ones made first where missing: RFC 6154 clients and JMAP
   * clients (Mailbox roles) look for them the first time they list. */
  async listWithSpecialUse(user: string): Promise<FolderInfo[]> {
    const all = await this.list(user);
    const have = new Set(all.map((f) => f.specialUse).filter(Boolean));
    const missing = (Object.keys(SPECIAL_USES) as SpecialUse[]).filter((u) => !have.has(u));
    if (!missing.length) return all;
    for (const use of missing) await this.ensureSpecialUse(user, use);
    return this.list(user);
  }

  /** The folder with this full name, or undefined. */
  async find(user: string, name: string): Promise<FolderInfo | undefined> {
    const levels = splitName(name);
    if (levels.length === 1 && levels[0] === INBOX) return (await this.list(user))[0];
    let parent = levels[0] === INBOX ? INBOX : ROOT;
    for (const leaf of levels[0] === INBOX ? levels.slice(1) : levels) {
      const idx = await this.tables.get(folderKeys.name(user, parent, leaf));
      if (!idx) return undefined;
      parent = String(idx.folderId);
    }
    const reg = await this.registry(user);
    const item = reg.byId.get(parent);
    return item && item.deleting !== true ? this.info(reg, item) : undefined;
  }

  /**
   * Creates a folder by full name, and any missing levels above it (RFC 9051 §6.3.4 SHOULD).
   * AlreadyExists when the name is taken.
   */
  async create(user: string, name: string, options: { specialUse?: SpecialUse } = {}): Promise<FolderInfo> {
    const levels = splitName(name);
    if (levels.length === 1 && levels[0] === INBOX) throw new FolderError('AlreadyExists', 'INBOX always exists');
    const parentId = await this.ensurePath(user, levels.slice(0, -1));
    const id = await this.createOne(user, parentId, levels[levels.length - 1]!, options.specialUse);
    if (id.existed) throw new FolderError('AlreadyExists', `folder ${name} exists`);
    const reg = await this.registry(user);
    return this.info(reg, reg.byId.get(id.id)!);
  }

  /** The id of the folder at these levels, creating missing ones. */
  private async ensurePath(user: string, levels: string[]): Promise<string> {
    let parent = ROOT;
    for (const [i, leaf] of levels.entries()) {
      if (i === 0 && leaf === INBOX) {
        parent = INBOX;
        continue;
      }
      parent = (await this.createOne(user, parent, leaf)).id;
    }
    return parent;
  }

  /** Creates one level if absent; returns its id and whether it was there already. */
  private async createOne(user: string, parentId: string, leaf: string, specialUse?: SpecialUse): Promise<{ id: string; existed: boolean }> {
    if (parentId === ROOT && leaf.toUpperCase() === INBOX) return { id: INBOX, existed: true };
    const id = randomBytes(8).toString('hex');
    let validity = this.epoch();
    for (let attempt = 0; ; attempt++) {
      const existing = await this.tables.get(folderKeys.name(user, parentId, leaf));
      if (existing) return { id: String(existing.folderId), existed: true };
      if (specialUse && (await this.tables.get(folderKeys.specialUse(user, specialUse))))
        throw new FolderError('AlreadyExists', `a ${specialUse} folder exists`);
      const modseq = await this.changes.allocate(user);
      const ops: TransactOp[] = [
        {
          put: { ...folderKeys.folder(user, id), id, leaf, parentId, subscribed: true, uidValidity: validity, ...(specialUse ? { specialUse } : {}) },
          condition: { exists: false },
        },
        { put: { ...folderKeys.name(user, parentId, leaf), folderId: id }, condition: { exists: false } },
        {
          put: {
            ...folderKeys.meta(user, id),
            count: 0,
            bytes: 0,
            unseen: 0,
            unseenKnown: true,
            uidNext: 1,
            uidValidity: validity,
            highestModSeq: modseq,
            lastUid: 0,
          },
          condition: { exists: false },
        },
        // RFC 9051 §2.3.1.1: a folder that replaces a deleted one of the same name must not reuse
        // its UIDVALIDITY; creation time in seconds, made unique per user by this guard.
        { put: { ...folderKeys.validity(user, validity), ttl: this.epoch() + 86400 }, condition: { exists: false } },
        this.changes.op(user, modseq, [{ kind: 'folder-create', folder: id }]),
      ];
      if (specialUse) ops.push({ put: { ...folderKeys.specialUse(user, specialUse), folderId: id }, condition: { exists: false } });
      try {
        await this.commit(user, ops);
        return { id, existed: false };
      } catch (e) {
        if (!retryable(e) || attempt >= MAX_ATTEMPTS) throw e;
        if (await this.tables.get(folderKeys.validity(user, validity))) validity++;
        await backoff(attempt);
      }
    }
  }

  /**
   * The folder with this special use, made at first use under its usual name (idempotent and
   * race-safe: the `USE#` index admits one). A user folder already holding the name gets the use.
   */
  async ensureSpecialUse(user: string, use: SpecialUse): Promise<FolderInfo> {
    for (let attempt = 0; ; attempt++) {
      const idx = await this.tables.get(folderKeys.specialUse(user, use));
      if (idx) {
        const reg = await this.registry(user);
        const item = reg.byId.get(String(idx.folderId));
        if (item && item.deleting !== true) return this.info(reg, item);
      }
      try {
        const made = await this.createOne(user, ROOT, SPECIAL_USES[use], use);
        if (made.existed) await this.adoptSpecialUse(user, made.id, use);
        continue;
      } catch (e) {
        if (!(e instanceof FolderError) && !retryable(e)) throw e;
        if (attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
      }
    }
  }

  private async adoptSpecialUse(user: string, folderId: string, use: SpecialUse): Promise<void> {
    if (folderId === INBOX) throw new FolderError('Refused', `INBOX cannot be ${use}`);
    const modseq = await this.changes.allocate(user);
    try {
      await this.commit(user, [
        {
          update: folderKeys.folder(user, folderId),
          changes: { set: { specialUse: use } },
          condition: { exists: true, equals: { specialUse: null, deleting: null } },
        },
        { put: { ...folderKeys.specialUse(user, use), folderId }, condition: { exists: false } },
        this.changes.op(user, modseq, [{ kind: 'folder-update', folder: folderId }]),
      ]);
    } catch (e) {
      if (!retryable(e)) throw e; // a racer won: the caller reads the index again
    }
  }

  /**
   * Renames a folder (and with it every folder below it: they hang on its id), creating missing
   * levels above the new name. Ids, UIDs and UIDVALIDITY stay. INBOX is refused here: RFC 9051
   * §6.3.6 makes renaming INBOX a move of its messages, which the protocol layer does with move.
   */
  async rename(user: string, folderId: string, newName: string): Promise<FolderInfo> {
    if (folderId === INBOX) throw new FolderError('Refused', 'INBOX is renamed by moving its messages');
    const levels = splitName(newName);
    if (levels.length === 1 && levels[0] === INBOX) throw new FolderError('AlreadyExists', 'INBOX always exists');
    for (let attempt = 0; ; attempt++) {
      const reg = await this.registry(user);
      const item = reg.byId.get(folderId);
      if (!item || item.deleting === true) throw new FolderError('NoSuchFolder', `no folder ${folderId}`);
      const target = this.fullName(reg, item);
      if (newName === target || newName.startsWith(target + DELIMITER)) throw new FolderError('BadName', `cannot rename ${target} into itself`);
      const parentId = await this.ensurePath(user, levels.slice(0, -1));
      const leaf = levels[levels.length - 1]!;
      if (await this.tables.get(folderKeys.name(user, parentId, leaf))) throw new FolderError('AlreadyExists', `folder ${newName} exists`);
      const modseq = await this.changes.allocate(user);
      try {
        await this.commit(user, [
          {
            update: folderKeys.folder(user, folderId),
            changes: { set: { leaf, parentId } },
            condition: { exists: true, equals: { leaf: item.leaf!, parentId: item.parentId ?? ROOT, deleting: null } },
          },
          { delete: folderKeys.name(user, String(item.parentId ?? ROOT), String(item.leaf)), condition: { equals: { folderId } } },
          { put: { ...folderKeys.name(user, parentId, leaf), folderId }, condition: { exists: false } },
          this.changes.op(user, modseq, [{ kind: 'folder-rename', folder: folderId }]),
        ]);
        const after = await this.registry(user);
        return this.info(after, after.byId.get(folderId)!);
      } catch (e) {
        if (!retryable(e) || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
      }
    }
  }

  /**
   * Deletes a folder with its messages (blob references released; a blob goes with its last
   * one). Refused for INBOX and for a folder with folders below it. Crash-safe in three steps: the
   * folder leaves the names (one transaction, logged), its counters go (so nothing more can be
   * written into it), then its messages; `list` finishes what a crash left.
   */
  async delete(user: string, folderId: string): Promise<void> {
    if (folderId === INBOX) throw new FolderError('Refused', 'INBOX cannot be deleted');
    const reg = await this.registry(user);
    const item = reg.byId.get(folderId);
    if (!item || item.deleting === true) throw new FolderError('NoSuchFolder', `no folder ${folderId}`);
    if (reg.items.some((i) => i.parentId === folderId && i.deleting !== true)) throw new FolderError('HasChildren', 'the folder has folders below it');
    const modseq = await this.changes.allocate(user);
    const ops: TransactOp[] = [
      { update: folderKeys.folder(user, folderId), changes: { set: { deleting: true } }, condition: { exists: true, equals: { deleting: null } } },
      { delete: folderKeys.name(user, String(item.parentId ?? ROOT), String(item.leaf)), condition: { equals: { folderId } } },
      this.changes.op(user, modseq, [{ kind: 'folder-delete', folder: folderId }]),
    ];
    if (item.specialUse) ops.push({ delete: folderKeys.specialUse(user, String(item.specialUse)), condition: { equals: { folderId } } });
    try {
      await this.commit(user, ops);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) throw new FolderError('NoSuchFolder', `folder ${folderId} changed while being deleted`);
      throw e;
    }
    await this.finishDelete(user, folderId);
  }

  private async finishDelete(user: string, folderId: string): Promise<void> {
    await this.tables.delete(folderKeys.meta(user, folderId));
    for (;;) {
      const page = await this.tables.query(folderKeys.partition(user, folderId), { range: { beginsWith: 'UID#' }, limit: BATCH });
      if (!page.items.length) break;
      await this.expungeBatch(
        user,
        folderId,
        page.items.map((i) => Number(i.uid)),
        false,
      );
    }
    await this.tables.delete(folderKeys.folder(user, folderId));
  }

  /** Subscribes or unsubscribes a folder (IMAP SUBSCRIBE, JMAP isSubscribed). */
  async subscribe(user: string, folderId: string, subscribed: boolean): Promise<void> {
    const modseq = await this.changes.allocate(user);
    const target: TransactOp =
      folderId === INBOX
        ? { update: folderKeys.meta(user, INBOX), changes: { set: { unsubscribed: !subscribed } } }
        : { update: folderKeys.folder(user, folderId), changes: { set: { subscribed } }, condition: { exists: true, equals: { deleting: null } } };
    if (folderId === INBOX) await this.folderMeta(user, INBOX);
    try {
      await this.commit(user, [target, this.changes.op(user, modseq, [{ kind: 'folder-update', folder: folderId }])]);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) throw new FolderError('NoSuchFolder', `no folder ${folderId}`);
      throw e;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Messages

  /** One message, or undefined. */
  async get(user: string, folderId: string, uid: number): Promise<FolderMessage | undefined> {
    const item = await this.tables.get(folderKeys.message(user, folderId, uid));
    return item ? toMessage(item) : undefined;
  }

  /** A page of messages with `from` ≤ uid ≤ `to`, in UID order; pass `cursor` back for the next. */
  async messages(
    user: string,
    folderId: string,
    range: { from?: number; to?: number; limit?: number; cursor?: string } = {},
  ): Promise<{ items: FolderMessage[]; cursor?: string }> {
    const pad = (n: number) => `UID#${String(n).padStart(UID_WIDTH, '0')}`;
    const page = await this.tables.query(folderKeys.partition(user, folderId), {
      range: { gte: pad(range.from ?? 1), lte: range.to === undefined ? 'UID#~' : pad(range.to) },
      limit: range.limit ?? this.pageSize,
      cursor: range.cursor,
    });
    return { items: page.items.map(toMessage), ...(page.cursor ? { cursor: page.cursor } : {}) };
  }

  /** Every message in UID order, a page at a time (memory bounded). */
  async *entries(user: string, folderId: string): AsyncGenerator<FolderMessage> {
    let cursor: string | undefined;
    do {
      const page = await this.messages(user, folderId, { cursor });
      yield* page.items;
      cursor = page.cursor;
    } while (cursor);
  }

  /**
   * Adds a message to a folder; resolves once it is durable. Idempotent on `key` (a second call
   * returns the first uid with duplicate=true). QuotaExceeded past the user's quota over every
   * folder, NoSuchMailbox for an unknown user, NoSuchFolder for a missing folder. The uid comes
   * from an atomic counter first (kept across retries; a refused append burns it: UIDs only need
   * to ascend), then counters, message, marker, blob reference, usage and change item commit in
   * one transaction.
   */
  async append(user: string, folderId: string, m: AppendInput): Promise<{ uid: number; modseq: number; duplicate: boolean }> {
    const flags = normalizeFlags(m.flags ?? []);
    const markerKey = m.key === undefined ? undefined : folderKeys.marker(m.key, user, folderId);
    let uid = 0;
    for (let attempt = 0; ; attempt++) {
      // One round trip of reads; the usage is read beside them (usageBase re-reads it only on a
      // user's first write, to make it from INBOX's counters).
      const [marker, account, meta, usage, thread] = await Promise.all([
        markerKey ? this.tables.get(markerKey) : undefined,
        this.tables.get(accountKeys.user(user)),
        this.folderMeta(user, folderId),
        this.tables.get(folderKeys.usage(user)),
        this.index.plan(user, m),
      ]);
      if (marker) return { uid: Number(marker.uid), modseq: Number(marker.modseq ?? 0), duplicate: true };
      if (!account) throw new NoSuchMailbox(user);
      const base: UsageBase = usage ? { usage, bytes: Number(usage.bytes ?? 0) } : await this.usageBase(user, folderId === INBOX ? meta : undefined);
      const quota = Number(account.quotaBytes ?? 0);
      if (quota > 0 && base.bytes + m.size > quota) throw new QuotaExceeded(user, quota, base.bytes, m.size);
      // A later UID committed first (its writer allocated after us but won the race): ours would
      // appear below a message a client has already seen, so take a new one.
      if (uid && Number(meta.lastUid ?? 0) >= uid) uid = 0;
      const [allocated, modseq] = await Promise.all([uid ? uid : this.allocateUids(user, folderId, 1), this.changes.allocate(user)]);
      uid = allocated;
      const ops: TransactOp[] = [
        this.countersOp(user, folderId, modseq, { count: 1, bytes: m.size, unseen: isSeen(flags) ? 0 : 1 }, { first: uid, last: uid }),
        {
          put: {
            ...folderKeys.message(user, folderId, uid),
            uid,
            blobKey: m.blobKey,
            size: m.size,
            receivedAt: m.receivedAt,
            summary: m.summary,
            flags,
            jobId: m.jobId ?? m.key ?? '',
            modseq,
            threadId: thread.threadId,
          },
          condition: { exists: false },
        },
        { update: mailboxKeys.blobRef(m.blobKey), changes: { add: { refs: 1 } } },
        this.changes.op(user, modseq, [{ kind: 'append', folder: folderId, uids: [uid], emailIds: [thread.emailId], threadIds: [thread.threadId] }]),
        this.index.locationOp(user, folderId, uid, { ...m, threadId: thread.threadId }),
        ...thread.ops(modseq),
      ];
      this.addUsage(ops, user, base, quota, m.size, 1);
      if (markerKey) ops.push({ put: this.markerItem(markerKey, m, uid, modseq), condition: { exists: false } });
      try {
        await this.commit(user, ops);
        return { uid, modseq, duplicate: false };
      } catch (e) {
        // ConditionFailed: a racing copy of this append (marker), the quota, an out-of-order
        // MODSEQ on the folder, or a reader that closed our MODSEQ as a gap: all re-checked above.
        if (!retryable(e) || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
      }
    }
  }

  /** Commits a transaction that records a change, then nudges this process's sessions (IDLE). */
  private async commit(user: string, ops: TransactOp[]): Promise<void> {
    try {
      await this.tables.transact(ops);
    } catch (e) {
      // The MODSEQ this attempt took will never be used (a retry takes a new one): close it now,
      // so readers do not wait out the gap grace (a delayed IDLE) for a writer that moved on.
      const change = ops.find((op): op is Extract<TransactOp, { put: unknown }> => 'put' in op && op.put.pk === `CHG#${user}` && op.put.sk.startsWith('MOD#'));
      if (change) await this.changes.abandon(user, Number(change.put.sk.slice(4))).catch(() => undefined);
      throw e;
    }
    publishMailboxChange(user);
  }

  private markerItem(key: { pk: string; sk: string }, m: AppendInput, uid: number, modseq: number): Item {
    const ttl = m.markerTtlSeconds ?? this.markerTtl;
    return ttl > 0 ? { ...key, uid, modseq, ttl: this.epoch() + ttl } : { ...key, uid, modseq };
  }

  /** The first of `n` new consecutive uids of the folder. */
  private async allocateUids(user: string, folderId: string, n: number): Promise<number> {
    // Not durable on its own, as ChangeLog.allocate: only the transaction that uses the UIDs
    // must be, and its fsync covers this commit. One WAL fsync per APPEND instead of two.
    const after = await this.tables.update(folderKeys.meta(user, folderId), { add: { uidNext: n } }, { condition: { exists: true }, durable: false });
    return Number(after.uidNext) - n;
  }

  /** The folder's counter change under `modseq`; fails if a later MODSEQ got there first, so a
   * folder's HIGHESTMODSEQ only grows and its MODSEQs commit in order. */
  private countersOp(
    user: string,
    folderId: string,
    modseq: number,
    add: { count?: number; bytes?: number; unseen?: number },
    uids?: { first: number; last: number },
  ): TransactOp {
    const nonZero = Object.entries(add).filter(([, v]) => v !== 0);
    // New messages also commit in UID order: a session that has shown UID n never learns of a
    // smaller new one (RFC 9051 §2.3.1.1: UIDs ascend with message sequence numbers).
    return {
      update: folderKeys.meta(user, folderId),
      changes: { ...(nonZero.length ? { add: Object.fromEntries(nonZero) } : {}), set: { highestModSeq: modseq, ...(uids ? { lastUid: uids.last } : {}) } },
      condition: { lessThan: { highestModSeq: modseq, ...(uids ? { lastUid: uids.first } : {}) } },
    };
  }

  /** Changes flags of messages (IMAP STORE, JMAP Email/set keywords): see flags.ts. */
  async storeFlags(user: string, folderId: string, uids: number[], change: FlagChange): Promise<FlagResult> {
    return storeFlags(
      {
        tables: this.tables,
        changes: this.changes,
        folderMeta: (u, f) => this.folderMeta(u, f),
        countersOp: (u, f, modseq, add) => this.countersOp(u, f, modseq, add),
        commit: (u, ops) => this.commit(u, ops),
      },
      user,
      folderId,
      uids,
      change,
    );
  }

  /**
   * Copies messages to another folder, sharing each raw blob (its reference count +1 per copy,
   * never a second blob). Respects the quota. Returns source and new uids (UIDPLUS COPYUID).
   */
  async copy(user: string, from: string, uids: number[], to: string): Promise<{ pairs: [number, number][] }> {
    const pairs: [number, number][] = [];
    try {
      await this.transfer(user, from, uids, to, false, pairs);
    } catch (e) {
      // RFC 9051 §6.4.7: a failed COPY leaves the target as it was. Batches already copied are
      // expunged again (a crash before this leaves them copied: at least once, never lost).
      if (pairs.length)
        await this.expunge(
          user,
          to,
          pairs.map(([, uid]) => uid),
        );
      throw e;
    }
    return { pairs };
  }

  /**
   * Moves messages to another folder: per batch one transaction puts them in `to` and removes
   * them from `from`, so after a crash each message is in exactly one of the two. Blob
   * references and usage do not change. Returns source and new uids (COPYUID of RFC 6851).
   */
  async move(user: string, from: string, uids: number[], to: string): Promise<{ pairs: [number, number][] }> {
    if (from === to) throw new FolderError('Refused', 'source and target are the same folder');
    const pairs: [number, number][] = [];
    await this.transfer(user, from, uids, to, true, pairs);
    return { pairs };
  }

  /** Copies or moves in batches of one transaction each, adding each batch's uid pairs to `pairs`. */
  private async transfer(user: string, from: string, uids: number[], to: string, move: boolean, pairs: [number, number][]): Promise<void> {
    const unique = [...new Set(uids)].sort((a, b) => a - b);
    await Promise.all([this.folderMeta(user, from), this.folderMeta(user, to)]);
    const lesson = await this.lessonKind(user, from, to);
    // A spam lesson is one more write: one message fewer per batch keeps it within 25.
    const size = (move ? MOVE_BATCH : BATCH) - (lesson ? 1 : 0);
    for (let i = 0; i < unique.length; i += size) {
      const batch = unique.slice(i, i + size);
      let first = 0;
      let allocatedFor = 0;
      for (let attempt = 0; ; attempt++) {
        const [items, account, base, target] = await Promise.all([
          Promise.all(batch.map((uid) => this.tables.get(folderKeys.message(user, from, uid)))).then((xs) => xs.filter((x): x is Item => !!x).map(toMessage)),
          this.tables.get(accountKeys.user(user)),
          this.usageBase(user),
          this.folderMeta(user, to),
        ]);
        if (!items.length) break;
        const bytes = items.reduce((n, m) => n + m.size, 0);
        const quota = Number(account?.quotaBytes ?? 0);
        if (!move && quota > 0 && base.bytes + bytes > quota) throw new QuotaExceeded(user, quota, base.bytes, bytes);
        // New uids once per batch (a retry that finds fewer messages leaves some unused).
        // Also once a later UID of the target committed first (see countersOp).
        if (allocatedFor < items.length || Number(target.lastUid ?? 0) >= first) {
          first = await this.allocateUids(user, to, items.length);
          allocatedFor = items.length;
        }
        const modseq = await this.changes.allocate(user);
        const unseen = items.filter((m) => !isSeen(m.flags)).length;
        const ops: TransactOp[] = [];
        const newUids: number[] = [];
        items.forEach((m, j) => {
          const uid = first + j;
          newUids.push(uid);
          ops.push({
            put: { ...folderKeys.message(user, to, uid), ...messageAttrs(m), uid, modseq },
            condition: { exists: false },
          });
          ops.push(this.index.locationOp(user, to, uid, m));
          if (move) {
            ops.push({ delete: folderKeys.message(user, from, m.uid), condition: { equals: { modseq: m.modseq || null } } });
            ops.push(this.index.unlocateOp(user, from, m.uid, m.blobKey));
          }
        });
        ops.push(this.countersOp(user, to, modseq, { count: items.length, bytes, unseen }, { first, last: first + items.length - 1 }));
        const entries: ChangeEntry[] = [{ kind: 'append', folder: to, ...emailsOf(items), uids: newUids, copied: true }];
        if (move) {
          ops.push(this.countersOp(user, from, modseq, { count: -items.length, bytes: -bytes, unseen: -unseen }));
          entries.unshift({ kind: 'expunge', folder: from, ...emailsOf(items) });
          // A move takes no room, but the USAGE item must exist before a folder other than INBOX
          // holds anything: it can be made from INBOX's counters only until then.
          if (!base.usage) this.addUsage(ops, user, base, 0, 0, 0);
        } else {
          const perBlob = new Map<string, number>();
          for (const m of items) perBlob.set(m.blobKey, (perBlob.get(m.blobKey) ?? 0) + 1);
          // exists: a source expunged meanwhile may have taken the last reference (and the blob).
          for (const [k, n] of perBlob) ops.push({ update: mailboxKeys.blobRef(k), changes: { add: { refs: n } }, condition: { exists: true } });
          this.addUsage(ops, user, base, quota, bytes, items.length);
        }
        ops.push(this.changes.op(user, modseq, entries));
        // The spam lesson is written with the move itself (core/mail/spam-learn.ts: never lost, never
        // taught for a move that failed); its job is sent after the commit, not awaited.
        const learn = lesson ? lessonOp(user, modseq, lesson, [...new Set(items.map((m) => m.blobKey))], this.now()) : undefined;
        if (learn) ops.push(learn.op);
        try {
          await this.commit(user, ops);
          items.forEach((m, j) => pairs.push([m.uid, newUids[j]!]));
          if (learn && this.learnQueue) void sendLesson(this.tables, this.learnQueue, learn.sk, this.now()).catch(() => undefined);
          break;
        } catch (e) {
          if (!retryable(e) || attempt >= MAX_ATTEMPTS) throw e;
          await backoff(attempt);
        }
      }
    }
  }

  /** What a copy or move from `from` to `to` teaches rspamd: into Junk spam; out of Junk (but
   * not into Trash, which says "unwanted", not "good") ham. */
  private async lessonKind(user: string, from: string, to: string): Promise<LessonKind | undefined> {
    const folderOf = async (use: '\\Junk' | '\\Trash') => {
      const item = await this.tables.get(folderKeys.specialUse(user, use));
      return item?.folderId === undefined ? undefined : String(item.folderId);
    };
    const junkId = await folderOf('\\Junk');
    if (!junkId || from === to) return undefined;
    if (to === junkId) return 'spam';
    // Trash is read only for a move out of Junk, the one case that needs it.
    if (from === junkId && to !== (await folderOf('\\Trash'))) return 'ham';
    return undefined;
  }

  /**
   * Removes messages from a folder; a raw blob is deleted with its last reference (after the
   * commit: a crash then leaves an orphan for the sweep, never an entry without its blob).
   * Idempotent: absent uids are skipped.
   */
  async expunge(user: string, folderId: string, uids: number[]): Promise<void> {
    const unique = [...new Set(uids)];
    await this.folderMeta(user, folderId);
    for (let i = 0; i < unique.length; i += BATCH) await this.expungeBatch(user, folderId, unique.slice(i, i + BATCH), true);
  }

  /** One transaction of removals; `counters` false for a folder being deleted (META gone). */
  private async expungeBatch(user: string, folderId: string, uids: number[], counters: boolean): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const [found, base] = await Promise.all([Promise.all(uids.map((uid) => this.tables.get(folderKeys.message(user, folderId, uid)))), this.usageBase(user)]);
      const entries = found.filter((x): x is Item => x !== undefined).map(toMessage);
      if (!entries.length) return;
      const perBlob = new Map<string, number>();
      for (const e of entries) perBlob.set(e.blobKey, (perBlob.get(e.blobKey) ?? 0) + 1);
      const blobKeys = [...perBlob.keys()];
      const [refItems, modseq] = await Promise.all([Promise.all(blobKeys.map((k) => this.tables.get(mailboxKeys.blobRef(k)))), this.changes.allocate(user)]);
      const bytes = entries.reduce((n, e) => n + e.size, 0);
      const unseen = entries.filter((e) => !isSeen(e.flags)).length;
      const lastRefs: string[] = [];
      const ops: TransactOp[] = entries.flatMap((e): TransactOp[] => [
        { delete: folderKeys.message(user, folderId, e.uid), condition: { exists: true } },
        this.index.unlocateOp(user, folderId, e.uid, e.blobKey),
      ]);
      if (counters) ops.push(this.countersOp(user, folderId, modseq, { count: -entries.length, bytes: -bytes, unseen: -unseen }));
      this.addUsage(ops, user, base, 0, -bytes, -entries.length);
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
      ops.push(this.changes.op(user, modseq, [{ kind: 'expunge', folder: folderId, ...emailsOf(entries) }]));
      try {
        await this.commit(user, ops);
      } catch (e) {
        // ConditionFailed: a racing write changed a count (or the folder's MODSEQ moved on);
        // Unavailable: DynamoDB cancelled overlapping transactions. Both are re-read and retried.
        if (!retryable(e) || attempt >= MAX_ATTEMPTS) throw e;
        await backoff(attempt);
        continue;
      }
      await Promise.all(lastRefs.map((k) => this.blobs.delete(k)));
      return;
    }
  }

  /**
   * Stores a summary made after the fact (a message delivered before its summary held the IMAP
   * structure): not a change a client sees, so no MODSEQ; skipped if the message changed or went.
   */
  async rememberSummary(user: string, folderId: string, uid: number, modseq: number, summary: Record<string, AttrValue>): Promise<void> {
    await this.tables
      .update(folderKeys.message(user, folderId, uid), { set: { summary } }, { condition: { exists: true, equals: { modseq: modseq || null } } })
      .catch((e: unknown) => {
        if (!isStorageError(e, 'ConditionFailed')) throw e;
      });
  }

  /** Replaces one message's flags; ConditionFailed when it does not exist (MailboxStore.setFlags). */
  async setFlags(user: string, folderId: string, uid: number, flags: string[]): Promise<void> {
    if (!(await this.get(user, folderId, uid))) throw new ConditionFailed(`message ${uid}`);
    await this.storeFlags(user, folderId, [uid], { mode: 'replace', flags });
  }

  /** Deletes every folder but INBOX with its messages, the registry, usage and change log (user
   * removal; INBOX is MailboxStore.purge's). The MODSEQ counter stays so that MODSEQs never repeat. */
  async purgeFolders(user: string): Promise<void> {
    const reg = await this.registry(user);
    for (const item of reg.items) {
      const id = String(item.id);
      await this.tables.update(folderKeys.folder(user, id), { set: { deleting: true } });
      await this.finishDelete(user, id);
    }
    for (const prefix of ['NAME#', 'USE#', 'VALIDITY#']) {
      let cursor: string | undefined;
      do {
        const page = await this.tables.query(`MBX#${user}`, { range: { beginsWith: prefix }, limit: this.pageSize, cursor });
        await Promise.all(page.items.map((i) => this.tables.delete({ pk: i.pk, sk: i.sk })));
        cursor = page.cursor;
      } while (cursor);
    }
    // The Email index (its INBOX locations went with MailboxStore.purge's expunge).
    for (const pk of [indexKeys.locations(user), indexKeys.threads(user)]) {
      for (;;) {
        const page = await this.tables.query(pk, { limit: this.pageSize });
        if (!page.items.length) break;
        await Promise.all(page.items.map((i) => this.tables.delete({ pk: i.pk, sk: i.sk })));
      }
    }
    await this.tables.delete(folderKeys.usage(user));
    await this.changes.purge(user);
  }
}

/** The attributes a copy of a message keeps (everything but its uid and modseq). */
function messageAttrs(m: FolderMessage): Record<string, AttrValue> {
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
function emailsOf(ms: FolderMessage[]): Pick<ChangeEntry, 'uids' | 'emailIds' | 'threadIds'> {
  const threadIds = [...new Set(ms.flatMap((m) => (m.threadId ? [m.threadId] : [])))];
  return { uids: ms.map((m) => m.uid), emailIds: ms.map((m) => emailIdOf(m.blobKey)), ...(threadIds.length ? { threadIds } : {}) };
}
