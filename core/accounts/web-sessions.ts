/**
 * Webmail sessions: what a browser's `__Host-tomlinson` cookie stands for (issue 23, the webmail
 * contract). The cookie value is 32 random bytes; only its SHA-256 is stored, so a read of the
 * table does not yield a usable cookie. Each session carries its own CSRF token, which the browser
 * app reads from /webmail/api/session and sends as `X-CSRF-Token` on every state-changing request.
 *
 * A session lives `web.sessionHours` from its creation (absolute expiry; activity does not extend
 * it) and ends earlier at logout, at `tomlinson session revoke`, or when its user is disabled or
 * removed (checked at every lookup).
 *
 * | item                  | pk                  | sk          |
 * |-----------------------|---------------------|-------------|
 * | session (DESIGN.md)   | `SESSION#<hash>`    | `META`      | (user, csrf, created, expires, client, userAgent; ttl)
 * | the user's listing    | `WEBSESS#<address>` | `S#<hash>`  | (created, expires, client, userAgent; ttl)
 *
 * Both are written and deleted in one transaction; both carry the TTL, so an expired session
 * disappears from the listing too without a sweep.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Item, Tables } from '../storage/ports.js';
import { AccountsError, type Accounts } from './accounts.js';

/** A live session as the web listener sees it. */
export interface WebSession {
  user: string;
  csrf: string;
  /** Epoch milliseconds. */
  created: number;
  /** Epoch milliseconds; the session is gone from then on. */
  expires: number;
  client: string;
  userAgent: string;
}

/** A session as listed for the operator: never its id or CSRF token, only a prefix of the id's hash. */
export interface WebSessionInfo {
  /** The first 16 hex digits of sha256(id): what `session revoke` takes (a prefix of it is enough). */
  id: string;
  user: string;
  created: number;
  expires: number;
  client: string;
  userAgent: string;
}

export interface WebSessionsOptions {
  /** Lifetime of a session from its creation. @default 168 hours */
  sessionHours?: number;
  /** Injectable clock, epoch milliseconds. @default Date.now */
  now?: () => number;
}

/** What a listing id shows of the hash. */
const SHOWN_HEX = 16;
/** The user agent is kept for the listing only; cut so that a client cannot make items large. */
const MAX_USER_AGENT = 256;

const hashOf = (id: string): string => createHash('sha256').update(id).digest('hex');
const sessionKey = (hash: string) => ({ pk: `SESSION#${hash}`, sk: 'META' });
const listKey = (user: string, hash: string) => ({ pk: `WEBSESS#${user}`, sk: `S#${hash}` });

/** A cookie value we could have made: 32 bytes base64url. Anything else is not looked up. */
const ID_PATTERN = /^[A-Za-z0-9_-]{43}$/;

/** Makes, finds and ends webmail sessions over the Tables port. */
export class WebSessions {
  private readonly lifetimeMs: number;
  private readonly now: () => number;

  constructor(
    private readonly tables: Tables,
    private readonly accounts: Accounts,
    options: WebSessionsOptions = {},
  ) {
    this.lifetimeMs = (options.sessionHours ?? 168) * 3600_000;
    this.now = options.now ?? Date.now;
  }

  /** A new session for an authenticated user: the id (the cookie value) exists only in the result. */
  async create(user: string, meta: { client: string; userAgent?: string }): Promise<{ id: string; csrf: string; expires: number }> {
    const id = randomBytes(32).toString('base64url');
    const csrf = randomBytes(32).toString('base64url');
    const hash = hashOf(id);
    const created = this.now();
    const expires = created + this.lifetimeMs;
    const ttl = Math.ceil(expires / 1000);
    const common = { user, created, expires, client: meta.client.slice(0, 64), userAgent: (meta.userAgent ?? '').slice(0, MAX_USER_AGENT) };
    await this.tables.transact([
      { put: { ...sessionKey(hash), ...common, csrf, ttl }, condition: { exists: false } },
      { put: { ...listKey(user, hash), ...common, ttl } },
    ]);
    return { id, csrf, expires };
  }

  /** The live session a cookie value names, or undefined (unknown, expired, or its user disabled or gone). */
  async lookup(id: string): Promise<WebSession | undefined> {
    if (!ID_PATTERN.test(id)) return undefined;
    const item = await this.tables.get(sessionKey(hashOf(id)));
    const s = item && toSession(item);
    if (!s || s.expires <= this.now()) return undefined;
    const user = await this.accounts.getUser(s.user);
    return user?.enabled ? s : undefined;
  }

  /** Ends the session a cookie value names (logout); idempotent. */
  async delete(id: string): Promise<void> {
    if (!ID_PATTERN.test(id)) return;
    const hash = hashOf(id);
    const item = await this.tables.get(sessionKey(hash));
    const user = typeof item?.user === 'string' ? item.user : undefined;
    await this.tables.transact([{ delete: sessionKey(hash) }, ...(user ? [{ delete: listKey(user, hash) }] : [])]);
  }

  /** The user's live sessions, oldest first. */
  async list(address: string): Promise<WebSessionInfo[]> {
    const user = this.accounts.normalize(address);
    const now = this.now();
    const out: WebSessionInfo[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`WEBSESS#${user}`, { range: { beginsWith: 'S#' }, limit: 100, cursor });
      for (const item of page.items) {
        const expires = Number(item.expires);
        if (!(expires > now)) continue;
        out.push({
          id: item.sk.slice(2, 2 + SHOWN_HEX),
          user,
          created: Number(item.created),
          expires,
          client: String(item.client ?? ''),
          userAgent: String(item.userAgent ?? ''),
        });
      }
      cursor = page.cursor;
    } while (cursor);
    return out.sort((a, b) => a.created - b.created);
  }

  /** Ends every session of the user; returns how many there were. */
  async revokeAll(address: string): Promise<number> {
    const user = this.accounts.normalize(address);
    const hashes = await this.hashes(user);
    for (const h of hashes) await this.remove(user, h);
    return hashes.length;
  }

  /**
   * Ends the one session of the user whose listed id starts with `idPrefix` (at least 4 hex
   * digits); undefined when none does. AccountsError (Invalid) when the prefix is malformed or names several.
   */
  async revoke(address: string, idPrefix: string): Promise<WebSessionInfo | undefined> {
    const prefix = idPrefix.trim().toLowerCase();
    if (!/^[0-9a-f]{4,64}$/.test(prefix)) throw new AccountsError('Invalid', 'a session id is 4 to 64 hex digits (as `session list` shows)');
    const user = this.accounts.normalize(address);
    const matches = (await this.hashes(user)).filter((h) => h.startsWith(prefix));
    if (matches.length > 1) throw new AccountsError('Invalid', `${matches.length} sessions start with ${prefix}; give more digits`);
    if (matches.length === 0) return undefined;
    const info = (await this.list(user)).find((s) => matches[0].startsWith(s.id));
    await this.remove(user, matches[0]);
    // An expired session is not listed but was removed all the same.
    return info ?? { id: matches[0].slice(0, SHOWN_HEX), user, created: 0, expires: 0, client: '', userAgent: '' };
  }

  /** The hashes of the user's listed sessions (expired ones included: removing them is harmless). */
  private async hashes(user: string): Promise<string[]> {
    const out: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`WEBSESS#${user}`, { range: { beginsWith: 'S#' }, limit: 100, cursor });
      out.push(...page.items.map((i) => i.sk.slice(2)));
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  private async remove(user: string, hash: string): Promise<void> {
    await this.tables.transact([{ delete: sessionKey(hash) }, { delete: listKey(user, hash) }]);
  }
}

function toSession(item: Item): WebSession | undefined {
  if (typeof item.user !== 'string' || typeof item.csrf !== 'string') return undefined;
  return {
    user: item.user,
    csrf: item.csrf,
    created: Number(item.created),
    expires: Number(item.expires),
    client: String(item.client ?? ''),
    userAgent: String(item.userAgent ?? ''),
  };
}
