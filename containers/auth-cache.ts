/**
 * A cache of logins that passed the password check, so that a client polling again with the same
 * password does not pay another scrypt (its cost: docs/performance.md, POP3). The same idea as
 * Dovecot's auth cache and PingDirectory's "encoded password cache": the memory-hard hash runs
 * once, later logins compare a keyed hash.
 *
 * What is kept: per canonical address, HMAC-SHA256(process key, password), the stored scrypt hash
 * it was checked against, and an expiry. The key is random per process and never leaves memory,
 * so the cache holds no password and nothing useful outside this process. A hit needs all of: the
 * same password (constant-time compare), the account still there and enabled, and its stored hash
 * unchanged. So a password change or a disabled account takes effect at the next login, as without
 * the cache. A wrong password always goes the slow way, so failures (wrong password or unknown
 * user) still take the same time and get the same answer (RFC 3206 [AUTH]).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { keys, type Accounts } from '../core/accounts/accounts.js';
import type { Tables } from '../core/storage/ports.js';
import { plainAddress } from '../core/address-ranges.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import { authFailureText, type AuthThrottle } from './auth-throttle.js';

/** Options of the login cache. */
export interface LoginCacheOptions {
  /** How long a verified password is remembered; 0 turns the cache off. @default 900 */
  ttlSeconds?: number;
  /** Most entries kept; the least recently used go first. @default 10000 */
  maxEntries?: number;
  /** Clock in ms. @default Date.now */
  now?: () => number;
}

interface Entry {
  address: string;
  mac: Buffer;
  /** The stored scrypt hash the password was verified against. */
  passwordHash: string;
  expires: number;
}

/** Checks logins with Accounts.authenticate, remembering the ones that passed. */
export class LoginCache {
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly key = randomBytes(32);
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly accounts: Accounts,
    private readonly tables: Tables,
    options: LoginCacheOptions = {},
  ) {
    this.ttlMs = (options.ttlSeconds ?? 900) * 1000;
    this.maxEntries = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /** The canonical address when the credentials are right, else undefined. */
  async authenticate(login: string, password: string): Promise<string | undefined> {
    if (this.ttlMs <= 0) return (await this.accounts.authenticate(login, password))?.address;
    let address: string | undefined;
    try {
      address = this.accounts.normalize(login);
    } catch {
      address = undefined;
    }
    // Read before the slow check: if the password changes meanwhile, the entry we keep names the
    // old hash and simply misses next time.
    const item = address === undefined ? undefined : await this.tables.get(keys.user(address));
    const stored = typeof item?.passwordHash === 'string' ? item.passwordHash : undefined;
    const mac = address === undefined ? undefined : createHmac('sha256', this.key).update(address).update('\0').update(password, 'utf8').digest();
    if (address !== undefined && stored !== undefined && mac !== undefined && item?.enabled !== false) {
      const hit = this.entries.get(address);
      if (hit && hit.expires > this.now() && hit.passwordHash === stored && timingSafeEqual(hit.mac, mac)) {
        // Most recently used goes last (Map keeps insertion order).
        this.entries.delete(address);
        this.entries.set(address, hit);
        return hit.address;
      }
    }
    const user = await this.accounts.authenticate(login, password);
    if (!user) return undefined;
    if (address !== undefined && stored !== undefined && mac !== undefined) {
      this.entries.delete(address);
      this.entries.set(address, { address: user.address, mac, passwordHash: stored, expires: this.now() + this.ttlMs });
      if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    }
    return user.address;
  }

  /** Entries held (tests). */
  get size(): number {
    return this.entries.size;
  }
}

/** What a mailbox-access session (POP3, IMAP) asks of the listener about a password login. */
export interface LoginHooks {
  /** The account's address, or undefined for a wrong login or password. */
  authenticate(login: string, password: string): Promise<string | undefined>;
  /** Counts the failure, logs it and holds the answer back (the failed-login delay). */
  authFailed(login: string): Promise<void>;
  authSucceeded(user: string): void;
}

/** The login hooks of one client address, shared by POP3 and IMAP so both log and throttle alike. */
export function loginHooks(
  listener: 'pop3' | 'imap',
  parts: { logins: LoginCache; throttle: AuthThrottle; log: Logger; metrics: Metrics },
): (address: string) => LoginHooks {
  const { logins, throttle, log, metrics } = parts;
  return (address) => ({
    authenticate: (login, password) => logins.authenticate(login, password),
    authFailed: async (login) => {
      metrics.authFailures.inc({ listener });
      // The user name only in the message, after the address (see authFailureText).
      log.warn({ client: address, listener }, authFailureText(listener, address, login));
      await throttle.fail(address, login);
    },
    authSucceeded: (user) => {
      throttle.succeed(address, user);
      log.info({ client: address, user }, `${listener.toUpperCase()} login`);
    },
  });
}

/** RFC 1122 loopback: 127/8 and ::1 (also as an IPv4-mapped IPv6 address), where a listener may
 * allow a password before TLS. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = plainAddress(address);
  return a === '::1' || a.startsWith('127.');
}
