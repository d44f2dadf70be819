/**
 * Where an accepted message goes between the first content octet and `250`: the raw message (with
 * our Return-Path and Received lines, and on the MX listener the Authentication-Results) made durable in the mail
 * blobs, then its InboundJob sent to the `inbound` queue (DESIGN.md invariants: the 250 rule).
 *
 * Small messages (the common case) are collected in memory up to `inlineBytes`. Those up to
 * `queueInlineBytes` (64 KiB by default) travel inside the job itself (`raw`): the job's one
 * durable queue write is then the message's durable store, and the worker writes the blob before
 * anything refers to it (why: docs/performance.md, SMTP listener and spool). The other collected messages
 * are written with one put; larger ones are streamed into the blob as they arrive, so memory stays
 * bounded whatever the size. On the MX listener the SPF/DKIM/DMARC result and the spam scan's
 * X-Spam-* fields (core/mail/spam.ts) must be headers at the top of the stored message but are
 * only known once the whole message has been read, so a large MX message is first streamed to a
 * spool key, checked and scanned from there, and copied once to its final key. What an
 * authenticated user sends is scanned too (./outbound-scan.ts), for refusal only: no header
 * fields, so it is stored straight to its key and scanned from there when large.
 */
import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import type { Logger } from '../../core/log.js';
import { checkMessageAuth, type AuthCheck } from '../../core/mail/auth-results.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { buildReceived } from '../../core/mail/received.js';
import { returnPathLine } from '../../core/mail/return-path.js';
import { isSkipped, SPAM_SKIPPED_MSG, spamHeaders, type SpamResult, type SpamScanner } from '../../core/mail/spam.js';
import { countSpamLater } from '../../core/mail/spam-stats.js';
import type { DnsResolver } from '../../core/dns.js';
import type { Metrics } from '../../core/metrics.js';
import { isStorageError, type AttrValue, type BlobInfo, type Storage } from '../../core/storage/ports.js';
import { scanOutbound } from './outbound-scan.js';
import { ReplyError } from './protocol/command.js';
import type { DataStats } from './protocol/reader.js';
import type { MessageSink, SessionInfo, Transaction } from './session.js';

/** What a spool needs from the listener. */
export interface SpoolDeps {
  storage: Storage;
  log: Logger;
  metrics?: Metrics;
  hostname: string;
  maxMessageBytes: number;
  /** Run SPF/DKIM/DMARC (MX listener, unauthenticated sessions). */
  checkAuth: boolean;
  resolver?: DnsResolver;
  /** Messages up to this size are collected in memory and stored with one put. @default 262144 */
  inlineBytes?: number;
  /** Messages up to this size travel inside their job (see the file comment); 0 turns it off.
   * @default 0 */
  queueInlineBytes?: number;
  /** @default () => new Date() */
  now?: () => Date;
  /** Scans MX mail from unauthenticated clients before the reply to DATA (core/mail/spam.ts);
   * absent: no scan. */
  spam?: SpamScanner;
  /** Scans what authenticated users send too (./outbound-scan.ts). @default false */
  scanOutbound?: boolean;
}

/** A time-ordered, unguessable queue id: 9 base-36 time characters and 12 hex random ones. */
export function newQueueId(now: Date): string {
  return now.getTime().toString(36).padStart(9, '0') + randomBytes(6).toString('hex');
}

/** The blob key of an accepted message. */
export function messageKey(id: string, now: Date): string {
  const d = now.toISOString().slice(0, 10).replace(/-/g, '');
  return `in/${d}/${id}.eml`;
}

/** Stores one message; see the file comment. */
export class StorageSink implements MessageSink {
  readonly id: string;
  private readonly key: string;
  /** Our lines at the top of the stored message: Return-Path, then Received. */
  private readonly received: Buffer;
  private readonly inlineBytes: number;
  private readonly receivedAt: Date;
  private chunks: Buffer[] = [];
  private bytes = 0;
  private stream?: { body: PassThrough; key: string; put: Promise<BlobInfo> };
  private aborted = false;
  /** The summary of an inline message for the job (see finishInline). */
  private summary?: Record<string, AttrValue>;
  /** The stored form of a message that travels inside its job (no blob written here). */
  private carried?: Buffer;
  /** The spam scan's outcome, for the job. */
  private spam?: SpamResult;

  constructor(
    private readonly deps: SpoolDeps,
    private readonly tx: Transaction,
    private readonly session: SessionInfo,
  ) {
    this.receivedAt = (deps.now ?? (() => new Date()))();
    this.id = newQueueId(this.receivedAt);
    this.key = messageKey(this.id, this.receivedAt);
    this.inlineBytes = deps.inlineBytes ?? 256 * 1024;
    this.received = Buffer.from(
      // RFC 5321 §4.4: final delivery inserts the reverse-path as Return-Path at the very
      // beginning. It is one per message, so it is written once here for every local mailbox;
      // the outbound path reads the blob without it (core/mail/return-path.ts).
      returnPathLine(tx.from) +
        buildReceived({
          helo: session.helo ?? '',
          clientAddress: session.clientAddress,
          hostname: deps.hostname,
          esmtp: session.esmtp,
          tls: session.tls,
          authUser: session.authUser,
          smtputf8: tx.smtputf8,
          id: this.id,
          rcpts: tx.rcpts.map((r) => r.address),
          date: this.receivedAt,
        }),
      'utf8',
    );
  }

  private get needsAuthCheck(): boolean {
    return this.deps.checkAuth && this.session.listener === 'mx' && !this.session.authUser && this.deps.resolver !== undefined;
  }

  /** MX mail from unauthenticated clients is scanned and marked (X-Spam-* fields). */
  private get needsSpamScan(): boolean {
    return this.deps.spam !== undefined && this.session.listener === 'mx' && !this.session.authUser;
  }

  /** What an authenticated user sends is scanned for refusal only (no header fields). */
  private get needsOutboundScan(): boolean {
    return this.deps.spam !== undefined && this.deps.scanOutbound === true && this.session.authUser !== undefined;
  }

  /** Headers to put on top of a message stored from the spool: checks ran from the spool copy. */
  private get checksFromSpool(): boolean {
    return this.needsAuthCheck || this.needsSpamScan;
  }

  write(chunk: Buffer): void | Promise<void> {
    if (this.aborted) return;
    if (!this.stream) {
      if (this.bytes + chunk.length <= this.inlineBytes) {
        // Socket chunks are never reused by node, so keeping a view is safe.
        this.chunks.push(chunk);
        this.bytes += chunk.length;
        return;
      }
      this.startStream();
    }
    this.bytes += chunk.length;
    const s = this.stream!;
    if (!s.body.write(chunk)) {
      return new Promise<void>((resolve, reject) => {
        const onDrain = () => {
          s.body.off('error', onError);
          s.put.catch(() => undefined);
          resolve();
        };
        const onError = (e: Error) => {
          s.body.off('drain', onDrain);
          reject(e);
        };
        s.body.once('drain', onDrain);
        s.body.once('error', onError);
        // A put that fails stops reading the body: surface that instead of waiting forever.
        s.put.catch(reject);
      });
    }
  }

  private startStream(): void {
    const spool = this.checksFromSpool;
    const key = spool ? `spool/${this.id}` : this.key;
    const body = new PassThrough({ highWaterMark: 256 * 1024 });
    // abort() destroys the stream with an error; the put may already be gone, so never let that
    // error go unhandled.
    body.on('error', () => undefined);
    const maxBytes = this.deps.maxMessageBytes + this.received.length + 64 * 1024;
    const put = this.deps.storage.mail.put(key, body, { maxBytes, ifAbsent: true, contentType: 'message/rfc822' });
    put.catch(() => undefined);
    if (!spool) body.write(this.received);
    for (const c of this.chunks) body.write(c);
    this.chunks = [];
    this.stream = { body, key, put };
  }

  async finish(stats: DataStats): Promise<void> {
    const started = performance.now();
    let info: BlobInfo;
    try {
      info = this.stream ? await this.finishStream() : await this.finishInline();
    } catch (e) {
      this.deps.metrics?.messages.inc({ stage: 'smtp', outcome: e instanceof ReplyError ? 'rejected' : 'tempfail' });
      if (!(e instanceof ReplyError)) this.deps.log.warn({ err: e, id: this.id }, 'storing the message failed; 451');
      throw e;
    }
    const job: InboundJob = {
      v: 1,
      id: this.id,
      blobKey: this.key,
      size: info.size,
      ...(info.sha256 ? { sha256: info.sha256 } : {}),
      from: this.tx.from,
      rcpts: this.tx.rcpts,
      ...(this.tx.dsn.ret || this.tx.dsn.envid ? { dsn: this.tx.dsn } : {}),
      receivedAt: this.receivedAt.toISOString(),
      client: {
        address: this.session.clientAddress,
        helo: this.session.helo ?? '',
        ...(this.session.tls ? { tls: this.session.tls.version } : {}),
        ...(this.session.authUser ? { authUser: this.session.authUser } : {}),
      },
      listener: this.session.listener,
      ...(this.tx.smtputf8 ? { smtputf8: true } : {}),
      ...(this.tx.body === '8BITMIME' || stats.eightBit ? { body8bit: true } : {}),
      ...(this.summary ? { summary: this.summary } : {}),
      ...(this.carried ? { raw: this.carried.toString('base64') } : {}),
      ...(this.spam ? { spam: this.spam } : {}),
    };
    try {
      await this.deps.storage.queues.send('inbound', JSON.stringify(job));
    } catch (e) {
      // Not queued: nothing will ever deliver this blob, so remove it (best effort) and say 451.
      this.deps.log.warn({ err: e, id: this.id }, 'queueing the message failed; 451');
      this.deps.metrics?.messages.inc({ stage: 'smtp', outcome: 'tempfail' });
      if (!this.carried) await this.deps.storage.mail.delete(this.key).catch(() => undefined);
      throw e;
    }
    this.deps.metrics?.messages.inc({ stage: 'smtp', outcome: 'accepted' });
    this.deps.log.info(
      {
        id: this.id,
        listener: this.session.listener,
        from: this.tx.from,
        rcpts: this.tx.rcpts.length,
        size: info.size,
        ms: Math.round(performance.now() - started),
        ...(this.spam ? (isSkipped(this.spam) ? { spam: `skipped: ${this.spam.skipped}` } : { spam: this.spam.action, score: this.spam.score }) : {}),
      },
      'message accepted',
    );
  }

  private async finishInline(): Promise<BlobInfo> {
    const content = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    this.chunks = [];
    const auth = this.needsAuthCheck ? await this.checkAuth(content) : undefined;
    const checks = (await this.scanSpam(content, auth)) + (auth?.headers ?? '');
    if (this.needsOutboundScan) await this.scanOutbound(content, content.length);
    const body = checks ? Buffer.concat([this.received, Buffer.from(checks, 'utf8'), content]) : Buffer.concat([this.received, content]);
    if (body.length <= (this.deps.queueInlineBytes ?? 0)) {
      // Travels inside the job (file comment); the worker, which parses it anyway, summarizes it.
      this.carried = body;
      return { key: this.key, size: body.length, lastModified: this.receivedAt };
    }
    // The key is new (time + 48 random bits), so no put-if-absent: that would cost a lookup and
    // a link + unlink instead of one rename, on the path every message waits on.
    const put = this.deps.storage.mail.put(this.key, body, { contentType: 'message/rfc822' });
    // The whole message is in memory here: summarize it for the worker while the put waits for
    // the disk, which spares the worker reading the blob back (on AWS, an S3 GET). Only while few
    // messages are being stored at once: then the event loop would otherwise sit waiting for the
    // disk, whereas under load the MIME parse (about 0.8 ms for 10 KB) would delay other
    // sessions' replies; the worker, which may lag, does it then.
    StorageSink.storing++;
    try {
      const wantSummary = StorageSink.storing <= SUMMARIZE_AT_MOST;
      const [info, summary] = await Promise.all([put, wantSummary ? summaryForJob(body) : undefined]);
      this.summary = summary;
      return info;
    } finally {
      StorageSink.storing--;
    }
  }

  /** Inline messages being stored right now, in this process. */
  private static storing = 0;

  private async finishStream(): Promise<BlobInfo> {
    const s = this.stream!;
    s.body.end();
    const spooled = await s.put;
    if (s.key === this.key) {
      if (this.needsOutboundScan) {
        // Scanned from the stored blob; a refused message's blob is removed.
        try {
          await this.scanOutbound((await this.deps.storage.mail.get(s.key)).body, spooled.size);
        } catch (e) {
          await this.deps.storage.mail.delete(s.key).catch(() => undefined);
          throw e;
        }
      }
      return spooled;
    }
    // MX, large: check from the spool, then write the final blob with the headers on top.
    try {
      let auth: AuthCheck | undefined;
      if (this.needsAuthCheck) auth = await this.checkAuth((await this.deps.storage.mail.get(s.key)).body);
      let spam = '';
      if (this.needsSpamScan) spam = await this.scanSpam((await this.deps.storage.mail.get(s.key)).body, auth, spooled.size);
      const { body: again } = await this.deps.storage.mail.get(s.key);
      const headers = Buffer.from(this.received.toString('utf8') + spam + (auth?.headers ?? ''), 'utf8');
      const final = Readable.from(prepend(headers, again));
      return await this.deps.storage.mail.put(this.key, final, { ifAbsent: true, contentType: 'message/rfc822' });
    } finally {
      await this.deps.storage.mail.delete(s.key).catch(() => undefined);
    }
  }

  /**
   * The spam scan (when this message gets one): its header fields to prepend, or a ReplyError for
   * rspamd's reject (550 5.7.1) and soft reject / greylist (451 4.7.1, RFC 3463 X.7.1: refused
   * by policy; the sender retries a 4xx). A skipped scan accepts the message, with a header
   * saying so and a log line saying why.
   */
  private async scanSpam(message: Buffer | Readable, auth: AuthCheck | undefined, size?: number): Promise<string> {
    if (!this.needsSpamScan) {
      if (!Buffer.isBuffer(message)) message.destroy();
      return '';
    }
    const r = await this.deps.spam!.scan(message, {
      from: this.tx.from,
      rcpts: this.tx.rcpts.map((x) => x.address),
      ip: this.session.clientAddress,
      helo: this.session.helo ?? '',
      queueId: this.id,
      ...(auth ? { auth: { spf: auth.spf, dkim: auth.dkim, dmarc: auth.dmarc } } : {}),
      ...(size !== undefined ? { size } : {}),
    });
    this.spam = r;
    // The daily counters of `spam stats`, written off the reply's path.
    const count = (event: 'scanned' | 'skipped' | 'rejected' | 'deferred') => countSpamLater(this.deps.storage.tables, event, this.deps.log);
    count(isSkipped(r) ? 'skipped' : 'scanned');
    if (!isSkipped(r) && r.action === 'reject') count('rejected');
    if (!isSkipped(r) && (r.action === 'soft reject' || r.action === 'greylist')) count('deferred');
    if (isSkipped(r)) {
      this.deps.log.warn({ id: this.id, reason: r.skipped, detail: r.detail }, `${SPAM_SKIPPED_MSG} (${r.skipped}); message accepted unscanned`);
      return spamHeaders(r);
    }
    if (r.action === 'reject') {
      this.deps.log.info({ id: this.id, from: this.tx.from, score: r.score, symbols: r.symbols.slice(0, 10) }, 'rejected as spam');
      throw new ReplyError(550, '5.7.1', r.message || 'Message rejected as spam');
    }
    if (r.action === 'soft reject' || r.action === 'greylist') {
      this.deps.log.info({ id: this.id, from: this.tx.from, score: r.score, action: r.action }, 'spam check says try later; 451');
      throw new ReplyError(451, '4.7.1', r.message || 'Try again later');
    }
    return spamHeaders(r);
  }

  /** The outbound scan of a submitted message (./outbound-scan.ts); throws ReplyError to refuse. */
  private async scanOutbound(message: Buffer | Readable, size: number): Promise<void> {
    const env = {
      from: this.tx.from,
      rcpts: this.tx.rcpts.map((x) => x.address),
      ip: this.session.clientAddress,
      helo: this.session.helo ?? '',
      queueId: this.id,
      user: this.session.authUser!,
      size,
    };
    await scanOutbound(this.deps.spam!, message, env, { log: this.deps.log, metrics: this.deps.metrics, tables: this.deps.storage.tables });
  }

  private async checkAuth(message: Buffer | Readable): Promise<AuthCheck> {
    const r = await checkMessageAuth(message, {
      ip: this.session.clientAddress,
      helo: this.session.helo ?? '',
      sender: this.tx.from,
      mta: this.deps.hostname,
      resolver: this.deps.resolver!,
    });
    if (r.dmarcReject) {
      this.deps.log.info({ id: this.id, from: this.tx.from, spf: r.spf, dkim: r.dkim }, 'DMARC policy reject');
      // RFC 7489 §6.6.4 / §7.3: reject at the SMTP level with 550 5.7.1.
      throw new ReplyError(550, '5.7.1', 'Rejected by DMARC policy of the sender domain');
    }
    return r;
  }

  abort(reason: string): void {
    if (this.aborted) return;
    this.aborted = true;
    this.chunks = [];
    const s = this.stream;
    if (s) {
      s.body.destroy(new Error(`aborted: ${reason}`));
      // If the put won the race anyway, remove what it stored.
      s.put.then(
        () => this.deps.storage.mail.delete(s.key).catch(() => undefined),
        (e) => {
          if (!isStorageError(e) && !(e instanceof Error)) this.deps.log.debug({ id: this.id }, 'aborted put');
        },
      );
    }
  }
}

/** The listener summarizes a message only while at most this many are being stored at once. */
const SUMMARIZE_AT_MOST = 2;

/** A summary larger than this stays out of the job (the worker makes it from the blob); queue
 * messages are limited to 256 KiB on SQS. */
const MAX_JOB_SUMMARY_CHARS = 32 * 1024;

/** The message summary for the job, or undefined when it is too big to carry (or failed). */
async function summaryForJob(message: Buffer): Promise<Record<string, AttrValue> | undefined> {
  try {
    const summary = await summarizeForMailbox(Readable.from([message]));
    return JSON.stringify(summary).length <= MAX_JOB_SUMMARY_CHARS ? summary : undefined;
  } catch {
    return undefined;
  }
}

async function* prepend(head: Buffer, rest: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  yield head;
  yield* rest;
}
