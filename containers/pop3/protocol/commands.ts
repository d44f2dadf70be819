/**
 * POP3 command lines to typed commands, and the reply grammar (RFC 1939 §3, RFC 2449 §8 response
 * codes). Pure: no sockets, no storage.
 */

/** A command line split into its keyword and arguments. */
export interface Command {
  /** The keyword in upper case (RFC 1939 §3: "Keywords are ... case-insensitive"). */
  verb: string;
  /** Arguments split on single spaces. */
  args: string[];
  /** Everything after the keyword and one space, unsplit (PASS takes it whole, RFC 1939 §7). */
  rest: string;
}

/**
 * RFC 1939 §3: "Commands in the POP3 consist of a case-insensitive keyword, possibly followed by one
 * or more arguments ... separated by a single SPACE character. Keywords are three or four
 * characters long." Returns undefined for a line that is not a command at all.
 */
export function parseCommand(line: string): Command | undefined {
  const sp = line.indexOf(' ');
  const keyword = sp < 0 ? line : line.slice(0, sp);
  if (!/^[A-Za-z]{3,4}$/.test(keyword)) return undefined;
  const rest = sp < 0 ? '' : line.slice(sp + 1);
  // Tolerate trailing spaces some clients send; inner runs of spaces yield no empty arguments.
  const args = rest.split(' ').filter((a) => a.length > 0);
  return { verb: keyword.toUpperCase(), args, rest };
}

/**
 * A message number argument (RFC 1939 §3: "a message-number ... always refer[s] to ... a decimal
 * number"). Returns undefined when it is not a plain positive decimal.
 */
export function parseMessageNumber(arg: string | undefined): number | undefined {
  if (arg === undefined || !/^\d{1,9}$/.test(arg)) return undefined;
  const n = Number(arg);
  return n >= 1 ? n : undefined;
}

/** A non-negative decimal (the line count of TOP, RFC 1939 §7). */
export function parseCount(arg: string | undefined): number | undefined {
  if (arg === undefined || !/^\d{1,9}$/.test(arg)) return undefined;
  return Number(arg);
}

/** The extended response codes we use (RFC 2449 §8, RFC 3206). */
export type ResponseCode = 'IN-USE' | 'AUTH' | 'SYS/TEMP' | 'SYS/PERM' | 'LOGIN-DELAY';

/** `+OK text` with CRLF. */
export function ok(text = ''): string {
  return text ? `+OK ${text}\r\n` : '+OK\r\n';
}

/** `-ERR [CODE] text` with CRLF (RFC 2449 §8: the code in brackets right after -ERR). */
export function err(text: string, code?: ResponseCode): string {
  return code ? `-ERR [${code}] ${text}\r\n` : `-ERR ${text}\r\n`;
}

/**
 * A multi-line response of short lines (RFC 1939 §3): each line byte-stuffed when it starts with
 * the termination octet, then the `.` line.
 */
export function multiline(first: string, lines: readonly string[]): string {
  let out = first;
  for (const l of lines) out += (l.startsWith('.') ? '.' : '') + l + '\r\n';
  return out + '.\r\n';
}

/** The reply grammar every server line must match (RFC 1939 §3, RFC 2449 §8, RFC 5034 §4). */
export const REPLY_GRAMMAR = /^(\+OK( [^\r\n]*)?|-ERR( \[[A-Z/-]+\])?( [^\r\n]*)?|\+ [A-Za-z0-9+/=]*)$/;
