/**
 * Who is asking: HTTP Basic (RFC 7617) over TLS, with the account password or an app password
 * (core/accounts/app-passwords.ts). Every JMAP request carries the credentials, so a check that
 * passed is remembered as a keyed hash (account passwords through the listeners' LoginCache, app
 * passwords through the same idea here) and the memory-hard hash runs once per device per
 * `web.loginCacheSeconds`. A revoked app password fails at its next request: the cache hit still
 * reads the record. Failures wait the failed-login delay that POP3 and IMAP use (AuthThrottle).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Accounts } from '../../../core/accounts/accounts.js';
import type { AppPasswords } from '../../../core/accounts/app-passwords.js';
import { APP_PASSWORD_PATTERN } from '../../../core/accounts/app-passwords.js';
import type { Logger } from '../../../core/log.js';
import type { Metrics } from '../../../core/metrics.js';
import type { LoginCache } from '../../auth-cache.js';
import { authFailureText, type AuthThrottle } from '../../auth-throttle.js';

/** The JMAP accountId of a user (containers/web/jmap/types.ts): `A` + 24 hex of sha256(address). */
export function accountIdOf(user: string): string {
  return `A${createHash('sha256').update(user.toLowerCase()).digest('hex').slice(0, 24)}`;
}

/** The challenges of a 401: Basic (RFC 7617 §2; charset per §2.1) with the account or an app
 * password, or an app password alone as a bearer token (RFC 6750 §3). */
export const WWW_AUTHENTICATE = 'Basic realm="Tomlinson JMAP", charset="UTF-8", Bearer realm="Tomlinson JMAP"';

/** The token of an `Authorization: Bearer` header, or undefined when it is not one. */
export function parseBearer(header: string | undefined): string | undefined {
  const m = header === undefined ? null : /^Bearer[ ]+([A-Za-z0-9._~+/-]+=*)[ ]*$/i.exec(header);
  return m?.[1];
}

/** The user name and password of an `Authorization: Basic` header, or undefined when it is not one. */
export function parseBasic(header: string | undefined): { login: string; password: string } | undefined {
  const m = header === undefined ? null : /^Basic[ ]+([A-Za-z0-9+/]+={0,2})[ ]*$/i.exec(header);
  if (!m) return undefined;
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  // RFC 7617 §2: the user-id cannot contain a colon; control characters are not allowed.
  if (colon <= 0 || /[\0-\x1f\x7f]/.test(text)) return undefined;
  return { login: text.slice(0, colon), password: text.slice(colon + 1) };
}

interface CachedAppPassword {
  mac: Buffer;
  passwordHash: string;
  expires: number;
}

/** Parts of the web authenticator. */
export interface WebAuthParts {
  accounts: Accounts;
  appPasswords: AppPasswords;
  logins: LoginCache;
  throttle: AuthThrottle;
  log: Logger;
  metrics: Metrics;
  /** How long an app password that passed is remembered; 0 turns it off. */
  cacheSeconds: number;
}

/** Checks Basic credentials; most entries the app-password cache keeps. */
const MAX_CACHED = 10_000;

/** The web listener's authenticator. */
export class WebAuth {
  private readonly key = randomBytes(32);
  private readonly cache = new Map<string, CachedAppPassword>();

  constructor(private readonly parts: WebAuthParts) {}

  /**
   * The canonical user for the request's Authorization header, or undefined (after the failed-login
   * delay when credentials were given and wrong).
   */
  async authenticate(header: string | undefined, client: string): Promise<string | undefined> {
    let login: string;
    let user: string | undefined;
    const token = parseBearer(header);
    if (token !== undefined) {
      // An app password alone: its id names its owner.
      const owner = await this.parts.appPasswords.ownerOf(token);
      login = owner ?? '(bearer token)';
      user = owner && (await this.checkApp(owner, token)) ? owner : undefined;
    } else {
      const creds = parseBasic(header);
      if (!creds) return undefined;
      login = creds.login;
      user = await this.check(creds.login, creds.password);
    }
    return this.settle(user, login, client);
  }

  /**
   * The canonical user for a login name and password (the account password or one of the user's
   * app passwords, as Basic takes them), or undefined after the failed-login delay. The webmail's
   * sign-in form uses it, so that form and Basic share one throttle and one failure log line.
   */
  async login(login: string, password: string, client: string): Promise<string | undefined> {
    return this.settle(await this.check(login, password), login, client);
  }

  private async settle(user: string | undefined, login: string, client: string): Promise<string | undefined> {
    if (user) {
      this.parts.throttle.succeed(client, user);
      return user;
    }
    this.parts.metrics.authFailures.inc({ listener: 'web' });
    this.parts.log.warn({ client, listener: 'web' }, authFailureText('web', client, login));
    await this.parts.throttle.fail(client, login);
    return undefined;
  }

  private async check(login: string, password: string): Promise<string | undefined> {
    if (APP_PASSWORD_PATTERN.test(password)) {
      let address: string;
      try {
        address = this.parts.accounts.normalize(login);
      } catch {
        return undefined;
      }
      if (await this.checkApp(address, password)) return address;
      // Not one of the user's app passwords: it may still be the account password.
    }
    return this.parts.logins.authenticate(login, password);
  }

  private async checkApp(address: string, password: string): Promise<boolean> {
    const rec = await this.parts.appPasswords.record(address, password);
    if (!rec) return false;
    const user = await this.parts.accounts.getUser(address);
    if (!user?.enabled) return false;
    const id = `${address}\0${rec.id}`;
    const mac = createHmac('sha256', this.key).update(id).update('\0').update(password).digest();
    const hit = this.cache.get(id);
    if (hit && hit.expires > Date.now() && hit.passwordHash === rec.passwordHash && timingSafeEqual(hit.mac, mac)) return true;
    if (!(await this.parts.appPasswords.verify(address, password))) return false;
    if (this.parts.cacheSeconds > 0) {
      this.cache.delete(id);
      this.cache.set(id, { mac, passwordHash: rec.passwordHash, expires: Date.now() + this.parts.cacheSeconds * 1000 });
      if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    }
    return true;
  }
}
