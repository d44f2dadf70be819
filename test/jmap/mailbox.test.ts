/**
 * RFC 8621 §2 Mailbox methods over real local storage, with IMAP (imaplib) on the same folders
 * where one truth is the point: a mailbox made or renamed over JMAP is the folder IMAP lists.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mailboxMethods } from '../../containers/web/jmap/mailbox.js';
import type { JsonObject } from '../../containers/web/jmap/types.js';
import { addImapUsers, imapMessage, imaplib, imapPassword, startImapHarness, type ImapHarness } from '../imap/harness.js';
import { invoke, jmapContext } from './mail-context.js';

let h: ImapHarness;
beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, 'ann@example.com', 'ben@example.com', 'cy@example.com');
});
afterAll(async () => h?.close());

const ctxFor = (user: string) => jmapContext(h, user, [mailboxMethods]);
const list = (r: [string, JsonObject]) => r[1].list as JsonObject[];

describe('Mailbox/get (RFC 8621 §2.1)', () => {
  it('shows INBOX with its role, counts and rights, and the special folders with theirs', async () => {
    const u = 'ann@example.com';
    await h.deliver(u, imapMessage(1));
    await h.deliver(u, imapMessage(2));
    const inbox = (await h.folders.list(u))[0]!;
    await h.folders.storeFlags(u, inbox.id, [1], { mode: 'add', flags: ['\\Seen'] });
    await h.folders.ensureSpecialUse(u, '\\Trash');
    const ctx = ctxFor(u);
    const r = await invoke(ctx, 'Mailbox/get', { ids: null });
    expect(r[0]).toBe('Mailbox/get');
    const [i] = list(r);
    const t = list(r).find((m) => m.role === 'trash');
    // The other special-use folders are made the first time a client lists, as IMAP LIST does.
    expect(
      list(r)
        .map((m) => m.role)
        .sort(),
    ).toEqual(['archive', 'drafts', 'inbox', 'junk', 'sent', 'trash']);
    expect(i).toMatchObject({
      id: 'INBOX',
      name: 'INBOX',
      parentId: null,
      role: 'inbox',
      totalEmails: 2,
      unreadEmails: 1,
      totalThreads: 2,
      unreadThreads: 1,
      isSubscribed: true,
    });
    expect(i!.myRights).toMatchObject({ mayDelete: false, mayRename: false, mayReadItems: true });
    expect(t).toMatchObject({ name: 'Trash', role: 'trash', totalEmails: 0, parentId: null });
    expect(r[1].state).toMatch(/^[0-9]+$/);
    const some = await invoke(ctx, 'Mailbox/get', { ids: ['INBOX', 'nope'], properties: ['name'] });
    expect(some[1].list).toEqual([{ id: 'INBOX', name: 'INBOX' }]);
    expect(some[1].notFound).toEqual(['nope']);
    expect((await invoke(ctx, 'Mailbox/get', { properties: ['bogus'] }))[1].type).toBe('invalidArguments');
    expect((await invoke(ctx, 'Mailbox/get', { ids: 'INBOX' }))[1].type).toBe('invalidArguments');
  });
});

describe('Mailbox/set and /changes (RFC 8621 §2.2, §2.5)', () => {
  it('creates a tree with creation ids, renames and moves, and IMAP lists the same folders', async () => {
    const u = 'ben@example.com';
    const ctx = ctxFor(u);
    const s0 = String((await invoke(ctx, 'Mailbox/get', { ids: [] }))[1].state);
    const made = await invoke(ctx, 'Mailbox/set', {
      create: { kid: { name: '2026', parentId: '#top' }, top: { name: 'Projects' }, bad: { name: 'a/b' }, role: { name: 'Sent mail', role: 'sent' } },
    });
    expect(made[1].oldState).toBe(s0);
    const created = made[1].created as Record<string, JsonObject>;
    expect(Object.keys(created).sort()).toEqual(['kid', 'top']);
    // The first Mailbox/get made the special-use folders: a second Sent is refused.
    const sent = list(await invoke(ctx, 'Mailbox/get', { ids: null })).find((m) => m.role === 'sent')!;
    expect(sent).toMatchObject({ name: 'Sent', parentId: null });
    expect((made[1].notCreated as Record<string, JsonObject>).role).toMatchObject({ type: 'invalidProperties', properties: ['role'] });
    expect(created.top).toMatchObject({ totalEmails: 0, isSubscribed: true });
    expect((made[1].notCreated as Record<string, JsonObject>).bad).toMatchObject({ type: 'invalidProperties', properties: ['name'] });
    const top = String(created.top!.id);
    const kid = String(created.kid!.id);
    const got = list(await invoke(ctx, 'Mailbox/get', { ids: [kid] }));
    expect(got[0]).toMatchObject({ name: '2026', parentId: top, role: null });

    const ch = await invoke(ctx, 'Mailbox/changes', { sinceState: s0 });
    expect((ch[1].created as string[]).sort()).toEqual([kid, top].sort());
    expect(ch[1]).toMatchObject({ updated: [], destroyed: [], hasMoreChanges: false, updatedProperties: null });
    const s1 = String(ch[1].newState);

    // Rename the child and move it to the top level; unsubscribe it.
    const up = await invoke(ctx, 'Mailbox/set', { ifInState: made[1].newState, update: { [kid]: { name: 'Year 2026', parentId: null, isSubscribed: false } } });
    expect(up[1].updated).toEqual({ [kid]: null });
    const stale = await invoke(ctx, 'Mailbox/set', { ifInState: s0, update: { [kid]: { name: 'x' } } });
    expect(stale).toEqual(['error', { type: 'stateMismatch' }]);
    const loop = await invoke(ctx, 'Mailbox/set', { update: { [top]: { parentId: top }, INBOX: { name: 'Inbox2' } } });
    expect((loop[1].notUpdated as Record<string, JsonObject>)[top]).toMatchObject({ type: 'invalidProperties', properties: ['parentId'] });
    expect((loop[1].notUpdated as Record<string, JsonObject>).INBOX).toMatchObject({ type: 'forbidden' });
    const ch2 = await invoke(ctx, 'Mailbox/changes', { sinceState: s1 });
    expect(ch2[1]).toMatchObject({ created: [], updated: [kid], destroyed: [], updatedProperties: null });

    const r = await imaplib({ port: h.port, user: u, password: imapPassword(u), steps: [['login'], ['list', '""', '*'], ['lsub', '""', '*']] });
    expect(r.error).toBeUndefined();
    const listed = (r.results[1] as [string, string[]])[1].join('\n');
    expect(listed).toContain('"Year 2026"');
    expect(listed).toContain('Projects');
    expect(listed).toMatch(/\\Sent.*"Sent"/);
    expect(listed).not.toContain('Sent mail');
    expect((r.results[2] as [string, string[]])[1].join('\n')).not.toContain('Year 2026');
  });

  it('refuses to destroy INBOX, a parent or a non-empty mailbox; onDestroyRemoveEmails removes its Emails', async () => {
    const u = 'cy@example.com';
    const ctx = ctxFor(u);
    const made = await invoke(ctx, 'Mailbox/set', { create: { p: { name: 'Parent' }, c: { name: 'Child', parentId: '#p' } } });
    const ids = made[1].created as Record<string, JsonObject>;
    const p = String(ids.p!.id);
    const c = String(ids.c!.id);
    const { uid } = await h.deliver(u, imapMessage(3));
    await h.folders.copy(u, 'INBOX', [uid], c);
    const s0 = String(made[1].newState);

    const refused = await invoke(ctx, 'Mailbox/set', { destroy: ['INBOX', p, c, 'missing'] });
    expect(refused[1].notDestroyed).toMatchObject({
      INBOX: { type: 'forbidden' },
      [p]: { type: 'mailboxHasChild' },
      [c]: { type: 'mailboxHasEmail' },
      missing: { type: 'notFound' },
    });
    expect(refused[1].destroyed).toBeNull();

    // Both in one call: the child goes first, then its parent.
    const gone = await invoke(ctx, 'Mailbox/set', { destroy: [p, c], onDestroyRemoveEmails: true });
    expect((gone[1].destroyed as string[]).sort()).toEqual([c, p].sort());
    // The copy in INBOX stays: it was one Email in two mailboxes and lost one of them.
    expect((await h.folders.status(u, 'INBOX')).count).toBe(1);
    const ch = await invoke(ctx, 'Mailbox/changes', { sinceState: s0 });
    expect((ch[1].destroyed as string[]).sort()).toEqual([c, p].sort());
    // INBOX changed by count only (the delivery) and is not reported otherwise.
    expect(ch[1].updated).toEqual(['INBOX']);
    expect(ch[1].updatedProperties).toEqual(['totalEmails', 'unreadEmails', 'totalThreads', 'unreadThreads']);
  });

  it('pages changes by maxChanges and refuses states it never gave out', async () => {
    const u = 'ann@example.com';
    const ctx = ctxFor(u);
    const s0 = String((await invoke(ctx, 'Mailbox/get', { ids: [] }))[1].state);
    await invoke(ctx, 'Mailbox/set', { create: { a: { name: 'A1' }, b: { name: 'B1' }, c: { name: 'C1' } } });
    const first = await invoke(ctx, 'Mailbox/changes', { sinceState: s0, maxChanges: 2 });
    expect(first[1].hasMoreChanges).toBe(true);
    expect((first[1].created as string[]).length).toBe(2);
    const second = await invoke(ctx, 'Mailbox/changes', { sinceState: first[1].newState, maxChanges: 2 });
    expect(second[1]).toMatchObject({ hasMoreChanges: false });
    expect((second[1].created as string[]).length).toBe(1);
    expect((await invoke(ctx, 'Mailbox/changes', { sinceState: 'garbage' }))[1].type).toBe('cannotCalculateChanges');
    expect((await invoke(ctx, 'Mailbox/changes', { sinceState: '999999' }))[1].type).toBe('cannotCalculateChanges');
  });
});

describe('Mailbox/query (RFC 8621 §2.3)', () => {
  it('filters by role and parent, sorts by name and as a tree', async () => {
    const u = 'ann@example.com';
    const ctx = ctxFor(u);
    await invoke(ctx, 'Mailbox/set', { create: { z: { name: 'Zoo' }, zc: { name: 'Ant', parentId: '#z' } } });
    const roles = await invoke(ctx, 'Mailbox/query', { filter: { hasAnyRole: true } });
    expect(roles[1].ids).toEqual(expect.arrayContaining(['INBOX']));
    expect((roles[1].ids as string[]).length).toBe(6); // INBOX and the five special-use folders
    const byName = await invoke(ctx, 'Mailbox/query', { filter: { parentId: null }, sort: [{ property: 'name' }], calculateTotal: true });
    const names = list(await invoke(ctx, 'Mailbox/get', { ids: byName[1].ids, properties: ['name'] })).map((m) => m.name);
    expect(names).toEqual([...names].sort((a, b) => String(a).localeCompare(String(b))));
    expect(byName[1].total).toBe(names.length);
    const tree = await invoke(ctx, 'Mailbox/query', { sortAsTree: true, sort: [{ property: 'name' }] });
    const ids = tree[1].ids as string[];
    const all = list(await invoke(ctx, 'Mailbox/get', { ids }));
    const zoo = all.findIndex((m) => m.name === 'Zoo');
    expect(all[zoo + 1]!.name).toBe('Ant');
    expect((await invoke(ctx, 'Mailbox/query', { filter: { colour: 'red' } }))[1].type).toBe('unsupportedFilter');
    expect((await invoke(ctx, 'Mailbox/query', { sort: [{ property: 'colour' }] }))[1].type).toBe('unsupportedSort');
    expect((await invoke(ctx, 'Mailbox/queryChanges', { sinceQueryState: '1' }))[1].type).toBe('cannotCalculateChanges');
  });
});
