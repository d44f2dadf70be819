/**
 * The whole app (`serve smtp,imap,web,workers` on ephemeral ports over local storage) with real
 * clients side by side on one mailbox: a third-party JMAP client from npm (jmap-jam, with an app
 * password as its bearer token), IMAP over a socket, and SMTP. Issue 22's "one truth" rules: a
 * keyword set over JMAP reaches an idling IMAP session at once, an IMAP EXPUNGE shows in
 * Email/changes and push, a delivery is pushed within 1 s of its 250, and a message sent with
 * EmailSubmission arrives and is filed in Sent.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import JamClient from 'jmap-jam';
import { Agent, fetch, getGlobalDispatcher, setGlobalDispatcher, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { AppPasswords } from '../../core/accounts/app-passwords.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { RawImap } from '../imap/raw-client.js';
import { basic } from './harness.js';

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const CAROL = 'carol@example.test';
const PASSWORD = 'password-one-truth';

let dir: string;
let app: App;
let agent: Agent;
let previous: Dispatcher;
let ports: Record<string, number>;
let jam: JamClient;
let accountId: string;

const portOf = (name: string) =>
  Number(
    app.listeners
      .flatMap((l) => l.addresses)
      .find((a) => a.startsWith(`${name} `))!
      .split(':')
      .pop(),
  );

/** One SMTP delivery on the MX port; resolves at the 250 after DATA. */
function smtpDeliver(to: string, subject: string, body = 'hello'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(ports.smtp!, '127.0.0.1');
    const steps = [
      'EHLO client.test\r\n',
      'MAIL FROM:<someone@remote.test>\r\n',
      `RCPT TO:<${to}>\r\n`,
      'DATA\r\n',
      `From: someone@remote.test\r\nTo: ${to}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@remote.test>\r\n\r\n${body}\r\n.\r\n`,
    ];
    let buf = '';
    s.setTimeout(10_000, () => reject(new Error('SMTP timed out')));
    s.on('error', reject);
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n'); i >= 0; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (line[3] === '-') continue;
        if (!/^[23]/.test(line)) return reject(new Error(`SMTP: ${line}`));
        const next = steps.shift();
        if (next) s.write(next);
        else {
          const at = performance.now();
          s.end('QUIT\r\n');
          return resolve(at);
        }
      }
    });
  });
}

/** The ids of INBOX's Emails with `subject` in their subject, once the inbound worker filed one. */
async function arrived(subject: string): Promise<string[]> {
  for (let i = 0; i < 100; i++) {
    const [q] = await jam.api.Email.query({ accountId, filter: { inMailbox: 'INBOX', subject } });
    if (q.ids.length) return [...q.ids];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no Email with subject ${subject} within 5 s`);
}

/** An EventSource stream read by hand (Node 20 has no EventSource): resolves each StateChange. */
async function pushStream(): Promise<{ next(timeoutMs: number): Promise<{ at: number; changed: Record<string, Record<string, string>> }>; close(): void }> {
  const session = (await jam.session) as { eventSourceUrl: string };
  const url = session.eventSourceUrl.replace('{types}', '*').replace('{closeafter}', 'no').replace('{ping}', '0');
  const ac = new AbortController();
  const res = await fetch(url, { headers: { authorization: basic(ALICE, PASSWORD) }, dispatcher: agent, signal: ac.signal });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const queue: { at: number; changed: Record<string, Record<string, string>> }[] = [];
  let wake: (() => void) | undefined;
  let buf = '';
  void (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        buf += Buffer.from(value).toString('utf8');
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const event = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = event
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5))
            .join('\n');
          if (!data) continue;
          const parsed = JSON.parse(data) as { changed?: Record<string, Record<string, string>> };
          if (parsed.changed) queue.push({ at: performance.now(), changed: parsed.changed });
          wake?.();
        }
      }
    } catch {
      /* aborted */
    }
  })();
  return {
    async next(timeoutMs) {
      const deadline = performance.now() + timeoutMs;
      while (!queue.length) {
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`no StateChange within ${timeoutMs} ms`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, left).unref();
        });
      }
      return queue.shift()!;
    },
    close: () => ac.abort(),
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-one-truth-'));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_LISTEN_HOST: '127.0.0.1',
    TOMLINSON_SMTP_PORT: '0',
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_IMAPS_PORT: '0',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_LOG_LEVEL: 'silent',
  });
  app = await startApp(config, ['smtp', 'imap', 'web', 'workers'], silentLogger);
  ports = { smtp: portOf('mx'), imap: portOf('imap'), web: portOf('web') };
  const accounts = new Accounts(app.storage.tables);
  await accounts.addDomain('example.test');
  await accounts.addUser(ALICE, PASSWORD);
  await accounts.addUser(BOB, PASSWORD);
  await accounts.addUser(CAROL, PASSWORD);
  const token = (await new AppPasswords(app.storage.tables, accounts).add(ALICE, 'jmap-jam')).password;
  // jmap-jam uses the global fetch; trust the listener's self-signed certificate for this file.
  agent = new Agent({ connect: { rejectUnauthorized: false } });
  previous = getGlobalDispatcher();
  setGlobalDispatcher(agent);
  jam = new JamClient({ sessionUrl: `https://127.0.0.1:${ports.web}/.well-known/jmap`, bearerToken: token });
  accountId = (await jam.getPrimaryAccount())!;
}, 60_000);

afterAll(async () => {
  if (previous) setGlobalDispatcher(previous);
  await app?.close(2000);
  await agent?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('JMAP, IMAP and SMTP on one mailbox', () => {
  it('pushes a delivery within 1 s of its 250, and a JMAP client from npm reads it', async () => {
    const push = await pushStream();
    try {
      const okAt = await smtpDeliver(ALICE, 'first light');
      const event = await push.next(5000);
      expect(event.changed[accountId]?.Email).toBeTruthy();
      expect(event.at - okAt).toBeLessThan(1000);
    } finally {
      push.close();
    }
    const [r] = await jam.requestMany((t) => {
      const q = t.Email.query({ accountId, filter: { inMailbox: 'INBOX' }, sort: [{ property: 'receivedAt', isAscending: false }], limit: 10 });
      const got = t.Email.get({ accountId, ids: q.$ref('/ids'), properties: ['id', 'subject', 'from', 'mailboxIds', 'keywords', 'preview', 'blobId'] });
      return { q, got };
    });
    expect(r.got.list.map((e) => e.subject)).toEqual(['first light']);
    expect(r.got.list[0]!.from).toEqual([{ name: null, email: 'someone@remote.test' }]);
    expect(r.got.list[0]!.mailboxIds).toEqual({ INBOX: true });
    expect(r.got.list[0]!.preview).toBe('hello');
  });

  it('shows a keyword set over JMAP in an idling IMAP session at once', async () => {
    const imap = await RawImap.connect(ports.imap!);
    try {
      await imap.command(`LOGIN ${ALICE} ${PASSWORD}`);
      await imap.command('SELECT INBOX');
      const [q] = await jam.api.Email.query({ accountId, filter: { inMailbox: 'INBOX' } });
      const id = q.ids[0]!;
      const from = imap.lines.length;
      imap.send('I1 IDLE\r\n');
      await imap.waitFor(/^\+ /, 5000, from);
      const t0 = performance.now();
      const [set] = await jam.api.Email.set({ accountId, update: { [id]: { 'keywords/$flagged': true } } });
      expect(Object.keys(set.updated ?? {})).toEqual([id]);
      const line = await imap.waitFor(/^\* 1 FETCH \(.*FLAGS \(.*\\Flagged/, 2000, from);
      expect(line).toContain('\\Flagged');
      expect(performance.now() - t0).toBeLessThan(1000);
      imap.send('DONE\r\n');
      await imap.waitFor(/^I1 OK/, 5000, from);
    } finally {
      imap.close();
    }
  });

  it('reports an IMAP EXPUNGE in Email/changes and in push', async () => {
    await smtpDeliver(ALICE, 'to be expunged');
    const ids = await arrived('expunged');
    expect(ids).toHaveLength(1);
    const [before] = await jam.api.Email.get({ accountId, ids: [] });
    const push = await pushStream();
    const imap = await RawImap.connect(ports.imap!);
    try {
      await imap.command(`LOGIN ${ALICE} ${PASSWORD}`);
      await imap.command('SELECT INBOX');
      const search = await imap.command('UID SEARCH SUBJECT "to be expunged"');
      const uid = /\* SEARCH (\d+)/.exec(search.untagged.join('\n'))![1];
      await imap.command(`UID STORE ${uid} +FLAGS.SILENT (\\Deleted)`);
      await imap.command(`UID EXPUNGE ${uid}`);
      // Two changes (the flag, then the expunge); push may fold them into one event.
      const event = await push.next(5000);
      expect(event.changed[accountId]?.Email).toBeTruthy();
    } finally {
      push.close();
      imap.close();
    }
    const [changes] = await jam.api.Email.changes({ accountId, sinceState: before.state });
    expect(changes.destroyed).toEqual(ids);
    expect(changes.created).toEqual([]);
  });

  it('uploads a file, imports it as an Email, and downloads it byte for byte', async () => {
    const raw = `From: ${ALICE}\r\nTo: ${ALICE}\r\nSubject: imported\r\nMessage-ID: <imported@example.test>\r\n\r\n${'x'.repeat(70)}\r\n`;
    const up = await jam.uploadBlob(accountId, new Blob([raw], { type: 'message/rfc822' }));
    expect(up.size).toBe(Buffer.byteLength(raw));
    const [imp] = await jam.api.Email.import({
      accountId,
      emails: { a: { blobId: up.blobId, mailboxIds: { INBOX: true }, keywords: { $seen: true }, receivedAt: new Date().toISOString() } },
    });
    const created = imp.created!.a!;
    const res = await jam.downloadBlob({ accountId, blobId: created.blobId, mimeType: 'message/rfc822', fileName: 'imported.eml' });
    expect(Buffer.from(await res.arrayBuffer()).toString('latin1')).toBe(raw);
  });

  it('sends a draft with EmailSubmission: Bob and the Bcc recipient receive it over IMAP without the Bcc, and the copy moves to Sent', async () => {
    const [boxes] = await jam.api.Mailbox.get({ accountId });
    const role = (r: string) => boxes.list.find((b) => b.role === r)?.id;
    expect(role('inbox')).toBe('INBOX');
    const drafts = role('drafts')!;
    const sent = role('sent')!;
    expect(drafts && sent).toBeTruthy();
    const [identities] = await jam.api.Identity.get({ accountId });
    const identityId = identities.list.find((i) => i.email === ALICE)!.id;
    // The creates by hand over HTTPS: jmap-jam's types ask for server-set properties (size,
    // isTruncated) in a create, which RFC 8621 §4.6 does not.
    const res = await fetch(`https://127.0.0.1:${ports.web}/jmap/api/`, {
      method: 'POST',
      dispatcher: agent,
      headers: { authorization: basic(ALICE, PASSWORD), 'content-type': 'application/json' },
      body: JSON.stringify({
        using: ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail', 'urn:ietf:params:jmap:submission'],
        methodCalls: [
          [
            'Email/set',
            {
              accountId,
              create: {
                d: {
                  mailboxIds: { [drafts]: true },
                  keywords: { $draft: true, $seen: true },
                  from: [{ name: 'Alice', email: ALICE }],
                  to: [{ name: 'Bob', email: BOB }],
                  bcc: [{ name: 'Carol', email: CAROL }],
                  subject: 'lunch?',
                  bodyValues: { b: { value: 'At noon.' } },
                  textBody: [{ partId: 'b', type: 'text/plain' }],
                },
              },
            },
            'e',
          ],
          [
            'EmailSubmission/set',
            {
              accountId,
              create: { s: { identityId, emailId: '#d' } },
              onSuccessUpdateEmail: { '#s': { [`mailboxIds/${drafts}`]: null, [`mailboxIds/${sent}`]: true, 'keywords/$draft': null } },
            },
            's',
          ],
        ],
      }),
    });
    expect(res.status).toBe(200);
    const responses = ((await res.json()) as { methodResponses: [string, Record<string, Record<string, Record<string, string>>>, string][] }).methodResponses;
    expect(responses.map(([name, , tag]) => `${name} ${tag}`)).toEqual(['Email/set e', 'EmailSubmission/set s', 'Email/set s']);
    const emailId = responses[0]![1].created!.d!.id!;
    expect(responses[1]![1].created!.s).toBeTruthy();
    expect(Object.keys(responses[2]![1].updated ?? {})).toEqual([emailId]);

    // Bob's and Carol's INBOX over IMAP: the worker delivers it a moment later.
    for (const who of [BOB, CAROL]) {
      const imap = await RawImap.connect(ports.imap!);
      try {
        await imap.command(`LOGIN ${who} ${PASSWORD}`);
        let found = '';
        for (let i = 0; i < 50 && !found; i++) {
          await imap.command('SELECT INBOX');
          found = (await imap.command('UID SEARCH SUBJECT "lunch?"')).untagged.find((l) => /^\* SEARCH \d/.test(l)) ?? '';
          if (!found) await new Promise((res) => setTimeout(res, 100));
        }
        expect(found, who).toMatch(/^\* SEARCH \d+/);
        const got = (await imap.command(`UID FETCH ${found.split(' ')[2]} BODY.PEEK[]`)).untagged.join('\n');
        expect(got).toContain('At noon.');
        // RFC 5322 §3.6.3: the copy sent shows no Bcc.
        expect(got).not.toMatch(/^bcc:/im);
        expect(got).not.toContain('Carol <carol@');
      } finally {
        imap.close();
      }
    }
    const [after] = await jam.api.Email.get({ accountId, ids: [emailId], properties: ['mailboxIds', 'keywords', 'bcc'] });
    expect(after.list[0]!.mailboxIds).toEqual({ [sent]: true });
    // The sender's copy keeps whom it went to.
    expect(after.list[0]!.bcc).toEqual([{ name: 'Carol', email: CAROL }]);
    expect(after.list[0]!.keywords).toEqual({ $seen: true });
  });
});
