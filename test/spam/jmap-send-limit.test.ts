/**
 * JMAP EmailSubmission/set (the webmail's way to send) shares the hourly recipient limit of the
 * submission ports: the same per-user counter in Tables. Past it the submission is refused with
 * RFC 8620 §5.3's rateLimit (may work if tried again later) and the limit's text, and nothing is queued.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { identityIdOf, submissionMethods } from '../../containers/web/jmap/submission.js';
import type { JsonObject } from '../../containers/web/jmap/types.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { sentThisHour } from '../../core/mail/send-limit.js';
import { openEnv, type TestEnv } from '../outbound/harness.js';
import { drainInbound } from '../smtp/harness.js';
import { putEmail, testContext, type TestContext } from '../jmap/context.js';

const ALICE = 'alice@example.test';
const m = submissionMethods.methods;

const raw = (to: string, subject: string) =>
  `From: Alice <${ALICE}>\r\nTo: ${to}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.test>\r\nDate: Sun, 01 Mar 2026 08:00:00 +0000\r\n\r\nHello.\r\n`;

describe('JMAP submission and the hourly recipient limit', () => {
  let env: TestEnv;
  let t: TestContext;
  beforeAll(async () => {
    env = await openEnv({ TOMLINSON_SMTP_MAX_RECIPIENTS_PER_USER_HOUR: '2' });
    const accounts = new Accounts(env.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser(ALICE, 'pw-alice-123456');
    t = testContext(ALICE, env.config, env.storage);
    t.methods.set('Email/get', async () => ({ accountId: t.ctx.accountId, list: [], notFound: [] }));
  });
  afterAll(async () => env?.close());

  async function submit(key: string, to: string): Promise<JsonObject> {
    const emailId = await putEmail(t, env.storage, key, raw(to, key));
    return m['EmailSubmission/set']({ accountId: t.ctx.accountId, create: { s: { identityId: identityIdOf(ALICE), emailId } } }, t.ctx);
  }

  it('sends within the limit, then answers rateLimit naming the limit', async () => {
    const ok = await submit('drafts/a.eml', 'one@remote.test, two@remote.test');
    expect(ok.created).toHaveProperty('s');
    expect(await sentThisHour(env.storage.tables, ALICE)).toBe(2);
    const refused = await submit('drafts/b.eml', 'three@remote.test');
    expect(refused.created ?? {}).toEqual({});
    expect(refused.notCreated).toEqual({
      s: { type: 'rateLimit', description: `Sending limit reached: ${ALICE} may send to 2 recipients per hour; try again later` },
    });
    expect(await drainInbound(env.storage)).toHaveLength(1);
  });
});
