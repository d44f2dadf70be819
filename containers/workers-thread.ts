/**
 * The entry point of the queue workers' thread (started by worker-host.ts): opens the storage the
 * listeners' thread handed over (`Storage.forWorkerThread`), runs the workers and the sweep, and
 * speaks to the host through messages:
 * its log lines, its metrics on request, its workers' health, and stop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Accounts } from '../core/accounts/accounts.js';
import type { Config } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { Metrics } from '../core/metrics.js';
import { instrumentStorage } from '../core/storage/instrument.js';
import { openStorage } from '../core/storage/open.js';
import type { Storage } from '../core/storage/ports.js';
import type { ThreadData, ToHost, ToThread } from './worker-host.js';
import { startWorkers, type RunningWorkers } from './workers.js';

if (!parentPort) throw new Error('workers-thread.ts runs only as a worker thread (containers/worker-host.ts starts it)');
const port = parentPort;
const data = workerData as ThreadData;
const send = (m: ToHost) => port.postMessage(m);

// Log lines go to the host, which writes them to its own destination: one stream, one format.
const log = createLogger({
  level: data.logLevel,
  pretty: false,
  destination: { write: (line: string) => send({ t: 'log', line }) } as unknown as NodeJS.WritableStream,
}).child(data.logBindings);
const metrics = new Metrics({ defaults: false });

let storage: Storage | undefined;
let running: RunningWorkers | undefined;
let reported = '';

function reportHealth(): void {
  if (!running) return;
  const health = Object.fromEntries(running.workers.map((w) => [w.queue, w.healthy()]));
  const text = JSON.stringify(health);
  if (text === reported) return;
  reported = text;
  send({ t: 'health', health });
}

async function start(config: Config): Promise<void> {
  storage = instrumentStorage(await openStorage(config, log.child({ c: 'storage' }), { thread: data.storage }), metrics);
  Accounts.cacheLookups(storage.tables, storage.capabilities.costlyReads ? config.mail.accountCacheSeconds : 0);
  running = await startWorkers({ config, storage, log, metrics });
  reportHealth();
  setInterval(reportHealth, 1000).unref();
  send({ t: 'ready', queues: running.workers.map((w) => w.queue) });
}

async function stop(graceMs: number): Promise<void> {
  await running?.stop(graceMs);
  await storage?.close();
  port.close();
}

port.on('message', (m: ToThread) => {
  if (m.t === 'metrics') {
    metrics.registry.getMetricsAsJSON().then(
      (snapshot) => send({ t: 'metrics', id: m.id, snapshot }),
      () => send({ t: 'metrics', id: m.id, snapshot: [] }),
    );
  } else if (m.t === 'stop') {
    stop(m.graceMs).catch((e: Error) => {
      send({ t: 'failed', error: `stopping: ${e.message}` });
      port.close();
    });
  }
});

start(data.config).catch(async (e: Error) => {
  send({ t: 'failed', error: e.message });
  await storage?.close().catch(() => undefined);
  port.close();
});
