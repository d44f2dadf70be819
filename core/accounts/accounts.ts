/**
 * The account model: local domains, users (login = address, scrypt hash, quota, enabled) and
 * aliases (exact or catch-all), kept through the Tables port so it works on both adapter
 * families. Keys follow DESIGN.md's data model; since the port has no scan, each kind also has a
 * listing partition written in the same transaction as the item:
 *
 * | item    | pk                     | sk          |
 * |---------|------------------------|-------------|
 * | domain  | `DOMAIN#<domain>`      | `META`      |
 * | listing | `DOMAINS`              | `<domain>`  |
 * | user    | `USER#<address>`       | `META`      |
 * | listing | `USERS#<domain>`       | `<address>` |
 * | alias   | `ALIAS#<address>`      | `META`      | catch-all: `ALIAS#@<domain>`
 * | listing | `ALIASES#<domain>`     | `<address>` |
 */
import { randomBytes } from 'node:crypto';
import { domainToUnicode } from 'node:url';
import { isStorageError, type Item, type QueryOptions, type Tables, type TransactOp } from '../storage/ports.js';
import { InvalidAddress, normalizeDomain, normalizeLocal, parseAddress, parseCatchAll, type AddressOptions } from './address.js';
import { DEFAULT_SCRYPT, hashPassword, needsRehash, verifyPassword, type ScryptParams } from './password.js';

export { InvalidAddress } from './address.js';

/** Why an account operation was refused. */
export type AccountsErrorCode = 'NotFound' | 'Exists' | 'NotEmpty' | 'Invalid';

/** An account operation was refused and nothing was changed; `message` is fit for an operator. */
export class AccountsError extends Error {
  constructor(
    readonly code: AccountsErrorCode,
    message: string,
  ) {
    super(message);
    this.name = `AccountsError(${code})`;
  }
}

/** A local domain. */
export interface Domain {
  /** Lower-case A-labels, e.g. `xn--bcher-kva.example`. */
  domain: string;
  /** The same name in U-labels, for people. */
  unicode: string;
  createdAt: string;
}

/** A user: the login is the address. The password hash never leaves this module. */
export interface User {
  address: string;
  domain: string;
  /** Mailbox size limit in bytes; 0 means unlimited. */
  quotaBytes: number;
  /** A disabled user cannot log in or send; mail to it is still accepted and kept. */
  enabled: boolean;
  createdAt: string;
}

/** An alias: an address (or `@domain` catch-all) forwarding to local users or remote addresses. */
export interface Alias {
  address: string;
  domain: string;
  targets: string[];
  createdAt: string;
}

/** What RCPT TO may do with an address. */
export type Resolution = { kind: 'local'; users: string[]; remote: string[] } | { kind: 'unknown' } | { kind: 'remote' };

/** Options of the account model. */
export interface AccountsOptions extends AddressOptions {
  /** scrypt parameters of new hashes; older hashes are upgraded at the next good login. @default DEFAULT_SCRYPT */
  scrypt?: ScryptParams;
  /** How many alias hops resolution follows before it stops a branch. @default 8 */
  maxAliasDepth?: number;
  /** Injectable clock. @default () => new Date() */
  now?: () => Date;
}

/** Key helpers, exported for the mailbox store and tests. */
export const keys = {
  domain: (d: string) => ({ pk: `DOMAIN#${d}`, sk: 'META' }),
  domainListing: (d: string) => ({ pk: 'DOMAINS', sk: d }),
  user: (a: string) => ({ pk: `USER#${a}`, sk: 'META' }),
  userListing: (domain: string, a: string) => ({ pk: `USERS#${domain}`, sk: a }),
  alias: (a: string) => ({ pk: `ALIAS#${a}`, sk: 'META' }),
  aliasListing: (domain: string, a: string) => ({ pk: `ALIASES#${domain}`, sk: a }),
};

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1);
}

function toUser(item: Item): User {
  return {
    address: String(item.address),
    domain: String(item.domain),
    quotaBytes: Number(item.quotaBytes ?? 0),
    enabled: item.enabled !== false,
    createdAt: String(item.createdAt ?? ''),
  };
}

function toAlias(item: Item): Alias {
  return {
    address: String(item.address),
    domain: String(item.domain),
    targets: Array.isArray(item.targets) ? item.targets.map(String) : [],
    createdAt: String(item.createdAt ?? ''),
  };
}

/** Most lookups one cache keeps; the oldest go first. */
const LOOKUP_CACHE_ENTRIES = 10_000;

/**
 * A short-lived cache of domain, user and alias items for address resolution, shared by every
 * Accounts on one Tables (the SMTP listener's and each inbound job's). Misses read eventually
 * consistent: the entry is allowed to be stale anyway. Writes made through Accounts in this
 * process drop their keys at once; writes made elsewhere (the CLI, another task) are seen within
 * `ttlMs`. Password checks never use it.
 */
class LookupCache {
  private readonly entries = new Map<string, { item: Item | undefined; expires: number }>();

  constructor(
    readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async get(tables: Tables, key: { pk: string; sk: string }): Promise<Item | undefined> {
    const id = `${key.pk}\0${key.sk}`;
    const hit = this.entries.get(id);
    if (hit && hit.expires > this.now()) return hit.item;
    const item = await tables.get(key, { consistent: false });
    this.entries.delete(id);
    if (this.entries.size >= LOOKUP_CACHE_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(id, { item, expires: this.now() + this.ttlMs });
    return item;
  }

  drop(key: { pk: string; sk: string }): void {
    this.entries.delete(`${key.pk}\0${key.sk}`);
  }
}

const lookupCaches = new WeakMap<Tables, LookupCache>();

/** Domains, users and aliases; address resolution for SMTP and password checks for every login. */
export class Accounts {
  private readonly scrypt: ScryptParams;
  private readonly maxDepth: number;
  private readonly now: () => Date;
  private readonly addr: AddressOptions;
  private dummyHash?: string;

  constructor(
    private readonly tables: Tables,
    options: AccountsOptions = {},
  ) {
    this.scrypt = options.scrypt ?? DEFAULT_SCRYPT;
    this.maxDepth = options.maxAliasDepth ?? 8;
    this.now = options.now ?? (() => new Date());
    this.addr = { localPartCaseSensitive: options.localPartCaseSensitive ?? false };
  }

  /** Normalises an address as the model stores it (throws InvalidAddress). */
  normalize(address: string): string {
    return parseAddress(address, this.addr).address;
  }

  /**
   * Lets every Accounts on `tables` keep domain, user and alias lookups for `seconds` (the
   * listeners and workers of the aws family, `mail.accountCacheSeconds`); 0 turns it off.
   */
  static cacheLookups(tables: Tables, seconds: number, now?: () => number): void {
    if (seconds > 0) lookupCaches.set(tables, new LookupCache(seconds * 1000, now));
    else lookupCaches.delete(tables);
  }

  /** A domain, user or alias item for resolution: from the lookup cache when there is one. */
  private lookup(key: { pk: string; sk: string }): Promise<Item | undefined> {
    const cache = lookupCaches.get(this.tables);
    return cache ? cache.get(this.tables, key) : this.tables.get(key);
  }

  /** Forgets cached lookups of keys this process just changed. */
  private changed(...keys: { pk: string; sk: string }[]): void {
    const cache = lookupCaches.get(this.tables);
    for (const k of keys) cache?.drop(k);
  }

  // ------------------------------------------------------------------------------------------
  // Domains

  /** True when mail for `domain` is delivered here. Never throws on a malformed domain. */
  async isLocalDomain(domain: string): Promise<boolean> {
    let d: string;
    try {
      d = normalizeDomain(domain);
    } catch {
      return false;
    }
    return (await this.lookup(keys.domain(d))) !== undefined;
  }

  /** Adds a local domain; AccountsError('Exists') when it is already there. */
  async addDomain(domain: string): Promise<Domain> {
    const d = this.domainArg(domain);
    const createdAt = this.now().toISOString();
    try {
      await this.tables.transact([
        { put: { ...keys.domain(d), domain: d, createdAt }, condition: { exists: false } },
        { put: { ...keys.domainListing(d), domain: d } },
      ]);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) throw new AccountsError('Exists', `domain ${d} already exists`);
      throw e;
    }
    this.changed(keys.domain(d));
    return { domain: d, unicode: domainToUnicode(d), createdAt };
  }

  /** Removes a local domain that has no users and no aliases left. */
  async removeDomain(domain: string): Promise<void> {
    const d = this.domainArg(domain);
    if (!(await this.tables.get(keys.domain(d)))) throw new AccountsError('NotFound', `domain ${d} does not exist`);
    const users = await this.tables.query(`USERS#${d}`, { limit: 1 });
    const aliases = await this.tables.query(`ALIASES#${d}`, { limit: 1 });
    if (users.items.length || aliases.items.length) {
      throw new AccountsError('NotEmpty', `domain ${d} still has ${users.items.length ? 'users' : 'aliases'}; remove them first`);
    }
    await this.tables.transact([{ delete: keys.domain(d), condition: { exists: true } }, { delete: keys.domainListing(d) }]);
    this.changed(keys.domain(d));
  }

  /** One domain, or undefined. */
  async getDomain(domain: string): Promise<Domain | undefined> {
    const d = this.domainArg(domain);
    const item = await this.tables.get(keys.domain(d));
    return item ? { domain: d, unicode: domainToUnicode(d), createdAt: String(item.createdAt ?? '') } : undefined;
  }

  /** Every local domain, sorted. */
  async listDomains(): Promise<Domain[]> {
    const out: Domain[] = [];
    for await (const item of this.queryAll('DOMAINS')) {
      const full = await this.tables.get(keys.domain(item.sk));
      if (full) out.push({ domain: item.sk, unicode: domainToUnicode(item.sk), createdAt: String(full.createdAt ?? '') });
    }
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // Users

  /** Adds a user in a local domain; refuses duplicates and addresses that are aliases. */
  async addUser(address: string, password: string, options: { quotaBytes?: number; enabled?: boolean } = {}): Promise<User> {
    const a = this.addressArg(address);
    const d = domainOf(a);
    checkPassword(password);
    const quotaBytes = options.quotaBytes ?? 0;
    checkQuota(quotaBytes);
    if (!(await this.tables.get(keys.domain(d)))) throw new AccountsError('NotFound', `domain ${d} is not a local domain; add it first`);
    const passwordHash = await hashPassword(password, this.scrypt);
    const createdAt = this.now().toISOString();
    const user: User = { address: a, domain: d, quotaBytes, enabled: options.enabled ?? true, createdAt };
    try {
      await this.tables.transact([
        { check: keys.domain(d), condition: { exists: true } },
        { check: keys.alias(a), condition: { exists: false } },
        { put: { ...keys.user(a), ...user, passwordHash }, condition: { exists: false } },
        { put: { ...keys.userListing(d, a), address: a } },
      ]);
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) {
        if (await this.tables.get(keys.user(a))) throw new AccountsError('Exists', `user ${a} already exists`);
        if (await this.tables.get(keys.alias(a))) throw new AccountsError('Exists', `${a} is an alias; remove the alias first`);
        throw new AccountsError('NotFound', `domain ${d} is not a local domain`);
      }
      throw e;
    }
    this.changed(keys.user(a));
    return user;
  }

  /** One user, or undefined (also for a malformed address); from the lookup cache when there is one. */
  async getUser(address: string): Promise<User | undefined> {
    let a: string;
    try {
      a = this.normalize(address);
    } catch {
      return undefined;
    }
    const item = await this.lookup(keys.user(a));
    return item ? toUser(item) : undefined;
  }

  /** Users of one domain, or of every domain, sorted by domain then address. */
  async listUsers(domain?: string): Promise<User[]> {
    const domains = domain ? [this.domainArg(domain)] : (await this.listDomains()).map((x) => x.domain);
    const out: User[] = [];
    for (const d of domains) {
      for await (const item of this.queryAll(`USERS#${d}`)) {
        const full = await this.tables.get(keys.user(item.sk));
        if (full) out.push(toUser(full));
      }
    }
    return out;
  }

  /** Replaces a user's password (new salt, current parameters). */
  async setPassword(address: string, password: string): Promise<void> {
    checkPassword(password);
    const a = await this.existingUser(address);
    const passwordHash = await hashPassword(password, this.scrypt);
    await this.updateUser(a, { passwordHash, passwordChangedAt: this.now().toISOString() });
  }

  /** Sets the mailbox quota in bytes (0: unlimited). */
  async setQuota(address: string, quotaBytes: number): Promise<User> {
    checkQuota(quotaBytes);
    const a = await this.existingUser(address);
    return toUser(await this.updateUser(a, { quotaBytes }));
  }

  /** Enables or disables a user (a disabled user cannot log in or send). */
  async setEnabled(address: string, enabled: boolean): Promise<User> {
    const a = await this.existingUser(address);
    return toUser(await this.updateUser(a, { enabled }));
  }

  /** Removes a user (the caller empties the mailbox with MailboxStore.purge). */
  async removeUser(address: string): Promise<void> {
    const a = await this.existingUser(address);
    await this.tables.transact([{ delete: keys.user(a), condition: { exists: true } }, { delete: keys.userListing(domainOf(a), a) }]);
    this.changed(keys.user(a));
    // Its app passwords (app-passwords.ts) go too, or a user added again later under the same
    // address would inherit them.
    for await (const item of this.queryAll(`USER#${a}`, { range: { beginsWith: 'APPPW#' } })) await this.tables.delete({ pk: item.pk, sk: item.sk });
  }

  // ------------------------------------------------------------------------------------------
  // Aliases

  /** Creates an alias or adds targets to an existing one. `address` may be `@domain` (catch-all). */
  async addAlias(address: string, targets: string[]): Promise<Alias> {
    const a = this.aliasArg(address);
    const d = domainOf(a);
    if (!targets.length) throw new AccountsError('Invalid', 'an alias needs at least one target');
    const norm = await Promise.all(targets.map((t) => this.targetArg(t)));
    if (norm.includes(a)) throw new AccountsError('Invalid', `alias ${a} cannot point to itself`);
    if (!(await this.tables.get(keys.domain(d)))) throw new AccountsError('NotFound', `domain ${d} is not a local domain; add it first`);
    if (!a.startsWith('@') && (await this.tables.get(keys.user(a)))) throw new AccountsError('Exists', `${a} is a user; an alias cannot shadow it`);
    for (let attempt = 0; ; attempt++) {
      const existing = await this.tables.get(keys.alias(a));
      const merged = [...new Set([...(existing ? toAlias(existing).targets : []), ...norm])];
      const createdAt = existing ? String(existing.createdAt) : this.now().toISOString();
      const ops: TransactOp[] = [
        { check: keys.domain(d), condition: { exists: true } },
        {
          put: { ...keys.alias(a), address: a, domain: d, targets: merged, createdAt, version: Number(existing?.version ?? 0) + 1 },
          condition: existing ? { equals: { version: existing.version ?? null } } : { exists: false },
        },
        { put: { ...keys.aliasListing(d, a), address: a } },
      ];
      if (!a.startsWith('@')) ops.push({ check: keys.user(a), condition: { exists: false } });
      try {
        await this.tables.transact(ops);
        this.changed(keys.alias(a));
        return { address: a, domain: d, targets: merged, createdAt };
      } catch (e) {
        if (!isStorageError(e, 'ConditionFailed') || attempt >= 5) throw e;
      }
    }
  }

  /** Removes an alias, or only the given targets of it (the alias goes when none remain). */
  async removeAlias(address: string, targets?: string[]): Promise<void> {
    const a = this.aliasArg(address);
    const existing = await this.tables.get(keys.alias(a));
    if (!existing) throw new AccountsError('NotFound', `alias ${a} does not exist`);
    const current = toAlias(existing).targets;
    let remaining: string[] = [];
    if (targets?.length) {
      const drop = await Promise.all(targets.map((t) => this.targetArg(t)));
      for (const t of drop) if (!current.includes(t)) throw new AccountsError('NotFound', `alias ${a} has no target ${t}`);
      remaining = current.filter((t) => !drop.includes(t));
    }
    const cond = { equals: { version: existing.version ?? null } };
    if (remaining.length) {
      await this.tables.update(keys.alias(a), { set: { targets: remaining }, add: { version: 1 } }, { condition: cond });
    } else {
      await this.tables.transact([{ delete: keys.alias(a), condition: cond }, { delete: keys.aliasListing(domainOf(a), a) }]);
    }
    this.changed(keys.alias(a));
  }

  /** One alias, or undefined. */
  async getAlias(address: string): Promise<Alias | undefined> {
    const item = await this.tables.get(keys.alias(this.aliasArg(address)));
    return item ? toAlias(item) : undefined;
  }

  /** Aliases of one domain or of every domain. */
  async listAliases(domain?: string): Promise<Alias[]> {
    const domains = domain ? [this.domainArg(domain)] : (await this.listDomains()).map((x) => x.domain);
    const out: Alias[] = [];
    for (const d of domains) {
      for await (const item of this.queryAll(`ALIASES#${d}`)) {
        const full = await this.tables.get(keys.alias(item.sk));
        if (full) out.push(toAlias(full));
      }
    }
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // Resolution, authentication, sender checks

  /**
   * For RCPT TO: local mailboxes and remote targets after alias expansion; 'unknown' for an
   * address in a local domain that leads to no mailbox (or a malformed address); 'remote' for a
   * non-local domain. A user's own address wins over an alias, an exact alias over the catch-all.
   * Chains are followed breadth-first to `maxAliasDepth` hops; a loop stops its branch.
   */
  async resolve(address: string, options: { catchAll?: boolean } = {}): Promise<Resolution> {
    let start: string;
    try {
      start = this.normalize(address);
    } catch {
      return { kind: 'unknown' };
    }
    if (!(await this.lookup(keys.domain(domainOf(start))))) return { kind: 'remote' };
    const users = new Set<string>();
    const remote = new Set<string>();
    const seen = new Set<string>([start]);
    const localDomains = new Map<string, boolean>();
    const isLocal = async (d: string) => {
      let v = localDomains.get(d);
      if (v === undefined) localDomains.set(d, (v = (await this.lookup(keys.domain(d))) !== undefined));
      return v;
    };
    localDomains.set(domainOf(start), true);
    let frontier = [start];
    for (let depth = 0; frontier.length && depth <= this.maxDepth; depth++) {
      const next: string[] = [];
      for (const addr of frontier) {
        const d = domainOf(addr);
        if (!(await isLocal(d))) {
          remote.add(addr);
          continue;
        }
        const local = normalizeLocal(addr.slice(0, addr.lastIndexOf('@')), this.addr);
        const key = `${local}@${d}`;
        if (await this.lookup(keys.user(key))) {
          users.add(key);
          continue;
        }
        let alias = await this.lookup(keys.alias(key));
        if (!alias && options.catchAll !== false) alias = await this.lookup(keys.alias(`@${d}`));
        if (!alias) continue;
        for (const t of toAlias(alias).targets) {
          const tl = (await isLocal(domainOf(t))) ? `${normalizeLocal(t.slice(0, t.lastIndexOf('@')), this.addr)}@${domainOf(t)}` : t;
          if (seen.has(tl)) continue; // a loop, or a target reached by another branch
          seen.add(tl);
          next.push(tl);
        }
      }
      frontier = next;
    }
    if (!users.size && !remote.size) return { kind: 'unknown' };
    return { kind: 'local', users: [...users], remote: [...remote] };
  }

  /**
   * Checks a login. Constant-time: an unknown or disabled user is checked against a dummy hash
   * with the same parameters, so it takes as long and gives the same answer as a wrong password.
   */
  async authenticate(login: string, password: string): Promise<User | undefined> {
    let a: string | undefined;
    try {
      a = this.normalize(login);
    } catch {
      a = undefined;
    }
    const item = a ? await this.tables.get(keys.user(a)) : undefined;
    const stored = typeof item?.passwordHash === 'string' ? item.passwordHash : this.dummy();
    const ok = await verifyPassword(password, stored);
    if (!ok || !item || item.enabled === false) return undefined;
    if (needsRehash(stored, this.scrypt)) {
      // Upgrade in the background: the login does not wait, and a lost race is harmless.
      hashPassword(password, this.scrypt)
        .then((h) => this.tables.update(keys.user(a!), { set: { passwordHash: h } }, { condition: { equals: { passwordHash: stored } } }))
        .catch(() => undefined);
    }
    return toUser(item);
  }

  /** May this user send as this address: its own address, or an alias (not a catch-all) that
   * leads to it? Disabled and unknown users may not. */
  async canSendAs(login: string, address: string): Promise<boolean> {
    let l: string;
    let a: string;
    try {
      l = this.normalize(login);
      a = this.normalize(address);
    } catch {
      return false;
    }
    const user = await this.tables.get(keys.user(l));
    if (!user || user.enabled === false) return false;
    if (l === a) return true;
    const r = await this.resolve(a, { catchAll: false });
    return r.kind === 'local' && r.users.includes(l);
  }

  // ------------------------------------------------------------------------------------------

  /** A well-formed hash with the current parameters and random salt and key: checking against it
   * costs exactly one scrypt, like a real user, and matches no password. */
  private dummy(): string {
    this.dummyHash ??= `$scrypt$ln=${this.scrypt.ln},r=${this.scrypt.r},p=${this.scrypt.p}$${randomBytes(16).toString('base64')}$${randomBytes(32).toString('base64')}`;
    return this.dummyHash;
  }

  private async *queryAll(pk: string, options: QueryOptions = {}): AsyncGenerator<Item> {
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(pk, { ...options, limit: 100, cursor });
      yield* page.items;
      cursor = page.cursor;
    } while (cursor);
  }

  private domainArg(domain: string): string {
    try {
      return normalizeDomain(domain);
    } catch (e) {
      throw new AccountsError('Invalid', (e as Error).message);
    }
  }

  private addressArg(address: string): string {
    try {
      return this.normalize(address);
    } catch (e) {
      throw new AccountsError('Invalid', (e as Error).message);
    }
  }

  private aliasArg(address: string): string {
    try {
      const catchAll = parseCatchAll(address);
      return catchAll ? `@${catchAll}` : this.normalize(address);
    } catch (e) {
      throw new AccountsError('Invalid', (e as Error).message);
    }
  }

  /** A target keeps its local part as written when remote (RFC 5321 §2.4: only the receiving
   * host interprets it); a local target is normalised like every local address. */
  private async targetArg(target: string): Promise<string> {
    try {
      const p = parseAddress(target, { localPartCaseSensitive: true });
      if (await this.tables.get(keys.domain(p.domain))) return `${normalizeLocal(p.local, this.addr)}@${p.domain}`;
      return p.address;
    } catch (e) {
      if (e instanceof InvalidAddress) throw new AccountsError('Invalid', e.message);
      throw e;
    }
  }

  private async existingUser(address: string): Promise<string> {
    const a = this.addressArg(address);
    if (!(await this.tables.get(keys.user(a)))) throw new AccountsError('NotFound', `user ${a} does not exist`);
    return a;
  }

  private async updateUser(a: string, set: Record<string, string | number | boolean>): Promise<Item> {
    try {
      const item = await this.tables.update(keys.user(a), { set }, { condition: { exists: true } });
      this.changed(keys.user(a));
      return item;
    } catch (e) {
      if (isStorageError(e, 'ConditionFailed')) throw new AccountsError('NotFound', `user ${a} does not exist`);
      throw e;
    }
  }
}

function checkPassword(password: string): void {
  if (password.length < 8) throw new AccountsError('Invalid', 'password must have at least 8 characters');
  if (password.length > 1024) throw new AccountsError('Invalid', 'password longer than 1024 characters');
  if (/[\r\n\0]/.test(password)) throw new AccountsError('Invalid', 'password contains a line break or NUL');
}

function checkQuota(q: number): void {
  if (!Number.isSafeInteger(q) || q < 0) throw new AccountsError('Invalid', `quota must be a whole number of bytes >= 0, got ${q}`);
}
