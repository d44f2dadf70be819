/**
 * Learning from what users move (core/mail/spam-learn.ts), against Debian's rspamd started by the
 * test with its controller worker and Bayes in SQLite (test/support/rspamd.ts): a message moved
 * into Junk over IMAP (Python's imaplib, UID MOVE) teaches learn_spam, seen in rspamd's own
 * `/stat` learned count; the same job delivered again teaches nothing, nor does a lesson found
 * again after a crash with its progress written; moved
 * out of Junk teaches learn_ham; into Trash from Junk teaches nothing; a move by JMAP Email/set
 * through a folder store without queues leaves its lesson for the sweep's resend, which teaches it;
 * an inbound worker without a controller (the Lambda on AWS) leaves lessons to the learner beside
 * rspamd (teachWaitingLessons, run by startLessonPoller), which claims each before teaching it.
 */
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { emailMethods, resolveEmailBlob } from '../../containers/web/jmap/email.js';
import { mailboxMethods } from '../../containers/web/jmap/mailbox.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { learnJobBody, LESSON_PK, resendLessons, RspamdController, startLessonPoller, teachWaitingLessons } from '../../core/mail/spam-learn.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { spamStats } from '../../core/mail/spam-stats.js';
import { sweepOptionsFrom, sweepOrphanBlobs } from '../../core/mail/sweep.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import type { Item } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { addImapUsers, imaplib, imapPassword, startImapHarness, type ImapHarness } from '../imap/harness.js';
import { invoke, jmapContext } from '../jmap/mail-context.js';
import { freePorts } from '../support/ports.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';

const ANN = 'ann@example.com';
let rspamd: Rspamd;
let h: ImapHarness;
let ctx: JobContext;

/** A message with enough words for Bayes (min_tokens 11), different each time. */
function spammy(n: number): string {
  const words = `cheap replica watches discount offer ${n} limited stock hurry winner prize claim casino bonus lottery`;
  return `From: Seller ${n} <seller${n}@spam.example>\r\nTo: ${ANN}\r\nSubject: offer ${n}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <offer${n}@spam.example>\r\n\r\n${`${words}. `.repeat(6)}\r\n`;
}

async function learned(): Promise<number> {
  const r = await request(`${rspamd.controllerUrl}/stat`);
  return Number(((await r.body.json()) as { learned: number }).learned);
}

/** Works every job now in the inbound queue as the inbound worker does; returns their bodies. */
async function work(): Promise<string[]> {
  const bodies: string[] = [];
  for (;;) {
    const batch = await h.storage.queues.receive('inbound', { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    if (!batch.length) return bodies;
    for (const m of batch) {
      bodies.push(m.body);
      const out = await inboundJob(m.body, { queue: 'inbound', id: m.id, receiveCount: 1, sentAt: new Date() }, ctx);
      expect(out).toEqual({ kind: 'done' });
      await h.storage.queues.delete('inbound', m.receipt);
    }
  }
}

/** Waits until the listener's after-commit send of a lesson's job has reached the queue. */
async function workWhenQueued(): Promise<string[]> {
  for (let i = 0; i < 50; i++) {
    const got = await work();
    if (got.length) return got;
    await new Promise((r) => setTimeout(r, 50));
  }
  return [];
}

async function lessons(): Promise<Item[]> {
  return (await h.storage.tables.query(LESSON_PK)).items;
}

beforeAll(async () => {
  rspamd = await startRspamd({ controller: true });
  h = await startImapHarness({ TOMLINSON_SPAM_CONTROLLER_URL: rspamd.controllerUrl! });
  await addImapUsers(h, ANN);
  ctx = { config: h.config, storage: h.storage, log: silentLogger, now: () => new Date() };
  await h.folders.ensureSpecialUse(ANN, '\\Junk');
  await h.folders.ensureSpecialUse(ANN, '\\Trash');
}, 200_000);
afterAll(async () => {
  await h?.close();
  await rspamd?.stop();
});

describe('learning from moves into and out of Junk', () => {
  it('IMAP MOVE into Junk teaches learn_spam once; a redelivered job or a repeated lesson does not learn twice', async () => {
    const { uid, blobKey } = await h.deliver(ANN, spammy(1));
    const before = await learned();
    const r = await imaplib({
      port: h.port,
      user: ANN,
      password: imapPassword(ANN),
      steps: [['login'], ['select', 'INBOX'], ['uid', 'MOVE', String(uid), 'Junk']],
    });
    expect(r.error).toBeUndefined();
    expect((r.results[2] as string[])[0]).toBe('OK');
    // The lesson was written with the move.
    const [lesson] = await lessons();
    expect(lesson).toMatchObject({ user: ANN, kind: 'spam', blobKeys: [blobKey] });

    const jobs = await workWhenQueued();
    expect(jobs).toHaveLength(1);
    expect(await learned()).toBe(before + 1);
    expect(await lessons()).toEqual([]);

    // At-least-once delivery: the same job again finds its lesson gone and does nothing.
    await inboundJob(jobs[0]!, { queue: 'inbound', id: 'again', receiveCount: 2, sentAt: new Date() }, ctx);
    expect(await learned()).toBe(before + 1);

    // A crash after the progress was written but before the lesson was deleted: the lesson is
    // there again, its messages all done; the worker deletes it without asking rspamd.
    await h.storage.tables.put({ ...lesson!, done: 1, state: 'sent' });
    await inboundJob(jobs[0]!, { queue: 'inbound', id: 'crash', receiveCount: 2, sentAt: new Date() }, ctx);
    expect(await learned()).toBe(before + 1);
    expect(await lessons()).toEqual([]);
    const [today] = await spamStats(h.storage.tables);
    expect(today).toMatchObject({ learnedSpam: 1, learnedHam: 0 });
  });

  it('IMAP MOVE out of Junk teaches learn_ham; Junk to Trash teaches nothing', async () => {
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    const a = await h.deliver(ANN, spammy(2));
    const b = await h.deliver(ANN, spammy(3));
    // Both into Junk (two lessons of spam), then one back to INBOX and one to Trash.
    let r = await imaplib({
      port: h.port,
      user: ANN,
      password: imapPassword(ANN),
      steps: [['login'], ['select', 'INBOX'], ['uid', 'MOVE', `${a.uid},${b.uid}`, 'Junk']],
    });
    expect(r.error).toBeUndefined();
    await workWhenQueued();
    const before = await learned();
    const inJunk = new Map((await h.folders.messages(ANN, junk.id)).items.map((m) => [m.blobKey, m.uid]));
    r = await imaplib({
      port: h.port,
      user: ANN,
      password: imapPassword(ANN),
      steps: [['login'], ['select', 'Junk'], ['uid', 'MOVE', String(inJunk.get(a.blobKey)), 'INBOX'], ['uid', 'MOVE', String(inJunk.get(b.blobKey)), 'Trash']],
    });
    expect(r.error).toBeUndefined();
    expect(r.results.slice(2).map((x) => (x as string[])[0])).toEqual(['OK', 'OK']);
    const jobs = await workWhenQueued();
    expect(jobs).toHaveLength(1);
    expect(await learned()).toBe(before + 1);
    const [today] = await spamStats(h.storage.tables);
    expect(today).toMatchObject({ learnedSpam: 3, learnedHam: 1 });
  });

  it("JMAP Email/set mailboxIds into Junk: a lesson whose job was never sent is taught after the sweep's resend", async () => {
    const { blobKey } = await h.deliver(ANN, spammy(4));
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    // The harness's folder store has no queue: the lesson is recorded but its job is not sent.
    const jmap = jmapContext(h, ANN, [mailboxMethods, emailMethods], resolveEmailBlob);
    const id = emailIdOf(blobKey);
    const res = await invoke(jmap, 'Email/set', { update: { [id]: { mailboxIds: { [junk.id]: true } } } });
    expect(res[0]).toBe('Email/set');
    expect(Object.keys((res[1].updated as object) ?? {})).toEqual([id]);
    expect(await work()).toEqual([]);
    expect(await lessons()).toHaveLength(1);

    const before = await learned();
    expect(await resendLessons(h.storage.tables, h.storage.queues, new Date())).toBe(1);
    expect(await work()).toHaveLength(1);
    expect(await learned()).toBe(before + 1);
    expect(await lessons()).toEqual([]);
  });

  it('keeps a lesson while the controller is unreachable: retried, then left for the sweep, never lost', async () => {
    const { uid } = await h.deliver(ANN, spammy(5));
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    await h.folders.move(ANN, INBOX, [uid], junk.id);
    const [lesson] = await lessons();
    const body = learnJobBody(lesson!.sk);
    const [closed] = await freePorts(1);
    const down: JobContext = { ...ctx, config: { ...h.config, spam: { ...h.config.spam, controllerUrl: `http://127.0.0.1:${closed}` } } };
    const meta = (receiveCount: number) => ({ queue: 'inbound' as const, id: 'down', receiveCount, sentAt: new Date() });
    expect(await inboundJob(body, meta(1), down)).toMatchObject({ kind: 'retry', reason: 'rspamd controller unavailable' });
    expect(await inboundJob(body, meta(8), down)).toEqual({ kind: 'done' });
    expect(await lessons()).toMatchObject([{ sk: lesson!.sk, done: 0, state: 'sent' }]);
    // Not resent until it has waited; then taught once rspamd answers.
    expect(await resendLessons(h.storage.tables, h.storage.queues, new Date())).toBe(0);
    const before = await learned();
    expect(await resendLessons(h.storage.tables, h.storage.queues, new Date(Date.now() + 2 * 3600_000))).toBe(1);
    expect(await work()).toHaveLength(1);
    expect(await learned()).toBe(before + 1);
    expect(await lessons()).toEqual([]);
  });
});

describe('the learner beside rspamd (spam.learnPollSeconds)', () => {
  it('teaches a lesson an inbound worker without a controller left, once, skipping one another learner holds', async () => {
    const { uid } = await h.deliver(ANN, spammy(7));
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    await h.folders.move(ANN, INBOX, [uid], junk.id);
    const [lesson] = await lessons();
    const noController: JobContext = { ...ctx, config: { ...h.config, spam: { ...h.config.spam, controllerUrl: '' } } };
    expect(await inboundJob(learnJobBody(lesson!.sk), { queue: 'inbound', id: 'lambda', receiveCount: 1, sentAt: new Date() }, noController)).toEqual({
      kind: 'done',
    });
    expect(await lessons()).toHaveLength(1);

    const before = await learned();
    // Claimed a minute ago by another SMTP task's learner: left to it.
    await h.storage.tables.update({ pk: LESSON_PK, sk: lesson!.sk }, { set: { claimedUntil: Date.now() + 4 * 60_000 } });
    expect(await teachWaitingLessons(ctx)).toBe(0);
    expect(await lessons()).toHaveLength(1);
    // That learner died: its claim lapses and this one takes the lesson over.
    expect(await teachWaitingLessons({ ...ctx, now: () => new Date(Date.now() + 5 * 60_000) })).toBe(1);
    expect(await learned()).toBe(before + 1);
    expect(await lessons()).toEqual([]);
    expect(await teachWaitingLessons(ctx)).toBe(0);
  });

  it("the sweep resends no lesson's job where the inbound worker has no controller", async () => {
    const { uid } = await h.deliver(ANN, spammy(9));
    const junk = (await h.folders.find(ANN, 'Junk'))!;
    await h.folders.move(ANN, INBOX, [uid], junk.id);
    const noController = { ...h.config, spam: { ...h.config.spam, controllerUrl: '' } };
    expect((await sweepOrphanBlobs(h.storage, { ...sweepOptionsFrom(noController), log: silentLogger })).resentLessons).toBe(0);
    expect(await work()).toEqual([]);
    expect((await sweepOrphanBlobs(h.storage, { ...sweepOptionsFrom(h.config), log: silentLogger })).resentLessons).toBe(1);
    expect(await work()).toHaveLength(1);
    expect(await lessons()).toEqual([]);
  });

  it('startLessonPoller teaches what moves leave, every spam.learnPollSeconds, and stops', async () => {
    const poller = startLessonPoller({ ...ctx, config: { ...h.config, spam: { ...h.config.spam, learnPollSeconds: 1 } } })!;
    expect(poller).toBeDefined();
    try {
      const { uid } = await h.deliver(ANN, spammy(8));
      const junk = (await h.folders.find(ANN, 'Junk'))!;
      const before = await learned();
      await h.folders.move(ANN, INBOX, [uid], junk.id);
      // Bounded wait: a few rounds of the poller.
      for (let i = 0; i < 100 && (await lessons()).length; i++) await new Promise((r) => setTimeout(r, 100));
      expect(await lessons()).toEqual([]);
      expect(await learned()).toBe(before + 1);
    } finally {
      await poller.stop();
    }
    expect(startLessonPoller({ ...ctx, config: { ...h.config, spam: { ...h.config.spam, learnPollSeconds: 0 } } })).toBeUndefined();
  });
});

describe('a controller that asks for a password', () => {
  it('learns with spam.controllerPassword and refuses without it', async () => {
    const r2 = await startRspamd({ controller: { password: 'learn-secret-1' } });
    const raw = () => Readable.from([Buffer.from(spammy(60))]);
    const without = new RspamdController(r2.controllerUrl!);
    const withPassword = new RspamdController(r2.controllerUrl!, 'learn-secret-1');
    try {
      expect((await without.learn('spam', raw())).result).toBe('refused');
      expect((await withPassword.learn('spam', raw())).result).toBe('learned');
    } finally {
      await Promise.all([without.close(), withPassword.close()]);
      await r2.stop();
    }
  }, 200_000);
});
