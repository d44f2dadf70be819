/**
 * TLS policy and extension decisions of the outbound client against aiosmtpd remotes:
 * opportunistic STARTTLS (RFC 7435, RFC 3207), TLS required per domain (verified against a CA
 * the test made), and a message needing SMTPUTF8 meeting a server without it (RFC 6531 §3.2).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { OutboundStore } from '../../core/mail/outbound-store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, type RemoteMx } from './harness.js';

const run = promisify(execFile);
let dns: TestDnsServer;
let certDir: string;
let tlsRemote: RemoteMx;
let plainRemote: RemoteMx;
let asciiRemote: RemoteMx;
let brokenRemote: RemoteMx;
let smallRemote: RemoteMx;
let heloRemote: RemoteMx;
let ca: string;

beforeAll(async () => {
  dns = await startDnsServer({
    'tls.test': { MX: [{ priority: 10, exchange: 'mx1.tls.test' }] },
    'mx1.tls.test': { A: ['127.0.0.1'] },
  });
  certDir = await mkdtemp(join(tmpdir(), 'tomlinson-tls-'));
  // A self-signed certificate for the MX host name; the test trusts it as its own CA.
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=mx1.tls.test',
    '-addext',
    'subjectAltName=DNS:mx1.tls.test',
    '-keyout',
    join(certDir, 'key.pem'),
    '-out',
    join(certDir, 'cert.pem'),
  ]);
  ca = await readFile(join(certDir, 'cert.pem'), 'utf8');
  [tlsRemote, plainRemote, asciiRemote, brokenRemote, smallRemote, heloRemote] = await Promise.all([
    startRemote({ tls: { cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') } }),
    startRemote(),
    startRemote({ noSmtputf8: true }),
    startRemote({ tls: { cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') }, brokenTls: true }),
    startRemote({ sizeLimit: 1000 }),
    startRemote({ noEhlo: true }),
  ]);
});
afterAll(async () => {
  await Promise.all([tlsRemote?.close(), plainRemote?.close(), asciiRemote?.close(), brokenRemote?.close(), smallRemote?.close(), heloRemote?.close()]);
  await dns?.close();
  if (certDir) await rm(certDir, { recursive: true, force: true });
});

async function attempt(
  remote: RemoteMx,
  id: string,
  extra: Record<string, string>,
  opts: { ca?: string; smtputf8?: boolean; to?: string; body?: string } = {},
) {
  const env = await openEnv({ TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_OUTBOUND_MX_PORT: String(remote.port), ...extra });
  try {
    const to = opts.to ?? 'bob@tls.test';
    await queueMessage(
      env,
      { id, from: 'alice@local.test', rcpts: [{ address: to }], ...(opts.smtputf8 ? { smtputf8: true } : {}) },
      sampleMessage('alice@local.test', to, id, opts.body),
    );
    const before = remote.events.length;
    await drain(env, 'outbound', createOutboundJob(opts.ca ? { ca: opts.ca } : {}));
    const [r] = await new OutboundStore(env.storage.tables).getRecipients(id);
    return { r, events: remote.events.slice(before) };
  } finally {
    await env.close();
  }
}

describe('STARTTLS', () => {
  it('is used opportunistically when offered, without certificate checks', async () => {
    const { r, events } = await attempt(tlsRemote, 'tls-1', {});
    expect(r.state).toBe('delivered');
    expect(events.find((e) => e.event === 'message')?.tls).toBe(true);
  });

  it('plaintext is fine for an ordinary domain when the server offers no STARTTLS', async () => {
    const { r, events } = await attempt(plainRemote, 'tls-2', {});
    expect(r.state).toBe('delivered');
    expect(events.find((e) => e.event === 'message')?.tls).toBe(false);
  });

  it('a failed opportunistic handshake falls back to cleartext on the same host (RFC 7435); required TLS does not', async () => {
    const { r, events } = await attempt(brokenRemote, 'tls-6', {});
    expect(r.state).toBe('delivered');
    expect(events.find((e) => e.event === 'message')?.tls).toBe(false);
    const strict = await attempt(brokenRemote, 'tls-7', { TOMLINSON_OUTBOUND_REQUIRE_TLS_DOMAINS: 'tls.test' }, { ca });
    expect(strict.r).toMatchObject({ state: 'deferred', status: '4.7.5' });
    expect(strict.events).toHaveLength(0);
  });

  it('a domain that requires TLS is deferred (4.7.5) at a server without STARTTLS', async () => {
    const { r, events } = await attempt(plainRemote, 'tls-3', { TOMLINSON_OUTBOUND_REQUIRE_TLS_DOMAINS: 'tls.test' });
    expect(r).toMatchObject({ state: 'deferred', status: '4.7.5' });
    expect(r.lastReply).toContain('does not offer STARTTLS');
    expect(events).toHaveLength(0);
  });

  it('required TLS verifies the certificate: refused without the CA, delivered with it', async () => {
    const refused = await attempt(tlsRemote, 'tls-4', { TOMLINSON_OUTBOUND_REQUIRE_TLS_DOMAINS: 'tls.test' });
    expect(refused.r).toMatchObject({ state: 'deferred', status: '4.7.5' });
    expect(refused.r.lastReply).toMatch(/TLS handshake with mx1\.tls\.test failed: .*(self.signed|certificate)/i);
    const ok = await attempt(tlsRemote, 'tls-5', { TOMLINSON_OUTBOUND_REQUIRE_TLS_DOMAINS: 'tls.test' }, { ca });
    expect(ok.r.state).toBe('delivered');
    expect(ok.events.find((e) => e.event === 'message')?.tls).toBe(true);
  });
});

describe('SMTPUTF8 (RFC 6531)', () => {
  it('a message that needs SMTPUTF8 bounces (5.6.7) at a server that does not offer it', async () => {
    const { r, events } = await attempt(asciiRemote, 'utf8-2', {}, { smtputf8: true, to: 'jörg@tls.test' });
    expect(r).toMatchObject({ state: 'bounced', status: '5.6.7' });
    expect(r.lastReply).toContain('does not support SMTPUTF8');
    expect(events).toHaveLength(0);
  });

  it('an ASCII message goes to the same server', async () => {
    const { r } = await attempt(asciiRemote, 'utf8-3', {});
    expect(r.state).toBe('delivered');
  });
});

describe('SIZE (RFC 1870)', () => {
  it("a message larger than the server's SIZE bounces (5.3.4) before any data is sent", async () => {
    const big = await attempt(smallRemote, 'size-1', {}, { body: ('y'.repeat(70) + '\r\n').repeat(20) });
    expect(big.r).toMatchObject({ state: 'bounced', status: '5.3.4' });
    expect(big.r.lastReply).toMatch(/exceeds .*SIZE limit 1000/);
    expect(big.events).toHaveLength(0);
    const small = await attempt(smallRemote, 'size-2', {});
    expect(small.r.state).toBe('delivered');
  });
});

describe('EHLO (RFC 5321 §3.2)', () => {
  it('falls back to HELO at a server that does not know EHLO, using no extensions', async () => {
    const { r, events } = await attempt(heloRemote, 'helo-1', {});
    expect(r.state).toBe('delivered');
    expect(events.find((e) => e.event === 'message')?.mail_options).toEqual([]);
  });
});
