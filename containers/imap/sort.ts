/**
 * IMAP SORT (RFC 5256) with DISPLAYFROM and DISPLAYTO (RFC 5957): the sort criteria parsed from
 * the command, the order of the messages a search found, and the response. Every key is read from
 * the folder's index and the stored MIME summary, so sorting never reads a message's bytes (the
 * search part may, see search.ts).
 */
import type { AttrValue } from '../../core/storage/ports.js';
import { type ImapValue, atom, isAtom, text } from './protocol/values.js';
import { highestModseq } from './search-response.js';
import { type SearchMessage, type SearchProgram, parseSearch } from './search.js';

/** A sort key (RFC 5256 §3, RFC 5957 §3). */
export type SortKey = 'ARRIVAL' | 'CC' | 'DATE' | 'FROM' | 'SIZE' | 'SUBJECT' | 'TO' | 'DISPLAYFROM' | 'DISPLAYTO';

/** One sort criterion: a key and whether REVERSE stood before it. */
export interface SortCriterion {
  key: SortKey;
  reverse: boolean;
}

const KEYS: readonly SortKey[] = ['ARRIVAL', 'CC', 'DATE', 'FROM', 'SIZE', 'SUBJECT', 'TO', 'DISPLAYFROM', 'DISPLAYTO'];

/**
 * Parses the arguments of SORT (after `SORT` or `UID SORT`): `(criteria) charset search-key...`
 * (RFC 5256 §4). The charset is required; after ENABLE UTF8=ACCEPT anything but UTF-8 is BAD
 * (RFC 6855 erratum 4029); an unsupported one gives `badCharset` (answer `NO [BADCHARSET ...]`).
 */
export function parseSort(
  args: ImapValue[],
  opts: { utf8: boolean },
): { criteria: SortCriterion[]; program: SearchProgram; charset: string } | { error: string; badCharset?: boolean } {
  const list = args[0];
  if (!Array.isArray(list) || list.length === 0) return { error: 'SORT needs a list of sort criteria, such as (REVERSE DATE)' };
  const criteria: SortCriterion[] = [];
  let reverse = false;
  for (const v of list) {
    const name = isAtom(v) ? v.value.toUpperCase() : '';
    if (name === 'REVERSE') {
      if (reverse) return { error: 'REVERSE REVERSE in sort criteria' };
      reverse = true;
      continue;
    }
    const key = KEYS.find((k) => k === name);
    if (!key) return { error: `unknown sort criterion ${text(v) ?? '(list)'}` };
    criteria.push({ key, reverse });
    reverse = false;
  }
  if (reverse) return { error: 'REVERSE must be followed by a sort key' };
  if (text(args[1]) === undefined) return { error: 'SORT needs a charset after the criteria' };
  const search = parseSearch([atom('CHARSET'), args[1]!, ...args.slice(2)], opts);
  if ('error' in search) return search;
  return { criteria, program: search.program, charset: search.charset! };
}

/**
 * The messages in the order of `criteria`: each key in turn, REVERSE turning that key's order
 * round; messages equal by every key keep their order by sequence number (RFC 5256 §3). Strings
 * compare by i;ascii-casemap, the RFC's default collation (ASCII letters folded, then octets).
 */
export function sortMessages(messages: SearchMessage[], criteria: SortCriterion[]): SearchMessage[] {
  const columns = criteria.map((c) => ({ reverse: c.reverse, values: messages.map((m) => sortValue(m, c.key)) }));
  const order = messages.map((_, i) => i);
  order.sort((a, b) => {
    for (const col of columns) {
      const x = col.values[a]!;
      const y = col.values[b]!;
      const cmp = typeof x === 'number' ? x - (y as number) : Buffer.compare(x, y as Buffer);
      if (cmp !== 0) return col.reverse ? -cmp : cmp;
    }
    return messages[a]!.seq - messages[b]!.seq;
  });
  return order.map((i) => messages[i]!);
}

/** The value a message sorts by under `key`. */
function sortValue(m: SearchMessage, key: SortKey): number | Buffer {
  const s = m.summary;
  switch (key) {
    case 'ARRIVAL':
      return m.internalDate.getTime();
    case 'SIZE':
      return m.size;
    case 'DATE': {
      // RFC 5256 §3: the sent date (in UTC); when the Date header is missing or does not parse,
      // the INTERNALDATE.
      const t = typeof s.date === 'string' && s.date ? Date.parse(s.date) : NaN;
      return Number.isFinite(t) ? t : m.internalDate.getTime();
    }
    case 'SUBJECT':
      return casemap(baseSubject(str(s.subject)));
    case 'FROM':
      return casemap(localPart(str(s.fromAddress) || splitAddress(str(s.from)).address));
    case 'TO':
    case 'CC':
      return casemap(localPart(splitAddress(firstOf(s[key.toLowerCase()])).address));
    case 'DISPLAYFROM':
    case 'DISPLAYTO': {
      // RFC 5957 §3: the display name of the first address, or its addr-spec when it has none.
      const first = splitAddress(key === 'DISPLAYFROM' ? str(s.from) : firstOf(s.to));
      return casemap(first.name || first.address);
    }
  }
}

function str(v: AttrValue | undefined): string {
  return typeof v === 'string' ? v : '';
}

function firstOf(v: AttrValue | undefined): string {
  return Array.isArray(v) ? str(v[0]) : '';
}

/** An address as the summary writes it (`Name <local@domain>` or `local@domain`), in its parts. */
export function splitAddress(display: string): { name: string; address: string } {
  const m = /^(.*?)\s*<([^<>]*)>\s*$/.exec(display);
  if (!m) return { name: '', address: display.trim() };
  return { name: m[1]!.replace(/^"(.*)"$/, '$1').trim(), address: m[2]!.trim() };
}

/** RFC 5256 §3 sorts FROM, TO and CC by `addr-mailbox`: the part before the last @. */
function localPart(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? address : address.slice(0, at);
}

/** i;ascii-casemap (RFC 4790 §9.2): ASCII letters upper-cased, then compared as UTF-8 octets. */
function casemap(value: string): Buffer {
  return Buffer.from(
    value.replace(/[a-z]+/g, (s) => s.toUpperCase()),
    'utf8',
  );
}

// RFC 5256 §5 grammar, as patterns (case-insensitive).
const BLOB = String.raw`\[[^\[\]]*\][ \t]*`; // subj-blob = "[" *BLOBCHAR "]" *WSP
const REFWD = String.raw`(?:re|fwd?)[ \t]*(?:${BLOB})?:`; // subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
const TRAILER = /(?:\(fwd\)|[ \t])+$/i; // subj-trailer = "(fwd)" / WSP
const LEADER = new RegExp(String.raw`^(?:(?:${BLOB})*${REFWD}|[ \t])`, 'i'); // subj-leader = (*subj-blob subj-refwd) / WSP
const LEADING_BLOB = new RegExp(`^${BLOB}`);

/**
 * The base subject of RFC 5256 §2.1, from a subject whose encoded-words are already decoded (the
 * summary's): whitespace runs become one space (step 1), then "(fwd)" trailers (2), Re:/Fw:/Fwd:
 * leaders with their [blobs] (3) and a leading [blob] that is not the whole subject (4) go,
 * repeatedly (5), and a "[fwd: ...]" wrapper is unwrapped and the whole done again (6).
 */
export function baseSubject(subject: string): string {
  let s = subject.replace(/[ \t\r\n]+/g, ' '); // step 1
  for (;;) {
    s = s.replace(TRAILER, ''); // step 2
    for (;;) {
      const before = s;
      while (LEADER.test(s)) s = s.replace(LEADER, ''); // step 3
      const blob = LEADING_BLOB.exec(s); // step 4
      if (blob && blob[0].length < s.length) s = s.slice(blob[0].length);
      if (s === before) break; // step 5
    }
    // Step 6: subj-fwd = subj-fwd-hdr subj-base subj-fwd-trl, "[fwd:" ... "]".
    if (/^\[fwd:/i.test(s) && s.endsWith(']')) {
      s = s.slice(5, -1);
      continue;
    }
    return s;
  }
}

/** The SORT response (RFC 5256 §4), without CRLF: `* SORT 5 2 9`, with ` (MODSEQ n)` after a MODSEQ key (RFC 7162 §3.4). */
export function formatSort(uid: boolean, sorted: SearchMessage[], extra: { modseq?: boolean } = {}): string {
  let line = '* SORT';
  for (const m of sorted) line += ` ${uid ? m.uid : m.seq}`;
  if (extra.modseq && sorted.length > 0) line += ` (MODSEQ ${highestModseq(sorted)})`;
  return line;
}
