/**
 * Runs the queue workers of the embedded default on a worker thread of their own
 * (`workers.thread`, on by default), so that their work never stands between a listener's
 * socket and its reply.
 *
 * Why: a delivered message costs the inbound worker milliseconds of CPU (MIME parsing, the blob,
 * the index writes), and on the listeners' event loop that time came in between an SMTP client's
 * commands (figures in docs/performance.md, Mail workers). Postfix likewise keeps smtpd apart
 * from cleanup, qmgr and local.
 *
 * How: the thread (workers-thread.ts) opens the storage the listeners' store hands over
 * (`Storage.forWorkerThread`: what the two stores must share, e.g. the local database's counters,
 * is settled inside core/storage). The thread's log lines are written to this process's
 * logger, its metrics are summed into /metrics, its workers' health feeds /health. If the thread
 * dies, its jobs come back after their visibility timeout (nothing is lost, handlers are
 * idempotent) and it is started again after a backoff.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics, MetricsSnapshot } from '../core/metrics.js';
import type { QueueName, ThreadHandover } from '../core/storage/ports.js';
import type { WorkerHandle } from './workers.js';

/** What the thread gets at start (structured-cloned). */
export interface ThreadData {
  config: Config;
  /** The store the thread opens (from the listeners' `Storage.forWorkerThread()`). */
  storage: ThreadHandover;
  logLevel: string;
  logBindings: Record<string, unknown>;
}

/** Messages from the thread. */
export type ToHost =
  | { t: 'ready'; queues: QueueName[] }
  | { t: 'failed'; error: string }
  | { t: 'health'; health: Record<string, boolean> }
  | { t: 'log'; line: string }
  | { t: 'metrics'; id: number; snapshot: MetricsSnapshot };

/** Messages to the thread. */
export type ToThread = { t: 'metrics'; id: number } | { t: 'stop'; graceMs: number };

/** Longest wait for the thread to open storage and start. */
const START_TIMEOUT_MS = 30_000;
/** Longest wait for the thread's metrics at a scrape. */
const METRICS_TIMEOUT_MS = 2000;
/** Restart backoff after the thread died: doubling from the first, up to the last. */
const RESTART_MS = [1000, 30_000] as const;

/**
 * How to start the thread's entry: the bundle's sibling file, or the TypeScript source through
 * tsx's loader (a worker thread does not inherit the loader hooks of `node --import tsx` on
 * Node 20, so the thread registers them itself before it imports the entry).
 */
function threadEntry(): { code: string; eval: true } | { file: URL; eval: false } {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return { file: new URL('./workers-thread.mjs', here), eval: false };
  const tsxApi = pathToFileURL(join(dirname(createRequire(here).resolve('tsx')), 'esm', 'api', 'index.mjs')).href;
  const entry = new URL('./workers-thread.ts', here).href;
  return { code: `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`, eval: true };
}

/** The queue workers on their own thread, restarted if it dies; `workers` are its handles. */
export class WorkersThread {
  private worker: Worker | undefined;
  private health: Record<string, boolean> = {};
  private alive = false;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private startedAt = 0;
  private nextId = 0;
  private readonly calls = new Map<number, (s: MetricsSnapshot) => void>();
  private readonly removeMetrics: () => void;
  private readonly stream: { write(line: string): unknown } | undefined;
  readonly workers: WorkerHandle[] = [];
  /** Sees each thread as it starts (the restart test ends one). */
  private onThread: ((worker: Worker) => void) | undefined;

  private constructor(
    private readonly config: Config,
    private readonly log: Logger,
    metrics: Metrics,
    private readonly storage: ThreadHandover,
  ) {
    this.stream = (log as unknown as Record<symbol, { write(line: string): unknown } | undefined>)[pino.symbols.streamSym];
    this.removeMetrics = metrics.addRemote(() => this.metrics());
  }

  /** Starts the thread and resolves once its workers run; rejects (and stops it) if it cannot start. */
  static async start(o: {
    config: Config;
    log: Logger;
    metrics: Metrics;
    storage: ThreadHandover;
    onThread?: (worker: Worker) => void;
  }): Promise<WorkersThread> {
    const host = new WorkersThread(o.config, o.log, o.metrics, o.storage);
    host.onThread = o.onThread;
    try {
      const queues = await host.spawn();
      for (const queue of queues) host.workers.push({ queue, healthy: () => host.alive && host.health[queue] !== false });
      return host;
    } catch (e) {
      await host.stop(0);
      throw e;
    }
  }

  /** Starts a thread; resolves with its queues when it is ready. */
  private spawn(): Promise<QueueName[]> {
    const entry = threadEntry();
    const data: ThreadData = { config: this.config, storage: this.storage, logLevel: this.log.level, logBindings: this.log.bindings() };
    const worker = entry.eval ? new Worker(entry.code, { eval: true, workerData: data }) : new Worker(entry.file, { workerData: data });
    this.worker = worker;
    this.startedAt = Date.now();
    this.onThread?.(worker);
    return new Promise<QueueName[]>((resolve, reject) => {
      let settled = false;
      const settle = (e?: Error, queues?: QueueName[]) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve(queues!);
      };
      const timer = setTimeout(() => settle(new Error(`the queue workers' thread did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      worker.on('message', (m: ToHost) => {
        switch (m.t) {
          case 'log':
            this.stream?.write(m.line);
            break;
          case 'ready':
            this.alive = true;
            settle(undefined, m.queues);
            break;
          case 'health':
            this.health = m.health;
            break;
          case 'metrics':
            this.calls.get(m.id)?.(m.snapshot);
            this.calls.delete(m.id);
            break;
          case 'failed':
            this.log.error({ err: m.error }, "the queue workers' thread failed");
            settle(new Error(`queue workers: ${m.error}`));
            break;
        }
      });
      worker.on('error', (e) => {
        this.log.error({ err: e.message }, "the queue workers' thread crashed");
        settle(e);
      });
      worker.on('exit', (code) => {
        if (this.worker !== worker) return;
        this.alive = false;
        this.worker = undefined;
        for (const answer of this.calls.values()) answer([]);
        this.calls.clear();
        settle(new Error(`the queue workers' thread exited (code ${code}) before it was ready`));
        if (!this.stopping) this.scheduleRestart(code);
      });
    });
  }

  private scheduleRestart(code: number): void {
    // A thread that ran a minute counts as healthy again: the backoff starts over.
    if (Date.now() - this.startedAt > 60_000) this.failures = 0;
    const delay = Math.min(RESTART_MS[1], RESTART_MS[0] * 2 ** this.failures++);
    this.log.error(
      { code, restartInMs: delay },
      "the queue workers' thread stopped; its jobs return to the queue after their visibility timeout; restarting it",
    );
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopping) return;
      this.spawn().then(
        () => this.log.info("the queue workers' thread runs again"),
        () => undefined, // the exit handler schedules the next attempt
      );
    }, delay);
    this.restartTimer.unref();
  }

  /** The thread's metrics, or none if it does not answer in time. */
  private metrics(): Promise<MetricsSnapshot> {
    const worker = this.worker;
    if (!worker || !this.alive) return Promise.resolve([]);
    const id = ++this.nextId;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        resolve([]);
      }, METRICS_TIMEOUT_MS);
      this.calls.set(id, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      worker.postMessage({ t: 'metrics', id } satisfies ToThread);
    });
  }

  /** Asks the thread to finish in-flight jobs (up to `graceMs`) and close its storage; ends it after that. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    this.removeMetrics();
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const worker = this.worker;
    if (!worker) return;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage({ t: 'stop', graceMs } satisfies ToThread);
    // Storage close and a last checkpoint come after the grace period: allow them a few seconds.
    const killer = setTimeout(() => {
      this.log.warn("the queue workers' thread did not stop in time; ending it");
      void worker.terminate();
    }, graceMs + 5000);
    await exited;
    clearTimeout(killer);
  }
}
