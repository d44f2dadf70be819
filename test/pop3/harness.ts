/**
 * Test support for the POP3 suites: a POP3 listener on ephemeral ports over real local storage in a
 * temporary folder, users and seeded mailboxes, and a small raw client that checks every reply
 * line against the reply grammar.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { expect } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { startPop3, type Pop3ServerOptions } from '../../containers/pop3/server.js';
import { REPLY_GRAMMAR } from '../../containers/pop3/protocol/commands.js';
import type { RunningListener } from '../../containers/listener.js';

/** A running POP3 listener with its storage. */
export interface Harness {
  dir: string;
  config: Config;
  storage: Storage;
  accounts: Accounts;
  store: MailboxStore;
  metrics: Metrics;
  listener: RunningListener;
  host: string;
  port: number;
  tlsPort: number;
  /** Stores a raw message and delivers it to `user`; returns its uid and blob key. */
  deliver(user: string, raw: Buffer | string): Promise<{ uid: number; blobKey: string }>;
  close(): Promise<void>;
}

/** Parses `name host:port` entries of RunningListener.addresses. */
export function portOf(addresses: string[], name: string): number {
  const a = addresses.find((x) => x.startsWith(`${name} `));
  if (!a) throw new Error(`no ${name} address in ${addresses.join(', ')}`);
  return Number(a.slice(a.lastIndexOf(':') + 1));
}

/** Starts storage and the POP3 listeners in a fresh temporary data folder. */
export async function startHarness(env: Record<string, string> = {}, options: Pop3ServerOptions = {}, dir?: string): Promise<Harness> {
  dir ??= await mkdtemp(join(tmpdir(), 'tomlinson-pop3-'));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_POP3_PORT: '0',
    TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS: '20',
    TOMLINSON_LOG_LEVEL: 'silent',
    ...env,
  });
  return startWith(config, dir, options);
}

async function startWith(config: Config, dir: string, options: Pop3ServerOptions): Promise<Harness> {
  const storage = await openStorage(config, silentLogger);
  const metrics = new Metrics({ defaults: false });
  const listener = await startPop3({ config, storage, log: silentLogger, metrics }, { tlsPort: 0, ...options });
  const accounts = new Accounts(storage.tables);
  const store = new MailboxStore(storage.tables, storage.mail);
  const port = portOf(listener.addresses, 'pop3');
  const tlsPort = portOf(listener.addresses, 'pop3s');
  return {
    dir,
    config,
    storage,
    accounts,
    store,
    metrics,
    listener,
    host: '127.0.0.1',
    port,
    tlsPort,
    async deliver(user, raw) {
      const body = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
      const blobKey = `test/${randomUUID()}.eml`;
      const info = await storage.mail.put(blobKey, body);
      const r = await store.deliver(user, { jobId: randomUUID(), blobKey, size: info.size, receivedAt: new Date().toISOString(), summary: {} });
      return { uid: r.uid, blobKey };
    },
    async close() {
      await listener.close(500);
      await storage.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Makes a domain and users (password = `pw-<local part>`). */
export async function addUsers(h: Harness, ...addresses: string[]): Promise<void> {
  const domains = new Set(addresses.map((a) => a.slice(a.indexOf('@') + 1)));
  for (const d of domains) if (!(await h.accounts.getDomain(d))) await h.accounts.addDomain(d);
  await Promise.all(addresses.map((a) => h.accounts.addUser(a, passwordOf(a))));
}

/** The password addUsers gives an address. */
export function passwordOf(address: string): string {
  return `password-${address.slice(0, address.indexOf('@'))}`;
}

/** A plain test message of about `size` octets with CRLF line ends. */
export function makeMessage(n: number, size = 300): string {
  const head = `From: sender@example.net\r\nTo: bob@example.com\r\nSubject: message ${n}\r\nMessage-ID: <m${n}@example.net>\r\n\r\n`;
  let body = '';
  let i = 0;
  while (head.length + body.length < size) body += `line ${i++} of message ${n} ${'x'.repeat(40)}\r\n`;
  return head + body;
}

/**
 * A raw POP3 client over a real socket; every single line and first line it reads is checked
 * against the POP3 reply grammar.
 */
export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;

  private constructor(public socket: net.Socket | tls.TLSSocket) {
    this.bind(socket);
  }

  private bind(s: net.Socket | tls.TLSSocket): void {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    s.on('close', () => {
      this.closed = true;
      this.wake();
    });
    s.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Connects (implicit TLS when `secure`) and reads the greeting. */
  static async connect(port: number, secure = false): Promise<{ client: RawClient; greeting: string }> {
    const socket = secure ? tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }) : net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      socket.once(secure ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    });
    const client = new RawClient(socket);
    const greeting = await client.line();
    return { client, greeting };
  }

  /** The next line (without CRLF); rejects on timeout or when the connection closed first. */
  async line(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.buf.indexOf('\r\n');
      if (i >= 0) {
        const l = this.buf.subarray(0, i).toString('utf8');
        this.buf = this.buf.subarray(i + 2);
        return l;
      }
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for a line');
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** A status line, checked against the grammar. */
  async reply(): Promise<string> {
    const l = await this.line();
    expect(l, 'reply grammar').toMatch(REPLY_GRAMMAR);
    return l;
  }

  /** The body of a multi-line response (after its +OK line), unstuffed, as raw bytes. */
  async multilineRaw(): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (;;) {
      const i = this.buf.indexOf('\r\n');
      if (i < 0) {
        if (this.closed) throw new Error('connection closed in a multi-line response');
        await new Promise<void>((r) => this.waiters.push(r));
        continue;
      }
      const l = this.buf.subarray(0, i);
      this.buf = this.buf.subarray(i + 2);
      if (l.length === 1 && l[0] === 0x2e) return Buffer.concat(parts);
      parts.push(l[0] === 0x2e ? l.subarray(1) : l, Buffer.from('\r\n'));
    }
  }

  /** The lines of a multi-line response body. */
  async multiline(): Promise<string[]> {
    const raw = (await this.multilineRaw()).toString('utf8');
    return raw === '' ? [] : raw.slice(0, -2).split('\r\n');
  }

  /** Sends raw text. */
  send(text: string): void {
    this.socket.write(text);
  }

  /** Sends one command and returns its status line. */
  async cmd(line: string): Promise<string> {
    this.send(`${line}\r\n`);
    return this.reply();
  }

  /** USER + PASS; returns the PASS reply. */
  async login(user: string, password: string): Promise<string> {
    expect(await this.cmd(`USER ${user}`)).toMatch(/^\+OK/);
    return this.cmd(`PASS ${password}`);
  }

  /** Upgrades with STLS; returns the STLS reply. */
  async stls(): Promise<string> {
    const r = await this.cmd('STLS');
    if (!r.startsWith('+OK')) return r;
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = tls.connect({ socket: plain as net.Socket, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.bind(secure);
    return r;
  }

  /** Resolves when the server has closed the connection. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('server did not close');
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Drops the connection without QUIT. */
  destroy(): void {
    this.socket.destroy();
  }
}
