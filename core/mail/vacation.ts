/**
 * Vacation replies (RFC 3834 automatic responses, with the rules of RFC 5230 §4): a per-user
 * setting in Tables (what JMAP's VacationResponse and `tomlinson vacation` read and write), and
 * the inbound worker's answer to a message delivered while it is active. A reply goes to the
 * envelope sender from the null sender, once per sender per period, and never to lists, bulk
 * mail, automatic messages or our own addresses; it travels the normal way: the outbound queue
 * for a remote sender, the inbound queue for a local one.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { Headers } from '@zone-eu/mailsplit';
import addressparser from 'nodemailer/lib/addressparser/index.js';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import libmime from 'libmime';
import { Accounts } from '../accounts/accounts.js';
import type { Logger } from '../log.js';
import { isStorageError, putIfAbsent, type Item, type Tables } from '../storage/ports.js';
import type { JobContext } from '../workers/job.js';
import type { InboundJob, OutboundJob } from './jobs.js';
import { returnPathLine } from './return-path.js';

/** A user's vacation setting, with the fields of RFC 8621 §8.1 (dates as UTC ISO strings). */
export interface VacationSetting {
  isEnabled: boolean;
  fromDate: string | null;
  toDate: string | null;
  subject: string | null;
  textBody: string | null;
  htmlBody: string | null;
}

/** The setting as stored: `rev` counts every change (JMAP's state; the once-per-period list). */
export interface StoredVacation extends VacationSetting {
  rev: number;
}

/** The setting of a user who never set one. */
export const VACATION_OFF: VacationSetting = { isEnabled: false, fromDate: null, toDate: null, subject: null, textBody: null, htmlBody: null };

/** RFC 5230 §4.1: `:days` defaults to 7, the period in which one sender gets at most one reply. */
export const REPLY_PERIOD_SECONDS = 7 * 86400;

/** Most header octets read from a message to decide (lists, Auto-Submitted, addressees). */
const MAX_HEADER_BYTES = 64 * 1024;
/** Most addressee fields checked against the user's addresses (each check is a lookup). */
const MAX_ADDRESSEES = 50;

const settingKey = (user: string) => ({ pk: `VAC#${user.toLowerCase()}`, sk: 'SETTING' });

/** Reads and writes the vacation setting of each user through the Tables port. */
export class VacationStore {
  constructor(private readonly tables: Tables) {}

  /** The user's setting (off with rev 0 when never set). `consistent: false` for the inbound
   * worker, which reads it for every delivery: a change may take a second to apply there, at half
   * the price of a DynamoDB read. */
  async get(user: string, options: { consistent?: boolean } = {}): Promise<StoredVacation> {
    const item = await this.tables.get(settingKey(user), options);
    if (!item) return { ...VACATION_OFF, rev: 0 };
    return {
      isEnabled: item.isEnabled === true,
      fromDate: typeof item.fromDate === 'string' ? item.fromDate : null,
      toDate: typeof item.toDate === 'string' ? item.toDate : null,
      subject: typeof item.subject === 'string' ? item.subject : null,
      textBody: typeof item.textBody === 'string' ? item.textBody : null,
      htmlBody: typeof item.htmlBody === 'string' ? item.htmlBody : null,
      rev: Number(item.rev ?? 0),
    };
  }

  /** Changes the named fields; returns the setting after the change. With `ifRev`, only when
   * the stored revision is still that one (ConditionFailed otherwise). */
  async set(user: string, patch: Partial<VacationSetting>, options: { ifRev?: number } = {}): Promise<StoredVacation> {
    const set: Record<string, Item[string] & {}> = {};
    const remove: string[] = [];
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) remove.push(k);
      else if (v !== undefined) set[k] = v;
    }
    const condition = options.ifRev === undefined ? undefined : options.ifRev === 0 ? { exists: false } : { equals: { rev: options.ifRev } };
    await this.tables.update(settingKey(user), { set, remove, add: { rev: 1 } }, condition ? { condition } : {});
    return this.get(user);
  }
}

/** Whether replies are due now: enabled, and inside [fromDate, toDate) where given (RFC 8621 §8.1). */
export function isActive(s: VacationSetting, now: Date): boolean {
  if (!s.isEnabled) return false;
  const t = now.getTime();
  if (s.fromDate && t < Date.parse(s.fromDate)) return false;
  if (s.toDate && t >= Date.parse(s.toDate)) return false;
  return true;
}

/** Why no reply is sent to a message, or undefined when one is (RFC 3834 §2, RFC 5230 §4.5). */
export async function whyNoReply(
  headers: Headers,
  envelopeFrom: string,
  user: string,
  mayUse: (address: string) => Promise<boolean>,
): Promise<string | undefined> {
  // RFC 3834 §2: never to the null sender (bounces, other automatic mail).
  if (!envelopeFrom) return 'null sender';
  // RFC 3834 §2 / §5: Auto-Submitted other than "no" is an automatic message.
  const auto = headers.getFirst('auto-submitted').trim().toLowerCase();
  if (auto && !/^no\b/.test(auto)) return 'auto-submitted';
  // RFC 3834 §2: mailing lists (List-* of RFC 2369/2919) and Precedence bulk, list or junk.
  if (/^(list|bulk|junk)\b/i.test(headers.getFirst('precedence').trim())) return 'precedence';
  if (headers.getList().some((l) => l.key.startsWith('list-'))) return 'mailing list';
  // RFC 5230 §4.5: addresses of list software and daemons.
  const at = envelopeFrom.lastIndexOf('@');
  const local = (at < 0 ? envelopeFrom : envelopeFrom.slice(0, at)).toLowerCase();
  if (local === 'mailer-daemon' || local.startsWith('owner-') || local.endsWith('-request') || local === 'listserv' || local === 'majordomo')
    return 'list or daemon sender';
  // RFC 5230 §4.5: never to the user's own addresses (a loop with oneself, or a message sent to self).
  if (await mayUse(envelopeFrom)) return 'own address';
  // RFC 5230 §4.5: only when one of the user's addresses is an addressee; Bcc'd copies and lists
  // that hide their recipients are left alone.
  const addressees = ['to', 'cc', 'bcc', 'resent-to', 'resent-cc', 'resent-bcc']
    .flatMap((f) => headers.get(f).map((line) => line.slice(line.indexOf(':') + 1)))
    .flatMap((v) => addressparser(v, { flatten: true }).map((a) => a.address.toLowerCase()))
    .filter((a) => a.includes('@'));
  const unique = [...new Set(addressees)].slice(0, MAX_ADDRESSEES);
  if (unique.includes(user.toLowerCase())) return undefined;
  for (const a of unique) if (await mayUse(a)) return undefined;
  return 'not an addressee';
}

/** The header block of a message (at most MAX_HEADER_BYTES), parsed. */
export async function readHeaders(src: Readable | Buffer): Promise<Headers> {
  let head = Buffer.alloc(0);
  const chunks: Iterable<Buffer> | AsyncIterable<Buffer> = Buffer.isBuffer(src) ? [src] : (src as AsyncIterable<Buffer>);
  for await (const c of chunks) {
    head = Buffer.concat([head, c]);
    const end = head.indexOf('\r\n\r\n');
    const lfEnd = head.indexOf('\n\n');
    const cut = [end >= 0 ? end + 2 : -1, lfEnd >= 0 ? lfEnd + 1 : -1].filter((x) => x >= 0);
    if (cut.length) {
      head = head.subarray(0, Math.min(...cut));
      break;
    }
    if (head.length >= MAX_HEADER_BYTES) break;
  }
  if (!Buffer.isBuffer(src)) src.destroy();
  return new Headers(head.subarray(0, MAX_HEADER_BYTES));
}

/** What a reply answers: the user, the message's envelope sender and its headers. */
export interface VacationInput {
  /** The inbound job's id: makes the reply's id, so a redelivered job queues the same reply. */
  jobId: string;
  user: string;
  envelopeFrom: string;
  /** Opens the delivered message (only its header is read). */
  open: () => Promise<Readable | Buffer>;
}

/**
 * Answers one delivery when the user's vacation is active. Idempotent per job: the marker of the
 * sender's period names the job that claimed it, so a redelivery of that job queues the same
 * reply again (both workers are idempotent on its id) while any other job within the period
 * sends none. Returns what happened, for the log.
 */
export async function answerVacation(input: VacationInput, ctx: JobContext, log: Logger): Promise<string> {
  const { tables } = ctx.storage;
  const setting = await new VacationStore(tables).get(input.user, { consistent: false });
  const now = ctx.now();
  if (!isActive(setting, now)) return 'inactive';
  const headers = await readHeaders(await input.open());
  const accounts = new Accounts(tables);
  const why = await whyNoReply(headers, input.envelopeFrom, input.user, (a) => accounts.canSendAs(input.user, a));
  if (why) {
    log.debug({ user: input.user, why }, 'no vacation reply');
    return why;
  }
  const sender = input.envelopeFrom.toLowerCase();
  const marker = { pk: `VAC#${input.user.toLowerCase()}`, sk: `SENT#${setting.rev}#${sender}` };
  const claimed = await putIfAbsent(tables, { ...marker, jobId: input.jobId, ttl: Math.floor(now.getTime() / 1000) + REPLY_PERIOD_SECONDS });
  if (!claimed) {
    const existing = await tables.get(marker);
    if (existing?.jobId !== input.jobId) return 'already answered in this period';
  }
  const id = `${input.jobId}.vac-${createHash('sha256').update(input.user.toLowerCase()).digest('hex').slice(0, 12)}`;
  const where = await queueReply(id, sender, () => buildReply(setting, input.user, input.envelopeFrom, headers, id, ctx), ctx);
  log.info({ user: input.user, to: sender, reply: id, where }, 'vacation reply sent');
  return 'replied';
}

/** The reply message (RFC 3834 §3): From the user, Auto-Submitted: auto-replied, threaded. */
async function buildReply(s: VacationSetting, user: string, to: string, original: Headers, id: string, ctx: JobContext): Promise<Buffer> {
  const originalSubject = libmime.decodeWords(original.getFirst('subject')).replace(/\s+/g, ' ').trim();
  const messageId = original.getFirst('message-id').trim();
  const references = original.getFirst('references').trim();
  // RFC 3834 §3.1.5: a subject made of "Auto:" and the original one when the user gave none.
  const subject = s.subject ?? `Auto: ${originalSubject}`;
  const text = s.textBody ?? (s.htmlBody ? undefined : `${user} is away and will read your message later.`);
  const composer = new MailComposer({
    from: user,
    to,
    subject,
    ...(text !== undefined ? { text } : {}),
    ...(s.htmlBody ? { html: s.htmlBody } : {}),
    messageId: `<${id}@${ctx.config.hostname}>`,
    date: ctx.now(),
    // RFC 3834 §3.1.3 / §3.1.4: In-Reply-To and References name the message answered.
    ...(messageId ? { inReplyTo: messageId, references: [...(references ? references.split(/\s+/) : []), messageId].slice(-20) } : {}),
    headers: { 'Auto-Submitted': 'auto-replied' },
  });
  return composer.compile().build();
}

/**
 * Stores the reply (once: put-if-absent under a key made from its id) and queues it from `<>`:
 * to the outbound queue for a remote sender, which never bounces it (NOTIFY=NEVER, RFC 3461
 * §6.2), or to the inbound queue for a local one, with the Return-Path of final delivery.
 */
async function queueReply(id: string, to: string, build: () => Promise<Buffer>, ctx: JobContext): Promise<'local' | 'remote' | 'unknown'> {
  const kind = (await new Accounts(ctx.storage.tables).resolve(to)).kind;
  if (kind === 'unknown') return kind;
  const blobKey = `vacation/${id}.eml`;
  let size: number;
  try {
    const body = await build();
    const info = await ctx.storage.mail.put(blobKey, kind === 'local' ? Buffer.concat([Buffer.from(returnPathLine(''), 'latin1'), body]) : body, {
      ifAbsent: true,
      contentType: 'message/rfc822',
    });
    size = info.size;
  } catch (e) {
    if (!isStorageError(e, 'ConditionFailed')) throw e;
    size = (await ctx.storage.mail.head(blobKey)).size;
  }
  const receivedAt = ctx.now().toISOString();
  if (kind === 'local') {
    const job: InboundJob = {
      v: 1,
      id,
      blobKey,
      size,
      from: '',
      rcpts: [{ address: to }],
      receivedAt,
      client: { address: '127.0.0.1', helo: ctx.config.hostname },
      listener: 'mx',
    };
    await ctx.storage.queues.send('inbound', JSON.stringify(job));
  } else {
    const job: OutboundJob = { v: 1, id, blobKey, size, from: '', rcpts: [{ address: to, notify: ['NEVER'] }], receivedAt };
    await ctx.storage.queues.send('outbound', JSON.stringify(job));
  }
  return kind;
}
