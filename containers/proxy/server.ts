/**
 * The caching forward proxy (issue 6): HTTP/1.1 absolute-form requests and CONNECT tunnels, RFC 9111
 * caching through core/cache (memory tier over the shared object tier), origins through an undici
 * Agent with keep-alive pools. Node's llhttp parser already refuses the smuggling shapes (CL+TE,
 * repeated or listed Content-Length, unknown Transfer-Encoding, obs-fold, bad bytes) with a parse
 * error, which `clientError` turns into 400; an oversized head becomes 431.
 */
import { randomBytes } from 'node:crypto';
import { STATUS_CODES, createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as netConnect, isIP, type LookupFunction, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type CachePolicy from 'http-cache-semantics';
import { Agent, type Dispatcher } from 'undici';
import { Accounts } from '../../core/accounts/accounts.js';
import type { CachedObject } from '../../core/cache/entry.js';
import { normalizeTarget, normalizeUrl, variantKey, varyNames, type HeaderMap } from '../../core/cache/keys.js';
import { CacheStats, type CacheOutcome } from '../../core/cache/stats.js';
import { CacheStore, type BodyWriter } from '../../core/cache/store.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { cidrList, clientAllowed } from '../../core/address-ranges.js';
import { ProxyAuth, OriginGuard, OriginRefused, authorityTarget, dnsOriginResolver, refusalText } from './access.js';
import { addVia, endToEnd, ifRangeMatches, notModified, parseRange } from './http.js';
import { OriginExchange, waitDrain, type HeadListener } from './origin.js';
import { LeanClient } from './lean.js';
import { REASON, accessLoggedResponse, accessLogger, loggedUrl, type ReasonedResponse } from './access-log.js';
import { ConnectionLimits } from './limits.js';

/** Options beyond Config, for tests and embedding. */
export interface ProxyOptions {
  /** Checks proxy credentials. @default Accounts(ctx.storage.tables).authenticate */
  authenticate?: (login: string, password: string) => Promise<boolean>;
  /** Clock, epoch ms, for the cache's freshness decisions. @default Date.now */
  now?: () => number;
  /** Port to listen on instead of config.proxy.port (0: ephemeral). */
  port?: number;
  /** How often the purge log of the other tasks is read, in ms. @default 1000 */
  purgePollMs?: number;
  /** How long a client connection may stay idle between requests, in ms (see sweepIdle). @default 5000 */
  keepAliveMs?: number;
}

/** A started proxy: the listener contract plus what tests and the health endpoint look at. */
export interface RunningProxy extends RunningListener {
  port: number;
  store: CacheStore;
  stats: CacheStats;
}

/** How long an idle connection to an origin is kept for reuse (both origin clients). */
const ORIGIN_KEEPALIVE_MS = 4000;

const DENIED = Symbol('denied');
/** The 503's text for a connection over the caps (it is DENIED too, which keeps it off the fast path). */
const OVER_CAP = Symbol('overCap');
const AUTHED = Symbol('authed');
const SEEN_READ = Symbol('seenRead');
const IDLE_SINCE = Symbol('idleSince');
type ProxySocket = Socket & { [DENIED]?: boolean; [OVER_CAP]?: string; [AUTHED]?: string; [SEEN_READ]?: number; [IDLE_SINCE]?: number; _httpMessage?: unknown };

const NAME = 'Tomlinson';
const HIT = `${NAME}; hit`;
const REVALIDATED = `${NAME}; fwd=stale; fwd-status=304`;
/** RFC 9110 §9.2.1's safe methods; every other one invalidates (RFC 9111 §4.4: "including methods whose safety is unknown"). */
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
const CONDITIONALS = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range'];
/** Request fields never forwarded beyond those RFC 9110 calls hop-by-hop: Host is rewritten from
 * the target (RFC 9112 §3.2.2), Expect is answered by Node itself. */
const NOT_FORWARDED = ['host', 'expect'];
/** Request fields left off our own conditional request: the client's conditionals are answered by
 * us from the refreshed entry (RFC 9111 §4.3.2); the origin gets our validators. */
const NOT_REVALIDATED = [...NOT_FORWARDED, ...CONDITIONALS];

/**
 * One origin request that later requests for the same URL may wait for. The promise is made only
 * when a second request actually arrives: most misses are never shared, and a promise plus its
 * resolver per miss was measurable.
 */
class Flight<K> {
  private promise: Promise<boolean> | undefined;
  private resolve: ((v: boolean) => void) | undefined;
  private settled = false;
  private value = false;

  /** Registers the flight under `key` until it settles. */
  constructor(
    private readonly map: Map<K, Flight<K>>,
    private readonly key: K,
  ) {
    map.set(key, this);
  }

  /** Resolves once the first request's outcome is known (for a revalidation: true when a 304 refreshed the entry). */
  wait(): Promise<boolean> {
    if (this.settled) return Promise.resolve(this.value);
    return (this.promise ??= new Promise<boolean>((r) => (this.resolve = r)));
  }

  /** Marks the flight done (idempotent; later requests start one of their own). */
  settle(value = false): void {
    if (this.settled) return;
    this.settled = true;
    this.value = value;
    if (this.map.get(this.key) === this) this.map.delete(this.key);
    this.resolve?.(value);
  }
}

/** What the origin paths tell about their progress: a Flight, or NO_FLIGHT when none waits. */
interface Settle {
  settle(value?: boolean): void;
}

const NO_FLIGHT: Settle = { settle: () => undefined };

/** A request target seen before: its normalised URL (the primary cache key) and what an origin
 * request needs, parsed once per URL rather than once per request. */
interface Target {
  /** The normalised absolute URL. */
  readonly url: string;
  /** `host[:port]` of the URL: the Host field of origin requests and of the cache policy's request. */
  readonly host: string;
  /** `http://host[:port]`, the undici origin. */
  readonly origin: string;
  /** The host name or address (IPv6 without brackets) and the port, for the lean client. */
  readonly hostname: string;
  readonly port: number;
  /** Path and query. */
  readonly path: string;
  /** When the host is an IP address the origin guard refuses: the 403's text. */
  readonly refused: string | undefined;
}

/** The head of an origin response as a promise, for the paths that await it (a class, not a named closure per request). */
class PendingHead implements HeadListener {
  readonly promise: Promise<OriginExchange>;
  private resolve!: (x: OriginExchange) => void;
  private reject!: (e: OriginFailure) => void;

  /** `proxy`, `req` and `res`: the request being answered, to which interim responses go. */
  constructor(
    private readonly proxy?: CachingProxy,
    private readonly req?: IncomingMessage,
    private readonly res?: ServerResponse,
  ) {
    this.promise = new Promise<OriginExchange>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  head(x: OriginExchange): void {
    this.resolve(x);
  }

  failed(err: Error): void {
    this.reject(originFailure(err));
  }

  interim(status: number, headers: Record<string, string | string[]>): void {
    if (this.proxy) this.proxy.forwardInterim(this.req!, this.res!, status, headers);
  }
}

/** One conditional request for a stale entry: what its answer is needed for (one object, not a closure per request). */
class Revalidation implements HeadListener {
  constructor(
    private readonly proxy: CachingProxy,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly obj: CachedObject,
    readonly evalReq: CachePolicy.HttpRequest,
    readonly target: Target,
    readonly flight: Settle,
  ) {}

  head(x: OriginExchange): void {
    this.proxy.revalidationAnswered(this, x);
  }

  failed(err: Error): void {
    this.proxy.revalidationFailed(this, err);
  }

  interim(status: number, headers: Record<string, string | string[]>): void {
    this.proxy.forwardInterim(this.req, this.res, status, headers);
  }
}

function hasConditional(h: IncomingMessage['headers']): boolean {
  for (const n of CONDITIONALS) if (h[n] !== undefined) return true;
  return false;
}

/** An origin failure mapped to the status and short text the client gets. */
class OriginFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function originFailure(e: unknown): OriginFailure {
  if (e instanceof OriginFailure) return e;
  const err = e as { code?: string; cause?: { code?: string }; message?: string };
  const code = err?.code ?? err?.cause?.code ?? '';
  switch (code) {
    case 'EORIGINFORBIDDEN':
      return new OriginFailure(403, (e instanceof OriginRefused ? e : err.cause instanceof OriginRefused ? err.cause : undefined)?.message ?? 'origin address refused by the proxy');
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
    case 'ETIMEDOUT':
      return new OriginFailure(504, 'origin did not answer in time');
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return new OriginFailure(502, 'origin host not found');
    case 'ECONNREFUSED':
      return new OriginFailure(502, 'origin refused the connection');
    default:
      return new OriginFailure(502, `origin error${code ? ` (${code})` : ''}`);
  }
}

function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/** Streams a stored body from the object tier to the client (and into the cache), with backpressure on both. */
function relay(src: Readable, res: ServerResponse, writer?: BodyWriter): Promise<{ bytes: number; complete: boolean }> {
  return new Promise((resolve) => {
    let bytes = 0;
    let done = false;
    const finish = (complete: boolean): void => {
      if (done) return;
      done = true;
      res.off('close', onClose);
      resolve({ bytes, complete });
    };
    const onClose = (): void => {
      if (!res.writableFinished) {
        src.destroy();
        finish(false);
      }
    };
    src.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      const a = res.write(chunk);
      const b = writer ? writer.write(chunk) : true;
      if (!a || !b) {
        src.pause();
        void Promise.all([a ? undefined : waitDrain(res), b ? undefined : writer!.drain()]).then(() => {
          if (!done) src.resume();
        });
      }
    });
    src.once('end', () => {
      res.end();
      finish(true);
    });
    src.once('error', () => {
      finish(false);
      // The client must see the response cut short, not a well-formed shorter body.
      res.destroy();
    });
    res.on('close', onClose);
  });
}

/** Starts the proxy on config.listenHost:config.proxy.port. */
export async function startProxy(ctx: ListenerContext, options: ProxyOptions = {}): Promise<RunningProxy> {
  const proxy = new CachingProxy(ctx, options);
  return proxy.listen(options.port ?? ctx.config.proxy.port);
}

/** One proxy process: the HTTP server, the cache and the origin agent. */
class CachingProxy {
  private readonly cfg: ListenerContext['config']['proxy'];
  private readonly log: ListenerContext['log'];
  private readonly store: CacheStore;
  private readonly stats: CacheStats;
  private readonly agent: Agent;
  private readonly lean: LeanClient;
  private readonly guard: OriginGuard;
  private readonly allowed: ReturnType<typeof cidrList>;
  private readonly auth: ProxyAuth | undefined;
  private readonly connectPorts: Set<number>;
  private readonly via: string;
  private readonly loopToken: string;
  private readonly now: () => number;
  private readonly inflight = new Map<string, Flight<string>>();
  private readonly revalidating = new Set<CachedObject>();
  /** Synchronous revalidations under way, by stored response; resolve true when a 304 refreshed it. */
  private readonly revalidations = new Map<CachedObject, Flight<CachedObject>>();
  /** Targets by the request-target as the client sent it. */
  private readonly normalized = new Map<string, Target>();
  private readonly tunnels = new Set<Socket>();
  private readonly server;
  private healthy = false;
  private readonly stopPurgeWatch: () => void;
  /** Client connections served as HTTP (not tunnels), for sweepIdle. */
  private readonly clients = new Set<ProxySocket>();
  private readonly keepAliveMs: number;
  private readonly idleSweep: NodeJS.Timeout;
  private readonly limits: ConnectionLimits;
  /** The access log (one line per request, or only refusals and errors: see access-log.ts). */
  private readonly access: ListenerContext['log'];

  constructor(private readonly ctx: ListenerContext, options: ProxyOptions) {
    const cfg = ctx.config.proxy;
    this.cfg = cfg;
    this.log = ctx.log.child({ c: 'proxy' });
    this.now = options.now ?? Date.now;
    this.store = new CacheStore({
      tables: ctx.storage.tables,
      blobs: ctx.storage.cache,
      log: this.log,
      memoryBytes: cfg.memoryBytes,
      cacheBytes: cfg.cacheBytes,
      maxObjectBytes: cfg.maxObjectBytes,
      heuristicCapSeconds: cfg.heuristicCapSeconds,
      admitHits: cfg.objectTierAdmitHits,
      // On local storage this process is the object tier's only writer (the embedded default
      // runs one proxy); on AWS every task writes the shared tier.
      sharedObjectTier: ctx.storage.family !== 'local',
      now: this.now,
    });
    this.stats = new CacheStats(ctx.storage.tables, ctx.metrics, this.log, { logMs: cfg.statsLogSeconds * 1000 });
    this.stopPurgeWatch = this.store.watchPurges(options.purgePollMs ?? 1000);
    this.guard = new OriginGuard({
      allowAll: cfg.allowPrivateOrigins,
      allowed: cfg.allowedOrigins,
      resolve: cfg.dnsServers.length > 0 ? dnsOriginResolver(cfg.dnsServers) : undefined,
    });
    if (cfg.allowPrivateOrigins) this.log.warn('the proxy may contact any origin address, metadata services included (proxy.allowPrivateOrigins)');
    this.allowed = cidrList(cfg.allowedClients);
    this.connectPorts = new Set(cfg.connectPorts.map(Number));
    // The comment carries a per-process token so that a request that comes back to us is seen as a loop.
    this.loopToken = `(Tomlinson ${randomBytes(4).toString('hex')})`;
    this.via = `1.1 ${ctx.config.hostname || 'tomlinson'} ${this.loopToken}`;
    if (cfg.requireAuth) {
      const check =
        options.authenticate ??
        (async (login: string, password: string) => (await new Accounts(ctx.storage.tables).authenticate(login, password)) !== undefined);
      this.auth = new ProxyAuth({ check });
    }
    this.agent = new Agent({
      connections: 512,
      keepAliveTimeout: ORIGIN_KEEPALIVE_MS,
      headersTimeout: cfg.originTimeoutMs,
      bodyTimeout: cfg.originTimeoutMs,
      connect: { timeout: cfg.originTimeoutMs, lookup: this.guard.lookup } as Agent.Options['connect'],
    });
    this.lean = new LeanClient({
      timeoutMs: cfg.originTimeoutMs,
      keepAliveMs: ORIGIN_KEEPALIVE_MS,
      // Origin heads as large as undici accepts by default.
      maxHeaderBytes: 16 * 1024,
      lookup: this.guard.lookup as LookupFunction,
      maxSockets: 512,
    });
    this.access = accessLogger(ctx.log);
    this.server = createServer({
      ServerResponse: accessLoggedResponse(this.access, cfg.accessLog),
      maxHeaderSize: cfg.maxHeaderBytes,
      headersTimeout: 30_000,
      // Bounds slow uploads too (a request body that trickles for five minutes is cut).
      requestTimeout: 300_000,
      // Idle keep-alive connections are closed by sweepIdle instead: Node's own keep-alive timeout
      // makes a new timer for every response and clears it at the next request (in interleaved
      // A/B runs of 1 KB hits, 2 to 3 of about 35 µs of CPU per request; one run of three showed
      // no difference).
      keepAliveTimeout: 0,
      noDelay: true,
    });
    this.limits = new ConnectionLimits(cfg.maxConnections, cfg.maxConnectionsPerClient, this.log, ctx.metrics);
    this.server.on('connection', (socket: ProxySocket) => {
      const over = this.limits.admit(socket);
      if (over) socket[OVER_CAP] = over;
      socket[DENIED] = over !== undefined || !clientAllowed(this.allowed, socket.remoteAddress);
      socket[SEEN_READ] = 0;
      socket[IDLE_SINCE] = Date.now();
      this.clients.add(socket);
      ctx.metrics.connectionsTotal.inc({ listener: 'proxy' });
      ctx.metrics.connections.inc({ listener: 'proxy' });
      socket.once('close', () => {
        this.clients.delete(socket);
        ctx.metrics.connections.dec({ listener: 'proxy' });
      });
    });
    this.keepAliveMs = options.keepAliveMs ?? 5000;
    this.idleSweep = setInterval(() => this.sweepIdle(), Math.min(1000, Math.max(50, this.keepAliveMs / 2)));
    this.idleSweep.unref();
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (this.tryFast(req, res)) return;
      this.onRequest(req, res).catch((e: unknown) => this.requestFailed(res, e));
    });
    this.server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.onConnect(req, socket as ProxySocket, head).catch((e: unknown) => {
        this.log.warn({ err: e }, 'tunnel failed');
        socket.destroy();
      });
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.onClientError(err, socket));
  }

  async listen(port: number): Promise<RunningProxy> {
    const host = this.ctx.config.listenHost;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.healthy = true;
    const addr = this.server.address();
    const actual = typeof addr === 'object' && addr ? addr.port : port;
    this.log.info({ host, port: actual }, 'proxy listening');
    return {
      name: 'proxy',
      addresses: [`proxy ${host}:${actual}`],
      port: actual,
      store: this.store,
      stats: this.stats,
      healthy: () => this.healthy,
      close: (graceMs?: number) => this.close(graceMs ?? 5000),
    };
  }

  private async close(graceMs: number): Promise<void> {
    this.healthy = false;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const timer = setTimeout(() => {
      this.server.closeAllConnections();
      for (const t of this.tunnels) t.destroy();
    }, graceMs);
    await closed;
    clearTimeout(timer);
    for (const t of this.tunnels) t.destroy();
    this.stopPurgeWatch();
    clearInterval(this.idleSweep);
    await this.stats.close();
    await this.store.close();
    this.lean.close();
    await this.agent.close().catch(() => undefined);
  }

  /**
   * Closes client connections that have been idle for keepAliveMs: nothing read from them and no
   * response under way (Node's `_httpMessage`, the response a server socket is writing) since
   * the sweep that last saw them active. Bytes arriving count as activity, so a slow request head
   * or upload is left to headersTimeout and requestTimeout.
   */
  private sweepIdle(): void {
    const now = Date.now(); // wall time: `this.now` may be a test's cache clock
    for (const s of this.clients) {
      if (s.bytesRead !== s[SEEN_READ] || s._httpMessage) {
        s[SEEN_READ] = s.bytesRead;
        s[IDLE_SINCE] = now;
      } else if (now - s[IDLE_SINCE]! >= this.keepAliveMs) {
        this.ctx.metrics.limitsHit.inc({ listener: 'proxy', limit: 'idle' });
        s.destroy();
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Entry points

  /** The end of a request whose handling threw: 500 if nothing was sent yet, else a cut response. */
  private requestFailed(res: ServerResponse, e: unknown): void {
    this.log.warn({ err: e }, 'proxy request failed');
    if (!res.headersSent) {
      this.stats.record('failed', 0, 0);
      this.short(res, 500, 'proxy error');
    } else res.destroy();
  }

  /** Waits on the rest of a request's handling when it continues asynchronously. */
  private settled(res: ServerResponse, p: void | Promise<void>): void {
    if (p) p.catch((e: unknown) => this.requestFailed(res, e));
  }

  /** The target of a normalised URL parsed by normalizeTarget. */
  private target(parsed: URL): Target {
    const host = parsed.hostname.startsWith('[') ? parsed.hostname.slice(1, -1) : parsed.hostname;
    return {
      url: parsed.href,
      host: parsed.host,
      origin: parsed.origin,
      hostname: host,
      port: parsed.port ? Number(parsed.port) : 80,
      path: parsed.pathname + parsed.search,
      refused: this.originRefusal(host),
    };
  }

  /** The 403 text when `host` is an IP address the origin guard refuses (names are checked after DNS, in the lookup). */
  private originRefusal(host: string): string | undefined {
    if (isIP(host) === 0) return undefined;
    const r = this.guard.check(host);
    return r && refusalText(host, r);
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    // RFC 6585 §5: 431 for an oversized head; every other parse error is a 400 (RFC 9112 §11.2:
    // a message with both Transfer-Encoding and Content-Length, or invalid ones, is refused).
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const text = status === 431 ? 'request header fields too large' : status === 408 ? 'request timeout' : `bad request (${err.code ?? 'malformed'})`;
    this.ctx.metrics.limitsHit.inc({ listener: 'proxy', limit: status === 431 ? 'header-size' : status === 408 ? 'timeout' : 'malformed' });
    this.stats.record('refused', 0, 0);
    this.access.info({ client: socket.remoteAddress, status, reason: text });
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${text.length + 1}\r\nConnection: close\r\n\r\n${text}\n`,
    );
  }

  /** Access checks shared by requests and CONNECT; undefined when allowed, else the refusal. */
  private async refuse(req: IncomingMessage, socket: ProxySocket): Promise<{ status: number; text: string } | undefined> {
    // Over the connection caps: 503 and the connection closes (limits.ts counted it).
    if (socket[OVER_CAP]) return { status: 503, text: socket[OVER_CAP] };
    if (socket[DENIED]) {
      this.ctx.metrics.limitsHit.inc({ listener: 'proxy', limit: 'client-address' });
      return { status: 403, text: 'client address not allowed to use this proxy (proxy.allowedClients)' };
    }
    if (this.auth) {
      const h = req.headers['proxy-authorization'];
      if (h === undefined || socket[AUTHED] !== h) {
        if (!(await this.auth.verify(h))) {
          this.ctx.metrics.limitsHit.inc({ listener: 'proxy', limit: 'auth' });
          return { status: 407, text: 'proxy authentication required (proxy.requireAuth)' };
        }
        socket[AUTHED] = h;
      }
    }
    return undefined;
  }

  /**
   * The fast paths, synchronous (no promise per request): an allowed client, a URL seen before, a
   * memory-tier entry and a request that adds no conditions. A fresh entry is served at once; a
   * stale one is revalidated with callbacks from here to the 304's answer. Anything else returns
   * false and takes the full path, which makes the same checks again.
   */
  private tryFast(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.auth || (req.socket as ProxySocket)[DENIED]) return false;
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') return false;
    const t = this.normalized.get(req.url ?? '');
    if (t === undefined) return false;
    const h = req.headers;
    if (h.via !== undefined || h['cache-control'] !== undefined || h.pragma !== undefined || h.range !== undefined) return false;
    if (h['if-none-match'] !== undefined || h['if-modified-since'] !== undefined) return false;
    const m = this.store.memoryGet(t.url, h);
    if (m === undefined) return false;
    if (m.freshUntil > this.now()) {
      this.fastHit(req, res, m);
      return true;
    }
    return this.tryFastRevalidate(req, res, m, t);
  }

  /**
   * A stale memory entry and a plain request (none of the fields the policy reads of a request:
   * no Cache-Control, Pragma, Authorization or conditionals, and an entry without Vary), so the
   * policy is asked with the Host field alone and decides as it would with all of the client's.
   * Requests arriving while the entry's revalidation is out take the full path, which waits for it.
   */
  private tryFastRevalidate(req: IncomingMessage, res: ServerResponse, m: CachedObject, t: Target): boolean {
    const h = req.headers;
    if (m.vary.length > 0 || m.status === 206 || h.authorization !== undefined || hasConditional(h)) return false;
    const collapse = this.cfg.collapseWaitMs > 0;
    if (collapse && this.revalidations.has(m)) return false;
    const evalReq: CachePolicy.HttpRequest = { url: t.url, method: 'GET', headers: { host: t.host } };
    const r = m.policy.evaluateRequest(evalReq);
    if (!r.revalidation || !r.revalidation.synchronous) return false;
    this.revalidateOnce(req, res, m, evalReq, t, collapse ? new Flight(this.revalidations, m) : NO_FLIGHT);
    return true;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const sock = req.socket as ProxySocket;
    if (sock[DENIED] || this.auth) {
      const r = await this.refuse(req, sock);
      if (r) {
        this.refused(res, r.status, r.text, r.status === 407 ? { 'proxy-authenticate': 'Basic realm="tomlinson", charset="UTF-8"' } : r.status === 503 ? { connection: 'close' } : undefined);
        return;
      }
    }
    // RFC 9110 §7.6.3: Via lets a proxy detect a forwarding loop (e.g. a URL naming the proxy itself).
    const via = req.headers.via;
    if (via !== undefined && via.includes(this.loopToken)) {
      this.refused(res, 508, 'forwarding loop detected');
      return;
    }
    const raw = req.url ?? '';
    let target = this.normalized.get(raw);
    if (target === undefined) {
      if (!raw.startsWith('http://')) {
        this.refused(res, 400, raw.startsWith('https://') ? 'use CONNECT for https URLs' : 'this is a proxy: send the absolute URL');
        return;
      }
      try {
        target = this.target(normalizeTarget(raw));
      } catch {
        this.refused(res, 400, 'invalid URL');
        return;
      }
      if (this.normalized.size >= 10_000) this.normalized.clear();
      this.normalized.set(raw, target);
    }
    const url = target.url;
    const method = req.method ?? 'GET';
    if (method === 'GET' || method === 'HEAD') {
      // The hit fast path: memory tier, fresh, a request that adds no conditions (no I/O).
      const h = req.headers;
      const m = this.store.memoryGet(url, h);
      if (m !== undefined && m.freshUntil > this.now() && h['cache-control'] === undefined && h.pragma === undefined) {
        if (h.range === undefined && h['if-none-match'] === undefined && h['if-modified-since'] === undefined) return this.fastHit(req, res, m);
        return this.serveStored(req, res, m, HIT, 'hit');
      }
      return this.cacheable(req, res, url, target, m);
    }
    if (!SAFE.has(method)) return this.unsafe(req, res, url, target);
    return this.pass(req, res, target, `${NAME}; fwd=method`);
  }

  // ---------------------------------------------------------------------------------------------
  // GET and HEAD

  private async cacheable(req: IncomingMessage, res: ServerResponse, url: string, target: Target, m: CachedObject | undefined): Promise<void> {
    const obj = this.usable(m ?? (await this.store.lookup(url, req.headers)), req);
    if (obj) {
      const evalReq = { url, method: 'GET', headers: { ...req.headers, host: target.host } as CachePolicy.Headers };
      const r = obj.policy.evaluateRequest(evalReq);
      if (!r.revalidation) return this.serveStored(req, res, obj, HIT, 'hit');
      if (r.response && !r.revalidation.synchronous) {
        // RFC 5861 §3: serve stale while one background request revalidates.
        this.backgroundRevalidate(obj, evalReq, target);
        return this.serveStored(req, res, obj, `${HIT}; detail=stale-while-revalidate`, 'stale');
      }
      return this.revalidate(req, res, obj, evalReq, target);
    }
    // RFC 9111 §5.2.1.7: only-if-cached and nothing stored: 504.
    if (/only-if-cached/i.test(headerString(req.headers['cache-control']) ?? '')) {
      this.stats.record('miss', 0, 0);
      return this.short(res, 504, 'not in cache (only-if-cached)');
    }
    if (req.method === 'HEAD') return this.pass(req, res, target, `${NAME}; fwd=uri-miss`, 'miss');
    return this.miss(req, res, url, target, false);
  }

  /** A miss: one origin request per URL at a time, the others wait for it (bounded) and reuse it. */
  private async miss(req: IncomingMessage, res: ServerResponse, url: string, target: Target, collapsed: boolean): Promise<void> {
    const h = req.headers;
    const collapsible = !collapsed && this.cfg.collapseWaitMs > 0 && !hasConditional(h) && h.authorization === undefined;
    if (collapsible) {
      const pending = this.inflight.get(url);
      if (pending) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([pending.wait(), new Promise<void>((resolve) => (timer = setTimeout(resolve, this.cfg.collapseWaitMs)))]);
        clearTimeout(timer);
        const obj = this.usable(await this.store.lookup(url, h), req);
        if (obj && !obj.policy.evaluateRequest({ url, method: 'GET', headers: { ...h, host: target.host } as CachePolicy.Headers }).revalidation) {
          return this.serveStored(req, res, obj, `${HIT}; detail=collapsed`, 'hit');
        }
        return this.miss(req, res, url, target, true);
      }
      const flight = new Flight(this.inflight, url);
      try {
        await this.fetchAndDeliver(req, res, url, target, flight);
      } finally {
        flight.settle();
      }
      return;
    }
    return this.fetchAndDeliver(req, res, url, target, NO_FLIGHT);
  }

  private async fetchAndDeliver(req: IncomingMessage, res: ServerResponse, url: string, target: Target, flight: Settle): Promise<void> {
    let resp: OriginExchange;
    try {
      resp = await this.origin(target, 'GET', this.forwardHeaders(req, target), this.requestBody(req), req, res);
    } catch (e) {
      flight.settle();
      return this.failed(res, e);
    }
    return this.deliver(req, res, url, resp, 'uri-miss', 'miss', flight);
  }

  /** Sends a full origin response to the client, storing it when RFC 9111 §3 allows. */
  private async deliver(
    req: IncomingMessage,
    res: ServerResponse,
    url: string,
    resp: OriginExchange,
    fwd: string,
    outcome: CacheOutcome,
    flight: Settle,
  ): Promise<void> {
    const status = resp.statusCode;
    const rh = resp.headers;
    const stored = this.storeDecision(req, url, status, rh);
    if (!stored) flight.settle();
    res.writeHead(status, this.clientFields(rh, `${NAME}; fwd=${fwd}; fwd-status=${status}${stored ? '; stored' : ''}`));
    const writer = stored ? this.store.writer(url, stored.variant, stored.names, stored.policy, stored.length) : undefined;
    const { bytes, complete } = await resp.relay(res, writer);
    this.stats.record(outcome, 0, bytes);
    if (writer) {
      if (complete) await writer.end().catch((e: unknown) => this.log.warn({ err: e }, 'cache store failed'));
      else writer.abort();
    }
    flight.settle();
  }

  /** An origin response's fields for the client as a flat name/value list (what writeHead takes
   * fastest), with our Via (RFC 9110 §7.6.3) and Cache-Status (RFC 9211) added; `rh` is unchanged. */
  private clientFields(rh: Record<string, string | string[]>, cacheStatus: string): (string | string[])[] {
    const out: (string | string[])[] = [];
    let via = this.via;
    for (const k in rh) {
      const v = rh[k];
      if (k === 'via') via = `${Array.isArray(v) ? v.join(', ') : v}, ${this.via}`;
      else out.push(k, v);
    }
    out.push('via', via, 'cache-status', cacheStatus);
    return out;
  }

  /** The policy and keys to store a response under, or undefined when it must not be stored. */
  private storeDecision(
    req: IncomingMessage,
    url: string,
    status: number,
    rh: Record<string, string | string[]>,
  ): { policy: CachePolicy; names: string[]; variant: string; length: number | undefined } | undefined {
    if (req.method !== 'GET' || status === 304) return undefined;
    const names = varyNames(rh.vary);
    // RFC 9111 §4.1: "A stored response with a Vary header field value containing a member "*"
    // always fails to match", so it is not worth storing.
    if (names.includes('*')) return undefined;
    // Set-Cookie does not prevent storing (RFC 9111 §7.3); the policy leaves it out of the stored
    // response (core/cache/entry.ts says why), so a hit never replays another user's cookie.
    let cl = rh['content-length'] === undefined ? undefined : Number(headerString(rh['content-length']));
    if (cl !== undefined && (!Number.isFinite(cl) || cl > this.cfg.maxObjectBytes)) return undefined;
    // RFC 9111 §3.3: a 206 may be stored by a cache that supports Range; we store single-part
    // ones (one Content-Range) and use them only for Range requests they cover (see usable()).
    if (status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headerString(rh['content-range']) ?? '');
      const n = m ? Number(m[2]) - Number(m[1]) + 1 : 0;
      if (!m || n <= 0 || (cl !== undefined && cl !== n) || (m[3] !== '*' && Number(m[2]) >= Number(m[3]))) return undefined;
      cl = n;
    } else if (rh['content-range'] !== undefined) return undefined;
    // The policy keeps `rh` itself: nothing changes it afterwards (clientFields copies).
    const policy = this.store.policy({ url, method: 'GET', headers: this.policyRequestHeaders(req, url, names) }, { status, headers: rh as CachePolicy.Headers });
    if (!policy.storable()) return undefined;
    return { policy, names, variant: variantKey(names, req.headers), length: cl };
  }

  /** Only what the policy needs of the request: Host, its cache directives, whether it carried
   * Authorization (RFC 9111 §3.5), and the fields the response varies on. */
  private policyRequestHeaders(req: IncomingMessage, url: string, names: string[]): CachePolicy.Headers {
    const h = req.headers;
    // The URL is normalised (`http://host[:port]/...`, no userinfo): its authority ends at the next '/'.
    const out: CachePolicy.Headers = { host: url.slice(7, url.indexOf('/', 7)) };
    if (h['cache-control'] !== undefined) out['cache-control'] = h['cache-control'];
    if (h.pragma !== undefined) out.pragma = h.pragma;
    if (h.authorization !== undefined) out.authorization = '[present]';
    for (const n of names) if (h[n] !== undefined) out[n] = headerString(h[n]);
    return out;
  }

  /**
   * RFC 9111 §4.3: a stale entry is validated with the origin before use. Requests for the same
   * stored response that arrive while its conditional request is outstanding wait for it (bounded
   * by collapseWaitMs) and, when it ends in a 304, are answered from the freshened entry: the
   * response was validated with the origin after they arrived, which is what RFC 9111 §4.2.4 asks
   * before reuse. This is Squid's collapsed revalidation ("concurrent" meaning received after the
   * first request's headers and before the origin's response headers) and RFC 9211 §2.6 names it
   * `collapsed` in Cache-Status. A client that sends its own Cache-Control/Pragma or credentials
   * gets a revalidation of its own.
   */
  private async revalidate(req: IncomingMessage, res: ServerResponse, obj: CachedObject, evalReq: CachePolicy.HttpRequest, target: Target): Promise<void> {
    const h = req.headers;
    if (this.cfg.collapseWaitMs <= 0 || h.authorization !== undefined || h['cache-control'] !== undefined || h.pragma !== undefined) {
      return this.revalidateOnce(req, res, obj, evalReq, target, NO_FLIGHT);
    }
    const pending = this.revalidations.get(obj);
    if (pending) {
      let timer: NodeJS.Timeout | undefined;
      const refreshed = await Promise.race([pending.wait(), new Promise<boolean>((resolve) => (timer = setTimeout(resolve, this.cfg.collapseWaitMs, false)))]);
      clearTimeout(timer);
      if (refreshed) return this.serveStored(req, res, obj, `${NAME}; fwd=stale; fwd-status=304; collapsed`, 'revalidated');
      return this.revalidateOnce(req, res, obj, evalReq, target, NO_FLIGHT);
    }
    // Requests arriving after the origin answered start a revalidation of their own.
    return this.revalidateOnce(req, res, obj, evalReq, target, new Flight(this.revalidations, obj));
  }

  /**
   * One conditional request to the origin, answered through callbacks (see revalidationAnswered);
   * the flight settles true as soon as a 304 has refreshed the entry, false on any other outcome.
   */
  private revalidateOnce(req: IncomingMessage, res: ServerResponse, obj: CachedObject, evalReq: CachePolicy.HttpRequest, target: Target, flight: Settle): void {
    const x = new OriginExchange(new Revalidation(this, req, res, obj, evalReq, target, flight));
    this.dispatch(target, 'GET', this.revalidationHeaders(req, obj, evalReq, target.host), undefined, x);
  }

  /** The origin's answer to a revalidation (called from the origin's parser callback: nothing may throw out of here). */
  revalidationAnswered(v: Revalidation, x: OriginExchange): void {
    const { req, res, obj, evalReq, flight } = v;
    try {
      const status = x.statusCode;
      if (status === 304) {
        x.discard();
        const r = obj.policy.revalidatedPolicy(evalReq, { status, headers: this.validated(obj, x.headers) });
        if (!r.modified && r.matches) {
          this.store.refresh(obj, r.policy);
          flight.settle(true);
          return this.settled(res, this.serveStored(req, res, obj, REVALIDATED, 'revalidated'));
        }
        flight.settle(false);
        return this.settled(res, this.miss(req, res, obj.url, v.target, true));
      }
      flight.settle(false);
      if (status >= 500 && this.staleIfError(obj, evalReq, status)) {
        x.discard();
        return this.settled(res, this.serveStored(req, res, obj, `${HIT}; detail=stale-if-error; fwd-status=${status}`, 'stale'));
      }
      this.settled(res, this.deliver(req, res, obj.url, x, 'stale', 'miss', NO_FLIGHT));
    } catch (e) {
      flight.settle(false);
      x.abort();
      this.requestFailed(res, e);
    }
  }

  /** A revalidation that failed before the origin answered: stale-if-error (RFC 5861 §4), else 502/504. */
  revalidationFailed(v: Revalidation, err: Error): void {
    const { req, res, obj, evalReq, flight } = v;
    flight.settle(false);
    try {
      if (this.staleIfError(obj, evalReq, undefined)) return this.settled(res, this.serveStored(req, res, obj, `${HIT}; detail=stale-if-error`, 'stale'));
      this.failed(res, err);
    } catch (e) {
      this.requestFailed(res, e);
    }
  }

  /**
   * The 304's fields for selecting the stored response (RFC 9111 §4.3.4). Many origins send a 304
   * without ETag or Last-Modified; since our request was conditional on exactly the stored
   * validators, such a 304 is about the stored response, so it is given those validators.
   */
  private validated(obj: CachedObject, rh: Record<string, string | string[]>): CachePolicy.Headers {
    if (rh.etag !== undefined || rh['last-modified'] !== undefined) return rh as CachePolicy.Headers;
    const h: CachePolicy.Headers = { ...rh };
    const etag = obj.etag;
    const lm = obj.header('last-modified');
    if (etag) h.etag = etag;
    else if (lm) h['last-modified'] = lm;
    return h;
  }

  /** RFC 5861 §4: may the stale entry answer because the origin failed? (asked of the library) */
  private staleIfError(obj: CachedObject, evalReq: CachePolicy.HttpRequest, status: number | undefined): boolean {
    // RFC 9111 §5.2.2.2: with must-revalidate (or proxy-revalidate, §5.2.2.8) a cache that cannot
    // reach the origin MUST answer with an error, whatever stale-if-error says.
    const cc = obj.header('cache-control') ?? '';
    if (/(^|,)\s*(must|proxy)-revalidate\s*(,|$)/i.test(cc)) return false;
    try {
      const r = obj.policy.revalidatedPolicy(evalReq, status === undefined ? undefined : { status, headers: {} });
      return !r.modified && r.policy === obj.policy;
    } catch {
      return false;
    }
  }

  private revalidationHeaders(req: IncomingMessage, obj: CachedObject, evalReq: CachePolicy.HttpRequest, host: string): Record<string, string | string[]> {
    // One copy of the client's fields (end-to-end, without its conditionals); the library adds the
    // validators to a copy of its own, without hop-by-hop fields.
    const base = endToEnd(req.headers, NOT_REVALIDATED);
    base.host = host;
    const h = obj.policy.revalidationHeaders({ url: evalReq.url, method: 'GET', headers: base as CachePolicy.Headers }) as Record<string, string | string[]>;
    addVia(h, this.via);
    return h;
  }

  private backgroundRevalidate(obj: CachedObject, evalReq: CachePolicy.HttpRequest, target: Target): void {
    if (this.revalidating.has(obj)) return;
    this.revalidating.add(obj);
    const headers = endToEnd(obj.policy.revalidationHeaders({ url: evalReq.url, method: 'GET', headers: { host: target.host } }) as HeaderMap, NOT_FORWARDED);
    headers.host = target.host;
    addVia(headers, this.via);
    void (async () => {
      try {
        const resp = await this.origin(target, 'GET', headers);
        const rh = resp.headers;
        if (resp.statusCode === 304) {
          resp.discard();
          const r = obj.policy.revalidatedPolicy(evalReq, { status: 304, headers: this.validated(obj, rh) });
          if (!r.modified && r.matches) this.store.refresh(obj, r.policy);
          return;
        }
        const policy = this.store.policy({ url: obj.url, method: 'GET', headers: { host: target.host } }, { status: resp.statusCode, headers: rh as CachePolicy.Headers });
        const names = varyNames(rh.vary);
        const cl = rh['content-length'] === undefined ? undefined : Number(headerString(rh['content-length']));
        const ok = resp.statusCode < 500 && resp.statusCode !== 206 && names.length === 0 && policy.storable();
        const writer = ok ? this.store.writer(obj.url, '', [], policy, cl) : undefined;
        if (await resp.absorb(writer)) await writer?.end();
        else writer?.abort();
      } catch (e) {
        this.log.debug({ err: e, url: obj.url }, 'background revalidation failed');
      } finally {
        this.revalidating.delete(obj);
      }
    })();
  }

  // ---------------------------------------------------------------------------------------------
  // Serving stored responses

  /** A fresh full 200-style hit from memory: precomputed header list, one write. */
  private fastHit(req: IncomingMessage, res: ServerResponse, obj: CachedObject): void {
    const now = this.now();
    const second = Math.floor(now / 1000);
    let lines = obj.hitLines;
    if (lines === undefined || obj.hitSecond !== second) {
      lines = [];
      obj.servedFields(lines);
      lines.push('via', this.via, 'cache-status', HIT, 'content-length', String(obj.size));
      obj.hitLines = lines;
      obj.hitSecond = second;
    }
    res.writeHead(obj.status, lines);
    if (now - obj.touchedAt >= 60_000) this.store.touch(obj);
    if (!obj.persisted) this.store.used(obj);
    if (req.method === 'HEAD') {
      res.end();
      this.stats.record('hit', 0, 0);
    } else {
      res.end(obj.body);
      this.stats.record('hit', obj.size, 0);
    }
  }

  /**
   * Serves a stored response, answering the client's conditionals and Range from it; synchronous
   * when the body is in memory, a promise when it streams from the object tier.
   */
  private serveStored(req: IncomingMessage, res: ServerResponse, obj: CachedObject, cacheStatus: string, outcome: CacheOutcome): void | Promise<void> {
    const h = req.headers;
    this.store.used(obj);
    // A flat name/value list (writeHead's fastest form).
    const out: string[] = [];
    obj.servedFields(out);
    out.push('via', this.via, 'cache-status', cacheStatus);
    if (obj.status === 206) return this.servePart(req, res, obj, out, outcome);
    if ((h['if-none-match'] !== undefined || h['if-modified-since'] !== undefined) && obj.status === 200) {
      if (notModified(h, obj.etag, obj.header('last-modified'), obj.header('date'))) {
        res.writeHead(304, out);
        res.end();
        this.stats.record(outcome, 0, 0);
        return;
      }
    }
    const head = req.method === 'HEAD';
    let range: { start: number; end: number } | undefined;
    if (h.range !== undefined && obj.status === 200 && ifRangeMatches(headerString(h['if-range']), obj.etag, obj.header('last-modified'))) {
      const r = parseRange(headerString(h.range), obj.size);
      if (r.kind === 'unsatisfiable') {
        this.stats.record(outcome, 0, 0);
        return this.short(res, 416, 'range not satisfiable', { 'content-range': `bytes */${obj.size}`, 'cache-status': cacheStatus });
      }
      if (r.kind === 'range') {
        range = { start: r.start, end: r.end };
        out.push('content-range', `bytes ${r.start}-${r.end}/${obj.size}`);
      }
    }
    out.push('content-length', String(range ? range.end - range.start + 1 : obj.size));
    const status = range ? 206 : obj.status;
    if (head) {
      res.writeHead(status, out);
      res.end();
      this.stats.record(outcome, 0, 0);
      return;
    }
    const mem = obj.body;
    if (mem) {
      const body = range ? mem.subarray(range.start, range.end + 1) : mem;
      res.writeHead(status, out);
      res.end(body);
      this.stats.record(outcome, body.length, 0);
      return;
    }
    return this.serveBlob(req, res, obj, status, out, range, outcome);
  }

  /** The stored response if it may answer `req`: a stored part (206) only answers a Range request it covers. */
  private usable(obj: CachedObject | undefined, req: IncomingMessage): CachedObject | undefined {
    if (obj === undefined || obj.status !== 206) return obj;
    return this.partRange(obj, req) ? obj : undefined;
  }

  /**
   * The range of a stored part that answers `req` (RFC 9111 §3.3: "the request is partial and
   * specifies a range wholly within the incomplete response"): a GET with one byte range, no
   * validator conditions and an If-Range, if any, that matches; undefined otherwise.
   */
  private partRange(obj: CachedObject, req: IncomingMessage): { start: number; end: number; length: number } | undefined {
    const h = req.headers;
    const part = obj.part;
    if (!part || req.method !== 'GET' || h.range === undefined) return undefined;
    if (h['if-none-match'] !== undefined || h['if-modified-since'] !== undefined || h['if-match'] !== undefined || h['if-unmodified-since'] !== undefined) return undefined;
    if (h['if-range'] !== undefined && !ifRangeMatches(headerString(h['if-range']), obj.etag, obj.header('last-modified'))) return undefined;
    let start: number;
    let end: number;
    if (part.length < 0) {
      const m = /^bytes=(\d+)-(\d+)$/.exec(h.range);
      if (!m) return undefined;
      [start, end] = [Number(m[1]), Number(m[2])];
    } else {
      const r = parseRange(h.range, part.length);
      if (r.kind !== 'range') return undefined;
      ({ start, end } = r);
    }
    if (start < part.start || end > part.end || end < start) return undefined;
    return { start, end, length: part.length };
  }

  /** serveStored for a stored part (206): the requested range of it. */
  private servePart(req: IncomingMessage, res: ServerResponse, obj: CachedObject, out: string[], outcome: CacheOutcome): void | Promise<void> {
    const r = this.partRange(obj, req);
    const part = obj.part;
    // Callers choose a part only for a request it covers (usable()); anything else is fetched.
    if (!r || !part) return this.miss(req, res, obj.url, this.target(normalizeTarget(obj.url)), true);
    const n = r.end - r.start + 1;
    out.push('content-range', `bytes ${r.start}-${r.end}/${r.length < 0 ? '*' : r.length}`, 'content-length', String(n));
    const offset = { start: r.start - part.start, end: r.end - part.start };
    const mem = obj.body;
    if (mem) {
      res.writeHead(206, out);
      res.end(mem.subarray(offset.start, offset.end + 1));
      this.stats.record(outcome, n, 0);
      return;
    }
    return this.serveBlob(req, res, obj, 206, out, offset, outcome);
  }

  /** The rest of serveStored for a body in the object tier: streamed from its blob. */
  private async serveBlob(
    req: IncomingMessage,
    res: ServerResponse,
    obj: CachedObject,
    status: number,
    out: string[],
    range: { start: number; end: number } | undefined,
    outcome: CacheOutcome,
  ): Promise<void> {
    let body: Buffer | Readable;
    try {
      body = await this.store.openBody(obj, range);
    } catch (e) {
      // The object tier lost the body: forget the entry and fetch it again.
      this.log.warn({ err: e, url: obj.url }, 'stored body unreadable');
      this.store.memory.delete(obj);
      return this.miss(req, res, obj.url, this.target(normalizeTarget(obj.url)), true);
    }
    res.writeHead(status, out);
    if (Buffer.isBuffer(body)) {
      res.end(body);
      this.stats.record(outcome, body.length, 0);
      return;
    }
    const { bytes } = await relay(body, res);
    this.stats.record(outcome, bytes, 0);
  }

  // ---------------------------------------------------------------------------------------------
  // Other methods

  /** RFC 9111 §4.4: after a non-error (2xx, 3xx) response to an unsafe method, invalidate the
   * target URI and the Location and Content-Location URIs when they share its origin. */
  private async unsafe(req: IncomingMessage, res: ServerResponse, url: string, target: Target): Promise<void> {
    let resp: OriginExchange;
    try {
      resp = await this.origin(target, req.method!, this.forwardHeaders(req, target), this.requestBody(req), req, res);
    } catch (e) {
      return this.failed(res, e);
    }
    if (resp.statusCode < 400) {
      const urls = new Set([url]);
      for (const name of ['location', 'content-location']) {
        const v = headerString(resp.headers[name]);
        if (!v) continue;
        try {
          const u = new URL(v, target.url);
          if (u.origin === target.origin && u.protocol === 'http:') urls.add(normalizeUrl(u.href));
        } catch {
          // not a URL: nothing to invalidate
        }
      }
      for (const u of urls) await this.store.purge(u).catch((e: unknown) => this.log.warn({ err: e, url: u }, 'invalidation failed'));
    }
    return this.deliver(req, res, url, resp, 'method', 'bypass', NO_FLIGHT);
  }

  /** Forwards a request without caching (OPTIONS, HEAD misses, ...). */
  private async pass(req: IncomingMessage, res: ServerResponse, target: Target, cacheStatus: string, outcome: CacheOutcome = 'bypass'): Promise<void> {
    let resp: OriginExchange;
    try {
      resp = await this.origin(target, req.method!, this.forwardHeaders(req, target), this.requestBody(req), req, res);
    } catch (e) {
      return this.failed(res, e);
    }
    res.writeHead(resp.statusCode, this.clientFields(resp.headers, `${cacheStatus}; fwd-status=${resp.statusCode}`));
    const { bytes } = await resp.relay(res);
    this.stats.record(outcome, 0, bytes);
  }

  // ---------------------------------------------------------------------------------------------
  // Origins

  private forwardHeaders(req: IncomingMessage, target: Target): Record<string, string | string[]> {
    const h = endToEnd(req.headers, NOT_FORWARDED);
    h.host = target.host;
    addVia(h, this.via);
    return h;
  }

  private requestBody(req: IncomingMessage): Readable | undefined {
    const cl = req.headers['content-length'];
    if (req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0')) return req;
    return undefined;
  }

  /**
   * RFC 9110 §15.2: "A proxy MUST forward 1xx responses unless the proxy itself requested the
   * generation of the 1xx response" (101 excepted: the proxy never asks to upgrade), and "A server
   * MUST NOT send a 1xx response to an HTTP/1.0 client". A 100 is not sent twice: Node answers a
   * client's Expect: 100-continue itself (Expect is not forwarded, and undici refuses it).
   * Written with `_writeRaw`, as Node's own writeEarlyHints and writeProcessing do:
   * writeEarlyHints would refuse Link values it does not parse and drop other 1xx codes.
   */
  forwardInterim(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string | string[]>): void {
    const r = res as ServerResponse & { _sent100?: boolean; _writeRaw?: (data: string, encoding: BufferEncoding) => boolean };
    if (status === 101 || (status === 100 && r._sent100) || req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) return;
    if (res.headersSent || res.destroyed || typeof r._writeRaw !== 'function') return;
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Informational'}\r\n`;
    for (const name in headers) {
      const v = headers[name];
      if (name === 'via') continue;
      if (Array.isArray(v)) for (const one of v) head += `${name}: ${one}\r\n`;
      else head += `${name}: ${v}\r\n`;
    }
    const via = headerString(headers.via);
    head += `via: ${via ? `${via}, ${this.via}` : this.via}\r\n\r\n`;
    if (status === 100) r._sent100 = true;
    r._writeRaw.call(res, head, 'latin1');
  }

  /** An origin request; resolves once the response head has arrived, rejects with an OriginFailure
   * before it; interim responses go to `res` when given. */
  private origin(
    target: Target,
    method: string,
    headers: Record<string, string | string[]>,
    body?: Readable,
    req?: IncomingMessage,
    res?: ServerResponse,
  ): Promise<OriginExchange> {
    const head = res ? new PendingHead(this, req, res) : new PendingHead();
    this.dispatch(target, method, headers, body, new OriginExchange(head));
    return head.promise;
  }

  /** Sends an origin request whose head goes to `x`'s listener (a refused origin address fails it at once). */
  private dispatch(target: Target, method: string, headers: Record<string, string | string[]>, body: Readable | undefined, x: OriginExchange): void {
    if (target.refused) return x.onError(new OriginFailure(403, target.refused));
    // Bodiless GET and HEAD (revalidations, misses) take the lean client (lean.ts says why).
    if (body === undefined && (method === 'GET' || method === 'HEAD')) return this.lean.request(target.hostname, target.port, method, target.path, headers, x);
    this.agent.dispatch({ origin: target.origin, path: target.path, method: method as Dispatcher.HttpMethod, headers, body }, x);
  }

  /** The origin could not be reached or did not answer (502, 504), or its address is refused (403); counted apart from misses. */
  private failed(res: ServerResponse, e: unknown): void {
    const f = originFailure(e);
    this.stats.record(f.status === 403 ? 'refused' : 'failed', 0, 0);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    this.short(res, f.status, f.message);
  }

  /** A refusal by the proxy itself (client, loop, request-target), counted as such. */
  private refused(res: ServerResponse, status: number, text: string, extra?: Record<string, string>): void {
    this.stats.record('refused', 0, 0);
    this.short(res, status, text, extra);
  }

  /** A short plain-text answer from the proxy itself; the text is the access log line's reason. */
  private short(res: ServerResponse, status: number, text: string, extra?: Record<string, string>): void {
    if (res.headersSent || res.destroyed) return;
    (res as ReasonedResponse)[REASON] = text;
    const body = `${text}\n`;
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      'cache-control': 'no-store',
      via: this.via,
      ...extra,
    });
    res.end(body);
  }

  // ---------------------------------------------------------------------------------------------
  // CONNECT

  /** The access log line of a CONNECT: its refusal or failure, or the tunnel once it ends. */
  private tunnelLine(req: IncomingMessage, socket: Socket, status: number, start: number, sentBefore: number, reason: string | undefined): void {
    if (!this.cfg.accessLog && reason === undefined) return;
    const ms = Math.round((performance.now() - start) * 1000) / 1000;
    this.access.info({ client: socket.remoteAddress, method: 'CONNECT', url: loggedUrl(req.url), status, bytes: socket.bytesWritten - sentBefore, ms, reason });
  }

  private async onConnect(req: IncomingMessage, socket: ProxySocket, head: Buffer): Promise<void> {
    const start = performance.now();
    const sentBefore = socket.bytesWritten;
    const answer = (status: number, text: string, extra = ''): void => {
      const body = `${text}\n`;
      socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`);
      this.stats.record(status === 502 || status === 504 ? 'failed' : 'refused', 0, 0);
      this.tunnelLine(req, socket, status, start, sentBefore, text);
    };
    socket.on('error', () => socket.destroy());
    const r = await this.refuse(req, socket);
    if (r) return answer(r.status, r.text, r.status === 407 ? 'Proxy-Authenticate: Basic realm="tomlinson", charset="UTF-8"\r\n' : '');
    const t = authorityTarget(req.url ?? '');
    if (!t) return answer(400, 'CONNECT needs host:port');
    const { host, port } = t;
    if (!this.connectPorts.has(port)) return answer(403, `CONNECT to port ${port} is not allowed (proxy.connectPorts)`);
    const refused = this.originRefusal(host);
    if (refused) return answer(403, refused);
    const upstream = netConnect({ host, port, lookup: this.guard.lookup as never, timeout: this.cfg.originTimeoutMs });
    let open = false;
    this.clients.delete(socket); // a tunnel is not an idle HTTP connection
    this.tunnels.add(socket);
    const cleanup = (): void => {
      if (open && this.tunnels.has(socket)) this.tunnelLine(req, socket, 200, start, sentBefore, undefined);
      this.tunnels.delete(socket);
      upstream.destroy();
      socket.destroy();
    };
    upstream.once('connect', () => {
      open = true;
      upstream.setTimeout(0);
      socket.write(`HTTP/1.1 200 Connection Established\r\nVia: ${this.via}\r\n\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.once('timeout', () => {
      if (!open) answer(504, 'origin did not answer in time');
      cleanup();
    });
    upstream.once('error', (e) => {
      if (!open) {
        const f = originFailure(e);
        answer(f.status, f.message);
      }
      cleanup();
    });
    upstream.once('close', () => {
      if (open) cleanup();
    });
    socket.once('close', cleanup);
  }
}
