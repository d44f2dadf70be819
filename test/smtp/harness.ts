/**
 * Test harness: a real SMTP listener group on ephemeral 127.0.0.1 ports over the local storage
 * family in a temp folder, with a domain and users, the self-signed TLS of core/tls.ts, and a
 * tiny line-oriented SMTP client over a real socket with a reply-grammar check on every reply.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { buffer } from 'node:stream/consumers';
import * as tls from 'node:tls';
import { expect } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { startSmtpServer, type RunningSmtp, type SmtpServerOptions } from '../../containers/smtp/server.js';
import { tempDir } from '../support/tmp.js';

/** A started server and what tests need around it. */
export interface Harness {
  config: Config;
  storage: Storage;
  accounts: Accounts;
  server: RunningSmtp;
  tls: TlsProvider;
  metrics: Metrics;
  dataDir: string;
  close(): Promise<void>;
}

export const DOMAIN = 'example.test';
export const ALICE = `alice@${DOMAIN}`;
export const BOB = `bob@${DOMAIN}`;
export const PASSWORD = 'correct horse battery staple';

/** Starts storage + accounts + SMTP. `env` overrides settings (TOMLINSON_* variables). */
export async function startHarness(
  env: Record<string, string> = {},
  options: SmtpServerOptions & { wrapStorage?: (s: Storage) => Storage; log?: Logger } = {},
): Promise<Harness> {
  const dir = await tempDir('tomlinson-smtp-');
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir.path,
    TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '200',
    TOMLINSON_SMTP_AUTH_FAILURE_DELAY_MS: '20',
    // Not spam.enabled=auto: an rspamd the machine happens to run on 11333 must not change what
    // these tests store. test/spam turns it on against its own rspamd.
    TOMLINSON_SPAM: 'off',
    ...env,
  });
  const real = await openLocalStorage(config, silentLogger);
  const storage = options.wrapStorage ? options.wrapStorage(real) : real;
  // Cheap scrypt for tests: the cost parameters are not what these tests check.
  const accounts = new Accounts(real.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
  await accounts.addDomain(DOMAIN);
  await accounts.addUser(ALICE, PASSWORD);
  await accounts.addUser(BOB, PASSWORD);
  await accounts.addAlias(`postmaster@${DOMAIN}`, [ALICE]);
  await accounts.addAlias(`sales@${DOMAIN}`, [ALICE, BOB]);
  const tlsProvider = options.tls ?? (await createTlsProvider(config, silentLogger));
  const metrics = new Metrics({ defaults: false });
  const server = await startSmtpServer(
    { config, storage, log: options.log ?? silentLogger, metrics },
    { ports: { mx: 0, submission: 0, submissions: 0 }, tls: tlsProvider, ...options },
  );
  return {
    config,
    storage,
    accounts,
    server,
    tls: tlsProvider,
    metrics,
    dataDir: dir.path,
    async close() {
      await server.close(1000);
      tlsProvider.close();
      await real.close();
      await dir.remove();
    },
  };
}

/** RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF. */
const REPLY_LINE = /^([2-5][0-5][0-9])([- ])(.*)$/;
/** RFC 3463 §2 enhanced code at the start of the text (with ENHANCEDSTATUSCODES, RFC 2034 §4). */
const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3}) /;

/** A parsed reply. */
export interface SmtpReply {
  code: number;
  lines: string[];
  /** The enhanced status code of the last line, if any. */
  enhanced?: string;
  /** The raw text of the reply, all lines, with CRLF. */
  raw: string;
}

/** Checks one reply against the grammar: same code on every line, '-' on all but the last,
 * and an enhanced code whose class matches the basic code when present. */
export function checkReplyGrammar(r: SmtpReply): void {
  const rawLines = r.raw.split('\r\n').slice(0, -1);
  expect(rawLines.length).toBeGreaterThan(0);
  rawLines.forEach((l, i) => {
    const m = REPLY_LINE.exec(l);
    expect(m, `reply line ${JSON.stringify(l)}`).not.toBeNull();
    expect(Number(m![1])).toBe(r.code);
    expect(m![2]).toBe(i === rawLines.length - 1 ? ' ' : '-');
    expect(l.length + 2).toBeLessThanOrEqual(512); // §4.5.3.1.5 reply line
  });
  if (r.enhanced) expect(r.enhanced[0]).toBe(String(r.code)[0]);
}

/** A minimal SMTP client over a real socket, for protocol tests. */
export class TestClient {
  private buf = '';
  private waiters: (() => void)[] = [];
  private closedFlag = false;
  socket: Socket;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  private attach(socket: Socket): void {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    socket.on('close', () => {
      this.closedFlag = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Connects (plain or implicit TLS) and returns the client; the greeting is left to read.
   * `host` (default 127.0.0.1) picks the server address, and so the client's own, unless
   * `localAddress` (plain connections) names another, e.g. 127.0.0.10. */
  static async connect(port: number, options: { tls?: boolean; host?: string; localAddress?: string } = {}): Promise<TestClient> {
    const host = options.host ?? '127.0.0.1';
    const socket = options.tls
      ? tls.connect({ port, host, rejectUnauthorized: false, servername: 'mx.tomlinson.test' })
      : netConnect({ port, host, localAddress: options.localAddress });
    await new Promise<void>((resolve, reject) => {
      socket.once(options.tls ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    });
    return new TestClient(socket);
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Sends raw bytes. */
  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Reads one complete reply (checked against the grammar). */
  async reply(timeoutMs = 5000): Promise<SmtpReply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.parse();
      if (r) {
        checkReplyGrammar(r);
        return r;
      }
      if (this.closedFlag) throw new Error(`connection closed; buffered ${JSON.stringify(this.buf)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; buffered ${JSON.stringify(this.buf)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private parse(): SmtpReply | undefined {
    let pos = 0;
    const lines: string[] = [];
    for (;;) {
      const end = this.buf.indexOf('\r\n', pos);
      if (end < 0) return undefined;
      const line = this.buf.slice(pos, end);
      pos = end + 2;
      lines.push(line);
      if (line[3] !== '-') break;
    }
    const raw = this.buf.slice(0, pos);
    this.buf = this.buf.slice(pos);
    const last = lines[lines.length - 1];
    const text = lines.map((l) => l.slice(4));
    const em = ENHANCED.exec(last.slice(4));
    return { code: Number(last.slice(0, 3)), lines: text, enhanced: em ? `${em[1]}.${em[2]}.${em[3]}` : undefined, raw };
  }

  /** Sends a command line and reads its reply. */
  async cmd(line: string, timeoutMs?: number): Promise<SmtpReply> {
    this.send(line + '\r\n');
    return this.reply(timeoutMs);
  }

  /** STARTTLS upgrade of this connection (after a 220 reply). */
  async startTls(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false, servername: 'mx.tomlinson.test' });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
  }

  /** Waits for the server to close the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closedFlag) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('connection still open');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The `inbound` jobs waiting in the queue (received and then made visible again at once). */
export async function drainInbound(storage: Storage): Promise<import('../../core/mail/jobs.js').InboundJob[]> {
  const out: import('../../core/mail/jobs.js').InboundJob[] = [];
  for (;;) {
    const batch = await storage.queues.receive('inbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    if (batch.length === 0) break;
    for (const m of batch) {
      out.push(JSON.parse(m.body));
      await storage.queues.delete('inbound', m.receipt);
    }
  }
  return out;
}

/** The stored form of an accepted message: the raw message a small job carries, or its blob. */
export async function storedMessage(storage: Storage, job: import('../../core/mail/jobs.js').InboundJob): Promise<Buffer> {
  if (job.raw !== undefined) return Buffer.from(job.raw, 'base64');
  return buffer((await storage.mail.get(job.blobKey)).body);
}
