/**
 * VacationResponse/get and /set (RFC 8621 §8) called with a JmapContext over real local storage,
 * and the reply the inbound worker then sends: what JMAP sets is what mail is answered with.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vacationMethods } from '../../containers/web/jmap/vacation.js';
import { MethodError, type JmapContext } from '../../containers/web/jmap/types.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob, OutboundJob } from '../../core/mail/jobs.js';
import { VacationStore } from '../../core/mail/vacation.js';
import { drain, openEnv, type TestEnv } from '../outbound/harness.js';
import { testContext } from './context.js';

let env: TestEnv;
let ctx: JmapContext;
const { 'VacationResponse/get': get, 'VacationResponse/set': set } = vacationMethods.methods;

beforeAll(async () => {
  env = await openEnv({});
  const accounts = new Accounts(env.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser('alice@example.test', 'pw-alice-123456');
  ctx = testContext('alice@example.test', env.config, env.storage).ctx;
});
afterAll(async () => {
  await env?.close();
});

describe('VacationResponse (RFC 8621 §8)', () => {
  it('get returns the singleton, off by default, and notFound for other ids', async () => {
    expect(vacationMethods.capability).toBe('urn:ietf:params:jmap:vacationresponse');
    const r = await get({ accountId: ctx.accountId, ids: null }, ctx);
    expect(r).toEqual({
      accountId: ctx.accountId,
      state: '0',
      list: [{ id: 'singleton', isEnabled: false, fromDate: null, toDate: null, subject: null, textBody: null, htmlBody: null }],
      notFound: [],
    });
    const some = await get({ accountId: ctx.accountId, ids: ['singleton', 'other'], properties: ['isEnabled'] }, ctx);
    expect(some.list).toEqual([{ id: 'singleton', isEnabled: false }]);
    expect(some.notFound).toEqual(['other']);
    await expect(get({ accountId: ctx.accountId, properties: ['nope'] }, ctx)).rejects.toMatchObject({ type: 'invalidArguments' });
  });

  it('set updates the singleton, refuses create, destroy, bad values and a stale ifInState', async () => {
    const r = await set(
      {
        accountId: ctx.accountId,
        ifInState: '0',
        update: { singleton: { isEnabled: true, subject: 'Away', textBody: 'Back soon.', toDate: '2099-01-01T00:00:00Z' } },
        create: { x: { isEnabled: true } },
        destroy: ['singleton'],
      },
      ctx,
    );
    expect(r).toMatchObject({
      oldState: '0',
      newState: '1',
      updated: { singleton: null },
      notCreated: { x: { type: 'singleton' } },
      notDestroyed: { singleton: { type: 'singleton' } },
    });
    expect((await get({ accountId: ctx.accountId }, ctx)).list).toEqual([
      { id: 'singleton', isEnabled: true, fromDate: null, toDate: '2099-01-01T00:00:00.000Z', subject: 'Away', textBody: 'Back soon.', htmlBody: null },
    ]);
    // The store the inbound worker reads holds the same.
    expect(await new VacationStore(env.storage.tables).get('alice@example.test')).toMatchObject({ isEnabled: true, subject: 'Away' });

    const bad = await set(
      {
        accountId: ctx.accountId,
        update: { singleton: { isEnabled: 'yes', fromDate: '2026-01-01', color: 'red' }, other: { isEnabled: false } },
      },
      ctx,
    );
    expect(bad.notUpdated).toEqual({
      singleton: { type: 'invalidProperties', properties: ['isEnabled', 'fromDate', 'color'] },
      other: { type: 'notFound' },
    });
    expect(bad.newState).toBe('1');
    const backwards = await set({ accountId: ctx.accountId, update: { singleton: { fromDate: '2100-01-01T00:00:00Z' } } }, ctx);
    expect(backwards.notUpdated).toMatchObject({ singleton: { type: 'invalidProperties' } });

    const stale = set({ accountId: ctx.accountId, ifInState: '0', update: { singleton: { isEnabled: false } } }, ctx);
    await expect(stale).rejects.toBeInstanceOf(MethodError);
    await expect(stale).rejects.toMatchObject({ type: 'stateMismatch' });
  });

  it('a reply set over JMAP is what the inbound worker sends', async () => {
    const raw = 'From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: Hi\r\nMessage-ID: <j1@remote.test>\r\n\r\nHello\r\n';
    const info = await env.storage.mail.put('in/test/j1.eml', raw);
    const job: InboundJob = {
      v: 1,
      id: 'j1',
      blobKey: info.key,
      size: info.size,
      from: 'bob@remote.test',
      rcpts: [{ address: 'alice@example.test' }],
      receivedAt: env.clock.now().toISOString(),
      client: { address: '192.0.2.1', helo: 'remote.test' },
      listener: 'mx',
    };
    await env.storage.queues.send('inbound', JSON.stringify(job));
    await drain(env, 'inbound', inboundJob);
    const out = await env.storage.queues.receive('outbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    expect(out).toHaveLength(1);
    const reply = JSON.parse(out[0].body) as OutboundJob;
    expect(reply).toMatchObject({ from: '', rcpts: [{ address: 'bob@remote.test', notify: ['NEVER'] }] });
    const { body } = await env.storage.mail.get(reply.blobKey);
    let text = '';
    for await (const c of body) text += (c as Buffer).toString();
    expect(text).toContain('Subject: Away');
    expect(text).toContain('Back soon.');
    expect(text).toContain('In-Reply-To: <j1@remote.test>');

    // The same job delivered again (queues are at-least-once): the same reply id, no new one.
    await env.storage.queues.send('inbound', JSON.stringify(job));
    await drain(env, 'inbound', inboundJob);
    const again = await env.storage.queues.receive('outbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    expect(again.map((m) => (JSON.parse(m.body) as OutboundJob).id)).toEqual([reply.id]);
  });
});
