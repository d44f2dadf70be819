import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDnsResolver, DnsError } from '../../core/dns.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';

const LONG_TXT = 'v=DKIM1; k=rsa; p=' + 'A'.repeat(600);

describe('core/dns against the test DNS server', () => {
  let dns: TestDnsServer;
  beforeAll(async () => {
    dns = await startDnsServer({
      'example.test': {
        MX: [
          { priority: 10, exchange: 'mx1.example.test' },
          { priority: 20, exchange: 'mx2.example.test' },
        ],
        TXT: ['v=spf1 ip4:127.0.0.1 -all'],
        A: ['192.0.2.1'],
      },
      'mx1.example.test': { A: ['127.0.0.1'], AAAA: ['::1', '2001:db8::25'] },
      'nullmx.test': { MX: [{ priority: 0, exchange: '.' }] },
      'sel._domainkey.example.test': { TXT: [LONG_TXT] },
    });
  });
  afterAll(async () => dns?.close());

  it('answers MX, TXT, A and AAAA from the table', async () => {
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 500 });
    expect(await r.resolveMx('example.test')).toEqual(
      expect.arrayContaining([
        { exchange: 'mx1.example.test', priority: 10 },
        { exchange: 'mx2.example.test', priority: 20 },
      ]),
    );
    expect(await r.resolveTxt('Example.Test.')).toEqual([['v=spf1 ip4:127.0.0.1 -all']]);
    expect(await r.resolve4('mx1.example.test')).toEqual(['127.0.0.1']);
    expect((await r.resolve6('mx1.example.test')).sort()).toEqual(['2001:db8::25', '::1']);
    expect(await r.resolve('example.test', 'A')).toEqual(['192.0.2.1']);
  });

  it('gives a long TXT record (split into 255-octet strings) whole', async () => {
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 500 });
    const txt = await r.resolveTxt('sel._domainkey.example.test');
    expect(txt[0].join('')).toBe(LONG_TXT);
  });

  it('renders a null MX (RFC 7505) as exchange ""', async () => {
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 500 });
    expect(await r.resolveMx('nullmx.test')).toEqual([{ exchange: '', priority: 0 }]);
  });

  it('maps NXDOMAIN to ENOTFOUND and a missing type to ENODATA, and caches them', async () => {
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 500 });
    await expect(r.resolveMx('nope.test')).rejects.toMatchObject({ code: 'ENOTFOUND', permanent: true });
    await expect(r.resolveTxt('mx1.example.test')).rejects.toMatchObject({ code: 'ENODATA' });
    const before = dns.queries.length;
    await expect(r.resolveMx('nope.test')).rejects.toBeInstanceOf(DnsError);
    expect(dns.queries.length).toBe(before);
  });

  it('caches answers until they expire (injected clock) and coalesces queries in flight', async () => {
    let t = 1_000_000;
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 500, cacheSeconds: 10, now: () => t });
    const before = dns.queries.length;
    await Promise.all([r.resolveMx('example.test'), r.resolveMx('example.test'), r.resolveMx('EXAMPLE.test')]);
    expect(dns.queries.length - before).toBe(1);
    await r.resolveMx('example.test');
    expect(dns.queries.length - before).toBe(1);
    t += 11_000;
    await r.resolveMx('example.test');
    expect(dns.queries.length - before).toBe(2);
  });

  it('gives ETIMEOUT quickly when the server drops queries, and ESERVFAIL when it fails', async () => {
    const r = createDnsResolver({ servers: [dns.address], timeoutMs: 200, tries: 1 });
    dns.behaviour = 'drop';
    try {
      const started = Date.now();
      await expect(r.resolveTxt('example.test')).rejects.toMatchObject({ code: 'ETIMEOUT', permanent: false });
      expect(Date.now() - started).toBeLessThan(2000);
      dns.behaviour = 'servfail';
      await expect(r.resolveTxt('servfail.example.test')).rejects.toMatchObject({ code: 'ESERVFAIL' });
    } finally {
      dns.behaviour = 'answer';
    }
  });
});
