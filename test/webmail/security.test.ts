/**
 * The webmail's session defences seen from a real browser (issue 23: "CSRF and session fixation
 * attempts refused"). The server side's own tests check the HTTP level; here Chromium does what a
 * victim's browser would:
 * - CSRF: with the victim signed in, a page on another origin makes cross-origin form POSTs (the
 *   classic text/plain JSON body) and fetches to /jmap/api, /webmail/api/logout and
 *   /webmail/api/login. Two attacker origins: https://127.0.0.1:<port> is same-site (the cookie,
 *   SameSite=Strict, is sent, so the CSRF token and Origin checks are what stop it) and
 *   http://localhost:<port> is cross-site (the cookie stays home). Nothing changes: no mailbox
 *   made, the victim still signed in as themself with the same cookie, no 2xx answer.
 * - Session fixation: a cookie value set in the browser before login (made up, or once valid and
 *   since ended) is never the session after login.
 */
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser, login, messageList, newPage, sessionCookie, startWebmailApp, type WebmailApp } from './harness.js';

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const PASSWORD = 'alice-security-password';
const BOB_PASSWORD = 'bob-security-password';
const COOKIE = '__Host-tomlinson';

let h: WebmailApp;
let browser: Browser;
let accountId: string;
/** Attacker pages by path; each server answers every path from this map. */
const pages = new Map<string, string>();
let sameSite: Server;
let crossSite: Server;
let sameSiteOrigin: string;
let crossSiteOrigin: string;

const serve = (req: { url?: string }, res: { writeHead(s: number, h: Record<string, string>): { end(b: string): void } }) => {
  const page = pages.get(new URL(req.url ?? '/', 'http://x').pathname);
  if (!page) return res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(page);
};

const listen = (s: Server) => new Promise<number>((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as AddressInfo).port)));

/** A form that submits itself on load: `body` goes out as text/plain (`name=value`, split at the last '='). */
function autoForm(action: string, body: string): string {
  const cut = body.lastIndexOf('=');
  const name = body.slice(0, cut);
  const value = body.slice(cut + 1);
  const attr = (s: string) => s.replace(/&/g, '&amp;').replace(/'/g, '&#39;');
  return (
    `<!doctype html><meta charset="utf-8"><title>win a prize</title>` +
    `<form method="POST" action="${attr(action)}" enctype="text/plain"><input type="hidden" name='${attr(name)}' value='${attr(value)}'></form>` +
    `<script>document.forms[0].submit()</script>`
  );
}

/** A page whose script fires cross-origin fetches at `targets` and records when they all settled. */
function fetchPage(targets: { url: string; body: string }[]): string {
  const calls = targets.flatMap((t) => [
    // Simple request: no preflight, the cookie goes when the browser sends it at all.
    `fetch(${JSON.stringify(t.url)}, { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' }, body: ${JSON.stringify(t.body)} })`,
    // With a guessed token: needs a CORS preflight the server must not grant.
    `fetch(${JSON.stringify(t.url)}, { method: 'POST', mode: 'cors', credentials: 'include', headers: { 'content-type': 'application/json', 'x-csrf-token': 'guess' }, body: ${JSON.stringify(t.body)} })`,
  ]);
  return (
    `<!doctype html><meta charset="utf-8"><title>win a prize</title><body>` +
    `<script>Promise.allSettled([${calls.join(',')}]).then((r) => { document.body.dataset.done = r.map((x) => x.status).join(','); });</script>`
  );
}

const createMailbox = (name: string) =>
  JSON.stringify({
    using: ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'],
    methodCalls: [['Mailbox/set', { accountId, create: { x: { name } } }, '0']],
  });

async function mailboxNames(): Promise<string[]> {
  const [[, got]] = await h.jmap(ALICE, PASSWORD, [['Mailbox/get', { accountId }, 'm']]);
  return (got.list as { name: string }[]).map((m) => m.name);
}

/** The victim's session as the victim's own page sees it (same-origin fetch with the cookie). */
async function sessionSeenBy(page: Page): Promise<{ status: number; username?: string }> {
  return page.evaluate(async () => {
    const r = await fetch('/webmail/api/session', { credentials: 'same-origin' });
    const body = r.status === 200 ? ((await r.json()) as { username: string }) : undefined;
    return { status: r.status, username: body?.username };
  });
}

interface Answer {
  url: string;
  method: string;
  status: number;
  /** The Set-Cookie the answer carried, if any (a refused request must not touch the session). */
  setCookie?: string | null;
}

/** Opens `path` of the attacker `origin` in a new tab of the victim's context; every answer our server gave it. */
async function attack(context: BrowserContext, origin: string, path: string, settled: (p: Page, answers: Answer[]) => Promise<unknown>): Promise<Answer[]> {
  const tab = await context.newPage();
  const answers: Answer[] = [];
  const headers: Promise<unknown>[] = [];
  tab.on('response', (r) => {
    if (!r.url().startsWith(h.base)) return;
    const a: Answer = { url: r.url(), method: r.request().method(), status: r.status() };
    answers.push(a);
    headers.push(
      r.headerValue('set-cookie').then(
        (v) => (a.setCookie = v),
        () => undefined,
      ),
    );
  });
  try {
    // A form page submits itself while it loads, which may end this navigation early; what
    // counts is the answer `settled` waits for.
    await tab.goto(`${origin}${path}`).catch(() => undefined);
    await settled(tab, answers);
    await Promise.all(headers);
    return answers;
  } finally {
    await tab.close();
  }
}

/** Waits until our server answered the form's POST to `path` (seen as a response of the tab: a
 * 401 with WWW-Authenticate, JMAP without a cookie, then fails the navigation at the browser's
 * password prompt, so the page's load is no signal). */
const answered = (path: string) => async (_t: Page, answers: Answer[]) => {
  const deadline = Date.now() + 10_000;
  while (!answers.some((a) => a.url === `${h.base}${path}` && a.method === 'POST')) {
    if (Date.now() > deadline) throw new Error(`no answer to the POST to ${path} within 10 s: ${JSON.stringify(answers)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

beforeAll(async () => {
  h = await startWebmailApp();
  await h.addUser(ALICE, PASSWORD);
  await h.addUser(BOB, BOB_PASSWORD);
  accountId = await h.accountId(ALICE, PASSWORD);
  await h.deliver({ to: ALICE, subject: 'Nothing to see' });
  await h.waitForEmail(ALICE, PASSWORD, 'Nothing to see');
  // The attacker's same-site origin borrows the app's self-signed certificate (the browser
  // context accepts it); its cross-site origin is plain HTTP on "localhost".
  const tls = join(h.dir, 'tls');
  sameSite = createHttpsServer({ cert: await readFile(join(tls, 'selfsigned.crt')), key: await readFile(join(tls, 'selfsigned.key')) }, serve);
  crossSite = createHttpServer(serve);
  sameSiteOrigin = `https://127.0.0.1:${await listen(sameSite)}`;
  crossSiteOrigin = `http://localhost:${await listen(crossSite)}`;
  browser = await launchBrowser();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => sameSite?.close(r));
  await new Promise((r) => crossSite?.close(r));
  await h?.close();
});

describe('CSRF from another origin, the victim signed in', () => {
  for (const which of ['same-site', 'cross-site'] as const) {
    it(`${which}: form posts and fetches to /jmap/api, logout and login change nothing`, async () => {
      const origin = which === 'same-site' ? sameSiteOrigin : crossSiteOrigin;
      const tag = which.replace('-', '');
      pages.set('/jmap-form', autoForm(`${h.base}/jmap/api`, createMailbox(`Pwned form ${tag}`).replace(/}$/, ',"pad":"=x"}')));
      pages.set('/logout-form', autoForm(`${h.base}/webmail/api/logout`, 'a=b'));
      pages.set(
        '/login-form',
        autoForm(`${h.base}/webmail/api/login`, `${JSON.stringify({ username: BOB, password: BOB_PASSWORD }).replace(/}$/, ',"pad":"=x"}')}`),
      );
      pages.set(
        '/fetch',
        fetchPage([
          { url: `${h.base}/jmap/api`, body: createMailbox(`Pwned fetch ${tag}`) },
          { url: `${h.base}/webmail/api/logout`, body: '' },
          { url: `${h.base}/webmail/api/login`, body: JSON.stringify({ username: BOB, password: BOB_PASSWORD }) },
        ]),
      );

      const { context, page } = await newPage(browser);
      try {
        await login(page, h.base, ALICE, PASSWORD);
        const cookie = await sessionCookie(context, h.base);
        expect(cookie).toBeTruthy();

        const answers = [
          ...(await attack(context, origin, '/jmap-form', answered('/jmap/api'))),
          ...(await attack(context, origin, '/logout-form', answered('/webmail/api/logout'))),
          ...(await attack(context, origin, '/login-form', answered('/webmail/api/login'))),
          ...(await attack(context, origin, '/fetch', (t) =>
            t.waitForFunction(() => !!(globalThis as unknown as { document: { body: { dataset: { done?: string } } } }).document.body.dataset.done),
          )),
        ];
        // Every state-changing request that reached the server was refused.
        const posts = answers.filter((a) => a.method === 'POST');
        expect(posts.length, JSON.stringify(answers)).toBeGreaterThanOrEqual(6);
        for (const a of posts) expect([401, 403], `${a.method} ${a.url}`).toContain(a.status);

        // Nothing changed: no mailbox made, still Alice with the same cookie, the UI still works.
        expect((await mailboxNames()).filter((n) => n.startsWith('Pwned'))).toEqual([]);
        expect(await sessionCookie(context, h.base), `the victim's cookie changed; answers: ${JSON.stringify(posts)}`).toBe(cookie);
        expect(await sessionSeenBy(page)).toEqual({ status: 200, username: ALICE });
        await page.reload();
        await messageList(page).getByRole('option').filter({ hasText: 'Nothing to see' }).first().waitFor();
      } finally {
        await context.close();
      }
    });
  }
});

describe('session fixation through the browser', () => {
  it('a made-up cookie set before login is replaced by a new session at login', async () => {
    const planted = 'A'.repeat(43);
    const { context, page } = await newPage(browser);
    try {
      await context.addCookies([{ name: COOKIE, value: planted, url: `${h.base}/`, secure: true, httpOnly: true, sameSite: 'Strict' }]);
      await page.goto(`${h.base}/webmail/`);
      // The planted value is no session: the login form shows.
      await page.getByRole('button', { name: 'Sign in' }).waitFor();
      await login(page, h.base, ALICE, PASSWORD);
      const after = await sessionCookie(context, h.base);
      expect(after).toBeTruthy();
      expect(after).not.toBe(planted);
      const res = await h.fetch('/webmail/api/session', { headers: { cookie: `${COOKIE}=${planted}` } });
      expect(res.status).toBe(401);
    } finally {
      await context.close();
    }
  });

  it('a once-valid session id, ended by sign-out and planted in another browser, is not revived by a login there', async () => {
    const first = await newPage(browser);
    let old: string | undefined;
    try {
      await login(first.page, h.base, ALICE, PASSWORD);
      old = await sessionCookie(first.context, h.base);
      await first.page.getByRole('button', { name: 'Sign out' }).click();
      await first.page.getByLabel('Email address').waitFor();
    } finally {
      await first.context.close();
    }
    expect(old).toBeTruthy();
    const { context, page } = await newPage(browser);
    try {
      await context.addCookies([{ name: COOKIE, value: old!, url: `${h.base}/`, secure: true, httpOnly: true, sameSite: 'Strict' }]);
      await login(page, h.base, ALICE, PASSWORD);
      const now = await sessionCookie(context, h.base);
      expect(now).toBeTruthy();
      expect(now).not.toBe(old);
      expect((await h.fetch('/webmail/api/session', { headers: { cookie: `${COOKIE}=${old}` } })).status).toBe(401);
      expect((await h.fetch('/webmail/api/session', { headers: { cookie: `${COOKIE}=${now}` } })).status).toBe(200);
    } finally {
      await context.close();
    }
  });
});
