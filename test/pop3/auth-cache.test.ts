/**
 * LoginCache: a second login with the same password skips scrypt, and nothing else changes: a
 * wrong password, a changed password, a disabled or removed account and an expired entry all go
 * through the full check, over real SQLite tables and the real Accounts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { LoginCache } from '../../containers/auth-cache.js';

let dir: string;
let storage: Storage;
let accounts: Accounts;
/** Full password checks (scrypt) made through `accounts`. */
let slow = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-logincache-'));
  storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: dir }), silentLogger);
  // Cheap scrypt parameters keep the test fast; the cache does not depend on them.
  accounts = new Accounts(storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  const real = accounts.authenticate.bind(accounts);
  accounts.authenticate = (login, password) => {
    slow++;
    return real(login, password);
  };
  await accounts.addDomain('example.com');
});
afterAll(async () => {
  await storage?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('LoginCache', () => {
  it('a repeated good login skips the password hash; a wrong password never hits', async () => {
    await accounts.addUser('ann@example.com', 'first-pass');
    const cache = new LoginCache(accounts, storage.tables);
    slow = 0;
    expect(await cache.authenticate('ann@example.com', 'first-pass')).toBe('ann@example.com');
    expect(slow).toBe(1);
    // Any spelling that normalises to the same account hits.
    expect(await cache.authenticate('Ann@EXAMPLE.com', 'first-pass')).toBe('ann@example.com');
    expect(await cache.authenticate('ann@example.com', 'first-pass')).toBe('ann@example.com');
    expect(slow).toBe(1);
    expect(await cache.authenticate('ann@example.com', 'first-pasS')).toBeUndefined();
    expect(await cache.authenticate('ann@example.com', '')).toBeUndefined();
    expect(slow).toBe(3);
    expect(await cache.authenticate('nobody@example.com', 'first-pass')).toBeUndefined();
    expect(await cache.authenticate('not an address', 'first-pass')).toBeUndefined();
    expect(slow).toBe(5);
  });

  it('a changed password, a disabled account and a removed account take effect at the next login', async () => {
    await accounts.addUser('ben@example.com', 'old-pass');
    const cache = new LoginCache(accounts, storage.tables);
    expect(await cache.authenticate('ben@example.com', 'old-pass')).toBe('ben@example.com');
    await accounts.setPassword('ben@example.com', 'new-pass');
    expect(await cache.authenticate('ben@example.com', 'old-pass')).toBeUndefined();
    expect(await cache.authenticate('ben@example.com', 'new-pass')).toBe('ben@example.com');
    await accounts.setEnabled('ben@example.com', false);
    expect(await cache.authenticate('ben@example.com', 'new-pass')).toBeUndefined();
    await accounts.setEnabled('ben@example.com', true);
    expect(await cache.authenticate('ben@example.com', 'new-pass')).toBe('ben@example.com');
    await accounts.removeUser('ben@example.com');
    expect(await cache.authenticate('ben@example.com', 'new-pass')).toBeUndefined();
  });

  it('entries expire, the least recently used go first, and ttl 0 turns the cache off', async () => {
    await accounts.addUser('cat@example.com', 'cat-pass');
    await accounts.addUser('dan@example.com', 'dan-pass');
    let now = 1_000_000;
    const cache = new LoginCache(accounts, storage.tables, { ttlSeconds: 60, maxEntries: 1, now: () => now });
    slow = 0;
    await cache.authenticate('cat@example.com', 'cat-pass');
    now += 59_000;
    await cache.authenticate('cat@example.com', 'cat-pass');
    expect(slow).toBe(1);
    now += 2_000;
    await cache.authenticate('cat@example.com', 'cat-pass');
    expect(slow).toBe(2);
    await cache.authenticate('dan@example.com', 'dan-pass');
    expect(cache.size).toBe(1);
    await cache.authenticate('cat@example.com', 'cat-pass');
    expect(slow).toBe(4);

    const off = new LoginCache(accounts, storage.tables, { ttlSeconds: 0 });
    slow = 0;
    expect(await off.authenticate('cat@example.com', 'cat-pass')).toBe('cat@example.com');
    expect(await off.authenticate('cat@example.com', 'cat-pass')).toBe('cat@example.com');
    expect(slow).toBe(2);
    expect(off.size).toBe(0);
  });
});

describe('pop3.loginCacheSeconds', () => {
  it('defaults to 900 s, takes 0 (off) from the environment, refuses a negative lifetime', () => {
    expect(loadConfig({}).pop3.loginCacheSeconds).toBe(900);
    expect(loadConfig({ TOMLINSON_POP3_LOGIN_CACHE_SECONDS: '0' }).pop3.loginCacheSeconds).toBe(0);
    expect(loadConfig({ TOMLINSON_POP3_LOGIN_CACHE_SECONDS: '60' }).pop3.loginCacheSeconds).toBe(60);
    expect(() => loadConfig({ TOMLINSON_POP3_LOGIN_CACHE_SECONDS: '-1' })).toThrow(/LOGIN_CACHE_SECONDS|loginCacheSeconds/);
  });
});
