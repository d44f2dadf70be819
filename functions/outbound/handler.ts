/**
 * Lambda entry of the outbound worker: SQS queue `outbound` -> core/mail/outbound.ts. Lambda may
 * not connect to port 25, so on AWS this path delivers through the configured smarthost
 * (TOMLINSON_SMARTHOST); direct MX delivery runs from a Fargate worker instead (docs/deploy.md).
 */
import { outboundJob } from '../../core/mail/outbound.js';
import { contextFromEnv } from '../lib/context.js';
import { sqsBatchHandler } from '../lib/sqs-batch.js';

/** The function's handler (`handler` in the processing stack). */
export const handler = sqsBatchHandler({ queue: 'outbound', job: outboundJob, context: () => contextFromEnv(process.env) });
