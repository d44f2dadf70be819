/**
 * Test support for the IMAP suites: the IMAP listener on ephemeral ports over real local storage
 * in a temporary folder, users, delivery through the same summary path as the inbound worker
 * (so messages carry their stored IMAP structure), and Python's imaplib driven step by step.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import type { RunningListener } from '../../containers/listener.js';
import { startImap, type ImapServerOptions } from '../../containers/imap/server.js';
import { portOf } from '../pop3/harness.js';

const run = promisify(execFile);
const STEPS = fileURLToPath(new URL('./support/imaplib_steps.py', import.meta.url));

export interface ImapHarness {
  dir: string;
  config: Config;
  storage: Storage;
  accounts: Accounts;
  store: MailboxStore;
  folders: FolderStore;
  metrics: Metrics;
  listener: RunningListener;
  port: number;
  tlsPort: number;
  /** Stores a raw message and delivers it to `user`'s INBOX as the inbound worker does. */
  deliver(user: string, raw: Buffer | string): Promise<{ uid: number; blobKey: string }>;
  close(): Promise<void>;
}

export async function startImapHarness(env: Record<string, string> = {}, options: ImapServerOptions = {}, existing?: string): Promise<ImapHarness> {
  const dir = existing ?? (await mkdtemp(join(tmpdir(), 'tomlinson-imap-')));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS: '20',
    TOMLINSON_IMAP_AUTH_FAILURE_DELAY_MS: '20',
    TOMLINSON_LOG_LEVEL: 'silent',
    ...env,
  });
  const storage = await openStorage(config, silentLogger);
  const metrics = new Metrics({ defaults: false });
  const listener = await startImap({ config, storage, log: silentLogger, metrics }, { tlsPort: 0, ...options });
  const store = new MailboxStore(storage.tables, storage.mail);
  return {
    dir,
    config,
    storage,
    accounts: new Accounts(storage.tables),
    store,
    folders: new FolderStore(storage.tables, storage.mail),
    metrics,
    listener,
    port: portOf(listener.addresses, 'imap'),
    tlsPort: portOf(listener.addresses, 'imaps'),
    async deliver(user, raw) {
      const body = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
      const blobKey = `in/test/${randomUUID()}.eml`;
      const info = await storage.mail.put(blobKey, body);
      const summary = await summarizeForMailbox(Readable.from([body]));
      const r = await store.deliver(user, { jobId: randomUUID(), blobKey, size: info.size, receivedAt: new Date().toISOString(), summary });
      return { uid: r.uid, blobKey };
    },
    async close() {
      await listener.close(500);
      await storage.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Makes a domain and users (password = `password-<local part>`). */
export async function addImapUsers(h: ImapHarness, ...addresses: string[]): Promise<void> {
  const domains = new Set(addresses.map((a) => a.slice(a.indexOf('@') + 1)));
  for (const d of domains) if (!(await h.accounts.getDomain(d))) await h.accounts.addDomain(d);
  await Promise.all(addresses.map((a) => h.accounts.addUser(a, imapPassword(a))));
}

export function imapPassword(address: string): string {
  return `password-${address.slice(0, address.indexOf('@'))}`;
}

export interface StepsResult {
  welcome: string;
  capabilities: string[];
  /** Per step: [typ, data] (or the untagged list for an "untagged" step). */
  results: unknown[];
  error?: string;
}

/** Runs imaplib steps (see support/imaplib_steps.py). */
export async function imaplib(args: {
  port: number;
  mode?: 'plain' | 'starttls' | 'ssl';
  user?: string;
  password?: string;
  steps: unknown[][];
}): Promise<StepsResult> {
  const { stdout } = await run('python3', [STEPS, JSON.stringify({ host: '127.0.0.1', ...args })], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(stdout) as StepsResult;
}

/** A plain test message with CRLF line ends. */
export function imapMessage(n: number, extra = ''): string {
  return `From: Sender ${n} <sender${n}@example.net>\r\nTo: bob@example.com\r\nSubject: message ${n}\r\nDate: Mon, 7 Dec 2026 10:00:0${n % 10} +0000\r\nMessage-ID: <m${n}@example.net>\r\n\r\nHello ${n}\r\n${extra}`;
}
