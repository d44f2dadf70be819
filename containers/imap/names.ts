/**
 * Folder names and LIST patterns as IMAP clients write them (RFC 9051 §5.1, §6.3.9): names are
 * UTF-8 for IMAP4rev2 and UTF8=ACCEPT clients and modified UTF-7 (RFC 3501 §5.1.3) for the rest;
 * `INBOX` in any case is INBOX; `*` matches anything, `%` anything but the delimiter.
 */
import { DELIMITER } from '../../core/mailbox/folders.js';
import { mailboxNameFromClient, mailboxNameToClient } from '../../core/mailbox/mailbox-name.js';

/** The folder name a client sent, as the store writes it; undefined when it is not valid. */
export function nameFromClient(raw: string, utf8: boolean): string | undefined {
  const name = mailboxNameFromClient(raw, utf8);
  if (name === undefined || name === '') return undefined;
  const parts = name.split(DELIMITER);
  if (parts[0]!.toUpperCase() === 'INBOX') parts[0] = 'INBOX';
  return parts.join(DELIMITER);
}

/** A stored folder name as the client reads it. */
export function nameForClient(name: string, utf8: boolean): string {
  return mailboxNameToClient(name, utf8);
}

/**
 * A LIST pattern (reference and mailbox arguments joined, RFC 9051 §6.3.9) as a matcher over
 * stored names. INBOX is matched case-insensitively.
 */
export function listMatcher(reference: string, pattern: string): (name: string) => boolean {
  const full = reference && !pattern.startsWith(DELIMITER) ? joinReference(reference, pattern) : pattern;
  let re = '^';
  for (const ch of full) {
    if (ch === '*') re += '.*';
    else if (ch === '%') re += `[^${escapeRe(DELIMITER)}]*`;
    else re += escapeRe(ch);
  }
  const exact = new RegExp(`${re}$`, 'su');
  const inboxPattern = /^inbox/i.test(full) ? new RegExp(`${re.replace(/^\^INBOX/i, '^INBOX')}$`, 'su') : undefined;
  return (name) => exact.test(name) || (inboxPattern !== undefined && name.startsWith('INBOX') && inboxPattern.test(name));
}

function joinReference(reference: string, pattern: string): string {
  return reference.endsWith(DELIMITER) ? reference + pattern : `${reference}${DELIMITER}${pattern}`;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
