/**
 * TLS on every listener, over real sockets: a client-initiated renegotiation (TLS 1.2, OpenSSL's
 * s_client "R" command) is refused and the connection ends, and a handshake that never completes
 * (a few bytes of a ClientHello) is closed once the handshake timeout runs out, on implicit TLS
 * (SMTP submissions, POP3S) and after STARTTLS / STLS alike.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness as startSmtp, type Harness as SmtpHarness } from '../smtp/harness.js';
import { startHarness as startPop3, type Harness as Pop3Harness } from '../pop3/harness.js';

const HANDSHAKE_MS = 800;

let smtp: SmtpHarness;
let pop3: Pop3Harness;

beforeAll(async () => {
  smtp = await startSmtp({}, { handshakeTimeoutMs: HANDSHAKE_MS });
  pop3 = await startPop3({}, { handshakeTimeoutMs: HANDSHAKE_MS });
});

afterAll(async () => {
  await smtp?.close();
  await pop3?.close();
});

type Kind = 'smtps' | 'submission+STARTTLS' | 'pop3s' | 'pop3+STLS';

function portOf(kind: Kind): number {
  if (kind === 'smtps') return smtp.server.ports.submissions!;
  if (kind === 'submission+STARTTLS') return smtp.server.ports.submission!;
  if (kind === 'pop3s') return pop3.tlsPort;
  return pop3.port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `openssl s_client -tls1_2`, asks for a renegotiation ("R") once the session is up, then
 * sends `probe`; returns everything s_client printed, split at the renegotiation.
 */
async function renegotiate(kind: Kind, probe: string): Promise<{ before: string; after: string; exited: boolean }> {
  const args = ['s_client', '-tls1_2', '-crlf', '-connect', `127.0.0.1:${portOf(kind)}`];
  if (kind === 'submission+STARTTLS') args.push('-starttls', 'smtp');
  if (kind === 'pop3+STLS') args.push('-starttls', 'pop3');
  const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
  const exited = new Promise<boolean>((resolve) => child.once('exit', () => resolve(true)));
  const wait = async (pattern: RegExp, ms: number) => {
    for (const end = Date.now() + ms; Date.now() < end && !pattern.test(out);) await sleep(50);
  };
  // s_client reads its standard input once it has printed the session summary.
  await wait(/Verify return code/, 10_000);
  await sleep(300);
  child.stdin.write('R\n');
  await wait(/RENEGOTIATING/, 5000);
  await sleep(500);
  child.stdin.write(`${probe}\n`);
  await sleep(1000);
  const done = await Promise.race([exited, sleep(2000).then(() => false)]);
  child.stdin.end();
  if (!done) {
    await Promise.race([exited, sleep(2000)]);
    child.kill();
  }
  const at = out.indexOf('RENEGOTIATING');
  expect(at, `s_client never renegotiated:\n${out}`).toBeGreaterThan(0);
  return { before: out.slice(0, at), after: out.slice(at), exited: done };
}

describe('client-initiated renegotiation is refused', () => {
  it.each([
    ['smtps', 'NOOP', /^250 /m],
    ['submission+STARTTLS', 'NOOP', /^250 /m],
    ['pop3s', 'CAPA', /^\+OK/m],
    ['pop3+STLS', 'CAPA', /^\+OK/m],
  ] as const)('%s', async (kind, probe, answered) => {
    const r = await renegotiate(kind, probe);
    // The command after the renegotiation attempt gets no answer: the session is over.
    expect(r.after, `the server answered after a renegotiation:\n${r.after}`).not.toMatch(answered);
    expect(r.after).toMatch(/no renegotiation|alert|errno|error/i);
    expect(r.exited).toBe(true);
  });
});

/** Opens a plain connection and, for STARTTLS kinds, asks for TLS first. */
async function openForHandshake(kind: Kind): Promise<net.Socket> {
  const s = net.connect(portOf(kind), '127.0.0.1');
  s.on('error', () => undefined);
  let buf = '';
  s.on('data', (d: Buffer) => (buf += d.toString('latin1')));
  const until = async (re: RegExp) => {
    for (const end = Date.now() + 5000; !re.test(buf);) {
      if (Date.now() > end) throw new Error(`no ${re} in ${JSON.stringify(buf)}`);
      await sleep(20);
    }
    buf = '';
  };
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  if (kind === 'submission+STARTTLS') {
    await until(/^220 /m);
    s.write('EHLO client.test\r\n');
    await until(/^250 /m);
    s.write('STARTTLS\r\n');
    await until(/^220 /m);
  } else if (kind === 'pop3+STLS') {
    await until(/^\+OK/m);
    s.write('STLS\r\n');
    await until(/^\+OK/m);
  }
  return s;
}

describe('a handshake that never completes is closed after the handshake timeout', () => {
  it.each(['smtps', 'submission+STARTTLS', 'pop3s', 'pop3+STLS'] as const)('%s', async (kind) => {
    const s = await openForHandshake(kind);
    const t0 = Date.now();
    // The first bytes of a TLS record carrying a ClientHello, and then nothing.
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xf0, 0x01]));
    const closedAt = await Promise.race([
      new Promise<number>((resolve) => s.once('close', () => resolve(Date.now() - t0))),
      sleep(HANDSHAKE_MS + 4000).then(() => -1),
    ]);
    s.destroy();
    expect(closedAt, `${kind} still open ${HANDSHAKE_MS + 4000} ms after a partial ClientHello`).toBeGreaterThanOrEqual(HANDSHAKE_MS - 50);
    expect(closedAt).toBeLessThan(HANDSHAKE_MS + 4000);
  });
});
