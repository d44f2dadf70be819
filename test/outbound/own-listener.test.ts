/**
 * The outbound client against one of our own listeners (containers/smtp, which offers STARTTLS,
 * PIPELINING, CHUNKING, DSN, 8BITMIME, SMTPUTF8 and AUTH after TLS): as the remote MX, and as an
 * authenticated smarthost on its submission port. What the far side queued shows what went over
 * the wire: BDAT chunks reassembled byte for byte, DSN parameters per recipient and per envelope,
 * TLS, and the authenticated user.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningSmtp } from '../../containers/smtp/server.js';
import { startSmtpServer } from '../../containers/smtp/server.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { silentLogger } from '../../core/log.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { OutboundStore } from '../../core/mail/outbound-store.js';
import { Metrics } from '../../core/metrics.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, queueMessage, sampleMessage, type TestEnv } from './harness.js';

let dns: TestDnsServer;
let far: TestEnv;
let smtp: RunningSmtp;

beforeAll(async () => {
  dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx.remote.test' }] }, 'mx.remote.test': { A: ['127.0.0.1'] } });
  far = await openEnv({ TOMLINSON_HOSTNAME: 'mx.remote.test', TOMLINSON_SMTP_CHECK_AUTH: 'false', TOMLINSON_DNS_SERVERS: dns.address });
  const accounts = new Accounts(far.storage.tables);
  await accounts.addDomain('remote.test');
  await accounts.addUser('bob@remote.test', 'bob-password-1');
  await accounts.addUser('relay@remote.test', 'relay-password-1');
  smtp = await startSmtpServer(
    { config: far.config, storage: far.storage, log: silentLogger, metrics: new Metrics({ defaults: false }) },
    { ports: { mx: 0, submission: 0, submissions: 0 } },
  );
});
afterAll(async () => {
  await smtp?.close(100);
  await far?.close();
  await dns?.close();
});

async function farJobs(): Promise<InboundJob[]> {
  const got = await far.storage.queues.receive('inbound', { max: 10, visibilitySeconds: 600, waitSeconds: 0 });
  return got.map((m) => JSON.parse(m.body) as InboundJob);
}

describe('our own SMTP listener as the remote', () => {
  let near: TestEnv;
  beforeAll(async () => {
    near = await openEnv({ TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_OUTBOUND_MX_PORT: String(smtp.ports.mx) });
  });
  afterAll(async () => {
    await near?.close();
  });

  it('MX delivery with STARTTLS, CHUNKING (BDAT in 1 MiB chunks) and DSN parameters', async () => {
    // 2.5 MB of 8-bit body: three BDAT chunks; lines starting with '.' are not stuffed in BDAT.
    const line = '.ünïcödé line for the chunking test, long enough to matter 0123456789\r\n';
    const body = line.repeat(Math.ceil(2_500_000 / Buffer.byteLength(line)));
    const raw = sampleMessage('alice@local.test', 'bob@remote.test', 'Chunking test', body);
    await queueMessage(
      near,
      {
        id: 'own-1',
        from: 'alice@local.test',
        rcpts: [{ address: 'bob@remote.test', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;Bob+Alias@remote.test' }],
        dsn: { ret: 'HDRS', envid: 'ENV 7=x' },
        body8bit: true,
      },
      raw,
    );
    await drain(near, 'outbound', createOutboundJob());
    const [r] = await new OutboundStore(near.storage.tables).getRecipients('own-1');
    expect(r.state).toBe('delivered');
    expect(r.lastReply).toMatch(/^250 /);

    const jobs = await farJobs();
    expect(jobs).toHaveLength(1);
    const job = jobs[0];
    expect(job.from).toBe('alice@local.test');
    expect(job.listener).toBe('mx');
    expect(job.client.tls).toMatch(/^TLSv1\.[23]$/);
    expect(job.rcpts).toEqual([{ address: 'bob@remote.test', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;Bob+Alias@remote.test' }]);
    expect(job.dsn).toEqual({ ret: 'HDRS', envid: 'ENV 7=x' });
    expect(job.body8bit).toBe(true);
    // The far side stored our bytes after its own Received header, unchanged.
    // The far side supports DSN, so NOTIFY=SUCCESS is its to answer: no relayed DSN from us.
    const nearQueue = await near.storage.queues.stats('outbound');
    expect(nearQueue.visible + nearQueue.delayed + nearQueue.inFlight).toBe(0);
    const { body: stored } = await far.storage.mail.get(job.blobKey);
    const chunks: Buffer[] = [];
    for await (const c of stored) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks);
    expect(text.subarray(text.length - Buffer.byteLength(raw)).equals(Buffer.from(raw))).toBe(true);
  });
});

describe('our own submission listener as an authenticated smarthost', () => {
  it('relays through smtp://user:pass@host with STARTTLS and AUTH PLAIN', async () => {
    const near = await openEnv({
      TOMLINSON_SMARTHOST: `smtp://${encodeURIComponent('relay@remote.test')}:relay-password-1@127.0.0.1:${smtp.ports.submission}`,
      TOMLINSON_OUTBOUND_TLS_VERIFY: 'never',
    });
    try {
      await queueMessage(
        near,
        { id: 'smart-auth-1', from: 'relay@remote.test', rcpts: [{ address: 'someone@elsewhere.test' }] },
        sampleMessage('relay@remote.test', 'someone@elsewhere.test', 'Relay test'),
      );
      await drain(near, 'outbound', createOutboundJob());
      const [r] = await new OutboundStore(near.storage.tables).getRecipients('smart-auth-1');
      expect(r).toMatchObject({ state: 'delivered', remoteHost: `127.0.0.1 [127.0.0.1]` });
      const jobs = await farJobs();
      expect(jobs).toHaveLength(1);
      expect(jobs[0]).toMatchObject({ listener: 'submission', from: 'relay@remote.test', rcpts: [{ address: 'someone@elsewhere.test' }] });
      expect(jobs[0].client.authUser).toBe('relay@remote.test');
      expect(jobs[0].client.tls).toBeTruthy();
    } finally {
      await near.close();
    }
  });

  it('relays through smtps:// (implicit TLS, RFC 8314) with AUTH PLAIN', async () => {
    const near = await openEnv({
      TOMLINSON_SMARTHOST: `smtps://${encodeURIComponent('relay@remote.test')}:relay-password-1@127.0.0.1:${smtp.ports.submissions}`,
      TOMLINSON_OUTBOUND_TLS_VERIFY: 'never',
    });
    try {
      await queueMessage(
        near,
        { id: 'smart-tls-1', from: 'relay@remote.test', rcpts: [{ address: 'other@elsewhere.test' }] },
        sampleMessage('relay@remote.test', 'other@elsewhere.test', 'Implicit TLS relay'),
      );
      await drain(near, 'outbound', createOutboundJob());
      const [r] = await new OutboundStore(near.storage.tables).getRecipients('smart-tls-1');
      expect(r.state).toBe('delivered');
      const jobs = await farJobs();
      expect(jobs).toHaveLength(1);
      expect(jobs[0].client).toMatchObject({ authUser: 'relay@remote.test' });
      expect(jobs[0].client.tls).toBeTruthy();
    } finally {
      await near.close();
    }
  });

  it('a wrong smarthost password is a temporary failure (our configuration, not the message)', async () => {
    const near = await openEnv({
      TOMLINSON_SMARTHOST: `smtp://${encodeURIComponent('relay@remote.test')}:wrong-password@127.0.0.1:${smtp.ports.submission}`,
      TOMLINSON_OUTBOUND_TLS_VERIFY: 'never',
    });
    try {
      await queueMessage(
        near,
        { id: 'smart-auth-2', from: 'relay@remote.test', rcpts: [{ address: 'someone@elsewhere.test' }] },
        sampleMessage('relay@remote.test', 'someone@elsewhere.test', 'Relay test 2'),
      );
      await drain(near, 'outbound', createOutboundJob());
      const [r] = await new OutboundStore(near.storage.tables).getRecipients('smart-auth-2');
      expect(r.state).toBe('deferred');
      expect(r).toMatchObject({ lastReply: '535 5.7.8 Authentication credentials invalid', status: '4.7.0' });
    } finally {
      await near.close();
    }
  });
});
