/**
 * The ids JMAP gives mail (containers/web/jmap/types.ts keeps the scheme), and the two keys
 * threading compares messages by (RFC 8621 §3): a hashed Message-ID and the base subject.
 * Pure functions, so the folder model, the backfill and the JMAP methods agree on them.
 */
import { createHash, randomBytes } from 'node:crypto';

const hex24 = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 24);

/** The Email id of a raw message: `M` + 24 hex of sha256(blobKey). One blob in several folders of
 * a user is one Email (IMAP COPY shares the blob); MOVE keeps the blob, so the id. */
export function emailIdOf(blobKey: string): string {
  return `M${hex24(blobKey)}`;
}

/** The Email's thread as filing decided it (RFC 8621 §3). A message filed before threads that the
 * backfill has not reached yet is a thread of its own, `T` + 24 hex of sha256(emailId). */
export function threadIdOf(emailId: string, threadId: string | undefined): string {
  return threadId ?? `T${hex24(emailId)}`;
}

const TO_KEYWORD: Record<string, string> = { '\\seen': '$seen', '\\flagged': '$flagged', '\\answered': '$answered', '\\draft': '$draft' };
const TO_FLAG: Record<string, string> = { $seen: '\\Seen', $flagged: '\\Flagged', $answered: '\\Answered', $draft: '\\Draft' };

/** The JMAP keywords of IMAP flags, lower-case, each once (RFC 8621 §4.1.1: keywords compare
 * case-insensitively; \Deleted and \Recent have none). */
export function keywordsOf(flags: string[]): string[] {
  const out = new Set<string>();
  for (const f of flags) {
    const lower = f.toLowerCase();
    const kw = lower.startsWith('\\') ? TO_KEYWORD[lower] : lower;
    if (kw) out.add(kw);
  }
  return [...out];
}

/** The IMAP flag of a JMAP keyword. */
export function flagOf(keyword: string): string {
  return TO_FLAG[keyword.toLowerCase()] ?? keyword.toLowerCase();
}

/** A fresh thread id: `T` + 24 random hex digits (made when a message starts a thread). */
export function newThreadId(): string {
  return `T${randomBytes(12).toString('hex')}`;
}

/** Whether `id` has the shape of an Email or Thread id (a handler checks before it reads). */
export const isEmailId = (id: unknown): id is string => typeof id === 'string' && /^M[0-9a-f]{24}$/.test(id);
export const isThreadId = (id: unknown): id is string => typeof id === 'string' && /^T[0-9a-f]{24}$/.test(id);

/** The index key of a Message-ID (without its angle brackets): hashed, so a key stays short and
 * holds no `#` whatever the sender put between the brackets. Message-IDs compare exactly (RFC 5322
 * §3.6.4 gives no case folding). */
export function messageIdKey(id: string): string {
  return hex24(id.trim());
}

/** A Message-ID header as the summary keeps it (`<a@b>`), without brackets; '' when it has none. */
export function bareMessageId(header: string): string {
  const m = /<([^<>\s]{1,250})>/.exec(header);
  return m ? m[1]! : header.trim().slice(0, 250);
}

// Reply and forward markers as mail clients write them, English and the common European ones
// (Re, Fwd, Fw; AW and WG German, SV Nordic, VS Finnish, TR French, Antw Dutch, R Italian), with
// an optional count ("Re[2]:") and a list tag ("[list] Re:").
const PREFIX = /^\s*(?:\[[^\]]{0,60}\]\s*)?(?:re|fwd?|aw|wg|sv|vs|tr|antw|r)\s*(?:\[\d+\])?\s*:\s*/i;
const TRAILER = /\s*\((?:fwd)\)\s*$/i;

/**
 * The base subject RFC 8621 §3 suggests comparing ("the subject with the Re:/Fwd: prefixes
 * removed", after RFC 5256 §2.1): prefixes, list tags before them and a trailing "(fwd)"
 * stripped repeatedly, white space collapsed, lower-cased.
 */
export function baseSubject(subject: string): string {
  let s = subject.replace(/\s+/g, ' ').trim();
  for (let i = 0; i < 20; i++) {
    const next = s.replace(PREFIX, '').replace(TRAILER, '').trim();
    if (next === s) break;
    s = next;
  }
  // A bare list tag left in front ("[list] topic") is not part of the topic either.
  s = s.replace(/^\[[^\]]{0,60}\]\s*(?=\S)/, '');
  return s.toLowerCase();
}

/** The stored form of a base subject: 12 hex digits are enough to tell topics apart. */
export function subjectKey(subject: string): string {
  return hex24(baseSubject(subject)).slice(0, 12);
}
