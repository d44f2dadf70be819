/**
 * IMAP SEARCH (RFC 9051 §6.4.4, RFC 3501 §6.4.4) with ESEARCH results (RFC 4731, RFC 9051
 * §7.3.4), the saved result `$` (RFC 5182) and MODSEQ (RFC 7162 §3.4): the search program parsed
 * from the command's values and evaluated over the selected folder's messages; the responses
 * are written by search-response.ts. Pure of sockets and storage: the session hands in the messages and a reader for their bytes.
 *
 * What a search costs. Flag, UID, sequence, size, MODSEQ and INTERNALDATE keys are decided from the
 * folder's index, with no read at all. SUBJECT, FROM, TO and CC use the stored MIME summary when it
 * holds the whole field, and sent-date keys use its parsed Date unless the message lies within a
 * day of the boundary (the summary keeps the instant in UTC, the RFC compares the date as
 * written); otherwise, and for BCC and HEADER, the message's header block is read. BODY and TEXT
 * read every message that the cheap keys leave undecided once, whole, as a stream: a TEXT search
 * over a folder of 10,000 messages of 10 KB reads 10,000 blobs (100 MB) — on S3 that is 10,000 GET
 * requests (about $0.004) and, at READ_CONCURRENCY requests in flight of ~20 ms each, about a
 * minute. Locally a small message is read in one synchronous call and screened on its raw octets
 * first (rawMayHold in search-text.ts): only a message that may hold a needle, or that is encoded,
 * goes through the MIME splitter and the decoders, so a search costs about an open and a read per
 * message (docs/performance.md, IMAP).
 */
import { Readable } from 'node:stream';
import type { AttrValue } from '../../core/storage/ports.js';
import { type ImapValue, type SequenceSet, inSequenceSet, is, isAtom, number, sequenceSet, text } from './protocol/values.js';
import { type HeaderField, foldCase, headerFields, rawMayHold, scanMessage } from './search-text.js';

/** What SEARCH needs of one message of the selected folder. */
export interface SearchMessage {
  seq: number;
  uid: number;
  flags: string[];
  internalDate: Date;
  size: number;
  modseq: number;
  /** core/mail/mime.ts MessageSummary as stored (subject, from, to, cc, date, messageId...). */
  summary: Record<string, AttrValue>;
}

/** Reads a message's bytes, only when a key needs them (HEADER of an unsummarised field, BODY, TEXT). */
export interface MessageReader {
  /** The raw header block, bounded by the caller. */
  header(m: SearchMessage): Promise<Buffer>;
  /** The whole raw message. */
  raw(m: SearchMessage): Promise<Readable>;
  /**
   * The whole raw message read at once, synchronously, where the storage offers that and the
   * message is small; else undefined. The buffer may be reused by the next call.
   */
  small?(m: SearchMessage): Buffer | undefined;
}

/** A date key's comparison (RFC 9051 §6.4.4 BEFORE/ON/SINCE, SENTBEFORE/SENTON/SENTSINCE). */
export type DateComparison = 'before' | 'on' | 'since';

/** One node of a search program; a program is its root. Dates are days since 1970-01-01. */
export type SearchKey =
  | { k: 'all' }
  | { k: 'and'; keys: SearchKey[] }
  | { k: 'or'; a: SearchKey; b: SearchKey }
  | { k: 'not'; key: SearchKey }
  /** A system flag or keyword, compared case-insensitively (RFC 9051 §2.3.2). */
  | { k: 'flag'; flag: string; present: boolean }
  | { k: 'seq'; set: SequenceSet }
  | { k: 'uid'; set: SequenceSet }
  /** `$` (RFC 5182 §2.1), as a message set or after UID: the messages of the saved result. */
  | { k: 'saved' }
  | { k: 'larger'; size: number }
  | { k: 'smaller'; size: number }
  | { k: 'internal'; cmp: DateComparison; day: number }
  | { k: 'sent'; cmp: DateComparison; day: number }
  | { k: 'modseq'; min: number }
  | { k: 'field'; field: 'from' | 'to' | 'cc' | 'bcc' | 'subject'; needle: string }
  | { k: 'header'; name: string; needle: string }
  | { k: 'body'; needle: string }
  | { k: 'text'; needle: string };

/** A parsed search: the root key. */
export type SearchProgram = SearchKey;

/** An ESEARCH return option (RFC 4731 §3.1, RFC 5182 §2.2). */
export type EsearchReturn = 'MIN' | 'MAX' | 'ALL' | 'COUNT' | 'SAVE';

/** The response code of a NO for an unsupported CHARSET (RFC 9051 §6.4.4, §7.1). */
export const BADCHARSET_CODE = 'BADCHARSET (UTF-8 US-ASCII)';

/** Messages whose bytes are read at once when keys need them (on S3 each is a GET in flight). */
export const READ_CONCURRENCY = 4;
/** How long a search works through messages read synchronously before it lets other sessions run. */
const SLICE_MS = 10;

/** The RFC 5322 line limit; a summary field this long may have been cut (core/mail/mime.ts). */
const SUMMARY_FIELD_MAX = 998;
/** Addresses a summary keeps per field (core/mail/mime.ts maxAddresses): a full list may be cut. */
const SUMMARY_ADDRESS_MAX = 50;
const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAY_MS = 86_400_000;

class ParseError extends Error {}

/** Reads search keys from a command's values, one at a time. */
class Cursor {
  i = 0;
  constructor(
    readonly args: ImapValue[],
    readonly asciiOnly: boolean,
  ) {}
  get more(): boolean {
    return this.i < this.args.length;
  }
  next(what: string): ImapValue {
    if (this.i >= this.args.length) throw new ParseError(`${what} is missing`);
    return this.args[this.i++]!;
  }
  string(key: string): string {
    const s = text(this.next(`the string after ${key}`));
    if (s === undefined) throw new ParseError(`${key} needs a string`);
    if (this.asciiOnly && /[^\x00-\x7f]/.test(s)) throw new ParseError(`the string after ${key} is not US-ASCII, the CHARSET given`);
    return s;
  }
  number(key: string): number {
    const n = number(this.next(`the number after ${key}`) as ImapValue);
    if (n === undefined) throw new ParseError(`${key} needs a number`);
    return n;
  }
  date(key: string): number {
    const s = text(this.next(`the date after ${key}`));
    const day = s === undefined ? undefined : parseImapDate(s);
    if (day === undefined) throw new ParseError(`${key} needs a date such as 1-Feb-2024`);
    return day;
  }
}

/**
 * Parses the arguments of SEARCH (after `SEARCH` or `UID SEARCH`): `[RETURN (...)] [CHARSET x]
 * key...`. `utf8` is set once the client enabled UTF8=ACCEPT: a CHARSET other than UTF-8 is then
 * refused with BAD (RFC 6855 §3 with erratum 4029). An unsupported charset gives `badCharset`, to
 * be answered `NO [BADCHARSET (UTF-8 US-ASCII)]`; any other error is the text of a BAD.
 */
export function parseSearch(
  args: ImapValue[],
  opts: { utf8: boolean },
): { program: SearchProgram; charset?: string; returnOptions?: EsearchReturn[] } | { error: string; badCharset?: boolean } {
  try {
    let i = 0;
    let returnOptions: EsearchReturn[] | undefined;
    if (is(args[0], 'RETURN')) {
      returnOptions = parseReturnOptions(args[1]);
      i = 2;
    }
    let charset: string | undefined;
    if (is(args[i], 'CHARSET')) {
      const name = text(args[i + 1]);
      if (name === undefined) throw new ParseError('CHARSET needs a charset name');
      charset = name.toUpperCase();
      if (opts.utf8 && charset !== 'UTF-8') throw new ParseError(`CHARSET ${name} conflicts with UTF8=ACCEPT`);
      if (charset !== 'UTF-8' && charset !== 'US-ASCII') return { error: `charset ${name} is not supported`, badCharset: true };
      i += 2;
    }
    const program = parseKeys(new Cursor(args.slice(i), charset === 'US-ASCII'));
    return { program, charset, returnOptions };
  } catch (e) {
    if (e instanceof ParseError) return { error: e.message };
    throw e;
  }
}

function parseReturnOptions(list: ImapValue | undefined): EsearchReturn[] {
  if (!Array.isArray(list)) throw new ParseError('RETURN needs a list of options, such as RETURN (MIN COUNT)');
  // RFC 4731 §3.1: "RETURN ()" is "RETURN (ALL)".
  if (list.length === 0) return ['ALL'];
  const out: EsearchReturn[] = [];
  for (const v of list) {
    const name = isAtom(v) ? v.value.toUpperCase() : '';
    if (name !== 'MIN' && name !== 'MAX' && name !== 'ALL' && name !== 'COUNT' && name !== 'SAVE') {
      throw new ParseError(`unknown RETURN option ${text(v) ?? '(list)'}`);
    }
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

/** All keys left in `c`, ANDed (RFC 9051 §6.4.4: "multiple keys ... the intersection"). */
function parseKeys(c: Cursor): SearchKey {
  if (!c.more) throw new ParseError('a search key is missing');
  const keys: SearchKey[] = [];
  while (c.more) keys.push(parseKey(c));
  return keys.length === 1 ? keys[0]! : { k: 'and', keys };
}

function parseKey(c: Cursor): SearchKey {
  const v = c.next('a search key');
  if (Array.isArray(v)) {
    if (v.length === 0) throw new ParseError('an empty parenthesised group');
    return parseKeys(new Cursor(v, c.asciiOnly));
  }
  if (!isAtom(v) || v.section || v.partial) throw new ParseError(`a search key was expected, not ${describe(v)}`);
  if (v.value === '$') return { k: 'saved' };
  const set = sequenceSet(v);
  if (set) return { k: 'seq', set };
  const name = v.value.toUpperCase();
  const flag = (f: string, present: boolean): SearchKey => ({ k: 'flag', flag: f, present });
  switch (name) {
    case 'ALL':
      return { k: 'all' };
    case 'ANSWERED':
    case 'DELETED':
    case 'DRAFT':
    case 'FLAGGED':
    case 'SEEN':
    case 'RECENT':
      return flag(`\\${name}`, true);
    case 'UNANSWERED':
    case 'UNDELETED':
    case 'UNDRAFT':
    case 'UNFLAGGED':
    case 'UNSEEN':
      return flag(`\\${name.slice(2)}`, false);
    case 'NEW': // RFC 3501 §6.4.4: "equivalent to (RECENT UNSEEN)"
      return { k: 'and', keys: [flag('\\RECENT', true), flag('\\SEEN', false)] };
    case 'OLD': // "equivalent to NOT RECENT"
      return flag('\\RECENT', false);
    case 'KEYWORD':
    case 'UNKEYWORD': {
      const kw = text(c.next(`the keyword after ${name}`));
      if (kw === undefined || !/^[^\s(){%*"\\\]\x00-\x1f\x7f]+$/.test(kw)) throw new ParseError(`${name} needs a keyword atom`);
      return flag(kw.toUpperCase(), name === 'KEYWORD');
    }
    case 'NOT':
      return { k: 'not', key: parseKey(c) };
    case 'OR': {
      const a = parseKey(c);
      return { k: 'or', a, b: parseKey(c) };
    }
    case 'UID': {
      const arg = c.next('the set after UID');
      if (isAtom(arg) && arg.value === '$') return { k: 'saved' };
      const uids = sequenceSet(arg);
      if (!uids) throw new ParseError('UID needs a sequence set such as 1:5,7 or $');
      return { k: 'uid', set: uids };
    }
    case 'LARGER':
      return { k: 'larger', size: c.number(name) };
    case 'SMALLER':
      return { k: 'smaller', size: c.number(name) };
    case 'BEFORE':
    case 'ON':
    case 'SINCE':
      return { k: 'internal', cmp: name.toLowerCase() as DateComparison, day: c.date(name) };
    case 'SENTBEFORE':
    case 'SENTON':
    case 'SENTSINCE':
      return { k: 'sent', cmp: name.slice(4).toLowerCase() as DateComparison, day: c.date(name) };
    case 'MODSEQ': {
      // RFC 7162 §3.4: MODSEQ [entry-name entry-type-req] mod-sequence-valzer. We keep one
      // MODSEQ per message, not per flag, so the entry is read and ignored, as the RFC allows.
      const peek = c.args[c.i];
      if (typeof peek === 'string' || Buffer.isBuffer(peek)) {
        c.next('the entry name');
        const type = c.next('the entry type after MODSEQ');
        if (!is(type, 'priv') && !is(type, 'shared') && !is(type, 'all')) throw new ParseError('MODSEQ entry type must be priv, shared or all');
      }
      return { k: 'modseq', min: c.number(name) };
    }
    case 'FROM':
    case 'TO':
    case 'CC':
    case 'BCC':
    case 'SUBJECT':
      return { k: 'field', field: name.toLowerCase() as 'from', needle: c.string(name) };
    case 'HEADER': {
      const field = c.string(name);
      if (!/^[\x21-\x39\x3b-\x7e]+$/.test(field)) throw new ParseError('HEADER needs a field name');
      return { k: 'header', name: field.toLowerCase(), needle: c.string(`HEADER ${field}`) };
    }
    case 'BODY':
      return { k: 'body', needle: c.string(name) };
    case 'TEXT':
      return { k: 'text', needle: c.string(name) };
    default:
      throw new ParseError(`unknown search key ${v.value.slice(0, 40)}`);
  }
}

function describe(v: ImapValue): string {
  if (v === null) return 'NIL';
  if (typeof v === 'string' || Buffer.isBuffer(v)) return 'a string';
  return isAtom(v) ? v.value.slice(0, 40) : 'a list';
}

/**
 * An IMAP date (RFC 9051 `date`: `1-Feb-2024`, month case-insensitive, optionally quoted by the
 * reader) as days since 1970-01-01, or undefined when it is not one or names no real day.
 */
export function parseImapDate(value: string): number | undefined {
  const m = /^(\d{1,2})-([A-Za-z]{3})-(\d{4})$/.exec(value);
  if (!m) return undefined;
  const month = MONTHS.indexOf(m[2]!.toUpperCase());
  const day = Number(m[1]);
  const year = Number(m[3]);
  if (month < 0 || day < 1) return undefined;
  const t = Date.UTC(year, month, day);
  if (new Date(t).getUTCDate() !== day) return undefined; // 30-Feb-2024
  return t / DAY_MS;
}

/** True when the program has a MODSEQ key: the response then carries the highest MODSEQ (RFC 7162 §3.4). */
export function usesModseq(program: SearchProgram): boolean {
  switch (program.k) {
    case 'modseq':
      return true;
    case 'and':
      return program.keys.some(usesModseq);
    case 'or':
      return usesModseq(program.a) || usesModseq(program.b);
    case 'not':
      return usesModseq(program.key);
    default:
      return false;
  }
}

/** True when the program reads the stored summary (SUBJECT, FROM, TO, CC, BCC, sent dates). */
export function usesSummary(program: SearchProgram): boolean {
  switch (program.k) {
    case 'field':
    case 'sent':
      return true;
    case 'and':
      return program.keys.some(usesSummary);
    case 'or':
      return usesSummary(program.a) || usesSummary(program.b);
    case 'not':
      return usesSummary(program.key);
    default:
      return false;
  }
}

/** What evaluation needs beside the program. */
interface Env {
  maxSeq: number;
  maxUid: number;
  saved: Set<number>;
}

/** What reading a message told: its top-level header fields and which BODY/TEXT needles it holds. */
interface Facts {
  fields: HeaderField[];
  body: Map<string, boolean>;
  text: Map<string, boolean>;
}

/**
 * Evaluates `program` over `messages` (in order) and resolves with those that match. Every
 * message goes first through the keys that need no read (three-valued: a key that needs the
 * message's bytes is "unknown" and AND/OR/NOT combine as Kleene logic); only messages still
 * undecided are read, each once, READ_CONCURRENCY at a time. `saved` is the saved result `$` as
 * UIDs (RFC 5182: it names messages, so it survives expunges of others); `maxSeq` and `maxUid` are
 * what `*` stands for. A read failure rejects (the session answers NO).
 */
export async function runSearch(
  program: SearchProgram,
  messages: SearchMessage[],
  reader: MessageReader,
  ctx: { maxSeq: number; maxUid: number; saved?: number[]; now: Date },
): Promise<SearchMessage[]> {
  const env: Env = { maxSeq: ctx.maxSeq, maxUid: ctx.maxUid, saved: new Set(ctx.saved ?? []) };
  const decided = messages.map((m) => cheap(program, m, env));
  const pending: number[] = [];
  decided.forEach((d, i) => d === undefined && pending.push(i));
  if (pending.length > 0) {
    const needles = { body: [] as string[], text: [] as string[] };
    collectNeedles(program, needles);
    // BODY and TEXT alone (no key that wants the header's fields): a small message read at once
    // is first screened on its raw octets (rawMayHold), and opened through the MIME splitter only
    // when a needle may be in it. Most messages of a search hold none of its needles.
    const needleList = [...needles.body, ...needles.text];
    const screen = needleList.length > 0 && !needsFields(program) && reader.small !== undefined;
    const absent: Facts = { fields: [], body: new Map(needles.body.map((n) => [n, false])), text: new Map(needles.text.map((n) => [n, false])) };
    let next = 0;
    let failed = false; // once a read fails the answer is NO: the other workers stop reading
    let sliceStart = performance.now();
    const worker = async (): Promise<void> => {
      while (next < pending.length && !failed) {
        const i = pending[next++]!;
        const m = messages[i]!;
        try {
          const raw = screen ? reader.small!(m) : undefined;
          if (raw) {
            const may = rawMayHold(raw, needleList);
            if (may && !may.includes(true)) {
              decided[i] = full(program, m, env, absent);
              // Synchronous reads: let other sessions in now and then.
              if (performance.now() - sliceStart > SLICE_MS) {
                await new Promise((resolve) => setImmediate(resolve));
                sliceStart = performance.now();
              }
              continue;
            }
          }
          const source = raw ? Readable.from([Buffer.from(raw)]) : undefined;
          decided[i] = full(program, m, env, await readFacts(m, reader, needles, source));
        } catch (e) {
          failed = true;
          throw e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, pending.length) }, worker));
  }
  return messages.filter((_, i) => decided[i] === true);
}

function collectNeedles(key: SearchKey, out: { body: string[]; text: string[] }): void {
  if (key.k === 'body' && !out.body.includes(key.needle)) out.body.push(key.needle);
  else if (key.k === 'text' && !out.text.includes(key.needle)) out.text.push(key.needle);
  else if (key.k === 'and') key.keys.forEach((k) => collectNeedles(k, out));
  else if (key.k === 'or') {
    collectNeedles(key.a, out);
    collectNeedles(key.b, out);
  } else if (key.k === 'not') collectNeedles(key.key, out);
}

/** True when the program has a key that reads the header's fields once the message is read. */
function needsFields(key: SearchKey): boolean {
  switch (key.k) {
    case 'header':
    case 'field':
    case 'sent':
      return true;
    case 'and':
      return key.keys.some(needsFields);
    case 'or':
      return needsFields(key.a) || needsFields(key.b);
    case 'not':
      return needsFields(key.key);
    default:
      return false;
  }
}

/** `source`: the message's bytes when already in hand (a copy the caller no longer needs). */
async function readFacts(m: SearchMessage, reader: MessageReader, needles: { body: string[]; text: string[] }, source?: Readable): Promise<Facts> {
  if (needles.body.length === 0 && needles.text.length === 0) {
    return { fields: headerFields(await reader.header(m)), body: new Map(), text: new Map() };
  }
  const result = await scanMessage(source ?? (await reader.raw(m)), needles);
  return {
    fields: headerFields(result.header),
    body: new Map(needles.body.map((n, i) => [n, result.body[i]!])),
    text: new Map(needles.text.map((n, i) => [n, result.text[i]!])),
  };
}

/** A key's value from the index and summary alone: undefined when the message must be read. */
function cheap(key: SearchKey, m: SearchMessage, env: Env): boolean | undefined {
  switch (key.k) {
    case 'all':
      return true;
    case 'and': {
      let result: boolean | undefined = true;
      for (const k of key.keys) {
        const v = cheap(k, m, env);
        if (v === false) return false;
        if (v === undefined) result = undefined;
      }
      return result;
    }
    case 'or': {
      const a = cheap(key.a, m, env);
      if (a === true) return true;
      const b = cheap(key.b, m, env);
      if (b === true) return true;
      return a === false && b === false ? false : undefined;
    }
    case 'not': {
      const v = cheap(key.key, m, env);
      return v === undefined ? undefined : !v;
    }
    case 'flag':
      return m.flags.some((f) => f.toUpperCase() === key.flag) === key.present;
    case 'seq':
      return inSequenceSet(key.set, m.seq, env.maxSeq);
    case 'uid':
      return inSequenceSet(key.set, m.uid, env.maxUid);
    case 'saved':
      return env.saved.has(m.uid);
    case 'larger':
      return m.size > key.size;
    case 'smaller':
      return m.size < key.size;
    case 'modseq':
      return m.modseq >= key.min;
    case 'internal':
      // RFC 9051 §6.4.4 "disregarding time and timezone": the date of INTERNALDATE in the
      // server's zone, the zone the server writes INTERNALDATE in.
      return compareDay(localDay(m.internalDate), key.cmp, key.day);
    case 'sent':
      return sentFromSummary(m.summary.date, key.cmp, key.day);
    case 'field':
      return fieldFromSummary(m.summary, key.field, key.needle);
    case 'header':
    case 'body':
    case 'text':
      return undefined;
  }
}

/** A key's value once the message was read. */
function full(key: SearchKey, m: SearchMessage, env: Env, facts: Facts): boolean {
  switch (key.k) {
    case 'and':
      return key.keys.every((k) => full(k, m, env, facts));
    case 'or':
      return full(key.a, m, env, facts) || full(key.b, m, env, facts);
    case 'not':
      return !full(key.key, m, env, facts);
    case 'body':
      return facts.body.get(key.needle) === true;
    case 'text':
      return facts.text.get(key.needle) === true;
    case 'header':
      return headerContains(facts.fields, key.name, key.needle);
    case 'field':
      return fieldFromSummary(m.summary, key.field, key.needle) ?? headerContains(facts.fields, key.field, key.needle);
    case 'sent': {
      const date = facts.fields.find((f) => f.name === 'date');
      const day = date ? sentDay(date.value) : undefined;
      return day !== undefined && compareDay(day, key.cmp, key.day);
    }
    default:
      return cheap(key, m, env) === true;
  }
}

/** HEADER (RFC 9051 §6.4.4): some field of that name holds the string; "" matches any such field. */
function headerContains(fields: HeaderField[], name: string, needle: string): boolean {
  const folded = foldCase(needle);
  return fields.some((f) => f.name === name && foldCase(f.value).includes(folded));
}

function compareDay(day: number, cmp: DateComparison, target: number): boolean {
  return cmp === 'before' ? day < target : cmp === 'on' ? day === target : day >= target;
}

function localDay(d: Date): number {
  return Date.UTC(d.getFullYear(), d.getMonth(), d.getDate()) / DAY_MS;
}

/**
 * A sent-date key from the summary's Date (ISO, in UTC when it parsed): the date as written in
 * the header is within a day of the UTC date (zones are at most 14 hours off in practice), so
 * only messages that close to the boundary need their header read. No Date at all: no match.
 */
function sentFromSummary(date: AttrValue | undefined, cmp: DateComparison, target: number): boolean | undefined {
  if (date === '') return false;
  if (typeof date !== 'string' || !/^\d{4}-\d\d-\d\dT/.test(date)) return undefined;
  const t = Date.parse(date);
  if (!Number.isFinite(t)) return undefined;
  const utc = Math.floor(t / DAY_MS);
  const low = compareDay(utc - 1, cmp, target);
  const high = compareDay(utc + 1, cmp, target);
  return low === high && compareDay(utc, cmp, target) === low ? low : undefined;
}

/**
 * The date a Date header was written for (RFC 5322 §3.3 `day month year`, two-digit years per
 * §4.3), regardless of its time and zone, as days since 1970-01-01; undefined when none is found.
 */
export function sentDay(value: string): number | undefined {
  const m = /(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\.?\s+(\d{2,4})\b/.exec(value);
  if (m) {
    const month = MONTHS.indexOf(m[2]!.toUpperCase());
    let year = Number(m[3]);
    if (m[3]!.length === 2) year += year < 50 ? 2000 : 1900;
    else if (m[3]!.length === 3) year += 1900;
    const day = Number(m[1]);
    if (month >= 0 && day >= 1 && day <= 31) return Date.UTC(year, month, day) / DAY_MS;
  }
  const t = Date.parse(value);
  return Number.isFinite(t) ? Math.floor(t / DAY_MS) : undefined;
}

/**
 * SUBJECT/FROM/TO/CC from the summary: true when it holds the string; false when it does not and
 * holds the whole field; undefined (read the header) otherwise. The summary keeps the first From
 * mailbox only, so a message with several From mailboxes (RFC 5322 §3.6.2, rare) is matched on
 * its first; lists of SUMMARY_ADDRESS_MAX addresses and fields of SUMMARY_FIELD_MAX characters may
 * have been cut, and BCC is not kept at all.
 */
function fieldFromSummary(summary: Record<string, AttrValue>, field: string, needle: string): boolean | undefined {
  const folded = foldCase(needle);
  const value = summary[field];
  if (typeof value === 'string') {
    if (foldCase(value).includes(folded)) return true;
    return value.length < SUMMARY_FIELD_MAX ? false : undefined;
  }
  if (Array.isArray(value) && value.every((a): a is string => typeof a === 'string')) {
    if (value.some((a) => foldCase(a).includes(folded))) return true;
    const whole = value.length < SUMMARY_ADDRESS_MAX && summary.trimmed !== true && value.every((a) => a.length < SUMMARY_FIELD_MAX);
    return whole ? false : undefined;
  }
  return undefined;
}
