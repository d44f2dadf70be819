/**
 * WebSessions (core/accounts/web-sessions.ts) on each storage family: local, and aws on moto's
 * server. Only the hash of a session id is stored; lookup honours the absolute expiry and the
 * user's state; the per-user listing follows create, delete and revoke.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Accounts, AccountsError } from '../../core/accounts/accounts.js';
import { WebSessions } from '../../core/accounts/web-sessions.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';

vi.setConfig({ hookTimeout: 120_000 });

const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';

describe.each(FAMILIES)('WebSessions on $name', ({ open }) => {
  let target: FamilyTarget;
  let accounts: Accounts;
  // Starts at the real time: the storage adapters expire items by their TTL against the real clock.
  let clock = Date.now();
  let sessions: WebSessions;

  beforeAll(async () => {
    target = await open();
    accounts = new Accounts(target.storage.tables);
    await accounts.addDomain('example.com');
    await accounts.addUser(ALICE, 'password-alice');
    await accounts.addUser(BOB, 'password-bob');
    sessions = new WebSessions(target.storage.tables, accounts, { sessionHours: 2, now: () => clock });
  });
  afterAll(async () => target?.cleanup());

  it('stores only the hash of the id, with a TTL, and finds the session by the id', async () => {
    const s = await sessions.create(ALICE, { client: '127.0.0.1', userAgent: 'test' });
    expect(s.id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(s.expires).toBe(clock + 2 * 3600_000);
    const hash = createHash('sha256').update(s.id).digest('hex');
    const item = await target.storage.tables.get({ pk: `SESSION#${hash}`, sk: 'META' });
    expect(item).toMatchObject({ user: ALICE, csrf: s.csrf, ttl: Math.ceil(s.expires / 1000) });
    expect(JSON.stringify(item)).not.toContain(s.id);
    const listed = await target.storage.tables.get({ pk: `WEBSESS#${ALICE}`, sk: `S#${hash}` });
    expect(listed?.ttl).toBe(Math.ceil(s.expires / 1000));
    expect(await sessions.lookup(s.id)).toMatchObject({ user: ALICE, csrf: s.csrf, client: '127.0.0.1', userAgent: 'test' });
    expect(await sessions.lookup(s.id.slice(0, -1) + (s.id.endsWith('A') ? 'B' : 'A'))).toBeUndefined();
    expect(await sessions.lookup('not a session id')).toBeUndefined();
  });

  it('ends a session at its absolute expiry', async () => {
    const s = await sessions.create(ALICE, { client: '::1' });
    clock += 2 * 3600_000 - 1;
    expect(await sessions.lookup(s.id)).toBeDefined();
    clock += 1;
    expect(await sessions.lookup(s.id)).toBeUndefined();
    expect((await sessions.list(ALICE)).some((x) => s.expires === x.expires)).toBe(false);
  });

  it('refuses the session of a disabled user', async () => {
    const s = await sessions.create(BOB, { client: '::1' });
    await accounts.setEnabled(BOB, false);
    expect(await sessions.lookup(s.id)).toBeUndefined();
    await accounts.setEnabled(BOB, true);
    expect(await sessions.lookup(s.id)).toBeDefined();
    await sessions.revokeAll(BOB);
  });

  it('lists, revokes by id prefix and revokes all', async () => {
    await sessions.revokeAll(ALICE);
    const a = await sessions.create(ALICE, { client: '10.0.0.1', userAgent: 'Firefox' });
    clock += 1000;
    const b = await sessions.create(ALICE, { client: '10.0.0.2', userAgent: 'Chromium' });
    const other = await sessions.create(BOB, { client: '10.0.0.3' });
    const list = await sessions.list(ALICE);
    expect(list.map((x) => x.client)).toEqual(['10.0.0.1', '10.0.0.2']);
    expect(list[0].id).toBe(createHash('sha256').update(a.id).digest('hex').slice(0, 16));
    expect(JSON.stringify(list)).not.toContain(a.csrf);

    await expect(sessions.revoke(ALICE, 'zz')).rejects.toThrow(AccountsError);
    expect(await sessions.revoke(ALICE, 'ffffffffffffffff'.replace(/^./, list[0].id[0] === 'f' ? '0' : 'f'))).toBeUndefined();
    const gone = await sessions.revoke(ALICE, list[0].id.slice(0, 6));
    expect(gone?.client).toBe('10.0.0.1');
    expect(await sessions.lookup(a.id)).toBeUndefined();
    expect(await sessions.lookup(b.id)).toBeDefined();
    // Bob's session cannot be revoked through Alice's name.
    const bobId = (await sessions.list(BOB))[0].id;
    expect(await sessions.revoke(ALICE, bobId)).toBeUndefined();
    expect(await sessions.lookup(other.id)).toBeDefined();

    expect(await sessions.revokeAll(ALICE)).toBe(1);
    expect(await sessions.lookup(b.id)).toBeUndefined();
    expect(await sessions.list(ALICE)).toEqual([]);
    expect(await sessions.lookup(other.id)).toBeDefined();
  });

  it('delete (logout) removes the session and its listing', async () => {
    const s = await sessions.create(BOB, { client: '::1' });
    await sessions.delete(s.id);
    expect(await sessions.lookup(s.id)).toBeUndefined();
    const hash = createHash('sha256').update(s.id).digest('hex');
    expect(await target.storage.tables.get({ pk: `WEBSESS#${BOB}`, sk: `S#${hash}` })).toBeUndefined();
    await sessions.delete(s.id);
  });
});
