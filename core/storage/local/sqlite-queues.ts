/**
 * Queues on SQLite, with SQS's semantics where they matter to callers: at-least-once delivery,
 * a visibility timeout per receive, receipt handles that are valid only for the latest receive,
 * a delay on send, long polling, and a dead-letter queue after `maxReceives` receives.
 *
 * A message is one row; `visible_at` (ms) says when it may be received next. Receiving bumps
 * `receive_count`, draws a new receipt token and pushes `visible_at` by the visibility timeout,
 * all in one write transaction, so two receivers (even in two processes) never get the same
 * receive of a message.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { BroadcastChannel } from 'node:worker_threads';
import type { Statement } from 'better-sqlite3';
import {
  InvalidRequest,
  MAX_DELAY_SECONDS,
  MAX_RECEIVE_BATCH,
  MAX_VISIBILITY_SECONDS,
  NotFound,
  type QueueName,
  type QueueStats,
  type Queues,
  type ReceivedMessage,
} from '../ports.js';
import type { SqliteStore } from './sqlite.js';

const QUEUES: readonly QueueName[] = ['inbound', 'outbound', 'inbound-dlq', 'outbound-dlq'];
const DLQ: Partial<Record<QueueName, QueueName>> = { inbound: 'inbound-dlq', outbound: 'outbound-dlq' };
/** SQS's default visibility timeout. */
const DEFAULT_VISIBILITY_SECONDS = 30;
/** SQS's longest long poll. */
const MAX_WAIT_SECONDS = 20;
/** SQS's classic message size limit. */
const MAX_BODY_BYTES = 256 * 1024;
/** Long polls re-check this often for messages sent by other processes. */
const POLL_MS = 1000;
/**
 * The receipt column of a message never received: as long as a receipt token (16 characters),
 * so that the first receive leaves the row's size unchanged and SQLite overwrites the changed
 * bytes in place (the page with the row and the body's last overflow page) instead of writing
 * the whole body (up to 256 KiB: SMTP puts small messages inside their jobs) into new pages: 3
 * WAL frames instead of 6 for a 10 KB body. Not base64url, and delete and changeVisibility also
 * require `receive_count > 0`, so no receipt a caller sends can match it.
 */
const UNRECEIVED = '~'.repeat(16);

interface MessageRow {
  seq: number;
  id: string;
  body: string;
  sent_at: number;
  receive_count: number;
}

function checkQueue(q: unknown): asserts q is QueueName {
  if (!QUEUES.includes(q as QueueName)) throw new InvalidRequest(`unknown queue ${JSON.stringify(q)}`);
}

function checkSeconds(name: string, v: unknown, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw new InvalidRequest(`${name} must be a whole number 0..${max}`);
  return v;
}

function parseReceipt(receipt: unknown): { id: string; token: string } | undefined {
  if (typeof receipt !== 'string') return undefined;
  const dot = receipt.lastIndexOf('.');
  if (dot <= 0) return undefined;
  return { id: receipt.slice(0, dot), token: receipt.slice(dot + 1) };
}

/** Options of SqliteQueues. */
export interface SqliteQueuesOptions {
  /** Receives after which a message of inbound/outbound goes to its DLQ. */
  maxReceives: number;
  /** Milliseconds since the epoch. @default Date.now */
  now?: () => number;
  /**
   * A name shared by the SqliteQueues of every thread of this process that opens the same file
   * (the listeners' and the queue workers' thread): a send on one thread then wakes a long poll
   * on the other at once, through a BroadcastChannel, instead of at its next poll (up to 1 s).
   * @default none (wake-ups within this thread only)
   */
  channel?: string;
}

/** The local Queues adapter. */
export class SqliteQueues implements Queues {
  private readonly now: () => number;
  private readonly maxReceives: number;
  /** Emits a queue name when a message may have become receivable in it (in this process). */
  private readonly wake = new EventEmitter();
  /** Carries wake-ups to the same queues on other threads (options.channel, or shareAcrossThreads). */
  private channel: BroadcastChannel | undefined;
  private closing = false;
  private readonly closeController = new AbortController();
  private readonly st: {
    insert: Statement;
    pick: Statement;
    receive: Statement;
    toDlq: Statement;
    del: Statement;
    vis: Statement;
    nextVisible: Statement;
    stats: Statement;
  };

  constructor(
    private readonly store: SqliteStore,
    options: SqliteQueuesOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.maxReceives = options.maxReceives;
    this.wake.setMaxListeners(0);
    if (options.channel) this.shareAcrossThreads(options.channel);
    const db = store.db;
    this.st = {
      insert: db.prepare(`INSERT INTO messages (id, queue, body, sent_at, visible_at, receipt) VALUES (?, ?, ?, ?, ?, '${UNRECEIVED}')`),
      pick: db.prepare('SELECT seq, id, body, sent_at, receive_count FROM messages WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?'),
      receive: db.prepare('UPDATE messages SET receive_count = ?, receipt = ?, visible_at = ? WHERE seq = ?'),
      // The message keeps its id, body, sent time and count in the DLQ, as SQS keeps them.
      toDlq: db.prepare('UPDATE messages SET queue = ?, visible_at = ?, receipt = NULL WHERE seq = ?'),
      del: db.prepare('DELETE FROM messages WHERE id = ? AND queue = ? AND receipt = ? AND receive_count > 0'),
      vis: db.prepare('UPDATE messages SET visible_at = ? WHERE id = ? AND queue = ? AND receipt = ? AND receive_count > 0'),
      nextVisible: db.prepare('SELECT MIN(visible_at) AS t FROM messages WHERE queue = ?'),
      stats: db.prepare(
        `SELECT
           COALESCE(SUM(visible_at <= @now), 0) AS visible,
           COALESCE(SUM(visible_at > @now AND receive_count > 0), 0) AS inFlight,
           COALESCE(SUM(visible_at > @now AND receive_count = 0), 0) AS delayed,
           MIN(sent_at) AS oldest
         FROM messages WHERE queue = @queue`,
      ),
    };
  }

  async send(queue: QueueName, body: string, options: { delaySeconds?: number } = {}): Promise<string> {
    checkQueue(queue);
    if (typeof body !== 'string') throw new InvalidRequest('message body must be a string');
    if (Buffer.byteLength(body) > MAX_BODY_BYTES) throw new InvalidRequest(`message body larger than ${MAX_BODY_BYTES} bytes`);
    const delay = checkSeconds('delaySeconds', options.delaySeconds ?? 0, MAX_DELAY_SECONDS);
    const id = randomUUID();
    await this.store.write(() => {
      const now = this.now();
      this.st.insert.run(id, queue, body, now, now + delay * 1000);
    });
    if (delay === 0) this.notify(queue);
    return id;
  }

  /**
   * Receives up to `max` messages. With `waitSeconds` (0..20) it long-polls: it returns as soon
   * as a message arrives, or an empty batch after the wait, on close, or when `signal` aborts
   * (an aborted poll returns what it has, never throws, so a stopping worker just sees no work).
   */
  async receive(
    queue: QueueName,
    options: { max?: number; visibilitySeconds?: number; waitSeconds?: number; signal?: AbortSignal } = {},
  ): Promise<ReceivedMessage[]> {
    checkQueue(queue);
    const max = options.max ?? 1;
    if (!Number.isInteger(max) || max < 1 || max > MAX_RECEIVE_BATCH) throw new InvalidRequest(`max must be 1..${MAX_RECEIVE_BATCH}`);
    const visibility = checkSeconds('visibilitySeconds', options.visibilitySeconds ?? DEFAULT_VISIBILITY_SECONDS, MAX_VISIBILITY_SECONDS);
    const wait = checkSeconds('waitSeconds', options.waitSeconds ?? 0, MAX_WAIT_SECONDS);
    const deadline = Date.now() + wait * 1000;
    for (;;) {
      // Lazy: a receive lost in a crash only means the message is received again.
      const got = await this.store.write(() => this.receiveNow(queue, max, visibility), { durable: false });
      if (got.length || wait === 0 || this.closing || options.signal?.aborted) return got;
      const remaining = deadline - Date.now();
      if (remaining <= 0) return got;
      const next = this.store.read(() => (this.st.nextVisible.get(queue) as { t: number | null }).t, 'queues.receive');
      let sleep = Math.min(remaining, POLL_MS);
      if (next !== null) sleep = Math.max(1, Math.min(sleep, next - this.now()));
      await this.waitForWake(queue, sleep, options.signal);
    }
  }

  private receiveNow(queue: QueueName, max: number, visibility: number): ReceivedMessage[] {
    const out: ReceivedMessage[] = [];
    const dlq = DLQ[queue];
    const now = this.now();
    let movedToDlq = false;
    // Messages moved to the DLQ free their slots: keep picking until the batch is full or empty.
    for (;;) {
      const rows = this.st.pick.all(queue, now, max - out.length) as MessageRow[];
      if (!rows.length) break;
      for (const row of rows) {
        const count = row.receive_count + 1;
        if (dlq && count > this.maxReceives) {
          this.st.toDlq.run(dlq, now, row.seq);
          movedToDlq = true;
          continue;
        }
        const token = randomBytes(12).toString('base64url');
        this.st.receive.run(count, token, now + visibility * 1000, row.seq);
        out.push({ id: row.id, receipt: `${row.id}.${token}`, body: row.body, receiveCount: count, sentAt: new Date(row.sent_at) });
      }
      if (out.length >= max) break;
    }
    if (movedToDlq && dlq) setImmediate(() => this.notify(dlq));
    return out;
  }

  /** From now on, wakes and is woken by the SqliteQueues of other threads on the channel `name` (options.channel). */
  shareAcrossThreads(name: string): void {
    if (this.channel || this.closing) return;
    const channel = new BroadcastChannel(name);
    channel.onmessage = (e) => this.wake.emit((e as { data: QueueName }).data);
    // Waiting long polls keep the process alive themselves; the channel must not.
    channel.unref();
    this.channel = channel;
  }

  /** A message may have become receivable in `queue`: wake the long polls here and on other threads. */
  private notify(queue: QueueName): void {
    this.wake.emit(queue);
    this.channel?.postMessage(queue);
  }

  private waitForWake(queue: QueueName, ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake.off(queue, done);
        signal?.removeEventListener('abort', done);
        this.closeController.signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake.on(queue, done);
      signal?.addEventListener('abort', done, { once: true });
      this.closeController.signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Deletes the message received with `receipt`. A stale receipt (the message was received
   * again since) or an unknown one is a no-op, so a slow worker never deletes a redelivery. */
  async delete(queue: QueueName, receipt: string): Promise<void> {
    checkQueue(queue);
    const r = parseReceipt(receipt);
    if (!r) throw new InvalidRequest('malformed receipt');
    // Lazy: the delete commits after whatever the worker made durable before it (the WAL is
    // replayed as a prefix), so losing it in a crash only runs an idempotent job again.
    await this.store.write(() => this.st.del.run(r.id, queue, r.token), { durable: false });
  }

  /** Hides the received message for `seconds` from now. NotFound when the receipt is stale or the
   * message is gone (SQS answers ReceiptHandleIsInvalid / MessageNotInflight). */
  async changeVisibility(queue: QueueName, receipt: string, seconds: number): Promise<void> {
    checkQueue(queue);
    const r = parseReceipt(receipt);
    if (!r) throw new InvalidRequest('malformed receipt');
    checkSeconds('visibility seconds', seconds, MAX_VISIBILITY_SECONDS);
    // Lazy: a lost visibility change makes the message visible earlier (at-least-once anyway).
    const changed = await this.store.write(() => this.st.vis.run(this.now() + seconds * 1000, r.id, queue, r.token).changes, { durable: false });
    if (!changed) throw new NotFound(`message for receipt in ${queue}`);
    if (seconds === 0) this.notify(queue);
  }

  async stats(queue: QueueName): Promise<QueueStats> {
    checkQueue(queue);
    const now = this.now();
    const row = this.store.read(
      () => this.st.stats.get({ now, queue }) as { visible: number; inFlight: number; delayed: number; oldest: number | null },
      'queues.stats',
    );
    const stats: QueueStats = { visible: row.visible, inFlight: row.inFlight, delayed: row.delayed };
    if (row.oldest !== null) stats.oldestAgeSeconds = Math.max(0, Math.floor((now - row.oldest) / 1000));
    return stats;
  }

  /** Ends every long poll in progress (they return empty batches). */
  async close(): Promise<void> {
    this.closing = true;
    this.closeController.abort();
    this.channel?.close();
  }
}
