/**
 * The outbound queue's state in Tables (DESIGN.md data model): one `OUT#<message id>` partition
 * per message with a `META` item and one `RCPT#<address>` item per recipient, plus a listing
 * partition `OUTQ` (sort key `<receivedAt>#<id>`) so that `queue list` needs no scan. The queue
 * message only wakes the worker; everything it decides is read from and written to these items.
 */
import { isStorageError, type Condition, type Item, type Tables, putIfAbsent } from '../storage/ports.js';
import type { DsnRecipient, OutboundJob } from './jobs.js';

/** Where a recipient stands. `delivered`, `bounced` and `deleted` are final. */
export type RcptState = 'queued' | 'deferred' | 'delivered' | 'bounced' | 'deleted';

/** The state of one recipient of an outbound message. */
export interface RcptRecord {
  address: string;
  domain: string;
  notify?: DsnRecipient['notify'];
  orcpt?: string;
  state: RcptState;
  attempts: number;
  /** The last SMTP reply or local error text, e.g. `451 4.3.0 try later`. */
  lastReply?: string;
  /** The host that gave the last reply. */
  remoteHost?: string;
  /** Enhanced status code (RFC 3463) of the last reply or of the failure we assigned. */
  status?: string;
  lastAttemptAt?: string;
  nextAttemptAt?: string;
  finalAt?: string;
  /** Delivered with NOTIFY=SUCCESS to a host without DSN support: reported as relayed. */
  relayed?: boolean;
}

/** The state of one outbound message. */
export interface MessageRecord {
  v: 1;
  id: string;
  blobKey: string;
  size: number;
  from: string;
  rcptCount: number;
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  receivedAt: string;
  authUser?: string;
  smtputf8?: boolean;
  body8bit?: boolean;
  /** Generation of the live queue message; older queue messages are stale and dropped. */
  seq: number;
  /** Epoch milliseconds until which one worker holds the message. */
  lockUntil: number;
  lockHolder?: string;
  held: boolean;
  status: 'active' | 'done' | 'deleted';
  /** Earliest next attempt of any pending recipient (ISO). */
  nextAttemptAt?: string;
  /** A failure DSN has been generated for this message (at most one, ever). */
  dsnSent?: boolean;
  delayNoticeSent?: boolean;
}

/** The listing partition of messages still in the queue. */
export const QUEUE_LIST_PK = 'OUTQ';
/** Finished messages' state items expire after this long. */
export const FINISHED_TTL_SECONDS = 30 * 86400;

const pkOf = (id: string) => `OUT#${id}`;
const rcptSk = (address: string) => `RCPT#${address.toLowerCase()}`;
const listSk = (receivedAt: string, id: string) => `${receivedAt}#${id}`;

/** The domain part of an address, lower-cased (the part after the last '@'). */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return (at < 0 ? '' : address.slice(at + 1)).toLowerCase();
}

function strip<T extends object>(o: T): Record<string, NonNullable<Item[string]>> {
  const out: Record<string, NonNullable<Item[string]>> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v as NonNullable<Item[string]>;
  return out;
}

function toMessage(item: Item): MessageRecord {
  const { pk: _pk, sk: _sk, ttl: _ttl, ...rest } = item;
  return rest as unknown as MessageRecord;
}
function toRcpt(item: Item): RcptRecord {
  const { pk: _pk, sk: _sk, ttl: _ttl, ...rest } = item;
  return rest as unknown as RcptRecord;
}

/** True for the states that still need work. */
export function isPending(r: RcptRecord): boolean {
  return r.state === 'queued' || r.state === 'deferred';
}

/** Reads and writes outbound message state through the Tables port. */
export class OutboundStore {
  constructor(private readonly tables: Tables) {}

  /** The message's state, or undefined when it was never queued (or has expired). */
  async getMessage(id: string): Promise<MessageRecord | undefined> {
    const item = await this.tables.get({ pk: pkOf(id), sk: 'META' });
    return item ? toMessage(item) : undefined;
  }

  /** Every recipient of a message, in address order. */
  async getRecipients(id: string): Promise<RcptRecord[]> {
    const out: RcptRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(pkOf(id), { range: { beginsWith: 'RCPT#' }, limit: 100, cursor });
      out.push(...page.items.map(toRcpt));
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  /**
   * Creates the message's state from its job unless it exists. Recipient items are put if absent
   * first and the META + listing items last, in one transaction: a crash in between leaves no
   * META, so the redelivered job completes the creation; racing duplicates create once.
   */
  async init(job: OutboundJob, now: Date): Promise<MessageRecord> {
    const existing = await this.getMessage(job.id);
    if (existing) return existing;
    for (const r of job.rcpts) {
      const rec: RcptRecord = {
        address: r.address,
        domain: domainOf(r.address),
        notify: r.notify,
        orcpt: r.orcpt,
        state: 'queued',
        attempts: 0,
        nextAttemptAt: now.toISOString(),
      };
      await putIfAbsent(this.tables, { pk: pkOf(job.id), sk: rcptSk(r.address), ...strip(rec) });
    }
    const m: MessageRecord = {
      v: 1,
      id: job.id,
      blobKey: job.blobKey,
      size: job.size,
      from: job.from,
      rcptCount: job.rcpts.length,
      ret: job.dsn?.ret,
      envid: job.dsn?.envid,
      receivedAt: job.receivedAt,
      authUser: job.authUser,
      smtputf8: job.smtputf8,
      body8bit: job.body8bit,
      seq: 0,
      lockUntil: 0,
      held: false,
      status: 'active',
      nextAttemptAt: now.toISOString(),
    };
    try {
      await this.tables.transact([
        { put: { pk: pkOf(job.id), sk: 'META', ...strip(m) }, condition: { exists: false } },
        { put: { pk: QUEUE_LIST_PK, sk: listSk(job.receivedAt, job.id), id: job.id, from: job.from, rcptCount: job.rcpts.length, receivedAt: job.receivedAt } },
      ]);
      return m;
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e;
      const again = await this.getMessage(job.id);
      if (!again) throw e;
      return again;
    }
  }

  /** Takes the message's worker lock until `until`; false when another holder has it. */
  async lock(id: string, holder: string, now: Date, seconds: number): Promise<MessageRecord | undefined> {
    try {
      const item = await this.tables.update(
        { pk: pkOf(id), sk: 'META' },
        { set: { lockUntil: now.getTime() + seconds * 1000, lockHolder: holder } },
        { condition: { exists: true, lessThan: { lockUntil: now.getTime() + 1 } } },
      );
      return toMessage(item);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return undefined;
      throw e;
    }
  }

  /** Extends the lock while it is still ours. */
  async renewLock(id: string, holder: string, now: Date, seconds: number): Promise<boolean> {
    try {
      await this.tables.update(
        { pk: pkOf(id), sk: 'META' },
        { set: { lockUntil: now.getTime() + seconds * 1000 } },
        { condition: { equals: { lockHolder: holder } } },
      );
      return true;
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return false;
      throw e;
    }
  }

  /** Gives the lock back (only when still ours). */
  async unlock(id: string, holder: string): Promise<void> {
    try {
      await this.tables.update(
        { pk: pkOf(id), sk: 'META' },
        { set: { lockUntil: 0 }, remove: ['lockHolder'] },
        { condition: { equals: { lockHolder: holder } } },
      );
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e;
    }
  }

  /** Changes message attributes; `condition` as in the Tables port. */
  async updateMessage(id: string, set: Partial<MessageRecord>, options: { condition?: Condition; ttl?: number | null } = {}): Promise<MessageRecord> {
    const item = await this.tables.update(
      { pk: pkOf(id), sk: 'META' },
      { set: strip(set), ttl: options.ttl },
      { condition: { exists: true, ...options.condition } },
    );
    return toMessage(item);
  }

  /** Sets `seq` to at least `seq` (never lowers it). */
  async advanceSeq(id: string, seq: number, nextAttemptAt: string): Promise<void> {
    try {
      await this.tables.update({ pk: pkOf(id), sk: 'META' }, { set: { seq, nextAttemptAt } }, { condition: { exists: true, lessThan: { seq } } });
    } catch (e) {
      if (!isStorageError(e, 'ConditionFailed')) throw e;
    }
  }

  /** Writes the new state of some recipients (chunked into transactions of at most 25). */
  async putRecipients(id: string, recs: RcptRecord[], ttl?: number): Promise<void> {
    for (let i = 0; i < recs.length; i += 25) {
      const chunk = recs.slice(i, i + 25);
      await this.tables.transact(chunk.map((r) => ({ put: { pk: pkOf(id), sk: rcptSk(r.address), ...strip(r), ...(ttl ? { ttl } : {}) } })));
    }
  }

  /** Marks the message finished: drops it from the listing and lets its items expire. */
  async finish(id: string, status: 'done' | 'deleted', receivedAt: string, now: Date): Promise<void> {
    const ttl = Math.floor(now.getTime() / 1000) + FINISHED_TTL_SECONDS;
    await this.tables.update({ pk: pkOf(id), sk: 'META' }, { set: { status, lockUntil: 0 }, remove: ['lockHolder'], ttl });
    await this.tables.delete({ pk: QUEUE_LIST_PK, sk: listSk(receivedAt, id) });
    const recs = await this.getRecipients(id);
    await this.putRecipients(id, recs, ttl);
  }

  /** Claims the one failure DSN of a message; false when it was already claimed. */
  async claimDsn(id: string, kind: 'dsnSent' | 'delayNoticeSent'): Promise<boolean> {
    try {
      await this.tables.update({ pk: pkOf(id), sk: 'META' }, { set: { [kind]: true } }, { condition: { exists: true, equals: { [kind]: null } } });
      return true;
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) return false;
      throw e;
    }
  }

  /** Messages still queued, oldest first, one page at a time. */
  async list(options: { limit?: number; cursor?: string } = {}): Promise<{ ids: string[]; cursor?: string }> {
    const page = await this.tables.query(QUEUE_LIST_PK, { limit: options.limit ?? 100, cursor: options.cursor });
    return { ids: page.items.map((i) => String(i.id)), cursor: page.cursor };
  }
}
