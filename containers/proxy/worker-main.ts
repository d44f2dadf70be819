/**
 * The entry point of one proxy worker process (forked by workers.ts through node:cluster): opens
 * the storage, runs the proxy on the port the main process shares with its siblings, and speaks
 * to the main process through messages: its log lines, its metrics on request, the URLs it
 * invalidated or stored and those its siblings did, and stop.
 */
import cluster from 'node:cluster';
import { Accounts } from '../../core/accounts/accounts.js';
import { createLogger, type Logger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { instrumentStorage } from '../../core/storage/instrument.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { startProxy, type RunningProxy } from './server.js';
import type { FromWorker, ToWorker, WorkerStart } from './workers.js';

if (!cluster.isWorker || !process.send) throw new Error('worker-main.ts runs only as a proxy worker (containers/proxy/workers.ts forks it)');

const send = (m: FromWorker): void => {
  if (process.connected) process.send!(m);
};

/**
 * Log lines gathered for one turn of the event loop and sent as one message: with the access log
 * on, a message per request would cost more than the request.
 */
let pending = '';
function writeLine(line: string): void {
  if (pending === '') setImmediate(flushLines);
  pending += line;
}
function flushLines(): void {
  if (pending === '') return;
  send({ t: 'log', lines: pending });
  pending = '';
}

// Each process has its own default metrics (CPU, memory, event loop): /metrics sums them.
const metrics = new Metrics();
let log: Logger | undefined;
let storage: Storage | undefined;
let proxy: RunningProxy | undefined;
let stopping: Promise<void> | undefined;
let siblingCount = 0;

/**
 * How long a miss waits for the sibling workers to say whether one holds the response (they answer
 * within a fraction of a millisecond plus one object-tier write; one restarting never does).
 */
const WANT_TIMEOUT_MS = 250;
const wants = new Map<number, { left: number; done: (stored: boolean) => void }>();
let nextWant = 0;

/** Asks the siblings to write their memory-only response for `url` to the object tier; true once one has. */
function ask(url: string): Promise<boolean> {
  if (siblingCount <= 0) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    const id = ++nextWant;
    const done = (stored: boolean): void => {
      clearTimeout(timer);
      wants.delete(id);
      resolve(stored);
    };
    const timer = setTimeout(() => done(false), WANT_TIMEOUT_MS);
    wants.set(id, { left: siblingCount, done });
    send({ t: 'want', id, url });
  });
}

async function start(m: WorkerStart): Promise<void> {
  const config = m.config;
  log = createLogger({
    level: m.logLevel,
    pretty: false,
    destination: { write: writeLine } as unknown as NodeJS.WritableStream,
  }).child({ ...m.logBindings, worker: m.index });
  // The other workers and the main process share the database: the main process (or the first
  // store opened on it) keeps the expiry purge; every store runs its own checkpoints.
  storage = instrumentStorage(await openStorage(config, log.child({ c: 'storage' }), { local: { purgeIntervalMs: 0 } }), metrics);
  Accounts.cacheLookups(storage.tables, storage.capabilities.costlyReads ? config.mail.accountCacheSeconds : 0);
  siblingCount = m.workers - 1;
  proxy = await startProxy(
    { config, storage, log, metrics },
    {
      purged: (url) => send({ t: 'purged', url }),
      stored: (hash) => send({ t: 'stored', hash }),
      siblings: { held: (hash) => send({ t: 'held', hash }), ask },
    },
  );
  // Its log lines ("proxy listening") before the news that it listens.
  flushLines();
  send({ t: 'ready', port: proxy.port });
}

function stop(graceMs: number): Promise<void> {
  stopping ??= (async () => {
    try {
      await proxy?.close(graceMs);
      await storage?.close();
    } catch (e) {
      log?.error({ err: (e as Error).message }, 'proxy worker did not stop cleanly');
    }
    // The last lines first: exit() would drop a message still queued on the channel.
    const last = pending;
    pending = '';
    await new Promise<void>((resolve) =>
      last && process.connected ? process.send!({ t: 'log', lines: last } satisfies FromWorker, undefined, {}, () => resolve()) : resolve(),
    );
    process.exit(0);
  })();
  return stopping;
}

process.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'start':
      start(m).catch(async (e: Error) => {
        send({ t: 'failed', error: e.message });
        await storage?.close().catch(() => undefined);
        flushLines();
        process.exit(1);
      });
      break;
    case 'metrics':
      metrics.registry.getMetricsAsJSON().then(
        (snapshot) => send({ t: 'metrics', id: m.id, snapshot }),
        () => send({ t: 'metrics', id: m.id, snapshot: [] }),
      );
      break;
    case 'forget':
      proxy?.store.memory.deleteUrl(m.url);
      break;
    case 'known':
      proxy?.store.markStored(m.hash);
      break;
    case 'held':
      proxy?.store.markHeld(m.hash);
      break;
    case 'want': {
      const answer = (stored: boolean) => send({ t: 'had', id: m.id, to: m.from, stored });
      if (!proxy) answer(false);
      else proxy.store.persistHeld(m.url).then(answer, () => answer(false));
      break;
    }
    case 'had': {
      const w = wants.get(m.id);
      if (w && (m.stored || --w.left === 0)) w.done(m.stored);
      break;
    }
    case 'stop':
      void stop(m.graceMs);
      break;
  }
});

// A terminal's Ctrl-C or a service manager's SIGTERM reaches every process of the group: finish
// in-flight requests as the main process does (it stops the workers anyway).
process.on('SIGINT', () => void stop(5000));
process.on('SIGTERM', () => void stop(5000));

send({ t: 'hello' });
