/**
 * Lambda entry of the outbound worker: SQS queue `outbound` -> core/mail/outbound.ts. Lambda may
 * not connect to port 25, so on AWS this path delivers through the configured smarthost
 * (TOMLINSON_SMARTHOST); direct MX delivery runs from a Fargate worker instead (docs/deploy.md).
 * After each batch it reports the age of the oldest undelivered message (core/mail/outbound-age.ts).
 */
import type { SQSEvent } from 'aws-lambda';
import { reportOutboundAge } from '../../core/mail/outbound-age.js';
import { outboundJob } from '../../core/mail/outbound.js';
import type { JobContext } from '../../core/workers/job.js';
import { contextFromEnv } from '../lib/context.js';
import { sqsBatchHandler } from '../lib/sqs-batch.js';

/** Builds the handler over a context source (the container's environment in production). */
export function outboundHandler(context: () => Promise<JobContext>, write?: (line: string) => void): ReturnType<typeof sqsBatchHandler> {
  let ctx: Promise<JobContext> | undefined;
  const shared = (): Promise<JobContext> => {
    ctx ??= context().catch((e: unknown) => {
      ctx = undefined;
      throw e;
    });
    return ctx;
  };
  const work = sqsBatchHandler({ queue: 'outbound', job: outboundJob, context: shared });
  return async (event: SQSEvent) => {
    const response = await work(event);
    const c = await shared().catch(() => undefined);
    if (c) await reportOutboundAge(c.storage.tables, c.storage.capabilities.monitoredAs ?? 'local', c.now(), write);
    return response;
  };
}

/** The function's handler (`handler` in the processing stack). */
export const handler = outboundHandler(() => contextFromEnv(process.env));
