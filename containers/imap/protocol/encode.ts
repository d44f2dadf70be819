/**
 * The pieces of IMAP server responses (RFC 9051 §7, RFC 3501 §7) the session writes: untagged and
 * tagged status lines, continuation requests, flag lists and mailbox names. Strings, NIL and lists
 * come from core/mail/imap-syntax.ts, so the listener and the delivery-time ENVELOPE and
 * BODYSTRUCTURE rendering quote alike.
 */
import { imapList, imapString, nstring } from '../../../core/mail/imap-syntax.js';
import { mailboxNameToClient } from '../../../core/mailbox/mailbox-name.js';

export { imapList, imapString, nstring };

/** A tagged response's status (RFC 9051 §7.1). */
export type TaggedStatus = 'OK' | 'NO' | 'BAD';

/**
 * Human-readable text for a response line: CR, LF and NUL become spaces, so text that holds a
 * client's input or an error message can never end the line early and inject a response.
 */
function lineText(text: string): string {
  return text.replace(/[\r\n\0]/g, ' ');
}

/** `* <text>` CRLF (RFC 9051 §2.2.2): data or a status the client did not ask for by tag. */
export function untagged(text: string): string {
  return `* ${lineText(text)}\r\n`;
}

/**
 * `<tag> OK|NO|BAD [<code>] <text>` CRLF (RFC 9051 §7.1), the end of a command. `code` is the
 * response code without brackets, e.g. `READ-WRITE`, `APPENDUID 38505 3955`, `TOOBIG`.
 */
export function tagged(tag: string, status: TaggedStatus, text: string, code?: string): string {
  const prefix = code ? `[${lineText(code)}] ` : '';
  return `${tag} ${status} ${prefix}${lineText(text)}\r\n`;
}

/** `+ <text>` CRLF (RFC 9051 §7.5): go on with the literal, or the next AUTHENTICATE step. */
export function continuation(text = ''): string {
  return `+ ${lineText(text)}\r\n`;
}

/** `(\Seen $Forwarded ...)` (RFC 9051 §9 `flag-list`); flags are atoms, written as they are. */
export function flagList(flags: Iterable<string>): string {
  return `(${[...flags].join(' ')})`;
}

/** RFC 9051 §9 ASTRING-CHAR: ATOM-CHAR or `]`; no CTL, SP, 8-bit or `( ) { % * " \`. */
const ASTRING_ATOM = /^[^(){ %*"\\\x00-\x1f\x7f-\uffff]+$/;

/**
 * An astring (RFC 9051 §9): an atom when `value` can be one, else a quoted string or a literal.
 * `NIL` is quoted, since as an atom it would read as NIL. `utf8` as for imapString.
 */
export function astring(value: string, utf8 = false): string {
  return ASTRING_ATOM.test(value) && value.toUpperCase() !== 'NIL' ? value : imapString(value, utf8);
}

/**
 * A stored mailbox name for a response (LIST, STATUS, ...): modified UTF-7 for a client without
 * UTF-8 (RFC 3501 §5.1.3), then written as an astring.
 */
export function mailboxName(name: string, utf8: boolean): string {
  return astring(mailboxNameToClient(name, utf8), utf8);
}
