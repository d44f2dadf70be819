/**
 * The spam scan of a message received on the MX listener, by rspamd over its HTTP protocol
 * (`POST /checkv2`, rspamd's "Rspamd protocol" page): the envelope, client address and HELO go in
 * request headers, our own SPF/DKIM/DMARC results too (rspamd's `http_headers` module, turned on
 * by the shipped containers/smtp/rspamd/local.d/http_headers.conf, turns them into its usual
 * symbols instead of looking them up again), and the message as the body, streamed (chunked when
 * its length is unknown), so memory stays bounded whatever its size.
 *
 * The answer is reduced to a small closed vocabulary (STYLE.md example 5): rspamd's action with its
 * score, or `skipped` with a reason when rspamd is down, slow, or answers nonsense. A scan never
 * takes longer than its timeout and never throws: mail keeps flowing without rspamd.
 *
 * undici (already a dependency) is the HTTP client: keep-alive connections to rspamd, a stream as
 * request body, and an abort signal for the deadline.
 */
import type { Readable } from 'node:stream';
import { Agent, errors as undiciErrors, request, type Dispatcher } from 'undici';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

/** How the log line of a skipped scan starts; the AWS alarm's metric filter matches it (infra/stacks/monitoring.ts). */
export const SPAM_SKIPPED_MSG = 'spam scan skipped';

/** rspamd's actions (its `actions` config section; "Rspamd protocol", `action` of a reply). */
export const SPAM_ACTIONS = ['reject', 'soft reject', 'greylist', 'add header', 'rewrite subject', 'no action'] as const;
export type SpamAction = (typeof SPAM_ACTIONS)[number];

/** What rspamd said about a message. */
export interface SpamVerdict {
  action: SpamAction;
  score: number;
  /** rspamd's `required_score` (its reject threshold). */
  required: number;
  /** Symbols that fired, highest score first, as `NAME(score)`; at most MAX_SYMBOLS. */
  symbols: string[];
  /** rspamd's `messages.smtp_message`, made safe for a reply line. */
  message?: string;
}

/** A scan that did not happen; the message is accepted unscanned. */
export interface SpamSkipped {
  skipped: 'timeout' | 'unavailable' | 'error' | 'bad response' | 'too large';
  /** Details for the log line. */
  detail?: string;
}

export type SpamResult = SpamVerdict | SpamSkipped;

/** The SMTP facts rspamd scores besides the content. */
export interface ScanEnvelope {
  /** MAIL FROM ('' for the null sender). */
  from: string;
  rcpts: string[];
  /** The client's address. */
  ip: string;
  helo: string;
  /** Our queue id (rspamd logs it; `Queue-Id`). */
  queueId: string;
  /** The authenticated user, if any (`User`). */
  user?: string;
  /** Our SPF/DKIM/DMARC results (core/mail/auth-results.ts), passed on so rspamd need not redo them. */
  auth?: { spf: string; dkim: string; dmarc: string };
  /** The message's length when known (`Content-Length` instead of chunked encoding). */
  size?: number;
}

/** Something that scans messages (the rspamd client, or a stand-in in tests). */
export interface SpamScanner {
  scan(message: Buffer | Readable, envelope: ScanEnvelope): Promise<SpamResult>;
  close(): Promise<void>;
}

export interface RspamdOptions {
  /** rspamd's normal worker, e.g. http://127.0.0.1:11333. */
  url: string;
  /** Longest wait for the whole scan, sending included. @default 5000 */
  timeoutMs?: number;
  /** Larger messages are not sent (rspamd's own `max_message` defaults to 50 MiB). @default 52428800 */
  maxBytes?: number;
  metrics?: Metrics;
  log?: Logger;
}

/** Symbols kept in a verdict (and so in the job and the header). */
const MAX_SYMBOLS = 50;
/** rspamd's JSON answer is a few KiB; anything far larger is not an answer. */
const MAX_REPLY_BYTES = 1024 * 1024;

export function isSkipped(r: SpamResult): r is SpamSkipped {
  return 'skipped' in r;
}

/** Whether a verdict files the message as junk (accepted, but not into INBOX). */
export function isJunk(r: SpamResult | undefined): boolean {
  return !!r && !isSkipped(r) && (r.action === 'add header' || r.action === 'rewrite subject');
}

/** The rspamd HTTP client. */
export class RspamdClient implements SpamScanner {
  private readonly base: URL;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly agent: Dispatcher;

  constructor(private readonly o: RspamdOptions) {
    this.base = new URL(o.url);
    this.timeoutMs = o.timeoutMs ?? 5000;
    this.maxBytes = o.maxBytes ?? 50 * 1024 * 1024;
    // Keep-alive connections: a scan per message must not pay a TCP handshake each time.
    this.agent = new Agent({ keepAliveTimeout: 30_000, connections: 64 });
  }

  /** Whether rspamd answers `GET /ping` with `pong` within `timeoutMs`. */
  async ping(timeoutMs = 1000): Promise<boolean> {
    try {
      const r = await request(new URL('/ping', this.base), { dispatcher: this.agent, signal: AbortSignal.timeout(timeoutMs) });
      const text = await r.body.text();
      return r.statusCode === 200 && text.trim() === 'pong';
    } catch {
      return false;
    }
  }

  async scan(message: Buffer | Readable, env: ScanEnvelope): Promise<SpamResult> {
    const started = performance.now();
    const result = await this.scanOnce(message, env);
    const outcome = isSkipped(result) ? 'skipped' : result.action.replace(' ', '_');
    // What authenticated users send (env.user) is counted apart from MX mail.
    (env.user ? this.o.metrics?.spamOutboundScans : this.o.metrics?.spamScans)?.inc({ result: outcome });
    this.o.metrics?.spamScanSeconds.observe({ result: isSkipped(result) ? 'skipped' : 'scanned' }, (performance.now() - started) / 1000);
    return result;
  }

  private async scanOnce(message: Buffer | Readable, env: ScanEnvelope): Promise<SpamResult> {
    const size = Buffer.isBuffer(message) ? message.length : env.size;
    if (size !== undefined && size > this.maxBytes) {
      if (!Buffer.isBuffer(message)) message.destroy();
      return { skipped: 'too large', detail: `${size} octets` };
    }
    const headers: Record<string, string | string[]> = {
      // "Rspamd protocol", HTTP headers: From and Rcpt are the envelope (one Rcpt per recipient).
      From: env.from,
      IP: env.ip,
      Helo: env.helo || 'unknown',
      'Queue-Id': env.queueId,
    };
    if (env.rcpts.length) headers.Rcpt = env.rcpts;
    if (env.user) headers.User = env.user;
    if (size !== undefined) headers['Content-Length'] = String(size);
    if (env.auth) Object.assign(headers, authHeaders(env.auth));
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error('timeout')), this.timeoutMs);
    try {
      const r = await request(new URL('/checkv2', this.base), {
        method: 'POST',
        dispatcher: this.agent,
        headers: sanitizeHeaders(headers),
        body: message,
        signal: abort.signal,
      });
      const text = await readBounded(r.body, MAX_REPLY_BYTES);
      if (r.statusCode !== 200) return { skipped: 'error', detail: `HTTP ${r.statusCode}: ${text.slice(0, 200)}` };
      return parseReply(text);
    } catch (e) {
      if (!Buffer.isBuffer(message)) message.destroy();
      if (abort.signal.aborted) return { skipped: 'timeout', detail: `${this.timeoutMs} ms` };
      return { skipped: unavailable(e) ? 'unavailable' : 'error', detail: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }
}

/** rspamd cannot be reached at all (nothing listens, or the connection broke). */
function unavailable(e: unknown): boolean {
  const code = (e as { code?: string } | undefined)?.code ?? (e as { cause?: { code?: string } } | undefined)?.cause?.code;
  return (
    e instanceof undiciErrors.SocketError ||
    code === 'ECONNREFUSED' ||
    code === 'ECONNRESET' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENOTFOUND' ||
    code === 'UND_ERR_SOCKET'
  );
}

/** Our results in the JSON form rspamd's http_headers module reads (SPF, DKIM, DMARC headers). */
function authHeaders(a: { spf: string; dkim: string; dmarc: string }): Record<string, string> {
  // mailauth's words (RFC 8601 result names) -> the module's: none -> na, temperror -> tempfail,
  // permerror -> permfail; DMARC fail without a reject verdict (that was refused earlier) is its
  // softfail (DMARC_POLICY_SOFTFAIL).
  const common = (r: string): string => ({ none: 'na', temperror: 'tempfail', permerror: 'permfail' })[r] ?? r;
  const dmarc = a.dmarc === 'fail' ? 'softfail' : common(a.dmarc);
  return {
    SPF: JSON.stringify({ result: common(a.spf) }),
    DKIM: JSON.stringify({ result: a.dkim === 'neutral' || a.dkim === 'policy' ? 'permfail' : common(a.dkim) }),
    DMARC: JSON.stringify({ result: dmarc }),
  };
}

/** Header values come from the SMTP client (HELO, addresses): no control characters reach HTTP. */
function sanitizeHeaders(h: Record<string, string | string[]>): Record<string, string | string[]> {
  const clean = (v: string) => v.replace(/[\x00-\x1f\x7f]/g, '?').slice(0, 1000);
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) out[k] = Array.isArray(v) ? v.map(clean) : clean(v);
  return out;
}

async function readBounded(body: AsyncIterable<Buffer | Uint8Array>, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += c.length;
    if (n > max) throw new Error(`reply larger than ${max} octets`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** rspamd's /checkv2 JSON -> a verdict; anything else is a `bad response`. */
export function parseReply(text: string): SpamResult {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    return { skipped: 'bad response', detail: 'not JSON' };
  }
  if (!j || typeof j !== 'object') return { skipped: 'bad response', detail: 'not an object' };
  const o = j as Record<string, unknown>;
  const action = o.action;
  if (typeof action !== 'string' || !(SPAM_ACTIONS as readonly string[]).includes(action)) {
    return { skipped: 'bad response', detail: `action ${JSON.stringify(action)}` };
  }
  const score = Number(o.score);
  const required = Number(o.required_score);
  const symbols: { name: string; score: number }[] = [];
  if (o.symbols && typeof o.symbols === 'object') {
    for (const [name, v] of Object.entries(o.symbols as Record<string, unknown>)) {
      const s = Number((v as { score?: unknown } | null)?.score ?? 0);
      symbols.push({ name, score: Number.isFinite(s) ? s : 0 });
    }
  }
  symbols.sort((a, b) => b.score - a.score || a.name.localeCompare(b.name));
  const messages = o.messages as Record<string, unknown> | undefined;
  const smtp = typeof messages?.smtp_message === 'string' ? replyText(messages.smtp_message) : '';
  return {
    action: action as SpamAction,
    score: Number.isFinite(score) ? score : 0,
    required: Number.isFinite(required) ? required : 0,
    symbols: symbols.slice(0, MAX_SYMBOLS).map((s) => `${headerSafe(s.name)}(${s.score.toFixed(2)})`),
    ...(smtp ? { message: smtp } : {}),
  };
}

/** Text safe in an SMTP reply line: printable ASCII, bounded. */
function replyText(s: string): string {
  return s
    .replace(/[^\x20-\x7e]/g, '?')
    .trim()
    .slice(0, 200);
}

function headerSafe(s: string): string {
  return s.replace(/[^\x21-\x7e]/g, '?').slice(0, 100);
}

/**
 * The header fields recording the scan, to prepend to the stored message (as Received and
 * Authentication-Results are: the original bytes, and so their DKIM signatures, stay intact).
 * Each field ends in CRLF; long symbol lists are folded (RFC 5322 §2.2.3).
 */
export function spamHeaders(r: SpamResult): string {
  if (isSkipped(r)) return `X-Spam-Status: Unknown (scan skipped: ${r.skipped})\r\n`;
  const status = `score=${r.score.toFixed(2)} required=${r.required.toFixed(2)}`;
  if (r.action === 'no action') return `X-Spam-Status: No, ${status}\r\n`;
  let out = `X-Spam-Status: Yes, ${status} action=${r.action.replace(' ', '_')}\r\n`;
  if (r.symbols.length) out += fold('X-Spam-Symbols:', r.symbols);
  return out;
}

/** `name: a, b, c` folded before a word that would pass 78 characters. */
function fold(name: string, words: string[]): string {
  const lines: string[] = [];
  let line = name;
  words.forEach((w, i) => {
    const piece = ` ${w}${i < words.length - 1 ? ',' : ''}`;
    if (line.length + piece.length > 78 && line !== name) {
      lines.push(line);
      line = ` ${piece.trimStart()}`;
    } else line += piece;
  });
  lines.push(line);
  return lines.join('\r\n') + '\r\n';
}

/**
 * The scanner the MX listener uses, from the config: none when off; with `auto`, only when rspamd
 * answers /ping now (the start-up log line says which).
 */
export async function spamScannerFromConfig(
  c: { enabled: 'auto' | 'on' | 'off'; url: string; timeoutMs: number },
  deps: { metrics?: Metrics; log: Logger },
): Promise<RspamdClient | undefined> {
  if (c.enabled === 'off') {
    deps.log.info('spam scanning off (spam.enabled = off)');
    return undefined;
  }
  const client = new RspamdClient({ url: c.url, timeoutMs: c.timeoutMs, metrics: deps.metrics, log: deps.log });
  if (c.enabled === 'on') {
    const up = await client.ping();
    deps.log.info({ url: c.url, answering: up }, `spam scanning on (rspamd at ${c.url}${up ? '' : ', not answering yet: scans are skipped until it does'})`);
    return client;
  }
  if (await client.ping()) {
    deps.log.info({ url: c.url }, `spam scanning on (rspamd at ${c.url})`);
    return client;
  }
  await client.close();
  deps.log.info({ url: c.url }, `spam scanning off (no rspamd answering at ${c.url}; spam.enabled = auto)`);
  return undefined;
}
