/**
 * Test support for the webmail in a real browser (issue 23): the whole app (`serve smtp,imap,web,
 * proxy,workers` on ephemeral ports over local storage in a temporary folder), users, mail
 * delivered over a real SMTP socket, a fast bulk seed of a folder for the bench, the webmail built
 * by scripts/build-webmail.mjs into a temporary folder, and Debian's Chromium driven by
 * playwright-core (nothing downloaded; the listener's self-signed certificate accepted).
 *
 * Screenshots go to `test-artifacts/webmail/` at the repository root (git-ignored: they are
 * artefacts of a run, looked at after it, not sources; a CI job keeps the folder as its artefact).
 * TOMLINSON_WEBMAIL_ARTIFACTS moves them elsewhere.
 *
 * The browser contract (accessible names, routes) is /work/wt/WEBMAIL-CONTRACT.md; the helpers here
 * select by those names only, so a test breaks when the UI breaks its contract, not its markup.
 */
import { createHash, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { Agent, fetch, type RequestInit, type Response } from 'undici';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p)) ?? '/usr/bin/chromium';
export const ARTIFACTS = process.env.TOMLINSON_WEBMAIL_ARTIFACTS ?? join(ROOT, 'test-artifacts', 'webmail');
export const AXE = join(ROOT, 'node_modules', 'axe-core', 'axe.min.js');

export const DESKTOP = { width: 1440, height: 900 };
export const PHONE = { width: 390, height: 844 };

/** The JMAP capabilities every request here uses. */
const USING = ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail', 'urn:ietf:params:jmap:submission', 'urn:ietf:params:jmap:vacationresponse'];

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** A mail to deliver over SMTP. */
export interface Delivery {
  to: string;
  subject: string;
  /** @default 'Sender <sender@remote.test>' */
  from?: string;
  /** text/plain body. @default 'hello' */
  text?: string;
  /** When given, the body is text/html instead. */
  html?: string;
  /** Extra header lines (without CRLF); a Content-Type among them replaces the default one. */
  headers?: string[];
}

export interface WebmailApp {
  dir: string;
  config: Config;
  app: App;
  ports: { smtp: number; imap: number; web: number; proxy: number };
  /** https://127.0.0.1:<web port> */
  base: string;
  accounts: Accounts;
  /** An undici dispatcher that accepts the listener's self-signed certificate. */
  agent: Agent;
  /** Where the built webmail is (index.html, assets/). */
  webmailDir: string;
  /** Adds a user (its domain too when new). */
  addUser(address: string, password: string): Promise<void>;
  /** Delivers one message over a real SMTP socket on the MX port; resolves at the 250 after DATA. */
  deliver(d: Delivery): Promise<void>;
  /**
   * Appends `n` messages to `user`'s INBOX through the folder store (FolderStore.append, the path
   * the inbound worker's delivery ends in, with the summary it stores), 16 at a time; message i is
   * `make(i)`, received i seconds after `start`. For the bench's big mailbox.
   */
  seed(user: string, n: number, make: (i: number) => Buffer, start?: Date): Promise<void>;
  /** fetch against the web listener. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** One JMAP request as `user` with Basic auth (a second client beside the browser); the method responses. */
  jmap(user: string, password: string, calls: unknown[][]): Promise<[string, Record<string, unknown>, string][]>;
  /** The user's JMAP accountId. */
  accountId(user: string, password: string): Promise<string>;
  /** Polls INBOX (or `mailbox`, an id) over JMAP until an Email whose subject contains `subject` shows; its id. */
  waitForEmail(user: string, password: string, subject: string, options?: { mailbox?: string; timeoutMs?: number }): Promise<string>;
  close(): Promise<void>;
}

/** Options of startWebmailApp. */
export interface WebmailAppOptions {
  /** Extra TOMLINSON_* settings. */
  env?: Record<string, string>;
}

let built: Promise<string> | undefined;

/**
 * Builds the webmail once per process into a temporary folder (not dist/webmail, which `npm start`
 * owns) with scripts/build-webmail.mjs, the build `npm start` uses.
 */
export function buildWebmailOnce(): Promise<string> {
  built ??= (async () => {
    // The build script is plain JavaScript without type declarations: imported by URL and typed here.
    const spec = pathToFileURL(join(ROOT, 'scripts', 'build-webmail.mjs')).href;
    const mod = (await import(spec)) as { buildWebmail(o: { outdir?: string; minify?: boolean }): Promise<{ outdir: string } | undefined> };
    const outdir = join(await mkdtemp(join(tmpdir(), 'tomlinson-webmail-build-')), 'webmail');
    const result = await mod.buildWebmail({ outdir });
    if (!result) throw new Error('the webmail build needs esbuild (a dev dependency): run npm ci');
    return result.outdir;
  })();
  return built;
}

/** Starts the whole app over a fresh data folder with the webmail built for it. */
export async function startWebmailApp(options: WebmailAppOptions = {}): Promise<WebmailApp> {
  const webmailDir = await buildWebmailOnce();
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-webmail-'));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_SMTP_PORT: '0',
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_IMAPS_PORT: '0',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_PROXY_PORT: '0',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_LOG_LEVEL: 'silent',
    // The image proxy's tests serve their images from 127.0.0.1.
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
    TOMLINSON_WEB_AUTH_FAILURE_DELAY_MS: '20',
    // The webmail built for this process (web.webmailDir).
    TOMLINSON_WEB_WEBMAIL_DIR: webmailDir,
    ...options.env,
  });
  const app = await startApp(config, ['smtp', 'imap', 'web', 'proxy', 'workers'], silentLogger, { metrics: new Metrics({ defaults: false }) });
  const portOf = (name: string) => {
    const a = app.listeners.flatMap((l) => l.addresses).find((x) => x.startsWith(`${name} `));
    if (!a) throw new Error(`no ${name} listener among ${app.listeners.flatMap((l) => l.addresses).join(', ')}`);
    return Number(a.split(':').pop());
  };
  const ports = { smtp: portOf('mx'), imap: portOf('imap'), web: portOf('web'), proxy: portOf('proxy') };
  const base = `https://127.0.0.1:${ports.web}`;
  const accounts = new Accounts(app.storage.tables);
  const agent = new Agent({ connect: { rejectUnauthorized: false } });
  const store = new MailboxStore(app.storage.tables, app.storage.mail);
  const domains = new Set<string>();

  const h: WebmailApp = {
    dir,
    config,
    app,
    ports,
    base,
    accounts,
    agent,
    webmailDir,
    async addUser(address, password) {
      const domain = address.slice(address.indexOf('@') + 1);
      if (!domains.has(domain)) {
        domains.add(domain);
        if (!(await accounts.getDomain(domain))) await accounts.addDomain(domain);
      }
      await accounts.addUser(address, password);
    },
    deliver: (d) => smtpDeliver(ports.smtp, d),
    async seed(user, n, make, start = new Date(Date.now() - n * 1000)) {
      const folders = store.folders;
      let next = 0;
      // Appends to one folder side by side share their commits (bench/imap.ts seeds the same way);
      // the raw files skip their fsyncs, the mailbox items commit as always.
      await Promise.all(
        Array.from({ length: Math.min(16, n) }, async () => {
          while (next < n) {
            const i = next++;
            const raw = make(i);
            const blobKey = `seed/${randomUUID()}.eml`;
            await app.storage.mail.put(blobKey, raw, { durable: false });
            const summary = await summarizeForMailbox(Readable.from([raw]));
            const receivedAt = new Date(start.getTime() + i * 1000).toISOString();
            await folders.append(user, INBOX, { blobKey, size: raw.length, receivedAt, summary });
          }
        }),
      );
    },
    fetch: (path, init = {}) => fetch(`${base}${path}`, { ...init, dispatcher: agent }),
    async jmap(user, password, calls) {
      const res = await h.fetch('/jmap/api/', {
        method: 'POST',
        headers: { authorization: basic(user, password), 'content-type': 'application/json' },
        body: JSON.stringify({ using: USING, methodCalls: calls }),
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`JMAP ${res.status}: ${text}`);
      return (JSON.parse(text) as { methodResponses: [string, Record<string, unknown>, string][] }).methodResponses;
    },
    async accountId(user, password) {
      const res = await h.fetch('/jmap/session', { headers: { authorization: basic(user, password) } });
      const s = (await res.json()) as { primaryAccounts: Record<string, string> };
      return s.primaryAccounts['urn:ietf:params:jmap:mail']!;
    },
    async waitForEmail(user, password, subject, o = {}) {
      const accountId = await h.accountId(user, password);
      const deadline = Date.now() + (o.timeoutMs ?? 10_000);
      for (;;) {
        const [[, q]] = await h.jmap(user, password, [['Email/query', { accountId, filter: { inMailbox: o.mailbox ?? INBOX, subject } }, 'q']]);
        const ids = q.ids as string[];
        if (ids.length) return ids[0]!;
        if (Date.now() > deadline) throw new Error(`no Email "${subject}" for ${user} within ${o.timeoutMs ?? 10_000} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async close() {
      await app.close(1000);
      await agent.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return h;
}

/** The raw message of a Delivery, CRLF line ends. */
export function rawMessage(d: Delivery): string {
  const from = d.from ?? 'Sender <sender@remote.test>';
  const head = [
    `From: ${from}`,
    `To: ${d.to}`,
    `Subject: ${d.subject}`,
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${randomUUID()}@remote.test>`,
    'MIME-Version: 1.0',
    ...((d.headers ?? []).some((l) => /^content-type:/i.test(l)) ? [] : [`Content-Type: text/${d.html !== undefined ? 'html' : 'plain'}; charset=utf-8`]),
    ...(d.headers ?? []),
  ];
  const body = (d.html ?? d.text ?? 'hello').replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..');
  return `${head.join('\r\n')}\r\n\r\n${body}\r\n`;
}

/** One SMTP transaction on a real socket (RFC 5321 §3.3), resolving at the 250 after DATA. */
export function smtpDeliver(port: number, d: Delivery): Promise<void> {
  const envelopeFrom = /<([^>]+)>/.exec(d.from ?? '')?.[1] ?? d.from ?? 'sender@remote.test';
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const steps = ['EHLO client.test\r\n', `MAIL FROM:<${envelopeFrom}>\r\n`, `RCPT TO:<${d.to}>\r\n`, 'DATA\r\n', `${rawMessage(d)}.\r\n`];
    let buf = '';
    s.setTimeout(10_000, () => {
      s.destroy();
      reject(new Error('SMTP timed out'));
    });
    s.on('error', reject);
    s.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (line[3] === '-') continue;
        if (!/^[23]/.test(line)) {
          s.destroy();
          return reject(new Error(`SMTP: ${line}`));
        }
        const next = steps.shift();
        if (next) s.write(next);
        else {
          s.end('QUIT\r\n');
          return resolve();
        }
      }
    });
  });
}

/** Debian's Chromium, headless, with the flags the common brief names; never a downloaded browser. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--disable-dev-shm-usage',
    ],
  });
}

/** A fresh context (its own cookies and cache) and page; the listener's self-signed certificate accepted. */
export async function newPage(
  browser: Browser,
  options: { viewport?: { width: number; height: number }; deviceScaleFactor?: number; isMobile?: boolean; hasTouch?: boolean } = {},
): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: options.viewport ?? DESKTOP,
    deviceScaleFactor: options.deviceScaleFactor ?? 1,
    isMobile: options.isMobile ?? false,
    hasTouch: options.hasTouch ?? false,
    locale: 'en-GB',
    timezoneId: 'UTC',
  });
  // Bounded waits: a missing element fails a test in seconds, not at the test's timeout.
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(20_000);
  const page = await context.newPage();
  return { context, page };
}

/** The message list (contract: role=listbox "Messages"). */
export const messageList = (page: Page) => page.getByRole('listbox', { name: 'Messages' });
/** One row of the message list whose text contains `text`. */
export const row = (page: Page, text: string | RegExp) => messageList(page).getByRole('option').filter({ hasText: text });
/** The folder list (contract: nav "Folders"). */
export const folderNav = (page: Page) => page.locator('nav[aria-label="Folders"]');
/** A folder link by the folder's name ("<Name>" or "<Name>, <n> unread"). */
export const folderLink = (page: Page, name: string) =>
  folderNav(page).getByRole('link', { name: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(, \\d+ unread)?$`) });
/** The reader (contract: article "Message" with an h2 subject). */
export const reader = (page: Page) => page.locator('article[aria-label="Message"]');

/** Opens the webmail and signs in through the login form; resolves when the message list shows. */
export async function login(page: Page, base: string, user: string, password: string): Promise<void> {
  await page.goto(`${base}/webmail/`);
  await page.getByLabel('Email address').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await messageList(page).waitFor({ state: 'visible', timeout: 15_000 });
}

/** The session cookie's value in a context, if any (contract: `__Host-tomlinson`). */
export async function sessionCookie(context: BrowserContext, base: string): Promise<string | undefined> {
  return (await context.cookies(base)).find((c) => c.name === '__Host-tomlinson')?.value;
}

/** Saves a full-page screenshot as test-artifacts/webmail/<name>.png; the path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** What axe-core found on the page: violations of `serious` or `critical` impact. */
export interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: unknown[]; html: string; failureSummary?: string }[];
}

/**
 * Runs axe-core in the page and returns its serious and critical violations. axe's source is
 * evaluated through the DevTools protocol rather than added as a script tag: the webmail's CSP
 * (script-src 'self') rightly refuses inline scripts, and bypassing it would test another page.
 * The message body's frame is left out (`iframes: false`): it is sandboxed without scripts, so axe
 * cannot run inside it (it would wait for an answer that never comes), and its content is the
 * sender's; the frame element itself (its title) is checked in the parent.
 */
export async function axeSerious(page: Page): Promise<AxeViolation[]> {
  const { readFile } = await import('node:fs/promises');
  const source = await readFile(AXE, 'utf8');
  await page.evaluate(source);
  const violations = await page.evaluate(async () => {
    const g = globalThis as unknown as { document: unknown; axe: { run(ctx: unknown, o: unknown): Promise<{ violations: AxeViolation[] }> } };
    const r = await g.axe.run(g.document, { iframes: false, resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({ target: n.target, html: n.html, failureSummary: n.failureSummary })),
    }));
  });
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/** A readable list of violations for a failing assertion. */
export function formatViolations(vs: AxeViolation[]): string {
  return vs
    .map(
      (v) =>
        `${v.impact} ${v.id}: ${v.help}\n${v.nodes.map((n) => `    ${JSON.stringify(n.target)} ${n.html.slice(0, 160)}\n      ${n.failureSummary ?? ''}`).join('\n')}`,
    )
    .join('\n');
}

/** What Python's imaplib found in one message: its attachments' names, sizes and SHA-256. */
export interface ImapAttachment {
  filename: string;
  size: number;
  sha256: string;
}

/**
 * Fetches the newest message whose subject contains `subject` from `user`'s INBOX with Python's
 * imaplib (an independent IMAP client and MIME parser, the email package) over the plain IMAP
 * port, and returns its attachments as Python decoded them.
 */
export function imapAttachments(port: number, user: string, password: string, subject: string): Promise<ImapAttachment[]> {
  const script = `
import imaplib, email, email.policy, hashlib, json, sys, time
port, user, password, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
m = imaplib.IMAP4('127.0.0.1', port)
m.login(user, password)
uids = []
for _ in range(100):
    m.select('INBOX', readonly=True)
    typ, data = m.uid('SEARCH', 'SUBJECT', '"' + subject.replace('\\\\', '\\\\\\\\').replace('"', '\\\\"') + '"')
    uids = data[0].split()
    if uids:
        break
    time.sleep(0.1)
if not uids:
    sys.exit('no message with subject ' + subject)
typ, data = m.uid('FETCH', uids[-1], '(BODY.PEEK[])')
raw = next(p[1] for p in data if isinstance(p, tuple))
msg = email.message_from_bytes(raw, policy=email.policy.default)
out = []
for part in msg.iter_attachments():
    payload = part.get_payload(decode=True) or b''
    out.append({'filename': part.get_filename(), 'size': len(payload), 'sha256': hashlib.sha256(payload).hexdigest()})
m.logout()
print(json.dumps(out))
`;
  return new Promise((resolve, reject) => {
    execFile('/usr/bin/python3', ['-c', script, String(port), user, password, subject], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`imaplib: ${stderr || err.message}`));
      resolve(JSON.parse(stdout) as ImapAttachment[]);
    });
  });
}

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
