/**
 * The caching forward proxy (issue 6): the listener, its lifecycle and the entry of each request.
 * HTTP/1.1 absolute-form requests go through the access checks to the cache flow
 * (cache-requests.ts carries out core/cache/flow.ts's decisions); CONNECT opens a tunnel
 * (tunnel.ts). An absolute-form `https://` target (proxy.httpsOrigin) is served as Squid does:
 * the client speaks plain HTTP to us, we open TLS to the origin (origin-requests.ts) and cache the
 * answer under its https URL, to the ports CONNECT may reach (proxy.connectPorts) only.
 * Node's llhttp parser already refuses the smuggling shapes (CL+TE, repeated or listed
 * Content-Length, unknown Transfer-Encoding, obs-fold, bad bytes) with a parse error, which
 * `clientError` turns into 400; an oversized head becomes 431.
 */
import { randomBytes } from 'node:crypto';
import { STATUS_CODES, createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP, type LookupFunction, type Socket } from 'node:net';
import { Accounts } from '../../core/accounts/accounts.js';
import { normalizeTarget } from '../../core/cache/keys.js';
import { CacheStats } from '../../core/cache/stats.js';
import { CacheStore } from '../../core/cache/store.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { cidrList, clientAllowed } from '../../core/address-ranges.js';
import { ProxyAuth, OriginGuard, dnsOriginResolver, refusalText } from './access.js';
import { accessLoggedResponse, accessLogger } from './access-log.js';
import { CacheRequests } from './cache-requests.js';
import { ConnectionLimits } from './limits.js';
import { OriginRequests, type Target } from './origin-requests.js';
import { Replies } from './replies.js';
import { Tunnels } from './tunnel.js';

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
  /**
   * Told the URL hash of each entry this proxy writes to a local object tier, which its sibling
   * workers (workers.ts) mark in their stores (CacheStore.markStored).
   */
  stored?: (urlHash: string) => void;
  /** The sibling workers that may hold in memory what this one misses (CacheStoreOptions.siblings). */
  siblings?: { held: (urlHash: string) => void; ask: (url: string) => Promise<boolean> };
  /** Told of every URL this proxy invalidated (RFC 9111 §4.4), so that sibling workers drop it from their memory tiers at once. */
  purged?: (url: string) => void;
  /** PEM certificates trusted for https origins on top of Node's roots (tests with a self-signed origin). */
  originCa?: string;
}

/** A started proxy: the listener contract plus what tests and the health endpoint look at. */
export interface RunningProxy extends RunningListener {
  port: number;
  store: CacheStore;
  stats: CacheStats;
}

/** Refused by address or over the connection caps (set when the connection is accepted). */
const DENIED = Symbol('denied');
/** The 503's text for a connection over the caps (it is DENIED too). */
const OVER_CAP = Symbol('overCap');
/** The Proxy-Authorization value last verified on this connection. */
const AUTHED = Symbol('authed');
const SEEN_READ = Symbol('seenRead');
const IDLE_SINCE = Symbol('idleSince');
type ProxySocket = Socket & { [DENIED]?: boolean; [OVER_CAP]?: string; [AUTHED]?: string; [SEEN_READ]?: number; [IDLE_SINCE]?: number; _httpMessage?: unknown };

/** Request-targets remembered with their parsed Target (cleared when full). */
const MAX_TARGETS = 10_000;

/** Starts the proxy on config.listenHost:config.proxy.port. */
export async function startProxy(ctx: ListenerContext, options: ProxyOptions = {}): Promise<RunningProxy> {
  const proxy = new CachingProxy(ctx, options);
  return proxy.listen(options.port ?? ctx.config.proxy.port);
}

/** One proxy process: the HTTP server, its connections, and the parts that answer requests. */
class CachingProxy {
  private readonly cfg: ListenerContext['config']['proxy'];
  private readonly log: ListenerContext['log'];
  private readonly store: CacheStore;
  private readonly stats: CacheStats;
  private readonly origins: OriginRequests;
  private readonly replies: Replies;
  private readonly requests: CacheRequests;
  private readonly tunnels: Tunnels;
  private readonly guard: OriginGuard;
  private readonly allowed: ReturnType<typeof cidrList>;
  private readonly auth: ProxyAuth | undefined;
  private readonly loopToken: string;
  /** Ports an https origin may be on: those CONNECT may reach (proxy.connectPorts). */
  private readonly tlsPorts: Set<number>;
  /** Targets by the request-target as the client sent it. */
  private readonly targets = new Map<string, Target>();
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

  constructor(
    private readonly ctx: ListenerContext,
    options: ProxyOptions,
  ) {
    const cfg = ctx.config.proxy;
    this.cfg = cfg;
    this.log = ctx.log.child({ c: 'proxy' });
    const now = options.now ?? Date.now;
    this.store = new CacheStore({
      tables: ctx.storage.tables,
      blobs: ctx.storage.cache,
      log: this.log,
      memoryBytes: cfg.memoryBytes,
      cacheBytes: cfg.cacheBytes,
      maxObjectBytes: cfg.maxObjectBytes,
      heuristicCapSeconds: cfg.heuristicCapSeconds,
      admitHits: cfg.objectTierAdmitHits,
      // On local storage this process is the object tier's only writer, or one of the proxy
      // workers of this host, which tell each other what they stored (`stored`); on AWS every
      // task writes the shared tier.
      sharedObjectTier: ctx.storage.capabilities.sharedBetweenProcesses,
      stored: options.stored,
      siblings: options.siblings,
      now,
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
    // The comment carries a per-process token so that a request that comes back to us is seen as a loop.
    this.loopToken = `(Tomlinson ${randomBytes(4).toString('hex')})`;
    const via = `1.1 ${ctx.config.hostname || 'tomlinson'} ${this.loopToken}`;
    if (cfg.requireAuth) {
      const check =
        options.authenticate ??
        (async (login: string, password: string) => (await new Accounts(ctx.storage.tables).authenticate(login, password)) !== undefined);
      this.auth = new ProxyAuth({ check });
    }
    this.tlsPorts = new Set(cfg.connectPorts.map(Number));
    this.origins = new OriginRequests({ timeoutMs: cfg.originTimeoutMs, lookup: this.guard.lookup as LookupFunction, via, originCa: options.originCa });
    this.replies = new Replies(this.stats, this.log, via);
    this.requests = new CacheRequests({
      cfg,
      log: this.log,
      store: this.store,
      stats: this.stats,
      origins: this.origins,
      replies: this.replies,
      now,
      purged: options.purged,
    });
    this.access = accessLogger(ctx.log);
    this.tunnels = new Tunnels({
      cfg,
      stats: this.stats,
      access: this.access,
      guard: this.guard,
      via,
      refuse: (req, socket) => this.refuse(req, socket as ProxySocket),
      originRefusal: (host) => this.originRefusal(host),
      becameTunnel: (socket) => this.clients.delete(socket as ProxySocket),
    });
    this.server = createServer({
      ServerResponse: accessLoggedResponse(this.access, cfg.accessLog),
      maxHeaderSize: cfg.maxHeaderBytes,
      headersTimeout: 30_000,
      // Bounds slow uploads too (a request body that trickles for five minutes is cut).
      requestTimeout: 300_000,
      // Idle keep-alive connections are closed by sweepIdle instead: Node's own keep-alive timeout
      // makes a new timer for every response (see docs/performance.md, Proxy).
      keepAliveTimeout: 0,
      noDelay: true,
    });
    this.limits = new ConnectionLimits(cfg.maxConnections, cfg.maxConnectionsPerClient, this.log, ctx.metrics);
    this.server.on('connection', (socket: ProxySocket) => this.onConnection(socket));
    this.keepAliveMs = options.keepAliveMs ?? 5000;
    this.idleSweep = setInterval(() => this.sweepIdle(), Math.min(1000, Math.max(50, this.keepAliveMs / 2)));
    this.idleSweep.unref();
    this.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      let p: void | Promise<void>;
      try {
        p = this.onRequest(req, res);
      } catch (e) {
        return this.replies.requestFailed(res, e);
      }
      if (p) p.catch((e: unknown) => this.replies.requestFailed(res, e));
    });
    this.server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      this.tunnels.connect(req, socket, head).catch((e: unknown) => {
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
      this.tunnels.destroyAll();
    }, graceMs);
    await closed;
    clearTimeout(timer);
    this.tunnels.destroyAll();
    this.stopPurgeWatch();
    clearInterval(this.idleSweep);
    await this.stats.close();
    await this.store.close();
    await this.origins.close();
  }

  /** A new client connection: counted against the caps, checked against the allowed addresses. */
  private onConnection(socket: ProxySocket): void {
    const metrics = this.ctx.metrics;
    const over = this.limits.admit(socket);
    if (over) socket[OVER_CAP] = over;
    socket[DENIED] = over !== undefined || !clientAllowed(this.allowed, socket.remoteAddress);
    socket[SEEN_READ] = 0;
    socket[IDLE_SINCE] = Date.now();
    this.clients.add(socket);
    metrics.connectionsTotal.inc({ listener: 'proxy' });
    metrics.connections.inc({ listener: 'proxy' });
    socket.once('close', () => {
      this.clients.delete(socket);
      metrics.connections.dec({ listener: 'proxy' });
    });
  }

  /**
   * Closes client connections that have been idle for keepAliveMs: nothing read from them and no
   * response under way (Node's `_httpMessage`, the response a server socket is writing) since
   * the sweep that last saw them active. Bytes arriving count as activity, so a slow request head
   * or upload is left to headersTimeout and requestTimeout.
   */
  private sweepIdle(): void {
    const now = Date.now(); // wall time: the cache's clock may be a test's
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
  // Requests

  /** A request: access checks (asynchronous only with credentials or a refused client), then the cache flow. */
  private onRequest(req: IncomingMessage, res: ServerResponse): void | Promise<void> {
    const sock = req.socket as ProxySocket;
    if (sock[DENIED] || this.auth) return this.onCheckedRequest(req, res, sock);
    return this.onAllowedRequest(req, res);
  }

  private async onCheckedRequest(req: IncomingMessage, res: ServerResponse, sock: ProxySocket): Promise<void> {
    const r = await this.refuse(req, sock);
    if (r) {
      const extra: Record<string, string> | undefined =
        r.status === 407 ? { 'proxy-authenticate': 'Basic realm="tomlinson", charset="UTF-8"' } : r.status === 503 ? { connection: 'close' } : undefined;
      return this.replies.refused(res, r.status, r.text, extra);
    }
    return this.onAllowedRequest(req, res);
  }

  /** A request from an allowed client: loop detection, the request-target, then the cache flow. */
  private onAllowedRequest(req: IncomingMessage, res: ServerResponse): void | Promise<void> {
    // RFC 9110 §7.6.3: Via lets a proxy detect a forwarding loop (e.g. a URL naming the proxy itself).
    const via = req.headers.via;
    if (via !== undefined && via.includes(this.loopToken)) return this.replies.refused(res, 508, 'forwarding loop detected');
    const raw = req.url ?? '';
    let target = this.targets.get(raw);
    if (target === undefined) {
      if (!/^https?:\/\//i.test(raw)) return this.replies.refused(res, 400, 'this is a proxy: send the absolute URL');
      if (!this.cfg.httpsOrigin && /^https:/i.test(raw)) return this.replies.refused(res, 400, 'use CONNECT for https URLs (proxy.httpsOrigin is off)');
      try {
        target = this.target(normalizeTarget(raw));
      } catch {
        return this.replies.refused(res, 400, 'invalid URL');
      }
      if (this.targets.size >= MAX_TARGETS) this.targets.clear();
      this.targets.set(raw, target);
    }
    // The same ports as CONNECT: taking https in absolute form opens no destination a tunnel could not reach.
    if (target.https && !this.tlsPorts.has(target.port))
      return this.replies.refused(res, 403, `https to port ${target.port} is not allowed (proxy.connectPorts)`);
    return this.requests.handle(req, res, target);
  }

  /** The target of a normalised URL parsed by normalizeTarget. */
  private target(parsed: URL): Target {
    const host = parsed.hostname.startsWith('[') ? parsed.hostname.slice(1, -1) : parsed.hostname;
    const https = parsed.protocol === 'https:';
    return {
      url: parsed.href,
      host: parsed.host,
      origin: parsed.origin,
      https,
      hostname: host,
      port: parsed.port ? Number(parsed.port) : https ? 443 : 80,
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
}
