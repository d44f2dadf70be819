/**
 * App passwords: one per device or API client, made and revoked by the operator (`tomlinson
 * app-password add|list|revoke`), so that a lost phone costs one revocation, not the account
 * password. Only a scrypt hash is kept (the same memory-hard hash as account passwords,
 * ./password.ts); the password itself is printed once when it is made.
 *
 * The password names its own record: `tapp-<12 hex id>-<32 hex secret>` (128 random bits), so a
 * login reads one item and runs one scrypt, however many app passwords the user has. It also
 * works alone as a bearer token (RFC 6750, as API clients such as JMAP libraries send one): its
 * id finds its owner.
 *
 * | item         | pk               | sk             |
 * |--------------|------------------|----------------|
 * | app password | `USER#<address>` | `APPPW#<id>`   | (label, hash, createdAt)
 * | its owner    | `APPPW#<id>`     | `OWNER`        | (address)
 */
import { randomBytes } from 'node:crypto';
import type { Item, Tables } from '../storage/ports.js';
import { AccountsError, type Accounts } from './accounts.js';
import { DEFAULT_SCRYPT, hashPassword, verifyPassword, type ScryptParams } from './password.js';

/** An app password as listed (never the password or its hash). */
export interface AppPassword {
  id: string;
  address: string;
  label: string;
  createdAt: string;
}

/** What an app password looks like; anything else is not one (then the account password is tried). */
export const APP_PASSWORD_PATTERN = /^tapp-([0-9a-f]{12})-[0-9a-f]{32}$/;

const key = (address: string, id: string) => ({ pk: `USER#${address}`, sk: `APPPW#${id}` });
const ownerKey = (id: string) => ({ pk: `APPPW#${id}`, sk: 'OWNER' });

function toAppPassword(item: Item): AppPassword {
  return { id: item.sk.slice('APPPW#'.length), address: String(item.address), label: String(item.label ?? ''), createdAt: String(item.createdAt ?? '') };
}

/** Makes, lists, revokes and checks app passwords. */
export class AppPasswords {
  constructor(
    private readonly tables: Tables,
    private readonly accounts: Accounts,
    private readonly scrypt: ScryptParams = DEFAULT_SCRYPT,
  ) {}

  /** Makes an app password for an existing user; the password is in the result and nowhere else. */
  async add(address: string, label: string): Promise<AppPassword & { password: string }> {
    const user = await this.accounts.getUser(address);
    if (!user) throw new AccountsError('NotFound', `user ${address} does not exist`);
    const clean = label.trim();
    if (!clean || clean.length > 100 || /[\r\n\0]/.test(clean)) throw new AccountsError('Invalid', 'the label must be 1 to 100 characters on one line');
    const id = randomBytes(6).toString('hex');
    const password = `tapp-${id}-${randomBytes(16).toString('hex')}`;
    const createdAt = new Date().toISOString();
    const passwordHash = await hashPassword(password, this.scrypt);
    await this.tables.transact([
      { put: { ...key(user.address, id), address: user.address, label: clean, createdAt, passwordHash }, condition: { exists: false } },
      { put: { ...ownerKey(id), address: user.address }, condition: { exists: false } },
    ]);
    return { id, address: user.address, label: clean, createdAt, password };
  }

  /** The user's app passwords, oldest id order. */
  async list(address: string): Promise<AppPassword[]> {
    const a = this.accounts.normalize(address);
    const out: AppPassword[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(`USER#${a}`, { range: { beginsWith: 'APPPW#' }, limit: 100, cursor });
      out.push(...page.items.map(toAppPassword));
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  /** Revokes one app password by id (or by its label when that names exactly one). */
  async revoke(address: string, idOrLabel: string): Promise<AppPassword> {
    const all = await this.list(address);
    const byId = all.find((p) => p.id === idOrLabel);
    const byLabel = all.filter((p) => p.label === idOrLabel);
    const target = byId ?? (byLabel.length === 1 ? byLabel[0] : undefined);
    if (!target) {
      throw new AccountsError(
        byLabel.length > 1 ? 'Invalid' : 'NotFound',
        byLabel.length > 1 ? `several app passwords are labelled ${idOrLabel}; give the id` : `no app password ${idOrLabel} for ${address}`,
      );
    }
    await this.remove(target);
    return target;
  }

  /** Revokes every app password of the user (user removal). */
  async purge(address: string): Promise<void> {
    for (const p of await this.list(address)) await this.remove(p);
  }

  private async remove(p: AppPassword): Promise<void> {
    await this.tables.transact([{ delete: key(p.address, p.id) }, { delete: ownerKey(p.id) }]);
  }

  /** The address an app password (a bearer token) belongs to, or undefined; not yet verified. */
  async ownerOf(token: string): Promise<string | undefined> {
    const m = APP_PASSWORD_PATTERN.exec(token);
    if (!m) return undefined;
    const item = await this.tables.get(ownerKey(m[1]));
    return typeof item?.address === 'string' ? item.address : undefined;
  }

  /** The stored record a password names, with its hash, or undefined (a cache compares the hash). */
  async record(address: string, password: string): Promise<{ id: string; passwordHash: string } | undefined> {
    const m = APP_PASSWORD_PATTERN.exec(password);
    if (!m) return undefined;
    const item = await this.tables.get(key(address, m[1]));
    return typeof item?.passwordHash === 'string' ? { id: m[1], passwordHash: item.passwordHash } : undefined;
  }

  /** True when `password` is a live app password of `address` (an enabled user). */
  async verify(address: string, password: string): Promise<boolean> {
    const rec = await this.record(address, password);
    if (!rec) return false;
    const user = await this.accounts.getUser(address);
    if (!user?.enabled) return false;
    return verifyPassword(password, rec.passwordHash);
  }
}
