/**
 * EmailSubmission/set's create (RFC 8621 §7.5): sends an existing Email's raw message through the
 * submission listener's own hooks (containers/smtp/policy.ts: MAIL FROM, RCPT TO, then the
 * spool), so it is queued, relayed and DKIM-signed exactly as mail sent over SMTP AUTH, after the
 * same outbound spam scan (core/mail/outbound-verdict.ts).
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { Accounts } from '../../../core/accounts/accounts.js';
import type { DsnRecipient } from '../../../core/mail/jobs.js';
import { withoutBcc } from '../../../core/mail/bcc.js';
import { outboundDecision } from '../../../core/mail/outbound-verdict.js';
import { withoutReturnPath } from '../../../core/mail/return-path.js';
import { readHeaders } from '../../../core/mail/vacation.js';
import { MailboxStore } from '../../../core/mailbox/store.js';
import addressparser from 'nodemailer/lib/addressparser/index.js';
import { createHooks } from '../../smtp/policy.js';
import { ReplyError } from '../../smtp/protocol/command.js';
import type { SessionInfo, Transaction } from '../../smtp/session.js';
import { identityList } from './submission-identity.js';
import type { JmapBlob, JmapContext, JsonObject, SetError } from './types.js';

/** An envelope address (RFC 8621 §7). */
export interface Address {
  email: string;
  parameters: JsonObject | null;
}
/** The SMTP envelope of a submission (RFC 8621 §7). */
export interface Envelope {
  mailFrom: Address;
  rcptTo: Address[];
}

function readAddress(a: unknown): Address | undefined {
  if (!a || typeof a !== 'object') return undefined;
  const { email, parameters } = a as JsonObject;
  if (typeof email !== 'string' || (parameters !== undefined && parameters !== null && typeof parameters !== 'object')) return undefined;
  return { email, parameters: (parameters as JsonObject | null | undefined) ?? null };
}

/** Addresses of header fields (lower-cased, deduplicated, in order). */
function headerAddresses(headers: Awaited<ReturnType<typeof readHeaders>>, fields: string[]): string[] {
  const all = fields
    .flatMap((f) => headers.get(f).map((line) => line.slice(line.indexOf(':') + 1)))
    .flatMap((v) => addressparser(v, { flatten: true }).map((a) => a.address))
    .filter((a) => a.includes('@'));
  return [...new Set(all.map((a) => a.toLowerCase()))];
}

/** A stream that passes bytes through while counting them and noting 8-bit octets (DataStats). */
async function* measured(src: Readable, stats: { bytes: number; eightBit: boolean }): AsyncGenerator<Buffer> {
  for await (const c of src) {
    const b = c as Buffer;
    stats.bytes += b.length;
    if (!stats.eightBit)
      for (const x of b)
        if (x > 0x7f) {
          stats.eightBit = true;
          break;
        }
    yield b;
  }
}

/** Sends one Email as the submission listener would; returns the record's data or a SetError. */
export async function submit(o: JsonObject, ctx: JmapContext): Promise<JsonObject | SetError> {
  const bad = Object.keys(o).filter((k) => !['identityId', 'emailId', 'envelope'].includes(k));
  if (bad.length) return { type: 'invalidProperties', properties: bad, description: 'server-set or unknown properties' };
  const resolve = (v: unknown) => (typeof v === 'string' && v.startsWith('#') ? ctx.createdIds.get(v.slice(1)) : v);
  const identityId = resolve(o.identityId);
  const emailId = resolve(o.emailId);
  if (typeof identityId !== 'string') return { type: 'invalidProperties', properties: ['identityId'] };
  if (typeof emailId !== 'string') return { type: 'invalidProperties', properties: ['emailId'] };
  const identity = (await identityList(ctx)).find((i) => i.id === identityId);
  if (!identity) return { type: 'invalidProperties', properties: ['identityId'], description: 'no such identity' };
  const blob = await ctx.blobs.get(`G${emailId}`);
  if (!blob) return { type: 'invalidProperties', properties: ['emailId'], description: 'no such email' };
  const maxSize = ctx.config.smtp.maxMessageBytes;
  if (blob.size > maxSize) return { type: 'tooLarge', maxSize };

  const head = await blob.open();
  // readHeaders stops early; the blob's own stream is closed here, not only the filter on it.
  const headers = await readHeaders(withoutReturnPath(head)).finally(() => head.destroy());
  const accounts = new Accounts(ctx.storage.tables);
  // RFC 8621 §7.5 forbiddenFrom: the From header names an address the user may not send as.
  const fromHeader = headerAddresses(headers, ['from']);
  if (fromHeader.length === 0) return { type: 'invalidEmail', properties: ['from'], description: 'the Email has no From address' };
  for (const a of fromHeader) if (!(await accounts.canSendAs(ctx.user, a))) return { type: 'forbiddenFrom', description: `${ctx.user} may not send as ${a}` };

  // RFC 8621 §7: without an envelope, MAIL FROM is the Sender (else From) address and RCPT TO the
  // deduplicated To, Cc and Bcc addresses.
  let envelope: Envelope;
  if (o.envelope === undefined || o.envelope === null) {
    const sender = headerAddresses(headers, ['sender'])[0] ?? fromHeader[0];
    envelope = {
      mailFrom: { email: sender, parameters: null },
      rcptTo: headerAddresses(headers, ['to', 'cc', 'bcc']).map((email) => ({ email, parameters: null })),
    };
  } else {
    const e = o.envelope as JsonObject;
    const mailFrom = readAddress(e?.mailFrom);
    const rcptTo = Array.isArray(e?.rcptTo) ? e.rcptTo.map(readAddress) : undefined;
    if (!mailFrom || !rcptTo || rcptTo.some((r) => !r)) return { type: 'invalidProperties', properties: ['envelope'] };
    envelope = { mailFrom, rcptTo: rcptTo as Address[] };
  }
  if (envelope.rcptTo.length === 0) return { type: 'noRecipients' };

  // The listener's own hooks, in the order an SMTP session calls them.
  const hooks = createHooks(accounts, new MailboxStore(ctx.storage.tables, ctx.storage.mail), {
    storage: ctx.storage,
    log: ctx.log,
    hostname: ctx.config.hostname,
    maxMessageBytes: maxSize,
    queueInlineBytes: ctx.config.smtp.queueInlineBytes,
    checkAuth: false,
    // The same hourly recipient limit as the submission ports (one counter per user in Tables).
    maxRecipientsPerUserHour: ctx.config.smtp.maxRecipientsPerUserHour,
  });
  const session: SessionInfo = {
    id: `jmap-${randomBytes(6).toString('hex')}`,
    listener: 'submission',
    implicitTls: true,
    clientAddress: '127.0.0.1',
    clientPort: 0,
    helo: 'jmap',
    esmtp: true,
    tls: undefined,
    authUser: ctx.user,
  };
  const tx: Transaction = { from: envelope.mailFrom.email, declaredSize: blob.size, smtputf8: false, dsn: {}, rcpts: [] };
  try {
    await hooks.mailFrom(envelope.mailFrom.email, tx, session);
  } catch (e) {
    if (e instanceof ReplyError) return { type: 'forbiddenMailFrom', description: e.message };
    throw e;
  }
  const invalid: string[] = [];
  for (const r of envelope.rcptTo) {
    const rcpt: DsnRecipient = { address: r.email };
    try {
      await hooks.rcptTo(rcpt, tx, session);
      tx.rcpts.push(rcpt);
    } catch (e) {
      if (!(e instanceof ReplyError)) throw e;
      // The hourly sending limit: RFC 8620 §5.3 rateLimit ("it may work if tried again later"), as
      // for rspamd's soft reject below; forbiddenToSend is kept for refusals a retry will not change.
      if (e.code === 451 && e.enhanced === '4.7.1') return { type: 'rateLimit', description: e.message };
      invalid.push(r.email);
    }
  }
  if (invalid.length) return { type: 'invalidRecipients', invalidRecipients: invalid };
  const refused = await spamScan(ctx, blob, tx, session);
  if (refused) return refused;
  const sink = hooks.openMessage(tx, session);
  const stats = { bytes: 0, eightBit: false };
  try {
    // The draft keeps its Bcc (its recipients came from it above); the copy sent does not.
    for await (const chunk of measured(withoutBcc(withoutReturnPath(await blob.open())), stats)) await sink.write(chunk);
    if (stats.eightBit) tx.body = '8BITMIME';
    await sink.finish({ ...stats, bareLf: false, bareCr: false, longestLine: 0 });
  } catch (e) {
    sink.abort('submission failed');
    if (e instanceof ReplyError) return { type: 'forbiddenToSend', description: e.message };
    throw e;
  }
  let threadId: unknown = null;
  try {
    const got = await ctx.call('Email/get', { accountId: ctx.accountId, ids: [emailId], properties: ['threadId'] });
    threadId = (got.list as JsonObject[] | undefined)?.[0]?.threadId ?? null;
  } catch {
    // Email/get is another module's; the submission stands without its thread.
  }
  return {
    identityId,
    emailId,
    threadId,
    envelope: envelope as unknown as JsonObject,
    sendAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    queueId: sink.id,
  };
}

/**
 * The outbound spam scan (core/mail/outbound-verdict.ts, as on the submission ports) of the bytes
 * that would be sent, streamed from the blob, before anything is queued or counted against the
 * hourly limit. Its refusal as a SetError whose description is for the user (the webmail shows
 * it): rspamd's reject is RFC 8621 §7.5 forbiddenToSend, "not permitted to send"; its soft reject
 * or greylist is RFC 8620 §5.3 rateLimit, the one SetError that says "it may work if tried again
 * later" (rspamd soft-rejects a user's mail mostly from its ratelimit module). A skipped scan
 * (rspamd down or slow) sends the message; it is logged and counted there.
 */
async function spamScan(ctx: JmapContext, blob: JmapBlob, tx: Transaction, session: SessionInfo): Promise<SetError | undefined> {
  if (!ctx.spam) return undefined;
  const message = withoutBcc(withoutReturnPath(await blob.open()));
  try {
    const d = await outboundDecision(
      ctx.spam,
      message,
      { from: tx.from, rcpts: tx.rcpts.map((r) => r.address), ip: session.clientAddress, helo: session.helo ?? '', queueId: session.id, user: ctx.user },
      { log: ctx.log, tables: ctx.storage.tables },
    );
    if (d.kind === 'reject') return { type: 'forbiddenToSend', description: d.text };
    if (d.kind === 'defer') return { type: 'rateLimit', description: `${d.text}; the message was not sent, try again later` };
    return undefined;
  } finally {
    // The scanner may stop reading early (an error answer): the blob is closed here either way.
    message.destroy();
  }
}
