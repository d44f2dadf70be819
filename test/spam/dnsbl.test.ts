/**
 * DNS blocklists at connect on the MX listener (RFC 5782 queries, RFC 5321 §3.1 refusal), with
 * the test DNS server (test/support/dns-server.ts) as the lists and real clients (swaks, Python's
 * smtplib, a raw socket) connecting from this machine's own non-loopback addresses, since loopback
 * is never checked. A listed client gets 554 5.7.1 naming the list and its TXT reason, then 503
 * until QUIT; a client not listed, or whose lookup times out or fails, is served.
 */
import { execFile } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../core/config.js';
import { dnsblName } from '../../core/mail/dnsbl.js';
import { createLogger } from '../../core/log.js';
import { ALICE, drainInbound, startHarness, TestClient, type Harness } from '../smtp/harness.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';

const run = promisify(execFile);

/** This machine's first non-loopback IPv4 and IPv6 (not link-local) addresses. */
const own = Object.values(networkInterfaces())
  .flat()
  .filter((i) => i && !i.internal);
const V4 = own.find((i) => i!.family === 'IPv4')?.address;
const V6 = own.find((i) => i!.family === 'IPv6' && !i!.address.toLowerCase().startsWith('fe80'))?.address;

type Logged = { msg: string; [k: string]: unknown };

/** A harness listening on every address, its DNS pointed at `dns`, with its log lines kept. */
async function harness(dns: TestDnsServer, env: Record<string, string> = {}): Promise<{ h: Harness; logged: Logged[] }> {
  const logged: Logged[] = [];
  const sink = new PassThrough();
  sink.on('data', (d: Buffer) => {
    for (const line of d.toString('utf8').split('\n').filter(Boolean)) logged.push(JSON.parse(line) as Logged);
  });
  const h = await startHarness(
    {
      TOMLINSON_LISTEN_HOST: '::',
      TOMLINSON_SMTP_DNSBL: 'bl.test',
      TOMLINSON_DNS_SERVERS: dns.address,
      TOMLINSON_DNS_TIMEOUT_MS: '300',
      ...env,
    },
    { log: createLogger({ level: 'info', pretty: false, destination: sink }) },
  );
  return { h, logged };
}

/** swaks's exit code and transcript (it exits non-zero on a refusal). */
async function swaks(server: string, port: number, extra: string[] = []): Promise<{ code: number; out: string }> {
  const args = ['--server', server, '--port', String(port), '--helo', 'client.remote.example', '--from', 'sender@remote.example', '--to', ALICE];
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

  it('smtp.dnsbl takes zone names only', () => {
    expect(loadConfig({ TOMLINSON_SMTP_DNSBL: 'zen.spamhaus.org, bl.spamcop.net' }).smtp.dnsbl).toEqual(['zen.spamhaus.org', 'bl.spamcop.net']);
    expect(() => loadConfig({ TOMLINSON_SMTP_DNSBL: 'zen.spamhaus.org,http://x' })).toThrow(ConfigError);
  });
});

describe.skipIf(!V4)('DNS blocklists at connect on the MX listener', () => {
  const v4 = V4!;
  const listed4 = () => dnsblName(v4, 'bl.test')!;

  describe('a listed client', () => {
    let dns: TestDnsServer;
    let h: Harness;
    let logged: Logged[];
    beforeAll(async () => {
      dns = await startDnsServer({
        [listed4()]: { A: ['127.0.0.2'], TXT: ['Listed for spam; see https://bl.test/lookup?ip=' + v4] },
        // Loopback listed too: it must never be asked about.
        [dnsblName('127.0.0.1', 'bl.test')!]: { A: ['127.0.0.2'] },
      });
      ({ h, logged } = await harness(dns));
    });
    afterAll(async () => {
      await h?.close();
      await dns?.close();
    });

    it('is refused by swaks with 554 5.7.1 naming the list and its TXT reason; nothing is queued', async () => {
      const r = await swaks(v4, h.server.ports.mx!);
      expect(r.code).not.toBe(0);
      expect(r.out).toContain(
        `<** 554 5.7.1 mx.tomlinson.test Service unavailable; client [${v4}] blocked using bl.test; Listed for spam; see https://bl.test/lookup?ip=${v4}`,
      );
      expect(r.out).not.toMatch(/^ -> MAIL FROM/m);
      expect(await drainInbound(h.storage)).toEqual([]);
      expect(dns.queries).toEqual(expect.arrayContaining([`A ${listed4()}`, `TXT ${listed4()}`]));
      expect(await refusals(h, 'dnsbl')).toBe(1);
      expect(logged.find((l) => l.msg === 'client refused: listed by bl.test')).toMatchObject({ client: v4, zone: 'bl.test', code: '127.0.0.2' });
    });

    it('gets 503 to every command but QUIT (RFC 5321 §3.1), from the cached result', async () => {
      const asked = dns.queries.length;
      const c = await TestClient.connect(h.server.ports.mx!, { host: v4 });
      try {
        const greeting = await c.reply();
        expect(greeting.code).toBe(554);
        expect(greeting.enhanced).toBe('5.7.1');
        expect(greeting.lines[0]).toMatch(/^5\.7\.1 mx\.tomlinson\.test Service unavailable; client \[.*\] blocked using bl\.test/);
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
    smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10)
    print('connected')
except smtplib.SMTPConnectError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
`;
      const { stdout } = await run('python3', ['-c', script, v4, String(h.server.ports.mx)], { timeout: 30_000 });
      expect(stdout).toContain(`refused 554 5.7.1 mx.tomlinson.test Service unavailable; client [${v4}] blocked using bl.test`);
    });

    it('a loopback client is never looked up, even when listed', async () => {
      const before = dns.queries.length;
      const r = await swaks('127.0.0.1', h.server.ports.mx!);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 /);
      expect(dns.queries.slice(before)).toEqual([]);
      expect(await drainInbound(h.storage)).toHaveLength(1);
    });

    it('the submission port never asks the lists (a user at a listed address still connects)', async () => {
      const c = await TestClient.connect(h.server.ports.submission!, { host: v4 });
      try {
        expect((await c.reply()).code).toBe(220);
        expect((await c.cmd('QUIT')).code).toBe(221);
      } finally {
        c.close();
      }
    });

    it.skipIf(!V6)("a client not listed (this machine over IPv6, with Python's smtplib) is served", async () => {
      // swaks needs IO::Socket::INET6 for IPv6, which Debian's swaks does not pull in.
      const script = `
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10)
print('refused', s.sendmail('sender@remote.example', [sys.argv[3]], b'Subject: hi\\r\\n\\r\\nhello\\r\\n'))
s.quit()
`;
      const { stdout } = await run('python3', ['-c', script, V6!, String(h.server.ports.mx), ALICE], { timeout: 30_000 });
      expect(stdout).toContain('refused {}');
      expect(dns.queries).toContain(`A ${dnsblName(V6!, 'bl.test')}`);
      const [job] = await drainInbound(h.storage);
      expect(job.client.address).toBe(V6);
      expect(await lookups(h, 'clean')).toBeGreaterThanOrEqual(1);
    });
  });

  it.skipIf(!V6)('an IPv6 client listed by its nibble name is refused; without a TXT record the reply names the list alone', async () => {
    const dns = await startDnsServer({ [dnsblName(V6!, 'bl.test')!]: { A: ['127.0.0.4'] } });
    const { h } = await harness(dns);
    try {
      const c = await TestClient.connect(h.server.ports.mx!, { host: V6! });
      try {
        const g = await c.reply();
        expect(g.code).toBe(554);
        expect(g.lines[0]).toBe(`5.7.1 mx.tomlinson.test Service unavailable; client [${V6}] blocked using bl.test`);
      } finally {
        c.close();
      }
    } finally {
      await h.close();
      await dns.close();
    }
  });

  for (const behaviour of ['drop', 'servfail'] as const) {
    it(`lets the client in when the list ${behaviour === 'drop' ? 'does not answer (timeout)' : 'answers SERVFAIL'}: logged and counted`, async () => {
      const dns = await startDnsServer({ [listed4()]: { A: ['127.0.0.2'] } });
      dns.behaviour = behaviour;
      const { h, logged } = await harness(dns);
      try {
        const r = await swaks(v4, h.server.ports.mx!);
        expect(r.code).toBe(0);
        expect(r.out).toMatch(/<- {2}250 2\.0\.0 /);
        expect(await drainInbound(h.storage)).toHaveLength(1);
        expect(dns.queries).toContain(`A ${listed4()}`);
        expect(await lookups(h, 'error')).toBe(1);
        expect(await refusals(h, 'dnsbl')).toBe(0);
        const line = logged.find((l) => l.msg.startsWith('DNSBL bl.test lookup failed'));
        expect(line).toMatchObject({ client: v4, zone: 'bl.test' });
        expect(String(line!.error)).toMatch(behaviour === 'drop' ? /no answer within 300 ms|ETIMEOUT/ : /ESERVFAIL/);
      } finally {
        await h.close();
        await dns.close();
      }
    });
  }

  it("treats a list's error code (127.255.255.x) as a failed lookup, not a listing", async () => {
    const dns = await startDnsServer({ [listed4()]: { A: ['127.255.255.254'] } });
    const { h } = await harness(dns);
    try {
      const r = await swaks(v4, h.server.ports.mx!);
      expect(r.code).toBe(0);
      expect(await lookups(h, 'error')).toBe(1);
    } finally {
      await h.close();
      await dns.close();
    }
  });

  it('never asks about a client in smtp.trustedNetworks', async () => {
    const dns = await startDnsServer({ [listed4()]: { A: ['127.0.0.2'] } });
    const { h } = await harness(dns, { TOMLINSON_SMTP_TRUSTED_NETWORKS: `127.0.0.0/8,::1/128,${v4}/32` });
    try {
      const r = await swaks(v4, h.server.ports.mx!);
      expect(r.code).toBe(0);
      expect(dns.queries).toEqual([]);
    } finally {
      await h.close();
      await dns.close();
    }
  });

  it('asks nothing without configured zones (the default)', async () => {
    const dns = await startDnsServer({ [listed4()]: { A: ['127.0.0.2'] } });
    const { h } = await harness(dns, { TOMLINSON_SMTP_DNSBL: '' });
    try {
      expect(h.config.smtp.dnsbl).toEqual([]);
      const r = await swaks(v4, h.server.ports.mx!);
      expect(r.code).toBe(0);
      expect(dns.queries).toEqual([]);
    } finally {
      await h.close();
      await dns.close();
    }
  });
});
