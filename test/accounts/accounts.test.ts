/**
 * The account model through the Tables port, on each adapter family (local: SQLite; aws: moto's
 * DynamoDB): domains, users, aliases, resolution, authentication and sender checks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts, AccountsError } from '../../core/accounts/accounts.js';
import { hashParams } from '../../core/accounts/password.js';
import type { Tables } from '../../core/storage/ports.js';
import { FAMILIES, type FamilyTarget } from './families.js';

// Cheap scrypt for model tests (the timing test uses the real cost); parameters are per hash.
const FAST = { ln: 10, r: 8, p: 1 };

describe.each(FAMILIES)('accounts on the $name family', ({ open }) => {
  let target: FamilyTarget;
  let tables: Tables;
  let accounts: Accounts;

  beforeAll(async () => {
    target = await open();
    tables = target.storage.tables;
    accounts = new Accounts(tables, { scrypt: FAST });
    await accounts.addDomain('example.com');
    await accounts.addDomain('Bücher.de');
    await accounts.addUser('bob@example.com', 'bob-password', { quotaBytes: 5000 });
    await accounts.addUser('alice@example.com', 'alice-password');
    await accounts.addUser('jürgen@bücher.de', 'jürgen-password');
  });
  afterAll(async () => target?.cleanup());

  describe('domains', () => {
    it('adds, lists (A-labels and U-labels) and knows local domains case-insensitively', async () => {
      const list = await accounts.listDomains();
      expect(list.map((d) => d.domain)).toEqual(['example.com', 'xn--bcher-kva.de']);
      expect(list[1].unicode).toBe('bücher.de');
      expect(await accounts.isLocalDomain('EXAMPLE.com')).toBe(true);
      expect(await accounts.isLocalDomain('BÜCHER.de')).toBe(true);
      expect(await accounts.isLocalDomain('xn--bcher-kva.de')).toBe(true);
      expect(await accounts.isLocalDomain('example.org')).toBe(false);
      expect(await accounts.isLocalDomain('not a domain')).toBe(false);
    });

    it('refuses a duplicate domain and changes nothing', async () => {
      await expect(accounts.addDomain('Example.COM')).rejects.toMatchObject({ code: 'Exists' });
      expect((await accounts.listDomains()).length).toBe(2);
    });

    it('refuses to remove a domain that still has users, removes an empty one', async () => {
      await expect(accounts.removeDomain('example.com')).rejects.toMatchObject({ code: 'NotEmpty' });
      await accounts.addDomain('empty.example');
      await accounts.removeDomain('empty.example');
      expect(await accounts.isLocalDomain('empty.example')).toBe(false);
      await expect(accounts.removeDomain('empty.example')).rejects.toMatchObject({ code: 'NotFound' });
    });

    it('refuses a malformed domain', async () => {
      await expect(accounts.addDomain('bad domain')).rejects.toMatchObject({ code: 'Invalid' });
    });
  });

  describe('users', () => {
    it('lists users per domain and overall, without the hash', async () => {
      const all = await accounts.listUsers();
      expect(all.map((u) => u.address)).toEqual(['alice@example.com', 'bob@example.com', 'jürgen@xn--bcher-kva.de']);
      expect(await accounts.listUsers('bücher.de')).toHaveLength(1);
      expect(JSON.stringify(all)).not.toContain('scrypt');
      expect(all[1]).toMatchObject({ address: 'bob@example.com', quotaBytes: 5000, enabled: true });
    });

    it('stores the hash with its scrypt parameters beside it', async () => {
      const item = await tables.get({ pk: 'USER#bob@example.com', sk: 'META' });
      expect(String(item?.passwordHash)).toMatch(/^\$scrypt\$ln=10,r=8,p=1\$/);
      expect(hashParams(String(item?.passwordHash))).toEqual(FAST);
    });

    it('refuses duplicates, unknown domains, short passwords and bad addresses', async () => {
      await expect(accounts.addUser('BOB@example.com', 'another-password')).rejects.toMatchObject({ code: 'Exists' });
      await expect(accounts.addUser('carol@example.org', 'carol-password')).rejects.toMatchObject({ code: 'NotFound' });
      await expect(accounts.addUser('carol@example.com', 'short')).rejects.toMatchObject({ code: 'Invalid' });
      await expect(accounts.addUser('carol', 'carol-password')).rejects.toMatchObject({ code: 'Invalid' });
      expect(await accounts.getUser('carol@example.com')).toBeUndefined();
    });

    it('changes password, quota and state; removes users', async () => {
      await accounts.addUser('dave@example.com', 'dave-password-1');
      await accounts.setPassword('Dave@Example.com', 'dave-password-2');
      expect(await accounts.authenticate('dave@example.com', 'dave-password-1')).toBeUndefined();
      expect(await accounts.authenticate('dave@example.com', 'dave-password-2')).toMatchObject({ address: 'dave@example.com' });
      expect((await accounts.setQuota('dave@example.com', 1234)).quotaBytes).toBe(1234);
      await expect(accounts.setQuota('dave@example.com', -1)).rejects.toBeInstanceOf(AccountsError);
      expect((await accounts.setEnabled('dave@example.com', false)).enabled).toBe(false);
      await accounts.removeUser('dave@example.com');
      expect(await accounts.getUser('dave@example.com')).toBeUndefined();
      expect((await accounts.listUsers('example.com')).map((u) => u.address)).not.toContain('dave@example.com');
      await expect(accounts.removeUser('dave@example.com')).rejects.toMatchObject({ code: 'NotFound' });
      await expect(accounts.setPassword('dave@example.com', 'whatever-pw')).rejects.toMatchObject({ code: 'NotFound' });
    });
  });

  describe('aliases and resolution', () => {
    beforeAll(async () => {
      await accounts.addAlias('postmaster@example.com', ['bob@example.com']);
      await accounts.addAlias('team@example.com', ['alice@example.com', 'postmaster@example.com', 'Partner@Remote.ORG']);
      await accounts.addAlias('@bücher.de', ['alice@example.com']);
      // a loop: loop1 -> loop2 -> loop1, plus bob
      await accounts.addAlias('loop1@example.com', ['loop2@example.com']);
      await accounts.addAlias('loop2@example.com', ['loop1@example.com', 'bob@example.com']);
      // a chain of 12 hops: chain0 -> chain1 -> ... -> chain11 -> alice
      for (let i = 0; i < 12; i++) await accounts.addAlias(`chain${i}@example.com`, [i === 11 ? 'alice@example.com' : `chain${i + 1}@example.com`]);
    });

    it('resolves a user to itself, case-insensitively', async () => {
      expect(await accounts.resolve('BOB@EXAMPLE.COM')).toEqual({ kind: 'local', users: ['bob@example.com'], remote: [] });
      expect(await accounts.resolve('jürgen@xn--bcher-kva.de')).toEqual({ kind: 'local', users: ['jürgen@xn--bcher-kva.de'], remote: [] });
    });

    it('expands alias chains to users and remote targets, keeping the remote local part as written', async () => {
      const r = await accounts.resolve('team@example.com');
      expect(r.kind).toBe('local');
      if (r.kind !== 'local') return;
      expect(r.users.sort()).toEqual(['alice@example.com', 'bob@example.com']);
      expect(r.remote).toEqual(['Partner@remote.org']);
    });

    it('uses the catch-all only when there is no user and no exact alias', async () => {
      expect(await accounts.resolve('anything@bücher.de')).toEqual({ kind: 'local', users: ['alice@example.com'], remote: [] });
      expect(await accounts.resolve('jürgen@bücher.de')).toEqual({ kind: 'local', users: ['jürgen@xn--bcher-kva.de'], remote: [] });
    });

    it('detects loops and still delivers to the users in them', async () => {
      expect(await accounts.resolve('loop1@example.com')).toEqual({ kind: 'local', users: ['bob@example.com'], remote: [] });
    });

    it('stops chains longer than the bound (default 8 hops)', async () => {
      expect(await accounts.resolve('chain11@example.com')).toEqual({ kind: 'local', users: ['alice@example.com'], remote: [] });
      expect(await accounts.resolve('chain0@example.com')).toEqual({ kind: 'unknown' });
      const deep = new Accounts(tables, { maxAliasDepth: 20 });
      expect(await deep.resolve('chain0@example.com')).toEqual({ kind: 'local', users: ['alice@example.com'], remote: [] });
    });

    it('answers unknown for a missing address in a local domain and remote elsewhere', async () => {
      expect(await accounts.resolve('nobody@example.com')).toEqual({ kind: 'unknown' });
      expect(await accounts.resolve('someone@example.org')).toEqual({ kind: 'remote' });
      expect(await accounts.resolve('not an address')).toEqual({ kind: 'unknown' });
    });

    it('merges targets on a second add, removes targets one by one, then the alias', async () => {
      await accounts.addAlias('sales@example.com', ['alice@example.com']);
      expect((await accounts.addAlias('Sales@example.com', ['bob@example.com', 'alice@example.com'])).targets).toEqual([
        'alice@example.com',
        'bob@example.com',
      ]);
      await accounts.removeAlias('sales@example.com', ['alice@example.com']);
      expect((await accounts.getAlias('sales@example.com'))?.targets).toEqual(['bob@example.com']);
      await expect(accounts.removeAlias('sales@example.com', ['carol@example.com'])).rejects.toMatchObject({ code: 'NotFound' });
      await accounts.removeAlias('sales@example.com', ['bob@example.com']);
      expect(await accounts.getAlias('sales@example.com')).toBeUndefined();
      expect((await accounts.listAliases('example.com')).map((a) => a.address)).not.toContain('sales@example.com');
    });

    it('refuses an alias that shadows a user, points to itself, or lives in a foreign domain', async () => {
      await expect(accounts.addAlias('bob@example.com', ['alice@example.com'])).rejects.toMatchObject({ code: 'Exists' });
      await expect(accounts.addAlias('self@example.com', ['SELF@example.com'])).rejects.toMatchObject({ code: 'Invalid' });
      await expect(accounts.addAlias('x@example.org', ['alice@example.com'])).rejects.toMatchObject({ code: 'NotFound' });
      await expect(accounts.addUser('postmaster@example.com', 'pm-password-1')).rejects.toMatchObject({ code: 'Exists' });
    });

    it('lists aliases including the catch-all', async () => {
      const list = await accounts.listAliases();
      expect(list.map((a) => a.address)).toContain('@xn--bcher-kva.de');
      expect(list.find((a) => a.address === 'team@example.com')?.targets).toHaveLength(3);
    });
  });

  describe('authentication and sender checks', () => {
    it('accepts the right password with any case of the login, refuses wrong and unknown alike', async () => {
      expect((await accounts.authenticate('Bob@Example.com', 'bob-password'))?.address).toBe('bob@example.com');
      expect(await accounts.authenticate('bob@example.com', 'wrong-password')).toBeUndefined();
      expect(await accounts.authenticate('nobody@example.com', 'bob-password')).toBeUndefined();
      expect(await accounts.authenticate('not an address', 'bob-password')).toBeUndefined();
      expect((await accounts.authenticate('JÜRGEN@bücher.de', 'jürgen-password'))?.address).toBe('jürgen@xn--bcher-kva.de');
    });

    it('refuses a disabled user even with the right password', async () => {
      await accounts.addUser('eve@example.com', 'eve-password');
      await accounts.setEnabled('eve@example.com', false);
      expect(await accounts.authenticate('eve@example.com', 'eve-password')).toBeUndefined();
      expect(await accounts.canSendAs('eve@example.com', 'eve@example.com')).toBe(false);
      await accounts.setEnabled('eve@example.com', true);
      expect(await accounts.authenticate('eve@example.com', 'eve-password')).toBeDefined();
    });

    it('upgrades an old hash at the next good login', async () => {
      const weak = new Accounts(tables, { scrypt: { ln: 8, r: 8, p: 1 } });
      await weak.addUser('old@example.com', 'old-password');
      expect(await accounts.authenticate('old@example.com', 'old-password')).toBeDefined();
      let params;
      for (let i = 0; i < 50; i++) {
        params = hashParams(String((await tables.get({ pk: 'USER#old@example.com', sk: 'META' }))?.passwordHash));
        if (params?.ln === FAST.ln) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(params).toEqual(FAST);
      expect(await accounts.authenticate('old@example.com', 'old-password')).toBeDefined();
    });

    it('lets a user send as itself and as aliases leading to it, not as others or via a catch-all', async () => {
      expect(await accounts.canSendAs('bob@example.com', 'BOB@example.com')).toBe(true);
      expect(await accounts.canSendAs('bob@example.com', 'postmaster@example.com')).toBe(true);
      expect(await accounts.canSendAs('bob@example.com', 'team@example.com')).toBe(true);
      expect(await accounts.canSendAs('alice@example.com', 'postmaster@example.com')).toBe(false);
      expect(await accounts.canSendAs('bob@example.com', 'alice@example.com')).toBe(false);
      expect(await accounts.canSendAs('alice@example.com', 'random@bücher.de')).toBe(false);
      expect(await accounts.canSendAs('nobody@example.com', 'nobody@example.com')).toBe(false);
      expect(await accounts.canSendAs('bob@example.com', 'someone@example.org')).toBe(false);
    });
  });

  it('lets exactly one of several racing addUser calls win', async () => {
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => accounts.addUser('race@example.com', `race-password-${i}`)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'Exists' });
  });
});
