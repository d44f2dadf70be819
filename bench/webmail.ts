/**
 * Webmail speed in the browser (issue 23): Debian's Chromium (playwright-core) against the whole
 * app (`serve smtp,imap,web,proxy,workers` in this process, test/webmail/harness.ts) over a
 * mailbox of 10,000 messages. Two figures, each measured in the page's own clock
 * (performance.now(), so the test driver's round trips are not in them):
 *
 * - first inbox paint after login: from the login form's submit event to the animation frame in
 *   which the first message row (`[role=listbox][aria-label=Messages] [role=option]`) is in the
 *   DOM, i.e. the frame that paints it. Each run is a fresh browser context (no cookies, empty
 *   cache), so the app's assets load as on a first visit after the HTML.
 * - open a message: from the click on a row (the event's timeStamp) to the frame in which the
 *   reader (`article[aria-label=Message]`) shows that row's subject in its h2 and the first line of
 *   its body, in the plain-text body or in the document of the body frame
 *   (`iframe[title="Message body"]`, displayed).
 *
 * One unmeasured warm-up run first (the server's first look at the mailbox, the page cache), then
 * `runs` runs (default 20) of one login and one open each; p50 and p99 over them. Targets: inbox
 * under 1 s, open under 150 ms.
 *
 * `npx tsx bench/webmail.ts [--webmail-runs 20] [--webmail-messages 10000]`, or with the others:
 * `npm run bench -- webmail` and `npm run bench -- --peers webmail` (no peer: ours alone, the same
 * table).
 */
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { syncMessage } from './imap.js';
import { OURS, reportText, summarize, type ProtocolReport, type Sample } from './peers/report.js';
import { quantile } from './peers/util.js';
import { launchBrowser, newPage, startWebmailApp, type WebmailApp } from '../test/webmail/harness.js';

const USER = 'reader@bench.example';
const PASSWORD = 'bench-webmail-password';
const INBOX_TARGET_MS = 1000;
const OPEN_TARGET_MS = 150;
const INBOX_SCENARIO = 'first inbox paint after login';
const OPEN_SCENARIO = 'open a message';

export interface WebmailBenchOptions {
  /** Measured runs. @default 20 */
  runs?: number;
  /** Messages in the INBOX. @default 10000 */
  messages?: number;
  say?: (s: string) => void;
}

/*
 * The watchers run in the page and read only its clock. They are plain JavaScript in strings: a
 * function handed to page.evaluate from here would carry the TypeScript loader's helpers (__name)
 * into a page that has none.
 */

/** Resolves window.__inboxMs with the time from the login form's submit to the frame showing the first row. */
const INBOX_WATCH = `(() => {
  let submitted = NaN;
  document.addEventListener('submit', () => { submitted = performance.now(); }, { capture: true, once: true });
  window.__inboxMs = new Promise((resolve) => {
    const obs = new MutationObserver(() => {
      if (Number.isNaN(submitted) || !document.querySelector('[role="listbox"][aria-label="Messages"] [role="option"][data-email-id]')) return;
      obs.disconnect();
      requestAnimationFrame(() => resolve(performance.now() - submitted));
    });
    obs.observe(document, { subtree: true, childList: true });
  });
})()`;

/**
 * Resolves window.__openMs with the time from the next click to the frame in which the reader shows
 * `subject` in its h2 and `text` (from the message's body) in its body: in the plain-text body, or
 * in the document of the body frame, which must be displayed. The frame's document is watched too
 * (it is same-origin to the page), since a body swapped into it changes nothing in the page's own
 * tree, and a frame that loads a new document says so with its load event.
 */
const OPEN_WATCH = (subject: string, text: string) => `(() => {
  const subject = ${JSON.stringify(subject)};
  const text = ${JSON.stringify(text)};
  let clicked = NaN;
  let done = false;
  document.addEventListener('click', (e) => { clicked = e.timeStamp; }, { capture: true, once: true });
  window.__openMs = new Promise((resolve) => {
    const watched = new WeakSet();
    const check = () => {
      if (done) return;
      const article = document.querySelector('article[aria-label="Message"]');
      const h2 = article && article.querySelector('h2');
      if (Number.isNaN(clicked) || !h2 || h2.textContent.trim() !== subject) return;
      const frame = article.querySelector('iframe[title="Message body"]');
      const doc = frame && frame.contentDocument;
      if (frame && !watched.has(frame)) {
        watched.add(frame);
        frame.addEventListener('load', check);
      }
      if (doc && !watched.has(doc)) {
        watched.add(doc);
        new MutationObserver(check).observe(doc, { subtree: true, childList: true, characterData: true });
      }
      const inText = [...article.querySelectorAll('.text-body')].some((el) => el.textContent.includes(text));
      const inFrame = !!doc && !!doc.body && doc.body.textContent.includes(text) && frame.checkVisibility() && frame.getBoundingClientRect().height > 0;
      if (!inText && !inFrame) return;
      done = true;
      obs.disconnect();
      requestAnimationFrame(() => resolve(performance.now() - clicked));
    };
    const obs = new MutationObserver(check);
    obs.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
  });
})()`;

/** Waits for a promise the page keeps in window[name], for at most 15 s. */
const AWAIT = (name: string) =>
  `Promise.race([window.${name}, new Promise((_, reject) => setTimeout(() => reject(new Error('${name}: nothing within 15 s')), 15000))])`;

/** Signs in through the form and resolves with the page-clock time from submit to the first row's frame. */
async function timedLogin(page: Page, base: string): Promise<number> {
  await page.goto(`${base}/webmail/`);
  await page.getByLabel('Email address').fill(USER);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.evaluate(INBOX_WATCH);
  await page.getByRole('button', { name: 'Sign in' }).click();
  return (await page.evaluate(AWAIT('__inboxMs'))) as number;
}

/** Clicks the `index`-th row and resolves with the page-clock time from the click to the reader showing it. */
async function timedOpen(page: Page, index: number): Promise<number> {
  const rowLocator = page.getByRole('listbox', { name: 'Messages' }).locator('[role="option"][data-email-id]').nth(index);
  const found = /sync message (\d+)/.exec(await rowLocator.innerText());
  if (!found) throw new Error(`row ${index} shows no seeded subject: ${await rowLocator.innerText()}`);
  // The first line of the body syncMessage writes (in the text part and in the HTML part).
  await page.evaluate(OPEN_WATCH(found[0], `Hello, this is message ${found[1]} with a `));
  await rowLocator.click();
  return (await page.evaluate(AWAIT('__openMs'))) as number;
}

/** One login and one open in a fresh context. */
async function oneRun(browser: Browser, h: WebmailApp, run: number): Promise<{ inboxMs: number; openMs: number }> {
  const { context, page } = await newPage(browser);
  try {
    const inboxMs = await timedLogin(page, h.base);
    // A different row each run among the first screenful, never the first one a UI may open itself.
    const openMs = await timedOpen(page, 1 + (run % 8));
    return { inboxMs, openMs };
  } finally {
    await context.close();
  }
}

export async function runWebmailBench(options: WebmailBenchOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 20;
  const messages = options.messages ?? 10_000;
  const say = options.say ?? (() => undefined);
  const h = await startWebmailApp();
  let browser: Browser | undefined;
  const inbox: number[] = [];
  const open: number[] = [];
  const problems: string[] = [];
  try {
    await h.addUser(USER, PASSWORD);
    const t0 = performance.now();
    await h.seed(USER, messages, (i) => syncMessage(i, messages, 2048));
    say(`webmail: seeded ${messages} messages in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    browser = await launchBrowser();
    const warm = await oneRun(browser, h, 0);
    say(`webmail: warm-up inbox ${warm.inboxMs.toFixed(0)} ms, open ${warm.openMs.toFixed(0)} ms (not counted)`);
    for (let run = 1; run <= runs; run++) {
      try {
        const r = await oneRun(browser, h, run);
        inbox.push(r.inboxMs);
        open.push(r.openMs);
        say(`webmail run ${run}: inbox ${r.inboxMs.toFixed(0)} ms, open ${r.openMs.toFixed(0)} ms`);
      } catch (e) {
        problems.push(`run ${run}: ${(e as Error).message}`);
        say(`webmail run ${run}: ${(e as Error).stack ?? (e as Error).message}`);
      }
    }
  } finally {
    await browser?.close();
    await h.close();
  }
  const sample = (scenario: string, xs: number[]): Sample[] =>
    xs.length
      ? [
          {
            scenario,
            server: OURS,
            run: 1,
            value: 1000 / (xs.reduce((a, b) => a + b, 0) / xs.length),
            p50Ms: quantile(xs, 0.5),
            p99Ms: quantile(xs, 0.99),
            note: `${xs.length} runs`,
          },
        ]
      : [];
  const verdict = (name: string, xs: number[], target: number) =>
    xs.length
      ? `${name}: p50 ${quantile(xs, 0.5).toFixed(0)} ms, p99 ${quantile(xs, 0.99).toFixed(0)} ms, target < ${target} ms: ${quantile(xs, 0.5) < target ? 'met' : 'NOT met'} at p50, ${quantile(xs, 0.99) < target ? 'met' : 'not met'} at p99.`
      : `${name}: no run finished.`;
  const rep = summarize(
    'Webmail in Chromium',
    'op/s',
    [...sample(`${INBOX_SCENARIO} (${messages.toLocaleString('en')} messages)`, inbox), ...sample(OPEN_SCENARIO, open)],
    [
      `Debian's Chromium (headless, playwright-core) against the whole app in one process over local storage; an INBOX of ${messages.toLocaleString('en')} messages of about 2 KB. Times in the page's own clock: submit of the login form to the frame showing the first message row (fresh context each run: no cookies, empty cache); click on a row to the frame in which the reader shows its subject and the first line of its body (in the text body, or in the displayed body frame's document). One unmeasured warm-up run, then each run one login and one open; op/s is 1000 / the mean time.`,
      verdict('first inbox paint', inbox, INBOX_TARGET_MS),
      verdict('open a message', open, OPEN_TARGET_MS),
    ],
  );
  // The ours/peer note does not apply: there is no peer webmail.
  rep.notes = rep.notes.filter((n) => !n.startsWith('ours/peer'));
  if (problems.length) rep.problems = problems;
  return rep;
}

function flag(name: string): number | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name} needs a positive whole number`);
  return v;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const rep = await runWebmailBench({ runs: flag('webmail-runs'), messages: flag('webmail-messages'), say: (s) => process.stderr.write(`  ${s}\n`) });
  process.stdout.write(`${reportText(rep)}\n`);
  if (rep.problems?.length) process.exitCode = 1;
}
