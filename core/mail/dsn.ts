/**
 * Delivery status notifications (RFC 3464 multipart/report; RFC 6522 for the report container):
 * a human-readable part, a message/delivery-status part with one block per recipient, and the
 * original message or its headers (RFC 3461 §4.3 RET). Built as a stream: the original message
 * is read from its blob, never held whole in memory.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { Accounts } from '../accounts/accounts.js';
import { isStorageError } from '../storage/ports.js';
import type { JobContext } from '../workers/job.js';
import type { InboundJob, OutboundJob } from './jobs.js';
import { returnPathLine } from './return-path.js';

/** One recipient's block in the delivery-status part (RFC 3464 §2.3). */
export interface DsnRecipientReport {
  /** Final-Recipient address (rfc822). */
  address: string;
  /** Original-Recipient from ORCPT, as `type;address`. */
  orcpt?: string;
  /** RFC 3464 §2.3.3. */
  action: 'failed' | 'delayed' | 'delivered' | 'relayed';
  /** RFC 3463 status code, e.g. 5.1.1. */
  status: string;
  /** The host that answered, when one did. */
  remoteMta?: string;
  /** The SMTP reply or our own reason. */
  diagnostic?: string;
  /** Whether `diagnostic` is an SMTP reply (smtp) or our own text (x-local). */
  diagnosticType?: 'smtp' | 'x-local';
  lastAttemptAt?: Date;
  /** For delayed: until when we keep trying. */
  willRetryUntil?: Date;
}

/** What a DSN says and about which message. */
export interface DsnInput {
  /** Our host name (Reporting-MTA, the From address's domain). */
  reportingMta: string;
  /** The envelope sender the DSN goes to. */
  to: string;
  /** The queue id of the original message. */
  queueId: string;
  envid?: string;
  arrivalDate: Date;
  recipients: DsnRecipientReport[];
  /** FULL: the whole message; HDRS: only its header. */
  ret: 'FULL' | 'HDRS';
  /** Opens the original message. */
  original: () => Promise<Readable>;
  /** @default new Date() */
  now?: Date;
}

/** RFC 5322 §3.3 date-time. */
export function rfc5322Date(d: Date): string {
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${days[d.getUTCDay()]}, ${d.getUTCDate()} ${months[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** Keeps a header value printable ASCII on one line (remote replies may carry anything). */
function clean(s: string): string {
  return s
    .replace(/[\r\n]+/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .slice(0, 900);
}

/** Largest header block returned for RET=HDRS (the rest is cut at a line end). */
const MAX_HEADER_BYTES = 256 * 1024;

async function* headerBlock(src: Readable): AsyncGenerator<Buffer> {
  let seen = 0;
  let tail = '';
  try {
    for await (const c of src) {
      const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
      const text = tail + chunk.toString('latin1');
      const end = text.search(/\r?\n\r?\n/);
      if (end >= 0) {
        const upto = end - tail.length;
        if (upto > 0) yield chunk.subarray(0, upto);
        return;
      }
      seen += chunk.length;
      if (seen > MAX_HEADER_BYTES) {
        const lastNl = chunk.lastIndexOf(0x0a);
        if (lastNl >= 0) yield chunk.subarray(0, lastNl - (chunk[lastNl - 1] === 0x0d ? 1 : 0));
        return;
      }
      yield chunk;
      tail = text.slice(-3);
    }
  } finally {
    src.destroy();
  }
}

/** The human-readable part's text. */
function humanText(input: DsnInput): string {
  const failed = input.recipients.filter((r) => r.action === 'failed');
  const delayed = input.recipients.filter((r) => r.action === 'delayed');
  const done = input.recipients.filter((r) => r.action === 'relayed' || r.action === 'delivered');
  const lines: string[] = [`This is the mail system at host ${input.reportingMta}.`, ''];
  if (failed.length) {
    lines.push('Your message could not be delivered to one or more recipients.', 'It has been returned below. The recipients and the replies were:', '');
    for (const r of failed)
      lines.push(`<${clean(r.address)}>:`, `    ${r.remoteMta ? `host ${clean(r.remoteMta)} said: ` : ''}${clean(r.diagnostic ?? r.status)}`, '');
  }
  if (delayed.length) {
    lines.push('Delivery to the following recipients has been delayed. No action is required;', 'the mail system will keep trying.', '');
    for (const r of delayed) {
      lines.push(`<${clean(r.address)}>:`, `    ${clean(r.diagnostic ?? r.status)}`);
      if (r.willRetryUntil) lines.push(`    will retry until ${rfc5322Date(r.willRetryUntil)}`);
      lines.push('');
    }
  }
  if (done.length) {
    lines.push(
      'Your message was delivered to the following recipients. The next mail server does',
      'not report delivery status itself, so this is the last report you will get:',
      '',
    );
    for (const r of done)
      lines.push(`<${clean(r.address)}>:`, `    ${r.remoteMta ? `host ${clean(r.remoteMta)} said: ` : ''}${clean(r.diagnostic ?? r.status)}`, '');
  }
  return lines.join('\r\n');
}

/** The message/delivery-status body (RFC 3464 §2.2 per-message fields, §2.3 per-recipient). */
export function deliveryStatus(input: DsnInput): string {
  const out: string[] = [];
  if (input.envid) out.push(`Original-Envelope-Id: ${clean(input.envid)}`);
  out.push(`Reporting-MTA: dns; ${input.reportingMta}`, `X-Tomlinson-Queue-ID: ${clean(input.queueId)}`);
  out.push(`Arrival-Date: ${rfc5322Date(input.arrivalDate)}`);
  for (const r of input.recipients) {
    out.push('');
    if (r.orcpt) {
      const i = r.orcpt.indexOf(';');
      out.push(`Original-Recipient: ${clean(r.orcpt.slice(0, i))}; ${clean(r.orcpt.slice(i + 1))}`);
    }
    out.push(`Final-Recipient: rfc822; ${clean(r.address)}`, `Action: ${r.action}`, `Status: ${r.status}`);
    if (r.remoteMta) out.push(`Remote-MTA: dns; ${clean(r.remoteMta)}`);
    if (r.diagnostic) out.push(`Diagnostic-Code: ${r.diagnosticType ?? 'smtp'}; ${clean(r.diagnostic)}`);
    if (r.lastAttemptAt) out.push(`Last-Attempt-Date: ${rfc5322Date(r.lastAttemptAt)}`);
    if (r.willRetryUntil) out.push(`Will-Retry-Until: ${rfc5322Date(r.willRetryUntil)}`);
  }
  return out.join('\r\n') + '\r\n';
}

/** The DSN message as a stream of chunks (CRLF line ends), from `<>`-style MAILER-DAEMON. */
export async function* buildDsn(input: DsnInput): AsyncGenerator<Buffer> {
  const now = input.now ?? new Date();
  const boundary = `dsn-${randomBytes(12).toString('hex')}`;
  const failed = input.recipients.some((r) => r.action === 'failed');
  const delayed = input.recipients.some((r) => r.action === 'delayed');
  const subject = failed ? 'Undelivered Mail Returned to Sender' : delayed ? 'Delayed Mail (still being retried)' : 'Successful Mail Delivery Report';
  const head = [
    `From: Mail Delivery System <MAILER-DAEMON@${input.reportingMta}>`,
    `To: <${clean(input.to)}>`,
    `Subject: ${subject}`,
    `Date: ${rfc5322Date(now)}`,
    `Message-ID: <${input.queueId}.${failed ? 'dsn' : delayed ? 'delay' : 'success'}.${now.getTime()}@${input.reportingMta}>`,
    // RFC 3834 §5: automatic responses carry Auto-Submitted: auto-replied.
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    humanText(input),
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    deliveryStatus(input),
    `--${boundary}`,
  ].join('\r\n');
  yield Buffer.from(head + '\r\n', 'latin1');
  const original = await input.original();
  if (input.ret === 'FULL') {
    yield Buffer.from('Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n', 'latin1');
    let last = '';
    for await (const c of original) {
      const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
      if (chunk.length) last = (last + chunk.subarray(-2).toString('latin1')).slice(-2);
      yield chunk;
    }
    if (last !== '\r\n') yield Buffer.from('\r\n');
  } else {
    yield Buffer.from('Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n', 'latin1');
    for await (const chunk of headerBlock(original)) yield chunk;
    yield Buffer.from('\r\n', 'latin1');
  }
  yield Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
}

/** A DSN to store and send as a new message from the null sender. */
export interface DsnDispatch {
  /** Job id of the DSN message; the same id for a repeated call, so both workers see one message. */
  id: string;
  /** The DSN's text, without `to` (the original envelope sender) and `original`. */
  dsn: Omit<DsnInput, 'original'>;
  /** Blob key of the original message. */
  originalKey: string;
}

/**
 * Stores a DSN (idempotently, under a key derived from its id) and queues it as a message from
 * `<>`: to the inbound queue when its recipient, the original sender, is local, else to the
 * outbound queue, which never bounces it again (NOTIFY=NEVER, RFC 3461 §6.2). Returns where it
 * went; 'unknown' (a sender in a local domain that no longer exists) sends nothing.
 */
export async function dispatchDsn(d: DsnDispatch, ctx: JobContext): Promise<'local' | 'remote' | 'unknown'> {
  const kind = (await new Accounts(ctx.storage.tables).resolve(d.dsn.to)).kind;
  if (kind === 'unknown') return kind;
  const blobKey = `dsn/${d.id}.eml`;
  let size: number;
  try {
    const dsn = buildDsn({ ...d.dsn, original: async () => (await ctx.storage.mail.get(d.originalKey)).body });
    // Delivered here, it gets the Return-Path of final delivery (RFC 5321 §4.4), as the listener
    // writes it for every other message.
    const info = await ctx.storage.mail.put(blobKey, Readable.from(kind === 'local' ? withLine(returnPathLine(''), dsn) : dsn), {
      ifAbsent: true,
      contentType: 'message/rfc822',
    });
    size = info.size;
  } catch (e) {
    if (!isStorageError(e, 'ConditionFailed')) throw e;
    size = (await ctx.storage.mail.head(blobKey)).size;
  }
  const receivedAt = (d.dsn.now ?? ctx.now()).toISOString();
  if (kind === 'local') {
    const job: InboundJob = {
      v: 1,
      id: d.id,
      blobKey,
      size,
      from: '',
      rcpts: [{ address: d.dsn.to }],
      receivedAt,
      client: { address: '127.0.0.1', helo: ctx.config.hostname },
      listener: 'mx',
    };
    await ctx.storage.queues.send('inbound', JSON.stringify(job));
  } else {
    const job: OutboundJob = { v: 1, id: d.id, blobKey, size, from: '', rcpts: [{ address: d.dsn.to, notify: ['NEVER'] }], receivedAt };
    await ctx.storage.queues.send('outbound', JSON.stringify(job));
  }
  return kind;
}

async function* withLine(line: string, rest: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  yield Buffer.from(line, 'latin1');
  yield* rest;
}
