/**
 * DNS blocklists at connect on the MX listener (RFC 5782 queries, RFC 5321 §3.1 refusal), with
 * the test DNS server (test/support/dns-server.ts) as the lists and real clients (swaks, Python's
 * smtplib, a raw socket). The clients connect over loopback from addresses of 127.0.0.0/8 of their
 * own choosing (127.0.0.10 listed, 127.0.0.1 not), with smtp.trustedNetworks set without loopback: it is
 * exempt only because the default trusted networks name it, which a test of its own checks. A
 * listed client gets 554 5.7.1 naming the list and its TXT reason, then 503 until QUIT; a client
 * not listed, listed with a code outside the zone's filter, or whose lookup times out or fails, is
 * served.
 */
import { execFile } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../core/config.js';
import { DnsblChecker, dnsblName, dnsblRefusalText, parseDnsblEntry } from '../../core/mail/dnsbl.js';
import { createLogger } from '../../core/log.js';
import { dnsResolverFromConfig } from '../../core/dns.js';
import { spamStats } from '../../core/mail/spam-stats.js';
import { ALICE, drainInbound, startHarness, TestClient, type Harness } from '../smtp/harness.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';

const run = promisify(execFile);

/** The listed client's address, and one that is not listed (both on loopback). */
const LISTED = '127.0.0.10';
const CLEAN = '127.0.0.1';
const listedName = dnsblName(LISTED, 'bl.test')!;

type Logged = { msg: string; level: number; [k: string]: unknown };

/** A harness whose DNS is `dns` and whose trusted networks leave loopback out (so it is checked), with its log lines kept. */
async function harness(dns: TestDnsServer, env: Record<string, string> = {}): Promise<{ h: Harness; logged: Logged[] }> {
  const logged: Logged[] = [];
  const sink = new PassThrough();
  sink.on('data', (d: Buffer) => {
    for (const line of d.toString('utf8').split('\n').filter(Boolean)) logged.push(JSON.parse(line) as Logged);
  });
  const h = await startHarness(
    {
      TOMLINSON_SMTP_DNSBL: 'bl.test',
      // Trusted: a documentation range (RFC 5737) only, so loopback clients are looked up.
      TOMLINSON_SMTP_TRUSTED_NETWORKS: '192.0.2.0/24',
      TOMLINSON_DNS_SERVERS: dns.address,
      TOMLINSON_DNS_TIMEOUT_MS: '300',
      ...env,
    },
    { log: createLogger({ level: 'debug', pretty: false, destination: sink }) },
  );
  return { h, logged };
}

/** swaks from `from` to the MX port on 127.0.0.1: its exit code and transcript (it exits non-zero on a refusal). */
async function swaks(port: number, from: string, extra: string[] = []): Promise<{ code: number; out: string }> {
  const args = [
    '--server',
    '127.0.0.1',
    '--port',
    String(port),
    '--local-interface',
    from,
    '--helo',
    'client.remote.example',
    '--from',
    'sender@remote.example',
    '--to',
    ALICE,
  ];
  try {
    const { stdout } = await run('swaks', [...args, ...extra], { timeout: 30_000 });
    return { code: 0, out: stdout };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: x.code ?? -1, out: `${x.stdout ?? ''}${x.stderr ?? ''}` };
  }
}

async function refusals(h: Harness, reason: string): Promise<number> {
  return (await h.metrics.smtpRefusals.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

async function lookups(h: Harness, result: string): Promise<number> {
  return (await h.metrics.dnsblLookups.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe('DNSBL query names (RFC 5782)', () => {
  it('reverses IPv4 octets (§2.1) and IPv6 nibbles (§2.4, its own example)', () => {
    expect(dnsblName('192.0.2.99', 'bad.example.com')).toBe('99.2.0.192.bad.example.com');
    expect(dnsblName('2001:db8:1:2:3:4:567:89ab', 'ugly.example.com')).toBe('b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com');
    expect(dnsblName('fd00::2', 'bl.test.')).toBe(`2.${'0.'.repeat(29)}d.f.bl.test`);
    expect(dnsblName('::ffff:192.0.2.1', 'z')).toBe('1.0.2.0.0.0.0.c.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.z');
    expect(dnsblName('not an address', 'z')).toBeUndefined();
  });

  it('smtp.dnsbl takes zone names, each with the return codes that count in Postfix syntax', () => {
    expect(loadConfig({ TOMLINSON_SMTP_DNSBL: 'zen.spamhaus.org, bl.spamcop.net' }).smtp.dnsbl).toEqual(['zen.spamhaus.org', 'bl.spamcop.net']);
    expect(loadConfig({ TOMLINSON_SMTP_DNSBL: 'zen.spamhaus.org=127.0.0.[2..11],bl.test=127.0.0.4' }).smtp.dnsbl).toEqual([
      'zen.spamhaus.org=127.0.0.[2..11]',
      'bl.test=127.0.0.4',
    ]);
    expect(parseDnsblEntry('zen.spamhaus.org=127.0.0.[2..3;10..11]')).toEqual({
      zone: 'zen.spamhaus.org',
      filter: [
        [[127, 127]],
        [[0, 0]],
        [[0, 0]],
        [
          [2, 3],
          [10, 11],
        ],
      ],
    });
    expect(parseDnsblEntry('Bl.Test.')).toEqual({ zone: 'bl.test' });
    for (const bad of [
      'zen.spamhaus.org,http://x',
      'bl.test=127.0.0',
      'bl.test=127.0.0.256',
      'bl.test=127.0.0.[4..2]',
      'bl.test=127.0.0.[2-11]',
      'bl.test=1=2',
      'bl.test=',
    ]) {
      expect(() => loadConfig({ TOMLINSON_SMTP_DNSBL: bad }), bad).toThrow(ConfigError);
    }
    expect(() => loadConfig({ TOMLINSON_SMTP_DNSBL: 'bl.test=127.0.0.[2;x]' })).toThrow(/expected return codes such as bl\.test=127\.0\.0\.2/);
  });
});

describe('DNS blocklists at connect on the MX listener', () => {
  describe('a listed client', () => {
    let dns: TestDnsServer;
    let h: Harness;
    let logged: Logged[];
    beforeAll(async () => {
      dns = await startDnsServer({ [listedName]: { A: ['127.0.0.2'], TXT: [`Listed for spam; see https://bl.test/lookup?ip=${LISTED}`] } });
      ({ h, logged } = await harness(dns));
    });
    afterAll(async () => {
      await h?.close();
      await dns?.close();
    });

    it('is refused by swaks with 554 5.7.1 naming the list and its TXT reason; nothing is queued; counted', async () => {
      const r = await swaks(h.server.ports.mx!, LISTED);
      expect(r.code).not.toBe(0);
      expect(r.out).toContain(
        `<** 554 5.7.1 mx.tomlinson.test Service unavailable; client [${LISTED}] blocked using bl.test; Listed for spam; see https://bl.test/lookup?ip=${LISTED}`,
      );
      expect(r.out).not.toMatch(/^ -> MAIL FROM/m);
      expect(await drainInbound(h.storage)).toEqual([]);
      expect(dns.queries).toEqual(expect.arrayContaining([`A ${listedName}`, `TXT ${listedName}`]));
      expect(await refusals(h, 'dnsbl')).toBe(1);
      expect(logged.find((l) => l.msg === 'client refused: listed by bl.test')).toMatchObject({ client: LISTED, zone: 'bl.test', code: '127.0.0.2' });
      // The daily counter of `spam stats`, written off the reply's path.
      let today: Record<string, unknown> | undefined;
      for (let i = 0; i < 40 && !today?.dnsblRefused; i++) {
        [today] = await spamStats(h.storage.tables);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(today).toMatchObject({ dnsblRefused: 1, scanned: 0 });
    });

    it('gets 503 to every command but QUIT (RFC 5321 §3.1), from the cached result', async () => {
      const asked = dns.queries.length;
      const c = await TestClient.connect(h.server.ports.mx!, { localAddress: LISTED });
      try {
        const greeting = await c.reply();
        expect(greeting.code).toBe(554);
        expect(greeting.enhanced).toBe('5.7.1');
        expect(greeting.lines[0]).toBe(
          `5.7.1 mx.tomlinson.test Service unavailable; client [${LISTED}] blocked using bl.test; Listed for spam; see https://bl.test/lookup?ip=${LISTED}`,
        );
        for (const cmd of ['EHLO client.remote.example', 'MAIL FROM:<sender@remote.example>', `RCPT TO:<${ALICE}>`, 'DATA']) {
          const r = await c.cmd(cmd);
          expect(r.code).toBe(503);
          expect(r.enhanced).toBe('5.5.1');
        }
        expect((await c.cmd('QUIT')).code).toBe(221);
        await c.waitClosed();
      } finally {
        c.close();
      }
      expect(dns.queries.length).toBe(asked);
    });

    it("is refused to Python's smtplib at connect (SMTPConnectError 554)", async () => {
      const script = `
import smtplib, sys
try:
    smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10, source_address=(sys.argv[2], 0))
    print('connected')
except smtplib.SMTPConnectError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
`;
      const { stdout } = await run('python3', ['-c', script, String(h.server.ports.mx), LISTED], { timeout: 30_000 });
      expect(stdout).toContain(`refused 554 5.7.1 mx.tomlinson.test Service unavailable; client [${LISTED}] blocked using bl.test`);
    });

    it("a client not listed (Python's smtplib) is served, after its lookup", async () => {
      const script = `
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10, source_address=(sys.argv[2], 0))
print('refused', s.sendmail('sender@remote.example', [sys.argv[3]], b'Subject: hi\\r\\n\\r\\nhello\\r\\n'))
s.quit()
`;
      const { stdout } = await run('python3', ['-c', script, String(h.server.ports.mx), CLEAN, ALICE], { timeout: 30_000 });
      expect(stdout).toContain('refused {}');
      expect(dns.queries).toContain(`A ${dnsblName(CLEAN, 'bl.test')}`);
      const [job] = await drainInbound(h.storage);
      expect(job.client.address).toBe(CLEAN);
      expect(await lookups(h, 'clean')).toBeGreaterThanOrEqual(1);
    });

    it('the submission port never asks the lists (a user at a listed address still connects)', async () => {
      const asked = dns.queries.length;
      const c = await TestClient.connect(h.server.ports.submission!, { localAddress: '127.0.0.12' });
      try {
        expect((await c.reply()).code).toBe(220);
        expect((await c.cmd('QUIT')).code).toBe(221);
      } finally {
        c.close();
      }
      expect(dns.queries.length).toBe(asked);
    });
  });

  it('never asks about loopback with the default smtp.trustedNetworks, even when it is listed', async () => {
    const dns = await startDnsServer({ [listedName]: { A: ['127.0.0.2'] } });
    const { h } = await harness(dns, { TOMLINSON_SMTP_TRUSTED_NETWORKS: loadConfig({}).smtp.trustedNetworks.join(',') });
    try {
      expect(h.config.smtp.trustedNetworks).toEqual(['127.0.0.0/8', '::1/128']);
      const r = await swaks(h.server.ports.mx!, LISTED);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 /);
      expect(dns.queries).toEqual([]);
      expect(await drainInbound(h.storage)).toHaveLength(1);
    } finally {
      await h.close();
      await dns.close();
    }
  });

  it('never asks about a client in smtp.trustedNetworks; its neighbour outside them is refused', async () => {
    const neighbour = '127.0.0.11';
    const dns = await startDnsServer({ [listedName]: { A: ['127.0.0.2'] }, [dnsblName(neighbour, 'bl.test')!]: { A: ['127.0.0.2'] } });
    const { h } = await harness(dns, { TOMLINSON_SMTP_TRUSTED_NETWORKS: `${LISTED}/32` });
    try {
      expect((await swaks(h.server.ports.mx!, LISTED)).code).toBe(0);
      expect(dns.queries).toEqual([]);
      const r = await swaks(h.server.ports.mx!, neighbour);
      expect(r.out).toContain(`<** 554 5.7.1 mx.tomlinson.test Service unavailable; client [${neighbour}] blocked using bl.test`);
    } finally {
      await h.close();
      await dns.close();
    }
  });

  describe('return-code filters (zone=d.d.d.d)', () => {
    /** 127.0.0.10 listed with 127.0.0.4 only; 127.0.0.11 with 127.0.0.10 and 127.0.0.3, without TXT. */
    const zone = { [listedName]: { A: ['127.0.0.4'] }, [dnsblName('127.0.0.11', 'bl.test')!]: { A: ['127.0.0.10', '127.0.0.3'] } };

    it('lets in a client listed with a code outside the filter (debug log line, counted as filtered) and refuses one inside it', async () => {
      const dns = await startDnsServer(zone);
      const { h, logged } = await harness(dns, { TOMLINSON_SMTP_DNSBL: 'bl.test=127.0.0.[2..3]' });
      try {
        const r = await swaks(h.server.ports.mx!, LISTED);
        expect(r.code).toBe(0);
        expect(r.out).toMatch(/<- {2}250 2\.0\.0 /);
        expect(dns.queries).toContain(`A ${listedName}`);
        expect(await lookups(h, 'filtered')).toBe(1);
        const line = logged.find((l) => l.msg.startsWith('listed by bl.test with 127.0.0.4'));
        expect(line).toMatchObject({ level: 20, client: LISTED, zone: 'bl.test', codes: ['127.0.0.4'] });
        // Any of its codes in the filter is a listing; without a TXT record the reply names the list alone.
        const c = await TestClient.connect(h.server.ports.mx!, { localAddress: '127.0.0.11' });
        try {
          const g = await c.reply();
          expect(g.code).toBe(554);
          expect(g.lines[0]).toBe('5.7.1 mx.tomlinson.test Service unavailable; client [127.0.0.11] blocked using bl.test');
        } finally {
          c.close();
        }
        expect(logged.find((l) => l.msg === 'client refused: listed by bl.test')).toMatchObject({ client: '127.0.0.11', code: '127.0.0.3' });
        expect(await refusals(h, 'dnsbl')).toBe(1);
      } finally {
        await h.close();
        await dns.close();
      }
    });

    it('takes a code that any entry of the same zone takes, and a single code as a filter', async () => {
      const dns = await startDnsServer(zone);
      const { h } = await harness(dns, { TOMLINSON_SMTP_DNSBL: 'bl.test=127.0.0.2,bl.test=127.0.0.4' });
      try {
        const r = await swaks(h.server.ports.mx!, LISTED);
        expect(r.out).toContain(`<** 554 5.7.1 mx.tomlinson.test Service unavailable; client [${LISTED}] blocked using bl.test`);
        // Asked once, though named twice.
        expect(dns.queries.filter((q) => q === `A ${listedName}`)).toHaveLength(1);
        expect((await swaks(h.server.ports.mx!, '127.0.0.11')).code).toBe(0);
      } finally {
        await h.close();
        await dns.close();
      }
    });
  });

  it('finds an IPv6 client by its nibble name (RFC 5782 §2.4), through the same resolver', async () => {
    const v6 = '2001:db8::25';
    const dns = await startDnsServer({ [dnsblName(v6, 'bl.test')!]: { A: ['127.0.0.4'] } });
    try {
      const config = loadConfig({ TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_DNS_TIMEOUT_MS: '300' });
      const checker = new DnsblChecker({ zones: ['bl.test'], resolver: dnsResolverFromConfig(config) });
      const listing = await checker.check(v6);
      expect(listing).toEqual({ zone: 'bl.test', code: '127.0.0.4' });
      expect(dnsblRefusalText(v6, listing!)).toBe(`Service unavailable; client [${v6}] blocked using bl.test`);
      expect(await checker.check('2001:db8::26')).toBeUndefined();
      expect(dns.queries).toEqual([`A ${dnsblName(v6, 'bl.test')}`, `TXT ${dnsblName(v6, 'bl.test')}`, `A ${dnsblName('2001:db8::26', 'bl.test')}`]);
    } finally {
      await dns.close();
    }
  });

  for (const behaviour of ['drop', 'servfail'] as const) {
    it(`lets the client in when the list ${behaviour === 'drop' ? 'does not answer (timeout)' : 'answers SERVFAIL'}: logged and counted`, async () => {
      const dns = await startDnsServer({ [listedName]: { A: ['127.0.0.2'] } });
      dns.behaviour = behaviour;
      const { h, logged } = await harness(dns);
      try {
        const r = await swaks(h.server.ports.mx!, LISTED);
        expect(r.code).toBe(0);
        expect(r.out).toMatch(/<- {2}250 2\.0\.0 /);
        expect(await drainInbound(h.storage)).toHaveLength(1);
        expect(dns.queries).toContain(`A ${listedName}`);
        expect(await lookups(h, 'error')).toBe(1);
        expect(await refusals(h, 'dnsbl')).toBe(0);
        const line = logged.find((l) => l.msg.startsWith('DNSBL bl.test lookup failed'));
        expect(line).toMatchObject({ client: LISTED, zone: 'bl.test' });
        expect(String(line!.error)).toMatch(behaviour === 'drop' ? /no answer within 300 ms|ETIMEOUT/ : /ESERVFAIL/);
      } finally {
        await h.close();
        await dns.close();
      }
    });
  }

  it("treats a list's error code (127.255.255.x) as a failed lookup, not a listing", async () => {
    const dns = await startDnsServer({ [listedName]: { A: ['127.255.255.254'] } });
    const { h } = await harness(dns);
    try {
      const r = await swaks(h.server.ports.mx!, LISTED);
      expect(r.code).toBe(0);
      expect(await lookups(h, 'error')).toBe(1);
    } finally {
      await h.close();
      await dns.close();
    }
  });

  it('asks nothing without configured zones (the default)', async () => {
    const dns = await startDnsServer({ [listedName]: { A: ['127.0.0.2'] } });
    const { h } = await harness(dns, { TOMLINSON_SMTP_DNSBL: '' });
    try {
      expect(h.config.smtp.dnsbl).toEqual([]);
      const r = await swaks(h.server.ports.mx!, LISTED);
      expect(r.code).toBe(0);
      expect(dns.queries).toEqual([]);
    } finally {
      await h.close();
      await dns.close();
    }
  });
});
