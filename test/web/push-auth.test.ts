/**
 * JMAP push (RFC 8620 §7.3) and authentication over real HTTPS: a StateChange reaches an
 * EventSource client (undici's) within a second of a local delivery, `types`, `closeafter=state`
 * and `ping` do what they say; a wrong password waits the failed-login delay, an app password made
 * with the CLI works and stops working when revoked.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EventSource, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppPasswords } from '../../core/accounts/app-passwords.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { coreModule } from '../../containers/web/jmap/core-methods.js';
import { JmapRegistry } from '../../containers/web/jmap/registry.js';
import { basic, startWebHarness, webPassword, type WebHarness } from './harness.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
let h: WebHarness;

const message = (n: number) => `From: a@example.net\r\nTo: ${ALICE}\r\nSubject: push ${n}\r\nMessage-ID: <push${n}@example.net>\r\n\r\nbody ${n}\r\n`;

beforeAll(async () => {
  h = await startWebHarness({ TOMLINSON_WEB_AUTH_FAILURE_DELAY_MS: '300' }, { registry: new JmapRegistry([coreModule], {}) }, [ALICE, BOB]);
});
afterAll(async () => h?.close());

/** A dispatcher that adds Basic credentials: EventSource takes no headers of its own. */
function withAuth(user: string): Dispatcher {
  const auth = basic(user, webPassword(user));
  return h.agent.compose((dispatch) => (opts, handler) => {
    const headers = opts.headers;
    let next: typeof headers;
    if (Array.isArray(headers)) next = [...(headers as string[]), 'authorization', auth];
    else next = { ...(headers as Record<string, string> | undefined), authorization: auth };
    return dispatch({ ...opts, headers: next }, handler);
  });
}

/** Reads a raw event stream for `ms` (or to its end) and returns the text. */
async function readStream(path: string, user: string, ms: number): Promise<{ text: string; ended: boolean }> {
  const res = await h.fetch(path, { user });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const reader = res.body!.getReader();
  let text = '';
  let ended = false;
  const deadline = Date.now() + ms;
  const decoder = new TextDecoder();
  while (Date.now() < deadline) {
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), Math.max(1, deadline - Date.now())));
    const r = await Promise.race([reader.read(), timer]);
    if (r === 'timeout') break;
    if (r.done) {
      ended = true;
      break;
    }
    text += decoder.decode(r.value, { stream: true });
  }
  if (!ended) await reader.cancel();
  return { text, ended };
}

describe('push over EventSource (§7.3)', () => {
  it('sends a StateChange within 1 s of a local delivery, to an EventSource client', async () => {
    const es = new EventSource(`${h.base}/jmap/eventsource/?types=*&closeafter=no&ping=0`, { dispatcher: withAuth(ALICE) });
    try {
      await new Promise<void>((resolve, reject) => {
        es.onopen = () => resolve();
        es.onerror = () => reject(new Error('EventSource failed to open'));
      });
      const got = new Promise<{ data: string; at: number }>((resolve) => {
        es.addEventListener('state', (e) => resolve({ data: String((e as unknown as { data: unknown }).data), at: performance.now() }));
      });
      const started = performance.now();
      await h.deliver(ALICE, message(1));
      const ev = await got;
      expect(ev.at - started).toBeLessThan(1000);
      const change = JSON.parse(ev.data) as { '@type': string; changed: Record<string, Record<string, string>> };
      expect(change['@type']).toBe('StateChange');
      const states = change.changed[accountIdOf(ALICE)];
      // A delivery is new mail: EmailDelivery (RFC 8621 §1.5) moves with the rest, to its MODSEQ.
      expect(Object.keys(states).sort()).toEqual(['Email', 'EmailDelivery', 'Mailbox', 'Thread']);
      expect(new Set(Object.values(states)).size).toBe(1);
      expect(Object.keys(change.changed)).toEqual([accountIdOf(ALICE)]);
    } finally {
      es.close();
    }
  });

  it('sends only the asked types, and closes after the first change with closeafter=state', async () => {
    const reading = readStream('/jmap/eventsource/?types=Mailbox&closeafter=state&ping=0', ALICE, 3000);
    await new Promise((r) => setTimeout(r, 300));
    await h.deliver(ALICE, message(2));
    const { text, ended } = await reading;
    expect(ended).toBe(true);
    const events = text.split('\n\n').filter((e) => e.startsWith('event: state'));
    expect(events).toHaveLength(1);
    const data = JSON.parse(events[0].split('\ndata: ')[1]) as { changed: Record<string, Record<string, string>> };
    expect(Object.keys(data.changed[accountIdOf(ALICE)])).toEqual(['Mailbox']);
  });

  it("pings every `ping` seconds with the interval, and does not tell Bob of Alice's mail", async () => {
    const reading = readStream('/jmap/eventsource/?types=*&closeafter=no&ping=1', BOB, 2500);
    await new Promise((r) => setTimeout(r, 300));
    await h.deliver(ALICE, message(3));
    const { text } = await reading;
    const pings = text.split('\n\n').filter((e) => e.startsWith('event: ping'));
    expect(pings.length).toBeGreaterThanOrEqual(2);
    expect(pings[0]).toBe('event: ping\ndata: {"interval":1}');
    expect(text).not.toContain('event: state');
  });

  it('refuses a malformed query with 400', async () => {
    const res = await h.fetch('/jmap/eventsource/?types=*&closeafter=maybe&ping=0', { user: ALICE });
    expect(res.status).toBe(400);
    await res.body?.cancel();
  });
});

/** An EventSource as `user` that keeps every StateChange's states for Alice's account, in order. */
function stateStream(query: string, user = ALICE) {
  const seen: Record<string, string>[] = [];
  let wake: (() => void) | undefined;
  const es = new EventSource(`${h.base}/jmap/eventsource/?${query}`, { dispatcher: withAuth(user) });
  es.addEventListener('state', (e) => {
    const change = JSON.parse(String((e as unknown as { data: unknown }).data)) as { changed: Record<string, Record<string, string>> };
    seen.push(change.changed[accountIdOf(ALICE)]);
    wake?.();
  });
  const opened = new Promise<void>((resolve, reject) => {
    es.onopen = () => resolve();
    es.onerror = () => reject(new Error('EventSource failed to open'));
  });
  /** The next StateChange, or undefined when none comes within `ms`. */
  const next = async (ms = 2000): Promise<Record<string, string> | undefined> => {
    if (!seen.length) await new Promise<void>((r) => ((wake = r), setTimeout(r, ms)));
    wake = undefined;
    return seen.shift();
  };
  return { es, opened, next };
}

describe('EmailDelivery push (RFC 8621 §1.5)', () => {
  it('changes on a delivery, not on a keyword change, a move or an expunge', async () => {
    const s = stateStream('types=Email,EmailDelivery&closeafter=no&ping=0');
    const folders = new FolderStore(h.storage.tables, h.storage.mail);
    try {
      await s.opened;
      await h.deliver(ALICE, message(10));
      const delivered = await s.next();
      expect(Object.keys(delivered!).sort()).toEqual(['Email', 'EmailDelivery']);
      expect(delivered!.EmailDelivery).toBe(delivered!.Email);

      const { items } = await folders.messages(ALICE, INBOX);
      const uid = items[items.length - 1]!.uid;
      await folders.storeFlags(ALICE, INBOX, [uid], { mode: 'add', flags: ['\\Seen', '$label1'] });
      const flagged = await s.next();
      expect(flagged).toEqual({ Email: expect.any(String) });
      expect(Number(flagged!.Email)).toBeGreaterThan(Number(delivered!.Email));

      const archive = await folders.create(ALICE, 'Pushed');
      // The folder's creation moves Email's state too (one log for all types): let it pass.
      expect(await s.next()).toEqual({ Email: expect.any(String) });
      await folders.move(ALICE, INBOX, [uid], archive.id);
      expect(await s.next()).toEqual({ Email: expect.any(String) });
      await folders.copy(ALICE, archive.id, [1], INBOX);
      expect(await s.next()).toEqual({ Email: expect.any(String) });
      await folders.expunge(ALICE, archive.id, [1]);
      expect(await s.next()).toEqual({ Email: expect.any(String) });

      await h.deliver(ALICE, message(11));
      const again = await s.next();
      expect(Object.keys(again!).sort()).toEqual(['Email', 'EmailDelivery']);
      expect(Number(again!.EmailDelivery)).toBeGreaterThan(Number(delivered!.EmailDelivery));
    } finally {
      s.es.close();
    }
  });

  it('sends nothing to a stream of EmailDelivery alone until new mail comes', async () => {
    await h.deliver(ALICE, message(13));
    const s = stateStream('types=EmailDelivery&closeafter=no&ping=0');
    const folders = new FolderStore(h.storage.tables, h.storage.mail);
    try {
      await s.opened;
      const { items } = await folders.messages(ALICE, INBOX);
      await folders.storeFlags(ALICE, INBOX, [items[0]!.uid], { mode: 'add', flags: ['$flagged'] });
      expect(await s.next(1000)).toBeUndefined();
      await h.deliver(ALICE, message(12));
      expect(await s.next()).toEqual({ EmailDelivery: expect.stringMatching(/^[0-9]+$/) });
    } finally {
      s.es.close();
    }
  });
});

describe('authentication', () => {
  it('answers a wrong password 401 after the failed-login delay, and the right one at once', async () => {
    const t0 = performance.now();
    const bad = await h.fetch('/jmap/session', { user: ALICE, password: 'wrong-password' });
    const waited = performance.now() - t0;
    expect(bad.status).toBe(401);
    expect(bad.headers.get('www-authenticate')).toMatch(/^Basic /);
    await bad.body?.cancel();
    expect(waited).toBeGreaterThanOrEqual(290);
    const good = await h.fetch('/jmap/session', { user: ALICE });
    expect(good.status).toBe(200);
    await good.body?.cancel();
  });

  it('refuses a malformed Authorization header without a crash', async () => {
    for (const header of ['Basic', 'Basic !!!', 'Bearer abc', `Basic ${Buffer.from('no-colon').toString('base64')}`]) {
      const r = await h.fetch('/jmap/session', { headers: { authorization: header } });
      expect(r.status).toBe(401);
      await r.body?.cancel();
    }
  });

  it('takes an app password made with the CLI, and not once it is revoked', async () => {
    const cli = (args: string[]) =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
        const child = spawn(process.execPath, ['bin/tomlinson.mjs', ...args], {
          cwd: ROOT,
          env: {
            PATH: process.env.PATH ?? '',
            HOME: process.env.HOME ?? '/tmp',
            TOMLINSON_DATA_DIR: h.dir,
            TOMLINSON_CLI_BUNDLE: '0',
            TOMLINSON_LOG_LEVEL: 'silent',
          },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const made = await cli(['--json', 'app-password', 'add', ALICE, 'phone']);
    expect(made.stderr).toBe('');
    expect(made.code).toBe(0);
    const { id, password } = JSON.parse(made.stdout) as { id: string; password: string };
    expect(password).toMatch(/^tapp-[0-9a-f]{12}-[0-9a-f]{32}$/);

    const listed = await cli(['--json', 'app-password', 'list', ALICE]);
    expect(JSON.parse(listed.stdout)).toEqual([{ id, address: ALICE, label: 'phone', createdAt: expect.any(String) }]);
    expect(listed.stdout).not.toContain(password);

    const ok = await h.fetch('/jmap/session', { user: ALICE, password });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { username: string }).username).toBe(ALICE);
    // Another user's name with Alice's app password is no login.
    const other = await h.fetch('/jmap/session', { user: BOB, password });
    expect(other.status).toBe(401);
    await other.body?.cancel();

    expect((await cli(['app-password', 'revoke', ALICE, id])).code).toBe(0);
    const gone = await h.fetch('/jmap/session', { user: ALICE, password });
    expect(gone.status).toBe(401);
    await gone.body?.cancel();
    expect(await new AppPasswords(h.storage.tables, h.accounts).list(ALICE)).toEqual([]);
  }, 120_000);

  it('drops app passwords with their user', async () => {
    const apps = new AppPasswords(h.storage.tables, h.accounts);
    const { password } = await apps.add(BOB, 'laptop');
    expect(await apps.verify(BOB, password)).toBe(true);
    await h.accounts.removeUser(BOB);
    await h.accounts.addUser(BOB, webPassword(BOB));
    expect(await apps.verify(BOB, password)).toBe(false);
    expect(await apps.list(BOB)).toEqual([]);
  });
});
