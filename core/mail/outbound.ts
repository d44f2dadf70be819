/**
 * The outbound worker: delivers the remote recipients of one accepted message (an OutboundJob on
 * queue 'outbound') by MX or through a smarthost, DKIM-signs, retries temporary failures on a
 * schedule and returns permanent failures to the sender as one RFC 3464 DSN.
 *
 * State lives in Tables (outbound-store.ts); the queue message only wakes the worker. After an
 * attempt that leaves recipients pending, the worker sends a NEW queue message (generation
 * `seq + 1`, queue delay up to 15 min, `notBefore` for the rest) and lets the current one go,
 * instead of returning `retry` on the same message: a retried message's receive count grows with
 * every attempt and would reach the dead-letter threshold (storage.queueMaxReceives, 5) long
 * before the 5-day maximum age. An early arrival still waits with `retry` (visibility).
 *
 * Idempotency: a recipient is marked delivered right after the remote's final 250 and is never
 * sent to again. A crash between that 250 and the write (or a lost lock) makes the next attempt
 * send it once more: at most one extra copy per crash (at-least-once, never lost). Stale or
 * duplicate queue messages are dropped by `seq`; one worker at a time holds a message (a lock
 * with an expiry in its META item).
 *
 * This file holds the job handler, the lock and the decisions per recipient; sending to a route's
 * hosts is in outbound-send.ts, what the sender is told (DSNs) in outbound-dsn.ts.
 */
import { randomUUID } from 'node:crypto';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { openSecrets } from '../secrets.js';
import { MAX_DELAY_SECONDS, MAX_VISIBILITY_SECONDS, type Storage } from '../storage/ports.js';
import { done, type JobContext, type JobHandler, type JobOutcome } from '../workers/job.js';
import { storedDkimKeys, type DkimKeySource } from './dkim.js';
import type { OutboundJob } from './jobs.js';
import { stsPolicy, type StsPolicy } from './mta-sts.js';
import type { MxDns } from './mx.js';
import { sendDelayNotice, sendFinalDsn } from './outbound-dsn.js';
import { deliverGroup, prepareMessage, type Outcome } from './outbound-send.js';
import { dnsResolverFromConfig } from '../dns.js';
import { Accounts } from '../accounts/accounts.js';
import { MailboxStore } from '../mailbox/store.js';
import { isPending, OutboundStore, type MessageRecord, type RcptRecord } from './outbound-store.js';
import { RetrySchedule } from './retry.js';
import { deliverTransaction, type SmtpTransaction, type TlsMode, type TransactionResult } from './smtp-client.js';

export { headerFromDomain } from './outbound-send.js';

/** The queue body this worker reads and writes: an OutboundJob plus the generation it belongs to. */
export interface OutboundQueueBody extends OutboundJob {
  /** Generation of the message's state this queue message was sent for. @default 0 */
  seq?: number;
}

/** A relay that takes all (or some) remote mail instead of the recipients' MX hosts. */
export interface Smarthost {
  host: string;
  port: number;
  tls: TlsMode;
  user?: string;
  pass?: string;
  /** Recipient domains it serves; empty: all. */
  domains: string[];
}

/** How the DSN for a sender is delivered: into a local mailbox (inbound path) or remotely. */
export type SenderKind = 'local' | 'remote' | 'unknown';

/** What the worker uses besides storage; built once per JobContext, replaceable in tests. */
export interface OutboundDeps {
  dns: MxDns;
  dkim: DkimKeySource;
  /** Loaded lazily (the password may come from Secrets Manager). */
  smarthost: () => Promise<Smarthost | undefined>;
  /** Runs one SMTP transaction. @default deliverTransaction */
  transact: (t: SmtpTransaction) => Promise<TransactionResult>;
  /** Where the sender of a bounced message lives. */
  senderKind: (address: string, storage: Storage) => Promise<SenderKind>;
  /** The MTA-STS policy of a recipient domain (RFC 8461); mode `none` when it has none. */
  mtaSts: (domain: string, storage: Storage) => Promise<StsPolicy>;
  /** Extra CA certificates for verified TLS (tests). */
  ca?: string;
  /** Random source for MX shuffling. @default Math.random */
  random?: () => number;
}

/** How long one worker may hold a message before another may take it over. */
export const LOCK_SECONDS = 15 * 60;
/** Recipients per SMTP transaction. */
const MAX_RCPTS_PER_TRANSACTION = 100;
/** Domains (transactions) of one message worked at once. */
const GROUP_CONCURRENCY = 4;
/** How often a long attempt extends its lock. */
const LOCK_RENEW_MS = 60_000;

/** What a smarthost URL's `?tls=` may ask for on smtp:// (smtps:// is always implicit TLS). */
const SMARTHOST_TLS: readonly TlsMode[] = ['required', 'opportunistic', 'none'];

/**
 * Parses `smtp://user:pass@host:587` / `smtps://host:465` (config.outbound.smarthost). smtp://
 * requires STARTTLS unless the URL says `?tls=opportunistic` (STARTTLS when offered) or `?tls=none`;
 * with credentials TLS is always required (never send a password in the clear).
 */
export function parseSmarthost(url: string, domains: string[] = []): Smarthost {
  const u = new URL(url);
  if (u.protocol !== 'smtp:' && u.protocol !== 'smtps:') throw new Error(`smarthost must be smtp:// or smtps://, got ${u.protocol}`);
  const implicit = u.protocol === 'smtps:';
  const user = u.username ? decodeURIComponent(u.username) : undefined;
  const asked = u.searchParams.get('tls');
  for (const k of u.searchParams.keys())
    if (k !== 'tls') throw new Error(`smarthost URL: unknown parameter ${JSON.stringify(k)} (only tls=required|opportunistic|none)`);
  let mode: TlsMode = implicit ? 'implicit' : 'required';
  if (asked !== null) {
    if (implicit) throw new Error('smarthost URL: smtps:// is always TLS; tls= applies to smtp:// only');
    if (!SMARTHOST_TLS.includes(asked as TlsMode)) throw new Error(`smarthost URL: tls=${asked} is not one of ${SMARTHOST_TLS.join(', ')}`);
    mode = asked as TlsMode;
    if (user && mode !== 'required') throw new Error(`smarthost URL: tls=${asked} with credentials would send the password in the clear`);
  }
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port ? Number(u.port) : implicit ? 465 : 587,
    tls: mode,
    user,
    pass: u.password ? decodeURIComponent(u.password) : undefined,
    domains: domains.map((d) => d.toLowerCase()),
  };
}

/** The default dependencies for a configuration. */
export function defaultOutboundDeps(config: Config, options: { ca?: string } = {}): OutboundDeps {
  let smarthost: Promise<Smarthost | undefined> | undefined;
  const resolver = dnsResolverFromConfig(config);
  const secrets = openSecrets(config);
  return {
    dns: resolver,
    mtaSts: async (domain, storage) =>
      config.outbound.mtaSts
        ? stsPolicy(domain, { resolver, tables: storage.tables, port: config.outbound.mtaStsPort, ca: options.ca })
        : { mode: 'none', mx: [], id: '', expires: 0 },
    dkim: storedDkimKeys(secrets),
    smarthost: () =>
      (smarthost ??= (async () => {
        if (!config.outbound.smarthost) return undefined;
        const s = parseSmarthost(config.outbound.smarthost, config.outbound.smarthostDomains);
        if (s.user) s.pass = (await secrets.smarthostPassword()) ?? s.pass;
        return s;
      })()),
    transact: deliverTransaction,
    senderKind: defaultSenderKind,
  };
}

/** Local when Accounts resolves the sender here (mailbox or alias; the inbound path expands it),
 * unknown for a missing user in a local domain, else remote. */
async function defaultSenderKind(address: string, storage: Storage): Promise<SenderKind> {
  const r = await new Accounts(storage.tables).resolve(address);
  return r.kind;
}

/** The MailboxStore blob-hold name of an outbound message. */
export const blobHolder = (id: string) => `outbound:${id}`;

const depsByContext = new WeakMap<JobContext, OutboundDeps>();

/** Builds an outbound JobHandler; `overrides` replace parts of the default dependencies. */
export function createOutboundJob(overrides: Partial<OutboundDeps> | ((config: Config) => Partial<OutboundDeps>) = {}): JobHandler {
  return async (body, meta, ctx) => {
    let deps = depsByContext.get(ctx);
    if (!deps) {
      const o = typeof overrides === 'function' ? overrides(ctx.config) : overrides;
      deps = { ...defaultOutboundDeps(ctx.config, { ca: o.ca }), ...o };
      depsByContext.set(ctx, deps);
    }
    const job = parseBody(body);
    const holder = `${meta.id}:${meta.receiveCount}:${randomUUID().slice(0, 8)}`;
    return work(job, holder, ctx, deps);
  };
}

/** The outbound worker with default dependencies (imported by the Lambda handler and the
 * in-process worker). */
export const outboundJob: JobHandler = createOutboundJob();

/** Validates a queue body; throws (so the message ends in the dead-letter queue) when malformed. */
export function parseBody(body: string): OutboundQueueBody {
  const j = JSON.parse(body) as OutboundQueueBody;
  if (
    j?.v !== 1 ||
    typeof j.id !== 'string' ||
    typeof j.blobKey !== 'string' ||
    typeof j.from !== 'string' ||
    !Array.isArray(j.rcpts) ||
    typeof j.receivedAt !== 'string'
  ) {
    throw new Error('malformed outbound job');
  }
  return j;
}

function schedule(config: Config, now: () => Date): RetrySchedule {
  return new RetrySchedule({
    schedule: config.outbound.retrySchedule.map(Number),
    maxAgeSeconds: config.outbound.maxAgeSeconds,
    delayNoticeSeconds: config.outbound.delayNoticeSeconds,
    now,
  });
}

const retryAfter = (ms: number, reason: string): JobOutcome => ({
  kind: 'retry',
  afterSeconds: Math.min(MAX_VISIBILITY_SECONDS, Math.max(1, Math.ceil(ms / 1000))),
  reason,
});

async function work(job: OutboundQueueBody, holder: string, ctx: JobContext, deps: OutboundDeps): Promise<JobOutcome> {
  const log = ctx.log.child({ c: 'outbound', msg_id: job.id });
  const store = new OutboundStore(ctx.storage.tables);
  const now = ctx.now();
  if (job.notBefore && Date.parse(job.notBefore) > now.getTime()) return retryAfter(Date.parse(job.notBefore) - now.getTime(), 'not before');
  let m = await store.getMessage(job.id);
  if (!m) {
    // The raw message must outlive mailbox deletions while we still relay it (MailboxStore holds).
    await new MailboxStore(ctx.storage.tables, ctx.storage.mail, { now: ctx.now }).holdBlob(job.blobKey, blobHolder(job.id));
    m = await store.init(job, now);
  }
  if (m.status !== 'active') return done;
  if ((job.seq ?? 0) < m.seq) {
    log.debug({ seq: job.seq ?? 0, current: m.seq }, 'stale queue message dropped');
    return done;
  }
  if (m.held) {
    log.info('message is held; queue message dropped until release');
    return done;
  }
  if (m.nextAttemptAt && Date.parse(m.nextAttemptAt) > now.getTime()) return retryAfter(Date.parse(m.nextAttemptAt) - now.getTime(), 'next attempt later');
  const locked = await store.lock(job.id, holder, now, LOCK_SECONDS);
  if (!locked) return retryAfter(Math.max(1000, m.lockUntil - now.getTime()), 'another worker holds the message');
  m = locked;
  // Keep the lock while a slow attempt (many hosts, long timeouts) is still running.
  const renew = setInterval(() => {
    store.renewLock(job.id, holder, ctx.now(), LOCK_SECONDS).catch((e: unknown) => log.warn({ err: e }, 'lock renewal failed'));
  }, LOCK_RENEW_MS);
  renew.unref();
  try {
    return await attempt(m, job, ctx, deps, store, log);
  } finally {
    clearInterval(renew);
    await store.unlock(job.id, holder).catch((e) => log.warn({ err: e }, 'unlock failed'));
  }
}

async function attempt(m: MessageRecord, job: OutboundQueueBody, ctx: JobContext, deps: OutboundDeps, store: OutboundStore, log: Logger): Promise<JobOutcome> {
  const { config } = ctx;
  const retry = schedule(config, ctx.now);
  const now = ctx.now();
  const receivedAt = new Date(m.receivedAt);
  let rcpts = await store.getRecipients(m.id);
  const due = rcpts.filter((r) => isPending(r) && (!r.nextAttemptAt || Date.parse(r.nextAttemptAt) <= now.getTime()));
  if (due.length) {
    const prepared = await prepareMessage(m, ctx, deps, log);
    const smarthost = await deps.smarthost();
    const byDomain = new Map<string, RcptRecord[]>();
    for (const r of due) byDomain.set(r.domain, [...(byDomain.get(r.domain) ?? []), r]);
    // Domains that all go to the smarthost share one transaction per attempt.
    const byRoute: { key: string; rcpts: RcptRecord[]; via?: Smarthost }[] = [];
    const relayed: RcptRecord[] = [];
    for (const [domain, list] of byDomain) {
      if (smarthost && (smarthost.domains.length === 0 || smarthost.domains.includes(domain))) relayed.push(...list);
      else byRoute.push({ key: domain, rcpts: list });
    }
    if (relayed.length) byRoute.unshift({ key: 'smarthost', rcpts: relayed, via: smarthost });
    // RFC 5321 §4.5.3.1.8: a server need accept no more than 100 recipients per transaction.
    const groups = byRoute.flatMap((g) => chunk(g.rcpts, MAX_RCPTS_PER_TRANSACTION).map((rcpts) => ({ ...g, rcpts })));
    await forEachLimited(groups, GROUP_CONCURRENCY, async (g) => {
      const outcome = await deliverGroup(g.key, g.rcpts, g.via, m, prepared, ctx, deps, log);
      const updated = g.rcpts.map((r) => applyOutcome(r, outcome.get(r.address)!, retry, receivedAt, ctx.now()));
      // Recorded per group, right after its transaction: the window in which a crash would
      // cause a second copy is as short as it can be.
      await store.putRecipients(m.id, updated);
      for (const u of updated) {
        ctx.metrics?.messages.inc({ stage: 'delivery', outcome: u.state });
        log.info({ rcpt: u.address, state: u.state, attempts: u.attempts, reply: u.lastReply, host: u.remoteHost }, `recipient ${u.state}`);
      }
    });
    rcpts = await store.getRecipients(m.id);
  }
  const pending = rcpts.filter(isPending);
  if (pending.length === 0) {
    await sendFinalDsn(m, rcpts, ctx, deps, store, log);
    await store.finish(m.id, 'done', m.receivedAt, ctx.now());
    await new MailboxStore(ctx.storage.tables, ctx.storage.mail, { now: ctx.now }).releaseBlob(m.blobKey, blobHolder(m.id));
    log.info(
      { delivered: rcpts.filter((r) => r.state === 'delivered').length, bounced: rcpts.filter((r) => r.state === 'bounced').length },
      'message finished',
    );
    return done;
  }
  if (retry.delayNoticeDue(receivedAt) && !m.delayNoticeSent) await sendDelayNotice(m, pending, retry, ctx, deps, store, log);
  const nextAt = Math.min(...pending.map((r) => (r.nextAttemptAt ? Date.parse(r.nextAttemptAt) : now.getTime())));
  const wait = Math.max(0, nextAt - ctx.now().getTime());
  // A queue message may carry a generation ahead of the stored one (a crash before advanceSeq).
  const seq = Math.max(m.seq, job.seq ?? 0) + 1;
  const next: OutboundQueueBody = { ...job, seq, notBefore: new Date(nextAt).toISOString() };
  // Send the next generation before advancing `seq`: a crash in between leaves two live queue
  // messages (the stale one is dropped later), never none.
  await ctx.storage.queues.send('outbound', JSON.stringify(next), { delaySeconds: Math.min(MAX_DELAY_SECONDS, Math.ceil(wait / 1000)) });
  await store.advanceSeq(m.id, seq, new Date(nextAt).toISOString());
  return done;
}

function chunk<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

/** Runs `fn` over `items` with at most `limit` running at once; rejects with the first error
 * after all started work has settled. */
async function forEachLimited<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const lane = async () => {
    while (next < items.length) {
      const x = items[next++];
      try {
        await fn(x);
      } catch (e) {
        errors.push(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (errors.length) throw errors[0];
}

function applyOutcome(r: RcptRecord, o: Outcome, retry: RetrySchedule, receivedAt: Date, now: Date): RcptRecord {
  const attempts = r.attempts + 1;
  const base: RcptRecord = { ...r, attempts, lastReply: o.reply, status: o.status, remoteHost: o.host, lastAttemptAt: now.toISOString() };
  if (o.ok) {
    // RFC 3461 §5.2.2: NOTIFY=SUCCESS to a host without DSN support gets a "relayed" DSN from us.
    const relayed = r.notify?.includes('SUCCESS') && !o.dsn ? true : undefined;
    return { ...base, state: 'delivered', finalAt: now.toISOString(), nextAttemptAt: undefined, relayed };
  }
  if (!o.temporary) return { ...base, state: 'bounced', finalAt: now.toISOString(), nextAttemptAt: undefined };
  const d = retry.afterTemporaryFailure(attempts, receivedAt);
  if (d.kind === 'expire') {
    // RFC 3463 §3.5: X.4.7 "delivery time expired"; final, so reported with class 5.
    return { ...base, state: 'bounced', status: '5.4.7', lastReply: `${o.reply} (${d.reason})`, finalAt: now.toISOString(), nextAttemptAt: undefined };
  }
  return { ...base, state: 'deferred', nextAttemptAt: d.at.toISOString() };
}
