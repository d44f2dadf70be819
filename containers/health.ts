/**
 * The health endpoint (GET /health) and Prometheus metrics (GET /metrics) on one small HTTP
 * listener, 127.0.0.1 by default. The NLB target groups and the container HEALTHCHECK use
 * /health: 200 when every listener, worker and storage backend is up, 503 otherwise, with a JSON
 * body saying which part is down.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../core/log.js';
import { OutboundQueueAdmin } from '../core/mail/outbound-admin.js';
import type { Metrics } from '../core/metrics.js';
import type { QueueName, QueueStats, Storage } from '../core/storage/ports.js';

/** Something the health endpoint asks whether it is up. */
export interface HealthSource {
  name: string;
  healthy(): boolean;
}

export interface HealthServerOptions {
  host: string;
  port: number;
  storage: Storage;
  /** The configured storage driver (`storage.driver`), named in the report. */
  driver: string;
  metrics: Metrics;
  log: Logger;
  /** Listeners and workers, read at each request (they may start after the endpoint). */
  sources: () => HealthSource[];
}

const QUEUES: QueueName[] = ['inbound', 'outbound', 'inbound-dlq', 'outbound-dlq'];

/** The report /health serves. */
export async function healthReport(storage: Storage, sources: HealthSource[], driver?: string): Promise<{ ok: boolean; body: Record<string, unknown> }> {
  let backends: Record<string, boolean>;
  try {
    backends = await withTimeout(storage.check(), 3000);
  } catch {
    backends = { storage: false };
  }
  const components: Record<string, 'up' | 'down'> = {};
  for (const s of sources) components[s.name] = s.healthy() ? 'up' : 'down';
  const storageStatus: Record<string, 'up' | 'down'> = {};
  for (const [k, v] of Object.entries(backends)) storageStatus[k] = v ? 'up' : 'down';
  const ok = Object.values(components).every((v) => v === 'up') && Object.values(storageStatus).every((v) => v === 'up');
  // The body's `family` key is the configured driver, kept under the name existing clients read.
  return { ok, body: { status: ok ? 'up' : 'down', storage: { ...(driver !== undefined ? { family: driver } : {}), ...storageStatus }, components } };
}

/** Starts the endpoint; resolves with the server once it listens. */
export async function startHealthServer(o: HealthServerOptions): Promise<{ server: Server; address: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/health' || path === '/healthz' || path === '/') {
      healthReport(o.storage, o.sources(), o.driver).then(
        ({ ok, body }) => {
          res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json', 'cache-control': 'no-store' });
          res.end(JSON.stringify(body) + '\n');
        },
        (e: Error) => {
          res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'down', error: e.message }) + '\n');
        },
      );
      return;
    }
    if (path === '/metrics') {
      refreshQueueGauges(o.storage, o.metrics)
        .catch((e: Error) => o.log.warn({ err: e.message }, 'queue stats failed'))
        .then(() => o.metrics.text())
        .then(
          (text) => {
            res.writeHead(200, { 'content-type': o.metrics.registry.contentType });
            res.end(text);
          },
          (e: Error) => res.writeHead(500).end(e.message),
        );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /health or /metrics\n');
  });
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  return {
    server,
    address: `${a.address}:${a.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function refreshQueueGauges(storage: Storage, metrics: Metrics): Promise<void> {
  await Promise.all(
    QUEUES.map(async (q) => {
      // The outbound queue holds stale generations of retried messages: count live messages.
      const s: QueueStats & { held?: number } = q === 'outbound' ? await new OutboundQueueAdmin(storage).stats() : await storage.queues.stats(q);
      metrics.queueDepth.set({ queue: q, state: 'visible' }, s.visible);
      metrics.queueDepth.set({ queue: q, state: 'in_flight' }, s.inFlight);
      metrics.queueDepth.set({ queue: q, state: 'delayed' }, s.delayed);
      if (s.held !== undefined) metrics.queueDepth.set({ queue: q, state: 'held' }, s.held);
      // An empty queue has no oldest message: its age is 0, not the last value seen.
      metrics.queueOldestAge.set({ queue: q }, s.oldestAgeSeconds ?? 0);
    }),
  );
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
