/**
 * Learning changes later scores (issue 24, "learn from a move, then see the score change"): Debian's
 * rspamd with its controller and Bayes in a Redis started by the test (test/support/redis.ts, as
 * the shipped classifier-bayes.conf has it, with min_learns lowered to 5), messages moved into Junk
 * over IMAP (Python's imaplib, UID MOVE) and out of it again, the lessons taught by the inbound
 * worker's learn jobs, then a new message like them scanned through /checkv2: BAYES_SPAM (and a
 * higher score) for one like the junk, BAYES_HAM (and a lower score) for one like the mail moved
 * back out, where the same scans before any lesson had no Bayes symbol at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { LESSON_PK } from '../../core/mail/spam-learn.js';
import { RspamdClient, isSkipped, type SpamVerdict } from '../../core/mail/spam.js';
import { INBOX } from '../../core/mailbox/keys.js';
import type { JobContext } from '../../core/workers/job.js';
import { addImapUsers, imaplib, imapPassword, startImapHarness, type ImapHarness } from '../imap/harness.js';
import { startRedis, type Redis } from '../support/redis.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';

const ANN = 'ann@example.com';
/** Lessons of each kind: more than min_learns (5), as some may be refused once Bayes is sure. */
const N = 8;
let redis: Redis;
let rspamd: Rspamd;
let h: ImapHarness;
let ctx: JobContext;
let scanner: RspamdClient;

const SPAM_WORDS =
  'cheap replica watches discount offer limited stock hurry winner prize claim casino bonus lottery pills viagra crypto investment guaranteed'.split(' ');
const HAM_WORDS =
  'meeting agenda quarterly review budget minutes project timeline draft report colleague schedule thursday office invoice attached regards'.split(' ');

/** A message of 60 words drawn from `words`, stepping through them by 3 to 6 from a start that
 * differs with `n`: messages alike in words and word pairs (Bayes's OSB tokens), none the same. */
function message(kind: 'spam' | 'ham', n: number): string {
  const words = kind === 'spam' ? SPAM_WORDS : HAM_WORDS;
  const body = Array.from({ length: 60 }, (_, i) => words[(i * (3 + (n % 4)) + n) % words.length]).join(' ');
  const from = kind === 'spam' ? `Seller ${n} <seller${n}@offers.example>` : `Bob ${n} <bob@partner.example>`;
  return `From: ${from}\r\nTo: ${ANN}\r\nSubject: ${kind} ${n}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <${kind}${n}@bayes.example>\r\n\r\n${body}\r\n`;
}

async function scan(raw: string): Promise<SpamVerdict> {
  const r = await scanner.scan(Buffer.from(raw), { from: 'x@sender.example', rcpts: [ANN], ip: '192.0.2.7', helo: 'sender.example', queueId: 'bayes' });
  if (isSkipped(r)) throw new Error(`scan skipped: ${r.skipped} ${r.detail ?? ''}`);
  return r;
}

const bayes = (v: SpamVerdict) => v.symbols.filter((s) => s.startsWith('BAYES_'));

/** Works the learn jobs the IMAP listener queues after its move commits, as the inbound worker
 * does, until no lesson is left (bounded: 10 s of waiting for the queue). Returns how many. */
async function workLessons(): Promise<number> {
  let worked = 0;
  for (let idle = 0; idle < 200;) {
    const batch = await h.storage.queues.receive('inbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    if (!batch.length) {
      if (worked && !(await h.storage.tables.query(LESSON_PK)).items.length) return worked;
      idle++;
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    for (const m of batch) {
      expect(await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: new Date() }, ctx)).toEqual({ kind: 'done' });
      await h.storage.queues.delete('inbound', m.receipt);
      worked++;
    }
  }
  throw new Error(`lessons left untaught: ${JSON.stringify((await h.storage.tables.query(LESSON_PK)).items)}`);
}

beforeAll(async () => {
  redis = await startRedis();
  rspamd = await startRspamd({ controller: true, redis: { address: redis.address } });
  h = await startImapHarness({ TOMLINSON_SPAM_CONTROLLER_URL: rspamd.controllerUrl! });
  await addImapUsers(h, ANN);
  ctx = { config: h.config, storage: h.storage, log: silentLogger, now: () => new Date() };
  await h.folders.ensureSpecialUse(ANN, '\\Junk');
  scanner = new RspamdClient({ url: rspamd.url, timeoutMs: 20_000 });
}, 200_000);
afterAll(async () => {
  await scanner?.close();
  await h?.close();
  await rspamd?.stop();
  await redis?.stop();
});

describe('Bayes in Redis learns from moves into and out of Junk', () => {
  it('scores a message like the junk BAYES_SPAM, and one like the mail moved out of Junk BAYES_HAM, after the lessons only', async () => {
    const spamProbe = message('spam', 100);
    const hamProbe = message('ham', 100);
    const spamBefore = await scan(spamProbe);
    const hamBefore = await scan(hamProbe);
    expect(bayes(spamBefore)).toEqual([]);
    expect(bayes(hamBefore)).toEqual([]);

    // Spam: N messages in INBOX, moved into Junk in one IMAP UID MOVE (one lesson of N).
    const spamUids: number[] = [];
    for (let i = 0; i < N; i++) spamUids.push((await h.deliver(ANN, message('spam', i))).uid);
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    let r = await imaplib({
      port: h.port,
      user: ANN,
      password: imapPassword(ANN),
      steps: [['login'], ['select', 'INBOX'], ['uid', 'MOVE', spamUids.join(','), 'Junk']],
    });
    expect(r.error).toBeUndefined();
    expect((r.results[2] as string[])[0]).toBe('OK');
    expect(await workLessons()).toBeGreaterThan(0);

    // Ham: N messages that were filed into Junk (put there through the store, their spam lessons
    // dropped, as if the scan had junked them at delivery), then moved back to INBOX over IMAP.
    const hamUids: number[] = [];
    for (let i = 0; i < N; i++) hamUids.push((await h.deliver(ANN, message('ham', i))).uid);
    const { pairs } = await h.folders.move(ANN, INBOX, hamUids, junk.id);
    const filed = (await h.storage.tables.query(LESSON_PK)).items;
    expect(filed.flatMap((l) => l.blobKeys as string[])).toHaveLength(N);
    for (const l of filed) await h.storage.tables.delete({ pk: l.pk, sk: l.sk });
    const inJunk = pairs.map(([, to]) => to);
    expect(inJunk).toHaveLength(N);
    r = await imaplib({
      port: h.port,
      user: ANN,
      password: imapPassword(ANN),
      steps: [['login'], ['select', 'Junk'], ['uid', 'MOVE', inJunk.join(','), 'INBOX']],
    });
    expect(r.error).toBeUndefined();
    expect((r.results[2] as string[])[0]).toBe('OK');
    expect(await workLessons()).toBeGreaterThan(0);

    const spamAfter = await scan(spamProbe);
    const hamAfter = await scan(hamProbe);
    expect(bayes(spamAfter)).toEqual([expect.stringMatching(/^BAYES_SPAM\(/)]);
    expect(spamAfter.score).toBeGreaterThan(spamBefore.score);
    expect(bayes(hamAfter)).toEqual([expect.stringMatching(/^BAYES_HAM\(/)]);
    expect(hamAfter.score).toBeLessThan(hamBefore.score);
  }, 120_000);
});
