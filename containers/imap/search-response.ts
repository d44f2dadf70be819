/**
 * The responses of SEARCH (search.ts): ESEARCH (RFC 4731 §3.1, RFC 9051 §7.3.4), the IMAP4rev1
 * SEARCH line (RFC 3501 §7.2.5), the saved result `$` (RFC 5182) and the MODSEQ they report
 * (RFC 7162 §3.4). Pure: the matches in, the text out.
 */
import { imapString } from '../../core/mail/imap-syntax.js';
import { sequenceText } from './protocol/values.js';
import type { EsearchReturn, SearchMessage } from './search.js';

/**
 * The ESEARCH response line (RFC 4731 §3.1, RFC 9051 §7.3.4), without CRLF, e.g.
 * `* ESEARCH (TAG "a1") UID MIN 2 MAX 9 ALL 2,4:9 COUNT 3`. No options means ALL. MIN, MAX and
 * ALL are left out when nothing matched; COUNT is always given. With `modseq` (a MODSEQ key was
 * used, RFC 7162 §3.4) the highest MODSEQ of the messages reported follows. Returns '' when SAVE
 * is the only option: then no ESEARCH is sent (RFC 5182 §2.4).
 */
export function formatEsearch(tag: string, uid: boolean, matches: SearchMessage[], options: EsearchReturn[], extra: { modseq?: boolean } = {}): string {
  const wanted = options.length === 0 ? ['ALL'] : options;
  if (wanted.every((o) => o === 'SAVE')) return '';
  const numbers = matches.map((m) => (uid ? m.uid : m.seq));
  const parts = ['* ESEARCH', `(TAG ${imapString(tag)})`];
  if (uid) parts.push('UID');
  let reported: SearchMessage[] = [];
  if (matches.length > 0) {
    const first = matches.reduce((a, b) => ((uid ? b.uid < a.uid : b.seq < a.seq) ? b : a));
    const last = matches.reduce((a, b) => ((uid ? b.uid > a.uid : b.seq > a.seq) ? b : a));
    if (wanted.includes('MIN')) parts.push(`MIN ${uid ? first.uid : first.seq}`);
    if (wanted.includes('MAX')) parts.push(`MAX ${uid ? last.uid : last.seq}`);
    if (wanted.includes('ALL')) parts.push(`ALL ${sequenceText(numbers)}`);
    // RFC 7162 §3.4: with only MIN and/or MAX, the MODSEQ is that of the messages returned.
    reported = wanted.includes('ALL') || wanted.includes('COUNT') ? matches : [first, last];
  }
  if (wanted.includes('COUNT')) parts.push(`COUNT ${matches.length}`);
  if (extra.modseq && reported.length > 0) parts.push(`MODSEQ ${highestModseq(reported)}`);
  return parts.join(' ');
}

/**
 * The untagged SEARCH response of IMAP4rev1 (RFC 3501 §7.2.5), without CRLF: `* SEARCH 2 5 9`,
 * with ` (MODSEQ n)` after a MODSEQ key when something matched (RFC 7162 §3.4).
 */
export function formatSearch(uid: boolean, matches: SearchMessage[], extra: { modseq?: boolean } = {}): string {
  let line = '* SEARCH';
  for (const m of matches) line += ` ${uid ? m.uid : m.seq}`;
  if (extra.modseq && matches.length > 0) line += ` (MODSEQ ${highestModseq(matches)})`;
  return line;
}

/**
 * The UIDs the session keeps as `$` after RETURN (SAVE ...), or undefined without SAVE. With MIN
 * and/or MAX beside SAVE only those are kept, unless ALL or COUNT is asked too (RFC 5182 §2.4).
 */
export function savedResult(matches: SearchMessage[], options: EsearchReturn[] | undefined): number[] | undefined {
  if (!options?.includes('SAVE')) return undefined;
  const uids = matches.map((m) => m.uid).sort((a, b) => a - b);
  const minMax = options.includes('MIN') || options.includes('MAX');
  if (!minMax || options.includes('ALL') || options.includes('COUNT') || uids.length === 0) return uids;
  const out = new Set<number>();
  if (options.includes('MIN')) out.add(uids[0]!);
  if (options.includes('MAX')) out.add(uids[uids.length - 1]!);
  return [...out];
}

/** The highest MODSEQ of `messages` (a loop: spreading 100,000 arguments into Math.max would throw). */
export function highestModseq(messages: SearchMessage[]): number {
  let max = 0;
  for (const m of messages) if (m.modseq > max) max = m.modseq;
  return max;
}
