/**
 * The contract between a queue and the code that works its messages, shared by the in-process
 * worker (embedded default) and the SQS-driven Lambda handlers. A handler is pure with respect to
 * the transport: it gets the body, returns what should happen to the message, and must be
 * idempotent because queues deliver at least once.
 */
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { QueueName, Storage } from '../storage/ports.js';

/** What the runtime does with a message after the handler returns. */
export type JobOutcome =
  /** Work finished (or was already finished): delete the message. */
  | { kind: 'done' }
  /** Not yet: keep the message and hand it out again after this many seconds (up to 12 h; longer
   * waits are made by the handler re-checking a `notBefore` it keeps in the body). */
  | { kind: 'retry'; afterSeconds: number; reason: string };

/** Everything a job handler may use; built once per process (or per Lambda container). */
export interface JobContext {
  config: Config;
  storage: Storage;
  log: Logger;
  metrics?: Metrics;
  /** Injectable clock. @default () => new Date() */
  now: () => Date;
}

/** Facts about the delivery of one queue message. */
export interface JobMeta {
  queue: QueueName;
  id: string;
  receiveCount: number;
  sentAt: Date;
}

/** Works one message. Throwing counts as a failed attempt: the message comes back after its
 * visibility timeout and, after maxReceives attempts, lands in the dead-letter queue. */
export type JobHandler = (body: string, meta: JobMeta, ctx: JobContext) => Promise<JobOutcome>;

export const done: JobOutcome = { kind: 'done' };
