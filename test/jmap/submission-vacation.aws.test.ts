/**
 * The same vacation store, vacation reply, identities and submissions on the aws storage family
 * (DynamoDB, S3 and SQS adapters against moto's server): the conditional writes they rely on (the
 * revision check of VacationResponse/set, the once-per-period marker, the record counters) hold
 * there as they do locally, and a submission's job reaches the SQS inbound queue.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { identityIdOf, submissionMethods } from '../../containers/web/jmap/submission.js';
import { vacationMethods } from '../../containers/web/jmap/vacation.js';
import type { JsonObject } from '../../containers/web/jmap/types.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob, OutboundJob } from '../../core/mail/jobs.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';
import { putEmail, testContext, type TestContext } from './context.js';

let moto: AwsTestBackend;
let dir: { path: string; remove: () => Promise<void> };
let config: Config;
let storage: Storage;
let t: TestContext;

beforeAll(async () => {
  moto = await startMoto({ say: () => undefined });
  dir = await tempDir('tomlinson-jmap-aws-');
  config = loadConfig({ ...moto.env, TOMLINSON_DATA_DIR: dir.path, TOMLINSON_HOSTNAME: 'mx.tomlinson.test', TOMLINSON_LOG_LEVEL: 'silent' });
  storage = await openStorage(config, silentLogger);
  const accounts = new Accounts(storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser('alice@example.test', 'pw-alice-123456');
  t = testContext('alice@example.test', config, storage);
});
afterAll(async () => {
  await storage?.close();
  await dir?.remove();
  await moto?.stop();
});

async function receiveAll(queue: 'inbound' | 'outbound'): Promise<string[]> {
  const got = await storage.queues.receive(queue, { max: 10, visibilitySeconds: 60, waitSeconds: 1 });
  for (const m of got) await storage.queues.delete(queue, m.receipt);
  return got.map((m) => m.body);
}

describe('vacation and submission on DynamoDB, S3 and SQS', () => {
  it('VacationResponse/set with ifInState, and one reply per sender from the inbound worker', async () => {
    const { ctx } = t;
    const set = vacationMethods.methods['VacationResponse/set'];
    const first = await set({ accountId: ctx.accountId, ifInState: '0', update: { singleton: { isEnabled: true, subject: 'Away' } } }, ctx);
    expect(first).toMatchObject({ oldState: '0', newState: '1', updated: { singleton: null } });
    await expect(set({ accountId: ctx.accountId, ifInState: '0', update: { singleton: { isEnabled: false } } }, ctx)).rejects.toMatchObject({
      type: 'stateMismatch',
    });

    const raw = 'From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: Hi\r\nMessage-ID: <a1@remote.test>\r\n\r\nHello\r\n';
    for (const id of ['aws1', 'aws2']) {
      const info = await storage.mail.put(`in/test/${id}.eml`, raw);
      const job: InboundJob = {
        v: 1,
        id,
        blobKey: info.key,
        size: info.size,
        from: 'bob@remote.test',
        rcpts: [{ address: 'alice@example.test' }],
        receivedAt: new Date().toISOString(),
        client: { address: '192.0.2.1', helo: 'remote.test' },
        listener: 'mx',
      };
      const ctxJob = { config, storage, log: silentLogger, now: () => new Date() };
      expect(await inboundJob(JSON.stringify(job), { queue: 'inbound', id, receiveCount: 1, sentAt: new Date() }, ctxJob)).toEqual({ kind: 'done' });
    }
    const replies = (await receiveAll('outbound')).map((b) => JSON.parse(b) as OutboundJob);
    expect(replies.map((r) => [r.id.split('.')[0], r.from, r.rcpts[0].address])).toEqual([['aws1', '', 'bob@remote.test']]);
  });

  it('Identity/set and EmailSubmission/set: the record, its job on SQS, and /changes', async () => {
    const { ctx } = t;
    const m = submissionMethods.methods;
    const ident = await m['Identity/set']({ accountId: ctx.accountId, update: { [identityIdOf('alice@example.test')]: { name: 'Alice' } } }, ctx);
    // The state is the stored identities' revision and a hash of the addresses one may send as.
    expect(String(ident.oldState)).toMatch(/^0\.[0-9a-f]{8}$/);
    expect(ident.newState).toBe(String(ident.oldState).replace(/^0\./, '1.'));
    const before = await m['EmailSubmission/get']({ accountId: ctx.accountId, ids: [] }, ctx);
    const emailId = await putEmail(t, storage, 'drafts/aws.eml', 'From: alice@example.test\r\nTo: friend@remote.test\r\nSubject: Via SQS\r\n\r\nHi\r\n');
    const r = await m['EmailSubmission/set']({ accountId: ctx.accountId, create: { s: { identityId: identityIdOf('alice@example.test'), emailId } } }, ctx);
    const created = (r.created as Record<string, JsonObject>).s;
    expect(created.undoStatus).toBe('pending');
    const jobs = (await receiveAll('inbound')).map((b) => JSON.parse(b) as InboundJob);
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatchObject({
      listener: 'submission',
      from: 'alice@example.test',
      rcpts: [{ address: 'friend@remote.test' }],
      client: { authUser: 'alice@example.test' },
    });
    expect(`S${jobs[0].id}`).toBe(created.id);
    const changes = await m['EmailSubmission/changes']({ accountId: ctx.accountId, sinceState: before.state }, ctx);
    expect(changes).toMatchObject({ created: [created.id], updated: [], destroyed: [] });
  });
});
