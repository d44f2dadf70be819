/**
 * The trace header every accepted message gets (RFC 5321 §4.4), naming the client, the TLS
 * version and cipher and, for submission, the authenticated user.
 */
import { isIPv6 } from 'node:net';

/** What the Received header records. */
export interface ReceivedFacts {
  /** The EHLO/HELO argument as the client gave it. */
  helo: string;
  clientAddress: string;
  /** Our name (config.hostname). */
  hostname: string;
  /** EHLO (true) or HELO (false). */
  esmtp: boolean;
  tls?: { version: string; cipher: string };
  authUser?: string;
  smtputf8?: boolean;
  /** The queue id. */
  id: string;
  /** Named in a `for` clause only when there is exactly one (never reveal Bcc recipients). */
  rcpts: string[];
  date: Date;
}

/**
 * The `with` protocol name: RFC 3848 (ESMTP, ESMTPA, ESMTPS, ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP
 * variants); plain SMTP after HELO.
 */
export function withProtocol(f: Pick<ReceivedFacts, 'esmtp' | 'tls' | 'authUser' | 'smtputf8'>): string {
  if (!f.esmtp) return 'SMTP';
  const base = f.smtputf8 ? 'UTF8SMTP' : 'ESMTP';
  return `${base}${f.tls ? 'S' : ''}${f.authUser ? 'A' : ''}`;
}

/** The Received header field, folded, ending in CRLF. */
export function buildReceived(f: ReceivedFacts): string {
  const literal = isIPv6(f.clientAddress) ? `[IPv6:${f.clientAddress}]` : `[${f.clientAddress}]`;
  const lines = [`Received: from ${sanitize(f.helo)} (${literal})`, `\tby ${f.hostname} (Tomlinson) with ${withProtocol(f)} id ${f.id}`];
  if (f.tls) lines.push(`\t(version=${sanitize(f.tls.version)} cipher=${sanitize(f.tls.cipher)})`);
  if (f.authUser) lines.push(`\t(authenticated sender: ${sanitize(f.authUser)})`);
  const forClause = f.rcpts.length === 1 ? `\tfor <${sanitize(f.rcpts[0])}>` : '\t';
  lines.push(`${forClause}; ${rfc5322Date(f.date)}`);
  return lines.join('\r\n') + '\r\n';
}

/** Keeps client-supplied text from breaking the header: no CR, LF, parentheses or controls. */
function sanitize(s: string): string {
  return s.replace(/[\x00-\x1f\x7f()\\]/g, '?').slice(0, 255);
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 §3.3 date-time in UTC, e.g. `Thu, 26 Nov 2026 07:15:07 +0000`. */
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}
