import { spawnSync } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run as runCli } from '../../cli/main.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob, parseInboundJob } from '../../core/mail/inbound.js';
import type { InboundJob, OutboundJob } from '../../core/mail/jobs.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { runOne } from '../../core/workers/runner.js';
import { tempDir } from '../support/tmp.js';

const RAW =
  'Received: from x ([127.0.0.1])\r\n\tby mx.tomlinson.test; Thu, 26 Nov 2026 07:00:00 +0000\r\n' +
  'From: =?UTF-8?Q?J=C3=BCrgen?= <j@remote.example>\r\nTo: alice@example.test, team@example.test\r\n' +
  'Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\nDate: Thu, 26 Nov 2026 06:59:00 +0000\r\nMessage-ID: <m1@remote.example>\r\n' +
  'MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo Welt\r\n';

describe('inbound worker', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let config: Config;
  let storage: Storage;
  let ctx: JobContext;
  let clock = Date.now();

  beforeEach(async () => {
    clock = Date.now();
    dir = await tempDir('tomlinson-inbound-');
    config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_HOSTNAME: 'mx.tomlinson.test' });
    storage = await openLocalStorage(config, silentLogger, { now: () => clock, purgeIntervalMs: 0 });
    ctx = { config, storage, log: silentLogger, now: () => new Date(clock) };
    const accounts = new Accounts(storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser('alice@example.test', 'pw-alice-123456');
    await accounts.addUser('bob@example.test', 'pw-bob-1234567');
    await accounts.addAlias('team@example.test', ['alice@example.test', 'bob@example.test', 'friend@remote.example']);
  });
  afterEach(async () => {
    await storage.close();
    await dir.remove();
  });

  async function enqueue(over: Partial<InboundJob> = {}): Promise<InboundJob> {
    const info = await storage.mail.put('in/20261126/job1.eml', RAW);
    const job: InboundJob = {
      v: 1,
      id: 'job1',
      blobKey: info.key,
      size: info.size,
      from: 'j@remote.example',
      rcpts: [{ address: 'alice@example.test' }, { address: 'team@example.test', notify: ['FAILURE'] }],
      receivedAt: new Date(clock).toISOString(),
      client: { address: '127.0.0.1', helo: 'x', authUser: 'alice@example.test' },
      listener: 'submission',
      ...over,
    };
    await storage.queues.send('inbound', JSON.stringify(job));
    return job;
  }

  async function outboundJobs(): Promise<OutboundJob[]> {
    const got = await storage.queues.receive('outbound', { max: 10, visibilitySeconds: 600, waitSeconds: 0 });
    return got.map((m) => JSON.parse(m.body) as OutboundJob);
  }

  it('delivers once per local user after alias expansion, with the index fields, and hands remote recipients to outbound once', async () => {
    const job = await enqueue();
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: m.sentAt }, ctx)).toEqual({ kind: 'done' });
    // The same job again (a redelivery): nothing new anywhere.
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 2, sentAt: m.sentAt }, ctx)).toEqual({ kind: 'done' });

    const store = new MailboxStore(storage.tables, storage.mail);
    const alice = await store.list('alice@example.test');
    const bob = await store.list('bob@example.test');
    expect(alice).toHaveLength(1);
    expect(bob).toHaveLength(1);
    expect(alice[0]).toMatchObject({ uid: 1, blobKey: job.blobKey, size: Buffer.byteLength(RAW), receivedAt: job.receivedAt, flags: [] });
    expect(alice[0].summary).toMatchObject({
      from: 'Jürgen <j@remote.example>',
      to: ['alice@example.test', 'team@example.test'],
      subject: 'Grüße',
      date: '2026-11-26T06:59:00.000Z',
      messageId: '<m1@remote.example>',
      preview: 'Hallo Welt',
    });
    expect(bob[0].blobKey).toBe(alice[0].blobKey); // one raw message for every mailbox

    const out = await outboundJobs();
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ v: 1, id: 'job1', blobKey: job.blobKey, from: 'j@remote.example', authUser: 'alice@example.test' });
    expect(out[0].rcpts).toEqual([{ address: 'friend@remote.example', notify: ['FAILURE'], orcpt: 'rfc822;team@example.test' }]);

    // Both readers delete their copies: the blob stays for the outbound worker, then goes with it.
    await store.remove('alice@example.test', [1]);
    await store.remove('bob@example.test', [1]);
    expect((await storage.mail.head(job.blobKey)).size).toBe(Buffer.byteLength(RAW));
    await store.releaseBlob(job.blobKey, 'outbound:job1');
    await expect(storage.mail.head(job.blobKey)).rejects.toMatchObject({ code: 'NotFound' });
  });

  it('does not relay remote recipients of an unauthenticated job', async () => {
    await enqueue({ client: { address: '192.0.2.1', helo: 'x' }, listener: 'mx', rcpts: [{ address: 'team@example.test' }, { address: 'x@remote.example' }] });
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: m.sentAt }, ctx);
    // The alias's remote target is kept (the alias owner chose it), the direct remote one is not.
    const out = await outboundJobs();
    expect(out).toHaveLength(1);
    expect(out[0].rcpts.map((r) => r.address)).toEqual(['friend@remote.example']);
  });

  async function blobText(key: string): Promise<string> {
    const { body } = await storage.mail.get(key);
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c as Buffer);
    return Buffer.concat(parts).toString('utf8');
  }

  it('drops the blob when no recipient is deliverable any more, after a failure DSN (5.1.1) to the sender, once', async () => {
    const job = await enqueue({
      rcpts: [{ address: 'gone@example.test', orcpt: 'rfc822;gone@example.test' }],
      client: { address: '192.0.2.1', helo: 'x' },
      listener: 'mx',
      dsn: { envid: 'env-42' },
    });
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: m.sentAt }, ctx)).toEqual({ kind: 'done' });
    // A redelivery of the job sends no second DSN.
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 2, sentAt: m.sentAt }, ctx)).toEqual({ kind: 'done' });
    await expect(storage.mail.head(job.blobKey)).rejects.toMatchObject({ code: 'NotFound' });
    // The sender is remote: the DSN goes out from <>, never to be bounced itself.
    const out = await outboundJobs();
    expect(out).toHaveLength(1);
    expect(out[0]).toMatchObject({ from: '', rcpts: [{ address: 'j@remote.example', notify: ['NEVER'] }] });
    const dsn = await blobText(out[0].blobKey);
    expect(dsn).toMatch(/^Content-Type: multipart\/report; report-type=delivery-status;/m);
    expect(dsn).toContain('Original-Envelope-Id: env-42\r\n');
    expect(dsn).toContain('Original-Recipient: rfc822; gone@example.test\r\nFinal-Recipient: rfc822; gone@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n');
    expect(dsn).toContain('Hallo Welt'); // RET defaults to FULL for a small message
  });

  it('sends no DSN for a vanished recipient that asked for NOTIFY=NEVER', async () => {
    const job = await enqueue({ rcpts: [{ address: 'gone@example.test', notify: ['NEVER'] }], client: { address: '192.0.2.1', helo: 'x' }, listener: 'mx' });
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: m.sentAt }, ctx)).toEqual({ kind: 'done' });
    await expect(storage.mail.head(job.blobKey)).rejects.toMatchObject({ code: 'NotFound' });
    expect(await outboundJobs()).toHaveLength(0);
    expect(await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 })).toHaveLength(0);
  });

  it('a user removed between RCPT and delivery: the others get the message, a local sender gets the DSN in its mailbox', async () => {
    const job = await enqueue({
      from: 'alice@example.test',
      rcpts: [{ address: 'alice@example.test' }, { address: 'bob@example.test' }],
      dsn: { ret: 'HDRS' },
    });
    await new Accounts(storage.tables).removeUser('bob@example.test');
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(await runOne('inbound', m, inboundJob, ctx)).toEqual({ kind: 'done' });
    // The DSN is a new inbound job from <> to the sender; the worker delivers it like any other.
    const [d] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(JSON.parse(d.body)).toMatchObject({ from: '', rcpts: [{ address: 'alice@example.test' }] });
    expect(await runOne('inbound', d, inboundJob, ctx)).toEqual({ kind: 'done' });
    const store = new MailboxStore(storage.tables, storage.mail);
    const alice = await store.list('alice@example.test');
    expect(alice.map((e) => e.summary.subject)).toEqual(['Grüße', 'Undelivered Mail Returned to Sender']);
    expect(alice[0].blobKey).toBe(job.blobKey); // the original stays for alice's copy
    const dsn = await blobText(alice[1].blobKey);
    expect(dsn).toContain('Final-Recipient: rfc822; bob@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n');
    expect(dsn).toContain('Content-Type: text/rfc822-headers'); // RET=HDRS: the header only
    expect(dsn).not.toContain('Hallo Welt');
    expect(await outboundJobs()).toHaveLength(0);
  });

  it('retries later when a mailbox is full, within the retry window', async () => {
    const accounts = new Accounts(storage.tables);
    await accounts.setQuota('bob@example.test', 10);
    await enqueue();
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    const r = await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: m.sentAt }, ctx);
    expect(r).toMatchObject({ kind: 'retry' });
    const store = new MailboxStore(storage.tables, storage.mail);
    expect(await store.list('alice@example.test')).toHaveLength(1);
    expect(await store.list('bob@example.test')).toHaveLength(0);
  });

  it('a message waiting for room in a full mailbox shows in `queue list` until it is delivered', async () => {
    const cli = async (...args: string[]): Promise<string> => {
      const out = new PassThrough();
      let stdout = '';
      out.on('data', (d: Buffer) => (stdout += d.toString()));
      const code = await runCli(['node', 'tomlinson', ...args], {
        env: { ...process.env, TOMLINSON_DATA_DIR: dir.path, TOMLINSON_LOG_LEVEL: 'silent' },
        stdout: out as unknown as NodeJS.WriteStream,
        stderr: new PassThrough() as unknown as NodeJS.WriteStream,
      });
      expect(code).toBe(0);
      return stdout;
    };
    const accounts = new Accounts(storage.tables);
    await accounts.setQuota('bob@example.test', 10);
    await enqueue({ rcpts: [{ address: 'bob@example.test' }] });
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: m.receiveCount, sentAt: m.sentAt }, ctx)).toMatchObject({ kind: 'retry' });

    const rows = JSON.parse(await cli('--json', 'queue', 'list')) as { id: string; state: string; rcpts: number; from: string; lastReply: string }[];
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ id: 'job1', state: 'waiting for room', rcpts: 1, from: 'j@remote.example' });
    expect(rows[0].lastReply).toContain('mailbox full: bob@example.test');
    expect(await cli('queue', 'list')).toMatch(/job1 .*waiting for room/);

    // Room is made; the redelivery delivers it and it leaves the listing.
    await accounts.setQuota('bob@example.test', 0);
    clock += 31_000;
    const [again] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(again.receiveCount).toBe(2);
    expect(await inboundJob(again.body, { queue: 'inbound', id: again.id, receiveCount: again.receiveCount, sentAt: again.sentAt }, ctx)).toMatchObject({
      kind: 'done',
    });
    expect(await new MailboxStore(storage.tables, storage.mail).list('bob@example.test')).toHaveLength(1);
    expect(JSON.parse(await cli('--json', 'queue', 'list'))).toEqual([]);
  });

  it('refuses a malformed job body (it will end in the dead-letter queue)', () => {
    expect(() => parseInboundJob('{not json')).toThrow(/not JSON/);
    expect(() => parseInboundJob('{"v":2}')).toThrow(/shape/);
  });

  it('a job that keeps failing ends in the dead-letter queue', async () => {
    await enqueue({ blobKey: 'in/missing.eml' });
    for (let i = 0; i < config.storage.queueMaxReceives; i++) {
      const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 1, waitSeconds: 0 });
      expect(m).toBeDefined();
      expect(await runOne('inbound', m, inboundJob, ctx)).toBeInstanceOf(Error);
      clock += 2000;
    }
    expect(await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 1, waitSeconds: 0 })).toHaveLength(0);
    expect((await storage.queues.stats('inbound-dlq')).visible).toBe(1);
  });

  it('a worker killed in the middle of a job: the redelivery leaves exactly one copy per mailbox', async () => {
    await enqueue();
    await storage.close();
    const child = spawnSync(process.execPath, ['--import', 'tsx', new URL('./inbound-child.ts', import.meta.url).pathname, dir.path], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(child.signal, child.stderr).toBe('SIGKILL');
    // Reopen, past the visibility timeout the child took.
    clock += 60_000;
    storage = await openLocalStorage(config, silentLogger, { now: () => clock, purgeIntervalMs: 0 });
    ctx = { ...ctx, storage };
    const store = new MailboxStore(storage.tables, storage.mail);
    const before = (await store.list('alice@example.test')).length + (await store.list('bob@example.test')).length;
    expect(before).toBe(1); // the child got exactly one delivery in before it died
    const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
    expect(m.receiveCount).toBe(2);
    expect(await runOne('inbound', m, inboundJob, ctx)).toEqual({ kind: 'done' });
    expect(await store.list('alice@example.test')).toHaveLength(1);
    expect(await store.list('bob@example.test')).toHaveLength(1);
    expect(await outboundJobs()).toHaveLength(1);
    expect(await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 })).toHaveLength(0);
  });
});
