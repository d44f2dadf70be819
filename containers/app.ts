/**
 * Starts any set of Tomlinson's components in this process on one opened Storage: the listeners
 * (smtp, pop3, proxy), the in-process queue workers, and the health endpoint. `serve all` is the
 * embedded default; a Fargate task runs one listener group. Used by main.ts and by the end-to-end
 * tests, which start the real thing on ephemeral ports.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import { Metrics } from '../core/metrics.js';
import { instrumentStorage } from '../core/storage/instrument.js';
import { openStorage } from '../core/storage/open.js';
import type { Storage } from '../core/storage/ports.js';
import type { JobHandler } from '../core/workers/job.js';
import { WorkerLoop } from '../core/workers/runner.js';
import { startPeriodicSweep, type PeriodicSweep } from '../core/mail/sweep.js';
import { startHealthServer, type HealthSource } from './health.js';
import type { ListenerContext, RunningListener } from './listener.js';

/** The component groups `serve` accepts. */
export const COMPONENTS = ['smtp', 'pop3', 'proxy', 'workers'] as const;
export type Component = (typeof COMPONENTS)[number];

/** A running set of components. */
export interface App {
  storage: Storage;
  metrics: Metrics;
  listeners: RunningListener[];
  workers: WorkerLoop[];
  /** e.g. '127.0.0.1:8025', when the health endpoint runs. */
  healthAddress?: string;
  /** Graceful stop: listeners stop accepting and drain, workers finish or hand back, storage closes. */
  close(graceMs?: number): Promise<void>;
}

async function startListener(name: Exclude<Component, 'workers'>, ctx: ListenerContext): Promise<RunningListener> {
  switch (name) {
    case 'smtp':
      return (await import('./smtp/server.js')).startSmtp(ctx);
    case 'pop3':
      return (await import('./pop3/server.js')).startPop3(ctx);
    case 'proxy':
      return (await import('./proxy/server.js')).startProxy(ctx);
  }
}

async function workerHandlers(): Promise<[import('../core/storage/ports.js').QueueName, JobHandler][]> {
  const [{ inboundJob }, { outboundJob }] = await Promise.all([import('../core/mail/inbound.js'), import('../core/mail/outbound.js')]);
  return [
    ['inbound', inboundJob],
    ['outbound', outboundJob],
  ];
}

/** Which components a config enables among those asked for. */
export function enabledComponents(config: Config, asked: readonly Component[]): Component[] {
  return asked.filter((c) => (c === 'workers' ? config.workers.enabled : config[c].enabled));
}

/** Opens storage and starts the asked components; on any failure stops what it started. */
export async function startApp(config: Config, asked: readonly Component[], log: Logger, options: { metrics?: Metrics; wrapStorage?: (s: Storage) => Storage } = {}): Promise<App> {
  const metrics = options.metrics ?? new Metrics();
  const opened = await openStorage(config, log.child({ c: 'storage' }));
  // wrapStorage lets the soak inject storage faults into the real thing; never set in production.
  const storage = instrumentStorage(options.wrapStorage ? options.wrapStorage(opened) : opened, metrics);
  const listeners: RunningListener[] = [];
  const workers: WorkerLoop[] = [];
  let sweep: PeriodicSweep | undefined;
  let health: Awaited<ReturnType<typeof startHealthServer>> | undefined;

  const close = async (graceMs = 10_000): Promise<void> => {
    await Promise.allSettled(listeners.map((l) => l.close(graceMs)));
    await Promise.allSettled(workers.map((w) => w.stop(graceMs)));
    await sweep?.stop();
    await health?.close();
    await storage.close();
  };

  try {
    const components = enabledComponents(config, asked);
    for (const c of components) {
      if (c === 'workers') continue;
      const l = await startListener(c, { config, storage, log, metrics });
      listeners.push(l);
    }
    if (components.includes('workers')) {
      const ctx = { config, storage, log: log.child({ c: 'worker' }), metrics, now: () => new Date() };
      for (const [queue, handler] of await workerHandlers()) {
        const w = new WorkerLoop(queue, handler, { ...ctx, log: ctx.log.child({ queue }) }, { concurrency: config.workers.concurrency, visibilitySeconds: config.workers.visibilitySeconds });
        w.start();
        workers.push(w);
      }
      // The documented cleanup of orphaned message blobs (core/mail/sweep.ts), hourly by default.
      sweep = startPeriodicSweep({ storage, config, log: log.child({ c: 'sweep' }), metrics });
    }
    if (config.health.port !== 0) {
      const sources = (): HealthSource[] => [
        ...listeners.map((l) => ({ name: l.name, healthy: () => l.healthy() })),
        ...workers.map((w) => ({ name: `worker:${w.queue}`, healthy: () => w.healthy() })),
      ];
      health = await startHealthServer({ host: config.health.host, port: config.health.port, storage, metrics, log: log.child({ c: 'health' }), sources });
    }
  } catch (e) {
    await close(0).catch(() => undefined);
    throw e;
  }
  return { storage, metrics, listeners, workers, healthAddress: health?.address, close };
}
