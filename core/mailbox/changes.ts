/**
 * The per-user change log that IMAP (CONDSTORE/QRESYNC, IDLE, NOOP) and JMAP (`/changes`, push)
 * read: one MODSEQ counter per user (`CHG#<user>` HEAD) and one item per MODSEQ (`MOD#<n>`) that
 * the changing transaction itself writes, with a TTL (the horizon).
 *
 * Why allocate-then-commit and not a per-user lock: a MODSEQ is taken from an atomic counter
 * before the transaction, like delivery's UIDs, so concurrent deliveries to one user never
 * conflict on the counter (a lock item in every transaction would serialise a user's deliveries,
 * one commit each). The price is that MODSEQs may commit out of order or never (a transaction that
 * lost its race takes a new one; a process may die holding one). Readers therefore read the log
 * only up to its first gap, and close a gap that a later change has outlived by `gapGraceMs` with
 * a tombstone (put-if-absent): if the writer still holds that MODSEQ its transaction then fails on
 * its own put-if-absent of the change item and retries with a new one, so a change is never
 * committed behind a reader's back. Per folder, HIGHESTMODSEQ only grows (writes are conditional
 * on it), so within a folder MODSEQs commit in order.
 */
import { isStorageError, putIfAbsent, type AttrValue, type Item, type Tables, type TransactOp } from '../storage/ports.js';
import { folderKeys, MODSEQ_WIDTH } from './keys.js';

/** What one change did. Kinds: messages appended, flags changed or expunged in `folder` (a move
 * is an expunge in one folder and an append in another under one MODSEQ); a folder created,
 * renamed, deleted, or its subscription or special use changed. */
export interface ChangeEntry {
  kind: 'append' | 'flags' | 'expunge' | 'folder-create' | 'folder-rename' | 'folder-delete' | 'folder-update';
  folder: string;
  uids?: number[];
  /** The Emails of `uids`, index for index (JMAP Email/changes names an Email whose items are
   * gone by these). Absent in entries written before JMAP. */
  emailIds?: string[];
  /** The threads the entry's messages belong to, each once (JMAP Thread/changes); absent before
   * JMAP, and for messages filed before threads until the backfill gives them one. */
  threadIds?: string[];
  /** On an append: its Emails were already in the account (a copy or move between folders), so
   * no new mail arrived; JMAP's EmailDelivery push state (RFC 8621 §1.5) skips these. Absent on
   * entries written before it, which then read as new mail. */
  copied?: boolean;
}

/** One MODSEQ of the log. `entries` is empty for a tombstone (a MODSEQ that was never used). */
export interface Change {
  modseq: number;
  /** Epoch milliseconds of the commit. */
  at: number;
  entries: ChangeEntry[];
}

/** A page of "changes since N". */
export type ChangesSince =
  | {
      tooOld: false;
      changes: Change[];
      /** The MODSEQ the caller has seen everything up to after this page: pass it back next time. */
      modseq: number;
      /** More changes may follow now (the page was full). */
      more: boolean;
    }
  /** N is past the horizon (its change item expired) or unknown: resync from scratch. */
  | { tooOld: true };

export interface ChangeLogOptions {
  /** How long change items are kept (IMAP QRESYNC and JMAP read back this far). @default 30 days */
  horizonSeconds?: number;
  /** A gap a later change has outlived by this long is closed by readers. @default 5000 */
  gapGraceMs?: number;
  now?: () => Date;
}

const padded = (n: number) => String(n).padStart(MODSEQ_WIDTH, '0');

/** Allocates MODSEQs, builds the change item for a transaction, and reads changes back. */
export class ChangeLog {
  readonly horizonSeconds: number;
  private readonly gapGraceMs: number;
  private readonly now: () => Date;

  constructor(
    private readonly tables: Tables,
    options: ChangeLogOptions = {},
  ) {
    this.horizonSeconds = options.horizonSeconds ?? 30 * 86400;
    this.gapGraceMs = options.gapGraceMs ?? 5000;
    this.now = options.now ?? (() => new Date());
  }

  /** A new MODSEQ for `user` (never handed out twice; may end unused). */
  async allocate(user: string): Promise<number> {
    // Not durable on its own: the change's transaction that uses this MODSEQ is, and its fsync
    // covers this earlier commit (the local store's WAL replays as a prefix; DynamoDB is always
    // durable). A MODSEQ lost in a crash was never used, so handing it out again is harmless.
    return Number((await this.tables.update(folderKeys.modseqHead(user), { add: { modseq: 1 } }, { durable: false })).modseq);
  }

  /** The highest MODSEQ allocated so far (0 when the user never changed anything). */
  async allocated(user: string): Promise<number> {
    return Number((await this.tables.get(folderKeys.modseqHead(user)))?.modseq ?? 0);
  }

  /** The transaction op recording `entries` under `modseq`; it fails if a reader closed that gap. */
  op(user: string, modseq: number, entries: ChangeEntry[]): TransactOp {
    return { put: this.item(user, modseq, entries), condition: { exists: false } };
  }

  private item(user: string, modseq: number, entries: ChangeEntry[]): Item {
    const at = this.now().getTime();
    return {
      ...folderKeys.change(user, modseq),
      at,
      entries: entries.map((e) => ({
        kind: e.kind,
        folder: e.folder,
        ...(e.uids ? { uids: e.uids } : {}),
        ...(e.emailIds ? { emailIds: e.emailIds } : {}),
        ...(e.threadIds ? { threadIds: e.threadIds } : {}),
        ...(e.copied ? { copied: true } : {}),
      })) as AttrValue,
      ttl: Math.ceil(at / 1000) + this.horizonSeconds,
    };
  }

  /**
   * The changes after `since`, oldest first, at most `limit` MODSEQs, up to the first gap that may
   * still fill. `since` 0 reads from the beginning (too old once the first change expired).
   */
  async since(user: string, since: number, limit = 500): Promise<ChangesSince> {
    return this.scan(user, since, limit, true);
  }

  /**
   * The MODSEQ up to which the log is settled now: every change at or below it is committed (or
   * closed as a gap), so a reader that takes a snapshot after asking, then reads `since` this
   * position, misses nothing. Kept in a watermark item that readers move forward, so this reads
   * only the log's recent tail.
   */
  async position(user: string): Promise<number> {
    const key = folderKeys.watermark(user);
    const mark = await this.tables.get(key);
    const start = Number(mark?.modseq ?? 0);
    let at = start;
    for (;;) {
      const r = await this.scan(user, at, 1000, false);
      if (r.tooOld) return at; // cannot happen without the start check; keeps the types honest
      const before = at;
      at = r.modseq;
      if (!r.more || at === before) break;
    }
    if (at > start) {
      // Moves forward only; a racing reader that got further wins. The first reader makes the item:
      // `lessThan` fails on an absent attribute (ports.ts), so an update alone never would, and
      // every call would scan the whole log from 0.
      const write = mark
        ? this.tables.update(key, { set: { modseq: at } }, { condition: { lessThan: { modseq: at } }, durable: false })
        : this.tables.put({ ...key, modseq: at }, { condition: { exists: false }, durable: false });
      await write.catch((e: unknown) => {
        if (!isStorageError(e, 'ConditionFailed')) throw e;
      });
    }
    return at;
  }

  private async scan(user: string, since: number, limit: number, checkStart: boolean): Promise<ChangesSince> {
    if (checkStart && since > 0 && !(await this.tables.get(folderKeys.change(user, since)))) {
      // Expired, or a MODSEQ this store never gave out for a committed change.
      return { tooOld: true };
    }
    // From the beginning only while the first change is still kept (a tombstone put where an
    // expired change was would hide it: expired items read as absent).
    if (checkStart && since === 0 && !(await this.tables.get(folderKeys.change(user, 1))) && (await this.allocated(user)) > 0) return { tooOld: true };
    const changes: Change[] = [];
    let expected = since + 1;
    let cursor: string | undefined;
    for (;;) {
      const page = await this.tables.query(`CHG#${user}`, {
        range: { gt: `MOD#${padded(since)}`, lt: 'MOD#~' },
        limit: Math.min(limit + 1, 200),
        cursor,
      });
      for (const item of page.items) {
        const c = toChange(item);
        while (c.modseq > expected) {
          // A gap: still being written, or given up. Wait for it while it is young.
          if (this.now().getTime() - c.at < this.gapGraceMs) return done(changes, expected - 1, true);
          const closed = await this.closeGap(user, expected);
          if (closed) changes.push(closed);
          expected++;
          if (changes.length >= limit) return done(changes, expected - 1, true);
        }
        if (c.modseq < expected) continue;
        changes.push(c);
        expected++;
        if (changes.length >= limit) return done(changes, expected - 1, true);
      }
      cursor = page.cursor;
      if (!cursor) return done(changes, expected - 1, false);
    }
  }

  /** The writer holding `modseq` gave it up (its transaction failed): a tombstone, unless the
   * change committed after all (then the put-if-absent leaves it). */
  async abandon(user: string, modseq: number): Promise<void> {
    await putIfAbsent(this.tables, this.item(user, modseq, []));
  }

  /** Puts a tombstone at `modseq` unless a change got there first (then returns that change). */
  private async closeGap(user: string, modseq: number): Promise<Change | undefined> {
    if (await putIfAbsent(this.tables, this.item(user, modseq, []))) return undefined;
    const item = await this.tables.get(folderKeys.change(user, modseq));
    return item ? toChange(item) : undefined;
  }

  /** Deletes the user's log and counter (user removal). */
  async purge(user: string): Promise<void> {
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`CHG#${user}`, { limit: 200, cursor });
      await Promise.all(page.items.filter((i) => i.sk !== 'HEAD').map((i) => this.tables.delete({ pk: i.pk, sk: i.sk }).catch(ignoreNotFound)));
      cursor = page.cursor;
    } while (cursor);
  }
}

function ignoreNotFound(e: unknown): void {
  if (!isStorageError(e, 'NotFound')) throw e;
}

function done(changes: Change[], modseq: number, more: boolean): ChangesSince {
  return { tooOld: false, changes: changes.filter((c) => c.entries.length > 0), modseq, more };
}

function toChange(item: Item): Change {
  const entries = Array.isArray(item.entries) ? (item.entries as unknown as ChangeEntry[]) : [];
  return { modseq: Number(item.sk.slice(4)), at: Number(item.at ?? 0), entries };
}
