/**
 * The dead-letter queues from the operator's side (issue 4: "the admin CLI can list and re-drive
 * it"): list the jobs that ended there, put them back on their queue, or drop them.
 *
 * Everything goes through the Queues port, so it behaves the same on SQLite and on SQS, which has
 * no way to read a queue without receiving from it. Listing receives the dead letters a page at a
 * time, hiding each for `HOLD_SECONDS` so that the next page brings new ones, and makes them
 * visible again when done. Re-driving sends a body to the source queue first and deletes the dead
 * letter after: a crash in between leaves the job in both, which the workers absorb (they are
 * idempotent on the job id); the other order could lose it.
 */
import type { QueueName, Queues, ReceivedMessage } from '../storage/ports.js';
import { MAX_RECEIVE_BATCH } from '../storage/ports.js';

/** A queue that has a dead-letter queue. */
export type DlqSource = 'inbound' | 'outbound';

/** The dead-letter queue of each source queue. */
export const DLQ_OF: Record<DlqSource, QueueName> = { inbound: 'inbound-dlq', outbound: 'outbound-dlq' };

/** How long a dead letter stays hidden while a listing or re-drive pages past it (seconds). */
const HOLD_SECONDS = 60;

/** One dead letter as the operator sees it: the queue's facts and the job's envelope, never the
 * message itself. */
export interface DeadLetter {
  /** The queue's id of the dead letter. */
  messageId: string;
  /** The job id (the queue id of `250 2.0.0 <id>`), when the body is a job. */
  jobId?: string;
  from?: string;
  rcpts?: string[];
  size?: number;
  receivedAt?: string;
  /** Receives so far, this listing's included. */
  receiveCount: number;
  sentAt: string;
  /** Set when the body is not a job we can read (it can still be re-driven or dropped). */
  unreadable?: string;
}

/** What a re-drive or a drop did. */
export interface DlqActionResult {
  /** Job ids (or message ids for unreadable bodies) acted on. */
  done: string[];
  /** Ids asked for that were not found in the dead-letter queue. */
  missing: string[];
}

/** The envelope facts of a job body; the raw message a small job carries is never looked at. */
export function describeDeadLetter(m: ReceivedMessage): DeadLetter {
  const base: DeadLetter = { messageId: m.id, receiveCount: m.receiveCount, sentAt: m.sentAt.toISOString() };
  let job: unknown;
  try {
    job = JSON.parse(m.body);
  } catch {
    return { ...base, unreadable: 'not JSON' };
  }
  if (!job || typeof job !== 'object' || typeof (job as { id?: unknown }).id !== 'string') return { ...base, unreadable: 'not a job' };
  const j = job as { id: string; from?: unknown; rcpts?: unknown; size?: unknown; receivedAt?: unknown };
  const rcpts = Array.isArray(j.rcpts) ? j.rcpts.map((r: { address?: unknown }) => (typeof r?.address === 'string' ? r.address : '?')) : undefined;
  return {
    ...base,
    jobId: j.id,
    ...(typeof j.from === 'string' ? { from: j.from } : {}),
    ...(rcpts ? { rcpts } : {}),
    ...(typeof j.size === 'number' ? { size: j.size } : {}),
    ...(typeof j.receivedAt === 'string' ? { receivedAt: j.receivedAt } : {}),
  };
}

/** Operator actions on the dead-letter queues. */
export class DeadLetterAdmin {
  constructor(
    private readonly queues: Queues,
    /** Seconds a receive may wait for messages; SQS needs a long poll to see every message of a
     * small queue. @default 1 */
    private readonly waitSeconds = 1,
  ) {}

  /** The dead letters of `source`, oldest sent first, at most `limit`; they stay where they are. */
  async list(source: DlqSource, options: { limit?: number } = {}): Promise<DeadLetter[]> {
    const limit = options.limit ?? 1000;
    const out: DeadLetter[] = [];
    await this.page(source, limit, async (m) => {
      out.push(describeDeadLetter(m));
      return false;
    });
    return out.sort((a, b) => a.sentAt.localeCompare(b.sentAt) || a.messageId.localeCompare(b.messageId));
  }

  /** Puts dead letters back on `source`: those whose job id or message id is in `ids`, or every
   * one when `ids` is undefined. */
  redrive(source: DlqSource, ids?: string[]): Promise<DlqActionResult> {
    return this.act(source, ids, async (m) => {
      await this.queues.send(source, m.body);
      await this.queues.delete(DLQ_OF[source], m.receipt);
    });
  }

  /** Drops dead letters for good (no bounce is sent; a raw message nothing else references is
   * removed later by the orphan sweep). */
  drop(source: DlqSource, ids: string[]): Promise<DlqActionResult> {
    return this.act(source, ids, (m) => this.queues.delete(DLQ_OF[source], m.receipt));
  }

  private async act(source: DlqSource, ids: string[] | undefined, fn: (m: ReceivedMessage) => Promise<void>): Promise<DlqActionResult> {
    const wanted = ids ? new Set(ids) : undefined;
    const done: string[] = [];
    const found = new Set<string>();
    await this.page(source, Infinity, async (m) => {
      const d = describeDeadLetter(m);
      const match = !wanted ? undefined : wanted.has(m.id) ? m.id : d.jobId !== undefined && wanted.has(d.jobId) ? d.jobId : undefined;
      if (wanted && match === undefined) return false;
      if (match !== undefined) found.add(match);
      await fn(m);
      done.push(d.jobId ?? m.id);
      return true;
    });
    return { done, missing: ids ? ids.filter((id) => !found.has(id)) : [] };
  }

  /**
   * Receives every visible dead letter of `source` once (up to `limit`), calling `visit` on each;
   * `visit` returns true when it consumed the message. The others are made visible again at the
   * end, whatever happened.
   */
  private async page(source: DlqSource, limit: number, visit: (m: ReceivedMessage) => Promise<boolean>): Promise<void> {
    const dlq = DLQ_OF[source];
    const seen = new Set<string>();
    const held: ReceivedMessage[] = [];
    try {
      while (seen.size < limit) {
        const batch = await this.queues.receive(dlq, {
          max: Math.min(MAX_RECEIVE_BATCH, limit - seen.size),
          visibilitySeconds: HOLD_SECONDS,
          waitSeconds: this.waitSeconds,
        });
        if (batch.length === 0) break;
        for (const m of batch) {
          // SQS may hand the same message out twice; its latest receipt is the one that counts.
          if (seen.has(m.id)) {
            const i = held.findIndex((h) => h.id === m.id);
            if (i >= 0) held[i] = m;
            continue;
          }
          seen.add(m.id);
          if (!(await visit(m))) held.push(m);
        }
      }
    } finally {
      await Promise.all(held.map((m) => this.queues.changeVisibility(dlq, m.receipt, 0).catch(() => undefined)));
    }
  }
}
