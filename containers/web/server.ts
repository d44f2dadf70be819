/**
 * The web listener: HTTPS on config.web.port with the certificates POP3 and IMAP use (core/tls.ts),
 * serving the JMAP API (RFC 8620): the session resource (also at /.well-known/jmap, §2.2), the API
 * endpoint (§3), blob upload and download (§6) and push over EventSource (§7.3). Every JMAP path
 * needs HTTP Basic (jmap/auth.ts); there is no plain-HTTP port, so a password never crosses the
 * network in the clear. A browser signed in to the webmail (webmail/sessions.ts) sends its
 * session cookie instead, with X-CSRF-Token on anything but GET/HEAD. /webmail/api/* and
 * /webmail/image are the webmail's own endpoints; anything else goes to the `static` hook (the
 * webmail's files, webmail/static.ts) or gets 404.
 *
 * Routes (all under /jmap, ids from types.ts):
 * - GET  /.well-known/jmap, /jmap/session        the session resource
 * - POST /jmap/api                                 API requests
 * - POST /jmap/upload/{accountId}/                 uploads
 * - GET  /jmap/download/{accountId}/{blobId}/{name}?type=...
 * - GET  /jmap/eventsource/?types=&closeafter=&ping=
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { Accounts } from '../../core/accounts/accounts.js';
import { AppPasswords } from '../../core/accounts/app-passwords.js';
import { WebSessions } from '../../core/accounts/web-sessions.js';
import { spamScannerFromConfig } from '../../core/mail/spam.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { isStorageError } from '../../core/storage/ports.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { LoginCache } from '../auth-cache.js';
import { AuthThrottle } from '../auth-throttle.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { accountIdOf, WebAuth, WWW_AUTHENTICATE } from './jmap/auth.js';
import { cleanMediaType, ID_PATTERN, jmapBlobs, UploadStore } from './jmap/blobs.js';
import { RequestProblem, runRequest, type EngineServices } from './jmap/engine.js';
import { parsePushQuery, servePush } from './jmap/push.js';
import { CORE_CAPABILITY, JmapRegistry } from './jmap/registry.js';
import { MAIL_CAPABILITY, type JsonObject } from './jmap/types.js';
import { readBody } from './read-body.js';
import { createImageProxy } from './webmail/image-proxy.js';
import { WebmailApi } from './webmail/sessions.js';

/** Serves a request the JMAP routes do not know; resolves true when it answered (the webmail's
 * static files will plug in here). */
export type StaticHandler = (req: IncomingMessage, res: ServerResponse) => Promise<boolean>;

/** Knobs that tests set beyond the configuration. */
export interface WebServerOptions {
  tls?: TlsProvider;
  /** The method modules and blob resolvers; @default the registry of registry.ts */
  registry?: JmapRegistry;
  static?: StaticHandler;
  /** The forward proxy remote images go through, when the caller knows better than web.imageProxy (app.ts: this process's own proxy). */
  imageProxyUrl?: string;
  /** How often a push stream reads the change log for changes made in other processes. @default 2000 locally, 5000 on aws (as IMAP IDLE) */
  pushPollMs?: number;
}

/** RFC 8620 §2 collation algorithms (RFC 4790 registry names) the mail methods compare with. */
const COLLATIONS = ['i;ascii-numeric', 'i;ascii-casemap', 'i;octet', 'i;unicode-casemap'];

/** Counts in-flight work per account against a limit (maxConcurrentRequests, maxConcurrentUpload). */
class PerAccount {
  private readonly counts = new Map<string, number>();
  constructor(private readonly limit: number) {}
  /** Takes a slot; false when the account is at the limit. */
  take(account: string): boolean {
    const n = this.counts.get(account) ?? 0;
    if (n >= this.limit) return false;
    this.counts.set(account, n + 1);
    return true;
  }
  give(account: string): void {
    const n = (this.counts.get(account) ?? 1) - 1;
    if (n <= 0) this.counts.delete(account);
    else this.counts.set(account, n);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-cache, no-store', ...headers });
  res.end(text);
}

function sendProblem(res: ServerResponse, p: RequestProblem, headers: Record<string, string> = {}): void {
  res.writeHead(p.status, { 'content-type': 'application/problem+json; charset=utf-8', ...headers });
  res.end(JSON.stringify(p.body()));
}

/** A plain RFC 7807 problem outside JMAP's own types (404, 405, 401...). */
function sendStatus(res: ServerResponse, status: number, title: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/problem+json; charset=utf-8', ...headers });
  res.end(JSON.stringify({ type: 'about:blank', status, title }));
}

/** `attachment; filename*=` per RFC 6266 §4.3 with RFC 8187 encoding, plus an ASCII fallback. */
function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  const encoded = encodeURIComponent(name).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

/** Starts the web listener. */
export async function startWeb(ctx: ListenerContext, options: WebServerOptions = {}): Promise<RunningListener> {
  const { config, storage, metrics } = ctx;
  const log = ctx.log.child({ c: 'web' });
  const cfg = config.web;
  const tlsProvider = options.tls ?? (await createTlsProvider(config, log));
  const ownsTls = options.tls === undefined;
  const registry = options.registry ?? new JmapRegistry();
  const accounts = new Accounts(storage.tables);
  const auth = new WebAuth({
    accounts,
    appPasswords: new AppPasswords(storage.tables, accounts),
    logins: new LoginCache(accounts, storage.tables, { ttlSeconds: cfg.loginCacheSeconds }),
    throttle: new AuthThrottle({ baseDelayMs: cfg.authFailureDelayMs }),
    log,
    metrics,
    cacheSeconds: cfg.loginCacheSeconds,
  });
  const images = createImageProxy(config, log, { proxyUrl: options.imageProxyUrl });
  const webmail = new WebmailApi({ sessions: new WebSessions(storage.tables, accounts, { sessionHours: cfg.sessionHours }), auth, log, image: images.handler });
  const folders = new FolderStore(storage.tables, storage.mail, { learnQueue: storage.queues });
  const uploads = new UploadStore(storage.mail, cfg.uploadTtlSeconds);
  // What users send through EmailSubmission is scanned as the submission ports scan it
  // (spam.scanOutbound, core/mail/outbound-verdict.ts): rspamd's reject refuses the submission.
  const spam = config.spam.scanOutbound ? await spamScannerFromConfig(config.spam, { metrics, log }) : undefined;
  const services: EngineServices = { config, storage, folders, log, registry, ...(spam ? { spam } : {}) };
  const requests = new PerAccount(cfg.maxConcurrentRequests);
  const uploading = new PerAccount(cfg.maxConcurrentUpload);
  const pushPollMs = options.pushPollMs ?? (storage.capabilities.sharedBetweenProcesses ? 5000 : 2000);
  const pushes = new Set<() => void>();
  let closing = false;

  const coreCapability: JsonObject = {
    maxSizeUpload: cfg.maxSizeUpload,
    maxConcurrentUpload: cfg.maxConcurrentUpload,
    maxSizeRequest: cfg.maxSizeRequest,
    maxConcurrentRequests: cfg.maxConcurrentRequests,
    maxCallsInRequest: cfg.maxCallsInRequest,
    maxObjectsInGet: cfg.maxObjectsInGet,
    maxObjectsInSet: cfg.maxObjectsInSet,
    collationAlgorithms: COLLATIONS,
  };

  // RFC 8621 §1.3.1: attachments are bounded only by the message size limit delivery has.
  const accountCapabilities: Record<string, JsonObject> = { ...registry.accountCapabilities };
  if (accountCapabilities[MAIL_CAPABILITY])
    accountCapabilities[MAIL_CAPABILITY] = { ...accountCapabilities[MAIL_CAPABILITY], maxSizeAttachmentsPerEmail: config.smtp.maxMessageBytes };

  /** The session resource (§2) for `user`, URLs absolute on the host the client used. */
  const session = (user: string, host: string): JsonObject => {
    const accountId = accountIdOf(user);
    const base = `https://${host}`;
    const body: JsonObject = {
      capabilities: { [CORE_CAPABILITY]: coreCapability, ...registry.sessionCapabilities },
      accounts: { [accountId]: { name: user, isPersonal: true, isReadOnly: false, accountCapabilities } },
      primaryAccounts: Object.fromEntries(Object.keys(registry.accountCapabilities).map((c) => [c, accountId])),
      username: user,
      apiUrl: `${base}/jmap/api/`,
      downloadUrl: `${base}/jmap/download/{accountId}/{blobId}/{name}?type={type}`,
      uploadUrl: `${base}/jmap/upload/{accountId}/`,
      eventSourceUrl: `${base}/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}`,
    };
    // Changes only when what the session says changes (a new capability, another host name).
    body.state = createHash('sha256').update(JSON.stringify(body)).digest('hex').slice(0, 16);
    return body;
  };

  const hostOf = (req: IncomingMessage): string => {
    const h = req.headers.host;
    // A Host that is not a plain host[:port] is not echoed into URLs.
    return h && /^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$/.test(h) ? h : `localhost:${cfg.port}`;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'https://x');
    const path = url.pathname;
    const jmap = path === '/.well-known/jmap' || path === '/jmap' || path.startsWith('/jmap/');
    if (!jmap) {
      if (await webmail.handle(req, res)) return;
      if (options.static && (await options.static(req, res))) return;
      return sendStatus(res, 404, 'Not Found');
    }
    const client = req.socket.remoteAddress ?? '';
    // Without Authorization, a webmail session cookie may stand in (and needs its CSRF token).
    const cookie = req.headers.authorization === undefined ? await webmail.authenticate(req) : undefined;
    if (cookie && 'status' in cookie) return sendStatus(res, cookie.status, cookie.title, cookie.headers);
    const user = cookie?.user ?? (await auth.authenticate(req.headers.authorization, client));
    if (!user) return sendStatus(res, 401, 'Unauthorized', { 'www-authenticate': WWW_AUTHENTICATE });
    const accountId = accountIdOf(user);
    const method = req.method ?? 'GET';

    if (path === '/.well-known/jmap' || path === '/jmap/session') {
      if (method !== 'GET') return sendStatus(res, 405, 'Method Not Allowed', { allow: 'GET' });
      return sendJson(res, 200, session(user, hostOf(req)));
    }

    if (path === '/jmap/api' || path === '/jmap/api/') {
      if (method !== 'POST') return sendStatus(res, 405, 'Method Not Allowed', { allow: 'POST' });
      if (!requests.take(accountId)) {
        metrics.limitsHit.inc({ listener: 'web', limit: 'maxConcurrentRequests' });
        return sendProblem(res, new RequestProblem('limit', 400, `at most ${cfg.maxConcurrentRequests} requests at once`, { limit: 'maxConcurrentRequests' }));
      }
      try {
        // §3.6.1 notJSON: the content type must be application/json.
        const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
        const body = await readBody(req, cfg.maxSizeRequest);
        if (!body) {
          metrics.limitsHit.inc({ listener: 'web', limit: 'maxSizeRequest' });
          // The rest of the body is not read: the connection cannot be reused.
          return sendProblem(res, new RequestProblem('limit', 400, `the request is larger than ${cfg.maxSizeRequest} bytes`, { limit: 'maxSizeRequest' }), {
            connection: 'close',
          });
        }
        if (type !== 'application/json') throw new RequestProblem('notJSON', 400, 'the content type must be application/json');
        let parsed: unknown;
        try {
          parsed = JSON.parse(body.toString('utf8'));
        } catch {
          throw new RequestProblem('notJSON', 400, 'the request is not valid JSON');
        }
        const blobs = jmapBlobs({ user, accountId, storage, folders }, uploads, registry.blobResolvers, cfg.maxSizeUpload);
        const sessionState = String(session(user, hostOf(req)).state);
        const response = await runRequest(services, { user, accountId, blobs, sessionState }, parsed);
        return sendJson(res, 200, response);
      } finally {
        requests.give(accountId);
      }
    }

    const upload = /^\/jmap\/upload\/([^/]+)\/?$/.exec(path);
    if (upload) {
      if (method !== 'POST') return sendStatus(res, 405, 'Method Not Allowed', { allow: 'POST' });
      // §6.1: only into the user's own account; any other id is as unknown as a made-up one.
      if (upload[1] !== accountId) return sendStatus(res, 404, 'Not Found');
      const declared = Number(req.headers['content-length']);
      const tooLarge = () => {
        metrics.limitsHit.inc({ listener: 'web', limit: 'maxSizeUpload' });
        sendProblem(res, new RequestProblem('limit', 413, `uploads are at most ${cfg.maxSizeUpload} bytes`, { limit: 'maxSizeUpload' }), {
          connection: 'close',
        });
      };
      if (Number.isFinite(declared) && declared > cfg.maxSizeUpload) return tooLarge();
      if (!uploading.take(accountId)) {
        metrics.limitsHit.inc({ listener: 'web', limit: 'maxConcurrentUpload' });
        return sendProblem(res, new RequestProblem('limit', 400, `at most ${cfg.maxConcurrentUpload} uploads at once`, { limit: 'maxConcurrentUpload' }), {
          connection: 'close',
        });
      }
      try {
        const type = cleanMediaType(req.headers['content-type']) ?? 'application/octet-stream';
        const r = await uploads.put(accountId, req, type, cfg.maxSizeUpload);
        return sendJson(res, 201, { accountId, blobId: r.blobId, type: r.type, size: r.size });
      } catch (e) {
        if (isStorageError(e, 'TooLarge')) return tooLarge();
        throw e;
      } finally {
        uploading.give(accountId);
      }
    }

    const download = /^\/jmap\/download\/([^/]+)\/([^/]+)\/([^/]*)$/.exec(path);
    if (download) {
      if (method !== 'GET' && method !== 'HEAD') return sendStatus(res, 405, 'Method Not Allowed', { allow: 'GET, HEAD' });
      const [, acc, blobId, rawName] = download;
      if (acc !== accountId || !ID_PATTERN.test(blobId)) return sendStatus(res, 404, 'Not Found');
      const blob = await jmapBlobs({ user, accountId, storage, folders }, uploads, registry.blobResolvers, cfg.maxSizeUpload).get(blobId);
      if (!blob) return sendStatus(res, 404, 'Not Found');
      let name: string;
      try {
        name = decodeURIComponent(rawName) || 'blob';
      } catch {
        name = 'blob';
      }
      res.writeHead(200, {
        'content-type': cleanMediaType(url.searchParams.get('type') ?? undefined) ?? blob.type ?? 'application/octet-stream',
        'content-length': String(blob.size),
        'content-disposition': contentDisposition(name),
        // §6.2: a blob's bytes never change, so a client may keep them.
        'cache-control': 'private, immutable, max-age=604800',
        'x-content-type-options': 'nosniff',
      });
      if (method === 'HEAD') return void res.end();
      await pipeline(await blob.open(), res);
      return;
    }

    if (path === '/jmap/eventsource' || path === '/jmap/eventsource/') {
      if (method !== 'GET') return sendStatus(res, 405, 'Method Not Allowed', { allow: 'GET' });
      const q = parsePushQuery(url.searchParams);
      if (typeof q === 'string') return sendStatus(res, 400, q);
      const stop = await servePush(req, res, { user, accountId, changes: folders.changes, pollMs: pushPollMs, log, ...q });
      pushes.add(stop);
      res.on('close', () => pushes.delete(stop));
      if (closing) stop();
      return;
    }
    return sendStatus(res, 404, 'Not Found');
  };

  const server: Server = createServer(
    { ...tlsProvider.options(), requestTimeout: cfg.requestTimeoutMs, headersTimeout: cfg.headersTimeoutMs, keepAliveTimeout: 5000 },
    (req, res) => {
      handle(req, res).catch((e: unknown) => {
        if (e instanceof RequestProblem && !res.headersSent) return sendProblem(res, e);
        const unavailable = isStorageError(e) && e.retryable;
        // A client that went away mid-upload or mid-download is no server fault.
        if (req.destroyed || res.destroyed) {
          log.info({ err: (e as Error).message, path: req.url?.split('?')[0] }, 'web client went away');
          return void res.destroy();
        }
        log.error({ err: (e as Error).message, path: req.url?.split('?')[0] }, 'web request failed');
        if (!res.headersSent) sendStatus(res, unavailable ? 503 : 500, unavailable ? 'Service Unavailable' : 'Internal Server Error');
        else res.destroy();
      });
    },
  );
  server.maxConnections = cfg.maxConnections;
  // Connections per client address, counted before the TLS handshake so that one client cannot
  // take the whole listener (the total cap is server.maxConnections).
  const perClient = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const client = socket.remoteAddress ?? '';
    const n = (perClient.get(client) ?? 0) + 1;
    if (n > cfg.maxConnectionsPerClient) {
      metrics.limitsHit.inc({ listener: 'web', limit: 'connections_per_client' });
      log.warn({ client, limit: cfg.maxConnectionsPerClient }, 'web connection refused: too many connections from this client');
      socket.destroy();
      return;
    }
    perClient.set(client, n);
    socket.once('close', () => {
      const left = (perClient.get(client) ?? 1) - 1;
      if (left > 0) perClient.set(client, left);
      else perClient.delete(client);
    });
  });
  const detach = tlsProvider.attach(server);

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(cfg.port, config.listenHost, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    detach();
    if (ownsTls) tlsProvider.close();
    await spam?.close();
    throw e;
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : cfg.port;
  log.info({ port }, 'web listener started');

  return {
    name: 'web',
    addresses: [`web ${config.listenHost}:${port}`],
    healthy: () => server.listening && !closing,
    async close(graceMs = 10_000) {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Push streams end now (clients reconnect elsewhere); idle keep-alive connections close.
      for (const stop of [...pushes]) stop();
      // A connection whose request finishes during the drain turns idle then: close those too.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), 50);
      const timer = setTimeout(() => server.closeAllConnections(), graceMs);
      await closed;
      clearInterval(sweep);
      clearTimeout(timer);
      detach();
      if (ownsTls) tlsProvider.close();
      await images.close();
      await spam?.close();
    },
  };
}
