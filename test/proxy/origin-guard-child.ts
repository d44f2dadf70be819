/**
 * Run by origin-guard.test.ts inside a network namespace of its own (`unshare --net`), which has
 * only a loopback interface, so nothing it does can leave the machine. Private, shared, link-local,
 * unique-local and one public address are put on that loopback after the proxy has started; one
 * listener on every address counts each TCP connection by the address it was made to. The proxy
 * resolves names through the test's own DNS server, which answers them with those addresses.
 * Prints one JSON object: every exchange's status, body and time, and the connections counted.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { startDnsServer } from '../support/dns-server.js';
import { Harness } from './harness.js';

/** An exchange with the proxy over a raw socket: ends at close, or at the end of a 200 tunnel head. */
function exchange(port: number, data: string): Promise<{ status: number; body: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(data));
    let out = '';
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      const m = /^HTTP\/1\.1 (\d{3})/.exec(out);
      resolve({ status: m ? Number(m[1]) : 0, body: out.slice(out.indexOf('\r\n\r\n') + 4), ms: Math.round(performance.now() - t0) });
    };
    const timer = setTimeout(done, 8000);
    s.on('data', (d) => {
      out += d.toString('latin1');
      if (/^HTTP\/1\.1 200 Connection Established\r\n[^]*\r\n\r\n/.test(out)) done();
    });
    s.on('error', () => undefined);
    s.on('close', done);
  });
}

const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: 'inherit' });

async function main(): Promise<void> {
  ip('link', 'set', 'lo', 'up');
  const dns = await startDnsServer({
    'private.test': { A: ['10.0.0.1'] },
    'private6.test': { AAAA: ['fd00::1'] },
    'mapped.test': { AAAA: ['::ffff:a00:1'] },
    'meta.test': { A: ['169.254.169.254'] },
    'several.test': { A: ['172.16.0.1', '192.168.1.1'] },
    'public.test': { A: ['93.184.216.34'] },
    'allowed.test': { A: ['10.9.0.1'] },
  });
  const h = await Harness.start({
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'false',
    TOMLINSON_PROXY_DNS_SERVERS: dns.address,
    TOMLINSON_PROXY_CONNECT_PORTS: '80,443',
    TOMLINSON_PROXY_ALLOWED_ORIGINS: process.env.ALLOWED ?? '10.9.0.0/16',
    TOMLINSON_PROXY_ORIGIN_TIMEOUT_MS: '5000',
  });
  // Added after the proxy started, so none of them is one of "its own addresses" to the guard.
  for (const a of ['10.0.0.1/32', '10.9.0.1/32', '172.16.0.1/32', '192.168.1.1/32', '100.64.0.1/32', '169.254.169.254/32', '93.184.216.34/32'])
    ip('addr', 'add', a, 'dev', 'lo');
  ip('-6', 'addr', 'add', 'fd00::1/128', 'dev', 'lo');

  const connections: Record<string, number> = {};
  const servers = [80, 443].map((port) => {
    const server = createServer((_req, res) => res.end('origin says hello'));
    server.on('connection', (s) => {
      const a = (s.localAddress ?? '?').replace(/^::ffff:/, '');
      connections[a] = (connections[a] ?? 0) + 1;
    });
    return new Promise<typeof server>((resolve) => server.listen({ port, host: '::' }, () => resolve(server)));
  });
  const listening = await Promise.all(servers);

  const get = (url: string): string => `GET ${url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
  const tunnel = (authority: string): string => `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`;
  const refused = [
    ...[
      'http://10.0.0.1/',
      'http://10.0.0.1./',
      'http://0x0a.0.0.1/',
      'http://0xa000001/',
      'http://167772161/',
      'http://012.0.0.1/',
      'http://10.1/',
      'http://[::ffff:10.0.0.1]/',
      'http://[::ffff:a00:1]/',
      'http://[0:0:0:0:0:ffff:0a00:0001]/',
      'http://172.16.0.1/',
      'http://192.168.1.1:80/',
      'http://100.64.0.1/',
      'http://169.254.169.254/latest/meta-data/',
      'http://[fd00::1]/',
      'http://0x7f.1/',
      'http://2130706433/',
      'http://017700000001/',
      'http://127.1/',
      'http://user@10.0.0.1/',
      'http://private.test/',
      'http://PRIVATE.test./',
      'http://private6.test/',
      'http://mapped.test/',
      'http://meta.test/',
      'http://several.test/',
    ].map((u) => ({ name: `GET ${u}`, data: get(u) })),
    // Requests with a body take undici rather than the plain GET client: the same guard.
    ...['http://10.0.0.1/form', 'http://private.test/form', 'http://[::ffff:a00:1]/form'].map((u) => ({
      name: `POST ${u}`,
      data: `POST ${u} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`,
    })),
    ...[
      '10.0.0.1:80',
      '10.0.0.1.:80',
      '0x0a.0.0.1:80',
      '167772161:443',
      '[::ffff:a00:1]:80',
      '[fd00::1]:443',
      '192.168.1.1:443',
      'private.test:80',
      'mapped.test:443',
      '127.1:80',
    ].map((a) => ({
      name: `CONNECT ${a}`,
      data: tunnel(a),
    })),
  ];
  const allowed = [
    { name: 'GET http://93.184.216.34/', data: get('http://93.184.216.34/') },
    { name: 'GET http://public.test/', data: get('http://public.test/') },
    { name: 'GET http://10.9.0.1/', data: get('http://10.9.0.1/') },
    { name: 'GET http://allowed.test/', data: get('http://allowed.test/') },
    { name: 'POST http://public.test/form', data: 'POST http://public.test/form HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi' },
    { name: 'CONNECT 93.184.216.34:443', data: tunnel('93.184.216.34:443') },
  ];
  // Origin-form with a Host field: the proxy does not take its target from Host.
  const hostOnly = { name: 'GET / Host: 10.0.0.1', data: 'GET / HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n' };

  const results: Record<string, { status: number; body: string; ms: number }> = {};
  for (const c of [...refused, hostOnly]) results[c.name] = await exchange(h.proxy.port, c.data);
  const refusedConnections = { ...connections };
  for (const c of allowed) results[c.name] = await exchange(h.proxy.port, c.data);

  process.stdout.write(
    JSON.stringify({
      refused: refused.map((c) => c.name),
      allowed: allowed.map((c) => c.name),
      hostOnly: hostOnly.name,
      results,
      refusedConnections,
      connections,
    }),
  );
  for (const s of listening) s.close();
  await h.stop();
  await dns.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
