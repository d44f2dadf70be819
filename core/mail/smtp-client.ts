/**
 * The SMTP client of outbound delivery: one transaction (one sender, many recipients) to one host.
 *
 * Written here rather than on nodemailer's SMTPConnection because delivery needs what it does not
 * offer: CHUNKING/BDAT (RFC 3030), DSN NOTIFY/ORCPT per recipient rather than per envelope
 * (RFC 3461 §4), the explicit decision "the message needs SMTPUTF8 and the server lacks it", and
 * every recipient's own reply kept for the DSN. It speaks RFC 5321 with PIPELINING (RFC 2920),
 * STARTTLS (RFC 3207), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), AUTH PLAIN
 * (RFC 4954) and ENHANCEDSTATUSCODES (RFC 2034), and streams the body with bounded memory.
 */
import { once } from 'node:events';
import net from 'node:net';
import type { Readable } from 'node:stream';
import tls from 'node:tls';

/** One SMTP reply (possibly multi-line). */
export interface SmtpReply {
  code: number;
  /** Enhanced status code (RFC 3463) from the first line, when the server gave one. */
  enhanced?: string;
  lines: string[];
}

/** `250 2.1.5 ok` style one-line rendering of a reply (lines joined by a space). */
export function replyText(r: SmtpReply): string {
  return `${r.code} ${r.lines.join(' ')}`.trim();
}

/** How TLS is used on the connection. */
export type TlsMode =
  /** STARTTLS when offered, plaintext otherwise (RFC 7435 opportunistic security). */
  | 'opportunistic'
  /** STARTTLS must succeed, else the host is a temporary failure. */
  | 'required'
  /** TLS from the first byte (submissions, port 465; RFC 8314). */
  | 'implicit'
  | 'none';

/** One recipient of the transaction, with its DSN parameters. */
export interface ClientRecipient {
  address: string;
  notify?: ('NEVER' | 'SUCCESS' | 'FAILURE' | 'DELAY')[];
  orcpt?: string;
}

/** Everything one delivery attempt to one host needs. */
export interface SmtpTransaction {
  /** Host name (for SNI, certificate checks and logs). */
  host: string;
  /** Address to connect to. @default host */
  address?: string;
  port: number;
  /** Our name in EHLO. */
  helo: string;
  /** @default 'opportunistic' */
  tls?: TlsMode;
  /** Verify the server certificate against the host name. @default false (opportunistic TLS) */
  tlsVerify?: boolean;
  /** Extra CA certificates to trust (PEM), e.g. a test's self-signed server. */
  ca?: string | Buffer;
  auth?: { user: string; pass: string };
  /** Envelope sender; '' for the null sender. */
  from: string;
  rcpts: ClientRecipient[];
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /** Size of the message as sent, for SIZE=. */
  size: number;
  body8bit?: boolean;
  /** The message needs SMTPUTF8 (RFC 6531 §3.4); a server without it cannot take it. */
  smtputf8?: boolean;
  /** Opens the message stream (CRLF line ends, headers first); called at most once. */
  message: () => Promise<Readable>;
  /** @default 30000 */
  connectTimeoutMs?: number;
  /** Reply timeout of every command but the end of data (RFC 5321 §4.5.3.2: at least 5 min). @default 300000 */
  commandTimeoutMs?: number;
  /** Reply timeout after the end of data (RFC 5321 §4.5.3.2.6: 10 min). @default 600000 */
  dataTimeoutMs?: number;
  /** BDAT chunk size when CHUNKING is used. @default 1048576 */
  chunkBytes?: number;
  /** Use CHUNKING when offered. @default true */
  chunking?: boolean;
}

/** The outcome for one recipient. */
export interface RecipientResult {
  address: string;
  ok: boolean;
  /** For a failure: a 4xx reply, a timeout or a lost connection (true) or a 5xx reply (false). */
  temporary: boolean;
  reply: string;
  /** Enhanced status code (RFC 3463), from the reply or assigned by us. */
  status: string;
}

/** What happened in the transaction. */
export interface TransactionResult {
  /** Set when the session failed before any recipient got its own answer (connect, greeting,
   * EHLO, STARTTLS, AUTH, MAIL, a missing extension); then every recipient shares it. */
  sessionFailure?: { temporary: boolean; reply: string; status: string; stage: string };
  rcpts: RecipientResult[];
  /** The connection was encrypted when the message went out. */
  tls: boolean;
  extensions: string[];
  /** The body went out by BDAT. */
  chunked: boolean;
  /** An 8-bit body went to a server that did not offer 8BITMIME. */
  unconverted8bit?: boolean;
}

/** A failure that ends the session; `reply` is what the server said, if it said anything. */
export class SmtpSessionError extends Error {
  constructor(
    readonly stage: string,
    readonly temporary: boolean,
    readonly status: string,
    message: string,
    readonly reply?: SmtpReply,
  ) {
    super(message);
    this.name = 'SmtpSessionError';
  }
}

/** RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; we accept more, within a bound. */
const MAX_REPLY_LINE = 4096;
const MAX_REPLY_LINES = 200;

function enhancedOf(code: number, line: string): string | undefined {
  const m = /^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)/.exec(line);
  return m && Number(m[1]) === Math.floor(code / 100) ? `${m[1]}.${m[2]}.${m[3]}` : undefined;
}

/** A status for a reply that carried none (RFC 3463 §3: x.0.0 "other undefined status"). */
function statusOf(r: SmtpReply): string {
  return r.enhanced ?? `${Math.floor(r.code / 100)}.0.0`;
}

/** RFC 3461 §4: xtext encoding of DSN parameter values. */
export function xtext(s: string): string {
  let out = '';
  for (const ch of Buffer.from(s, 'utf8')) {
    out += ch >= 33 && ch <= 126 && ch !== 43 && ch !== 61 ? String.fromCharCode(ch) : `+${ch.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Reads replies from a socket, line by line. */
class ReplyReader {
  private buf = '';
  private lines: string[] = [];
  private replies: SmtpReply[] = [];
  private waiter?: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
  private failure?: Error;

  constructor(private socket: net.Socket) {
    this.attach(socket);
  }

  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('error', (e) => this.fail(new SmtpSessionError('connection', true, '4.4.2', `connection error: ${e.message}`)));
    socket.on('close', () => this.fail(new SmtpSessionError('connection', true, '4.4.2', 'connection closed by the server')));
  }

  detach(): void {
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('error');
    this.socket.removeAllListeners('close');
    this.socket.on('error', () => {});
  }

  private onData(d: string): void {
    this.buf += d;
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).replace(/\r$/, '');
      this.buf = this.buf.slice(i + 1);
      this.onLine(line);
    }
    if (this.buf.length > MAX_REPLY_LINE) this.fail(new SmtpSessionError('reply', true, '4.5.0', 'reply line too long'));
  }

  private onLine(line: string): void {
    const m = /^(\d{3})([ -]?)(.*)$/.exec(line);
    if (!m) return this.fail(new SmtpSessionError('reply', true, '4.5.0', `malformed reply line ${JSON.stringify(line.slice(0, 100))}`));
    this.lines.push(line);
    if (this.lines.length > MAX_REPLY_LINES) return this.fail(new SmtpSessionError('reply', true, '4.5.0', 'reply too long'));
    if (m[2] === '-') return;
    const code = Number(m[1]);
    const texts = this.lines.map((l) => l.slice(4));
    this.lines = [];
    const reply: SmtpReply = { code, enhanced: enhancedOf(code, texts[0] ?? ''), lines: texts };
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.resolve(reply);
    } else this.replies.push(reply);
  }

  fail(e: Error): void {
    this.failure ??= e;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      clearTimeout(w.timer);
      w.reject(this.failure);
    }
  }

  /** A reply that already arrived and nobody has read, if any. */
  takeReady(): SmtpReply | undefined {
    return this.replies.shift();
  }

  /** The next reply, or a temporary SmtpSessionError on timeout or a lost connection. */
  next(timeoutMs: number, stage: string): Promise<SmtpReply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        const e = new SmtpSessionError(stage, true, '4.4.2', `timeout after ${timeoutMs} ms waiting for the ${stage} reply`);
        this.failure ??= e;
        reject(e);
      }, timeoutMs);
      this.waiter = { resolve, reject, timer };
    });
  }
}

/** Doubles a leading '.' on every line (RFC 5321 §4.5.2) and remembers whether the data ended
 * with CRLF, so the terminator can be written correctly. */
class DotStuffer {
  private atLineStart = true;
  private last2 = '';
  stuff(chunk: Buffer): Buffer {
    const parts: Buffer[] = [];
    let from = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (b === 0x2e && this.atLineStart) {
        parts.push(chunk.subarray(from, i + 1));
        from = i; // the '.' is written twice
      }
      this.atLineStart = b === 0x0a;
    }
    parts.push(chunk.subarray(from));
    if (chunk.length >= 2) this.last2 = chunk.subarray(chunk.length - 2).toString('latin1');
    else if (chunk.length === 1) this.last2 = (this.last2 + chunk.toString('latin1')).slice(-2);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  endsWithCrlf(): boolean {
    return this.last2 === '\r\n';
  }
}

/** The extension keywords of an EHLO reply (upper case, parameters dropped), and SIZE's limit. */
function parseEhlo(r: SmtpReply): { ext: Set<string>; maxSize?: number; auth: string[] } {
  const ext = new Set<string>();
  let maxSize: number | undefined;
  let auth: string[] = [];
  for (const line of r.lines.slice(1)) {
    const [kw, ...params] = line.trim().split(/\s+/);
    const k = kw.toUpperCase();
    ext.add(k);
    if (k === 'SIZE' && params[0] && /^\d+$/.test(params[0]) && Number(params[0]) > 0) maxSize = Number(params[0]);
    if (k === 'AUTH') auth = params.map((p) => p.toUpperCase());
  }
  return { ext, maxSize, auth };
}

/** What the server's EHLO offered: extension keywords (upper case), SIZE's limit, AUTH mechanisms. */
interface Capabilities {
  ext: Set<string>;
  maxSize?: number;
  auth: string[];
}

/** Runs one SMTP transaction against one host and reports each recipient's outcome. Never
 * throws: every failure is reported in the result. */
export function deliverTransaction(t: SmtpTransaction): Promise<TransactionResult> {
  return new ClientTransaction(t).run();
}

/**
 * One transaction to one host, one method per step in the order of RFC 5321 §3: connect and
 * greeting, EHLO (or HELO), STARTTLS and EHLO again, AUTH, the checks that the server can take the
 * message, MAIL and RCPT (pipelined when offered), DATA or BDAT with the body, QUIT. A step fails
 * by throwing an SmtpSessionError that names it; `run` turns that into the result. Used once.
 */
class ClientTransaction {
  private readonly cmdMs: number;
  private readonly dataMs: number;
  /** Replaced by the TLS socket after STARTTLS. */
  private socket?: net.Socket;
  private reader?: ReplyReader;
  private caps: Capabilities = { ext: new Set(), auth: [] };
  private encrypted: boolean;
  /** What the result reports as offered: set once TLS is settled (EHLO after STARTTLS counts). */
  private extensions: string[] = [];
  private pipelined = false;
  private chunked = false;
  /** Recipients the server took at RCPT. */
  private readonly accepted: string[] = [];
  /** Each recipient's own answer, once it has one. */
  private readonly results = new Map<string, RecipientResult>();

  constructor(private readonly t: SmtpTransaction) {
    this.cmdMs = t.commandTimeoutMs ?? 300_000;
    this.dataMs = t.dataTimeoutMs ?? 600_000;
    this.encrypted = t.tls === 'implicit';
  }

  async run(): Promise<TransactionResult> {
    try {
      await this.connect();
      await this.greeting();
      await this.hello();
      await this.startTls();
      this.extensions = [...this.caps.ext];
      await this.authenticate();
      const needsUtf8 = this.checkServerTakesMessage();
      await this.envelope(needsUtf8);
      if (!(await this.openData())) return this.quit(this.outcome());
      const final = await this.sendBody();
      const ok = final.code >= 200 && final.code < 300;
      for (const a of this.accepted) {
        this.results.set(a, { address: a, ok, temporary: !ok && final.code < 500, reply: replyText(final), status: statusOf(final) });
      }
      // RFC 6152 §3 wants 8-bit data converted for a server without 8BITMIME; like most MTAs we
      // send it unchanged instead (today's servers take it), and the result says so.
      return this.quit({ ...this.outcome(), unconverted8bit: this.t.body8bit === true && !this.caps.ext.has('8BITMIME') });
    } catch (e) {
      this.quitQuietly();
      return this.failure(e);
    } finally {
      this.reader?.detach();
      setTimeout(() => this.socket?.destroy(), 1000).unref();
    }
  }

  /** Opens the connection (TLS from the first byte for 'implicit') within connectTimeoutMs. */
  private async connect(): Promise<void> {
    const t = this.t;
    const timeout = t.connectTimeoutMs ?? 30_000;
    const address = t.address ?? t.host;
    const socket =
      t.tls === 'implicit'
        ? tls.connect({
            host: address,
            port: t.port,
            servername: net.isIP(t.host) ? undefined : t.host,
            rejectUnauthorized: t.tlsVerify ?? true,
            ca: t.ca,
            minVersion: 'TLSv1.2',
          })
        : net.connect({ host: address, port: t.port });
    const ready = t.tls === 'implicit' ? 'secureConnect' : 'connect';
    const timer = setTimeout(() => socket.destroy(new Error(`connect timeout after ${timeout} ms`)), timeout);
    try {
      await once(socket, ready);
    } catch (e) {
      socket.destroy();
      throw new SmtpSessionError('connect', true, '4.4.1', `cannot connect to ${t.host} [${address}]:${t.port}: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    socket.setNoDelay(true);
    this.use(socket);
  }

  /** RFC 5321 §3.1: a 554 greeting means "no service"; the client should try another host. */
  private async greeting(): Promise<void> {
    await this.expect('greeting', (c) => c === 220);
  }

  /** EHLO, or HELO (and no extensions) at a server that does not know EHLO (RFC 5321 §3.2). */
  private async hello(): Promise<void> {
    this.write(`EHLO ${this.t.helo}\r\n`);
    const first = await this.next('EHLO');
    if (first.code === 250) this.caps = parseEhlo(first);
    else if (first.code === 500 || first.code === 502) {
      this.write(`HELO ${this.t.helo}\r\n`);
      await this.expect('HELO', (c) => c === 250);
      this.caps = { ext: new Set(), auth: [] };
    } else throw new SmtpSessionError('EHLO', first.code < 500, statusOf(first), `EHLO: ${replyText(first)}`, first);
  }

  /** STARTTLS (RFC 3207) when offered and wanted, then EHLO again; 'required' fails without it. */
  private async startTls(): Promise<void> {
    const t = this.t;
    if (t.tls !== 'implicit' && t.tls !== 'none' && this.caps.ext.has('STARTTLS')) {
      this.write('STARTTLS\r\n');
      const r = await this.next('STARTTLS');
      if (r.code === 220) {
        this.reader!.detach();
        const secure = tls.connect({
          socket: this.socket,
          servername: net.isIP(t.host) ? undefined : t.host,
          rejectUnauthorized: t.tlsVerify ?? false,
          ca: t.ca,
          minVersion: 'TLSv1.2',
        });
        const timer = setTimeout(() => secure.destroy(new Error('TLS handshake timeout')), t.connectTimeoutMs ?? 30_000);
        try {
          await once(secure, 'secureConnect');
        } catch (e) {
          throw new SmtpSessionError('STARTTLS', true, '4.7.5', `TLS handshake with ${t.host} failed: ${(e as Error).message}`);
        } finally {
          clearTimeout(timer);
        }
        this.use(secure);
        this.encrypted = true;
        // RFC 3207 §4.2: the client MUST discard knowledge from before TLS and issue EHLO again.
        this.write(`EHLO ${t.helo}\r\n`);
        this.caps = parseEhlo(await this.expect('EHLO', (c) => c === 250));
      } else if (t.tls === 'required') {
        throw new SmtpSessionError('STARTTLS', true, '4.7.5', `STARTTLS refused by ${t.host}: ${replyText(r)}`, r);
      }
    }
    if (t.tls === 'required' && !this.encrypted) {
      throw new SmtpSessionError('STARTTLS', true, '4.7.5', `${t.host} does not offer STARTTLS and TLS is required`);
    }
  }

  /** AUTH PLAIN (RFC 4954) when credentials are given, and only over TLS. */
  private async authenticate(): Promise<void> {
    const t = this.t;
    if (!t.auth) return;
    // RFC 4954 §4: never send credentials in the clear (our policy; the server may allow it).
    if (!this.encrypted) throw new SmtpSessionError('AUTH', true, '4.7.0', `refusing to authenticate to ${t.host} without TLS`);
    if (!this.caps.auth.includes('PLAIN')) throw new SmtpSessionError('AUTH', true, '4.7.0', `${t.host} does not offer AUTH PLAIN`);
    const token = Buffer.from(`\0${t.auth.user}\0${t.auth.pass}`, 'utf8').toString('base64');
    this.write(`AUTH PLAIN ${token}\r\n`);
    const r = await this.next('AUTH');
    // A rejected login is our configuration problem, not the message's: keep it temporary.
    if (r.code !== 235) throw new SmtpSessionError('AUTH', true, '4.7.0', `AUTH: ${replyText(r)}`, r);
  }

  /** Permanent failures known before MAIL: SMTPUTF8 missing, or the message over SIZE. Returns
   * whether the envelope needs SMTPUTF8. */
  private checkServerTakesMessage(): boolean {
    const t = this.t;
    const needsUtf8 = t.smtputf8 === true || [t.from, ...t.rcpts.map((r) => r.address)].some((a) => /[^\x00-\x7f]/.test(a));
    if (needsUtf8 && !this.caps.ext.has('SMTPUTF8')) {
      // RFC 6531 §3.2: without SMTPUTF8 from the server the message cannot go to it as is.
      throw new SmtpSessionError('MAIL', false, '5.6.7', `${t.host} does not support SMTPUTF8, which this message needs`);
    }
    // RFC 1870 §6.1: do not send a message larger than the server's declared SIZE.
    if (this.caps.maxSize !== undefined && t.size > this.caps.maxSize) {
      throw new SmtpSessionError('MAIL', false, '5.3.4', `message of ${t.size} bytes exceeds ${t.host}'s SIZE limit ${this.caps.maxSize}`);
    }
    return needsUtf8;
  }

  /** MAIL FROM and one RCPT TO per recipient; with PIPELINING in one group, DATA included when
   * the body goes by DATA (RFC 2920 §3.1). Each recipient's refusal is kept as its answer. */
  private async envelope(needsUtf8: boolean): Promise<void> {
    const { ext } = this.caps;
    this.pipelined = ext.has('PIPELINING');
    this.chunked = (this.t.chunking ?? true) && ext.has('CHUNKING');
    const mail = this.mailCommand(needsUtf8);
    const rcpts = this.t.rcpts.map((r) => this.rcptCommand(r));
    if (this.pipelined) {
      this.write([mail, ...rcpts, ...(this.chunked ? [] : ['DATA'])].join('\r\n') + '\r\n');
      await this.expect('MAIL', (c) => c === 250);
      for (const r of this.t.rcpts) await this.recipientReply(r);
    } else {
      this.write(`${mail}\r\n`);
      await this.expect('MAIL', (c) => c === 250);
      for (let i = 0; i < this.t.rcpts.length; i++) {
        this.write(`${rcpts[i]}\r\n`);
        await this.recipientReply(this.t.rcpts[i]);
      }
    }
  }

  private mailCommand(needsUtf8: boolean): string {
    const { ext } = this.caps;
    const t = this.t;
    const dsn = ext.has('DSN');
    let mail = `MAIL FROM:<${t.from}>`;
    if (ext.has('SIZE')) mail += ` SIZE=${t.size}`;
    if (t.body8bit && ext.has('8BITMIME')) mail += ' BODY=8BITMIME';
    if (needsUtf8) mail += ' SMTPUTF8';
    if (dsn && t.dsn?.ret) mail += ` RET=${t.dsn.ret}`;
    if (dsn && t.dsn?.envid) mail += ` ENVID=${xtext(t.dsn.envid)}`;
    return mail;
  }

  /** RCPT TO with this recipient's own DSN parameters (RFC 3461 §4.1, §4.2). */
  private rcptCommand(r: ClientRecipient): string {
    const dsn = this.caps.ext.has('DSN');
    let c = `RCPT TO:<${r.address}>`;
    if (dsn && r.notify?.length) c += ` NOTIFY=${r.notify.join(',')}`;
    if (dsn && r.orcpt) {
      const i = r.orcpt.indexOf(';');
      c += ` ORCPT=${r.orcpt.slice(0, i)};${xtext(r.orcpt.slice(i + 1))}`;
    }
    return c;
  }

  private async recipientReply(r: ClientRecipient): Promise<void> {
    const reply = await this.next('RCPT');
    if (reply.code >= 200 && reply.code < 300) this.accepted.push(r.address);
    else this.results.set(r.address, { address: r.address, ok: false, temporary: reply.code < 500, reply: replyText(reply), status: statusOf(reply) });
  }

  /** For a body by DATA: sends DATA (unless it went in the pipelined group) and reads its 354.
   * True when the body should follow; false when no recipient was accepted, which ends the
   * transaction with the recipients' own answers. */
  private async openData(): Promise<boolean> {
    if (this.chunked || (!this.pipelined && this.accepted.length === 0)) return this.accepted.length > 0;
    if (!this.pipelined) this.write('DATA\r\n');
    const r = await this.next('DATA');
    if (r.code !== 354) {
      if (this.accepted.length === 0) return false;
      throw new SmtpSessionError('DATA', r.code < 500, statusOf(r), `DATA: ${replyText(r)}`, r);
    }
    if (this.accepted.length === 0) {
      // A pipelined DATA met 354 although no recipient was accepted: end it with no content.
      this.write('.\r\n');
      await this.next('end of data', this.dataMs);
      return false;
    }
    return true;
  }

  /** Streams the message and returns the server's final reply on it. */
  private async sendBody(): Promise<SmtpReply> {
    const body = await this.t.message();
    try {
      return this.chunked ? await this.sendChunked(body) : await this.sendDotStuffed(body);
    } catch (e) {
      // A server may answer (e.g. 552 too big) and close before we finish sending: its reply,
      // not the broken connection, is the outcome.
      const early = this.reader!.takeReady();
      if (!early || early.code < 400) throw e;
      return early;
    }
  }

  /** RFC 3030 §2: BDAT <size> [LAST] in chunks of chunkBytes; the data goes as is, unstuffed. */
  private async sendChunked(body: Readable): Promise<SmtpReply> {
    const chunkBytes = this.t.chunkBytes ?? 1024 * 1024;
    let pending: Buffer[] = [];
    let pendingLen = 0;
    for await (const c of body) {
      const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
      pending.push(chunk);
      pendingLen += chunk.length;
      if (pendingLen >= chunkBytes) {
        const r = await this.bdat(Buffer.concat(pending, pendingLen), false);
        pending = [];
        pendingLen = 0;
        if (r.code !== 250) throw new SmtpSessionError('BDAT', r.code < 500, statusOf(r), `BDAT: ${replyText(r)}`, r);
      }
    }
    return this.bdat(Buffer.concat(pending, pendingLen), true);
  }

  private async bdat(data: Buffer, last: boolean): Promise<SmtpReply> {
    await writeAll(this.socket!, Buffer.from(`BDAT ${data.length}${last ? ' LAST' : ''}\r\n`, 'latin1'));
    await writeAll(this.socket!, data);
    return this.next('BDAT', last ? this.dataMs : this.cmdMs);
  }

  /** RFC 5321 §4.5.2: the body with leading dots doubled, then CRLF.CRLF. */
  private async sendDotStuffed(body: Readable): Promise<SmtpReply> {
    const socket = this.socket!;
    const stuffer = new DotStuffer();
    for await (const c of body) {
      const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
      await writeAll(socket, stuffer.stuff(chunk));
    }
    await writeAll(socket, Buffer.from(stuffer.endsWithCrlf() ? '.\r\n' : '\r\n.\r\n', 'latin1'));
    return this.next('end of data', this.dataMs);
  }

  /** Ends the session politely and returns `result`. */
  private quit(result: TransactionResult): TransactionResult {
    this.write('QUIT\r\n');
    this.socket!.end();
    return result;
  }

  private quitQuietly(): void {
    try {
      if (this.socket && !this.socket.destroyed) {
        this.socket.write('QUIT\r\n');
        this.socket.end();
      }
    } catch {
      /* the connection is gone already */
    }
  }

  /** The result once the transaction is over: every recipient has its own answer. */
  private outcome(): TransactionResult {
    return { rcpts: this.t.rcpts.map((x) => this.results.get(x.address)!), tls: this.encrypted, extensions: this.extensions, chunked: this.chunked };
  }

  /** The result of a session that failed: recipients answered already keep their answers, the
   * rest share the failure, which is a session failure only when nobody was answered. */
  private failure(e: unknown): TransactionResult {
    const err = e instanceof SmtpSessionError ? e : new SmtpSessionError('connection', true, '4.4.2', `${(e as Error)?.message ?? String(e)}`);
    const reply = err.reply ? replyText(err.reply) : err.message;
    const rcpts = this.t.rcpts.map(
      (r) => this.results.get(r.address) ?? { address: r.address, ok: false, temporary: err.temporary, reply, status: err.status },
    );
    const anyAnswered = this.results.size > 0;
    return {
      sessionFailure: anyAnswered ? undefined : { temporary: err.temporary, reply, status: err.status, stage: err.stage },
      rcpts,
      tls: this.encrypted,
      extensions: this.extensions,
      chunked: this.chunked,
    };
  }

  /** Talks over `socket` from now on. No progress at all (e.g. a server that stops reading our
   * data) ends the session; reply waits have their own, shorter timers. */
  private use(socket: net.Socket): void {
    const idleMs = Math.max(this.cmdMs, this.dataMs);
    socket.setTimeout(idleMs, () => socket.destroy(new Error(`no progress for ${idleMs} ms`)));
    this.socket = socket;
    this.reader = new ReplyReader(socket);
  }

  private write(s: string): void {
    this.socket!.write(s);
  }

  private next(stage: string, timeoutMs = this.cmdMs): Promise<SmtpReply> {
    return this.reader!.next(timeoutMs, stage);
  }

  /** The next reply, which must satisfy `ok`; otherwise a failure of this stage. */
  private async expect(stage: string, ok: (code: number) => boolean): Promise<SmtpReply> {
    const r = await this.next(stage);
    if (!ok(r.code)) throw new SmtpSessionError(stage, r.code < 500, statusOf(r), `${stage}: ${replyText(r)}`, r);
    return r;
  }
}

async function writeAll(socket: net.Socket, data: Buffer): Promise<void> {
  if (socket.destroyed) throw new SmtpSessionError('data', true, '4.4.2', 'connection lost while sending');
  if (!socket.write(data)) {
    await new Promise<void>((resolve, reject) => {
      const onDrain = () => {
        socket.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        socket.off('drain', onDrain);
        reject(new SmtpSessionError('data', true, '4.4.2', 'connection lost while sending'));
      };
      socket.once('drain', onDrain);
      socket.once('close', onClose);
    });
  }
}
