/**
 * Learning from what users move (issue 24): a message moved or copied into the Junk folder teaches
 * rspamd `learn_spam`, one moved out of Junk into any folder but Trash teaches `learn_ham`.
 *
 * Design (an outbox in the same transaction, then a queue job): FolderStore.transfer writes one
 * "lesson" item (`SPAMLEARN` / `<user>#<modseq>`, the blob keys of the batch and the kind) in the
 * very transaction that moves the messages, so a lesson exists exactly when its move committed —
 * never lost by a crash between the move and a queue send, never taught for a move that failed.
 * After the commit the store sends an `inbound` job naming the lesson, without awaiting it (the
 * IMAP/JMAP reply never waits for the queue); if that send fails the item stays `new` and
 * `resendLessons` (run by the sweep) sends it again. The inbound worker (learnJob) streams each
 * message from its blob to rspamd's controller (`POST /learnspam` or `/learnham`, "Rspamd
 * protocol", controller commands), records its progress in the item and deletes the item when
 * done, so a second delivery of the job finds nothing to do. Only a crash between a learn and its
 * progress write repeats that one learn: rspamd answers it "already learned" when its learn cache
 * holds the message's digest (then it is not counted again), but that is rspamd's best effort
 * (rspamd 3.4 with the SQLite backend was seen to learn a quick repeat again).
 *
 * Where the inbound worker cannot reach rspamd (AWS: a Lambda outside the VPC, rspamd a sidecar of
 * the SMTP task) its `spam.controllerUrl` is empty and it leaves lessons alone; a learner in the
 * process beside rspamd (`spam.learnPollSeconds`, startLessonPoller) reads the lesson partition and
 * teaches each lesson the same way, after claiming it (several SMTP tasks take turns).
 *
 * Why not derive lessons from the change log: it is per user, so a reader would need a cursor per
 * user and something that notices which users moved what (DynamoDB Streams on AWS: infra); the
 * outbox item is the same atomic record, findable in one partition.
 */
import { Agent, request, type Dispatcher } from 'undici';
import type { Readable } from 'node:stream';
import { isStorageError, type Item, type Queues, type Tables, type TransactOp } from '../storage/ports.js';
import { done, type JobContext, type JobMeta, type JobOutcome } from '../workers/job.js';
import { countSpam } from './spam-stats.js';
import { spamPrefs } from './spam-prefs.js';

export type LessonKind = 'spam' | 'ham';

/** The partition of lessons not yet taught (one item per moved batch). */
export const LESSON_PK = 'SPAMLEARN';
/** A lesson nobody could teach for this long (rspamd gone for good) is dropped. */
const LESSON_TTL_SECONDS = 14 * 86400;
/** Attempts of one job while the controller is unreachable, before the lesson waits for the sweep. */
const MAX_RECEIVES = 8;
/** A lesson `sent` but still here after this long was lost with its job: the sweep resends it. */
const RESEND_AFTER_MS = 60 * 60 * 1000;

export interface LearnJob {
  v: 1;
  kind: 'spam-learn';
  /** The lesson item's sort key. */
  lesson: string;
}

/** The job body, in this key order: `isLearnJob` recognises it without parsing every inbound job. */
export function learnJobBody(lesson: string): string {
  return JSON.stringify({ v: 1, kind: 'spam-learn', lesson } satisfies LearnJob);
}

export function isLearnJob(body: string): boolean {
  return body.startsWith('{"v":1,"kind":"spam-learn"');
}

/** The write that records a lesson, for the move's transaction. */
export function lessonOp(user: string, modseq: number, kind: LessonKind, blobKeys: string[], now: Date): { op: TransactOp; sk: string } {
  const sk = `${user}#${String(modseq).padStart(12, '0')}`;
  const item: Item = {
    pk: LESSON_PK,
    sk,
    user,
    kind,
    blobKeys,
    done: 0,
    state: 'new',
    createdAt: now.toISOString(),
    ttl: Math.floor(now.getTime() / 1000) + LESSON_TTL_SECONDS,
  };
  return { op: { put: item }, sk };
}

/** Sends the job for a committed lesson; marks it `sent` (a failure leaves it for resendLessons). */
export async function sendLesson(tables: Tables, queues: Queues, sk: string, now: Date): Promise<void> {
  await queues.send('inbound', learnJobBody(sk));
  await tables.update({ pk: LESSON_PK, sk }, { set: { state: 'sent', sentAt: now.toISOString() } }, { condition: { exists: true } }).catch((e: unknown) => {
    // Already taught and deleted by a fast worker: nothing to mark.
    if (!isStorageError(e, 'ConditionFailed')) throw e;
  });
}

/** Sends again every lesson whose job was never sent, or sent long ago and lost. Returns how many. */
export async function resendLessons(tables: Tables, queues: Queues, now: Date): Promise<number> {
  let n = 0;
  let cursor: string | undefined;
  do {
    const page = await tables.query(LESSON_PK, { limit: 100, cursor });
    for (const it of page.items) {
      const stale = it.state === 'sent' && now.getTime() - Date.parse(String(it.sentAt ?? '')) > RESEND_AFTER_MS;
      if (it.state !== 'new' && !stale) continue;
      await sendLesson(tables, queues, it.sk, now);
      n++;
    }
    cursor = page.cursor;
  } while (cursor);
  return n;
}

/** What the controller said about one message. */
export type LearnResult = 'learned' | 'already' | 'refused' | 'unavailable';

/** rspamd's controller worker (`/learnspam`, `/learnham`, `/stat`). */
export class RspamdController {
  private readonly base: URL;
  private readonly agent: Dispatcher;

  constructor(
    url: string,
    /** The controller's `password` (or `enable_password`); unset when our address is its `secure_ip`. */
    private readonly password = '',
    private readonly timeoutMs = 30_000,
  ) {
    this.base = new URL(url);
    this.agent = new Agent({ keepAliveTimeout: 10_000, connections: 4 });
  }

  /** Teaches one message, streamed; `detail` is rspamd's text for the log. */
  async learn(kind: LessonKind, message: Readable, size?: number): Promise<{ result: LearnResult; detail: string }> {
    const headers: Record<string, string> = {};
    if (this.password) headers.Password = this.password;
    if (size !== undefined) headers['Content-Length'] = String(size);
    try {
      const r = await request(new URL(kind === 'spam' ? '/learnspam' : '/learnham', this.base), {
        method: 'POST',
        dispatcher: this.agent,
        headers,
        body: message,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // rspamd 3.4 answers a refused learn (its learn_condition: "already in class", too few
      // tokens) with a body shorter than its Content-Length; the status says enough then.
      const text = (await r.body.text().catch((e: unknown) => `(HTTP ${r.statusCode} body unreadable: ${e instanceof Error ? e.message : String(e)})`)).slice(
        0,
        500,
      );
      // rspamd keeps a digest of every learned message: learning it again as the same kind is
      // answered "<id> has been already learned as spam, ignore it" (404 in rspamd 3.4, 208 in
      // later releases); learning it as the other kind relearns it (200).
      if (r.statusCode === 208 || (r.statusCode === 404 && /already learned/i.test(text))) return { result: 'already', detail: text };
      if (r.statusCode >= 200 && r.statusCode < 300) return { result: 'learned', detail: text };
      // 5xx: rspamd's trouble (or no Bayes backend answering): try again later. 4xx: this message
      // cannot be learned (too few tokens, refused by learn_condition, bad password).
      return { result: r.statusCode >= 500 ? 'unavailable' : 'refused', detail: `HTTP ${r.statusCode}: ${text}` };
    } catch (e) {
      message.destroy();
      return { result: 'unavailable', detail: e instanceof Error ? e.message : String(e) };
    }
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }
}

/** One controller client per process and URL (keep-alive across jobs). */
let shared: { key: string; ctl: RspamdController } | undefined;
function controllerFor(c: { controllerUrl: string; controllerPassword: string }): RspamdController {
  const key = `${c.controllerUrl}\n${c.controllerPassword}`;
  if (shared?.key !== key) shared = { key, ctl: new RspamdController(c.controllerUrl, c.controllerPassword) };
  return shared.ctl;
}

/** Works one learn job (an `inbound` queue message of kind `spam-learn`). */
export async function learnJob(body: string, meta: JobMeta, ctx: JobContext): Promise<JobOutcome> {
  let job: LearnJob;
  try {
    job = JSON.parse(body) as LearnJob;
  } catch {
    ctx.log.warn({ c: 'spam-learn' }, 'learn job is not JSON; dropped');
    return done;
  }
  const key = { pk: LESSON_PK, sk: String(job.lesson) };
  const item = await ctx.storage.tables.get(key);
  // Taught already (a redelivery), or expired.
  if (!item) return done;
  // No controller within reach of this process (the Lambda worker on AWS): the lesson stays for
  // the learner beside rspamd (startLessonPoller in the SMTP task).
  if (!ctx.config.spam.controllerUrl) return done;
  if ((await teach(item, ctx)) === 'done') return done;
  // The item stays. Past the attempts it waits as if just sent: the sweep resends it once
  // RESEND_AFTER_MS has passed (an rspamd gone for long costs a few attempts an hour per lesson,
  // until the lesson's ttl).
  if (meta.receiveCount >= MAX_RECEIVES) {
    await ctx.storage.tables.update(key, { set: { state: 'sent', sentAt: ctx.now().toISOString() } });
    return done;
  }
  return { kind: 'retry', afterSeconds: Math.min(900, 30 * meta.receiveCount), reason: 'rspamd controller unavailable' };
}

/** Teaches one lesson and deletes it; `later` (the item kept) while the controller is unreachable. */
async function teach(item: Item, ctx: JobContext): Promise<'done' | 'later'> {
  const { tables, mail } = ctx.storage;
  const key = { pk: LESSON_PK, sk: item.sk };
  const log = ctx.log.child({ c: 'spam-learn', user: item.user, lesson: key.sk });
  const kind = item.kind === 'ham' ? 'ham' : 'spam';
  const blobKeys = Array.isArray(item.blobKeys) ? item.blobKeys.map(String) : [];
  const prefs = await spamPrefs(tables, String(item.user));
  if (ctx.config.spam.enabled === 'off' || prefs.off) {
    await tables.delete(key);
    await countSpam(tables, 'learnSkipped', blobKeys.length, ctx.now());
    log.debug('spam learning off; lesson dropped');
    return 'done';
  }
  const ctl = controllerFor(ctx.config.spam);
  for (let i = Number(item.done ?? 0); i < blobKeys.length; i++) {
    let got;
    try {
      got = await mail.get(blobKeys[i]!);
    } catch (e) {
      // Expunged for good since the move: nothing left to learn from.
      if (!isStorageError(e, 'NotFound')) throw e;
      await countSpam(tables, 'learnSkipped', 1, ctx.now());
      await tables.update(key, { set: { done: i + 1 } });
      continue;
    }
    const r = await ctl.learn(kind, got.body, got.info.size);
    if (r.result === 'unavailable') {
      log.warn({ detail: r.detail }, 'rspamd controller unavailable; learning later');
      return 'later';
    }
    if (r.result === 'learned') await countSpam(tables, kind === 'spam' ? 'learnedSpam' : 'learnedHam', 1, ctx.now());
    else if (r.result === 'refused') await countSpam(tables, 'learnSkipped', 1, ctx.now());
    log.info({ blobKey: blobKeys[i], result: r.result, detail: r.detail.slice(0, 200) }, `learn_${kind}: ${r.result}`);
    ctx.metrics?.messages.inc({ stage: 'spam-learn', outcome: `${kind}-${r.result}` });
    await tables.update(key, { set: { done: i + 1 } });
  }
  await tables.delete(key);
  return 'done';
}

/** How long a learner holds a lesson it claimed before another may take it over. */
const CLAIM_MS = 5 * 60_000;

/**
 * Teaches the lessons waiting in the outbox, oldest first, at most `max` of them; returns how many
 * were taught. For a process beside rspamd when the queue worker cannot reach the controller (on
 * AWS the inbound worker is a Lambda outside the VPC; the SMTP task runs rspamd as a sidecar).
 * Several learners (one per SMTP task) take turns through a conditional claim; a learner that dies
 * holding one frees it after CLAIM_MS, and a lesson taught twice is answered "already learned"
 * by rspamd's learn cache, which lives in the shared Redis.
 */
export async function teachWaitingLessons(ctx: JobContext, max = 25): Promise<number> {
  const { tables } = ctx.storage;
  const page = await tables.query(LESSON_PK, { limit: max });
  let taught = 0;
  for (const item of page.items) {
    const now = ctx.now().getTime();
    const held = typeof item.claimedUntil === 'number' ? item.claimedUntil : null;
    if (held !== null && held > now) continue;
    try {
      await tables.update({ pk: LESSON_PK, sk: item.sk }, { set: { claimedUntil: now + CLAIM_MS } }, { condition: { equals: { claimedUntil: held } } });
    } catch (e) {
      // Another learner claimed it first, or a worker taught and deleted it.
      if (isStorageError(e, 'ConditionFailed')) continue;
      throw e;
    }
    // rspamd unreachable: stop this round; the claim lapses and the next round tries again.
    if ((await teach(item, ctx)) === 'later') break;
    taught++;
  }
  return taught;
}

/** A running lesson poller. */
export interface LessonPoller {
  stop(): Promise<void>;
}

/** Runs teachWaitingLessons every `spam.learnPollSeconds` (none when 0, spam is off or there is no
 * controller). */
export function startLessonPoller(ctx: Omit<JobContext, 'now'>): LessonPoller | undefined {
  const everyMs = ctx.config.spam.learnPollSeconds * 1000;
  if (everyMs <= 0 || ctx.config.spam.enabled === 'off' || !ctx.config.spam.controllerUrl) return undefined;
  const log = ctx.log.child({ c: 'spam-learn' });
  let stopped = false;
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const round = () => {
    running = teachWaitingLessons({ ...ctx, log, now: () => new Date() })
      .then(
        (n) => {
          if (n) log.debug({ taught: n }, 'lessons taught');
        },
        (e: unknown) => log.warn({ err: e instanceof Error ? e.message : String(e) }, 'teaching waiting lessons failed; next round at its time'),
      )
      .finally(() => {
        running = undefined;
        if (!stopped) {
          timer = setTimeout(round, everyMs);
          timer.unref();
        }
      });
  };
  timer = setTimeout(round, everyMs);
  timer.unref();
  log.info({ everySeconds: ctx.config.spam.learnPollSeconds, controller: ctx.config.spam.controllerUrl }, 'teaching lessons from the outbox');
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
