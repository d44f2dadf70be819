/**
 * The webmail's sign-in: a form posts a user name and password once, the listener answers with a
 * session cookie, and from then on the browser app talks to the JMAP API with that cookie instead
 * of an Authorization header (which a browser app would have to keep in script-readable memory).
 *
 * - POST /webmail/api/login   {username, password} → {username, csrfToken, expires} + Set-Cookie
 * - GET  /webmail/api/session → the same without a new cookie, or 401
 * - POST /webmail/api/logout  (X-CSRF-Token) → 204, the session deleted and the cookie cleared
 * - GET  /webmail/image?url=  → a remote image through the caching proxy (./image-proxy.ts)
 *
 * The cookie is `__Host-tomlinson` (RFC 6265bis §4.1.3.2: Secure, Path=/, no Domain, so no other
 * host or plain-HTTP page can set or shadow it), HttpOnly, SameSite=Strict. Every login makes a new
 * id, whatever cookie came with it (no session fixation). A cross-site page cannot read the CSRF
 * token (it is only in a same-origin JSON answer), so a state-changing request with the cookie must
 * carry it in `X-CSRF-Token`; SameSite=Strict is a second fence. Login itself checks Origin (login
 * CSRF: a page signing the victim into the attacker's account).
 *
 * Credentials are checked by the JMAP listener's own WebAuth (same AuthThrottle, same failure log
 * line), so the form takes what Basic takes: the account password or an app password. Anything
 * the webmail can do a JMAP client with an app password can do already, so accepting one here
 * gives nothing away.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { WebSession, WebSessions } from '../../../core/accounts/web-sessions.js';
import type { Logger } from '../../../core/log.js';
import type { WebAuth } from '../jmap/auth.js';
import { readBody } from '../read-body.js';

/** The cookie's name; the `__Host-` prefix makes the browser enforce Secure, Path=/ and no Domain. */
export const SESSION_COOKIE = '__Host-tomlinson';
/** The header a cookie-authenticated state-changing request carries its session's token in. */
export const CSRF_HEADER = 'x-csrf-token';
/**
 * The challenge of a 401 to a cookie request. RFC 9110 §11.6.1 wants one; Basic would make the
 * browser pop its own password dialog over the webmail, so this names the bearer scheme the JMAP
 * API also takes (an app password), which browsers do not prompt for.
 */
export const COOKIE_CHALLENGE = 'Bearer realm="Tomlinson JMAP"';

/** Largest login body: a user name and a password, with room to spare. */
const MAX_LOGIN_BODY = 16 * 1024;

/** Serves a request for a signed-in user (the image proxy). */
export type SignedInHandler = (req: IncomingMessage, res: ServerResponse, url: URL, user: string) => Promise<void>;

/** What the webmail API needs from the listener. */
export interface WebmailApiParts {
  sessions: WebSessions;
  auth: WebAuth;
  log: Logger;
  /** GET /webmail/image; absent: 404. */
  image?: SignedInHandler;
}

/** How a request without Authorization fared with its cookie on a JMAP path. */
export type CookieAuth = { user: string } | { status: 401 | 403; title: string; headers: Record<string, string> };

/**
 * The value of our session cookie in a Cookie header (RFC 6265 §5.4: `name=value` pairs separated
 * by `; `), or undefined. Written here because only one cookie is ever read: a parser library
 * would add a dependency for a split and a compare.
 */
export function sessionCookieOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === SESSION_COOKIE) {
      const v = part.slice(eq + 1).trim();
      return v.startsWith('"') && v.endsWith('"') && v.length >= 2 ? v.slice(1, -1) : v;
    }
  }
  return undefined;
}

function setCookie(id: string, expires: number, now = Date.now()): string {
  const maxAge = Math.max(0, Math.floor((expires - now) / 1000));
  return `${SESSION_COOKIE}=${id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${maxAge}`;
}

const CLEAR_COOKIE = `${SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0`;

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

/** An RFC 9457 problem (the `title` is what the sign-in form shows). */
export function sendProblem(res: ServerResponse, status: number, title: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/problem+json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify({ type: 'about:blank', status, title }));
}

function sameToken(given: string | string[] | undefined, expected: string): boolean {
  if (typeof given !== 'string') return false;
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The webmail's session endpoints and the cookie check of the JMAP paths. */
export class WebmailApi {
  constructor(private readonly parts: WebmailApiParts) {}

  /** Serves /webmail/api/* and /webmail/image; false for any other path. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const url = new URL(req.url ?? '/', 'https://x');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    if (path === '/webmail/image') {
      if (method !== 'GET' && method !== 'HEAD') return this.notAllowed(res, 'GET, HEAD');
      const s = await this.current(req);
      if (!s || !this.parts.image) return (sendProblem(res, s ? 404 : 401, s ? 'Not Found' : 'Unauthorized'), true);
      await this.parts.image(req, res, url, s.user);
      return true;
    }
    if (!path.startsWith('/webmail/api/')) return false;
    switch (path) {
      case '/webmail/api/login':
        if (method !== 'POST') return this.notAllowed(res, 'POST');
        await this.login(req, res);
        return true;
      case '/webmail/api/session': {
        if (method !== 'GET') return this.notAllowed(res, 'GET');
        const s = await this.current(req);
        if (!s) sendProblem(res, 401, 'Not signed in');
        else sendJson(res, 200, { username: s.user, csrfToken: s.csrf, expires: new Date(s.expires).toISOString() });
        return true;
      }
      case '/webmail/api/logout': {
        if (method !== 'POST') return this.notAllowed(res, 'POST');
        const id = sessionCookieOf(req.headers.cookie);
        const s = id === undefined ? undefined : await this.parts.sessions.lookup(id);
        if (!s || id === undefined) {
          // A stale cookie that came with the request is cleared; a request without one (a
          // cross-site form, which SameSite=Strict sends without it) must not clear the
          // browser's cookie for this site: that would sign the user out from another site.
          sendProblem(res, 401, 'Not signed in', id === undefined ? {} : { 'set-cookie': CLEAR_COOKIE });
          return true;
        }
        if (!sameToken(req.headers[CSRF_HEADER], s.csrf)) {
          sendProblem(res, 403, 'Missing or wrong X-CSRF-Token');
          return true;
        }
        await this.parts.sessions.delete(id);
        this.parts.log.info({ user: s.user, client: req.socket.remoteAddress }, 'webmail sign-out');
        res.writeHead(204, { 'set-cookie': CLEAR_COOKIE, 'cache-control': 'no-store' });
        res.end();
        return true;
      }
      default:
        sendProblem(res, 404, 'Not Found');
        return true;
    }
  }

  /**
   * The cookie check of a JMAP request without an Authorization header: undefined when it has no
   * session cookie (the caller then answers as before), else the user or the refusal.
   */
  async authenticate(req: IncomingMessage): Promise<CookieAuth | undefined> {
    const id = sessionCookieOf(req.headers.cookie);
    if (id === undefined) return undefined;
    const s = await this.parts.sessions.lookup(id);
    if (!s) return { status: 401, title: 'Unauthorized', headers: { 'www-authenticate': COOKIE_CHALLENGE } };
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD' && !sameToken(req.headers[CSRF_HEADER], s.csrf)) {
      return { status: 403, title: 'Missing or wrong X-CSRF-Token', headers: {} };
    }
    return { user: s.user };
  }

  private async current(req: IncomingMessage): Promise<WebSession | undefined> {
    const id = sessionCookieOf(req.headers.cookie);
    return id === undefined ? undefined : this.parts.sessions.lookup(id);
  }

  private notAllowed(res: ServerResponse, allow: string): true {
    sendProblem(res, 405, 'Method Not Allowed', { allow });
    return true;
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const client = req.socket.remoteAddress ?? '';
    // Login CSRF: a browser names the page's origin on a cross-site POST; it must be ours.
    const origin = req.headers.origin;
    if (origin !== undefined && origin.toLowerCase() !== `https://${req.headers.host ?? ''}`.toLowerCase()) {
      this.parts.log.warn({ client, origin: origin.slice(0, 200) }, 'webmail sign-in refused: cross-site origin');
      return sendProblem(res, 403, 'Cross-site sign-in refused');
    }
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/json') return sendProblem(res, 415, 'The sign-in request must be application/json');
    const body = await readBody(req, MAX_LOGIN_BODY);
    if (!body) return sendProblem(res, 413, 'The sign-in request is too large', { connection: 'close' });
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      return sendProblem(res, 400, 'The sign-in request is not valid JSON');
    }
    const { username, password } = (parsed ?? {}) as { username?: unknown; password?: unknown };
    if (typeof username !== 'string' || typeof password !== 'string' || !username || !password) {
      return sendProblem(res, 400, 'Give a username and a password');
    }
    const user = await this.parts.auth.login(username, password, client);
    if (!user) return sendProblem(res, 401, 'Wrong email address or password');
    // A new id whatever cookie came in: an id planted before sign-in never becomes a session.
    const s = await this.parts.sessions.create(user, { client, userAgent: req.headers['user-agent'] });
    this.parts.log.info({ user, client }, 'webmail sign-in');
    sendJson(res, 200, { username: user, csrfToken: s.csrf, expires: new Date(s.expires).toISOString() }, { 'set-cookie': setCookie(s.id, s.expires) });
  }
}
