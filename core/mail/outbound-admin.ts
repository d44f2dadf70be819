/**
 * Operator actions on the outbound queue (the `queue` CLI): list, show, retry now, hold, release,
 * delete. They work on the state in Tables (outbound-store.ts) and, where a message must be woken,
 * send a new queue message of the next generation; so they behave the same on both storage
 * families and never need a queue receipt.
 */
import { MailboxStore } from '../mailbox/store.js';
import type { QueueStats, Storage } from '../storage/ports.js';
import type { OutboundQueueBody } from './outbound.js';
import { blobHolder } from './outbound.js';
import { isPending, OutboundStore, type MessageRecord, type RcptRecord } from './outbound-store.js';

/** One line of `queue list`. */
export interface QueueSummary {
  id: string;
  from: string;
  receivedAt: string;
  size: number;
  rcpts: number;
  pending: number;
  delivered: number;
  bounced: number;
  held: boolean;
  nextAttemptAt?: string;
  lastReply?: string;
}

/** Live outbound messages by state (what `queue list` lists), for the queue gauges. */
export interface LiveQueueStats extends QueueStats {
  /** Held by the operator. */
  held: number;
  /** Age of the oldest message still queued, from when it was received; 0 when none is. */
  oldestAgeSeconds: number;
}

/** An operator action was refused; the message says why. */
export class QueueAdminError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueAdminError';
  }
}

/** Queue administration over one Storage. */
export class OutboundQueueAdmin {
  private readonly store: OutboundStore;

  constructor(
    private readonly storage: Storage,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.store = new OutboundStore(storage.tables);
  }

  /** Messages still in the queue, oldest first (pages through the listing partition). */
  async list(options: { limit?: number } = {}): Promise<QueueSummary[]> {
    const out: QueueSummary[] = [];
    let cursor: string | undefined;
    const limit = options.limit ?? 1000;
    do {
      const page = await this.store.list({ limit: Math.min(100, limit - out.length), cursor });
      for (const id of page.ids) {
        const m = await this.store.getMessage(id);
        if (!m) continue;
        out.push(summarize(m, await this.store.getRecipients(id)));
      }
      cursor = page.cursor;
    } while (cursor && out.length < limit);
    return out;
  }

  /**
   * Counts the messages still queued by state. The transport queue cannot give these: retry,
   * release and each deferral send a new generation of the queue message, and the older ones
   * stay there (delayed) until they come up and are dropped as stale. One read per queued
   * message, at most `max` of them (the counts are then a lower bound).
   */
  async stats(options: { max?: number } = {}): Promise<LiveQueueStats> {
    const now = this.now().getTime();
    const max = options.max ?? 10_000;
    const out: LiveQueueStats = { visible: 0, inFlight: 0, delayed: 0, held: 0, oldestAgeSeconds: 0 };
    let oldest = Infinity;
    let seen = 0;
    let cursor: string | undefined;
    do {
      const page = await this.store.list({ limit: 100, cursor });
      for (const id of page.ids) {
        const m = await this.store.getMessage(id);
        if (!m || m.status !== 'active') continue;
        seen++;
        oldest = Math.min(oldest, Date.parse(m.receivedAt));
        if (m.held) out.held++;
        else if (m.lockUntil > now) out.inFlight++;
        else if (m.nextAttemptAt && Date.parse(m.nextAttemptAt) > now) out.delayed++;
        else out.visible++;
      }
      cursor = page.cursor;
    } while (cursor && seen < max);
    if (Number.isFinite(oldest)) out.oldestAgeSeconds = Math.max(0, Math.floor((now - oldest) / 1000));
    return out;
  }

  /** A message with every recipient's state. */
  async show(id: string): Promise<{ message: MessageRecord; recipients: RcptRecord[] }> {
    const message = await this.store.getMessage(id);
    if (!message) throw new QueueAdminError(`no queued message ${id}`);
    return { message, recipients: await this.store.getRecipients(id) };
  }

  /** Makes every pending recipient due now and wakes the worker; also releases a hold. */
  async retry(id: string): Promise<MessageRecord> {
    const m = await this.active(id);
    const now = this.now().toISOString();
    const rcpts = (await this.store.getRecipients(id)).filter(isPending);
    await this.store.putRecipients(
      id,
      rcpts.map((r) => ({ ...r, nextAttemptAt: now })),
    );
    await this.store.updateMessage(id, { held: false, nextAttemptAt: now });
    await this.wake(m, rcpts);
    return (await this.store.getMessage(id))!;
  }

  /** Stops delivery attempts until release; the current queue message is dropped when it comes. */
  async hold(id: string): Promise<MessageRecord> {
    await this.active(id);
    return this.store.updateMessage(id, { held: true });
  }

  /** Ends a hold: the message is tried again now. */
  async release(id: string): Promise<MessageRecord> {
    const m = await this.active(id);
    if (!m.held) throw new QueueAdminError(`message ${id} is not held`);
    return this.retry(id);
  }

  /** Removes a message from the queue without a DSN; recipients already delivered stay so. */
  async delete(id: string): Promise<{ deleted: string[] }> {
    const m = await this.active(id);
    const rcpts = await this.store.getRecipients(id);
    const pending = rcpts.filter(isPending);
    const at = this.now().toISOString();
    await this.store.putRecipients(
      id,
      pending.map((r) => ({ ...r, state: 'deleted' as const, finalAt: at, nextAttemptAt: undefined, lastReply: r.lastReply ?? 'deleted by the operator' })),
    );
    await this.store.finish(id, 'deleted', m.receivedAt, this.now());
    await new MailboxStore(this.storage.tables, this.storage.mail, { now: this.now }).releaseBlob(m.blobKey, blobHolder(id));
    return { deleted: pending.map((r) => r.address) };
  }

  private async active(id: string): Promise<MessageRecord> {
    const m = await this.store.getMessage(id);
    if (!m || m.status !== 'active') throw new QueueAdminError(`no queued message ${id}`);
    // Changing state under a worker that is delivering would race with what it records.
    if (m.lockUntil > this.now().getTime()) throw new QueueAdminError(`message ${id} is being delivered right now; try again shortly`);
    return m;
  }

  /** Sends a queue message of the next generation (the previous one becomes stale). */
  private async wake(m: MessageRecord, rcpts: RcptRecord[]): Promise<void> {
    const seq = m.seq + 1;
    const body: OutboundQueueBody = {
      v: 1,
      id: m.id,
      blobKey: m.blobKey,
      size: m.size,
      from: m.from,
      rcpts: rcpts.map((r) => ({ address: r.address, ...(r.notify ? { notify: r.notify } : {}), ...(r.orcpt ? { orcpt: r.orcpt } : {}) })),
      ...(m.ret || m.envid ? { dsn: { ...(m.ret ? { ret: m.ret } : {}), ...(m.envid ? { envid: m.envid } : {}) } } : {}),
      receivedAt: m.receivedAt,
      ...(m.authUser ? { authUser: m.authUser } : {}),
      ...(m.smtputf8 ? { smtputf8: true } : {}),
      ...(m.body8bit ? { body8bit: true } : {}),
      seq,
    };
    await this.storage.queues.send('outbound', JSON.stringify(body));
    await this.store.advanceSeq(m.id, seq, this.now().toISOString());
  }
}

function summarize(m: MessageRecord, rcpts: RcptRecord[]): QueueSummary {
  const pending = rcpts.filter(isPending);
  const next = pending
    .map((r) => r.nextAttemptAt)
    .filter((x): x is string => !!x)
    .sort()[0];
  const last = pending.find((r) => r.lastReply)?.lastReply;
  return {
    id: m.id,
    from: m.from,
    receivedAt: m.receivedAt,
    size: m.size,
    rcpts: rcpts.length,
    pending: pending.length,
    delivered: rcpts.filter((r) => r.state === 'delivered').length,
    bounced: rcpts.filter((r) => r.state === 'bounced').length,
    held: m.held,
    nextAttemptAt: next,
    lastReply: last,
  };
}
