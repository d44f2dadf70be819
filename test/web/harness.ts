/**
 * Test support for the web listener: the real HTTPS listener on an ephemeral port over local
 * storage in a temporary folder, users, delivery through the same path as the inbound worker,
 * and an undici client that trusts the self-signed certificate.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Agent, fetch, type RequestInit, type Response } from 'undici';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import type { RunningListener } from '../../containers/listener.js';
import { startWeb, type WebServerOptions } from '../../containers/web/server.js';

export interface WebHarness {
  dir: string;
  config: Config;
  storage: Storage;
  accounts: Accounts;
  listener: RunningListener;
  port: number;
  base: string;
  /** A dispatcher that accepts the listener's self-signed certificate. */
  agent: Agent;
  /** fetch against the listener, as `user` (password `password-<local part>`) unless headers say otherwise. */
  fetch(path: string, init?: RequestInit & { user?: string; password?: string }): Promise<Response>;
  /** POSTs a JMAP request as `user` and returns the parsed body and status. */
  api(body: unknown, user?: string): Promise<{ status: number; json: Record<string, unknown> }>;
  deliver(user: string, raw: string): Promise<void>;
  close(): Promise<void>;
}

export function webPassword(address: string): string {
  return `password-${address.slice(0, address.indexOf('@'))}`;
}

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

export async function startWebHarness(env: Record<string, string> = {}, options: WebServerOptions = {}, users: string[] = []): Promise<WebHarness> {
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-web-'));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_WEB_AUTH_FAILURE_DELAY_MS: '20',
    TOMLINSON_LOG_LEVEL: 'silent',
    ...env,
  });
  const storage = await openStorage(config, silentLogger);
  const accounts = new Accounts(storage.tables);
  for (const d of new Set(users.map((a) => a.slice(a.indexOf('@') + 1)))) await accounts.addDomain(d);
  for (const u of users) await accounts.addUser(u, webPassword(u));
  const listener = await startWeb({ config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }) }, options);
  const port = Number(listener.addresses[0].split(':').pop());
  const base = `https://127.0.0.1:${port}`;
  const agent = new Agent({ connect: { rejectUnauthorized: false } });
  const store = new MailboxStore(storage.tables, storage.mail);
  const h: WebHarness = {
    dir,
    config,
    storage,
    accounts,
    listener,
    port,
    base,
    agent,
    fetch(path, init = {}) {
      const { user, password, ...rest } = init;
      const headers: Record<string, string> = { ...(rest.headers as Record<string, string> | undefined) };
      if (user && !headers.authorization) headers.authorization = basic(user, password ?? webPassword(user));
      return fetch(`${base}${path}`, { ...rest, headers, dispatcher: agent });
    },
    async api(body, user = users[0]) {
      const res = await h.fetch('/jmap/api/', {
        method: 'POST',
        user,
        headers: { 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
      return { status: res.status, json: (await res.json()) as Record<string, unknown> };
    },
    async deliver(user, raw) {
      const body = Buffer.from(raw);
      const blobKey = `in/test/${randomUUID()}.eml`;
      const info = await storage.mail.put(blobKey, body);
      const summary = await summarizeForMailbox(Readable.from([body]));
      await store.deliver(user, { jobId: randomUUID(), blobKey, size: info.size, receivedAt: new Date().toISOString(), summary });
    },
    async close() {
      await listener.close(500);
      await agent.close();
      await storage.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return h;
}
