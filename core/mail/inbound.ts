/**
 * The inbound worker: takes one InboundJob (written by the SMTP listener after the raw message was
 * durable, or carrying a small one, which it stores first), indexes the message into every local
 * recipient's mailbox and hands remote recipients
 * to the `outbound` queue. The same code runs in-process (embedded default) and in the inbound
 * Lambda. Every step is idempotent on the job id, because queues deliver at least once.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Accounts } from '../accounts/accounts.js';
import { folderKeys } from '../mailbox/keys.js';
import { MailboxStore, NoSuchMailbox, QuotaExceeded } from '../mailbox/store.js';
import { type AttrValue, isStorageError, putIfAbsent, type Tables } from '../storage/ports.js';
import { done, type JobContext, type JobHandler, type JobMeta, type JobOutcome } from '../workers/job.js';
import { dispatchDsn } from './dsn.js';
import type { DsnRecipient, InboundJob, OutboundJob } from './jobs.js';
import { summarizeForMailbox } from './imap-structure.js';
import { isJunk } from './spam.js';
import { isLearnJob, learnJob } from './spam-learn.js';
import { filing, spamPrefs } from './spam-prefs.js';
import { countSpam } from './spam-stats.js';
import { blobHolder as outboundHolder } from './outbound.js';
import { answerVacation } from './vacation.js';

/** How long the `JOB#<id>` / `OUTBOUND` marker is kept (seconds): longer than any redelivery. */
const MARKER_TTL_SECONDS = 14 * 86400;
/** Largest original returned whole in a DSN when the sender did not choose (RET). */
const FULL_RETURN_MAX_BYTES = 256 * 1024;
/** A full mailbox is retried for this long after the message arrived, then given up (logged). */
const QUOTA_RETRY_WINDOW_MS = 60 * 60 * 1000;
const QUOTA_RETRY_SECONDS = 300;

/** Listing partition of inbound jobs waiting for room in a full mailbox (`queue list` shows them). */
export const QUOTA_WAIT_PK = 'INBOUND#WAITING';

/** An accepted message that waits for room in one or more full mailboxes. */
export interface QuotaWait {
  id: string;
  from: string;
  receivedAt: string;
  size: number;
  /** The mailboxes that are full. */
  users: string[];
  nextAttemptAt: string;
  /** When the wait ends and the sender is told (a DSN), if there is still no room. */
  giveUpAt: string;
}

/** Inbound messages waiting for room, oldest first. */
export async function listQuotaWaits(tables: Tables, limit = 1000): Promise<QuotaWait[]> {
  const out: QuotaWait[] = [];
  let cursor: string | undefined;
  do {
    const page = await tables.query(QUOTA_WAIT_PK, { limit: Math.min(100, limit - out.length), cursor });
    for (const it of page.items) {
      out.push({
        id: it.sk,
        from: String(it.from ?? ''),
        receivedAt: String(it.receivedAt ?? ''),
        size: Number(it.size ?? 0),
        users: String(it.users ?? '')
          .split(',')
          .filter(Boolean),
        nextAttemptAt: String(it.nextAttemptAt ?? ''),
        giveUpAt: String(it.giveUpAt ?? ''),
      });
    }
    cursor = page.cursor;
  } while (cursor && out.length < limit);
  return out.sort((a, b) => a.receivedAt.localeCompare(b.receivedAt));
}

/** The job body did not make sense; retrying cannot help, so it ends in the dead-letter queue. */
export class BadInboundJob extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BadInboundJob';
  }
}

/** Parses and checks an inbound queue message body. */
export function parseInboundJob(body: string): InboundJob {
  let job: InboundJob;
  try {
    job = JSON.parse(body) as InboundJob;
  } catch {
    throw new BadInboundJob('inbound job is not JSON');
  }
  if (!job || job.v !== 1 || typeof job.id !== 'string' || typeof job.blobKey !== 'string' || !Array.isArray(job.rcpts)) {
    throw new BadInboundJob('inbound job has an unknown shape');
  }
  return job;
}

/** Where each envelope recipient goes after alias expansion. */
export interface Routing {
  /** Local user login -> the envelope recipients that led to it. */
  local: Map<string, DsnRecipient[]>;
  /** Remote addresses, with the DSN parameters of the recipient they came from. */
  remote: DsnRecipient[];
  /** Recipients that are no longer deliverable here (user removed since RCPT). */
  unknown: DsnRecipient[];
  /** Remote recipients refused because the job did not come from an authenticated session. */
  relayDenied: DsnRecipient[];
}

/** Resolves every recipient of a job through Accounts (aliases are expanded at delivery time). */
export async function routeRecipients(job: InboundJob, accounts: Pick<Accounts, 'resolve'>): Promise<Routing> {
  const routing: Routing = { local: new Map(), remote: [], unknown: [], relayDenied: [] };
  const seenRemote = new Set<string>();
  const addRemote = (r: DsnRecipient): void => {
    const k = r.address.toLowerCase();
    if (seenRemote.has(k)) return;
    seenRemote.add(k);
    routing.remote.push(r);
  };
  for (const rcpt of job.rcpts) {
    const r = await accounts.resolve(rcpt.address);
    if (r.kind === 'local') {
      for (const user of r.users) {
        const list = routing.local.get(user) ?? [];
        list.push(rcpt);
        routing.local.set(user, list);
      }
      // RFC 3461 §4.2: ORCPT keeps the original recipient when an alias forwards elsewhere.
      for (const address of r.remote) addRemote({ address, ...(rcpt.notify ? { notify: rcpt.notify } : {}), orcpt: rcpt.orcpt ?? `rfc822;${rcpt.address}` });
    } else if (r.kind === 'remote') {
      // Only an authenticated sender may relay (RCPT already refused the others with 550 5.7.1).
      if (job.client.authUser) addRemote(rcpt);
      else routing.relayDenied.push(rcpt);
    } else {
      routing.unknown.push(rcpt);
    }
  }
  return routing;
}

/** Works one InboundJob: deliver locally, enqueue the remote part once, then done. */
export const inboundJob: JobHandler = async (body: string, meta: JobMeta, ctx: JobContext): Promise<JobOutcome> => {
  // The other kind of inbound job: a spam lesson from a user's move (core/mail/spam-learn.ts). It
  // shares the queue (and so its worker, Lambda and alarms) rather than needing a queue of its own.
  if (isLearnJob(body)) return learnJob(body, meta, ctx);
  const job = parseInboundJob(body);
  const log = ctx.log.child({ c: 'inbound', job: job.id });
  const { tables, mail } = ctx.storage;
  const accounts = new Accounts(tables);
  const store = new MailboxStore(tables, mail);

  // A small message travels inside its job and has no blob yet: it is written once, before the
  // first thing that refers to it (a delivery, a DSN returning it, the outbound hand-over), so a
  // redelivery that finds all of that done does not write it again.
  const raw = carriedMessage(job);
  let stored: Promise<unknown> | undefined;
  const ensureBlob = (): Promise<unknown> => (raw ? (stored ??= mail.put(job.blobKey, raw, { contentType: 'message/rfc822' })) : Promise.resolve());

  const routing = await routeRecipients(job, accounts);
  for (const r of routing.unknown) log.warn({ rcpt: r.address }, 'recipient no longer exists; not delivered');
  for (const r of routing.relayDenied) log.warn({ rcpt: r.address }, 'remote recipient without an authenticated sender; not relayed');
  // Recipients accepted at RCPT that this job cannot deliver: the sender hears of them (a DSN).
  // (relayDenied cannot come from our listener, which refuses those at RCPT: no backscatter.)
  const failed: Failure[] = routing.unknown.map((rcpt) => ({
    rcpt,
    status: '5.1.1',
    diagnostic: 'no such user here (the address was removed after the message was accepted)',
  }));

  // With more than one reader (several mailboxes, or a mailbox and the outbound worker) the raw
  // message must outlive each one's deletion while this job may still deliver to the others (a
  // full mailbox retried later, a redelivery after a crash): hold it until the job is done. A
  // single reader needs no hold (its delivery is the only reference), which saves two writes on
  // the common one-recipient message.
  const holder = `inbound:${job.id}`;
  const readers = routing.local.size + (routing.remote.length > 0 ? 1 : 0) + (failed.length > 0 ? 1 : 0);
  if (readers > 1) await store.holdBlob(job.blobKey, holder);

  const fullUsers: string[] = [];
  // Whether some mailbox holds (or will hold, after a quota wait) a reference to the blob.
  let referenced = false;
  /** Users whose mailbox holds the message (now or from an earlier attempt): vacation answers. */
  const deliveredTo: string[] = [];
  // rspamd's `add header` / `rewrite subject` (scanned on the MX listener, core/mail/spam.ts): the
  // message goes into each recipient's Junk folder (special use \Junk, made at first use), not
  // INBOX, and gets no vacation reply (no auto-answers to spam). Its X-Spam-* header fields are
  // already in the stored message.
  // Each user's settings may change that (core/mail/spam-prefs.ts): spam filtering off or junk to
  // INBOX (POP3 users), and allow / block lists of senders (theirs and their domain's).
  const verdictJunk = isJunk(job.spam);
  if (routing.local.size > 0) {
    // Summarised once, and only if some mailbox still lacks the message (a redelivery after
    // users deleted their copies must not need the blob again).
    let summary: Record<string, AttrValue> | undefined;
    for (const user of routing.local.keys()) {
      const filed = filing(await spamPrefs(tables, user), job.from, verdictJunk);
      const junk = filed.junk;
      const junkFolder = junk ? (await store.folders.ensureSpecialUse(user, '\\Junk')).id : undefined;
      // Idempotent on the job id either way: the append's marker names the folder (INBOX's is the
      // delivery marker).
      const already = junkFolder ? await tables.get(folderKeys.marker(job.id, user, junkFolder)) : await store.delivered(job.id, user);
      if (already !== undefined) {
        referenced = true;
        if (!junk && !verdictJunk) deliveredTo.push(user);
        continue;
      }
      try {
        summary ??= await summarize(job, raw, ctx);
        await ensureBlob();
        const m = { jobId: job.id, blobKey: job.blobKey, size: job.size, receivedAt: job.receivedAt, summary };
        const r = junkFolder ? await store.folders.append(user, junkFolder, { ...m, key: job.id }) : await store.deliver(user, m);
        referenced = true;
        if (!junk && !verdictJunk) deliveredTo.push(user);
        log.info(
          { user, uid: r.uid, duplicate: r.duplicate, ...(junk ? { folder: 'Junk' } : {}), ...(filed.why ? { why: filed.why } : {}) },
          junk ? 'delivered into Junk (spam)' : 'delivered',
        );
        if (!r.duplicate) ctx.metrics?.messages.inc({ stage: 'inbound', outcome: junk ? 'junked' : 'delivered' });
        if (!r.duplicate && junk) await countSpam(tables, 'junked', 1, ctx.now());
      } catch (e) {
        const rcpts = routing.local.get(user) ?? [];
        if (e instanceof NoSuchMailbox) {
          log.warn({ user }, 'user removed since the message was accepted; not delivered to it');
          for (const rcpt of rcpts)
            failed.push({ rcpt, status: '5.1.1', diagnostic: 'no such user here (the address was removed after the message was accepted)' });
          continue;
        }
        if (e instanceof QuotaExceeded) {
          const age = ctx.now().getTime() - Date.parse(job.receivedAt);
          if (age < QUOTA_RETRY_WINDOW_MS) {
            fullUsers.push(user);
            referenced = true;
            log.warn({ user }, 'mailbox full; will retry');
          } else {
            log.error({ user }, 'mailbox full for too long; message not delivered to this user');
            ctx.metrics?.messages.inc({ stage: 'inbound', outcome: 'quota' });
            for (const rcpt of rcpts) failed.push({ rcpt, status: '5.2.2', diagnostic: 'mailbox full' });
          }
          continue;
        }
        throw e;
      }
    }
  }

  // Before the blob can go: a vacation reply reads the message's header.
  for (const user of deliveredTo) await vacation(job, user, raw, ctx, log);

  // Before the blob can go: the DSN may return the original message.
  if (failed.length > 0) await bounce(job, failed, ensureBlob, ctx, log);

  if (routing.remote.length > 0) {
    // Hold the blob for the outbound worker before it can see the job, so that local readers
    // deleting their copies in between cannot remove what it still has to relay. (Its own hold
    // on first sight is the same holder, so this is counted once.)
    await store.holdBlob(job.blobKey, outboundHolder(job.id));
    await enqueueOutbound(job, routing.remote, ensureBlob, ctx);
  } else if (!referenced && readers <= 1) {
    // Nobody will ever read it (every recipient vanished since RCPT). With a hold, releasing it
    // below deletes the blob instead.
    log.warn('no deliverable recipient left; message dropped');
    await mail.delete(job.blobKey);
  }

  const waitKey = { pk: QUOTA_WAIT_PK, sk: job.id };
  if (fullUsers.length > 0) {
    // Visible to the operator while it waits (`queue list`); the ttl only cleans up after a crash.
    const now = ctx.now().getTime();
    const giveUp = Date.parse(job.receivedAt) + QUOTA_RETRY_WINDOW_MS;
    await tables.put({
      ...waitKey,
      from: job.from,
      receivedAt: job.receivedAt,
      size: job.size,
      users: fullUsers.join(','),
      nextAttemptAt: new Date(now + QUOTA_RETRY_SECONDS * 1000).toISOString(),
      giveUpAt: new Date(giveUp).toISOString(),
      ttl: Math.floor(giveUp / 1000) + 86400,
    });
    return { kind: 'retry', afterSeconds: QUOTA_RETRY_SECONDS, reason: 'mailbox full' };
  }
  // Only a redelivery can have waited; the first attempt skips this write.
  if (meta.receiveCount > 1) await tables.delete(waitKey);
  // Idempotent, and a no-op when no hold was taken; the last reference going deletes the blob.
  await store.releaseBlob(job.blobKey, holder);
  log.debug({ receiveCount: meta.receiveCount }, 'inbound job done');
  return done;
};

/**
 * The user's vacation reply to this message, if due (core/mail/vacation.ts; once per sender per
 * period, so a redelivery sends nothing new). Only a storage outage fails the job: a message
 * whose header cannot be read is delivered all the same, unanswered.
 */
async function vacation(job: InboundJob, user: string, raw: Buffer | undefined, ctx: JobContext, log: JobContext['log']): Promise<void> {
  try {
    await answerVacation({ jobId: job.id, user, envelopeFrom: job.from, open: async () => raw ?? (await ctx.storage.mail.get(job.blobKey)).body }, ctx, log);
  } catch (e) {
    if (isStorageError(e, 'Unavailable')) throw e;
    log.warn({ err: e, user }, 'vacation reply failed; message delivered without one');
  }
}

/** A recipient this job cannot deliver to, with the RFC 3463 status the DSN reports. */
interface Failure {
  rcpt: DsnRecipient;
  status: string;
  diagnostic: string;
}

/**
 * Tells the sender about recipients accepted at RCPT that cannot be delivered now (RFC 3464
 * `failed`), unless they asked for NOTIFY=NEVER (or without FAILURE, RFC 3461 §4.1) or the
 * sender is `<>` (RFC 5321 §6.1: no bounce loops). Each recipient is reported once per job: a
 * `JOB#<id>` / `DSN#<address>` marker is written after the DSN is queued, and the DSN's id
 * derives from the recipients it reports, so a redelivery queues the same DSN message (which
 * both workers handle idempotently) or none.
 */
async function bounce(job: InboundJob, failures: Failure[], ensureBlob: () => Promise<unknown>, ctx: JobContext, log: JobContext['log']): Promise<void> {
  const seen = new Set<string>();
  const toReport: Failure[] = [];
  for (const f of failures) {
    const key = f.rcpt.address.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    if (f.rcpt.notify?.length && !f.rcpt.notify.includes('FAILURE')) continue;
    if (await ctx.storage.tables.get({ pk: `JOB#${job.id}`, sk: `DSN#${key}` })) continue;
    toReport.push(f);
  }
  if (!toReport.length) return;
  if (job.from === '') {
    log.info({ rcpts: toReport.map((f) => f.rcpt.address) }, 'undeliverable message from the null sender; no DSN');
    return;
  }
  const digest = createHash('sha256')
    .update(
      toReport
        .map((f) => f.rcpt.address.toLowerCase())
        .sort()
        .join('\n'),
    )
    .digest('hex')
    .slice(0, 12);
  const now = ctx.now();
  await ensureBlob();
  const where = await dispatchDsn(
    {
      id: `${job.id}.dsn-${digest}`,
      originalKey: job.blobKey,
      dsn: {
        reportingMta: ctx.config.hostname,
        to: job.from,
        queueId: job.id,
        ...(job.dsn?.envid ? { envid: job.dsn.envid } : {}),
        arrivalDate: new Date(job.receivedAt),
        recipients: toReport.map((f) => ({
          address: f.rcpt.address,
          ...(f.rcpt.orcpt ? { orcpt: f.rcpt.orcpt } : {}),
          action: 'failed' as const,
          status: f.status,
          diagnostic: f.diagnostic,
          diagnosticType: 'x-local' as const,
          lastAttemptAt: now,
        })),
        // RFC 3461 §4.3: RET as the sender asked; by default the whole message when it is small.
        ret: job.dsn?.ret ?? (job.size <= FULL_RETURN_MAX_BYTES ? 'FULL' : 'HDRS'),
        now,
      },
    },
    ctx,
  );
  if (where === 'unknown') log.warn({ to: job.from }, 'DSN dropped: the sender no longer exists here');
  else log.info({ to: job.from, rcpts: toReport.map((f) => f.rcpt.address), sender: where }, 'DSN sent for undeliverable recipients');
  const ttl = Math.floor(now.getTime() / 1000) + MARKER_TTL_SECONDS;
  for (const f of toReport) await ctx.storage.tables.put({ pk: `JOB#${job.id}`, sk: `DSN#${f.rcpt.address.toLowerCase()}`, ttl });
  ctx.metrics?.messages.inc({ stage: 'inbound', outcome: 'bounced' });
}

async function summarize(job: InboundJob, raw: Buffer | undefined, ctx: JobContext): Promise<Record<string, AttrValue>> {
  // The listener summarizes small messages it holds in memory anyway (one blob read saved).
  if (job.summary && typeof job.summary === 'object' && !Array.isArray(job.summary)) return job.summary;
  // With the IMAP structure (summary.imap), in the same read of the message.
  if (raw) return summarizeForMailbox(Readable.from([raw]));
  const { body } = await ctx.storage.mail.get(job.blobKey);
  return summarizeForMailbox(body);
}

/** The raw message a job carries (InboundJob.raw), checked against the size the job names. */
function carriedMessage(job: InboundJob): Buffer | undefined {
  if (job.raw === undefined) return undefined;
  if (typeof job.raw !== 'string') throw new BadInboundJob('inbound job raw is not a string');
  const raw = Buffer.from(job.raw, 'base64');
  if (raw.length !== job.size) throw new BadInboundJob(`inbound job carries ${raw.length} octets, not the ${job.size} it names`);
  return raw;
}

/**
 * Sends the OutboundJob at most once per inbound job as far as a crash allows: a `pending` marker
 * is written first, then the job is sent, then the marker becomes `sent`. A redelivery that finds
 * `sent` does nothing; one that finds `pending` (a crash between send and mark) sends again, and
 * the outbound worker tolerates that duplicate because it is idempotent on the job id (its
 * per-recipient state lives under `OUT#<id>`).
 */
async function enqueueOutbound(job: InboundJob, rcpts: DsnRecipient[], ensureBlob: () => Promise<unknown>, ctx: JobContext): Promise<void> {
  const key = { pk: `JOB#${job.id}`, sk: 'OUTBOUND' };
  const marker = await ctx.storage.tables.get(key);
  if (marker?.state === 'sent') return;
  await ensureBlob();
  const ttl = Math.floor(ctx.now().getTime() / 1000) + MARKER_TTL_SECONDS;
  if (!marker) {
    // When this loses, another worker holds the same job right now; the queue hands it back if it dies.
    await putIfAbsent(ctx.storage.tables, { ...key, state: 'pending', ttl });
  }
  const out: OutboundJob = {
    v: 1,
    id: job.id,
    blobKey: job.blobKey,
    size: job.size,
    from: job.from,
    rcpts,
    receivedAt: job.receivedAt,
    ...(job.dsn ? { dsn: job.dsn } : {}),
    ...(job.client.authUser ? { authUser: job.client.authUser } : {}),
    ...(job.smtputf8 ? { smtputf8: true } : {}),
    ...(job.body8bit ? { body8bit: true } : {}),
  };
  await ctx.storage.queues.send('outbound', JSON.stringify(out));
  await ctx.storage.tables.update(key, { set: { state: 'sent', rcpts: rcpts.length }, ttl });
  ctx.log.info({ c: 'inbound', job: job.id, rcpts: rcpts.length }, 'handed to outbound');
}
