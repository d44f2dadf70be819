/**
 * Starts any set of Tomlinson's components in this process on one opened Storage: the listeners
 * (smtp, pop3, imap, web, proxy), the in-process queue workers, and the health endpoint. `serve all` is the
 * embedded default; a Fargate task runs one listener group. Used by main.ts and by the end-to-end
 * tests, which start the real thing on ephemeral ports.
 */
import { Accounts } from '../core/accounts/accounts.js';
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import { Metrics } from '../core/metrics.js';
import { instrumentStorage } from '../core/storage/instrument.js';
import { openStorage } from '../core/storage/open.js';
import type { Storage } from '../core/storage/ports.js';
import { WorkersThread } from './worker-host.js';
import { startWorkers, type RunningWorkers, type WorkerHandle } from './workers.js';
import { startHealthServer, type HealthSource } from './health.js';
import { startLessonPoller, type LessonPoller } from '../core/mail/spam-learn.js';
import type { ListenerContext, RunningListener } from './listener.js';

/** The component groups `serve` accepts. */
export const COMPONENTS = ['smtp', 'pop3', 'imap', 'web', 'proxy', 'workers'] as const;
export type Component = (typeof COMPONENTS)[number];

/** A running set of components. */
export interface App {
  storage: Storage;
  metrics: Metrics;
  listeners: RunningListener[];
  /** The queue workers, on this thread or on their own (`workers.thread`). */
  workers: WorkerHandle[];
  /** e.g. '127.0.0.1:8025', when the health endpoint runs. */
  healthAddress?: string;
  /** Graceful stop: listeners stop accepting and drain, workers finish or hand back, storage closes. */
  close(graceMs?: number): Promise<void>;
}

async function startListener(name: Exclude<Component, 'workers'>, ctx: ListenerContext, running: RunningListener[]): Promise<RunningListener> {
  switch (name) {
    case 'smtp':
      return (await import('./smtp/server.js')).startSmtp(ctx);
    case 'pop3':
      return (await import('./pop3/server.js')).startPop3(ctx);
    case 'imap':
      return (await import('./imap/server.js')).startImap(ctx);
    case 'web': {
      const [{ startWeb }, { createWebmailStatic }, { imageProxyUrl }] = await Promise.all([
        import('./web/server.js'),
        import('./web/webmail/static.js'),
        import('./web/webmail/image-proxy.js'),
      ]);
      // `web.imageProxy: auto` means this process's own proxy: its real address (an ephemeral port
      // in tests) when it runs here, started first for that reason.
      const port = Number(
        running
          .find((l) => l.name === 'proxy')
          ?.addresses[0]?.split(':')
          .pop(),
      );
      const proxied = port > 0 ? imageProxyUrl({ ...ctx.config, proxy: { ...ctx.config.proxy, port } }) : undefined;
      return startWeb(ctx, { static: await createWebmailStatic(ctx.config, ctx.log.child({ c: 'web' })), imageProxyUrl: proxied });
    }
    case 'proxy': {
      // `proxy.workers` processes share the port (proxy/workers.ts); one runs in this process.
      const { proxyWorkerCount, startProxyWorkers } = await import('./proxy/workers.js');
      const count = proxyWorkerCount(ctx.config);
      if (count > 1) return startProxyWorkers(ctx, count);
      return (await import('./proxy/server.js')).startProxy(ctx);
    }
  }
}

/** Which components a config enables among those asked for. */
export function enabledComponents(config: Config, asked: readonly Component[]): Component[] {
  return asked.filter((c) => (c === 'workers' ? config.workers.enabled : config[c].enabled));
}

/** Opens storage and starts the asked components; on any failure stops what it started. */
export async function startApp(
  config: Config,
  asked: readonly Component[],
  log: Logger,
  options: { metrics?: Metrics; wrapStorage?: (s: Storage) => Storage } = {},
): Promise<App> {
  const metrics = options.metrics ?? new Metrics();
  const components = enabledComponents(config, asked);
  // The workers' thread (worker-host.ts) opens the store this thread hands over; the fault tests'
  // wrapped storage exists only on this thread, so with it the workers stay here.
  const threaded = components.includes('workers') && config.workers.thread && !options.wrapStorage;
  const opened = await openStorage(config, log.child({ c: 'storage' }));
  // wrapStorage lets the soak inject storage faults into the real thing; never set in production.
  const storage = instrumentStorage(options.wrapStorage ? options.wrapStorage(opened) : opened, metrics);
  // Where each lookup is a billed request, keep answers briefly; local reads beat staleness.
  Accounts.cacheLookups(storage.tables, storage.capabilities.costlyReads ? config.mail.accountCacheSeconds : 0);
  const listeners: RunningListener[] = [];
  let workers: RunningWorkers | WorkersThread | undefined;
  let health: Awaited<ReturnType<typeof startHealthServer>> | undefined;
  let learner: LessonPoller | undefined;

  const close = async (graceMs = 10_000): Promise<void> => {
    await Promise.allSettled(listeners.map((l) => l.close(graceMs)));
    await learner?.stop();
    await workers?.stop(graceMs);
    await health?.close();
    await storage.close();
  };

  try {
    // The proxy before the web listener, which may fetch images through it.
    const order = [...components].sort((a, b) => Number(b === 'proxy') - Number(a === 'proxy'));
    for (const c of order) {
      if (c === 'workers') continue;
      const l = await startListener(c, { config, storage, log, metrics }, listeners);
      listeners.push(l);
    }
    // Spam lessons taught from this process (`spam.learnPollSeconds`; on AWS the SMTP task, whose
    // rspamd sidecar the inbound Lambda cannot reach).
    learner = startLessonPoller({ config, storage, log, metrics });
    if (components.includes('workers')) {
      workers = threaded
        ? await WorkersThread.start({ config, log, metrics, storage: opened.forWorkerThread() })
        : await startWorkers({ config, storage, log, metrics });
    }
    if (config.health.port !== 0) {
      const sources = (): HealthSource[] => [
        ...listeners.map((l) => ({ name: l.name, healthy: () => l.healthy() })),
        ...(workers?.workers ?? []).map((w) => ({ name: `worker:${w.queue}`, healthy: () => w.healthy() })),
      ];
      health = await startHealthServer({
        host: config.health.host,
        port: config.health.port,
        storage,
        driver: config.storage.driver,
        metrics,
        log: log.child({ c: 'health' }),
        sources,
      });
    }
  } catch (e) {
    await close(0).catch(() => undefined);
    throw e;
  }
  return { storage, metrics, listeners, workers: workers?.workers ?? [], healthAddress: health?.address, close };
}
