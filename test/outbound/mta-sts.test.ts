/**
 * MTA-STS (RFC 8461) for MX delivery: the policy is discovered through the test DNS server
 * (`_mta-sts` TXT) and fetched from a real HTTPS server on 127.0.0.1 whose certificate the test
 * made; an enforced policy limits delivery to matching MX hosts over verified TLS.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mxMatches } from '../../core/mail/mta-sts.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { OutboundStore } from '../../core/mail/outbound-store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, type RemoteMx } from './harness.js';

const run = promisify(execFile);
let dns: TestDnsServer;
let dir: string;
let ca: string;
let policyServer: https.Server;
let policyPort: number;
const fetched: string[] = [];
let tlsRemote: RemoteMx;
let plainRemote: RemoteMx;

const POLICIES: Record<string, string> = {
  'mta-sts.sts.test': 'version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmax_age: 86400\r\n',
  'mta-sts.wrongmx.test': 'version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n',
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-sts-'));
  const san = 'subjectAltName=DNS:mta-sts.sts.test,DNS:mx1.sts.test,DNS:mta-sts.wrongmx.test,DNS:mx1.wrongmx.test';
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=sts test',
    '-addext',
    san,
    '-keyout',
    join(dir, 'key.pem'),
    '-out',
    join(dir, 'cert.pem'),
  ]);
  ca = await readFile(join(dir, 'cert.pem'), 'utf8');
  policyServer = https.createServer({ key: await readFile(join(dir, 'key.pem')), cert: ca }, (req, res) => {
    const host = String(req.headers.host ?? '').replace(/:\d+$/, '');
    fetched.push(`${host}${req.url}`);
    const body = req.url === '/.well-known/mta-sts.txt' ? POLICIES[host] : undefined;
    res.writeHead(body ? 200 : 404, { 'content-type': 'text/plain' }).end(body ?? 'not found');
  });
  await new Promise<void>((r) => policyServer.listen(0, '127.0.0.1', r));
  policyPort = (policyServer.address() as AddressInfo).port;
  dns = await startDnsServer({
    'sts.test': { MX: [{ priority: 10, exchange: 'mx1.sts.test' }] },
    'mx1.sts.test': { A: ['127.0.0.1'] },
    '_mta-sts.sts.test': { TXT: ['v=STSv1; id=20260301T000000'] },
    'mta-sts.sts.test': { A: ['127.0.0.1'] },
    'wrongmx.test': { MX: [{ priority: 10, exchange: 'mx1.wrongmx.test' }] },
    'mx1.wrongmx.test': { A: ['127.0.0.1'] },
    '_mta-sts.wrongmx.test': { TXT: ['v=STSv1; id=1'] },
    'mta-sts.wrongmx.test': { A: ['127.0.0.1'] },
  });
  [tlsRemote, plainRemote] = await Promise.all([startRemote({ tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } }), startRemote()]);
});
afterAll(async () => {
  await Promise.all([tlsRemote?.close(), plainRemote?.close(), dns?.close(), new Promise((r) => policyServer?.close(r))]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function deliver(remote: RemoteMx, id: string, to: string) {
  const env = await openEnv({
    TOMLINSON_DNS_SERVERS: dns.address,
    TOMLINSON_OUTBOUND_MX_PORT: String(remote.port),
    TOMLINSON_OUTBOUND_MTA_STS_PORT: String(policyPort),
  });
  try {
    await queueMessage(env, { id, from: 'alice@local.test', rcpts: [{ address: to }] }, sampleMessage('alice@local.test', to, id));
    const before = remote.events.length;
    await drain(env, 'outbound', createOutboundJob({ ca }));
    const [r] = await new OutboundStore(env.storage.tables).getRecipients(id);
    const cached = await env.storage.tables.get({ pk: `MTASTS#${to.split('@')[1]}`, sk: 'POLICY' });
    return { r, events: remote.events.slice(before), cached };
  } finally {
    await env.close();
  }
}

describe('MTA-STS enforce', () => {
  it('delivers over verified TLS to a matching MX and caches the policy', async () => {
    const { r, events, cached } = await deliver(tlsRemote, 'sts-1', 'bob@sts.test');
    expect(r.state).toBe('delivered');
    expect(events.find((e) => e.event === 'message')?.tls).toBe(true);
    expect(fetched).toContain('mta-sts.sts.test/.well-known/mta-sts.txt');
    expect(cached).toMatchObject({ mode: 'enforce', mx: ['mx1.sts.test'], id: '20260301T000000' });
  });

  it('defers (4.7.5) instead of sending in plaintext to a server without STARTTLS', async () => {
    const { r, events } = await deliver(plainRemote, 'sts-2', 'bob@sts.test');
    expect(r).toMatchObject({ state: 'deferred', status: '4.7.5' });
    expect(events).toHaveLength(0);
  });

  it('defers (4.7.5) when no MX host matches the policy, without connecting', async () => {
    const { r, events } = await deliver(tlsRemote, 'sts-3', 'bob@wrongmx.test');
    expect(r).toMatchObject({ state: 'deferred', status: '4.7.5' });
    expect(r.lastReply).toContain('matches its MTA-STS policy');
    expect(events).toHaveLength(0);
  });

  it('matches wildcards one label deep (RFC 8461 §4.1)', () => {
    expect(mxMatches('mx.example.com', ['*.example.com'])).toBe(true);
    expect(mxMatches('MX.Example.com.', ['mx.example.com'])).toBe(true);
    expect(mxMatches('a.b.example.com', ['*.example.com'])).toBe(false);
    expect(mxMatches('example.com', ['*.example.com'])).toBe(false);
    expect(mxMatches('badexample.com', ['*.example.com'])).toBe(false);
  });
});
