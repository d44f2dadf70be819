/**
 * The in-process queue worker of the embedded default: polls one queue, runs a JobHandler on each
 * message with bounded concurrency, deletes a message only when its work is done, and keeps the
 * message hidden while the handler runs (a heartbeat extends the visibility timeout). On AWS the
 * same handlers run in Lambda through functions/lib/sqs-batch.ts.
 */
import type { QueueName, ReceivedMessage } from '../storage/ports.js';
import { MAX_RECEIVE_BATCH, MAX_VISIBILITY_SECONDS } from '../storage/ports.js';
import type { JobContext, JobHandler, JobMeta, JobOutcome } from './job.js';

/** Options of a WorkerLoop. */
export interface WorkerOptions {
  /** Messages worked at once. @default 8 */
  concurrency?: number;
  /** Visibility timeout per receive; the heartbeat renews it at a third of this. @default 60 */
  visibilitySeconds?: number;
  /** Long-poll wait per receive (SQS's longest, so an idle worker costs one receive per 20 s). @default 20 */
  waitSeconds?: number;
  /**
   * After a receive that brought fewer messages than there was room for, wait this long before
   * the next one, so that jobs arriving one at a time are worked in small batches whose storage
   * writes share transactions (see docs/performance.md, Mail workers). Delivery lags by at most
   * this much; mail is durable once queued. 0 receives again at once. @default 20
   */
  batchDelayMs?: number;
}

/**
 * The log line of a failed attempt. On the inbound queue (whose dead-letter threshold is
 * storage.queueMaxReceives in both families) the last attempt says where the job goes, at error
 * level, so that the reason a job is dead-lettered is the line just before it gets there.
 */
export function logFailure(ctx: JobContext, meta: JobMeta, err: Error): void {
  const fields = { queue: meta.queue, id: meta.id, receiveCount: meta.receiveCount, err: err.message };
  if (meta.queue === 'inbound' && meta.receiveCount >= ctx.config.storage.queueMaxReceives) {
    ctx.log.error(fields, 'job failed on its last attempt; it goes to the dead-letter queue (see `tomlinson dlq list`)');
  } else {
    ctx.log.warn(fields, 'job failed; it will be retried after its visibility timeout');
  }
}

/** Runs one message through a handler and applies the outcome to the queue. Exported so the
 * Lambda adapter and tests share the exact rules. Returns the outcome, or the error thrown. */
export async function runOne(queue: QueueName, message: ReceivedMessage, handler: JobHandler, ctx: JobContext): Promise<JobOutcome | Error> {
  const meta = { queue, id: message.id, receiveCount: message.receiveCount, sentAt: message.sentAt };
  let outcome: JobOutcome;
  try {
    outcome = await handler(message.body, meta, ctx);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    ctx.metrics?.messages.inc({ stage: queue, outcome: 'error' });
    logFailure(ctx, meta, err);
    return err;
  }
  if (outcome.kind === 'done') {
    await ctx.storage.queues.delete(queue, message.receipt);
    ctx.metrics?.messages.inc({ stage: queue, outcome: 'done' });
  } else {
    const seconds = Math.max(0, Math.min(MAX_VISIBILITY_SECONDS, Math.round(outcome.afterSeconds)));
    await ctx.storage.queues.changeVisibility(queue, message.receipt, seconds);
    ctx.metrics?.messages.inc({ stage: queue, outcome: 'retry' });
    ctx.log.info({ queue, id: message.id, afterSeconds: seconds, reason: outcome.reason }, 'job rescheduled');
  }
  return outcome;
}

/** A polling loop over one queue; `start()` returns at once, `stop()` drains in-flight work. */
export class WorkerLoop {
  private readonly abort = new AbortController();
  private readonly inFlight = new Set<Promise<unknown>>();
  private loop?: Promise<void>;
  private readonly concurrency: number;
  private readonly visibility: number;
  private readonly wait: number;
  private readonly batchDelay: number;
  /** Consecutive receive failures, for backoff and health. */
  private failures = 0;

  constructor(
    readonly queue: QueueName,
    private readonly handler: JobHandler,
    private readonly ctx: JobContext,
    options: WorkerOptions = {},
  ) {
    this.concurrency = options.concurrency ?? 8;
    this.visibility = options.visibilitySeconds ?? 60;
    this.wait = options.waitSeconds ?? 20;
    this.batchDelay = options.batchDelayMs ?? 20;
  }

  /** False after repeated receive failures (storage down). */
  healthy(): boolean {
    return this.failures < 3;
  }

  start(): void {
    this.loop ??= this.run();
  }

  private async run(): Promise<void> {
    const { signal } = this.abort;
    while (!signal.aborted) {
      if (this.inFlight.size >= this.concurrency) {
        await Promise.race(this.inFlight);
        continue;
      }
      let batch: ReceivedMessage[];
      const room = Math.min(MAX_RECEIVE_BATCH, this.concurrency - this.inFlight.size);
      try {
        batch = await this.ctx.storage.queues.receive(this.queue, {
          max: room,
          visibilitySeconds: this.visibility,
          waitSeconds: this.wait,
          signal,
        });
        this.failures = 0;
      } catch (e) {
        if (signal.aborted) break;
        this.failures++;
        const backoff = Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7));
        this.ctx.log.error({ queue: this.queue, err: (e as Error).message, backoffMs: backoff }, 'queue receive failed');
        await sleep(backoff, signal);
        continue;
      }
      for (const m of batch) {
        const p = this.work(m).finally(() => this.inFlight.delete(p));
        this.inFlight.add(p);
      }
      if (batch.length > 0 && batch.length < room && this.batchDelay > 0) await sleep(this.batchDelay, signal);
    }
  }

  private async work(m: ReceivedMessage): Promise<void> {
    const beat = setInterval(
      () => {
        this.ctx.storage.queues.changeVisibility(this.queue, m.receipt, this.visibility).catch((e: Error) => {
          this.ctx.log.warn({ queue: this.queue, id: m.id, err: e.message }, 'visibility heartbeat failed');
        });
      },
      Math.max(1000, (this.visibility * 1000) / 3),
    );
    beat.unref();
    try {
      await runOne(this.queue, m, this.handler, this.ctx);
    } catch (e) {
      // Deleting or rescheduling failed: the message reappears after its timeout; work is idempotent.
      this.ctx.log.error({ queue: this.queue, id: m.id, err: (e as Error).message }, 'could not settle job');
    } finally {
      clearInterval(beat);
    }
  }

  /** Stops receiving and waits up to `graceMs` for in-flight jobs; unfinished ones simply become
   * visible again later (nothing is lost, handlers are idempotent). */
  async stop(graceMs = 10_000): Promise<void> {
    this.abort.abort();
    await this.loop;
    const all = Promise.allSettled([...this.inFlight]);
    const grace = new AbortController();
    await Promise.race([all, sleep(graceMs, grace.signal)]);
    grace.abort(); // no timer left behind to hold a stopping thread open
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
