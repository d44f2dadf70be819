/**
 * How values are written in IMAP responses (RFC 9051 §4, RFC 3501 §4): strings as quoted strings
 * when they can be, otherwise as literals; NIL for absent values; parenthesised lists. Shared by
 * the IMAP listener and by the delivery code that renders a message's ENVELOPE and BODYSTRUCTURE
 * once, at delivery (core/mail/imap-structure.ts), so both quote alike.
 */

/** Longest text written as a quoted string; longer text goes as a literal (clients read both). */
const MAX_QUOTED = 1024;

/**
 * A string as IMAP writes it: a quoted string when it is short and holds no CR, LF, NUL or (unless
 * `utf8` is allowed: IMAP4rev2 or UTF8=ACCEPT) 8-bit character; otherwise a literal `{n}\r\n...`.
 */
export function imapString(value: string, utf8 = false): string {
  if (value.length <= MAX_QUOTED && quotable(value, utf8)) return `"${value.replace(/[\\"]/g, '\\$&')}"`;
  return `{${Buffer.byteLength(value)}}\r\n${value}`;
}

/** `imapString`, or NIL for null and undefined. */
export function nstring(value: string | null | undefined, utf8 = false): string {
  return value === null || value === undefined ? 'NIL' : imapString(value, utf8);
}

/** A parenthesised list of already-written items, or NIL when `items` is empty and `nilWhenEmpty`. */
export function imapList(items: string[], nilWhenEmpty = false): string {
  return items.length === 0 && nilWhenEmpty ? 'NIL' : `(${items.join(' ')})`;
}

function quotable(value: string, utf8: boolean): boolean {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0 || c === 10 || c === 13) return false;
    if (c > 127 && !utf8) return false;
  }
  return true;
}
