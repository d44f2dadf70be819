/**
 * What users send through JMAP (and so the webmail) is scanned like SMTP submissions (issue 24,
 * "Outbound"): the whole app (smtp, imap, web, workers) over HTTPS, Debian's rspamd
 * (test/support/rspamd.ts) told the user. GTUBE is refused with RFC 8621 §7.5 forbiddenToSend
 * carrying rspamd's message, and nothing is queued or delivered; rspamd's soft reject gives
 * RFC 8620 §5.3 rateLimit (the client may retry); a clean message is sent; with rspamd stopped the
 * message is sent unscanned. The webmail in Chromium shows the refusal's description, and
 * `tomlinson spam stats` (the real binary, text and --json) counts the outbound scans.
 */
import { randomUUID } from 'node:crypto';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { identityIdOf } from '../../containers/web/jmap/submission.js';
import { startCli, type CliHarness } from '../cli/support.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';
import { launchBrowser, login, newPage, startWebmailApp, type WebmailApp } from '../webmail/harness.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 240_000 });

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const PASSWORD = 'alice-password-123';
const BOB_PASSWORD = 'bob-password-12345';
const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

let rspamd: Rspamd;
let h: WebmailApp;
let cli: CliHarness;
let accountId: string;
let drafts: string;

type Response = [string, Record<string, unknown>, string][];

/** Creates a draft and submits it in one request, as the webmail does; the method responses. */
async function send(subject: string, body: string, to = BOB): Promise<Response> {
  return h.jmap(ALICE, PASSWORD, [
    [
      'Email/set',
      {
        accountId,
        create: {
          m: {
            mailboxIds: { [drafts]: true },
            keywords: { $draft: true },
            from: [{ name: 'Alice', email: ALICE }],
            to: [{ email: to }],
            subject,
            textBody: [{ partId: '1', type: 'text/plain' }],
            bodyValues: { '1': { value: body } },
          },
        },
      },
      '0',
    ],
    ['EmailSubmission/set', { accountId, create: { s: { identityId: identityIdOf(ALICE), emailId: '#m' } } }, '1'],
  ]);
}

const submissionOf = (r: Response) => r.find(([name]) => name === 'EmailSubmission/set')![1];

/** Submission records Alice has (EmailSubmission/get). */
async function submissions(): Promise<unknown[]> {
  const [[, got]] = await h.jmap(ALICE, PASSWORD, [['EmailSubmission/get', { accountId, ids: null }, 'g']]);
  return got.list as unknown[];
}

/** Subjects in Bob's INBOX. */
async function bobsSubjects(): Promise<string[]> {
  const bobAccount = await h.accountId(BOB, BOB_PASSWORD);
  const [, [, got]] = await h.jmap(BOB, BOB_PASSWORD, [
    ['Email/query', { accountId: bobAccount, filter: { inMailbox: 'INBOX' } }, 'q'],
    ['Email/get', { accountId: bobAccount, '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' }, properties: ['subject'] }, 'g'],
  ]);
  return (got.list as { subject: string }[]).map((e) => e.subject);
}

/** Today's `spam stats --json` row, read by the real binary from the app's data folder. */
async function statsToday(): Promise<Record<string, number>> {
  const r = await cli.run(['--json', 'spam', 'stats'], { env: { TOMLINSON_DATA_DIR: h.dir } });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as Record<string, number>[])[0] ?? {};
}

/** Polls the counters (written off the request's path) until `want` holds. */
async function statsReach(want: Record<string, number>): Promise<Record<string, number>> {
  let today: Record<string, number> = {};
  for (let i = 0; i < 50; i++) {
    today = await statsToday();
    if (Object.entries(want).every(([k, v]) => today[k] === v)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return today;
}

beforeAll(async () => {
  [rspamd, cli] = await Promise.all([
    startRspamd({
      local: {
        'multimap.conf': `TEST_SOFT_REJECT { type = "header"; header = "Subject"; regexp = true; map = "\${LOCAL_CONFDIR}/local.d/soft-subjects.map"; action = "soft reject"; message = "Deferred by test"; }\n`,
        'soft-subjects.map': '/please defer me/i\n',
      },
    }),
    startCli(),
  ]);
  h = await startWebmailApp({ env: { TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: rspamd.url } });
  await h.addUser(ALICE, PASSWORD);
  await h.addUser(BOB, BOB_PASSWORD);
  accountId = await h.accountId(ALICE, PASSWORD);
  const [[, boxes]] = await h.jmap(ALICE, PASSWORD, [['Mailbox/get', { accountId }, 'm']]);
  drafts = (boxes.list as { id: string; role: string | null }[]).find((b) => b.role === 'drafts')!.id;
});

afterAll(async () => {
  await h?.close();
  await rspamd?.stop();
  await cli?.cleanup();
});

describe('JMAP EmailSubmission and the outbound spam scan', () => {
  it('refuses GTUBE with forbiddenToSend and rspamd’s message; no submission, nothing delivered', async () => {
    const r = await send('Totally legitimate', GTUBE);
    const s = submissionOf(r);
    expect(s.created ?? {}).toEqual({});
    expect(s.notCreated).toEqual({ s: { type: 'forbiddenToSend', description: 'Message rejected as spam: Gtube pattern; it was not sent' } });
    expect(await submissions()).toEqual([]);
  });

  it('answers rspamd’s soft reject with rateLimit, which the client may retry', async () => {
    const s = submissionOf(await send('Please defer me', 'An ordinary note about the weekend.'));
    expect(s.notCreated).toEqual({ s: { type: 'rateLimit', description: 'Deferred by test; the message was not sent, try again later' } });
    expect(await submissions()).toEqual([]);
  });

  it('sends a clean message; the refused ones never arrive', async () => {
    const subject = `Lunch ${randomUUID().slice(0, 8)}`;
    const s = submissionOf(await send(subject, 'Shall we meet at noon by the fountain?'));
    expect(Object.keys(s.created as object)).toEqual(['s']);
    await h.waitForEmail(BOB, BOB_PASSWORD, subject);
    expect(await bobsSubjects()).toEqual([subject]);
    expect(await submissions()).toHaveLength(1);
  });

  it('counts the outbound scans in `spam stats` (--json and text)', async () => {
    const today = await statsReach({ outboundScanned: 3, outboundRejected: 1, outboundDeferred: 1 });
    expect(today).toMatchObject({ outboundScanned: 3, outboundRejected: 1, outboundDeferred: 1, outboundSkipped: 0, scanned: 0 });
    const text = await cli.run(['spam', 'stats'], { env: { TOMLINSON_DATA_DIR: h.dir } });
    expect(text.code).toBe(0);
    const lines = text.stdout.split('\n');
    const at = lines.findIndex((l) => /^DAY +OUT_SCANNED +OUT_REJECTED +OUT_DEFERRED +OUT_SKIPPED +DNSBL_REFUSED$/.test(l));
    expect(at, text.stdout).toBeGreaterThan(0);
    expect(lines[at + 1]).toMatch(/^\d{4}-\d\d-\d\d +3 +1 +1 +0 +0$/);
  });

  describe('in the webmail (Chromium)', () => {
    let browser: Browser;
    beforeAll(async () => {
      browser = await launchBrowser();
    });
    afterAll(async () => browser?.close());

    it('shows rspamd’s refusal to the person sending, and keeps the message open to edit', async () => {
      const { context, page } = await newPage(browser);
      try {
        await login(page, h.base, ALICE, PASSWORD);
        await page.getByRole('button', { name: 'Compose' }).click();
        const dialog = page.getByRole('dialog', { name: 'New message' });
        await dialog.getByLabel('To', { exact: true }).fill(BOB);
        await dialog.getByLabel('Subject', { exact: true }).fill('From the browser');
        await dialog.getByLabel('Message', { exact: true }).fill(GTUBE);
        await dialog.getByRole('button', { name: 'Send' }).click();
        const alert = dialog.getByRole('alert');
        await alert.waitFor();
        expect(await alert.innerText()).toBe('Not sent: Message rejected as spam: Gtube pattern; it was not sent');
        expect(await dialog.getByRole('button', { name: 'Send' }).isEnabled()).toBe(true);
        // Sending again is refused again, and the refused message stays one draft, not two.
        const answered = page.waitForResponse((r) => r.url().includes('/jmap/api') && (r.request().postData() ?? '').includes('EmailSubmission/set'));
        await dialog.getByRole('button', { name: 'Send' }).click();
        await answered;
        await alert.waitFor();
        expect(await alert.innerText()).toBe('Not sent: Message rejected as spam: Gtube pattern; it was not sent');
        const [[, q]] = await h.jmap(ALICE, PASSWORD, [['Email/query', { accountId, filter: { inMailbox: drafts, subject: 'From the browser' } }, 'q']]);
        expect(q.ids).toHaveLength(1);
      } finally {
        await context.close();
      }
      expect(await submissions()).toHaveLength(1);
    });
  });

  it('sends unscanned when rspamd is stopped, and counts the skipped scan', async () => {
    await rspamd.kill();
    const subject = `Unscanned ${randomUUID().slice(0, 8)}`;
    const s = submissionOf(await send(subject, GTUBE));
    expect(Object.keys(s.created as object)).toEqual(['s']);
    await h.waitForEmail(BOB, BOB_PASSWORD, subject);
    expect(await statsReach({ outboundSkipped: 1 })).toMatchObject({ outboundSkipped: 1 });
  });
});
