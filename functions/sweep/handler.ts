/**
 * Lambda entry of the orphaned-blob sweep (core/mail/sweep.ts), run on a schedule by the
 * processing stack. Thin, like the queue handlers: build the context from the environment, run one
 * sweep, stop it a minute before the function's timeout (the next run carries on where the blobs
 * still are: the sweep is idempotent), log and return its report. A failure throws, so Lambda's
 * error metric and alarm see it.
 */
import type { Context } from 'aws-lambda';
import { sweepOptionsFrom, sweepOrphanBlobs, type SweepReport } from '../../core/mail/sweep.js';
import type { JobContext } from '../../core/workers/job.js';
import { contextFromEnv } from '../lib/context.js';

/** Time kept back from the function's timeout for the report and the log line. */
const MARGIN_MS = 60_000;

/** Builds the handler with its context factory (tests pass their own). */
export function sweepHandler(
  makeContext: () => Promise<JobContext>,
): (event: unknown, lambda?: Pick<Context, 'getRemainingTimeInMillis'>) => Promise<Omit<SweepReport, 'deletedKeys'>> {
  let context: Promise<JobContext> | undefined;
  return async (_event, lambda) => {
    context ??= makeContext().catch((e: unknown) => {
      context = undefined;
      throw e;
    });
    const ctx = await context;
    const budget = (lambda?.getRemainingTimeInMillis() ?? 15 * 60_000) - MARGIN_MS;
    const signal = AbortSignal.timeout(Math.max(1000, budget));
    const report = await sweepOrphanBlobs(ctx.storage, { ...sweepOptionsFrom(ctx.config), log: ctx.log, metrics: ctx.metrics, now: ctx.now, signal });
    const { deletedKeys: _keys, ...summary } = report;
    return summary;
  };
}

/** The function's handler (`handler` in the processing stack). */
export const handler = sweepHandler(() => contextFromEnv(process.env));
