/**
 * Turns an SQS event into calls of a queue's JobHandler and the JobOutcomes into a partial batch
 * response (STYLE.md example 11). Lambda deletes every record not listed in `batchItemFailures`
 * (ReportBatchItemFailures), so a record is reported as failed whenever its work is not finished:
 * a thrown error, or a `retry` outcome, which first hides the message for the requested time.
 */
import type { SQSBatchItemFailure, SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import type { JobContext, JobHandler, JobMeta, JobOutcome } from '../../core/workers/job.js';
import { MAX_VISIBILITY_SECONDS, type QueueName } from '../../core/storage/ports.js';
import { logFailure } from '../../core/workers/runner.js';

/** Options of sqsBatchHandler. */
export interface SqsBatchOptions {
  /** The logical queue the event source reads, as the storage port names it. */
  queue: QueueName;
  /** The worker code shared with the in-process runtime. */
  job: JobHandler;
  /**
   * Builds the JobContext (config, storage clients, logger). Called once per Lambda container, on
   * the first event, and again only after it failed; tests pass their own.
   */
  context: () => Promise<JobContext>;
  /** Records worked at once. @default the context's config.workers.concurrency */
  concurrency?: number;
}

/** The Lambda handler signature this module produces. */
export type SqsBatchHandler = (event: SQSEvent) => Promise<SQSBatchResponse>;

/** Builds a Lambda handler for one queue; keep the result at module scope so its context lives as
 * long as the Lambda container. */
export function sqsBatchHandler(options: SqsBatchOptions): SqsBatchHandler {
  let context: Promise<JobContext> | undefined;
  const getContext = (): Promise<JobContext> => {
    context ??= options.context().catch((e: unknown) => {
      context = undefined;
      throw e;
    });
    return context;
  };

  return async (event) => {
    const records = event.Records ?? [];
    let ctx: JobContext;
    try {
      ctx = await getContext();
    } catch (e) {
      // Without a context no record can be worked: all go back to the queue and are retried after
      // their visibility timeout (and reach the DLQ if this persists). Logged to stderr because
      // the logger itself may be what failed to build.
      console.error(JSON.stringify({ level: 'error', msg: 'job context failed', queue: options.queue, err: String(e) }));
      return { batchItemFailures: records.map((r) => ({ itemIdentifier: r.messageId })) };
    }
    const log = ctx.log.child({ c: 'sqs-batch', queue: options.queue });
    const limit = Math.max(1, options.concurrency ?? ctx.config.workers.concurrency);
    const failures: SQSBatchItemFailure[] = [];

    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < records.length) {
        const record = records[next++]!;
        if (!(await workRecord(record, options, ctx, log))) failures.push({ itemIdentifier: record.messageId });
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, records.length) }, lane));
    // Keep the event's order, which makes the response stable for logs and tests.
    const order = new Map(records.map((r, i) => [r.messageId, i]));
    failures.sort((a, b) => order.get(a.itemIdentifier)! - order.get(b.itemIdentifier)!);
    return { batchItemFailures: failures };
  };
}

/** The JobMeta of an SQS record (attributes are strings in the event). */
export function recordMeta(queue: QueueName, record: SQSRecord): JobMeta {
  const count = Number(record.attributes?.ApproximateReceiveCount);
  const sent = Number(record.attributes?.SentTimestamp);
  return {
    queue,
    id: record.messageId,
    receiveCount: Number.isFinite(count) && count > 0 ? count : 1,
    sentAt: Number.isFinite(sent) ? new Date(sent) : new Date(0),
  };
}

/** Works one record; true when Lambda may delete it. */
async function workRecord(record: SQSRecord, options: SqsBatchOptions, ctx: JobContext, log: JobContext['log']): Promise<boolean> {
  const meta = recordMeta(options.queue, record);
  let outcome: JobOutcome;
  try {
    outcome = await options.job(record.body, meta, ctx);
  } catch (e) {
    logFailure({ ...ctx, log }, meta, e instanceof Error ? e : new Error(String(e)));
    ctx.metrics?.messages.inc({ stage: options.queue, outcome: 'error' });
    return false;
  }
  if (outcome.kind === 'done') {
    ctx.metrics?.messages.inc({ stage: options.queue, outcome: 'done' });
    return true;
  }
  const seconds = Math.min(MAX_VISIBILITY_SECONDS, Math.max(0, Math.ceil(outcome.afterSeconds)));
  ctx.metrics?.messages.inc({ stage: options.queue, outcome: 'retry' });
  try {
    await ctx.storage.queues.changeVisibility(options.queue, record.receiptHandle, seconds);
    log.info({ id: meta.id, afterSeconds: seconds, reason: outcome.reason }, 'job retries later');
  } catch (e) {
    // The message still comes back, only after the queue's own visibility timeout.
    log.warn({ id: meta.id, afterSeconds: seconds, err: e }, 'could not change visibility; the queue timeout applies');
  }
  return false;
}
