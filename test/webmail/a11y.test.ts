/**
 * Accessibility of the webmail's main screens (issue 23: "labels for screen readers", "no serious
 * violations"): axe-core runs inside Chromium on the login form, the inbox, the reader, the compose
 * dialog and the settings dialog; any violation of `serious` or `critical` impact fails the test and
 * is printed (rule, elements, what to fix). Fresh browser context per screen.
 */
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { axeSerious, formatViolations, launchBrowser, login, newPage, reader, row, startWebmailApp, type WebmailApp } from './harness.js';

const ALICE = 'alice@example.test';
const PASSWORD = 'alice-a11y-password';

let h: WebmailApp;
let browser: Browser;

beforeAll(async () => {
  h = await startWebmailApp();
  await h.addUser(ALICE, PASSWORD);
  await h.deliver({ to: ALICE, subject: 'Plain words', text: 'A short plain text message.' });
  await h.deliver({
    to: ALICE,
    subject: 'Some HTML',
    from: 'News <news@remote.test>',
    html: '<h1>Hello</h1><p>An <a href="https://example.org/">HTML</a> message with a table:</p><table><tr><td>1</td><td>2</td></tr></table>',
  });
  await h.waitForEmail(ALICE, PASSWORD, 'Some HTML');
  browser = await launchBrowser();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await h?.close();
});

/** Opens a fresh context, brings it to a screen with `to`, and checks it with axe. */
async function check(to: (page: Page) => Promise<void>): Promise<void> {
  const { context, page } = await newPage(browser);
  try {
    await to(page);
    const serious = await axeSerious(page);
    expect(serious, `axe-core found serious or critical violations:\n${formatViolations(serious)}`).toEqual([]);
  } finally {
    await context.close();
  }
}

describe('axe-core on the webmail: no serious or critical violations', () => {
  it('login', async () => {
    await check(async (page) => {
      await page.goto(`${h.base}/webmail/`);
      await page.getByRole('button', { name: 'Sign in' }).waitFor();
    });
  });

  it('login with an error shown', async () => {
    await check(async (page) => {
      await page.goto(`${h.base}/webmail/`);
      await page.getByLabel('Email address').fill(ALICE);
      await page.getByLabel('Password').fill('wrong');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('alert').waitFor();
    });
  });

  it('inbox', async () => {
    await check(async (page) => {
      await login(page, h.base, ALICE, PASSWORD);
      await row(page, 'Plain words').first().waitFor();
    });
  });

  it('reader (an HTML message)', async () => {
    await check(async (page) => {
      await login(page, h.base, ALICE, PASSWORD);
      await row(page, 'Some HTML').first().click();
      await reader(page).getByRole('heading', { level: 2, name: 'Some HTML' }).waitFor();
      // The body: in its sandboxed frame (contract), or as text while the frame is not built yet.
      await reader(page).locator('iframe[title="Message body"]').or(reader(page).getByText('message with a table')).first().waitFor();
    });
  });

  it('compose', async () => {
    await check(async (page) => {
      await login(page, h.base, ALICE, PASSWORD);
      await page.getByRole('button', { name: 'Compose' }).click();
      await page.getByRole('dialog', { name: 'New message' }).getByLabel('To', { exact: true }).waitFor();
    });
  });

  it('settings', async () => {
    await check(async (page) => {
      await login(page, h.base, ALICE, PASSWORD);
      await page.getByRole('button', { name: 'Settings' }).click();
      await page.getByRole('dialog', { name: 'Settings' }).getByLabel('Send a vacation reply').waitFor();
    });
  });
});
