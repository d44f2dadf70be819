/**
 * Maildrops for the POP3 session, made from the mailbox store: a lease in Tables for exclusive
 * access (RFC 1939 §8), a snapshot of the mailbox at login, message bodies streamed from the mail
 * blobs, and deletions applied at QUIT through a recorded intent so that they are all or nothing.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Readable } from 'node:stream';
import type { Logger } from '../../core/log.js';
import type { MailboxStore, MessageEntry } from '../../core/mailbox/store.js';
import { isStorageError, type Blobs, type Key, type SmallBlobReader, type Tables } from '../../core/storage/ports.js';
import type { Maildrop, MaildropMessage, OpenFailure } from './session.js';

/** One message of the snapshot, with what is needed to fetch and remove it. */
export interface SnapshotMessage extends MaildropMessage {
  uid: number;
  blobKey: string;
}

/** Messages up to this size are read into a buffer the session keeps; larger ones get their own. */
const SCRATCH_KEEP_BYTES = 64 * 1024;
/** Room for the blob file's header in that buffer. */
const SCRATCH_SLACK = 1024;

/** Options of the maildrop opener. */
export interface MaildropOptions {
  /** Lease lifetime; renewed every third of it while the session lives. @default 60 */
  leaseSeconds?: number;
  /**
   * Messages up to this size are read whole and sent in one write when the blob store can read
   * them at once (local files); larger ones, and every message on S3, are streamed. Bounds the
   * memory one RETR holds. @default 262144
   */
  wholeReadBytes?: number;
  log: Logger;
  /** Identifies this process in lease items (for operators reading the table). @default host:pid */
  holderPrefix?: string;
}

/**
 * The pending deletion of one session, written in one transaction with a check that the session
 * still holds the lease: the commit point of RFC 1939 §6 UPDATE. Once it exists the deletion is
 * decided; it is carried out at once and, if the process dies half-way, finished at the next login
 * before the snapshot is taken. So a QUIT removes all marked messages or none.
 */
export const pendingDeleteKey = (user: string): Key => ({ pk: `POP3DEL#${user}`, sk: 'PENDING' });

/**
 * RFC 1939 §7 UIDL: "The unique-id of a message is an arbitrary server-determined string, consisting
 * of one to 70 characters in the range 0x21 to 0x7E, which uniquely identifies a message within a
 * maildrop and which persists across sessions." uidValidity + uid is unique within the maildrop
 * for ever (uidValidity changes if uids ever restart) and only digits and a dot.
 */
export function uidlOf(uidValidity: number, uid: number): string {
  return `${uidValidity}.${uid}`;
}

/**
 * The octets RETR will send for an entry. SMTP stores the wire form (CRLF line ends), so the stored
 * size is the answer; an importer that stored bare LF line ends can record the CRLF size in the
 * summary as `crlfSize` and it is used instead.
 */
export function retrSize(entry: MessageEntry): number {
  const s = entry.summary?.crlfSize;
  return typeof s === 'number' && s >= 0 ? s : entry.size;
}

/** Opens users' maildrops: lock, snapshot, stream, commit. */
export class StoreMaildrops {
  private readonly leaseSeconds: number;
  private readonly holderPrefix: string;
  private readonly log: Logger;
  private readonly wholeReadBytes: number;

  constructor(
    private readonly store: MailboxStore,
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    options: MaildropOptions,
  ) {
    this.leaseSeconds = options.leaseSeconds ?? 60;
    this.holderPrefix = options.holderPrefix ?? `${hostname()}:${process.pid}`;
    this.log = options.log;
    this.wholeReadBytes = options.wholeReadBytes ?? 256 * 1024;
  }

  /** Locks and snapshots `user`'s maildrop, or says why it cannot. */
  async open(user: string): Promise<StoreMaildrop | OpenFailure> {
    const holder = `${this.holderPrefix}:${randomBytes(6).toString('hex')}`;
    let got: boolean;
    try {
      got = await this.store.acquireLease(user, holder, this.leaseSeconds);
    } catch (e) {
      this.log.error({ user, err: (e as Error).message }, 'maildrop lease failed');
      return 'unavailable';
    }
    if (!got) return 'in-use';
    try {
      await this.finishPendingDelete(user);
      const [meta, entries] = await Promise.all([this.store.meta(user), this.store.list(user)]);
      const messages: SnapshotMessage[] = entries.map((e) => ({ uid: e.uid, blobKey: e.blobKey, size: retrSize(e), uidl: uidlOf(meta.uidValidity, e.uid) }));
      return new StoreMaildrop(this.store, this.tables, this.blobs, user, holder, this.leaseSeconds, messages, this.log, this.wholeReadBytes);
    } catch (e) {
      this.log.error({ user, err: (e as Error).message }, 'maildrop snapshot failed');
      await this.store.releaseLease(user, holder).catch(() => undefined);
      return 'unavailable';
    }
  }

  /** Carries out a deletion that a previous session decided but did not finish. */
  private async finishPendingDelete(user: string): Promise<void> {
    const pending = await this.tables.get(pendingDeleteKey(user));
    if (!pending) return;
    const uids = Array.isArray(pending.uids) ? pending.uids.map(Number) : [];
    this.log.warn({ user, count: uids.length }, 'finishing a deletion a previous POP3 session left unfinished');
    await this.store.remove(user, uids);
    await this.tables.delete(pendingDeleteKey(user));
  }
}

/** One locked maildrop; keeps its lease alive until released. */
export class StoreMaildrop implements Maildrop {
  private timer: NodeJS.Timeout | undefined;
  private released = false;
  /** The next message, opened ahead of its RETR. */
  private prefetched: { index: number; body: Promise<Readable> } | undefined;
  /** False once a renewal found the lease gone (expired and taken): commit is then refused. */
  private holding = true;
  private readonly smallReads: SmallBlobReader | undefined;
  /** Reused by `read` from one message to the next (kept only while small). */
  private scratch: Buffer | undefined;
  /** The message `readAhead` read, held in `aheadScratch` until its `read` (one message at most). */
  private ahead: { index: number; bytes: Buffer } | undefined;
  /** The second buffer: `read` and `readAhead` swap the two, so neither overwrites the other. */
  private aheadScratch: Buffer | undefined;

  constructor(
    private readonly store: MailboxStore,
    private readonly tables: Tables,
    private readonly blobs: Blobs,
    readonly user: string,
    readonly holder: string,
    private readonly leaseSeconds: number,
    readonly messages: readonly SnapshotMessage[],
    private readonly log: Logger,
    private readonly wholeReadBytes = 256 * 1024,
  ) {
    // A blob store that can read a small object at once (local files) makes RETR of a small message
    // one open/read/close instead of several async round trips; S3 has no such reader.
    this.smallReads = blobs.smallReader?.();
    this.timer = setInterval(() => void this.renew(), Math.max(1000, (leaseSeconds * 1000) / 3));
    this.timer.unref();
  }

  private async renew(): Promise<void> {
    if (this.released || !this.holding) return;
    try {
      if (!(await this.store.renewLease(this.user, this.holder, this.leaseSeconds))) {
        this.holding = false;
        this.log.warn({ user: this.user }, 'maildrop lease lost; deletions of this session will be refused');
      }
    } catch (e) {
      // A transient storage error: the next tick tries again before the lease runs out.
      this.log.warn({ user: this.user, err: (e as Error).message }, 'maildrop lease renewal failed');
    }
  }

  /** True when message `index` is read whole by `read` rather than streamed by `open`. */
  private readsWhole(index: number): boolean {
    const m = this.messages[index];
    // The snapshot size is the CRLF size, within a few octets per line of the stored size.
    return this.smallReads !== undefined && m !== undefined && m.size <= this.wholeReadBytes;
  }

  /**
   * The stored message, whole, when it is small and the blob store reads it at once; otherwise
   * undefined and the caller streams it with `open`. The bytes are valid until the next `read` or
   * `readAhead`.
   */
  read(index: number): Buffer | undefined {
    const m = this.messages[index];
    if (!m) throw new RangeError(`no message ${index + 1}`);
    if (!this.readsWhole(index)) return undefined;
    const a = this.ahead;
    this.ahead = undefined;
    if (a !== undefined && a.index === index) {
      // Read ahead while the previous response was on its way: no storage call now. The buffers
      // swap roles, so the next read ahead does not overwrite these bytes.
      const mine = this.scratch;
      this.scratch = this.aheadScratch;
      this.aheadScratch = mine;
      return a.bytes;
    }
    return this.readWhole(m, false);
  }

  /**
   * Reads message `index` now, when it is small and read whole, so that its RETR (the likely next
   * command of a client fetching in order) costs no storage call: the server calls this when the
   * client has nothing pending, i.e. while the previous response is on the wire and the client is
   * reading it. One message ahead at most, in a buffer of its own, so memory stays bounded. Returns
   * the bytes (the very Buffer that `read(index)` will return, valid as long as that one), or
   * undefined. An error is not reported here: the RETR reads again and answers it.
   */
  readAhead(index: number): Buffer | undefined {
    const m = this.messages[index];
    if (m === undefined || this.released || !this.readsWhole(index)) return undefined;
    if (this.ahead?.index === index) return this.ahead.bytes;
    this.ahead = undefined;
    try {
      const bytes = this.readWhole(m, true);
      if (bytes !== undefined) this.ahead = { index, bytes };
      return bytes;
    } catch {
      // Left to the RETR (see above).
      return undefined;
    }
  }

  /** One small message read whole into the session's first buffer, or its second (`ahead`). */
  private readWhole(m: SnapshotMessage, ahead: boolean): Buffer | undefined {
    // One buffer per role for the session's reads saves an allocation (and garbage) per message;
    // the snapshot size is the CRLF size, never less than the stored one.
    let into = ahead ? this.aheadScratch : this.scratch;
    if (m.size <= SCRATCH_KEEP_BYTES && (into === undefined || into.length < m.size + SCRATCH_SLACK)) {
      into = Buffer.allocUnsafe(Math.min(SCRATCH_KEEP_BYTES, m.size * 2) + SCRATCH_SLACK);
      if (ahead) this.aheadScratch = into;
      else this.scratch = into;
    }
    return this.smallReads!.readSmallSync(m.blobKey, { maxBytes: this.wholeReadBytes, sizeHint: m.size, into });
  }

  /**
   * Streams the stored message. Clients fetch in order (RETR 1, 2, 3 ...), so opening message n
   * also opens message n + 1 and starts reading its first chunk (one stream buffer, 64 KB at most:
   * memory stays bounded); the storage round trips of the next RETR then overlap this one's
   * transfer instead of adding to the client's wait.
   */
  async open(index: number): Promise<Readable> {
    const m = this.messages[index];
    if (!m) throw new RangeError(`no message ${index + 1}`);
    let body: Promise<Readable> | undefined;
    if (this.prefetched?.index === index) {
      body = this.prefetched.body;
      this.prefetched = undefined;
    } else {
      this.dropPrefetch();
    }
    if (index + 1 < this.messages.length && !this.released && !this.readsWhole(index + 1)) {
      const next = this.fetch(index + 1, true);
      // Handled here so that a failed prefetch is never an unhandled rejection.
      next.catch(() => undefined);
      this.prefetched = { index: index + 1, body: next };
    }
    if (body) {
      // A prefetch that failed (a transient storage error) is retried on demand.
      return body.catch(() => this.fetch(index, false));
    }
    return this.fetch(index, false);
  }

  private async fetch(index: number, readAhead: boolean): Promise<Readable> {
    const { body } = await this.blobs.get(this.messages[index]!.blobKey);
    if (readAhead) {
      // Until the RETR consumes it, a read error must not be an unhandled 'error' event; the
      // consumer's iterator still sees it through the stream's errored state.
      body.on('error', () => undefined);
      body.read(0);
    }
    return body;
  }

  private dropPrefetch(): void {
    const p = this.prefetched;
    this.prefetched = undefined;
    p?.body.then(
      (b) => b.destroy(),
      () => undefined,
    );
  }

  /** Records the deletion (guarded by the lease), then carries it out. */
  async commit(indexes: number[]): Promise<void> {
    if (!this.holding) throw new Error('maildrop lease lost');
    const uids = indexes.map((i) => this.messages[i]!.uid);
    try {
      await this.tables.transact([
        { check: { pk: `MBX#${this.user}`, sk: 'LEASE' }, condition: { equals: { holder: this.holder } } },
        { put: { ...pendingDeleteKey(this.user), uids, holder: this.holder, at: new Date().toISOString() }, condition: { exists: false } },
      ]);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) this.holding = false;
      throw e;
    }
    // Decided. Removal is idempotent, so a retry (here or at the next login) is harmless.
    await this.store.remove(this.user, uids);
    await this.tables.delete(pendingDeleteKey(this.user));
  }

  /** Stops renewing and gives the lease back. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.ahead = undefined;
    this.dropPrefetch();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.store.releaseLease(this.user, this.holder).catch((e: Error) => this.log.warn({ user: this.user, err: e.message }, 'lease release failed'));
  }
}
