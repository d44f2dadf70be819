/**
 * The queue workers of the embedded default (inbound and outbound) and the hourly sweep of
 * orphaned message blobs, started on one opened Storage: on the process's own thread
 * (`workers.thread = false`, and the fault tests, which wrap the storage) or on the workers'
 * thread (workers-thread.ts). On AWS the same handlers run in Lambda instead.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import { reportOutboundAge } from '../core/mail/outbound-age.js';
import { startPeriodicSweep } from '../core/mail/sweep.js';
import type { QueueName, Storage } from '../core/storage/ports.js';
import { WorkerLoop } from '../core/workers/runner.js';

/** One queue's worker as the health endpoint and `serve` see it, on whichever thread it runs. */
export interface WorkerHandle {
  readonly queue: QueueName;
  /** False after repeated receive failures (storage down), or while its thread is down. */
  healthy(): boolean;
}

/** The running workers and sweep; `stop` drains in-flight jobs for up to `graceMs`. */
export interface RunningWorkers {
  workers: WorkerHandle[];
  stop(graceMs?: number): Promise<void>;
}

/** Starts a WorkerLoop per queue and the periodic sweep. */
export async function startWorkers(o: { config: Config; storage: Storage; log: Logger; metrics: Metrics }): Promise<RunningWorkers> {
  const [{ inboundJob }, { outboundJob }] = await Promise.all([import('../core/mail/inbound.js'), import('../core/mail/outbound.js')]);
  const ctx = { config: o.config, storage: o.storage, log: o.log.child({ c: 'worker' }), metrics: o.metrics, now: () => new Date() };
  const loops = (
    [
      ['inbound', inboundJob],
      ['outbound', outboundJob],
    ] as const
  ).map(([queue, handler]) => {
    const w = new WorkerLoop(
      queue,
      handler,
      { ...ctx, log: ctx.log.child({ queue }) },
      { concurrency: o.config.workers.concurrency, visibilitySeconds: o.config.workers.visibilitySeconds },
    );
    w.start();
    return w;
  });
  // The documented cleanup of orphaned message blobs (core/mail/sweep.ts), hourly by default.
  const sweep = startPeriodicSweep({ storage: o.storage, config: o.config, log: o.log.child({ c: 'sweep' }), metrics: o.metrics });
  // Where an alarm watches the store (the direct-delivery Fargate worker on AWS), its outbound age
  // metric, each minute.
  const watched = o.storage.capabilities.monitoredAs;
  const age = watched !== undefined ? setInterval(() => void reportOutboundAge(o.storage.tables, watched, new Date()), 60_000) : undefined;
  age?.unref();
  return {
    workers: loops,
    async stop(graceMs = 10_000) {
      clearInterval(age);
      await Promise.allSettled(loops.map((w) => w.stop(graceMs)));
      await sweep?.stop();
    },
  };
}
