/**
 * Test harness for the proxy: a real origin server on 127.0.0.1 (plain http, or https with a
 * test certificate) whose routes the tests script and whose requests they count, local storage in a temporary folder, and the proxy on an ephemeral
 * port with an injected clock.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { connect } from 'node:net';
import { ProxyAgent, request as undiciRequest } from 'undici';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import { startProxy, type ProxyOptions, type RunningProxy } from '../../containers/proxy/server.js';
import type { TestCertificate } from '../support/tls-cert.js';
import { tempDir } from '../support/tmp.js';

/** One request as the origin saw it. */
export interface SeenRequest {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
  complete: boolean;
}

export type Route = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

/** A scripted origin server that records every request. */
export class Origin {
  readonly seen: SeenRequest[] = [];
  readonly routes = new Map<string, Route>();
  private server!: Server;
  port = 0;

  /** `tls`: serve https with this certificate instead of plain http. */
  constructor(private readonly tls?: TestCertificate) {}

  async start(): Promise<this> {
    const serve = (req: IncomingMessage, res: ServerResponse): void => {
      const chunks: Buffer[] = [];
      const rec: SeenRequest = { method: req.method!, path: req.url!, headers: req.headers, body: Buffer.alloc(0), complete: false };
      this.seen.push(rec);
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('error', () => undefined);
      req.on('end', () => {
        rec.body = Buffer.concat(chunks);
        rec.complete = true;
        const route = this.routes.get(req.url!.split('?')[0]) ?? this.routes.get('*');
        if (!route) {
          res.writeHead(404, { 'content-type': 'text/plain' });
          res.end('no route');
          return;
        }
        route(req, res, rec.body);
      });
    };
    this.server = this.tls ? createTlsServer({ cert: this.tls.cert, key: this.tls.key }, serve) : createServer(serve);
    this.server.keepAliveTimeout = 30_000;
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    const a = this.server.address();
    this.port = typeof a === 'object' && a ? a.port : 0;
    return this;
  }

  url(path: string): string {
    return `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.port}${path}`;
  }

  /** How many requests reached the origin for a path (query included). */
  count(path: string, method?: string): number {
    return this.seen.filter((r) => r.path === path && (!method || r.method === method)).length;
  }

  /** The requests for a path. */
  requests(path: string): SeenRequest[] {
    return this.seen.filter((r) => r.path === path);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A controllable clock. */
export class Clock {
  t = Date.now();
  readonly now = (): number => this.t;
  advance(seconds: number): void {
    this.t += seconds * 1000;
  }
}

/** Storage + proxy + origin + clock, started together and stopped together. */
export class Harness {
  origin!: Origin;
  storage!: Storage;
  proxy!: RunningProxy;
  config!: Config;
  metrics = new Metrics({ defaults: false });
  clock = new Clock();
  agent!: ProxyAgent;
  /** The proxy's logger (set before startProxy to read its lines). */
  log: Logger = silentLogger;
  private dir!: { path: string; remove: () => Promise<void> };

  /** Starts everything; `open` replaces the local storage family (e.g. the aws family on moto). */
  static async start(env: Record<string, string> = {}, options: ProxyOptions = {}, open?: (config: Config) => Promise<Storage>): Promise<Harness> {
    const h = new Harness();
    h.dir = await tempDir('tomlinson-proxy-');
    // Tier tests look for a response in the object tier after one request: write every stored
    // response there unless a test sets the admission rule itself (the default is checked on its own).
    h.config = loadConfig({
      TOMLINSON_DATA_DIR: h.dir.path,
      TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
      TOMLINSON_HOSTNAME: 'proxy.test',
      TOMLINSON_PROXY_OBJECT_TIER_ADMIT_HITS: '1',
      ...env,
    });
    h.storage = open ? await open(h.config) : await openLocalStorage(h.config, silentLogger, { purgeIntervalMs: 0 });
    h.origin = await new Origin().start();
    await h.startProxy(options);
    return h;
  }

  /** (Re)starts only the proxy on the same storage (a second task sharing the object tier). */
  async startProxy(options: ProxyOptions = {}): Promise<void> {
    this.proxy = await startProxy(
      { config: this.config, storage: this.storage, log: this.log, metrics: this.metrics },
      { now: this.clock.now, port: 0, ...options },
    );
    this.agent = new ProxyAgent({ uri: `http://127.0.0.1:${this.proxy.port}`, proxyTunnel: false });
  }

  async stopProxy(): Promise<void> {
    await this.agent.close();
    await this.proxy.close(100);
  }

  /** A request through the proxy with undici's ProxyAgent; the body is read as text. */
  async get(path: string, headers: Record<string, string> = {}, method = 'GET', body?: string) {
    const r = await undiciRequest(this.origin.url(path), { dispatcher: this.agent, method: method as 'GET', headers, body });
    const text = await r.body.text();
    return { status: r.statusCode, headers: r.headers as Record<string, string>, text };
  }

  async stop(): Promise<void> {
    await this.stopProxy().catch(() => undefined);
    await this.origin.stop();
    await this.storage.close();
    await this.dir.remove();
  }
}

/** Sends raw bytes to a port and returns everything read until the peer closes (or timeout). */
export function rawExchange(port: number, data: string | Buffer, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(data));
    let out = '';
    const timer = setTimeout(() => s.destroy(), timeoutMs);
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

/** The status code of the first response in a raw exchange. */
export function statusOf(raw: string): number {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(raw);
  return m ? Number(m[1]) : 0;
}
