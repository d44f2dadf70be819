/**
 * The proxy on every core (issue 25): `proxy.workers` processes that share the proxy's listening
 * socket, started by the main process (the embedded default keeps SMTP, POP3, IMAP, the web and
 * the queues to itself; a proxy-only Fargate task runs nothing else) and supervised from here.
 *
 * - Processes, not threads: Node cannot hand a listening socket to a worker thread. node:cluster
 *   passes it to its workers, here in round-robin (its default on Linux): this process accepts
 *   each connection and hands it to the next free worker, once per connection (keep-alive
 *   requests then go straight to the worker). In the other mode (SCHED_NONE) every worker accepts
 *   on the shared socket, and Node's documentation reports connections spread very unevenly
 *   (libuv accepts until EAGAIN, so the worker that wakes takes a whole burst). What round-robin
 *   costs: a connection handed to a worker in the moment it dies is lost (node:cluster never takes
 *   it back; its client times out).
 * - Memory tier: each worker holds `proxy.memoryBytes / workers` of its own. A tier shared between
 *   processes would need shared memory outside the JS heap and a copy or a message per hit, where
 *   an own tier answers a hit synchronously; the total stays within the configured size. What one
 *   worker stored, another finds in the object tier and keeps in its share.
 * - Object tier: shared by all, as by the proxy tasks on AWS. On local storage every worker opens
 *   the SQLite database and the blob folder itself: WAL with a busy retry (BEGIN IMMEDIATE,
 *   conditions checked inside the transaction, core/storage/local/sqlite.ts), blobs written to a
 *   temporary file and renamed into place, put-if-absent by link(2) (fs-blobs.ts), orphans removed
 *   only for dead pids. A miss skips the object tier for a URL it cannot hold (CacheStore's
 *   bitmap of stored URLs, loaded at start): each worker tells the others through this process
 *   what it stored, and they mark it in theirs (asking SQLite on every miss instead was dearer by
 *   far: docs/performance.md, Proxy). A miss in the moment before the news arrives goes to the
 *   origin: a miss that could have been a hit, never a wrong answer.
 * - Responses held in one memory tier only (a response goes to the object tier at its second use,
 *   proxy.objectTierAdmitHits): a worker tells its siblings the URL hashes it holds so; a sibling
 *   that misses on one asks them through this process (`want`), and the holder writes it to the
 *   object tier at once and answers (`had`), within WANT_TIMEOUT_MS (worker-main.ts). A repeat is
 *   then a hit on whichever worker the connection went to, not a second origin fetch.
 * - Purges: an invalidation (RFC 9111 §4.4) made by one worker reaches the others through this
 *   process at once; a `cache purge` from the admin CLI (another process) through the purge log
 *   that every worker polls (CacheStore.watchPurges), as on AWS.
 * - Statistics: each worker adds its counts to the shared Tables item (`cache stats`); /metrics
 *   here sums the workers' registries into this process's (Metrics.addRemote). Log lines: this
 *   process writes them to its own destination, a message per turn of a worker's event loop.
 * - Life: a worker that dies is logged and started again after a backoff; close() stops them all
 *   with a grace period, then kills what is left; a worker exits as soon as this process is gone
 *   (node:cluster ends a worker whose IPC channel closes), so none outlives it.
 */
import cluster, { type Worker } from 'node:cluster';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { pino } from 'pino';
import type { Config } from '../../core/config.js';
import type { MetricsSnapshot } from '../../core/metrics.js';
import type { ListenerContext, RunningListener } from '../listener.js';

/** The first message to a worker: what it runs. */
export interface WorkerStart {
  t: 'start';
  /** The config with this worker's share of the memory tier. */
  config: Config;
  index: number;
  /** How many workers share the port (this one included). */
  workers: number;
  logLevel: string;
  logBindings: Record<string, unknown>;
}

/** Messages to a worker. */
export type ToWorker =
  | WorkerStart
  | { t: 'metrics'; id: number }
  | { t: 'forget'; url: string }
  | { t: 'known'; hash: string }
  | { t: 'held'; hash: string }
  | { t: 'want'; id: number; url: string; from: number }
  | { t: 'had'; id: number; stored: boolean }
  | { t: 'stop'; graceMs: number };

/** Messages from a worker. */
export type FromWorker =
  | { t: 'hello' }
  | { t: 'ready'; port: number }
  | { t: 'failed'; error: string }
  | { t: 'log'; lines: string }
  | { t: 'metrics'; id: number; snapshot: MetricsSnapshot }
  | { t: 'purged'; url: string }
  | { t: 'stored'; hash: string }
  | { t: 'held'; hash: string }
  | { t: 'want'; id: number; url: string }
  | { t: 'had'; id: number; to: number; stored: boolean };

/** Options of startProxyWorkers (tests). */
export interface ProxyWorkersOptions {
  /** Restart backoff after a worker died: doubling from the first, up to the second, in ms. @default [1000, 30000] */
  restartMs?: readonly [number, number];
}

/** A running group of proxy workers, as a listener. */
export interface RunningProxyWorkers extends RunningListener {
  port: number;
  /** The pids of the workers running now (tests stop one). */
  pids(): number[];
}

/** Longest wait for a worker to open storage and listen. */
const START_TIMEOUT_MS = 30_000;
/** Longest wait for a worker's metrics at a scrape. */
const METRICS_TIMEOUT_MS = 2000;
/** Waited beyond the grace period for workers to finish before they are killed. */
const STOP_SLACK_MS = 5000;

/** The number of workers `proxy.workers` asks for (0: one per core this process may use, usableCores). */
export function proxyWorkerCount(config: Config, cores = usableCores()): number {
  return config.proxy.workers === 0 ? Math.max(1, cores) : config.proxy.workers;
}

/**
 * The cores this process may use: the CPUs it may run on (os.availableParallelism), or fewer under
 * a CPU quota, rounded (a container limit: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`). Node 20
 * does not read the quota, and a Fargate task of 0.5 vCPU sees the host's CPUs: two workers there
 * would share half a core.
 */
export function usableCores(): number {
  const cpus = availableParallelism();
  const read = (path: string): string | undefined => {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  let quota: number | undefined;
  const v2 = read('/sys/fs/cgroup/cpu.max')?.split(/\s+/);
  if (v2 && v2[0] !== 'max') quota = Number(v2[0]) / Number(v2[1]);
  else if (!v2) {
    const q = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'));
    const p = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_period_us'));
    if (q > 0 && p > 0) quota = q / p;
  }
  return quota !== undefined && Number.isFinite(quota) && quota > 0 ? Math.max(1, Math.min(cpus, Math.round(quota))) : cpus;
}

/**
 * How to start a worker: the bundle's sibling file, or the TypeScript source through tsx's loader
 * (given by absolute URL, so that it does not depend on the working directory).
 */
function workerEntry(): { exec: string; execArgv: string[] } {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return { exec: fileURLToPath(new URL('./proxy-worker.mjs', here)), execArgv: process.execArgv };
  const tsx = pathToFileURL(createRequire(here).resolve('tsx')).href;
  return { exec: fileURLToPath(new URL('./worker-main.ts', here)), execArgv: ['--import', tsx] };
}

/** One worker slot: the process running in it now, restarted into the same slot. */
interface Slot {
  index: number;
  worker?: Worker;
  ready: boolean;
  startedAt: number;
  failures: number;
  restartTimer?: NodeJS.Timeout;
}

/** Starts `count` proxy workers on config.proxy.port; resolves once every one listens. */
export async function startProxyWorkers(ctx: ListenerContext, count: number, options: ProxyWorkersOptions = {}): Promise<RunningProxyWorkers> {
  const group = new ProxyWorkers(ctx, count, options);
  try {
    await group.start();
  } catch (e) {
    await group.close(0);
    throw e;
  }
  return group.running();
}

class ProxyWorkers {
  private readonly log: ListenerContext['log'];
  private readonly slots: Slot[] = [];
  private readonly restartMs: readonly [number, number];
  private readonly stream: { write(line: string): unknown } | undefined;
  private readonly removeMetrics: () => void;
  private readonly calls = new Map<number, (s: MetricsSnapshot) => void>();
  private nextId = 0;
  private port: number;
  private readonly addresses: string[] = [];
  private stopping = false;

  constructor(
    private readonly ctx: ListenerContext,
    count: number,
    options: ProxyWorkersOptions,
  ) {
    this.log = ctx.log.child({ c: 'proxy' });
    this.port = ctx.config.proxy.port;
    this.addresses.push(`proxy ${ctx.config.listenHost}:${this.port}`);
    this.restartMs = options.restartMs ?? [1000, 30_000];
    for (let index = 0; index < count; index++) this.slots.push({ index, ready: false, startedAt: 0, failures: 0 });
    // The workers' log lines are written to this process's destination: one stream, one format.
    this.stream = (ctx.log as unknown as Record<symbol, { write(line: string): unknown } | undefined>)[pino.symbols.streamSym];
    this.removeMetrics = ctx.metrics.addRemote(() => this.metrics());
  }

  async start(): Promise<void> {
    const entry = workerEntry();
    // Round-robin: see the file comment. Both settings are process-wide and only read by fork().
    cluster.schedulingPolicy = cluster.SCHED_RR;
    cluster.setupPrimary({ exec: entry.exec, execArgv: entry.execArgv, args: [], serialization: 'advanced' });
    // The first worker makes the listening socket (config.proxy.port, or an ephemeral one); the
    // others ask for the same port as it did (0 included: node:cluster keys the shared socket by
    // the address asked for) and join it.
    await this.spawn(this.slots[0]);
    await Promise.all(this.slots.slice(1).map((s) => this.spawn(s)));
  }

  running(): RunningProxyWorkers {
    const host = this.ctx.config.listenHost;
    this.log.info({ host, port: this.port, workers: this.slots.length }, 'proxy workers listening');
    const port = () => this.port;
    return {
      name: 'proxy',
      addresses: this.addresses,
      get port() {
        return port();
      },
      // The port answers while any worker serves it.
      healthy: () => !this.stopping && this.slots.some((s) => s.ready),
      close: (graceMs?: number) => this.close(graceMs ?? 5000),
      pids: () => this.slots.flatMap((s) => (s.ready && s.worker?.process.pid !== undefined ? [s.worker.process.pid] : [])),
    };
  }

  /** Forks a worker into a slot; resolves when it listens, rejects if it cannot start. */
  private spawn(slot: Slot): Promise<void> {
    const worker = cluster.fork();
    slot.worker = worker;
    slot.ready = false;
    slot.startedAt = Date.now();
    const send = (m: ToWorker) => {
      if (worker.isConnected()) worker.send(m);
    };
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (e?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve();
      };
      const timer = setTimeout(() => settle(new Error(`proxy worker ${slot.index} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      worker.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'hello': {
            const cfg = this.ctx.config;
            const share = Math.floor(cfg.proxy.memoryBytes / this.slots.length);
            send({
              t: 'start',
              config: { ...cfg, proxy: { ...cfg.proxy, memoryBytes: share } },
              index: slot.index,
              workers: this.slots.length,
              logLevel: this.ctx.log.level,
              logBindings: this.ctx.log.bindings(),
            });
            break;
          }
          case 'ready':
            // Another port only if every worker had died and the socket was made again (an ephemeral port).
            if (this.port !== m.port) {
              this.port = m.port;
              this.addresses[0] = `proxy ${this.ctx.config.listenHost}:${m.port}`;
            }
            slot.ready = true;
            settle();
            break;
          case 'log':
            this.stream?.write(m.lines);
            break;
          case 'metrics':
            this.calls.get(m.id)?.(m.snapshot);
            this.calls.delete(m.id);
            break;
          case 'purged':
            // The sibling workers drop the URL from their memory tiers now rather than at their next poll.
            this.siblings(slot, { t: 'forget', url: m.url });
            break;
          case 'stored':
            this.siblings(slot, { t: 'known', hash: m.hash });
            break;
          case 'held':
            this.siblings(slot, { t: 'held', hash: m.hash });
            break;
          case 'want':
            // A miss on a URL another worker may hold in memory only: each sibling answers the asker.
            this.siblings(slot, { t: 'want', id: m.id, url: m.url, from: slot.index });
            break;
          case 'had': {
            const to = this.slots[m.to]?.worker;
            if (to?.isConnected()) to.send({ t: 'had', id: m.id, stored: m.stored } satisfies ToWorker);
            break;
          }
          case 'failed':
            this.log.error({ worker: slot.index, err: m.error }, 'proxy worker failed');
            settle(new Error(`proxy worker ${slot.index}: ${m.error}`));
            break;
        }
      });
      worker.on('error', (e) => this.log.warn({ worker: slot.index, err: e.message }, 'proxy worker channel error'));
      worker.on('exit', (code, signal) => {
        if (slot.worker !== worker) return;
        slot.ready = false;
        slot.worker = undefined;
        settle(new Error(`proxy worker ${slot.index} exited (${signal ?? `code ${code}`}) before it was listening`));
        if (!this.stopping) this.scheduleRestart(slot, code, signal);
      });
    });
  }

  /** Sends a message to every worker but the one in `from` (one still starting too: it may be loading its index). */
  private siblings(from: Slot, m: ToWorker): void {
    for (const s of this.slots) if (s !== from && s.worker?.isConnected()) s.worker.send(m);
  }

  private scheduleRestart(slot: Slot, code: number, signal: string | null): void {
    // A worker that ran a minute counts as healthy again: the backoff starts over.
    if (Date.now() - slot.startedAt > 60_000) slot.failures = 0;
    const delay = Math.min(this.restartMs[1], this.restartMs[0] * 2 ** slot.failures++);
    this.log.error({ worker: slot.index, code, signal, restartInMs: delay }, 'proxy worker stopped; its connections were cut; restarting it');
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (this.stopping) return;
      this.spawn(slot).then(
        () => this.log.info({ worker: slot.index }, 'proxy worker runs again'),
        () => undefined, // the exit handler schedules the next attempt
      );
    }, delay);
    slot.restartTimer.unref();
  }

  /** Every running worker's metrics, leaving out one that does not answer in time. */
  private async metrics(): Promise<MetricsSnapshot> {
    const asked = this.slots.flatMap((s) => {
      const w = s.worker;
      if (!w || !s.ready || !w.isConnected()) return [];
      const id = ++this.nextId;
      return [
        new Promise<MetricsSnapshot>((resolve) => {
          const timer = setTimeout(() => {
            this.calls.delete(id);
            resolve([]);
          }, METRICS_TIMEOUT_MS);
          this.calls.set(id, (snapshot) => {
            clearTimeout(timer);
            resolve(snapshot);
          });
          w.send({ t: 'metrics', id } satisfies ToWorker);
        }),
      ];
    });
    // One list: AggregatorRegistry groups by metric name across every list it is given.
    return (await Promise.all(asked)).flat();
  }

  /** Stops every worker (each drains its connections for up to graceMs), killing those that overrun. */
  async close(graceMs: number): Promise<void> {
    this.stopping = true;
    this.removeMetrics();
    const exits = this.slots.map((slot) => {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      const w = slot.worker;
      if (!w || w.isDead()) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const kill = setTimeout(() => {
          this.log.warn({ worker: slot.index }, 'proxy worker did not stop in time; killed');
          w.process.kill('SIGKILL');
        }, graceMs + STOP_SLACK_MS);
        w.once('exit', () => {
          clearTimeout(kill);
          resolve();
        });
        if (w.isConnected()) w.send({ t: 'stop', graceMs } satisfies ToWorker);
        else w.process.kill('SIGKILL');
      });
    });
    await Promise.all(exits);
    for (const answer of this.calls.values()) answer([]);
    this.calls.clear();
  }
}
