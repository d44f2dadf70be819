/**
 * Webmail sign-in over real HTTPS against the web listener (containers/web/webmail/sessions.ts and
 * the cookie check of /jmap/* in server.ts): the cookie's attributes, CSRF on state-changing
 * requests, login CSRF, session fixation, logout, expiry, and revocation from the operator's side.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSessions } from '../../core/accounts/web-sessions.js';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { startCli, type CliHarness } from '../cli/support.js';
import { startWebHarness, type WebHarness } from '../web/harness.js';

const ALICE = 'alice@example.com';
let h: WebHarness;

beforeAll(async () => {
  h = await startWebHarness({}, {}, [ALICE]);
});
afterAll(async () => h?.close());

interface Login {
  status: number;
  cookie?: string;
  setCookie: string;
  body: Record<string, unknown>;
}

async function login(password = 'password-alice', headers: Record<string, string> = {}): Promise<Login> {
  const res = await h.fetch('/webmail/api/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ username: ALICE, password }),
  });
  const setCookie = res.headers.get('set-cookie') ?? '';
  const m = /^__Host-tomlinson=([^;]*)/.exec(setCookie);
  return { status: res.status, cookie: m?.[1], setCookie, body: (await res.json()) as Record<string, unknown> };
}

const cookieHeader = (id: string) => ({ cookie: `__Host-tomlinson=${id}` });

async function api(id: string, csrf?: string) {
  return h.fetch('/jmap/api/', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...cookieHeader(id), ...(csrf === undefined ? {} : { 'x-csrf-token': csrf }) },
    body: JSON.stringify({
      using: ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'],
      methodCalls: [['Mailbox/get', { accountId: accountIdOf(ALICE) }, '0']],
    }),
  });
}

describe('sign-in', () => {
  it('sets a __Host- cookie: HttpOnly, Secure, SameSite=Strict, Path=/, no Domain', async () => {
    const r = await login();
    expect(r.status).toBe(200);
    expect(r.cookie).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const attrs = r.setCookie.split(';').map((x) => x.trim().toLowerCase());
    expect(attrs).toEqual(expect.arrayContaining(['httponly', 'secure', 'samesite=strict', 'path=/']));
    expect(attrs.some((a) => a.startsWith('domain'))).toBe(false);
    expect(r.body).toMatchObject({ username: ALICE, csrfToken: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) });
    expect(Date.parse(String(r.body.expires))).toBeGreaterThan(Date.now() + 167 * 3600_000);
  });

  it('answers a wrong password 401 with no cookie', async () => {
    const r = await login('wrong');
    expect(r.status).toBe(401);
    expect(r.cookie).toBeUndefined();
    expect(r.body.title).toBeTruthy();
  });

  it('refuses a cross-site Origin (login CSRF) and accepts our own', async () => {
    const cross = await login('password-alice', { origin: 'https://evil.example' });
    expect(cross.status).toBe(403);
    expect(cross.cookie).toBeUndefined();
    expect((await login('password-alice', { origin: 'null' })).status).toBe(403);
    expect((await login('password-alice', { origin: `https://127.0.0.1:${h.port}` })).status).toBe(200);
  });

  it('answers bad input with 4xx, not 500', async () => {
    const post = (body: string, type = 'application/json') =>
      h.fetch('/webmail/api/login', { method: 'POST', headers: { 'content-type': type }, body }).then((r) => r.status);
    expect(await post('{')).toBe(400);
    expect(await post('[]')).toBe(400);
    expect(await post('null')).toBe(400);
    expect(await post(JSON.stringify({ username: ALICE }))).toBe(400);
    expect(await post('username=a&password=b', 'application/x-www-form-urlencoded')).toBe(415);
    expect(await post(JSON.stringify({ username: 'x', password: 'y'.repeat(20_000) }))).toBe(413);
    expect((await h.fetch('/webmail/api/login')).status).toBe(405);
    expect((await h.fetch('/webmail/api/nothing')).status).toBe(404);
  });

  it('ignores a cookie chosen before sign-in (no fixation), and an unknown cookie gets 401', async () => {
    const planted = 'A'.repeat(43);
    const r = await login('password-alice', cookieHeader(planted));
    expect(r.status).toBe(200);
    expect(r.cookie).not.toBe(planted);
    expect((await h.fetch('/webmail/api/session', { headers: cookieHeader(planted) })).status).toBe(401);
    expect((await h.fetch('/jmap/session', { headers: cookieHeader(planted) })).status).toBe(401);
    expect((await api(planted, 'whatever')).status).toBe(401);
  });
});

describe('the cookie on /jmap/*', () => {
  it('authenticates the session resource and API requests that carry the CSRF token', async () => {
    const r = await login();
    const csrf = String(r.body.csrfToken);
    const s = await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) });
    expect(s.status).toBe(200);
    expect(((await s.json()) as { username: string }).username).toBe(ALICE);
    const res = await api(r.cookie!, csrf);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { methodResponses: [string, { list: { name: string }[] }][] };
    expect(body.methodResponses[0][0]).toBe('Mailbox/get');
    expect(body.methodResponses[0][1].list.map((m) => m.name)).toContain('INBOX');
    const me = await h.fetch('/webmail/api/session', { headers: cookieHeader(r.cookie!) });
    expect(await me.json()).toMatchObject({ username: ALICE, csrfToken: csrf });
  });

  it('refuses a POST without or with a wrong X-CSRF-Token (403 problem JSON)', async () => {
    const r = await login();
    for (const csrf of [undefined, 'wrong', `${String(r.body.csrfToken)}x`]) {
      const res = await api(r.cookie!, csrf);
      expect(res.status).toBe(403);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(((await res.json()) as { status: number }).status).toBe(403);
    }
    const upload = await h.fetch(`/jmap/upload/x/`, { method: 'POST', headers: cookieHeader(r.cookie!), body: 'hi' });
    expect(upload.status).toBe(403);
  });

  it('keeps Basic working, and Authorization wins over a cookie', async () => {
    expect((await h.fetch('/jmap/session', { user: ALICE })).status).toBe(200);
    const r = await login();
    const res = await h.fetch('/jmap/session', { headers: { ...cookieHeader(r.cookie!), authorization: 'Basic eDp5' } });
    expect(res.status).toBe(401);
  });
});

describe('ending a session', () => {
  it('logout needs the CSRF token, deletes the session and clears the cookie', async () => {
    const r = await login();
    const csrf = String(r.body.csrfToken);
    expect((await h.fetch('/webmail/api/logout', { method: 'POST', headers: cookieHeader(r.cookie!) })).status).toBe(403);
    const out = await h.fetch('/webmail/api/logout', { method: 'POST', headers: { ...cookieHeader(r.cookie!), 'x-csrf-token': csrf } });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(/^__Host-tomlinson=;.*Max-Age=0/);
    expect((await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
    expect((await api(r.cookie!, csrf)).status).toBe(401);
    expect((await h.fetch('/webmail/api/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
  });

  it('a session past its expiry is refused', async () => {
    const r = await login();
    const key = { pk: `SESSION#${createHash('sha256').update(r.cookie!).digest('hex')}`, sk: 'META' };
    expect((await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) })).status).toBe(200);
    await h.storage.tables.update(key, { set: { expires: Date.now() - 1 } });
    expect((await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
    expect((await h.fetch('/webmail/api/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
  });

  it('a disabled user is signed out at the next request', async () => {
    const r = await login();
    await h.accounts.setEnabled(ALICE, false);
    try {
      expect((await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
    } finally {
      await h.accounts.setEnabled(ALICE, true);
    }
  });

  it('tomlinson session list and revoke (one by id prefix, or --all) sign the browser out', async () => {
    let cli: CliHarness | undefined;
    try {
      cli = await startCli();
      const env = { TOMLINSON_DATA_DIR: h.dir };
      await new WebSessions(h.storage.tables, h.accounts).revokeAll(ALICE);
      const one = await login('password-alice', { 'user-agent': 'Browser One' });
      const two = await login();
      const three = await login();
      const list = await cli.run(['--json', 'session', 'list', ALICE], { env });
      expect(list.code).toBe(0);
      const rows = JSON.parse(list.stdout) as { id: string; client: string; userAgent: string }[];
      expect(rows).toHaveLength(3);
      expect(rows[0]).toMatchObject({ client: '127.0.0.1', userAgent: 'Browser One' });
      expect(list.stdout).not.toContain(one.cookie);
      expect(list.stdout).not.toContain(String(one.body.csrfToken));
      const human = await cli.run(['session', 'list', ALICE], { env });
      expect(human.stdout).toContain(rows[0].id);

      const revoked = await cli.run(['session', 'revoke', ALICE, rows[0].id.slice(0, 8)], { env });
      expect(revoked.code).toBe(0);
      expect((await h.fetch('/jmap/session', { headers: cookieHeader(one.cookie!) })).status).toBe(401);
      expect((await h.fetch('/jmap/session', { headers: cookieHeader(two.cookie!) })).status).toBe(200);

      expect((await cli.run(['session', 'revoke', ALICE], { env })).code).not.toBe(0);
      expect((await cli.run(['session', 'revoke', ALICE, rows[0].id], { env })).code).not.toBe(0);
      expect((await cli.run(['session', 'list', 'nobody@example.com'], { env })).code).not.toBe(0);
      const all = await cli.run(['session', 'revoke', ALICE, '--all'], { env });
      expect(all.code).toBe(0);
      expect(all.stdout).toContain('2 webmail sessions');
      for (const c of [two.cookie!, three.cookie!]) expect((await h.fetch('/jmap/session', { headers: cookieHeader(c) })).status).toBe(401);
    } finally {
      await cli?.cleanup();
    }
  }, 120_000);

  it('revoking from the operator side (as the CLI does) ends the session', async () => {
    const sessions = new WebSessions(h.storage.tables, h.accounts);
    await sessions.revokeAll(ALICE);
    const r = await login();
    const listed = await sessions.list(ALICE);
    expect(listed).toHaveLength(1);
    expect(listed[0].client).toBe('127.0.0.1');
    await sessions.revoke(ALICE, listed[0].id.slice(0, 8));
    expect((await h.fetch('/jmap/session', { headers: cookieHeader(r.cookie!) })).status).toBe(401);
  });
});
