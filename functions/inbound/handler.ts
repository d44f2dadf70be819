/**
 * Lambda entry of the inbound worker: SQS queue `inbound` -> core/mail/inbound.ts.
 */
import { inboundJob } from '../../core/mail/inbound.js';
import { contextFromEnv } from '../lib/context.js';
import { sqsBatchHandler } from '../lib/sqs-batch.js';

/** The function's handler (`handler` in the processing stack). */
export const handler = sqsBatchHandler({ queue: 'inbound', job: inboundJob, context: () => contextFromEnv(process.env) });
