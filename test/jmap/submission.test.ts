/**
 * Identity and EmailSubmission (RFC 8621 §6, §7) called with a JmapContext over real local
 * storage; sending is observed at a real SMTP peer (aiosmtpd, test/outbound/remote_mx.py) after
 * the inbound and outbound workers ran. Email/get and Email/set are another module's: the test
 * registers its own to see the implicit calls (onSuccessUpdateEmail, onSuccessDestroyEmail).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { identityIdOf, submissionMethods } from '../../containers/web/jmap/submission.js';
import type { JmapContext, JsonObject } from '../../containers/web/jmap/types.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, startRemote, type RemoteMx, type TestEnv } from '../outbound/harness.js';
import { putEmail, testContext, type TestContext } from './context.js';

let dns: TestDnsServer;
let remote: RemoteMx;
let env: TestEnv;
let t: TestContext;
let ctx: JmapContext;
const m = submissionMethods.methods;

beforeAll(async () => {
  dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx.remote.test' }] }, 'mx.remote.test': { A: ['127.0.0.1'] } });
  // The second message sent is refused for now (451): it waits in the queue, where it can be canceled.
  remote = await startRemote({ dataReplies: [250, 451, 250] });
  env = await openEnv({ TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_OUTBOUND_MX_PORT: String(remote.port), TOMLINSON_OUTBOUND_TLS_VERIFY: 'never' });
  const accounts = new Accounts(env.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser('alice@example.test', 'pw-alice-123456');
  await accounts.addUser('bob@example.test', 'pw-bob-1234567');
  await accounts.addAlias('al@example.test', ['alice@example.test']);
  await accounts.addAlias('team@example.test', ['bob@example.test']);
  t = testContext('alice@example.test', env.config, env.storage);
  ctx = t.ctx;
  t.methods.set('Email/get', async (args) => ({
    accountId: ctx.accountId,
    list: (args.ids as string[]).map((id) => ({ id, threadId: `T${id.slice(1)}` })),
    notFound: [],
  }));
  t.methods.set('Email/set', async (args) => ({
    accountId: ctx.accountId,
    updated: Object.fromEntries(Object.keys((args.update as JsonObject) ?? {}).map((k) => [k, null])),
    destroyed: args.destroy ?? null,
  }));
});
afterAll(async () => {
  await env?.close();
  await remote?.close();
  await dns?.close();
});

const raw = (from: string, to: string, subject: string, extra = '') =>
  `From: Alice <${from}>\r\nTo: ${to}\r\n${extra}Subject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.test>\r\nDate: Sun, 01 Mar 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello ${subject}.\r\n`;

async function work(): Promise<void> {
  for (let i = 0; i < 2; i++) {
    await drain(env, 'inbound', inboundJob);
    await drain(env, 'outbound', createOutboundJob());
  }
}

const aliceId = identityIdOf('alice@example.test');

describe('Identity (RFC 8621 §6)', () => {
  it('offers one identity per address the user may send as, and creates, updates and destroys', async () => {
    const got = await m['Identity/get']({ accountId: ctx.accountId, ids: null }, ctx);
    expect((got.list as JsonObject[]).map((i) => [i.email, i.mayDelete])).toEqual([
      ['alice@example.test', false],
      ['al@example.test', false],
    ]);
    const state0 = String(got.state);

    const set = await m['Identity/set'](
      {
        accountId: ctx.accountId,
        create: {
          work: { email: 'al@example.test', name: 'Alice at work', textSignature: '-- A' },
          theft: { email: 'bob@example.test' },
          junk: { email: 'al@example.test', colour: 1 },
        },
        update: { [aliceId]: { name: 'Alice Liddell' }, Inope: { name: 'x' } },
        destroy: [aliceId],
      },
      ctx,
    );
    expect(set.notCreated).toMatchObject({ theft: { type: 'forbiddenFrom' }, junk: { type: 'invalidProperties', properties: ['colour'] } });
    expect(set.updated).toEqual({ [aliceId]: null });
    expect(set.notUpdated).toEqual({ Inope: { type: 'notFound' } });
    expect(set.notDestroyed).toMatchObject({ [aliceId]: { type: 'forbidden' } });
    const workId = (set.created as Record<string, JsonObject>).work.id as string;
    expect(ctx.createdIds.get('work')).toBe(workId);

    const after = await m['Identity/get']({ accountId: ctx.accountId, ids: [aliceId, workId, 'Igone'] }, ctx);
    expect(after.list).toEqual([
      { id: aliceId, name: 'Alice Liddell', email: 'alice@example.test', replyTo: null, bcc: null, textSignature: '', htmlSignature: '', mayDelete: false },
      { id: workId, name: 'Alice at work', email: 'al@example.test', replyTo: null, bcc: null, textSignature: '-- A', htmlSignature: '', mayDelete: true },
    ]);
    expect(after.notFound).toEqual(['Igone']);

    const changes = await m['Identity/changes']({ accountId: ctx.accountId, sinceState: state0 }, ctx);
    expect(changes).toMatchObject({ oldState: state0, newState: after.state, hasMoreChanges: false, created: [workId], updated: [aliceId], destroyed: [] });
    const gone = await m['Identity/set']({ accountId: ctx.accountId, destroy: [workId] }, ctx);
    expect(gone.destroyed).toEqual([workId]);
    const changes2 = await m['Identity/changes']({ accountId: ctx.accountId, sinceState: String(after.state) }, ctx);
    expect(changes2).toMatchObject({ created: [], updated: [], destroyed: [workId] });
    // Created and destroyed since state0: not reported at all.
    expect((await m['Identity/changes']({ accountId: ctx.accountId, sinceState: state0 }, ctx)).destroyed).toEqual([]);
    await expect(m['Identity/changes']({ accountId: ctx.accountId, sinceState: 'junk' }, ctx)).rejects.toMatchObject({ type: 'cannotCalculateChanges' });

    // An alias made with the CLI is a new identity: the state moves, and the old one cannot say how.
    const before = String((await m['Identity/get']({ accountId: ctx.accountId, ids: [] }, ctx)).state);
    await new Accounts(env.storage.tables).addAlias('alice.smith@example.test', ['alice@example.test']);
    const now = await m['Identity/get']({ accountId: ctx.accountId, ids: null }, ctx);
    expect(now.state).not.toBe(before);
    expect((now.list as JsonObject[]).map((i) => i.email)).toContain('alice.smith@example.test');
    await expect(m['Identity/changes']({ accountId: ctx.accountId, sinceState: before }, ctx)).rejects.toMatchObject({ type: 'cannotCalculateChanges' });
    expect(await m['Identity/changes']({ accountId: ctx.accountId, sinceState: String(now.state) }, ctx)).toMatchObject({
      created: [],
      updated: [],
      destroyed: [],
    });
  });
});

describe('EmailSubmission (RFC 8621 §7)', () => {
  it('sends an Email through the submission path to a real peer, files it via Email/set, and reports delivery', async () => {
    const emailId = await putEmail(
      t,
      env.storage,
      'drafts/s1.eml',
      raw('alice@example.test', 'friend@remote.test', 'First send', 'Cc: team@example.test\r\nBcc: boss@remote.test\r\n'),
    );
    const before = await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: null }, ctx);
    t.calls.length = 0;
    const r = await m['EmailSubmission/set'](
      {
        accountId: ctx.accountId,
        create: { s1: { identityId: aliceId, emailId } },
        onSuccessUpdateEmail: { '#s1': { 'keywords/$draft': null, 'mailboxIds/sent': true } },
      },
      ctx,
    );
    const created = (r.created as Record<string, JsonObject>).s1;
    expect(created).toMatchObject({ threadId: `T${emailId.slice(1)}`, undoStatus: 'pending' });
    expect(created.id).toMatch(/^S[0-9a-z]+$/);
    // The implicit Email/set, with the submission's Email, and its response after ours.
    expect(t.calls.filter(([name]) => name === 'Email/set')).toEqual([
      ['Email/set', { accountId: ctx.accountId, update: { [emailId]: { 'keywords/$draft': null, 'mailboxIds/sent': true } } }],
    ]);
    expect(ctx.followUps).toEqual([['Email/set', { accountId: ctx.accountId, updated: { [emailId]: null }, destroyed: null }]]);
    ctx.followUps.length = 0;

    await work();
    const [sent] = remote.events.filter((e) => e.event === 'message');
    expect(sent.mail_from).toBe('alice@example.test');
    expect(sent.rcpts!.sort()).toEqual(['boss@remote.test', 'friend@remote.test']);
    const text = readFileSync(sent.file!, 'utf8');
    expect(text).toContain('Subject: First send');
    expect(text).toMatch(/^Received: from jmap/m);
    expect(text).not.toMatch(/^Return-Path:/m);
    // The local recipient got it through the inbound worker, as over SMTP.
    expect(await new MailboxStore(env.storage.tables, env.storage.mail).list('bob@example.test')).toHaveLength(1);

    const got = await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: [created.id] }, ctx);
    const s = (got.list as JsonObject[])[0];
    expect(s).toMatchObject({
      identityId: aliceId,
      emailId,
      undoStatus: 'final',
      envelope: {
        mailFrom: { email: 'alice@example.test', parameters: null },
        rcptTo: [
          { email: 'friend@remote.test', parameters: null },
          { email: 'team@example.test', parameters: null },
          { email: 'boss@remote.test', parameters: null },
        ],
      },
    });
    const status = s.deliveryStatus as Record<string, JsonObject>;
    expect(status['friend@remote.test']).toMatchObject({ delivered: 'yes', smtpReply: expect.stringMatching(/^250 /) });
    expect(status['team@example.test']).toMatchObject({ delivered: 'yes' });
    const late = await m['EmailSubmission/set']({ accountId: ctx.accountId, update: { [String(created.id)]: { undoStatus: 'canceled' } } }, ctx);
    expect(late.notUpdated).toMatchObject({ [String(created.id)]: { type: 'cannotUnsend' } });

    const changes = await m['EmailSubmission/changes']({ accountId: ctx.accountId, sinceState: before.state }, ctx);
    expect(changes).toMatchObject({ created: [created.id], updated: [], destroyed: [] });
    const q = await m['EmailSubmission/query']({ accountId: ctx.accountId, filter: { emailIds: [emailId] }, calculateTotal: true }, ctx);
    expect(q).toMatchObject({ ids: [created.id], total: 1, position: 0 });
    expect((await m['EmailSubmission/query']({ accountId: ctx.accountId, filter: { undoStatus: 'pending' } }, ctx)).ids).toEqual([]);
  });

  it('cancels a submission still waiting in the queue, and onSuccessDestroyEmail follows the cancel', async () => {
    remote.events.length = 0;
    const emailId = await putEmail(t, env.storage, 'drafts/s2.eml', raw('al@example.test', 'friend@remote.test', 'Take back'));
    const r = await m['EmailSubmission/set']({ accountId: ctx.accountId, create: { s2: { identityId: identityIdOf('al@example.test'), emailId } } }, ctx);
    const id = String((r.created as Record<string, JsonObject>).s2.id);
    // Handed to the outbound queue, tried once and refused for now (451): nothing has left.
    await work();
    expect(remote.events.map((e) => e.reply)).toEqual([expect.stringMatching(/^451 /)]);
    remote.events.length = 0;
    expect(((await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: [id], properties: ['undoStatus'] }, ctx)).list as JsonObject[])[0]).toEqual({
      id,
      undoStatus: 'pending',
    });
    t.calls.length = 0;
    const cancel = await m['EmailSubmission/set']({ accountId: ctx.accountId, update: { [id]: { undoStatus: 'canceled' } }, onSuccessDestroyEmail: [id] }, ctx);
    expect(cancel.updated).toEqual({ [id]: null });
    expect(t.calls).toEqual([['Email/set', { accountId: ctx.accountId, destroy: [emailId] }]]);
    ctx.followUps.length = 0;
    env.clock.advance(3600);
    await work();
    expect(remote.events).toEqual([]);
    const s = ((await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: [id] }, ctx)).list as JsonObject[])[0];
    expect(s.undoStatus).toBe('canceled');
    expect((s.deliveryStatus as Record<string, JsonObject>)['friend@remote.test'].delivered).toBe('no');

    const destroyed = await m['EmailSubmission/set']({ accountId: ctx.accountId, destroy: [id, 'Snope'] }, ctx);
    expect(destroyed).toMatchObject({ destroyed: [id], notDestroyed: { Snope: { type: 'notFound' } } });
    expect((await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: [id] }, ctx)).notFound).toEqual([id]);
  });

  it('refuses forbidden From and MAIL FROM, no recipients, unknown recipients, bad ids, and sends nothing', async () => {
    remote.events.length = 0;
    t.calls.length = 0;
    const good = await putEmail(t, env.storage, 'drafts/s3.eml', raw('alice@example.test', 'friend@remote.test', 'Refused'));
    const spoofed = await putEmail(t, env.storage, 'drafts/s4.eml', raw('bob@example.test', 'friend@remote.test', 'Spoofed'));
    const noOne = await putEmail(t, env.storage, 'drafts/s5.eml', raw('alice@example.test', 'undisclosed-recipients:;', 'Nobody'));
    const r = await m['EmailSubmission/set'](
      {
        accountId: ctx.accountId,
        create: {
          a: { identityId: aliceId, emailId: spoofed },
          b: { identityId: aliceId, emailId: good, envelope: { mailFrom: { email: 'bob@example.test' }, rcptTo: [{ email: 'friend@remote.test' }] } },
          c: { identityId: aliceId, emailId: noOne },
          d: { identityId: aliceId, emailId: good, envelope: { mailFrom: { email: 'alice@example.test' }, rcptTo: [] } },
          e: {
            identityId: aliceId,
            emailId: good,
            envelope: { mailFrom: { email: 'alice@example.test' }, rcptTo: [{ email: 'nobody@example.test' }, { email: 'x@remote.test' }] },
          },
          f: { identityId: aliceId, emailId: 'Mdeadbeefdeadbeefdeadbeef' },
          g: { identityId: 'Inope', emailId: good },
          h: { identityId: aliceId, emailId: good, undoStatus: 'final' },
        },
        onSuccessUpdateEmail: { '#a': { 'keywords/$seen': true } },
      },
      ctx,
    );
    expect(r.created).toBeNull();
    expect(r.notCreated).toMatchObject({
      a: { type: 'forbiddenFrom' },
      b: { type: 'forbiddenMailFrom' },
      c: { type: 'noRecipients' },
      d: { type: 'noRecipients' },
      e: { type: 'invalidRecipients', invalidRecipients: ['nobody@example.test'] },
      f: { type: 'invalidProperties', properties: ['emailId'] },
      g: { type: 'invalidProperties', properties: ['identityId'] },
      h: { type: 'invalidProperties', properties: ['undoStatus'] },
    });
    // Nothing succeeded, so no implicit Email/set; nothing queued.
    expect(t.calls.filter(([n]) => n === 'Email/set')).toEqual([]);
    await work();
    expect(remote.events).toEqual([]);
    expect(await env.storage.queues.stats('inbound')).toMatchObject({ visible: 0, inFlight: 0 });
  });
});
