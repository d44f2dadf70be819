/**
 * JMAP Email/query and Email/queryChanges (RFC 8620 §5.5, §5.6; RFC 8621 §4.4, §4.5) over the
 * folder store, and the account index they (and SearchSnippet/get) read.
 *
 * The account index. An Email is one raw message (emailId from its blobKey, types.ts) however
 * many folders hold it, so a query is over the account, not a folder. Reading every folder's
 * items for each query would cost a full scan per call, so each process keeps, per user, an
 * index of every Email's sortable and filterable fields (folders and UIDs, keywords, size,
 * receivedAt, the summary's address and subject fields, thread). It is valid at one change-log
 * position (ChangeLog.position: everything at or below it is committed) and is brought forward
 * by reading only the log entries after it (core/mailbox/changes.ts), re-reading just the
 * messages they name. Sorted results are cached per query shape and carried forward with the
 * index (each changed Email is re-placed by binary search), so paging a query of a large folder
 * costs one position read and a slice, and new mail costs O(log n) per message. The position is also the
 * queryState; the index remembers which Emails each change touched, which is what
 * Email/queryChanges answers from (a process that did not see the changes since a state, e.g.
 * another task, answers cannotCalculateChanges as §5.6 allows).
 *
 * Text conditions (text, from, to, cc, bcc, subject, body, header) are IMAP SEARCH's keys run
 * through IMAP's own evaluator (containers/imap/search.ts): the summary decides what it can, and
 * only undecided messages are read, streamed, once. The JMAP-only conditions (mailboxes, dates as
 * instants, thread keywords, attachments) are decided from the index.
 */
import type { Readable } from 'node:stream';
import { emailIdOf, keywordsOf, threadIdOf } from '../../../core/mailbox/email-ids.js';
import type { FolderMessage } from '../../../core/mailbox/folders.js';
import type { AttrValue } from '../../../core/storage/ports.js';
import { READ_CONCURRENCY, runSearch, type MessageReader, type SearchKey, type SearchMessage } from '../../imap/search.js';
import { baseSubject, splitAddress } from '../../imap/sort.js';
import { MAIL_CAPABILITY, MethodError, type JmapContext, type JmapMethods, type JsonObject } from './types.js';

/** The mail capability (RFC 8621 §1.3.1). */

/** Most ids one Email/query returns; a larger or absent limit is clamped and reported (RFC 8620 §5.5). */
export const MAX_QUERY_LIMIT = 1000;
/** Accounts whose index a process keeps (least recently used beyond this are dropped). */
const MAX_ACCOUNTS = 64;
/** Result lists kept per account at one position (query shapes a client pages through). */
const MAX_CACHED_RESULTS = 16;
/** Changes whose touched Emails are remembered for queryChanges. */
const MAX_TOUCH_LOG = 10_000;
/** Emails changed at once up to which cached results are updated in place rather than recomputed. */
const MAX_IN_PLACE = 200;
/** Log entries read per step when bringing an index forward; more than this many behind rebuilds. */
const CATCH_UP_LIMIT = 500;
const MAX_CATCH_UP_STEPS = 4;

/** The sort properties of RFC 8621 §4.4.2 this server supports (the session's emailQuerySortOptions). */
export const SORT_PROPERTIES = ['receivedAt', 'size', 'from', 'to', 'subject', 'sentAt', 'hasKeyword', 'allInThreadHaveKeyword', 'someInThreadHaveKeyword'];

// ------------------------------------------------------------------------------------------
// The account index

/** One folder's copy of an Email. */
interface Copy {
  folder: string;
  uid: number;
  flags: string[];
  receivedAt: number;
  modseq: number;
}

/** What a query reads of one Email. */
export interface IndexedEmail {
  id: string;
  threadId: string;
  blobKey: string;
  size: number;
  /** The earliest copy's INTERNALDATE, epoch ms. */
  receivedAt: number;
  copies: Copy[];
  /** Union of the copies' keywords, lower-case. */
  keywords: Set<string>;
  /** The summary fields IMAP SEARCH reads (subject, from, fromAddress, to, cc, date, trimmed). */
  fields: Record<string, AttrValue>;
  hasAttachment: boolean;
  /** The summary's plain-text preview (core/mail/mime.ts). */
  preview: string;
}

/** Every Email of one account at one change-log position. */
export class AccountIndex {
  position = 0;
  readonly emails = new Map<string, IndexedEmail>();
  /** folder → uid → emailId. */
  readonly folders = new Map<string, Map<number, string>>();
  readonly threads = new Map<string, Set<string>>();
  /** Per applied change: the Emails and threads it touched (queryChanges). */
  readonly touchLog: { modseq: number; ids: string[]; threads: string[] }[] = [];
  /** queryChanges can answer from states at or above this. */
  logFrom = 0;
  /** Sorted result ids per query shape, valid at `position`. */
  readonly results = new Map<string, { shape: QueryShape; ids: string[] }>();

  /** Adds or replaces a folder's copy of a message. */
  upsert(folder: string, m: FolderMessage, touched?: Touched): void {
    const id = emailIdOf(m.blobKey);
    let byUid = this.folders.get(folder);
    if (!byUid) this.folders.set(folder, (byUid = new Map()));
    byUid.set(m.uid, id);
    let e = this.emails.get(id);
    const receivedAt = Date.parse(m.receivedAt);
    const copy: Copy = { folder, uid: m.uid, flags: m.flags, receivedAt: Number.isFinite(receivedAt) ? receivedAt : 0, modseq: m.modseq };
    if (!e) {
      const s = m.summary;
      const attachments = s.attachments;
      e = {
        id,
        threadId: threadIdOf(id, m.threadId),
        blobKey: m.blobKey,
        size: m.size,
        receivedAt: copy.receivedAt,
        copies: [],
        keywords: new Set(),
        fields: {
          subject: s.subject ?? '',
          from: s.from ?? '',
          fromAddress: s.fromAddress ?? '',
          to: s.to ?? [],
          cc: s.cc ?? [],
          date: s.date ?? '',
          ...(s.trimmed ? { trimmed: true } : {}),
        },
        hasAttachment: Array.isArray(attachments) && attachments.length > 0,
        preview: typeof s.preview === 'string' ? s.preview : '',
      };
      this.emails.set(id, e);
      let thread = this.threads.get(e.threadId);
      if (!thread) this.threads.set(e.threadId, (thread = new Set()));
      thread.add(id);
    }
    e.copies = e.copies.filter((c) => !(c.folder === folder && c.uid === m.uid));
    e.copies.push(copy);
    this.settle(e);
    touched?.add(e);
  }

  /** Removes a folder's copy by uid (an Email with no copy left is gone). */
  remove(folder: string, uid: number, touched?: Touched): void {
    const byUid = this.folders.get(folder);
    const id = byUid?.get(uid);
    if (!id) return;
    byUid!.delete(uid);
    const e = this.emails.get(id);
    if (!e) return;
    touched?.add(e);
    e.copies = e.copies.filter((c) => !(c.folder === folder && c.uid === uid));
    if (e.copies.length > 0) return this.settle(e);
    this.emails.delete(id);
    const thread = this.threads.get(e.threadId);
    thread?.delete(id);
    if (thread?.size === 0) this.threads.delete(e.threadId);
  }

  /** Drops a deleted folder's copies. */
  dropFolder(folder: string, touched: Touched): void {
    for (const uid of [...(this.folders.get(folder)?.keys() ?? [])]) this.remove(folder, uid, touched);
    this.folders.delete(folder);
  }

  private settle(e: IndexedEmail): void {
    e.receivedAt = Math.min(...e.copies.map((c) => c.receivedAt));
    e.keywords = new Set(e.copies.flatMap((c) => keywordsOf(c.flags)));
  }
}

/** The Emails and threads one change touched. */
class Touched {
  readonly ids = new Set<string>();
  readonly threads = new Set<string>();
  add(e: IndexedEmail): void {
    this.ids.add(e.id);
    this.threads.add(e.threadId);
  }
}

/** Per-user indexes of this process, most recently used last. */
const indexes = new Map<string, Promise<AccountIndex>>();

/** Forgets every cached index (tests that reopen storage under the same user names). */
export function clearQueryIndexes(): void {
  indexes.clear();
}

/**
 * The account's index brought up to the change log's current position. Calls for one user are
 * chained, so one catch-up serves concurrent queries.
 */
export async function accountIndex(ctx: JmapContext): Promise<AccountIndex> {
  const previous = indexes.get(ctx.user);
  const next = (async () => {
    const index = previous ? await previous.catch(() => undefined) : undefined;
    const position = await ctx.folders.changes.position(ctx.user);
    // An index may be ahead of the position just read: since() can see changes committed after it.
    if (index && index.position >= position) return index;
    if (index && index.position < position && (await catchUp(ctx, index, position))) return index;
    return build(ctx, position);
  })();
  indexes.delete(ctx.user);
  indexes.set(ctx.user, next);
  if (indexes.size > MAX_ACCOUNTS) indexes.delete(indexes.keys().next().value!);
  next.catch(() => indexes.get(ctx.user) === next && indexes.delete(ctx.user));
  return next;
}

/** A fresh index: the position first, then every folder's messages (later changes re-apply harmlessly). */
async function build(ctx: JmapContext, position: number): Promise<AccountIndex> {
  const index = new AccountIndex();
  index.position = position;
  index.logFrom = position;
  for (const folder of await ctx.folders.list(ctx.user)) {
    index.folders.set(folder.id, new Map());
    for await (const m of ctx.folders.entries(ctx.user, folder.id)) index.upsert(folder.id, m);
  }
  return index;
}

/** Applies the log after the index's position; false when the log cannot say (rebuild instead). */
async function catchUp(ctx: JmapContext, index: AccountIndex, target: number): Promise<boolean> {
  const changed = new Set<string>();
  const start = index.position;
  for (let step = 0; step < MAX_CATCH_UP_STEPS && index.position < target; step++) {
    const page = await ctx.folders.changes.since(ctx.user, index.position, CATCH_UP_LIMIT);
    if (page.tooOld) return false;
    for (const change of page.changes) {
      const touched = new Touched();
      for (const entry of change.entries) {
        if (entry.kind === 'append' || entry.kind === 'flags') {
          const messages = await Promise.all((entry.uids ?? []).map((uid) => ctx.folders.get(ctx.user, entry.folder, uid)));
          (entry.uids ?? []).forEach((uid, i) => {
            const m = messages[i];
            if (m) index.upsert(entry.folder, m, touched);
            else index.remove(entry.folder, uid, touched); // expunged since; its own entry follows
          });
        } else if (entry.kind === 'expunge') {
          for (const uid of entry.uids ?? []) index.remove(entry.folder, uid, touched);
        } else if (entry.kind === 'folder-delete') {
          index.dropFolder(entry.folder, touched);
        }
        // folder-create, -rename, -update: mailbox ids are stable, no Email changes.
      }
      index.touchLog.push({ modseq: change.modseq, ids: [...touched.ids], threads: [...touched.threads] });
      touched.ids.forEach((id) => changed.add(id));
    }
    if (index.touchLog.length > MAX_TOUCH_LOG) {
      const cut = index.touchLog.splice(0, index.touchLog.length - MAX_TOUCH_LOG);
      index.logFrom = cut[cut.length - 1]!.modseq;
    }
    if (page.modseq <= index.position) break; // a young gap: stop here, the next call goes on
    index.position = page.modseq;
    if (!page.more) break;
  }
  if (index.position !== start) refreshResults(index, changed);
  return index.position >= target;
}

// ------------------------------------------------------------------------------------------
// Filters (RFC 8621 §4.4.1)

/** A compiled filter: operators over conditions; a condition is the AND of its properties. */
type Filter =
  | { op: 'AND' | 'OR' | 'NOT'; filters: Filter[] }
  | { k: 'inMailbox'; id: string }
  | { k: 'inMailboxOtherThan'; ids: Set<string> }
  | { k: 'before' | 'after'; t: number }
  | { k: 'minSize' | 'maxSize'; n: number }
  | { k: 'thread'; mode: 'all' | 'some' | 'none'; kw: string }
  | { k: 'keyword'; kw: string; present: boolean }
  | { k: 'hasAttachment'; v: boolean }
  /** A key IMAP SEARCH evaluates (text, addresses, subject, body, header). */
  | { k: 'imap'; key: SearchKey };

const UTC_DATE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
/** RFC 8621 §4.1.1: a keyword is 1-255 of %x21-%x7E except ( ) { ] % * " \. */
const KEYWORD = /^[\x21-\x7e]{1,255}$/;
const KEYWORD_EXCLUDED = /[(){\]%*"\\]/;

const invalid = (what: string) => new MethodError('invalidArguments', what);

function stringArg(v: unknown, name: string): string {
  if (typeof v !== 'string') throw invalid(`${name} must be a string`);
  return v;
}

function keywordArg(v: unknown, name: string): string {
  const s = stringArg(v, name);
  if (!KEYWORD.test(s) || KEYWORD_EXCLUDED.test(s)) throw invalid(`${name} is not a keyword`);
  return s.toLowerCase();
}

function uintArg(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalid(`${name} must be an unsigned integer`);
  return v;
}

function dateArg(v: unknown, name: string): number {
  const s = stringArg(v, name);
  const t = Date.parse(s);
  if (!UTC_DATE.test(s) || !Number.isFinite(t)) throw invalid(`${name} must be a UTCDate such as 2026-12-07T10:00:00Z`);
  return t;
}

/** Compiles a FilterOperator or FilterCondition; undefined or null is no filter. */
export function compileFilter(raw: unknown, depth = 0): Filter | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid('filter must be an object');
  if (depth > 50) throw new MethodError('unsupportedFilter', 'filter nested too deep');
  const o = raw as JsonObject;
  if ('operator' in o) {
    const op = o.operator;
    if (op !== 'AND' && op !== 'OR' && op !== 'NOT') throw new MethodError('unsupportedFilter', `unknown operator ${String(op)}`);
    if (!Array.isArray(o.conditions)) throw invalid('a FilterOperator needs conditions');
    const extra = Object.keys(o).filter((k) => k !== 'operator' && k !== 'conditions');
    if (extra.length) throw new MethodError('unsupportedFilter', `unknown FilterOperator property ${extra[0]}`);
    return { op, filters: o.conditions.map((c) => compileFilter(c, depth + 1) ?? { op: 'AND', filters: [] }) };
  }
  const parts: Filter[] = [];
  for (const [name, v] of Object.entries(o)) parts.push(condition(name, v));
  return parts.length === 1 ? parts[0] : { op: 'AND', filters: parts };
}

function condition(name: string, v: unknown): Filter {
  const imap = (key: SearchKey): Filter => ({ k: 'imap', key });
  switch (name) {
    case 'inMailbox':
      return { k: 'inMailbox', id: stringArg(v, name) };
    case 'inMailboxOtherThan':
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw invalid('inMailboxOtherThan must be a list of ids');
      return { k: 'inMailboxOtherThan', ids: new Set(v) };
    case 'before':
    case 'after':
      return { k: name, t: dateArg(v, name) };
    case 'minSize':
    case 'maxSize':
      return { k: name, n: uintArg(v, name) };
    case 'allInThreadHaveKeyword':
      return { k: 'thread', mode: 'all', kw: keywordArg(v, name) };
    case 'someInThreadHaveKeyword':
      return { k: 'thread', mode: 'some', kw: keywordArg(v, name) };
    case 'noneInThreadHaveKeyword':
      return { k: 'thread', mode: 'none', kw: keywordArg(v, name) };
    case 'hasKeyword':
    case 'notKeyword':
      return { k: 'keyword', kw: keywordArg(v, name), present: name === 'hasKeyword' };
    case 'hasAttachment':
      if (typeof v !== 'boolean') throw invalid('hasAttachment must be true or false');
      return { k: 'hasAttachment', v };
    case 'text': {
      // RFC 8621 §4.4.1: From, To, Cc, Bcc, Subject and the text body parts. IMAP TEXT would also
      // match other fields and field names ("received" would match every message), so the fields
      // are named; one read serves BCC and BODY together (search.ts).
      const needle = stringArg(v, name);
      const fields = (['from', 'to', 'cc', 'bcc', 'subject'] as const).map((field): SearchKey => ({ k: 'field', field, needle }));
      const keys: SearchKey[] = [...fields, { k: 'body', needle }];
      return imap(keys.reduce((a, b): SearchKey => ({ k: 'or', a, b })));
    }
    case 'from':
    case 'to':
    case 'cc':
    case 'bcc':
    case 'subject':
      return imap({ k: 'field', field: name, needle: stringArg(v, name) });
    case 'body':
      return imap({ k: 'body', needle: stringArg(v, name) });
    case 'header': {
      // [name] (the field exists) or [name, value] (a field of that name contains value).
      if (!Array.isArray(v) || v.length < 1 || v.length > 2 || !v.every((x) => typeof x === 'string')) {
        throw invalid('header must be [name] or [name, value]');
      }
      const field = v[0] as string;
      if (!/^[\x21-\x39\x3b-\x7e]+$/.test(field)) throw invalid('header names a field name');
      return imap({ k: 'header', name: field.toLowerCase(), needle: (v[1] as string | undefined) ?? '' });
    }
    default:
      throw new MethodError('unsupportedFilter', `unknown filter condition ${name}`);
  }
}

function hasImapKey(f: Filter | undefined): boolean {
  if (!f) return false;
  return 'op' in f ? f.filters.some(hasImapKey) : f.k === 'imap';
}

function usesThreads(f: Filter | undefined): boolean {
  if (!f) return false;
  return 'op' in f ? f.filters.some(usesThreads) : f.k === 'thread';
}

function threadHas(index: AccountIndex, e: IndexedEmail, kw: string, mode: 'all' | 'some' | 'none'): boolean {
  const members = [...(index.threads.get(e.threadId) ?? [e.id])].map((id) => index.emails.get(id)).filter((x) => x !== undefined);
  if (mode === 'all') return members.every((m) => m.keywords.has(kw));
  const some = members.some((m) => m.keywords.has(kw));
  return mode === 'some' ? some : !some;
}

/** A JMAP-only condition's value for one Email. */
function leaf(f: Exclude<Filter, { op: string } | { k: 'imap' }>, e: IndexedEmail, index: AccountIndex): boolean {
  switch (f.k) {
    case 'inMailbox':
      return e.copies.some((c) => c.folder === f.id);
    case 'inMailboxOtherThan':
      return e.copies.some((c) => !f.ids.has(c.folder));
    case 'before':
      return e.receivedAt < f.t;
    case 'after':
      return e.receivedAt >= f.t;
    case 'minSize':
      return e.size >= f.n;
    case 'maxSize':
      return e.size < f.n;
    case 'thread':
      return threadHas(index, e, f.kw, f.mode);
    case 'keyword':
      return e.keywords.has(f.kw) === f.present;
    case 'hasAttachment':
      return e.hasAttachment === f.v;
  }
}

/** The filter's value for an Email when it has no IMAP keys. */
function matchSync(f: Filter, e: IndexedEmail, index: AccountIndex): boolean {
  if ('op' in f) {
    if (f.op === 'AND') return f.filters.every((x) => matchSync(x, e, index));
    const any = f.filters.some((x) => matchSync(x, e, index));
    return f.op === 'OR' ? any : !any;
  }
  if (f.k === 'imap') throw new Error('an IMAP key needs matchAsync');
  return leaf(f, e, index);
}

const ALL: SearchKey = { k: 'all' };
const NONE: SearchKey = { k: 'not', key: ALL };

/** The filter for one Email as an IMAP search program: JMAP-only conditions already decided. */
function specialise(f: Filter, e: IndexedEmail, index: AccountIndex): SearchKey {
  if ('op' in f) {
    const keys = f.filters.map((x) => specialise(x, e, index));
    if (f.op === 'AND') return keys.length === 0 ? ALL : { k: 'and', keys };
    const any = keys.length === 0 ? NONE : keys.reduce((a, b) => ({ k: 'or', a, b }));
    return f.op === 'OR' ? any : { k: 'not', key: any };
  }
  if (f.k === 'imap') return f.key;
  return leaf(f, e, index) ? ALL : NONE;
}

/** A reader of the Email's bytes for IMAP SEARCH: header (first 256 KiB) and the whole message. */
function reader(ctx: JmapContext, e: IndexedEmail): MessageReader {
  return {
    header: async () => {
      const got = await ctx.storage.mail.get(e.blobKey, { range: { start: 0, end: 256 * 1024 - 1 } });
      return headerBlock(got.body);
    },
    raw: async () => (await ctx.storage.mail.get(e.blobKey)).body,
  };
}

/** The header block of a message: bytes up to and including the first empty line. */
async function headerBlock(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    const all = Buffer.concat(chunks, size);
    const crlf = all.indexOf('\r\n\r\n');
    const lf = all.indexOf('\n\n');
    const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf + 4 : lf >= 0 ? lf + 2 : -1;
    if (end >= 0) {
      body.destroy();
      return all.subarray(0, end);
    }
  }
  return Buffer.concat(chunks, size);
}

/** The Emails of `candidates` that match, in their order; text keys read messages READ_CONCURRENCY at a time. */
async function filterEmails(ctx: JmapContext, index: AccountIndex, filter: Filter | undefined, candidates: IndexedEmail[]): Promise<IndexedEmail[]> {
  if (!filter) return candidates;
  if (!hasImapKey(filter)) return candidates.filter((e) => matchSync(filter, e, index));
  const keep = new Array<boolean>(candidates.length).fill(false);
  let next = 0;
  let failed = false;
  const now = new Date();
  const worker = async (): Promise<void> => {
    while (next < candidates.length && !failed) {
      const i = next++;
      const e = candidates[i]!;
      const m: SearchMessage = {
        seq: 1,
        uid: 1,
        flags: e.copies[0]?.flags ?? [],
        internalDate: new Date(e.receivedAt),
        size: e.size,
        modseq: 0,
        summary: e.fields,
      };
      try {
        keep[i] = (await runSearch(specialise(filter, e, index), [m], reader(ctx, e), { maxSeq: 1, maxUid: 1, now })).length === 1;
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, candidates.length) }, worker));
  return candidates.filter((_, i) => keep[i]);
}

/** Emails a filter can match at all: one folder's when a top-level condition names it. */
function candidatesOf(index: AccountIndex, filter: Filter | undefined): IndexedEmail[] {
  const folder =
    filter && !('op' in filter) && filter.k === 'inMailbox' ? filter.id : filter && 'op' in filter && filter.op === 'AND' ? topMailbox(filter) : undefined;
  if (folder === undefined) return [...index.emails.values()];
  const ids = new Set(index.folders.get(folder)?.values() ?? []);
  return [...ids].map((id) => index.emails.get(id)!).filter((e) => e !== undefined);
}

function topMailbox(f: Extract<Filter, { op: string }>): string | undefined {
  for (const x of f.filters) if (!('op' in x) && x.k === 'inMailbox') return x.id;
  return undefined;
}

// ------------------------------------------------------------------------------------------
// Sorting (RFC 8621 §4.4.2)

interface Comparator {
  property: string;
  keyword?: string;
  ascending: boolean;
  collation: 'i;ascii-casemap' | 'i;unicode-casemap' | 'i;octet';
}

const COLLATIONS = ['i;ascii-casemap', 'i;unicode-casemap', 'i;octet'];

/** Compiles the sort argument; unsupportedSort for a property or collation this server lacks. */
export function compileSort(raw: unknown): Comparator[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw invalid('sort must be a list of Comparators');
  return raw.map((c: unknown) => {
    if (typeof c !== 'object' || c === null || Array.isArray(c)) throw invalid('a Comparator must be an object');
    const o = c as JsonObject;
    const property = stringArg(o.property, 'property');
    if (!SORT_PROPERTIES.includes(property)) throw new MethodError('unsupportedSort', `cannot sort by ${property}`);
    const collation = o.collation === undefined ? 'i;ascii-casemap' : stringArg(o.collation, 'collation');
    if (!COLLATIONS.includes(collation)) throw new MethodError('unsupportedSort', `collation ${collation} is not supported`);
    if (o.isAscending !== undefined && typeof o.isAscending !== 'boolean') throw invalid('isAscending must be true or false');
    const needsKeyword = property.endsWith('Keyword');
    return {
      property,
      ...(needsKeyword ? { keyword: keywordArg(o.keyword, 'keyword') } : {}),
      ascending: o.isAscending !== false,
      collation: collation as Comparator['collation'],
    };
  });
}

/** Collation keys (RFC 4790 §9.2 i;ascii-casemap, RFC 5051 i;unicode-casemap), compared as strings of code units. */
function collate(value: string, collation: Comparator['collation']): string {
  if (collation === 'i;octet') return value;
  if (collation === 'i;ascii-casemap') return value.replace(/[a-z]+/g, (s) => s.toUpperCase());
  // RFC 5051 maps to titlecase and decomposes (NFKD); upper case stands in for titlecase, which
  // differs only for a few digraphs (ǅ).
  return value.normalize('NFKD').toUpperCase();
}

/** The first address of a summary field: its name, or its email when it has no name (§4.4.2 from/to). */
function firstAddressKey(v: AttrValue | undefined): string {
  const first = Array.isArray(v) ? v[0] : v;
  if (typeof first !== 'string' || !first) return '';
  const a = splitAddress(first);
  return a.name || a.address;
}

function sortValue(c: Comparator, e: IndexedEmail, index: AccountIndex): number | string {
  switch (c.property) {
    case 'receivedAt':
      return e.receivedAt;
    case 'size':
      return e.size;
    case 'sentAt': {
      const t = typeof e.fields.date === 'string' && e.fields.date ? Date.parse(e.fields.date) : NaN;
      return Number.isFinite(t) ? t : e.receivedAt;
    }
    case 'from':
      return collate(firstAddressKey(e.fields.from), c.collation);
    case 'to':
      return collate(firstAddressKey(e.fields.to), c.collation);
    case 'subject':
      return collate(baseSubject(typeof e.fields.subject === 'string' ? e.fields.subject : ''), c.collation);
    case 'hasKeyword':
      return e.keywords.has(c.keyword!) ? 1 : 0;
    case 'allInThreadHaveKeyword':
      return threadHas(index, e, c.keyword!, 'all') ? 1 : 0;
    default: // someInThreadHaveKeyword
      return threadHas(index, e, c.keyword!, 'some') ? 1 : 0;
  }
}

/** The order of Emails the comparators leave tied (RFC 8620 §5.5 leaves it to the server): newest first, then by id. */
function tieBreak(a: IndexedEmail, b: IndexedEmail): number {
  return b.receivedAt - a.receivedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** Two Emails in sort order (one insertion; sortEmails precomputes the values for a whole sort). */
function compareEmails(a: IndexedEmail, b: IndexedEmail, sort: Comparator[], index: AccountIndex): number {
  for (const c of sort) {
    const x = sortValue(c, a, index);
    const y = sortValue(c, b, index);
    const cmp = x < y ? -1 : x > y ? 1 : 0;
    if (cmp !== 0) return c.ascending ? cmp : -cmp;
  }
  return tieBreak(a, b);
}

/** Sorts Emails by the comparators, then by tieBreak. */
function sortEmails(emails: IndexedEmail[], sort: Comparator[], index: AccountIndex): IndexedEmail[] {
  const columns = sort.map((c) => ({ asc: c.ascending, values: emails.map((e) => sortValue(c, e, index)) }));
  const order = emails.map((_, i) => i);
  order.sort((a, b) => {
    for (const col of columns) {
      const x = col.values[a]!;
      const y = col.values[b]!;
      const cmp = x < y ? -1 : x > y ? 1 : 0;
      if (cmp !== 0) return col.asc ? cmp : -cmp;
    }
    return tieBreak(emails[a]!, emails[b]!);
  });
  return order.map((i) => emails[i]!);
}

// ------------------------------------------------------------------------------------------
// Query

interface QueryShape {
  filter: Filter | undefined;
  sort: Comparator[];
  collapseThreads: boolean;
  key: string;
}

function shapeOf(args: JsonObject): QueryShape {
  const filter = compileFilter(args.filter);
  const sort = compileSort(args.sort);
  if (args.collapseThreads !== undefined && args.collapseThreads !== null && typeof args.collapseThreads !== 'boolean')
    throw invalid('collapseThreads must be true or false');
  const collapseThreads = args.collapseThreads === true;
  return { filter, sort, collapseThreads, key: JSON.stringify([args.filter ?? null, args.sort ?? null, collapseThreads]) };
}

/** The query's full sorted result ids at the index's position (cached per shape). */
async function resultIds(ctx: JmapContext, index: AccountIndex, shape: QueryShape): Promise<string[]> {
  const position = index.position;
  const cached = index.results.get(shape.key);
  if (cached) return cached.ids;
  const matched = await filterEmails(ctx, index, shape.filter, candidatesOf(index, shape.filter));
  let sorted = sortEmails(matched, shape.sort, index);
  if (shape.collapseThreads) {
    const seen = new Set<string>();
    sorted = sorted.filter((e) => !seen.has(e.threadId) && seen.add(e.threadId) !== undefined);
  }
  const ids = sorted.map((e) => e.id);
  if (index.position === position) {
    index.results.set(shape.key, { shape, ids });
    if (index.results.size > MAX_CACHED_RESULTS) index.results.delete(index.results.keys().next().value!);
  }
  return ids;
}

/** Whether an Email's membership and place in the results depend on it alone (not on its thread
 * or its bytes), so that a change can be applied to cached results by re-placing the Emails it touched. */
function inPlace(shape: QueryShape): boolean {
  return (
    !shape.collapseThreads && !hasImapKey(shape.filter) && !usesThreads(shape.filter) && !shape.sort.some((c) => c.property.endsWith('InThreadHaveKeyword'))
  );
}

/**
 * Brings cached results to the index's new position: each changed Email is taken out and, if it
 * still matches, put back at its sorted place (binary search), so new mail costs O(log n) per
 * message instead of a new sort of the folder. Shapes that read threads or bytes, or a large
 * change, are dropped and recomputed on their next query.
 */
function refreshResults(index: AccountIndex, changed: Set<string>): void {
  for (const [key, cached] of index.results) {
    if (changed.size > MAX_IN_PLACE || !inPlace(cached.shape)) {
      index.results.delete(key);
      continue;
    }
    const { filter, sort } = cached.shape;
    const ids = changed.size === 0 ? cached.ids : cached.ids.filter((id) => !changed.has(id));
    for (const id of changed) {
      const e = index.emails.get(id);
      if (!e || (filter && !matchSync(filter, e, index))) continue;
      let lo = 0;
      let hi = ids.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (compareEmails(index.emails.get(ids[mid]!)!, e, sort, index) < 0) lo = mid + 1;
        else hi = mid;
      }
      ids.splice(lo, 0, id);
    }
    cached.ids = ids;
  }
}

function intArg(v: unknown, name: string, fallback: number): number {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw invalid(`${name} must be an integer`);
  return v;
}

/** Email/query (RFC 8620 §5.5, RFC 8621 §4.4). */
async function emailQuery(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const shape = shapeOf(args);
  let position = intArg(args.position, 'position', 0);
  const anchorOffset = intArg(args.anchorOffset, 'anchorOffset', 0);
  const anchor = args.anchor === undefined || args.anchor === null ? undefined : stringArg(args.anchor, 'anchor');
  // A limit above the maximum, or none, is clamped; the clamped value is reported (§5.5) when it
  // was given, and when it cut the results short.
  const asked = args.limit === undefined || args.limit === null ? undefined : uintArg(args.limit, 'limit');
  const limit = Math.min(asked ?? MAX_QUERY_LIMIT, MAX_QUERY_LIMIT);
  if (args.calculateTotal !== undefined && typeof args.calculateTotal !== 'boolean') throw invalid('calculateTotal must be true or false');

  const index = await accountIndex(ctx);
  const ids = await resultIds(ctx, index, shape);
  if (anchor !== undefined) {
    const at = ids.indexOf(anchor);
    if (at < 0) throw new MethodError('anchorNotFound', 'the anchor is not in the results');
    position = Math.max(0, at + anchorOffset);
  } else if (position < 0) {
    position = Math.max(0, ids.length + position);
  }
  const page = ids.slice(position, position + limit);
  return {
    accountId: ctx.accountId,
    queryState: String(index.position),
    canCalculateChanges: true,
    position,
    ids: page,
    ...(args.calculateTotal === true ? { total: ids.length } : {}),
    ...((asked !== undefined && asked > limit) || (asked === undefined && ids.length - position > limit) ? { limit } : {}),
  };
}

/**
 * Email/queryChanges (RFC 8620 §5.6). Every Email a change touched since the old state is
 * reported removed (the RFC allows ids that were not in the old results), with its whole thread
 * where the query reads threads (collapseThreads, thread keywords) since a sibling's change can
 * move it; those still in the results are added back with their new index. upToId is an
 * optimisation the server may ignore (§5.6), and does.
 */
async function emailQueryChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const shape = shapeOf(args);
  const since = stringArg(args.sinceQueryState, 'sinceQueryState');
  const maxChanges = args.maxChanges === undefined || args.maxChanges === null ? undefined : uintArg(args.maxChanges, 'maxChanges');
  if (maxChanges === 0) throw invalid('maxChanges must be positive');
  if (args.upToId !== undefined && args.upToId !== null) stringArg(args.upToId, 'upToId');
  const index = await accountIndex(ctx);
  const old = /^\d{1,15}$/.test(since) ? Number(since) : NaN;
  if (!Number.isFinite(old) || old < index.logFrom || old > index.position) {
    throw new MethodError('cannotCalculateChanges', 'the query state is too old or unknown to this server');
  }
  const touched = new Set<string>();
  const threads = new Set<string>();
  for (const t of index.touchLog) {
    if (t.modseq <= old) continue;
    t.ids.forEach((id) => touched.add(id));
    t.threads.forEach((id) => threads.add(id));
  }
  if (shape.collapseThreads || usesThreads(shape.filter) || shape.sort.some((c) => c.property.endsWith('InThreadHaveKeyword'))) {
    for (const t of threads) for (const id of index.threads.get(t) ?? []) touched.add(id);
  }
  const ids = await resultIds(ctx, index, shape);
  const added: { id: string; index: number }[] = [];
  if (touched.size > 0) ids.forEach((id, i) => touched.has(id) && added.push({ id, index: i }));
  if (maxChanges !== undefined && touched.size + added.length > maxChanges) throw new MethodError('tooManyChanges', `more than ${maxChanges} changes`);
  return {
    accountId: ctx.accountId,
    oldQueryState: since,
    newQueryState: String(index.position),
    ...(args.calculateTotal === true ? { total: ids.length } : {}),
    removed: [...touched],
    added,
  };
}

/** The methods of this module (the engine merges the mail capability's objects of several modules). */
export const emailQueryMethods: JmapMethods = {
  capability: MAIL_CAPABILITY,
  accountCapability: { emailQuerySortOptions: SORT_PROPERTIES },
  methods: {
    'Email/query': emailQuery,
    'Email/queryChanges': emailQueryChanges,
  },
};

/** For SearchSnippet/get: the compiled filter's positive text terms. */
export function filterTerms(raw: unknown): { subject: string[]; body: string[] } {
  const out = { subject: [] as string[], body: [] as string[] };
  const walk = (f: Filter | undefined, negated: boolean): void => {
    if (!f) return;
    if ('op' in f) return f.filters.forEach((x) => walk(x, negated !== (f.op === 'NOT')));
    if (negated || f.k !== 'imap') return;
    const key = f.key;
    if (key.k === 'or') {
      // `text`: the same needle in the subject and the body (and the address fields).
      const needles = new Set<string>();
      const collect = (k: SearchKey): void => {
        if (k.k === 'or') [k.a, k.b].forEach(collect);
        else if (k.k === 'field' || k.k === 'body') needles.add(k.needle);
      };
      collect(key);
      for (const n of needles) {
        out.subject.push(n);
        out.body.push(n);
      }
    } else if (key.k === 'field' && key.field === 'subject') out.subject.push(key.needle);
    else if (key.k === 'body') out.body.push(key.needle);
  };
  walk(compileFilter(raw), false);
  return out;
}
