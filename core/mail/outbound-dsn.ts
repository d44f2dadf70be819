/**
 * What the outbound worker tells the sender: the one final DSN of a message (RFC 3464) and the
 * one delay notice, each stored as a blob and handed on as a new message from `<>`, to the
 * inbound queue for a local sender or the outbound queue for a remote one.
 */
import { Readable } from 'node:stream';
import type { Logger } from '../log.js';
import { isStorageError } from '../storage/ports.js';
import type { JobContext } from '../workers/job.js';
import { buildDsn, type DsnRecipientReport } from './dsn.js';
import type { InboundJob, OutboundJob } from './jobs.js';
import type { OutboundDeps } from './outbound.js';
import type { MessageRecord, OutboundStore, RcptRecord } from './outbound-store.js';
import type { RetrySchedule } from './retry.js';

/** RET absent (RFC 3461 §4.3 leaves it to us): return the whole message up to this size. */
const FULL_RETURN_MAX_BYTES = 256 * 1024;

function wants(r: RcptRecord, what: 'FAILURE' | 'DELAY'): boolean {
  // RFC 3461 §4.1: without NOTIFY, failures are reported (and delays may be).
  return !r.notify?.length ? true : r.notify.includes(what);
}

/** The one final DSN of a message: its failed recipients (NOTIFY default or FAILURE) and those
 * relayed to a host without DSN support that asked for SUCCESS (RFC 3464 allows mixed actions). */
export async function sendFinalDsn(
  m: MessageRecord,
  rcpts: RcptRecord[],
  ctx: JobContext,
  deps: OutboundDeps,
  store: OutboundStore,
  log: Logger,
): Promise<void> {
  const failed = rcpts.filter((r) => r.state === 'bounced' && wants(r, 'FAILURE'));
  const relayed = rcpts.filter((r) => r.state === 'delivered' && r.relayed);
  if ((!failed.length && !relayed.length) || m.dsnSent) return;
  // RFC 5321 §6.1 / RFC 3461 §6.2: never bounce a message from the null sender (no loops).
  if (m.from === '') {
    log.info({ rcpts: failed.map((r) => r.address) }, 'undeliverable message from the null sender; no DSN');
    return;
  }
  const reports: DsnRecipientReport[] = [
    ...failed.map((r) => ({
      ...reportBase(r),
      action: 'failed' as const,
      status: r.status?.startsWith('5') ? r.status : `5${(r.status ?? '4.0.0').slice(1)}`,
    })),
    ...relayed.map((r) => ({ ...reportBase(r), action: 'relayed' as const, status: r.status?.startsWith('2') ? r.status : '2.0.0' })),
  ];
  await sendDsn(m, 'failure', reports, ctx, deps, log);
  await store.claimDsn(m.id, 'dsnSent');
}

function reportBase(r: RcptRecord): Omit<DsnRecipientReport, 'action' | 'status'> {
  return {
    address: r.address,
    orcpt: r.orcpt,
    remoteMta: r.remoteHost?.replace(/ \[.*\]$/, ''),
    diagnostic: r.lastReply,
    diagnosticType: r.lastReply && /^\d{3}[\s-]/.test(r.lastReply) ? 'smtp' : 'x-local',
    lastAttemptAt: r.lastAttemptAt ? new Date(r.lastAttemptAt) : undefined,
  };
}

/** The one delay notice of a message (RFC 3464 action `delayed`), to recipients whose NOTIFY
 * allows it; claimed even when nobody is told, so it is not tried again. */
export async function sendDelayNotice(
  m: MessageRecord,
  pending: RcptRecord[],
  retry: RetrySchedule,
  ctx: JobContext,
  deps: OutboundDeps,
  store: OutboundStore,
  log: Logger,
): Promise<void> {
  const delayed = pending.filter((r) => wants(r, 'DELAY'));
  if (m.from === '' || !delayed.length) {
    await store.claimDsn(m.id, 'delayNoticeSent');
    return;
  }
  const until = new Date(new Date(m.receivedAt).getTime() + retry.maxAgeSeconds * 1000);
  const reports: DsnRecipientReport[] = delayed.map((r) => ({
    ...reportBase(r),
    action: 'delayed',
    status: r.status?.startsWith('4') ? r.status : '4.0.0',
    willRetryUntil: until,
  }));
  await sendDsn(m, 'delay', reports, ctx, deps, log);
  await store.claimDsn(m.id, 'delayNoticeSent');
}

/**
 * Stores a DSN and hands it on as a new message from `<>`: to the inbound queue when the sender
 * is local (so it reaches the mailbox by the normal path), else to the outbound queue. The blob
 * key and the job id are derived from the original id, so a repeated call (after a crash) makes
 * the same job, which both workers treat idempotently.
 */
async function sendDsn(
  m: MessageRecord,
  kind: 'failure' | 'delay',
  reports: DsnRecipientReport[],
  ctx: JobContext,
  deps: OutboundDeps,
  log: Logger,
): Promise<void> {
  const id = `${m.id}.${kind === 'failure' ? 'dsn' : 'delay'}`;
  const blobKey = `outbound-dsn/${id}.eml`;
  // RFC 3461 §4.3: RET applies to failure DSNs; other DSNs return the header only.
  const anyFailed = reports.some((r) => r.action === 'failed');
  const ret = !anyFailed ? 'HDRS' : (m.ret ?? (m.size <= FULL_RETURN_MAX_BYTES ? 'FULL' : 'HDRS'));
  const now = ctx.now();
  let size: number;
  try {
    const info = await ctx.storage.mail.put(
      blobKey,
      Readable.from(
        buildDsn({
          reportingMta: ctx.config.hostname,
          to: m.from,
          queueId: m.id,
          envid: m.envid,
          arrivalDate: new Date(m.receivedAt),
          recipients: reports,
          ret,
          original: async () => (await ctx.storage.mail.get(m.blobKey)).body,
          now,
        }),
      ),
      { ifAbsent: true, contentType: 'message/rfc822' },
    );
    size = info.size;
  } catch (e) {
    if (!isStorageError(e, 'ConditionFailed')) throw e;
    size = (await ctx.storage.mail.head(blobKey)).size;
  }
  const kindOfSender = await deps.senderKind(m.from, ctx.storage);
  if (kindOfSender === 'unknown') {
    // The sender's address is in a local domain but no longer exists: nobody to tell.
    log.warn({ dsn: id, to: m.from }, 'DSN dropped: the sender no longer exists here');
    return;
  }
  if (kindOfSender === 'local') {
    const job: InboundJob = {
      v: 1,
      id,
      blobKey,
      size,
      from: '',
      rcpts: [{ address: m.from }],
      receivedAt: now.toISOString(),
      client: { address: '127.0.0.1', helo: ctx.config.hostname },
      listener: 'mx',
    };
    await ctx.storage.queues.send('inbound', JSON.stringify(job));
  } else {
    const job: OutboundJob = { v: 1, id, blobKey, size, from: '', rcpts: [{ address: m.from, notify: ['NEVER'] }], receivedAt: now.toISOString() };
    await ctx.storage.queues.send('outbound', JSON.stringify(job));
  }
  log.info({ dsn: id, to: m.from, sender: kindOfSender, rcpts: reports.map((r) => r.address) }, kind === 'failure' ? 'DSN sent' : 'delay notice sent');
}
