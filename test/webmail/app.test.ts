/**
 * The webmail end to end in Debian's Chromium (issue 23): one app for the file (smtp, imap, web,
 * proxy, workers over local storage), a fresh browser context per test. A person signs in, reads,
 * replies to themself and sees the reply arrive without a reload (JMAP push), moves mail with the
 * Move dialog and by drag and drop, searches, sends an attachment that Python's imaplib then finds
 * byte for byte, sets a vacation reply (checked over JMAP), uses the keyboard shortcuts, watches the
 * unread count in the tab title, and signs out. Screenshots of the main screens on a phone-sized
 * and a desktop viewport, and at 200% zoom, go to test-artifacts/webmail/ (harness.ts).
 *
 * Every element is found by the accessible names of the UI contract; a second client (JMAP with
 * Basic auth, or imaplib) checks what the browser did, so no test trusts the page about itself.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DESKTOP,
  PHONE,
  folderLink,
  imapAttachments,
  launchBrowser,
  login,
  messageList,
  newPage,
  reader,
  row,
  screenshot,
  sessionCookie,
  sha256,
  startWebmailApp,
  type WebmailApp,
} from './harness.js';

const ALICE = 'alice@example.test';
/** The inbox's name in the UI (the role's name, whatever the server calls it: IMAP's INBOX). */
const INBOX_NAME = 'Inbox';
const PASSWORD = 'alice-webmail-password';

let h: WebmailApp;
let browser: Browser;
let accountId: string;
let projects: string;

/** Polls `check` until it returns a value that is not undefined/false, or fails after `timeoutMs`. */
async function until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const jmap = (calls: unknown[][]) => h.jmap(ALICE, PASSWORD, calls);

async function emailOf(id: string): Promise<{ keywords: Record<string, boolean>; mailboxIds: Record<string, boolean> }> {
  const [[, got]] = await jmap([['Email/get', { accountId, ids: [id], properties: ['keywords', 'mailboxIds'] }, 'g']]);
  return (got.list as { keywords: Record<string, boolean>; mailboxIds: Record<string, boolean> }[])[0]!;
}

async function mailboxes(): Promise<{ id: string; name: string; role: string | null; unreadEmails: number }[]> {
  const [[, got]] = await jmap([['Mailbox/get', { accountId }, 'm']]);
  return got.list as { id: string; name: string; role: string | null; unreadEmails: number }[];
}

/** Delivers a message to Alice over SMTP and waits until it is in her INBOX; its Email id. */
async function deliver(subject: string, o: { from?: string; text?: string; html?: string } = {}): Promise<string> {
  await h.deliver({ to: ALICE, subject, ...o });
  return h.waitForEmail(ALICE, PASSWORD, subject);
}

/** The text of the open message: the reader's own text and its body frame's, whichever holds it. */
async function readerText(page: Page): Promise<string> {
  const own = await reader(page).innerText();
  const frame = reader(page).locator('iframe[title="Message body"]');
  if ((await frame.count()) === 0) return own;
  const body = await page.frameLocator('article[aria-label="Message"] iframe[title="Message body"]').locator('body').innerText();
  return `${own}\n${body}`;
}

/** Opens the row with `subject` and waits for the reader to show it. */
async function open(page: Page, subject: string): Promise<void> {
  await row(page, subject).first().click();
  await reader(page).getByRole('heading', { level: 2, name: subject }).waitFor();
}

beforeAll(async () => {
  h = await startWebmailApp();
  await h.addUser(ALICE, PASSWORD);
  accountId = await h.accountId(ALICE, PASSWORD);
  const [[, made]] = await jmap([['Mailbox/set', { accountId, create: { p: { name: 'Projects' } } }, 'c']]);
  projects = (made.created as Record<string, { id: string }>).p!.id;
  await deliver('Welcome to the webmail', { text: 'The first message body.' });
  await deliver('Quarterly numbers', { from: 'Dana Finance <dana@finance.test>', text: 'The zebraquokka figures are in.' });
  browser = await launchBrowser();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await h?.close();
});

describe('webmail in Chromium', () => {
  it('signs in with address and password and shows the delivered mail in the inbox', async () => {
    const { context, page } = await newPage(browser);
    try {
      await page.goto(`${h.base}/webmail/`);
      await page.getByLabel('Email address').fill(ALICE);
      await page.getByLabel('Password').fill('not the password');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('alert').waitFor();
      expect(await messageList(page).count()).toBe(0);

      await page.getByLabel('Password').fill(PASSWORD);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await messageList(page).waitFor();
      for (const subject of ['Welcome to the webmail', 'Quarterly numbers']) await row(page, subject).first().waitFor();
      // Rows carry the JMAP Email id (contract) and the open folder is marked.
      const [[, q]] = await jmap([['Email/query', { accountId, filter: { inMailbox: 'INBOX', subject: 'Welcome to the webmail' } }, 'q']]);
      expect(await row(page, 'Welcome to the webmail').first().getAttribute('data-email-id')).toBe((q.ids as string[])[0]);
      expect(await folderLink(page, INBOX_NAME).getAttribute('aria-current')).toBe('page');
      expect(await sessionCookie(context, h.base)).toMatch(/^[A-Za-z0-9_-]{43}$/);
    } finally {
      await context.close();
    }
  });

  it('opens a message: the reader shows its subject and body', async () => {
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await open(page, 'Welcome to the webmail');
      await until('body text', async () => (await readerText(page)).includes('The first message body.'));
      for (const name of ['Reply', 'Reply all', 'Forward']) await reader(page).getByRole('button', { name, exact: true }).waitFor();
    } finally {
      await context.close();
    }
  });

  it('shows new mail without a reload: an SMTP delivery, and a reply sent to oneself, arrive live', async () => {
    const subject = `Reply to me ${randomUUID().slice(0, 8)}`;
    await deliver(subject, { text: 'Please answer.' });
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      // A marker in the page's global scope: a reload would lose it.
      await page.evaluate(() => Object.assign(globalThis, { __noReload: 'still here' }));
      const stillHere = () => page.evaluate(() => (globalThis as unknown as { __noReload?: string }).__noReload);

      const live = `Live arrival ${randomUUID().slice(0, 8)}`;
      const t0 = Date.now();
      await h.deliver({ to: ALICE, subject: live });
      await row(page, live).first().waitFor({ timeout: 5000 });
      expect(Date.now() - t0).toBeLessThan(5000);

      // One row per message, so that the reply shows as a row of its own beside the original.
      const conversations = page.getByRole('checkbox', { name: 'Conversations' });
      if (await conversations.isChecked()) await conversations.uncheck();
      await open(page, subject);
      await reader(page).getByRole('button', { name: 'Reply', exact: true }).click();
      const dialog = page.getByRole('dialog', { name: /^Reply/ });
      await dialog.waitFor();
      expect(await dialog.getByLabel('Subject', { exact: true }).inputValue()).toBe(`Re: ${subject}`);
      await dialog.getByLabel('To', { exact: true }).fill(ALICE);
      await dialog.getByLabel('Message', { exact: true }).fill('Answering myself.');
      const sentAt = Date.now();
      await dialog.getByRole('button', { name: 'Send' }).click();
      await dialog.waitFor({ state: 'hidden' });
      await row(page, `Re: ${subject}`).first().waitFor({ timeout: 8000 });
      expect(Date.now() - sentAt).toBeLessThan(8000);
      expect(await stillHere()).toBe('still here');

      // The copy is filed in Sent, and the delivered reply threads with the original (RFC 5322 §3.6.4).
      const sent = (await mailboxes()).find((m) => m.role === 'sent')!.id;
      await h.waitForEmail(ALICE, PASSWORD, `Re: ${subject}`, { mailbox: sent });
      const [[, q], [, got]] = await jmap([
        ['Email/query', { accountId, filter: { inMailbox: 'INBOX', subject } }, 'q'],
        ['Email/get', { accountId, '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' }, properties: ['subject', 'threadId', 'inReplyTo'] }, 'g'],
      ]);
      expect((q.ids as string[]).length).toBe(2);
      const list = got.list as { subject: string; threadId: string; inReplyTo: string[] | null }[];
      expect(new Set(list.map((e) => e.threadId)).size).toBe(1);
      expect(list.find((e) => e.subject === `Re: ${subject}`)!.inReplyTo).toHaveLength(1);
    } finally {
      await context.close();
    }
  });

  it('moves a message with the Move dialog and another by dragging it onto a folder', async () => {
    const byDialog = await deliver('Move me by dialog');
    const byDrag = await deliver('Drag me to Projects');
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await row(page, 'Move me by dialog').first().click();
      await page.getByRole('toolbar', { name: 'Message actions' }).getByRole('button', { name: 'Move', exact: true }).click();
      const dialog = page.getByRole('dialog', { name: 'Move to folder' });
      await dialog.getByRole('button', { name: 'Projects' }).click();
      await dialog.waitFor({ state: 'hidden' });
      await until('moved by dialog', async () => (await emailOf(byDialog)).mailboxIds[projects] === true);
      expect((await emailOf(byDialog)).mailboxIds).toEqual({ [projects]: true });
      await row(page, 'Move me by dialog').first().waitFor({ state: 'detached' });

      await row(page, 'Drag me to Projects').first().dragTo(folderLink(page, 'Projects'));
      await until('moved by drag and drop', async () => (await emailOf(byDrag)).mailboxIds[projects] === true);
      expect((await emailOf(byDrag)).mailboxIds).toEqual({ [projects]: true });
      await row(page, 'Drag me to Projects').first().waitFor({ state: 'detached' });

      // The folder shows both.
      await folderLink(page, 'Projects').click();
      await row(page, 'Move me by dialog').first().waitFor();
      await row(page, 'Drag me to Projects').first().waitFor();
      expect(await folderLink(page, 'Projects').getAttribute('aria-current')).toBe('page');
    } finally {
      await context.close();
    }
  });

  it('searches by text and by From, and clears the search', async () => {
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await row(page, 'Welcome to the webmail').first().waitFor();
      const search = page.getByRole('search');
      await search.getByLabel('Search mail', { exact: true }).fill('zebraquokka');
      await search.getByLabel('Search mail', { exact: true }).press('Enter');
      await row(page, 'Welcome to the webmail').first().waitFor({ state: 'detached' });
      await row(page, 'Quarterly numbers').first().waitFor();
      expect(await messageList(page).getByRole('option').count()).toBe(1);

      await page.getByRole('button', { name: 'Clear search' }).click();
      await row(page, 'Welcome to the webmail').first().waitFor();

      await page.getByRole('button', { name: 'Search options' }).click();
      await page.getByRole('textbox', { name: 'From', exact: true }).fill('dana@finance.test');
      await page.getByRole('button', { name: 'Search', exact: true }).click();
      await row(page, 'Welcome to the webmail').first().waitFor({ state: 'detached' });
      await row(page, 'Quarterly numbers').first().waitFor();
      expect(await messageList(page).getByRole('option').count()).toBe(1);
    } finally {
      await context.close();
    }
  });

  it('sends a few hundred KB of random bytes as an attachment; imaplib receives them byte for byte', async () => {
    const bytes = randomBytes(300 * 1024 + 17);
    const subject = `With attachment ${randomUUID().slice(0, 8)}`;
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await page.getByRole('button', { name: 'Compose' }).click();
      const dialog = page.getByRole('dialog', { name: 'New message' });
      await dialog.getByLabel('To', { exact: true }).fill(ALICE);
      await dialog.getByLabel('Subject', { exact: true }).fill(subject);
      await dialog.getByLabel('Message', { exact: true }).fill('A file for myself.');
      await dialog.getByLabel('Attach files').setInputFiles({ name: 'random.bin', mimeType: 'application/octet-stream', buffer: bytes });
      // Uploaded when it is in the list of attached files (beyond the contract: the compose form's
      // "Attached files" list) and no progress bar is left.
      await dialog.getByRole('list', { name: 'Attached files' }).getByText('random.bin').waitFor({ timeout: 15_000 });
      expect(await dialog.getByRole('progressbar').count()).toBe(0);
      await dialog.getByRole('button', { name: 'Send' }).click();
      await dialog.waitFor({ state: 'hidden' });
      const got = await imapAttachments(h.ports.imap, ALICE, PASSWORD, subject);
      expect(got).toEqual([{ filename: 'random.bin', size: bytes.length, sha256: sha256(bytes) }]);
    } finally {
      await context.close();
    }
  });

  it('sets a vacation reply in Settings; JMAP VacationResponse/get shows it on', async () => {
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await page.getByRole('button', { name: 'Settings' }).click();
      const dialog = page.getByRole('dialog', { name: 'Settings' });
      await dialog.getByLabel('Send a vacation reply').check();
      await dialog.getByLabel('Vacation subject').fill('Away until Monday');
      await dialog.getByLabel('Vacation message').fill('I am away and will answer on Monday.');
      await dialog.getByRole('button', { name: 'Save' }).click();
      const v = await until('vacation on', async () => {
        const [[, got]] = await jmap([['VacationResponse/get', { accountId }, 'v']]);
        const r = (got.list as { isEnabled: boolean; subject: string | null; textBody: string | null }[])[0]!;
        return r.isEnabled ? r : undefined;
      });
      expect(v.subject).toBe('Away until Monday');
      expect(v.textBody).toBe('I am away and will answer on Monday.');
    } finally {
      await context.close();
    }
  });

  it('marks read and unread and flags with the keyboard (I, U, s)', async () => {
    const id = await deliver(`Keyboard target ${randomUUID().slice(0, 8)}`);
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      const r = messageList(page).locator(`[role="option"][data-email-id="${id}"]`);
      await r.click();
      // Opening marks it read; the keys act on the open message once that has happened.
      await reader(page).getByRole('heading', { level: 2 }).waitFor();
      await until('read on open', async () => (await emailOf(id)).keywords.$seen === true);
      await page.keyboard.press('U');
      await until('unread over JMAP', async () => !(await emailOf(id)).keywords.$seen);
      await until('row shows unread', async () => /\bunread\b/.test((await r.getAttribute('class')) ?? ''));
      await page.keyboard.press('I');
      await until('read over JMAP', async () => (await emailOf(id)).keywords.$seen === true);
      await until('row shows read', async () => !/\bunread\b/.test((await r.getAttribute('class')) ?? ''));
      await page.keyboard.press('s');
      await until('flagged over JMAP', async () => (await emailOf(id)).keywords.$flagged === true);
      await page.keyboard.press('s');
      await until('unflagged over JMAP', async () => !(await emailOf(id)).keywords.$flagged);
    } finally {
      await context.close();
    }
  });

  it('shows the unread count in the tab title and follows changes made elsewhere', async () => {
    await deliver(`Unread for the title ${randomUUID().slice(0, 8)}`);
    const inbox = (await mailboxes()).find((m) => m.role === 'inbox')!;
    expect(inbox.unreadEmails).toBeGreaterThan(0);
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await until('title with the count', async () => (await page.title()) === `(${inbox.unreadEmails}) ${INBOX_NAME} — Tomlinson`, 5000).catch(
        async (e: Error) => {
          throw new Error(`${e.message}; title is ${JSON.stringify(await page.title())}`);
        },
      );
      // Another client reads everything: push brings the title down to no count.
      const [[, q]] = await jmap([['Email/query', { accountId, filter: { inMailbox: inbox.id, notKeyword: '$seen' } }, 'q']]);
      const update = Object.fromEntries((q.ids as string[]).map((id) => [id, { 'keywords/$seen': true }]));
      await jmap([['Email/set', { accountId, update }, 's']]);
      await until('title without a count', async () => (await page.title()) === `${INBOX_NAME} — Tomlinson`, 8000);
    } finally {
      await context.close();
    }
  });

  it('blocks a remote image until asked, then fetches it once through our caching proxy, without any cookie', async () => {
    // A 127.0.0.1 origin standing in for a sender's tracking server: it counts what reaches it.
    const seen: { url: string; cookie?: string; referer?: string; ua?: string }[] = [];
    const gif = Buffer.from('R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==', 'base64');
    const origin = createServer((req, res) => {
      seen.push({ url: req.url ?? '', cookie: req.headers.cookie, referer: req.headers.referer, ua: req.headers['user-agent'] });
      res.writeHead(200, { 'content-type': 'image/gif', 'content-length': String(gif.length), 'cache-control': 'public, max-age=3600' });
      res.end(gif);
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const port = (origin.address() as AddressInfo).port;
    const subject = `Tracked ${randomUUID().slice(0, 8)}`;
    const pixel = `http://127.0.0.1:${port}/pixel.gif?who=alice`;
    await deliver(subject, { html: `<p>Hello there.</p><img src="${pixel}" width="1" height="1" alt="">` });
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      await open(page, subject);
      const body = page.frameLocator('article[aria-label="Message"] iframe[title="Message body"]');
      await body.getByText('Hello there.').waitFor();
      await page.waitForTimeout(500);
      expect(seen).toEqual([]);
      await reader(page).getByRole('button', { name: 'Show images' }).click();
      await until('the image fetched through the proxy', async () => seen.length > 0);
      expect(seen).toHaveLength(1);
      expect(seen[0]!.url).toBe('/pixel.gif?who=alice');
      expect(seen[0]!.cookie).toBeUndefined();
      expect(seen[0]!.referer).toBeUndefined();
      expect(seen[0]!.ua).not.toMatch(/Chrome|Mozilla/);
      const img = body.locator('img');
      await until('the image shown', async () => (await img.evaluate((el) => (el as unknown as { naturalWidth: number }).naturalWidth)) === 1);
      // Another reader of the same mail (a new page: no browser cache) gets it from our proxy's cache.
      const { context: second, page: again } = await newPage(browser);
      try {
        await login(again, h.base, ALICE, PASSWORD);
        await open(again, subject);
        await reader(again).getByRole('button', { name: 'Show images' }).click();
        const img2 = again.frameLocator('article[aria-label="Message"] iframe[title="Message body"]').locator('img');
        await until('the image shown again', async () => (await img2.evaluate((el) => (el as unknown as { naturalWidth: number }).naturalWidth)) === 1);
      } finally {
        await second.close();
      }
      expect(seen).toHaveLength(1);
    } finally {
      await context.close();
      await new Promise((r) => origin.close(r));
    }
  });

  it('signs out: the login form is back and the old cookie no longer works', async () => {
    const { context, page } = await newPage(browser);
    try {
      await login(page, h.base, ALICE, PASSWORD);
      const cookie = await sessionCookie(context, h.base);
      expect(cookie).toBeTruthy();
      const before = await h.fetch('/webmail/api/session', { headers: { cookie: `__Host-tomlinson=${cookie}` } });
      expect(before.status).toBe(200);
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByLabel('Email address').waitFor();
      expect(await sessionCookie(context, h.base)).toBeUndefined();
      const after = await h.fetch('/webmail/api/session', { headers: { cookie: `__Host-tomlinson=${cookie}` } });
      expect(after.status).toBe(401);
      const jmapAfter = await h.fetch('/jmap/session', { headers: { cookie: `__Host-tomlinson=${cookie}` } });
      expect(jmapAfter.status).toBe(401);
    } finally {
      await context.close();
    }
  });
});

describe('webmail on a phone and a desktop screen, and at 200% zoom', () => {
  for (const [label, viewport] of [
    ['phone', PHONE],
    ['desktop', DESKTOP],
  ] as const) {
    it(`${label} (${viewport.width}×${viewport.height}): login, inbox, reader and compose, screenshots kept`, async () => {
      const phone = label === 'phone';
      const { context, page } = await newPage(browser, { viewport, isMobile: phone, hasTouch: phone, deviceScaleFactor: phone ? 2 : 1 });
      try {
        await page.goto(`${h.base}/webmail/`);
        await page.getByRole('button', { name: 'Sign in' }).waitFor();
        await screenshot(page, `${label}-login`);
        await login(page, h.base, ALICE, PASSWORD);
        await row(page, 'Welcome to the webmail').first().waitFor();
        await noHorizontalScroll(page);
        await screenshot(page, `${label}-inbox`);
        await open(page, 'Welcome to the webmail');
        await noHorizontalScroll(page);
        await screenshot(page, `${label}-reader`);
        await page.getByRole('button', { name: 'Compose' }).click();
        await page.getByRole('dialog', { name: 'New message' }).getByLabel('To', { exact: true }).waitFor();
        await screenshot(page, `${label}-compose`);
      } finally {
        await context.close();
      }
    });
  }

  it('at 200% zoom (half the desktop width at twice the density) the message list is usable', async () => {
    const { context, page } = await newPage(browser, { viewport: { width: DESKTOP.width / 2, height: DESKTOP.height / 2 }, deviceScaleFactor: 2 });
    try {
      await login(page, h.base, ALICE, PASSWORD);
      const first = row(page, 'Welcome to the webmail').first();
      await first.waitFor();
      await noHorizontalScroll(page);
      // The row is on screen, wide enough to read, and opens the message.
      await first.scrollIntoViewIfNeeded();
      const box = (await first.boundingBox())!;
      expect(box.width).toBeGreaterThan(DESKTOP.width / 2 / 2);
      expect(box.x).toBeGreaterThanOrEqual(0);
      expect(box.x + box.width).toBeLessThanOrEqual(DESKTOP.width / 2 + 1);
      await screenshot(page, 'zoom200-inbox');
      await open(page, 'Welcome to the webmail');
      await screenshot(page, 'zoom200-reader');
    } finally {
      await context.close();
    }
  });
});

/** The page does not scroll sideways (WCAG 1.4.10 reflow). */
async function noHorizontalScroll(page: Page): Promise<void> {
  const { scroll, width } = await page.evaluate(() => {
    const d = (globalThis as unknown as { document: { documentElement: { scrollWidth: number; clientWidth: number } } }).document.documentElement;
    return { scroll: d.scrollWidth, width: d.clientWidth };
  });
  expect(scroll, 'document wider than the viewport').toBeLessThanOrEqual(width + 1);
}
