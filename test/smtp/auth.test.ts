/**
 * SPF, DKIM and DMARC on the MX listener (checkAuth on), against the test DNS server on 127.0.0.1:
 * the Authentication-Results header is added, DMARC p=reject failures get 550 5.7.1 at the end of
 * data, and a DNS server that answers nothing gives temperror quickly instead of a stall.
 */
import { generateKeyPairSync } from 'node:crypto';
import { dkimSign } from 'mailauth';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDnsResolver } from '../../core/dns.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { ALICE, drainInbound, startHarness, storedMessage, TestClient, type Harness } from './harness.js';

const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const PRIVATE_PEM = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const PUBLIC_B64 = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');

async function deliver(h: Harness, from: string, message: string): Promise<{ code: number; enhanced?: string; ms: number }> {
  const c = await TestClient.connect(h.server.ports.mx!);
  try {
    await c.reply();
    await c.cmd('EHLO mail.sender.example');
    expect((await c.cmd(`MAIL FROM:<${from}>`)).code).toBe(250);
    expect((await c.cmd(`RCPT TO:<${ALICE}>`)).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    const started = Date.now();
    c.send(message.replace(/\r?\n/g, '\r\n').replace(/\r\n\./g, '\r\n..') + '\r\n.\r\n');
    const r = await c.reply(30_000);
    return { code: r.code, enhanced: r.enhanced, ms: Date.now() - started };
  } finally {
    c.close();
  }
}

async function storedHeaders(h: Harness): Promise<string> {
  const jobs = await drainInbound(h.storage);
  expect(jobs).toHaveLength(1);
  const text = (await storedMessage(h.storage, jobs[0])).toString();
  return text.slice(0, text.indexOf('\r\n\r\n'));
}

const msg = (from: string, subject: string, extra = '') =>
  `From: ${from}\r\nTo: ${ALICE}\r\nSubject: ${subject}\r\nDate: Thu, 26 Nov 2026 07:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@x>\r\n\r\nbody of ${subject}\r\n${extra}`;

describe('SPF / DKIM / DMARC on the MX listener', () => {
  let dns: TestDnsServer;
  let h: Harness;
  beforeAll(async () => {
    dns = await startDnsServer({
      'pass.example': { TXT: ['v=spf1 ip4:127.0.0.1 -all'] },
      '_dmarc.pass.example': { TXT: ['v=DMARC1; p=reject'] },
      'reject.example': { TXT: ['v=spf1 ip4:192.0.2.1 -all'] },
      '_dmarc.reject.example': { TXT: ['v=DMARC1; p=reject'] },
      'quarantine.example': { TXT: ['v=spf1 -all'] },
      '_dmarc.quarantine.example': { TXT: ['v=DMARC1; p=quarantine'] },
      'signed.example': { TXT: ['v=spf1 -all'] },
      '_dmarc.signed.example': { TXT: ['v=DMARC1; p=reject'] },
      'sel._domainkey.signed.example': { TXT: [`v=DKIM1; k=rsa; p=${PUBLIC_B64}`] },
    });
    h = await startHarness(
      { TOMLINSON_SMTP_CHECK_AUTH: 'true', TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_DNS_TIMEOUT_MS: '200' },
      { resolver: createDnsResolver({ servers: [dns.address], timeoutMs: 200, tries: 1 }), inlineBytes: 64 * 1024 },
    );
  });
  afterAll(async () => {
    await h?.close();
    await dns?.close();
  });

  it('SPF pass and DMARC pass: accepted with Authentication-Results on top', async () => {
    const r = await deliver(h, 'a@pass.example', msg('a@pass.example', 'spf pass'));
    expect(r.code).toBe(250);
    const headers = await storedHeaders(h);
    expect(headers).toMatch(/^Return-Path: <a@pass\.example>\r\nReceived: from mail\.sender\.example/);
    expect(headers).toMatch(/\r\nAuthentication-Results: mx\.tomlinson\.test;[\s\S]*spf=pass[\s\S]*dmarc=pass/);
    expect(headers).toMatch(/Received-SPF: pass/);
  });

  it('DMARC fail with p=reject: 550 5.7.1 at the end of data, nothing queued', async () => {
    const r = await deliver(h, 'a@reject.example', msg('a@reject.example', 'spoofed'));
    expect(r.code).toBe(550);
    expect(r.enhanced).toBe('5.7.1');
    expect(await drainInbound(h.storage)).toHaveLength(0);
  });

  it('DMARC fail with p=quarantine is accepted and marked', async () => {
    expect((await deliver(h, 'a@quarantine.example', msg('a@quarantine.example', 'quarantined'))).code).toBe(250);
    expect(await storedHeaders(h)).toMatch(/dmarc=fail/);
  });

  it('a valid DKIM signature passes DMARC even when SPF fails', async () => {
    const raw = msg('a@signed.example', 'dkim signed');
    const signed = await dkimSign(raw, { signatureData: [{ signingDomain: 'signed.example', selector: 'sel', privateKey: PRIVATE_PEM }] } as Parameters<
      typeof dkimSign
    >[1]);
    const r = await deliver(h, 'bounce@other.example', signed.signatures + raw);
    expect(r.code).toBe(250);
    const headers = await storedHeaders(h);
    expect(headers).toMatch(/dkim=pass[\s\S]*header\.d=signed\.example/);
    expect(headers).toMatch(/dmarc=pass/);
  });

  it('a large message (streamed, checked from the spool) gets the same treatment', async () => {
    const big = ('z'.repeat(70) + '\r\n').repeat(3000);
    expect((await deliver(h, 'a@reject.example', msg('a@reject.example', 'big spoof', big))).code).toBe(550);
    expect(await drainInbound(h.storage)).toHaveLength(0);
    expect((await deliver(h, 'a@pass.example', msg('a@pass.example', 'big pass', big))).code).toBe(250);
    expect(await storedHeaders(h)).toMatch(/spf=pass/);
    const spool = await h.storage.mail.list('spool/');
    expect(spool.items).toEqual([]);
  });

  it('DNS answering nothing: temperror, accepted, within a few seconds (never a stall)', async () => {
    dns.behaviour = 'drop';
    try {
      const r = await deliver(h, 'a@slow.example', msg('a@slow.example', 'dns down'));
      expect(r.code).toBe(250);
      expect(r.ms).toBeLessThan(10_000);
      expect(await storedHeaders(h)).toMatch(/temperror/);
    } finally {
      dns.behaviour = 'answer';
    }
  });
});
