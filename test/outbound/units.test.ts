/**
 * The pure parts of outbound delivery: the retry schedule (injected clock, versioned
 * serialisation), MX ordering per RFC 5321 §5.1 against a real DNS server, DSN xtext, smarthost
 * URLs, the From-domain reader and the DSN builder (parsed back by mailparser).
 */
import { Readable } from 'node:stream';
import { simpleParser } from 'mailparser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDnsResolver } from '../../core/dns.js';
import { buildDsn, deliveryStatus, rfc5322Date } from '../../core/mail/dsn.js';
import { orderMx, resolveMxRoute } from '../../core/mail/mx.js';
import { headerFromDomain, parseSmarthost } from '../../core/mail/outbound.js';
import { RetrySchedule } from '../../core/mail/retry.js';
import { xtext } from '../../core/mail/smtp-client.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';

describe('RetrySchedule', () => {
  const t0 = Date.parse('2026-03-01T00:00:00Z');
  it('waits 300, 600, 1200, then 1800 s repeating (the defaults)', () => {
    const s = new RetrySchedule();
    expect([1, 2, 3, 4, 5, 9].map((n) => s.waitAfter(n))).toEqual([300, 600, 1200, 1800, 1800, 1800]);
  });

  it('retries before the maximum age and expires after it; the last try lands on the expiry', () => {
    let now = t0;
    const s = new RetrySchedule({ schedule: [60, 120], maxAgeSeconds: 200, now: () => new Date(now) });
    expect(s.afterTemporaryFailure(1, new Date(t0))).toEqual({ kind: 'retry', at: new Date(t0 + 60_000), afterSeconds: 60 });
    now = t0 + 150_000;
    expect(s.afterTemporaryFailure(2, new Date(t0))).toEqual({ kind: 'retry', at: new Date(t0 + 200_000), afterSeconds: 50 });
    now = t0 + 200_000;
    expect(s.afterTemporaryFailure(3, new Date(t0)).kind).toBe('expire');
  });

  it('delay notices are due after their age, never when 0', () => {
    let now = t0 + 3600_000;
    const clock = () => new Date(now);
    expect(new RetrySchedule({ delayNoticeSeconds: 4 * 3600, now: clock }).delayNoticeDue(new Date(t0))).toBe(false);
    now = t0 + 4 * 3600_000;
    expect(new RetrySchedule({ delayNoticeSeconds: 4 * 3600, now: clock }).delayNoticeDue(new Date(t0))).toBe(true);
    expect(new RetrySchedule({ delayNoticeSeconds: 0, now: clock }).delayNoticeDue(new Date(t0))).toBe(false);
  });

  it('serialises with a version and refuses unknown versions', () => {
    const s = new RetrySchedule({ schedule: [10, 20], maxAgeSeconds: 99, delayNoticeSeconds: 5 });
    const o = s.toObject();
    expect(o).toEqual({ v: 1, schedule: [10, 20], maxAgeSeconds: 99, delayNoticeSeconds: 5 });
    expect(RetrySchedule.fromObject(JSON.parse(JSON.stringify(o))).toObject()).toEqual(o);
    expect(() => RetrySchedule.fromObject({ ...o, v: 2 } as never)).toThrow(/version/);
    expect(() => new RetrySchedule({ schedule: [] })).toThrow(RangeError);
  });
});

describe('MX routing (RFC 5321 §5.1, RFC 7505)', () => {
  let dns: TestDnsServer;
  beforeAll(async () => {
    dns = await startDnsServer({
      'multi.test': {
        MX: [
          { priority: 20, exchange: 'c.multi.test' },
          { priority: 10, exchange: 'a.multi.test' },
          { priority: 10, exchange: 'b.multi.test' },
        ],
      },
      'a.multi.test': { A: ['192.0.2.1'] },
      'b.multi.test': { A: ['192.0.2.2'], AAAA: ['2001:db8::2'] },
      'c.multi.test': { A: ['192.0.2.3'] },
      'nullmx.test': { MX: [{ priority: 0, exchange: '.' }] },
      'noaddr.test': { MX: [{ priority: 10, exchange: 'gone.noaddr.test' }] },
      'bare.test': { TXT: ['v=spf1 -all'] },
    });
  });
  afterAll(async () => {
    await dns?.close();
  });

  it('orders by preference and randomises among equals', () => {
    const recs = [
      { exchange: 'c', priority: 20 },
      { exchange: 'a', priority: 10 },
      { exchange: 'b', priority: 10 },
    ];
    expect(orderMx(recs, () => 0).map((r) => r.exchange)).toEqual(['b', 'a', 'c']);
    expect(orderMx(recs, () => 0.99).map((r) => r.exchange)).toEqual(['a', 'b', 'c']);
  });

  it('resolves hosts in order with their addresses (IPv4 first)', async () => {
    const resolver = createDnsResolver({ servers: [dns.address], timeoutMs: 500 });
    const seen = new Set<string>();
    for (const r of [() => 0, () => 0.99]) {
      const route = await resolveMxRoute(resolver, 'multi.test', { random: r });
      expect(route.kind).toBe('hosts');
      if (route.kind !== 'hosts') return;
      expect(route.hosts.map((h) => h.priority)).toEqual([10, 10, 20]);
      expect(route.hosts[2]).toMatchObject({ host: 'c.multi.test', addresses: ['192.0.2.3'] });
      expect(route.hosts.find((h) => h.host === 'b.multi.test')?.addresses).toEqual(['192.0.2.2', '2001:db8::2']);
      seen.add(route.hosts[0].host);
    }
    expect([...seen].sort()).toEqual(['a.multi.test', 'b.multi.test']);
  });

  it('null MX, NXDOMAIN, no address and no MX at all are permanent; SERVFAIL is temporary', async () => {
    const resolver = createDnsResolver({ servers: [dns.address], timeoutMs: 300, tries: 1, negativeCacheSeconds: 0 });
    expect(await resolveMxRoute(resolver, 'nullmx.test')).toMatchObject({ kind: 'permanent', status: '5.1.10' });
    expect(await resolveMxRoute(resolver, 'nothing-here.test')).toMatchObject({ kind: 'permanent', status: '5.1.2' });
    expect(await resolveMxRoute(resolver, 'noaddr.test')).toMatchObject({ kind: 'permanent', status: '5.4.4' });
    expect(await resolveMxRoute(resolver, 'bare.test')).toMatchObject({ kind: 'permanent', status: '5.1.2' });
    dns.behaviour = 'servfail';
    try {
      const fresh = createDnsResolver({ servers: [dns.address], timeoutMs: 300, tries: 1 });
      expect(await resolveMxRoute(fresh, 'multi.test')).toMatchObject({ kind: 'temporary', status: '4.4.3' });
    } finally {
      dns.behaviour = 'answer';
    }
  });
});

describe('small parsers', () => {
  it('xtext-encodes DSN parameters (RFC 3461 §4)', () => {
    expect(xtext('a+b=c d')).toBe('a+2Bb+3Dc+20d');
    expect(xtext('plain-ENVID_1')).toBe('plain-ENVID_1');
    expect(xtext('é')).toBe('+C3+A9');
  });

  it('parses smarthost URLs', () => {
    expect(parseSmarthost('smtp://user%40x.test:p%3Ass@relay.test:2525', ['A.test'])).toEqual({
      host: 'relay.test',
      port: 2525,
      tls: 'required',
      user: 'user@x.test',
      pass: 'p:ss',
      domains: ['a.test'],
    });
    expect(parseSmarthost('smtps://relay.test')).toMatchObject({ port: 465, tls: 'implicit', user: undefined });
    // Without credentials too, smtp:// requires STARTTLS unless the URL opts out.
    expect(parseSmarthost('smtp://relay.test')).toMatchObject({ port: 587, tls: 'required' });
    expect(parseSmarthost('smtp://relay.test:25?tls=opportunistic')).toMatchObject({ port: 25, tls: 'opportunistic' });
    expect(parseSmarthost('smtp://relay.test?tls=none')).toMatchObject({ tls: 'none' });
    expect(() => parseSmarthost('smtp://u:p@relay.test?tls=none')).toThrow(/password in the clear/);
    expect(() => parseSmarthost('smtp://relay.test?tls=maybe')).toThrow(/tls=maybe/);
    expect(() => parseSmarthost('smtps://relay.test?tls=none')).toThrow(/smtps/);
    expect(() => parseSmarthost('smtp://relay.test?starttls=no')).toThrow(/unknown parameter/);
    expect(() => parseSmarthost('http://relay.test')).toThrow(/smtp/);
  });

  it('reads the From domain from a folded header block only', async () => {
    const msg = 'Subject: x\r\nFrom: "Alice, Example"\r\n  <alice@Sub.Example.TEST>\r\n\r\nFrom: mallory@evil.test\r\n';
    expect(await headerFromDomain(Readable.from([Buffer.from(msg)]))).toBe('sub.example.test');
    expect(await headerFromDomain(Readable.from([Buffer.from('To: a@b.test\r\n\r\nFrom: x@y.test\r\n')]))).toBeUndefined();
  });
});

describe('DSN builder (RFC 3464)', () => {
  const base = {
    reportingMta: 'mx.tomlinson.test',
    to: 'alice@local.test',
    queueId: 'Q1',
    arrivalDate: new Date('2026-03-01T08:00:00Z'),
    now: new Date('2026-03-01T09:00:00Z'),
    recipients: [
      {
        address: 'bob@remote.test',
        action: 'failed' as const,
        status: '5.1.1',
        remoteMta: 'mx1.remote.test',
        diagnostic: '550 5.1.1 no\r\nInjected: header',
        lastAttemptAt: new Date('2026-03-01T08:30:00Z'),
      },
    ],
  };
  const original = 'Subject: Original\r\nFrom: alice@local.test\r\n\r\nBODY LINE\r\n';
  const collect = async (it: AsyncIterable<Buffer>) => {
    const parts: Buffer[] = [];
    for await (const c of it) parts.push(c);
    return Buffer.concat(parts);
  };

  it('FULL returns the whole message as message/rfc822; reply text cannot inject fields', async () => {
    const raw = await collect(buildDsn({ ...base, ret: 'FULL', original: async () => Readable.from([Buffer.from(original)]) }));
    const m = await simpleParser(raw);
    expect(m.subject).toBe('Undelivered Mail Returned to Sender');
    expect(m.from?.value[0]).toMatchObject({ name: 'Mail Delivery System', address: 'MAILER-DAEMON@mx.tomlinson.test' });
    expect(m.date?.toISOString()).toBe('2026-03-01T09:00:00.000Z');
    expect(m.attachments.find((a) => a.contentType === 'message/rfc822')?.content.toString()).toContain('BODY LINE');
    expect(raw.toString()).not.toMatch(/^Injected: header/m);
    expect(deliveryStatus({ ...base, ret: 'FULL', original: async () => Readable.from([]) })).toContain('Diagnostic-Code: smtp; 550 5.1.1 no Injected: header');
  });

  it('HDRS returns only the header block as text/rfc822-headers', async () => {
    const raw = (
      await collect(
        buildDsn({ ...base, ret: 'HDRS', original: async () => Readable.from([Buffer.from(original.slice(0, 20)), Buffer.from(original.slice(20))]) }),
      )
    ).toString();
    expect(raw).toContain('Content-Type: text/rfc822-headers');
    expect(raw).toContain('Subject: Original\r\nFrom: alice@local.test\r\n');
    expect(raw).not.toContain('BODY LINE');
  });

  it('formats RFC 5322 dates', () => {
    expect(rfc5322Date(new Date('2026-03-01T09:05:07Z'))).toBe('Sun, 1 Mar 2026 09:05:07 +0000');
  });
});
