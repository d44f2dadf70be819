/**
 * Outbound delivery end to end on local storage: real DNS server on 127.0.0.1 (MX, A, null MX,
 * NXDOMAIN), a real remote MX (aiosmtpd) and the real inbound worker for DSNs to a local sender.
 * The clock is injected: retry waits are crossed by advancing it, never by sleeping.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { simpleParser, type ParsedMail } from 'mailparser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { generateDkimKey } from '../../core/mail/dkim.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { createOutboundJob, LOCK_SECONDS } from '../../core/mail/outbound.js';
import { runOne } from '../../core/workers/runner.js';
import { OutboundStore, QUEUE_LIST_PK } from '../../core/mail/outbound-store.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, type RemoteMx, type TestEnv } from './harness.js';

const run = promisify(execFile);
const here = new URL('.', import.meta.url).pathname;

let dns: TestDnsServer;

beforeAll(async () => {
  dns = await startDnsServer({
    'remote.test': { MX: [{ priority: 10, exchange: 'mx1.remote.test' }] },
    'mx1.remote.test': { A: ['127.0.0.1'] },
    'nullmx.test': { MX: [{ priority: 0, exchange: '.' }] },
    'implicit.test': { A: ['127.0.0.1'] },
    'silent.test': { MX: [{ priority: 5, exchange: 'mx.silent.test' }] },
    'mx.silent.test': { A: ['127.0.0.1'] },
  });
});
afterAll(async () => {
  await dns?.close();
});

async function envFor(remotePort: number, extra: Record<string, string> = {}): Promise<TestEnv> {
  const env = await openEnv({
    TOMLINSON_DNS_SERVERS: dns.address,
    TOMLINSON_OUTBOUND_MX_PORT: String(remotePort),
    TOMLINSON_OUTBOUND_COMMAND_TIMEOUT: '5',
    TOMLINSON_OUTBOUND_CONNECT_TIMEOUT: '5',
    TOMLINSON_OUTBOUND_DATA_TIMEOUT: '5',
    ...extra,
  });
  const accounts = new Accounts(env.storage.tables);
  await accounts.addDomain('local.test');
  await accounts.addUser('alice@local.test', 'pw-alice-1234');
  return env;
}

async function mailbox(env: TestEnv, user: string) {
  const store = new MailboxStore(env.storage.tables, env.storage.mail);
  const entries = await store.list(user);
  return Promise.all(
    entries.map(async (e) => {
      const { body } = await env.storage.mail.get(e.blobKey);
      return simpleParser(body);
    }),
  );
}

/** The delivery-status fields: an attachment for some parsers, inline text for mailparser. */
function statusPart(m: ParsedMail): string {
  const a = m.attachments.find((x) => x.contentType === 'message/delivery-status');
  return a ? a.content.toString('latin1') : (m.text ?? '');
}

async function queueEmpty(env: TestEnv): Promise<boolean> {
  const s = await env.storage.queues.stats('outbound');
  const listing = await env.storage.tables.query(QUEUE_LIST_PK);
  return s.visible + s.inFlight + s.delayed === 0 && listing.items.length === 0;
}

describe('retries on the schedule (RFC 5321 §4.5.4.1) with an injected clock', () => {
  let remote: RemoteMx;
  let env: TestEnv;
  const keys = { rsa: generateDkimKey('local.test', 'rsa1', 'rsa-sha256'), ed: generateDkimKey('local.test', 'ed1', 'ed25519-sha256') };
  beforeAll(async () => {
    remote = await startRemote({ dataReplies: [451, 451, 250] });
    env = await envFor(remote.port);
    await mkdir(join(env.config.dataDir, 'dkim', 'local.test'), { recursive: true });
    await writeFile(join(env.config.dataDir, 'dkim', 'local.test', 'rsa1.pem'), keys.rsa.privateKey);
    await writeFile(join(env.config.dataDir, 'dkim', 'local.test', 'ed1.pem'), keys.ed.privateKey);
  });
  afterAll(async () => {
    await remote?.close();
    await env?.close();
  });

  it('451 twice then 250: delivered on attempt 3, attempts and waits recorded, queue empty', async () => {
    const handler = createOutboundJob();
    const job = await queueMessage(
      env,
      { id: 'retry-1', from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] },
      sampleMessage('alice@local.test', 'bob@remote.test', 'Retry test'),
    );
    const store = new OutboundStore(env.storage.tables);

    await drain(env, 'outbound', handler);
    let [r] = await store.getRecipients(job.id);
    expect(r).toMatchObject({ state: 'deferred', attempts: 1, lastReply: '451 4.3.0 Temporary local problem, try again', status: '4.3.0' });
    expect(Date.parse(r.nextAttemptAt!) - env.clock.ms).toBe(300_000);
    expect((await env.storage.queues.stats('outbound')).delayed).toBe(1);

    // Nothing is due before the wait is over: no attempt happens.
    env.clock.advance(299);
    await drain(env, 'outbound', handler);
    expect(remote.events.filter((e) => e.event === 'message')).toHaveLength(1);

    env.clock.advance(1);
    await drain(env, 'outbound', handler);
    [r] = await store.getRecipients(job.id);
    expect(r).toMatchObject({ state: 'deferred', attempts: 2 });
    expect(Date.parse(r.nextAttemptAt!) - env.clock.ms).toBe(600_000);

    env.clock.advance(600);
    await drain(env, 'outbound', handler);
    [r] = await store.getRecipients(job.id);
    expect(r).toMatchObject({ state: 'delivered', attempts: 3, lastReply: '250 2.0.0 OK queued' });
    const msgs = remote.events.filter((e) => e.event === 'message');
    expect(msgs).toHaveLength(3);
    expect(msgs[2]).toMatchObject({ mail_from: 'alice@local.test', rcpts: ['bob@remote.test'] });
    expect(await queueEmpty(env)).toBe(true);
    expect((await store.getMessage(job.id))?.status).toBe('done');

    // The delivered copy: dot-stuffing undone by the server, and both DKIM signatures verify
    // with dkimpy (an implementation independent of the signer).
    const file = msgs[2].file!;
    const text = await readFile(file, 'latin1');
    expect(text).toContain('\r\n.leading dot line must survive dot-stuffing\r\n');
    const { stdout } = await run('/usr/bin/python3', [
      join(here, 'dkim_verify.py'),
      file,
      `${keys.rsa.name}=${keys.rsa.txt}`,
      `${keys.ed.name}=${keys.ed.txt}`,
    ]);
    const v = JSON.parse(stdout) as { results: boolean[]; domains: string[]; algorithms: string[] };
    expect(v.algorithms.sort()).toEqual(['ed25519-sha256', 'rsa-sha256']);
    expect(v.domains).toEqual(['local.test', 'local.test']);
    expect(v.results).toEqual([true, true]);

    // A redelivered (duplicate) job after the end sends nothing again.
    await env.storage.queues.send('outbound', JSON.stringify(job));
    await drain(env, 'outbound', handler);
    expect(remote.events.filter((e) => e.event === 'message')).toHaveLength(3);
  });
});

describe('duplicate queue messages worked at the same time', () => {
  let remote: RemoteMx;
  let env: TestEnv;
  beforeAll(async () => {
    remote = await startRemote();
    env = await envFor(remote.port);
  });
  afterAll(async () => {
    await remote?.close();
    await env?.close();
  });

  it('two workers on the same job (inbound redelivery) send one copy: the lock and the state decide', async () => {
    const job = await queueMessage(
      env,
      { id: 'dup-1', from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] },
      sampleMessage('alice@local.test', 'bob@remote.test', 'Duplicate'),
    );
    await env.storage.queues.send('outbound', JSON.stringify(job));
    const msgs = await env.storage.queues.receive('outbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    expect(msgs).toHaveLength(2);
    const handler = createOutboundJob();
    const outcomes = await Promise.all(msgs.map((m) => runOne('outbound', m, handler, env.ctx)));
    expect(outcomes.every((o) => !(o instanceof Error))).toBe(true);
    // The loser waits for the lock; when it comes back the work is done.
    env.clock.advance(LOCK_SECONDS);
    await drain(env, 'outbound', handler);
    expect(remote.events.filter((e) => e.event === 'message')).toHaveLength(1);
    expect((await new OutboundStore(env.storage.tables).getRecipients('dup-1'))[0].state).toBe('delivered');
    expect(await queueEmpty(env)).toBe(true);
  });
});

describe('permanent failures: one DSN (RFC 3464) per message to the sender', () => {
  let remote: RemoteMx;
  let env: TestEnv;
  beforeAll(async () => {
    remote = await startRemote({ reject: { 'nobody@remote.test': 550 } });
    env = await envFor(remote.port);
  });
  afterAll(async () => {
    await remote?.close();
    await env?.close();
  });

  it('550 for one recipient: the other is delivered, one DSN lands in the local sender’s mailbox', async () => {
    const handler = createOutboundJob();
    await queueMessage(
      env,
      {
        id: 'bounce-1',
        from: 'alice@local.test',
        rcpts: [{ address: 'nobody@remote.test', orcpt: 'rfc822;nobody@remote.test' }, { address: 'carol@remote.test' }],
        dsn: { envid: 'ENV-42' },
      },
      sampleMessage('alice@local.test', 'nobody@remote.test', 'Bounce test'),
    );
    await drain(env, 'outbound', handler);
    // Redelivered jobs and extra passes must not make a second DSN.
    await drain(env, 'outbound', handler);
    await drain(env, 'inbound', inboundJob);
    await drain(env, 'inbound', inboundJob);

    const store = new OutboundStore(env.storage.tables);
    const rcpts = await store.getRecipients('bounce-1');
    expect(rcpts.find((r) => r.address === 'carol@remote.test')).toMatchObject({ state: 'delivered' });
    expect(rcpts.find((r) => r.address === 'nobody@remote.test')).toMatchObject({ state: 'bounced', status: '5.1.1' });

    const box = await mailbox(env, 'alice@local.test');
    expect(box).toHaveLength(1);
    const dsn = box[0];
    expect(dsn.subject).toBe('Undelivered Mail Returned to Sender');
    expect(dsn.headers.get('content-type')).toMatchObject({ value: 'multipart/report', params: { 'report-type': 'delivery-status' } });
    expect(dsn.headers.get('auto-submitted')).toBe('auto-replied');
    expect(dsn.text).toContain('<nobody@remote.test>');
    expect(dsn.text).toContain('550 5.1.1 <nobody@remote.test>: Recipient address rejected: User unknown');
    expect(dsn.text).not.toContain('carol@remote.test');
    // mailparser renders the message/delivery-status part inline with the text.
    const report = statusPart(dsn);
    expect(report).toContain('Original-Envelope-Id: ENV-42');
    expect(report).toContain('Reporting-MTA: dns; mx.tomlinson.test');
    expect(report).toContain('Original-Recipient: rfc822; nobody@remote.test');
    expect(report).toContain('Final-Recipient: rfc822; nobody@remote.test');
    expect(report).toContain('Action: failed');
    expect(report).toContain('Status: 5.1.1');
    expect(report).toContain('Remote-MTA: dns; mx1.remote.test');
    expect(report).toMatch(/Diagnostic-Code: smtp; 550 5\.1\.1 <nobody@remote\.test>/);
    const original = dsn.attachments.find((a) => a.contentType === 'message/rfc822');
    expect(original?.content.toString()).toContain('Subject: Bounce test');
    expect(await queueEmpty(env)).toBe(true);
  });

  it('NOTIFY=SUCCESS to a server without DSN support: reported as relayed in the same single DSN (RFC 3461 §5.2.2)', async () => {
    const handler = createOutboundJob();
    const before = (await mailbox(env, 'alice@local.test')).length;
    await queueMessage(
      env,
      { id: 'relay-1', from: 'alice@local.test', rcpts: [{ address: 'ok@remote.test', notify: ['SUCCESS', 'FAILURE'] }, { address: 'nobody@remote.test' }] },
      sampleMessage('alice@local.test', 'ok@remote.test', 'Relayed and failed'),
    );
    await queueMessage(
      env,
      { id: 'relay-2', from: 'alice@local.test', rcpts: [{ address: 'ok2@remote.test', notify: ['SUCCESS'] }] },
      sampleMessage('alice@local.test', 'ok2@remote.test', 'Relayed only', 'SUCCESS-BODY-MARKER'),
    );
    await drain(env, 'outbound', handler);
    await drain(env, 'inbound', inboundJob);
    const box = (await mailbox(env, 'alice@local.test')).slice(before);
    expect(box).toHaveLength(2);
    const mixed = box.find((m) => statusPart(m).includes('ok@remote.test'))!;
    expect(mixed.subject).toBe('Undelivered Mail Returned to Sender');
    const mixedReport = statusPart(mixed);
    expect(mixedReport).toMatch(/Final-Recipient: rfc822; ok@remote\.test\r?\nAction: relayed\r?\nStatus: 2\.0\.0/);
    expect(mixedReport).toMatch(/Final-Recipient: rfc822; nobody@remote\.test\r?\nAction: failed\r?\nStatus: 5\.1\.1/);
    const success = box.find((m) => statusPart(m).includes('ok2@remote.test'))!;
    expect(success.subject).toBe('Successful Mail Delivery Report');
    expect(statusPart(success)).toContain('Action: relayed');
    // Success reports return the header only (RFC 3461 §4.3).
    expect(JSON.stringify(success.attachments.map((a) => a.content.toString())) + (success.text ?? '')).not.toContain('SUCCESS-BODY-MARKER');
  });

  it('null MX (RFC 7505) and NXDOMAIN bounce at once; RET=HDRS returns only the header', async () => {
    const handler = createOutboundJob();
    await queueMessage(
      env,
      { id: 'bounce-2', from: 'alice@local.test', rcpts: [{ address: 'x@nullmx.test' }, { address: 'y@no-such-domain.test' }], dsn: { ret: 'HDRS' } },
      sampleMessage('alice@local.test', 'x@nullmx.test', 'Null MX test', 'BODY-MARKER'),
    );
    await drain(env, 'outbound', handler);
    await drain(env, 'inbound', inboundJob);
    const rcpts = await new OutboundStore(env.storage.tables).getRecipients('bounce-2');
    expect(rcpts.find((r) => r.address === 'x@nullmx.test')).toMatchObject({ state: 'bounced', status: '5.1.10', attempts: 1 });
    expect(rcpts.find((r) => r.address === 'y@no-such-domain.test')).toMatchObject({ state: 'bounced', status: '5.1.2' });
    const box = await mailbox(env, 'alice@local.test');
    const dsn = box.find((m) => statusPart(m).includes('x@nullmx.test'));
    expect(dsn).toBeDefined();
    const report = statusPart(dsn!);
    const returned = dsn!.attachments.find((a) => a.contentType === 'text/rfc822-headers')?.content.toString() ?? report;
    expect(returned).toContain('Subject: Null MX test');
    expect(dsn!.attachments.find((a) => a.contentType === 'message/rfc822')).toBeUndefined();
    expect(report).toContain('Final-Recipient: rfc822; x@nullmx.test');
    expect(report).toContain('Status: 5.1.10');
    expect(report).toContain('Diagnostic-Code: x-local;');
    expect(report).toContain('Final-Recipient: rfc822; y@no-such-domain.test');
    expect(JSON.stringify(dsn!.attachments.map((a) => a.content.toString())) + report).not.toContain('BODY-MARKER');
  });

  it('a remote sender gets the DSN by SMTP from the null sender', async () => {
    const handler = createOutboundJob();
    await queueMessage(
      env,
      { id: 'bounce-remote-1', from: 'carol@remote.test', rcpts: [{ address: 'nobody@remote.test' }] },
      sampleMessage('carol@remote.test', 'nobody@remote.test', 'Remote sender'),
    );
    const n = remote.events.length;
    await drain(env, 'outbound', handler); // the original: 550, DSN queued as a new outbound job
    await drain(env, 'outbound', handler); // the DSN itself
    const dsn = remote.events.slice(n).find((e) => e.event === 'message' && e.file);
    expect(dsn).toMatchObject({ mail_from: '<>', rcpts: ['carol@remote.test'] }); // aiosmtpd's rendering of MAIL FROM:<>
    const text = await readFile(dsn!.file!, 'latin1');
    expect(text).toContain('Content-Type: multipart/report; report-type=delivery-status');
    expect(text).toContain('Final-Recipient: rfc822; nobody@remote.test');
    expect((await new OutboundStore(env.storage.tables).getRecipients('bounce-remote-1.dsn'))[0]).toMatchObject({ state: 'delivered', notify: ['NEVER'] });
    expect(await queueEmpty(env)).toBe(true);
  });

  it('no DSN for the null sender, and none when NOTIFY=NEVER', async () => {
    const handler = createOutboundJob();
    const before = (await mailbox(env, 'alice@local.test')).length;
    await queueMessage(
      env,
      { id: 'bounce-3', from: '', rcpts: [{ address: 'nobody@remote.test' }] },
      sampleMessage('mailer-daemon@local.test', 'nobody@remote.test', 'Null sender'),
    );
    await queueMessage(
      env,
      { id: 'bounce-4', from: 'alice@local.test', rcpts: [{ address: 'nobody@remote.test', notify: ['NEVER'] }] },
      sampleMessage('alice@local.test', 'nobody@remote.test', 'Never'),
    );
    await drain(env, 'outbound', handler);
    await drain(env, 'inbound', inboundJob);
    const store = new OutboundStore(env.storage.tables);
    expect((await store.getRecipients('bounce-3'))[0].state).toBe('bounced');
    expect((await store.getRecipients('bounce-4'))[0].state).toBe('bounced');
    expect((await env.storage.queues.stats('inbound')).visible).toBe(0);
    expect(await mailbox(env, 'alice@local.test')).toHaveLength(before);
    expect(await queueEmpty(env)).toBe(true);
  });
});

describe('a remote that never answers', () => {
  let silent: net.Server;
  let env: TestEnv;
  const sockets = new Set<net.Socket>();
  beforeAll(async () => {
    silent = net.createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    env = await envFor(port, { TOMLINSON_OUTBOUND_COMMAND_TIMEOUT: '1', TOMLINSON_OUTBOUND_MAX_AGE: '3600', TOMLINSON_OUTBOUND_DELAY_NOTICE: '1800' });
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => silent?.close(r));
    await env?.close();
  });

  it('is deferred on the schedule until the maximum age, with one delay notice, then one DSN', async () => {
    const handler = createOutboundJob();
    await queueMessage(
      env,
      { id: 'silent-1', from: 'alice@local.test', rcpts: [{ address: 'dave@silent.test' }] },
      sampleMessage('alice@local.test', 'dave@silent.test', 'Silent test'),
    );
    const store = new OutboundStore(env.storage.tables);
    const attemptsAt: number[] = [];
    const start = env.clock.ms;
    for (let i = 0; i < 10; i++) {
      await drain(env, 'outbound', handler);
      const [r] = await store.getRecipients('silent-1');
      if (r.lastAttemptAt && attemptsAt.at(-1) !== Date.parse(r.lastAttemptAt)) attemptsAt.push(Date.parse(r.lastAttemptAt));
      if (r.state !== 'deferred') break;
      expect(r.lastReply).toMatch(/timeout after 1000 ms waiting for the greeting reply/);
      env.clock.ms = Date.parse(r.nextAttemptAt!);
    }
    // Attempts at 0, 5, 15, 35 minutes and the last one at the maximum age (60 minutes).
    expect(attemptsAt.map((t) => (t - start) / 1000)).toEqual([0, 300, 900, 2100, 3600]);
    const [r] = await store.getRecipients('silent-1');
    expect(r).toMatchObject({ state: 'bounced', status: '5.4.7', attempts: 5 });

    await drain(env, 'inbound', inboundJob);
    const box = await mailbox(env, 'alice@local.test');
    expect(box.map((m) => m.subject).sort()).toEqual(['Delayed Mail (still being retried)', 'Undelivered Mail Returned to Sender']);
    const delay = box.find((m) => m.subject?.startsWith('Delayed'))!;
    const delayReport = statusPart(delay);
    expect(delayReport).toContain('Action: delayed');
    expect(delayReport).toContain('Will-Retry-Until:');
    const fail = box.find((m) => m.subject?.startsWith('Undelivered'))!;
    const failReport = statusPart(fail);
    expect(failReport).toContain('Final-Recipient: rfc822; dave@silent.test');
    expect(failReport).toContain('Status: 5.4.7');
    expect(failReport).toContain('Action: failed');
    expect(await queueEmpty(env)).toBe(true);
  });
});

/** A minimal SMTP peer that reaches 354 and then hands the socket to `onData`. */
function dataPeer(onData: (s: net.Socket) => void, sockets: Set<net.Socket>): net.Server {
  return net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.write('220 peer.test ESMTP\r\n');
    let buf = '';
    const onLine = (d: Buffer) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i).toUpperCase();
        buf = buf.slice(i + 2);
        if (line.startsWith('EHLO')) s.write('250 peer.test\r\n');
        else if (line.startsWith('DATA')) {
          s.write('354 go ahead\r\n');
          s.off('data', onLine);
          onData(s);
          return;
        } else s.write('250 ok\r\n');
      }
    };
    s.on('data', onLine);
  });
}

describe('a remote that rejects in the middle of the data and closes', () => {
  let peer: net.Server;
  let env: TestEnv;
  const sockets = new Set<net.Socket>();
  beforeAll(async () => {
    peer = dataPeer((s) => {
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got > 1024 * 1024 && !s.writableEnded) s.end('552 5.3.4 Message size exceeds fixed limit\r\n');
      });
    }, sockets);
    await new Promise<void>((r) => peer.listen(0, '127.0.0.1', r));
    env = await envFor((peer.address() as net.AddressInfo).port);
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => peer?.close(r));
    await env?.close();
  });

  it('takes the early 552 as the answer (a permanent bounce), not the broken connection', async () => {
    const body = ('q'.repeat(98) + '\r\n').repeat(80_000); // 8 MB
    await queueMessage(
      env,
      { id: 'early-1', from: '', rcpts: [{ address: 'bob@remote.test' }] },
      sampleMessage('alice@local.test', 'bob@remote.test', 'Early', body),
    );
    await drain(env, 'outbound', createOutboundJob());
    const [r] = await new OutboundStore(env.storage.tables).getRecipients('early-1');
    expect(r).toMatchObject({ state: 'bounced', status: '5.3.4', lastReply: '552 5.3.4 Message size exceeds fixed limit' });
  });
});

describe('a remote that stops reading in the middle of the data', () => {
  let stuck: net.Server;
  let env: TestEnv;
  const sockets = new Set<net.Socket>();
  beforeAll(async () => {
    // Reaches 354, then never reads again.
    stuck = dataPeer((s) => s.pause(), sockets);
    await new Promise<void>((r) => stuck.listen(0, '127.0.0.1', r));
    env = await envFor((stuck.address() as net.AddressInfo).port, { TOMLINSON_OUTBOUND_COMMAND_TIMEOUT: '1', TOMLINSON_OUTBOUND_DATA_TIMEOUT: '1' });
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => stuck?.close(r));
    await env?.close();
  });

  it('gives up the attempt after the idle timeout instead of hanging, and defers', async () => {
    const body = ('z'.repeat(98) + '\r\n').repeat(160_000); // 16 MB: more than the socket buffers hold
    await queueMessage(
      env,
      { id: 'stuck-1', from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] },
      sampleMessage('alice@local.test', 'bob@remote.test', 'Stuck', body),
    );
    const t0 = Date.now();
    await drain(env, 'outbound', createOutboundJob());
    expect(Date.now() - t0).toBeLessThan(20_000);
    const [r] = await new OutboundStore(env.storage.tables).getRecipients('stuck-1');
    expect(r).toMatchObject({ state: 'deferred', attempts: 1 });
    expect(r.lastReply).toMatch(/connection|no progress/);
  });
});

describe('routing', () => {
  let remote: RemoteMx;
  let env: TestEnv;
  beforeAll(async () => {
    remote = await startRemote();
    env = await envFor(remote.port);
  });
  afterAll(async () => {
    await remote?.close();
    await env?.close();
  });

  it('uses the implicit MX (RFC 5321 §5.1) of a domain with only an A record', async () => {
    await queueMessage(
      env,
      { id: 'implicit-1', from: 'alice@local.test', rcpts: [{ address: 'erin@implicit.test' }] },
      sampleMessage('alice@local.test', 'erin@implicit.test', 'Implicit'),
    );
    await drain(env, 'outbound', createOutboundJob());
    const [r] = await new OutboundStore(env.storage.tables).getRecipients('implicit-1');
    expect(r).toMatchObject({ state: 'delivered', remoteHost: 'implicit.test [127.0.0.1]' });
  });

  it('a smarthost replaces MX routing (no DNS for the recipient domain needed)', async () => {
    // This remote offers no STARTTLS: the URL opts out of the TLS a smarthost otherwise requires.
    const smart = await openEnv({ TOMLINSON_SMARTHOST: `smtp://127.0.0.1:${remote.port}?tls=opportunistic`, TOMLINSON_DNS_SERVERS: dns.address });
    try {
      await queueMessage(
        smart,
        { id: 'smart-1', from: 'alice@local.test', rcpts: [{ address: 'frank@unresolvable.test' }, { address: 'gina@other.test' }] },
        sampleMessage('alice@local.test', 'frank@unresolvable.test', 'Smarthost'),
      );
      const n = remote.events.length;
      await drain(smart, 'outbound', createOutboundJob());
      const rcpts = await new OutboundStore(smart.storage.tables).getRecipients('smart-1');
      expect(rcpts.map((r) => r.state)).toEqual(['delivered', 'delivered']);
      // Both domains went in one transaction to the relay.
      const ev = remote.events.slice(n).filter((e) => e.event === 'message');
      expect(ev).toHaveLength(1);
      expect(ev[0].rcpts?.sort()).toEqual(['frank@unresolvable.test', 'gina@other.test']);
    } finally {
      await smart.close();
    }
  });

  it('a smarthost that offers no STARTTLS gets nothing: the message is deferred and retried, not sent in cleartext', async () => {
    const smart = await openEnv({ TOMLINSON_SMARTHOST: `smtp://127.0.0.1:${remote.port}`, TOMLINSON_DNS_SERVERS: dns.address });
    try {
      await queueMessage(
        smart,
        { id: 'smart-notls-1', from: 'alice@local.test', rcpts: [{ address: 'hank@remote.test' }] },
        sampleMessage('alice@local.test', 'hank@remote.test', 'No TLS'),
      );
      const n = remote.events.length;
      await drain(smart, 'outbound', createOutboundJob());
      let [r] = await new OutboundStore(smart.storage.tables).getRecipients('smart-notls-1');
      expect(r).toMatchObject({ state: 'deferred', attempts: 1, status: '4.7.5' });
      expect(r.lastReply).toMatch(/does not offer STARTTLS and TLS is required/);
      expect(remote.events.slice(n).filter((e) => e.event === 'message')).toHaveLength(0);
      // Retried on the schedule, and refused the same way while the relay offers no TLS.
      smart.clock.ms = Date.parse(r.nextAttemptAt!);
      await drain(smart, 'outbound', createOutboundJob());
      [r] = await new OutboundStore(smart.storage.tables).getRecipients('smart-notls-1');
      expect(r).toMatchObject({ state: 'deferred', attempts: 2, status: '4.7.5' });
      expect(remote.events.slice(n).filter((e) => e.event === 'message')).toHaveLength(0);
    } finally {
      await smart.close();
    }
  });

  it('a smarthost URL with ?tls=none is spoken to in cleartext, as the operator asked', async () => {
    const smart = await openEnv({ TOMLINSON_SMARTHOST: `smtp://127.0.0.1:${remote.port}?tls=none`, TOMLINSON_DNS_SERVERS: dns.address });
    try {
      await queueMessage(
        smart,
        { id: 'smart-none-1', from: 'alice@local.test', rcpts: [{ address: 'ivan@remote.test' }] },
        sampleMessage('alice@local.test', 'ivan@remote.test', 'Cleartext'),
      );
      const n = remote.events.length;
      await drain(smart, 'outbound', createOutboundJob());
      const [r] = await new OutboundStore(smart.storage.tables).getRecipients('smart-none-1');
      expect(r.state).toBe('delivered');
      const ev = remote.events.slice(n).filter((e) => e.event === 'message');
      expect(ev.map((e) => [e.rcpts, e.tls])).toEqual([[['ivan@remote.test'], false]]);
    } finally {
      await smart.close();
    }
  });

  it('splits 150 recipients of one domain into transactions of at most 100 (RFC 5321 §4.5.3.1.8)', async () => {
    const rcpts = Array.from({ length: 150 }, (_, i) => ({ address: `user${i}@remote.test` }));
    await queueMessage(env, { id: 'many-1', from: 'alice@local.test', rcpts }, sampleMessage('alice@local.test', 'user0@remote.test', 'Many'));
    const n = remote.events.length;
    await drain(env, 'outbound', createOutboundJob());
    const ev = remote.events.slice(n).filter((e) => e.event === 'message');
    expect(ev.map((e) => e.rcpts!.length).sort((a, b) => a - b)).toEqual([50, 100]);
    const states = (await new OutboundStore(env.storage.tables).getRecipients('many-1')).map((r) => r.state);
    expect(states.filter((s) => s === 'delivered')).toHaveLength(150);
  });

  it('a message that needs SMTPUTF8 goes with MAIL FROM ... SMTPUTF8 to a server offering it (RFC 6531)', async () => {
    await queueMessage(
      env,
      { id: 'utf8-1', from: 'alice@local.test', rcpts: [{ address: 'jörg@remote.test' }], smtputf8: true },
      sampleMessage('alice@local.test', 'jörg@remote.test', 'UTF8'),
    );
    const n = remote.events.length;
    await drain(env, 'outbound', createOutboundJob());
    const ev = remote.events.slice(n).find((e) => e.event === 'message');
    expect(ev?.mail_options).toContain('SMTPUTF8');
    expect(ev?.rcpts).toEqual(['jörg@remote.test']);
  });
});
