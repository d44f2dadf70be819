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
      expect(Object.keys(states).sort()).toEqual(['Email', 'Mailbox', 'Thread']);
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
