/**
 * RFC 8621 §4: Email/get, /changes, /set, /import, /parse and /copy over the folder store, and
 * the resolvers of `G` blobIds (the raw message, and one decoded part) and of `U<upload>P<n>`
 * (one decoded part of an uploaded message, as Email/parse names them) for download.
 *
 * An Email is one raw message (one blob key) in one or more folders of the user: its id is
 * `M` + 24 hex digits of sha256(blob key) (types.ts), its mailboxIds the folders holding a copy,
 * its keywords the IMAP flags of those copies (their union; a write sets every copy), mapped as
 * RFC 8621 §4.1.1 says: \Seen ↔ $seen, \Flagged ↔ $flagged, \Answered ↔ $answered, \Draft ↔
 * $draft, other keywords lower-cased; \Deleted is IMAP's own and not shown.
 *
 * Reading costs by property: metadata (id, blobId, threadId, mailboxIds, keywords, size,
 * receivedAt) and preview/hasAttachment come from the folder entries and the stored summary; header
 * properties read only the header section of the blob (one ranged read, its end known from the
 * stored IMAP structure); body properties read the blob once, streamed (email-body.ts).
 */
import { randomUUID } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { encodeWord } from 'nodemailer/lib/mime-funcs/index.js';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import MimeNode, { type MimeNodeAddress, type MimeNodeHeaderValue } from 'nodemailer/lib/mime-node/index.js';
import { summarizeForMailbox } from '../../../core/mail/imap-structure.js';
import type { ChangeEntry } from '../../../core/mailbox/changes.js';
import type { FolderMessage } from '../../../core/mailbox/folders.js';
import { emailIdOf, flagOf, keywordsOf, threadIdOf } from '../../../core/mailbox/email-ids.js';
import { FolderError, QuotaExceeded } from '../../../core/mailbox/keys.js';
import type { AttrValue } from '../../../core/storage/ports.js';
import {
  headerSectionFields,
  BODY_PART_PROPERTIES,
  bodyValue,
  bodyViews,
  DEFAULT_BODY_PROPERTIES,
  headerProperty,
  leavesOf,
  openPart,
  parseEmailBody,
  parseHeaderProperty,
  partJson,
  type BodyPart,
  type HeaderField,
  type ParsedBody,
} from './email-body.js';
import { checkIfInState, currentState, foldChanges, idList, parseState, resolveId, unsignedArg, type ChangeSets } from './mailbox.js';
import type { BlobOwner } from './blobs.js';
import { changesResponse, setResponse } from './engine.js';
import { MAIL_CAPABILITY, MethodError, type JmapBlob, type JmapContext, type JmapMethods, type JsonObject, type SetError } from './types.js';

// ---------------------------------------------------------------------------------------------
// Ids and locations

/** One copy of an Email: a message in a folder. */
export interface EmailLocation {
  folderId: string;
  message: FolderMessage;
}

/** An Email as the folder store holds it: its copies, first one first. */
export interface EmailRecord {
  id: string;
  blobKey: string;
  locations: EmailLocation[];
}

/**
 * The Emails with these ids (all of the user's when `ids` is null), with the message item of each
 * copy. Ids are looked up in the email index (core/mailbox/email-index.ts), and each location is
 * checked against the folder's item, so an index entry a racing expunge left behind for a moment
 * is not taken for an Email. Null scans every folder (only Email/get of all, bounded by its caller).
 */
export async function locateEmails(ctx: Pick<JmapContext, 'user' | 'folders'>, ids: string[] | null): Promise<Map<string, EmailRecord>> {
  const out = new Map<string, EmailRecord>();
  const add = (id: string, folderId: string, message: FolderMessage) => {
    let rec = out.get(id);
    if (!rec) out.set(id, (rec = { id, blobKey: message.blobKey, locations: [] }));
    rec.locations.push({ folderId, message });
  };
  if (ids === null) {
    for (const folder of await ctx.folders.list(ctx.user))
      for await (const message of ctx.folders.entries(ctx.user, folder.id)) add(emailIdOf(message.blobKey), folder.id, message);
    return out;
  }
  if (ids.length === 0) return out;
  await ctx.folders.ensureIndexed(ctx.user);
  const found = await ctx.folders.index.locations(ctx.user, ids);
  const wanted = [...found.values()].flat();
  const messages = await Promise.all(wanted.map((l) => ctx.folders.get(ctx.user, l.folderId, l.uid)));
  wanted.forEach((l, i) => {
    const m = messages[i];
    if (m && emailIdOf(m.blobKey) === l.emailId) add(l.emailId, l.folderId, m);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Keywords (RFC 8621 §4.1.1)

/** An Email's keywords as JMAP sends them (`{"$seen": true}`). */
export function keywordMap(flags: string[]): Record<string, true> {
  return Object.fromEntries(keywordsOf(flags).map((k) => [k, true]));
}

/** RFC 8621 §4.1.1: keywords are 1-255 characters of %x21-7E without ( ) { ] % * " \. */
const KEYWORD = /^[\x21-\x7e]{1,255}$/;
const isKeyword = (k: string) => KEYWORD.test(k) && !/[(){\]%*"\\]/.test(k);

// ---------------------------------------------------------------------------------------------
// Email/get (RFC 8621 §4.2)

/** Emails whose blobs one Email/get reads at once. */
const READ_CONCURRENCY = 8;

/** Runs `fn` over `items` with at most `limit` at a time. */
async function eachLimited<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const it = items[Symbol.iterator]();
  const worker = async () => {
    for (let n = it.next(); !n.done; n = it.next()) await fn(n.value);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

const METADATA = ['id', 'blobId', 'threadId', 'mailboxIds', 'keywords', 'size', 'receivedAt'];
const HEADER_CONVENIENCE: Record<string, string> = {
  messageId: 'header:Message-ID:asMessageIds',
  inReplyTo: 'header:In-Reply-To:asMessageIds',
  references: 'header:References:asMessageIds',
  sender: 'header:Sender:asAddresses',
  from: 'header:From:asAddresses',
  to: 'header:To:asAddresses',
  cc: 'header:Cc:asAddresses',
  bcc: 'header:Bcc:asAddresses',
  replyTo: 'header:Reply-To:asAddresses',
  subject: 'header:Subject:asText',
  sentAt: 'header:Date:asDate',
};
const BODY = ['bodyStructure', 'bodyValues', 'textBody', 'htmlBody', 'attachments'];
const EMAIL_PROPERTIES = [...METADATA, ...Object.keys(HEADER_CONVENIENCE), 'headers', 'hasAttachment', 'preview', ...BODY];
const DEFAULT_PROPERTIES = [...METADATA, ...Object.keys(HEADER_CONVENIENCE), 'hasAttachment', 'preview', 'bodyValues', 'textBody', 'htmlBody', 'attachments'];
/** RFC 8621 §4.1.4: preview is at most 256 characters. */
const PREVIEW_CHARS = 256;

/** The Email/get arguments that shape body output. */
interface BodyOptions {
  bodyProperties: string[];
  fetchText: boolean;
  fetchHtml: boolean;
  fetchAll: boolean;
  maxBytes: number;
}

function checkProperties(list: unknown, known: string[], what: string): string[] | undefined {
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list) || !list.every((p) => typeof p === 'string')) throw new MethodError('invalidArguments', `${what} must be a list of strings`);
  const bad = (list as string[]).filter((p) => !known.includes(p) && !(p.startsWith('header:') && parseHeaderProperty(p)));
  if (bad.length) throw new MethodError('invalidArguments', `unknown ${what}: ${bad.join(', ')}`);
  return list as string[];
}

/** Messages up to this size are read whole at once for their header section (a local file). */
const SMALL_READ_BYTES = 64 * 1024;

/** The raw message's header section: a ranged read when the stored structure says where it ends. */
async function readHeaderFields(ctx: JmapContext, rec: EmailRecord): Promise<HeaderField[]> {
  const summary = rec.locations[0]!.message.summary;
  const imap = summary.imap as { parts?: Record<string, { bodyStart?: number }> } | undefined;
  const end = imap?.parts?.['0']?.bodyStart;
  if (typeof end === 'number' && end > 0) {
    // The header section only (ByteRange's end is inclusive), read at once where the store can
    // (a local file), and split here rather than through the MIME splitter.
    const small = ctx.storage.mail.smallReader?.()?.readSmallSync(rec.blobKey, { maxBytes: SMALL_READ_BYTES, sizeHint: rec.locations[0]!.message.size });
    const section = small?.subarray(0, end) ?? (await buffer((await ctx.storage.mail.get(rec.blobKey, { range: { start: 0, end: end - 1 } })).body));
    return headerSectionFields(section);
  }
  // A summary without the stored structure (older or oversized): the message streams by once.
  const { body } = await ctx.storage.mail.get(rec.blobKey);
  const parsed = await parseEmailBody(
    body,
    () => '',
    () => false,
  );
  return parsed.headers;
}

async function parseStored(ctx: JmapContext, rec: EmailRecord, want: (p: BodyPart) => boolean): Promise<ParsedBody> {
  const { body } = await ctx.storage.mail.get(rec.blobKey);
  return parseEmailBody(body, (partId) => `G${rec.id}P${partId}`, want);
}

/** Builds one Email object from what has been read. */
function emailJson(
  properties: string[],
  meta: { rec?: EmailRecord; blobId: string | null; size: number; receivedAt: string | null; summary?: Record<string, AttrValue> },
  headers: HeaderField[] | undefined,
  parsed: ParsedBody | undefined,
  opts: BodyOptions,
): JsonObject {
  const out: JsonObject = {};
  const views = parsed ? bodyViews(parsed.structure) : undefined;
  const flags = meta.rec ? [...new Set(meta.rec.locations.flatMap((l) => l.message.flags))] : [];
  for (const p of properties) {
    switch (p) {
      case 'id':
        out.id = meta.rec?.id ?? null;
        break;
      case 'blobId':
        out.blobId = meta.blobId;
        break;
      case 'threadId':
        out.threadId = meta.rec ? threadIdOf(meta.rec.id, meta.rec.locations[0]?.message.threadId) : null;
        break;
      case 'mailboxIds':
        out.mailboxIds = meta.rec ? Object.fromEntries(meta.rec.locations.map((l) => [l.folderId, true])) : null;
        break;
      case 'keywords':
        out.keywords = meta.rec ? keywordMap(flags) : null;
        break;
      case 'size':
        out.size = meta.size;
        break;
      case 'receivedAt':
        out.receivedAt = meta.receivedAt ? new Date(meta.receivedAt).toISOString().replace(/\.\d{3}Z$/, 'Z') : null;
        break;
      case 'headers':
        out.headers = headers ?? [];
        break;
      case 'hasAttachment':
        // §4.1.4 leaves this to the server: an attachment that is not an inline image.
        out.hasAttachment = views
          ? views.attachments.some((a) => a.disposition !== 'inline' || !a.cid)
          : Array.isArray(meta.summary?.attachments) && (meta.summary.attachments as unknown[]).length > 0;
        break;
      case 'preview':
        out.preview = preview(meta.summary, parsed, views);
        break;
      case 'bodyStructure':
        out.bodyStructure = parsed ? partJson(parsed.structure, opts.bodyProperties) : null;
        break;
      case 'textBody':
      case 'htmlBody':
      case 'attachments':
        out[p] = views ? views[p].map((x) => partJson(x, opts.bodyProperties)) : [];
        break;
      case 'bodyValues': {
        const values: JsonObject = {};
        if (parsed && views) {
          const pick = new Set<BodyPart>();
          if (opts.fetchAll) leavesOf(parsed.structure).forEach((x) => x.type.startsWith('text/') && pick.add(x));
          if (opts.fetchText) views.textBody.forEach((x) => x.type.startsWith('text/') && pick.add(x));
          if (opts.fetchHtml) views.htmlBody.forEach((x) => x.type.startsWith('text/') && pick.add(x));
          for (const part of pick) {
            const t = parsed.text.get(part.partId!);
            if (t) values[part.partId!] = bodyValue(t, opts.maxBytes);
          }
        }
        out.bodyValues = values;
        break;
      }
      default: {
        const h = p.startsWith('header:') ? parseHeaderProperty(p) : HEADER_CONVENIENCE[p] ? parseHeaderProperty(HEADER_CONVENIENCE[p]) : undefined;
        if (h) {
          const v = headerProperty(headers ?? [], h);
          // The convenience properties are null when the field is absent, as the header: forms.
          out[p] = v;
        }
      }
    }
  }
  return out;
}

function preview(summary: Record<string, AttrValue> | undefined, parsed: ParsedBody | undefined, views: ReturnType<typeof bodyViews> | undefined): string {
  if (summary && typeof summary.preview === 'string') return summary.preview.slice(0, PREVIEW_CHARS);
  const first = views?.textBody.find((p) => p.type.startsWith('text/'));
  const t = first && parsed?.text.get(first.partId!);
  if (!t) return '';
  let text = bodyValue(t, 16 * 1024).value;
  if (first.type === 'text/html') text = text.replace(/<(style|script|head)\b[\s\S]*?<\/\1\s*>/gi, ' ').replace(/<[^>]*>/g, ' ');
  return text.replace(/\s+/g, ' ').trim().slice(0, PREVIEW_CHARS);
}

function bodyOptions(args: JsonObject): BodyOptions {
  const bodyProperties = checkProperties(args.bodyProperties, BODY_PART_PROPERTIES, 'bodyProperties') ?? DEFAULT_BODY_PROPERTIES;
  const bool = (v: unknown, name: string) => {
    if (v === undefined || v === null) return false;
    if (typeof v !== 'boolean') throw new MethodError('invalidArguments', `${name} must be a boolean`);
    return v;
  };
  return {
    bodyProperties,
    fetchText: bool(args.fetchTextBodyValues, 'fetchTextBodyValues'),
    fetchHtml: bool(args.fetchHTMLBodyValues, 'fetchHTMLBodyValues'),
    fetchAll: bool(args.fetchAllBodyValues, 'fetchAllBodyValues'),
    maxBytes: unsignedArg(args.maxBodyValueBytes, 'maxBodyValueBytes', 0)!,
  };
}

/** What each property needs read. */
function needs(properties: string[]): { headers: boolean; body: boolean } {
  const body = properties.some((p) => BODY.includes(p));
  const headers = properties.some((p) => p === 'headers' || p.startsWith('header:') || HEADER_CONVENIENCE[p] !== undefined);
  return { headers, body };
}

/** Leaves worth keeping text of: text parts (a value may be asked for any of them). */
const textLeaf = (wantValues: boolean) => (p: BodyPart) => wantValues && p.type.startsWith('text/');

async function emailGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const ids = idList(args.ids, 'ids');
  const properties = ['id', ...(checkProperties(args.properties, EMAIL_PROPERTIES, 'properties') ?? DEFAULT_PROPERTIES).filter((p) => p !== 'id')];
  const opts = bodyOptions(args);
  const state = await currentState(ctx);
  const resolved = ids?.map((id) => resolveId(ctx, id) ?? id) ?? null;
  const found = await locateEmails(ctx, resolved);
  if (!ids && found.size > 500) throw new MethodError('requestTooLarge', 'more than 500 Emails: ask for ids');
  const need = needs(properties);
  const wantValues = properties.includes('bodyValues') && (opts.fetchAll || opts.fetchText || opts.fetchHtml);
  const list: JsonObject[] = [];
  const notFound: string[] = [];
  const order = ids ?? [...found.keys()];
  const slots: (JsonObject | undefined)[] = [];
  // Blob reads of several Emails overlap (S3 and the disk both serve them in parallel); the
  // answer keeps the order asked for.
  await eachLimited(order.entries(), READ_CONCURRENCY, async ([i, id]) => {
    const rec = found.get(resolved ? resolved[i]! : id);
    if (!rec) return;
    const first = rec.locations[0]!.message;
    let parsed: ParsedBody | undefined;
    let headers: HeaderField[] | undefined;
    if (need.body) {
      parsed = await parseStored(ctx, rec, textLeaf(wantValues));
      headers = parsed.headers;
    } else if (need.headers) headers = await readHeaderFields(ctx, rec);
    slots[i] = emailJson(
      properties,
      { rec, blobId: `G${rec.id}`, size: first.size, receivedAt: first.receivedAt, summary: first.summary },
      headers,
      parsed,
      opts,
    );
  });
  order.forEach((id, i) => (slots[i] ? list.push(slots[i]) : notFound.push(id)));
  return { accountId: ctx.accountId, state, list, notFound };
}

// ---------------------------------------------------------------------------------------------
// Email/changes (RFC 8620 §5.2 over the change log)

async function emailChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const since = parseState(args.sinceState);
  if (since === undefined) throw new MethodError('cannotCalculateChanges', 'unknown state');
  const maxChanges = unsignedArg(args.maxChanges, 'maxChanges', 500)!;
  if (maxChanges === 0) throw new MethodError('invalidArguments', 'maxChanges must be positive');
  // Judged against the current state: where each Email the log names is now.
  const current = new Map<string, EmailRecord | undefined>();
  const now = async (id: string) => {
    if (!current.has(id)) current.set(id, (await locateEmails(ctx, [id])).get(id));
    return current.get(id);
  };
  const appended = new Set<string>();
  const existedBefore = new Set<string>();
  const at = (folder: string, uid: number) => `${folder}/${uid}`;

  const classify = async (sets: ChangeSets, id: string) => {
    const rec = await now(id);
    if (rec) {
      const created = !existedBefore.has(id) && rec.locations.every((l) => appended.has(at(l.folderId, l.message.uid)));
      if (created) {
        sets.updated.delete(id);
        sets.created.add(id);
      } else {
        sets.created.delete(id);
        sets.updated.add(id);
      }
    } else {
      sets.created.delete(id);
      sets.updated.delete(id);
      // Made and removed since the client's state: it never saw it (RFC 8620 §5.2 allows omitting).
      if (existedBefore.has(id)) sets.destroyed.add(id);
    }
  };
  const r = await foldChanges(ctx, since, maxChanges, async (sets, change) => {
    for (const e of change.entries) await applyEntry(sets, e);
  });
  async function applyEntry(sets: ChangeSets, e: ChangeEntry): Promise<void> {
    if (!e.uids || e.kind.startsWith('folder-')) return;
    // Entries name their Emails (emailIds, index for index with uids) since JMAP; an older one
    // cannot say which Email an expunged UID was.
    if (!e.emailIds) throw new MethodError('cannotCalculateChanges', 'the change log predates Email ids: fetch again');
    for (const [i, uid] of e.uids.entries()) {
      const id = e.emailIds[i]!;
      const key = at(e.folder, uid);
      if (e.kind === 'expunge' && !appended.has(key)) existedBefore.add(id);
      else if (e.kind === 'append') appended.add(key);
      await classify(sets, id);
    }
  }
  return changesResponse(ctx.accountId, String(since), String(r.newState), r.more, r);
}

// ---------------------------------------------------------------------------------------------
// Email/set (RFC 8621 §4.6)

type Patch = Record<string, unknown>;

/** The keywords after a patch (whole `keywords`, or `keywords/<k>` paths), or a SetError. */
function patchKeywords(current: Record<string, true>, patch: Patch): { value: Record<string, true> } | { error: SetError } | undefined {
  let next: Record<string, true> | undefined;
  if ('keywords' in patch) {
    const k = patch.keywords;
    if (typeof k !== 'object' || k === null || Array.isArray(k) || !Object.entries(k).every(([n, v]) => v === true && isKeyword(n)))
      return { error: { type: 'invalidProperties', properties: ['keywords'] } };
    next = Object.fromEntries(Object.keys(k).map((n) => [n.toLowerCase(), true as const]));
  }
  for (const [path, v] of Object.entries(patch)) {
    if (!path.startsWith('keywords/')) continue;
    if (next && 'keywords' in patch) return { error: { type: 'invalidPatch', description: 'keywords and a keywords/ path together' } };
    const name = path.slice('keywords/'.length).replace(/~1/g, '/').replace(/~0/g, '~').toLowerCase();
    if (!isKeyword(name) || (v !== true && v !== null)) return { error: { type: 'invalidProperties', properties: [path] } };
    next ??= { ...current };
    if (v === true) next[name] = true;
    else delete next[name];
  }
  return next && { value: next };
}

/** The mailboxes after a patch, or a SetError. */
function patchMailboxes(ctx: JmapContext, current: string[], patch: Patch, folders: Set<string>): { value: Set<string> } | { error: SetError } | undefined {
  let next: Set<string> | undefined;
  if ('mailboxIds' in patch) {
    const m = patch.mailboxIds;
    if (typeof m !== 'object' || m === null || Array.isArray(m) || !Object.values(m).every((v) => v === true))
      return { error: { type: 'invalidProperties', properties: ['mailboxIds'] } };
    next = new Set(Object.keys(m).map((id) => resolveId(ctx, id) ?? id));
  }
  for (const [path, v] of Object.entries(patch)) {
    if (!path.startsWith('mailboxIds/')) continue;
    if ('mailboxIds' in patch) return { error: { type: 'invalidPatch', description: 'mailboxIds and a mailboxIds/ path together' } };
    const raw = path.slice('mailboxIds/'.length).replace(/~1/g, '/').replace(/~0/g, '~');
    const id = resolveId(ctx, raw) ?? raw;
    if (v !== true && v !== null) return { error: { type: 'invalidProperties', properties: [path] } };
    next ??= new Set(current);
    if (v === true) next.add(id);
    else next.delete(id);
  }
  if (!next) return undefined;
  if (next.size === 0) return { error: { type: 'invalidProperties', properties: ['mailboxIds'], description: 'an Email must be in at least one mailbox' } };
  const unknown = [...next].filter((id) => !folders.has(id));
  if (unknown.length) return { error: { type: 'invalidProperties', properties: unknown.map((id) => `mailboxIds/${id}`), description: 'no such mailbox' } };
  return { value: next };
}

/** Update patches made only of valid `keywords/<k>` paths, grouped by patch: the flags to add and
 * remove, and the uids per folder of every copy of the Emails that have it. */
function groupKeywordPatches(
  update: Record<string, unknown>,
  updateIds: string[],
  found: Map<string, EmailRecord>,
): Map<string, { add: string[]; remove: string[]; byFolder: Map<string, number[]>; rawIds: string[] }> {
  const groups = new Map<string, { add: string[]; remove: string[]; byFolder: Map<string, number[]>; rawIds: string[] }>();
  for (const [i, [rawId, patch]] of Object.entries(update).entries()) {
    const rec = found.get(updateIds[i]!);
    if (!rec || typeof patch !== 'object' || patch === null || Array.isArray(patch)) continue;
    const entries = Object.entries(patch as Patch);
    if (!entries.length || !entries.every(([path, v]) => path.startsWith('keywords/') && (v === true || v === null))) continue;
    const names = entries.map(([path, v]) => [path.slice('keywords/'.length).replace(/~1/g, '/').replace(/~0/g, '~').toLowerCase(), v] as const);
    if (!names.every(([n]) => isKeyword(n))) continue; // the per-Email path reports the error
    const add = names.filter(([, v]) => v === true).map(([n]) => flagOf(n));
    const remove = names.filter(([, v]) => v === null).map(([n]) => flagOf(n));
    const key = JSON.stringify([add.sort(), remove.sort()]);
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { add, remove, byFolder: new Map(), rawIds: [] }));
    for (const l of rec.locations) {
      const uids = g.byFolder.get(l.folderId) ?? [];
      uids.push(l.message.uid);
      g.byFolder.set(l.folderId, uids);
    }
    g.rawIds.push(rawId);
  }
  return groups;
}

/** IMAP flags for keywords, keeping IMAP's own \Deleted of the copy. */
function flagsFor(keywords: Record<string, true>, old: string[]): string[] {
  return [...Object.keys(keywords).map(flagOf), ...old.filter((f) => f.toLowerCase() === '\\deleted')];
}

async function updateEmail(ctx: JmapContext, rec: EmailRecord, patch: Patch, folders: Set<string>): Promise<SetError | undefined> {
  const known = Object.keys(patch).filter((p) => !(p === 'keywords' || p === 'mailboxIds' || p.startsWith('keywords/') || p.startsWith('mailboxIds/')));
  if (known.length) return { type: 'invalidProperties', properties: known, description: 'only keywords and mailboxIds can change' };
  const currentFlags = [...new Set(rec.locations.flatMap((l) => l.message.flags))];
  const keywordPatch = patchKeywords(keywordMap(currentFlags), patch);
  if (keywordPatch && 'error' in keywordPatch) return keywordPatch.error;
  const keywords = keywordPatch?.value;
  const boxPatch = patchMailboxes(
    ctx,
    rec.locations.map((l) => l.folderId),
    patch,
    folders,
  );
  if (boxPatch && 'error' in boxPatch) return boxPatch.error;
  const boxes = boxPatch?.value;
  // Keywords first, on every copy (so a copy made below carries them).
  if (keywords) {
    for (const l of rec.locations) {
      const flags = flagsFor(keywords, l.message.flags);
      await ctx.folders.storeFlags(ctx.user, l.folderId, [l.message.uid], { mode: 'replace', flags });
    }
  }
  if (boxes) {
    // Where the Email is as the steps go: folder → uid.
    const live = new Map(rec.locations.map((l) => [l.folderId, l.message.uid]));
    const add = [...boxes].filter((b) => !live.has(b));
    const remove = [...live.keys()].filter((b) => !boxes.has(b));
    // One copy leaving and another arriving is a move; the rest are copies, then expunges, so
    // the Email is never in no mailbox. The blob is shared throughout.
    if (add.length && remove.length) {
      const from = remove.shift()!;
      const to = add.shift()!;
      const { pairs } = await ctx.folders.move(ctx.user, from, [live.get(from)!], to);
      live.delete(from);
      if (pairs[0]) live.set(to, pairs[0][1]);
    }
    const [srcFolder, srcUid] = [...live.entries()][0]!;
    for (const to of add) {
      const { pairs } = await ctx.folders.copy(ctx.user, srcFolder, [srcUid], to);
      if (pairs[0]) live.set(to, pairs[0][1]);
    }
    for (const from of remove) await ctx.folders.expunge(ctx.user, from, [live.get(from)!]);
  }
  return undefined;
}

function storageSetError(e: unknown): SetError {
  if (e instanceof QuotaExceeded) return { type: 'overQuota', description: e.message };
  if (e instanceof FolderError) return { type: e.code === 'NoSuchFolder' ? 'notFound' : 'forbidden', description: e.message };
  throw e;
}

/** Stores a raw message for the user and files it in `mailboxIds` with `keywords`; nothing is left
 * referenced by nothing when a step fails (the blob goes, copies made are expunged). */
async function storeEmail(
  ctx: JmapContext,
  body: Readable,
  mailboxIds: string[],
  keywords: Record<string, true>,
  receivedAt: string,
): Promise<{ id: string; blobId: string; threadId: string; size: number }> {
  const blobKey = `jmap/${new Date().toISOString().slice(0, 10).replace(/-/g, '')}/${randomUUID()}`;
  const toBlob = new PassThrough();
  const toSummary = new PassThrough();
  body.on('data', (chunk: Buffer) => {
    const a = toBlob.write(chunk);
    const b = toSummary.write(chunk);
    if (!a || !b) {
      body.pause();
      let waiting = (a ? 0 : 1) + (b ? 0 : 1);
      const resume = () => --waiting === 0 && body.resume();
      if (!a) toBlob.once('drain', resume);
      if (!b) toSummary.once('drain', resume);
    }
  });
  body.on('end', () => {
    toBlob.end();
    toSummary.end();
  });
  body.on('error', (e) => {
    toBlob.destroy(e);
    toSummary.destroy(e);
  });
  const [info, summary] = await Promise.all([ctx.storage.mail.put(blobKey, toBlob), summarizeForMailbox(toSummary)]);
  const flags = Object.keys(keywords).map(flagOf);
  const [first, ...rest] = mailboxIds;
  const done: [string, number][] = [];
  let threadId: string | undefined;
  try {
    const { uid } = await ctx.folders.append(ctx.user, first!, { blobKey, size: info.size, receivedAt, summary, flags });
    done.push([first!, uid]);
    threadId = (await ctx.folders.get(ctx.user, first!, uid))?.threadId;
    for (const to of rest) {
      const { pairs } = await ctx.folders.copy(ctx.user, first!, [uid], to);
      if (pairs[0]) done.push([to, pairs[0][1]]);
    }
  } catch (e) {
    // Undo: the last expunge drops the blob with its last reference; with none made, delete it.
    if (done.length) for (const [folder, uid] of done.reverse()) await ctx.folders.expunge(ctx.user, folder, [uid]);
    else await ctx.storage.mail.delete(blobKey);
    throw e;
  }
  const id = emailIdOf(blobKey);
  return { id, blobId: `G${id}`, threadId: threadIdOf(id, threadId), size: info.size };
}

/** Reads create's mailboxIds and keywords (shared with import). */
function filing(ctx: JmapContext, o: JsonObject, folders: Set<string>): { mailboxIds: string[]; keywords: Record<string, true> } | { error: SetError } {
  const boxes = patchMailboxes(ctx, [], { mailboxIds: o.mailboxIds }, folders);
  if (!boxes || 'error' in boxes) return boxes ?? { error: { type: 'invalidProperties', properties: ['mailboxIds'] } };
  const keywords = o.keywords === undefined ? { value: {} } : patchKeywords({}, { keywords: o.keywords });
  if (!keywords || 'error' in keywords) return keywords ?? { error: { type: 'invalidProperties', properties: ['keywords'] } };
  return { mailboxIds: [...boxes.value], keywords: keywords.value };
}

type ComposerAddress = { name: string; address: string };
function addressesArg(v: unknown): ComposerAddress[] | undefined | false {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) return false;
  const out: ComposerAddress[] = [];
  for (const a of v) {
    if (typeof a !== 'object' || a === null || typeof (a as JsonObject).email !== 'string') return false;
    out.push({ name: String((a as JsonObject).name ?? ''), address: String((a as JsonObject).email) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Email/set create: the message built from the Email object (RFC 8621 §4.6)

/** A header field to write, in the form nodemailer's MimeNode takes (`prepared` values go out as
 * given; strings are encoded as RFC 2047 words where needed; address objects are formatted). */
type HeaderToWrite = { key: string; value: MimeNodeHeaderValue };

/** The header field each top-level convenience property stands for (lower-case). */
const CONVENIENCE_FIELD: Record<string, string> = Object.fromEntries(
  Object.entries(HEADER_CONVENIENCE).map(([p, h]) => [p, parseHeaderProperty(h)!.name.toLowerCase()]),
);

/** RFC 5322 §2.2 field body as a raw value may give it: folded lines only (CRLF then WSP), no NUL. */
const RAW_VALUE = /^[^\r\n\0]*(\r\n[ \t][^\r\n\0]*)*$/;
const ONE_LINE = /^[^\r\n\0]*$/;
const MSG_ID = /^[^<>\s]+$/;

/** A display name as an RFC 5322 phrase: atoms as they are, other ASCII quoted, anything else
 * an RFC 2047 encoded word. */
function phrase(name: string): string {
  if (/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$/.test(name)) return name;
  if (/^[\x20-\x7e]*$/.test(name)) return `"${name.replace(/["\\]/g, '\\$&')}"`;
  return encodeWord(name, 'Q', 52);
}

/** One JMAP address (§4.1.2.3) as MimeNode takes it, or undefined when it is not one. */
function addressOut(a: unknown): MimeNodeAddress | undefined {
  if (typeof a !== 'object' || a === null) return undefined;
  const { name, email } = a as JsonObject;
  if (typeof email !== 'string' || !ONE_LINE.test(email) || (name !== undefined && name !== null && (typeof name !== 'string' || !ONE_LINE.test(name))))
    return undefined;
  return { name: typeof name === 'string' ? name : '', address: email };
}

/** One value of a `header:` property in its form, as a header value to write; undefined when the
 * value does not fit the form (§4.1.2's forms read backwards). */
function headerValueOut(form: string, v: unknown): MimeNodeHeaderValue | undefined {
  // Address lists are formatted (quoting, RFC 2047 words, groups) as MimeNode formats a To
  // field; it would leave them unformatted under any name it does not know as an address field.
  const formatted = (a: MimeNodeAddress[]): MimeNodeHeaderValue => ({ prepared: true, foldLines: true, value: MimeNode.encodeHeaderValue('To', a) });
  const list = (f: (x: unknown) => MimeNodeAddress | undefined) => {
    if (!Array.isArray(v)) return undefined;
    const out = v.map(f);
    return out.every((x) => x !== undefined) ? formatted(out as MimeNodeAddress[]) : undefined;
  };
  switch (form) {
    case 'Raw':
      return typeof v === 'string' && RAW_VALUE.test(v) ? { prepared: true, value: v.replace(/^[ \t]+/, '') } : undefined;
    case 'Text':
      return typeof v === 'string' && ONE_LINE.test(v) ? v : undefined;
    case 'Addresses':
      return list(addressOut);
    case 'GroupedAddresses':
      if (!Array.isArray(v)) return undefined;
      {
        // MimeNode formats mailboxes but takes groups only as text: each group is written as
        // RFC 5322 §3.4 has it, `display-name: mailbox-list;`, around MimeNode's mailboxes.
        const out: string[] = [];
        for (const g of v as unknown[]) {
          if (typeof g !== 'object' || g === null || !Array.isArray((g as JsonObject).addresses)) return undefined;
          const { name, addresses } = g as { name?: unknown; addresses: unknown[] };
          const members = addresses.map(addressOut);
          if (!members.every((x) => x !== undefined)) return undefined;
          const list = members.length ? MimeNode.encodeHeaderValue('To', members as MimeNodeAddress[]) : '';
          if (name === null || name === undefined) {
            if (list) out.push(list);
          } else if (typeof name === 'string' && ONE_LINE.test(name)) out.push(`${phrase(name)}:${list ? ` ${list}` : ''};`);
          else return undefined;
        }
        return { prepared: true, foldLines: true, value: out.join(', ') };
      }
    case 'MessageIds':
      return Array.isArray(v) && v.length && v.every((x) => typeof x === 'string' && MSG_ID.test(x))
        ? { prepared: true, foldLines: true, value: v.map((x) => `<${x as string}>`).join(' ') }
        : undefined;
    case 'Date':
      return typeof v === 'string' && Number.isFinite(Date.parse(v))
        ? { prepared: true, value: new Date(v).toUTCString().replace(/GMT$/, '+0000') }
        : undefined;
    case 'URLs':
      return Array.isArray(v) && v.length && v.every((x) => typeof x === 'string' && /^[^<>\s]+$/.test(x))
        ? { prepared: true, foldLines: true, value: v.map((x) => `<${x as string}>`).join(', ') }
        : undefined;
  }
  return undefined;
}

/**
 * The `header:` properties of an Email or EmailBodyPart being created, as fields to write; or the
 * SetError naming the property (its path: `prefix` + name). `taken` holds the fields other
 * properties of the same object already represent (lower-case; §4.6: no two properties for one
 * field) and gains these; `refuse` names fields the object may not set (Content-* on the Email).
 */
function headerPropsOut(o: JsonObject, prefix: string, taken: Set<string>, refuse: (field: string) => boolean): HeaderToWrite[] | SetError {
  const out: HeaderToWrite[] = [];
  const bad = (p: string, description: string): SetError => ({ type: 'invalidProperties', properties: [prefix + p], description });
  for (const [p, v] of Object.entries(o)) {
    if (!p.startsWith('header:')) continue;
    const h = parseHeaderProperty(p);
    if (!h) return bad(p, 'not a header property, or a form this field does not allow (§4.1.2)');
    const field = h.name.toLowerCase();
    if (refuse(field)) return bad(p, `${h.name} cannot be set here (§4.6)`);
    if (taken.has(field)) return bad(p, `two properties for ${h.name} (§4.6)`);
    taken.add(field);
    if (v === null) continue;
    const values = h.all ? (Array.isArray(v) ? (v as unknown[]) : undefined) : [v];
    if (!values) return bad(p, 'an :all property is a list');
    for (const one of values) {
      const w = headerValueOut(h.form, one);
      if (w === undefined) return bad(p, `not a value of the ${h.form} form`);
      out.push({ key: h.name, value: w });
    }
  }
  return out;
}

/** An EmailBodyPart to build: checked, with its content to come (text or a blob). */
interface PartPlan {
  contentType: string;
  filename?: string;
  headers: HeaderToWrite[];
  text?: string;
  blob?: JmapBlob;
  children?: PartPlan[];
}

const isPlan = (v: PartPlan | SetError): v is PartPlan => typeof (v as PartPlan).contentType === 'string';

/** What a created EmailBodyPart may say: the properties an Email/get part has (§4.1.4). */
const PART_CREATE_PROPERTIES = new Set(BODY_PART_PROPERTIES);
/** RFC 6838 §4.2 type/subtype, and RFC 2045 tokens (charset, disposition). */
const MEDIA_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$/;
const TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$/;
/** How deep and how many parts a created structure may be (as a parsed one: MAX_NODES there). */
const MAX_CREATE_DEPTH = 16;
const MAX_CREATE_PARTS = 1000;

/**
 * Checks one EmailBodyPart of a create's bodyStructure by §4.6 and returns what to build; a
 * SetError names the offending property by its path (`bodyStructure/subParts/0/charset`).
 * `parentTaken` (the root only) holds the fields the Email itself sets: the root part may not set
 * them again.
 */
async function planPart(
  ctx: JmapContext,
  raw: unknown,
  path: string,
  values: Record<string, unknown>,
  count: { parts: number },
  depth: number,
  parentTaken?: Set<string>,
): Promise<PartPlan | SetError> {
  const bad = (p?: string, description?: string): SetError => ({
    type: 'invalidProperties',
    properties: [p ? `${path}/${p}` : path],
    ...(description ? { description } : {}),
  });
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return bad(undefined, 'an EmailBodyPart is an object');
  if (++count.parts > MAX_CREATE_PARTS || depth > MAX_CREATE_DEPTH) return bad(undefined, 'too many or too deeply nested parts');
  const p = raw as JsonObject;
  for (const k of Object.keys(p)) if (!PART_CREATE_PROPERTIES.has(k) && !k.startsWith('header:')) return bad(k, 'unknown property');
  if (p.headers !== undefined) return bad('headers', 'give each field as a header: property (§4.6)');
  const str = (k: string, re: RegExp): string | null | SetError => {
    const v = p[k];
    if (v === undefined || v === null) return null;
    return typeof v === 'string' && re.test(v) ? v : bad(k);
  };
  const type = str('type', MEDIA_TYPE);
  if (typeof type === 'object' && type) return type;
  const name = str('name', ONE_LINE);
  if (typeof name === 'object' && name) return name;
  const disposition = str('disposition', TOKEN);
  if (typeof disposition === 'object' && disposition) return disposition;
  const cid = str('cid', MSG_ID);
  if (typeof cid === 'object' && cid) return cid;
  const location = str('location', /^[^\r\n\0\s]+$/);
  if (typeof location === 'object' && location) return location;
  const charset = str('charset', TOKEN);
  if (typeof charset === 'object' && charset) return charset;
  let language: string[] | null = null;
  if (p.language !== undefined && p.language !== null) {
    if (!Array.isArray(p.language) || !p.language.length || !p.language.every((l) => typeof l === 'string' && /^[A-Za-z0-9-]{1,64}$/.test(l)))
      return bad('language');
    language = p.language as string[];
  }
  // The named properties stand for these fields; a header: property may not give them again,
  // and Content-Type (type, charset) and Content-Transfer-Encoding (the server's choice) are ours.
  const taken = new Set(['content-type', 'content-transfer-encoding']);
  if (name !== null || disposition !== null) taken.add('content-disposition');
  if (cid !== null) taken.add('content-id');
  if (language) taken.add('content-language');
  if (location !== null) taken.add('content-location');
  const headers = headerPropsOut(p, `${path}/`, taken, (f) => parentTaken?.has(f) ?? false);
  if (!Array.isArray(headers)) return headers;
  if (disposition !== null) headers.push({ key: 'Content-Disposition', value: disposition.toLowerCase() });
  if (cid !== null) headers.push({ key: 'Content-ID', value: { prepared: true, value: `<${cid}>` } });
  if (language) headers.push({ key: 'Content-Language', value: language.join(', ') });
  if (location !== null) headers.push({ key: 'Content-Location', value: { prepared: true, value: location } });
  const plan: PartPlan = { contentType: '', headers, ...(name !== null ? { filename: name } : {}) };

  const mediaType = (type ?? (p.subParts !== undefined ? 'multipart/mixed' : 'text/plain')).toLowerCase();
  if (mediaType.startsWith('multipart/')) {
    for (const k of ['partId', 'blobId', 'charset', 'size'] as const) if (p[k] !== undefined && p[k] !== null) return bad(k, 'a multipart has subParts only');
    if (!Array.isArray(p.subParts) || !p.subParts.length) return bad('subParts', 'a multipart needs at least one subPart');
    plan.contentType = mediaType;
    plan.children = [];
    for (const [i, sub] of (p.subParts as unknown[]).entries()) {
      const child = await planPart(ctx, sub, `${path}/subParts/${i}`, values, count, depth + 1);
      if (!isPlan(child)) return child;
      plan.children.push(child);
    }
    return plan;
  }
  if (p.subParts !== undefined && p.subParts !== null) return bad('subParts', `a ${mediaType} part has no subParts`);
  const hasPart = p.partId !== undefined && p.partId !== null;
  const hasBlob = p.blobId !== undefined && p.blobId !== null;
  if (hasPart === hasBlob) return bad(hasPart ? 'blobId' : 'partId', 'a part gives a partId or a blobId, one of them (§4.6)');
  if (hasPart) {
    const value = typeof p.partId === 'string' ? values[p.partId] : undefined;
    if (typeof value !== 'object' || value === null || typeof (value as JsonObject).value !== 'string')
      return bad('partId', 'no bodyValues entry with this partId');
    if (charset !== null) return bad('charset', 'the server picks the charset of a bodyValues part (§4.6)');
    if (p.size !== undefined && p.size !== null) return bad('size', 'a bodyValues part has no size to give (§4.6)');
    if (!mediaType.startsWith('text/')) return bad('type', 'a bodyValues part is text');
    // UTF-8 whatever the text: Content-Type says so (MimeNode adds it for text/plain only).
    plan.contentType = `${mediaType}; charset=utf-8`;
    plan.text = (value as { value: string }).value;
    return plan;
  }
  const blob = typeof p.blobId === 'string' ? await ctx.blobs.get(resolveId(ctx, p.blobId) ?? p.blobId) : undefined;
  if (!blob) return { type: 'blobNotFound', notFound: [String(p.blobId)] };
  plan.contentType = charset !== null ? `${mediaType}; charset=${charset}` : mediaType;
  plan.blob = blob;
  return plan;
}

/** Builds the nodemailer MimeNode tree of a checked bodyStructure; blob contents stream in as the
 * message is read. */
async function buildPart(plan: PartPlan, parent?: MimeNode): Promise<MimeNode> {
  const options = { disableFileAccess: true, disableUrlAccess: true, ...(plan.filename !== undefined ? { filename: plan.filename } : {}) };
  const node = parent ? parent.createChild(plan.contentType, options) : new MimeNode(plan.contentType, options);
  for (const h of plan.headers) node.addHeader(h.key, h.value);
  if (plan.children) for (const c of plan.children) await buildPart(c, node);
  else if (plan.text !== undefined) node.setContent(plan.text);
  else if (plan.blob) node.setContent(await plan.blob.open());
  return node;
}

/** Email properties a create may give (§4.6: the server-set ones are refused before this). */
const EMAIL_CREATE_PROPERTIES = new Set([
  'mailboxIds',
  'keywords',
  'receivedAt',
  'bodyValues',
  'textBody',
  'htmlBody',
  'attachments',
  'bodyStructure',
  'headers',
  ...Object.keys(HEADER_CONVENIENCE),
]);

/**
 * Builds the MIME of an Email/set create (RFC 8621 §4.6) with nodemailer: from textBody/htmlBody
 * (one part each) and attachments by blobId through MailComposer, or from a full bodyStructure
 * through its MimeNode (multiparts, bodyValues parts, blob parts, each part's header: properties);
 * the top-level header properties (convenience ones and `header:*`) either way. The transfer
 * encodings are the library's choice, as §4.6 leaves them to the server.
 */
async function composeDraft(ctx: JmapContext, o: JsonObject): Promise<Readable | SetError> {
  const unknown = Object.keys(o).filter((k) => !EMAIL_CREATE_PROPERTIES.has(k) && !k.startsWith('header:'));
  if (unknown.length) return { type: 'invalidProperties', properties: unknown, description: 'unknown or server-set properties' };
  if (o.headers !== undefined) return { type: 'invalidProperties', properties: ['headers'], description: 'give each field as a header: property (§4.6)' };
  if (o.bodyStructure !== undefined && o.bodyStructure !== null) {
    const both = ['textBody', 'htmlBody', 'attachments'].filter((k) => o[k] !== undefined && o[k] !== null);
    if (both.length)
      return { type: 'invalidProperties', properties: ['bodyStructure', ...both], description: 'bodyStructure or textBody/htmlBody/attachments (§4.6)' };
  }
  if (o.bodyValues !== undefined && o.bodyValues !== null) {
    if (typeof o.bodyValues !== 'object' || Array.isArray(o.bodyValues)) return { type: 'invalidProperties', properties: ['bodyValues'] };
    for (const [id, v] of Object.entries(o.bodyValues as JsonObject)) {
      const bv = v as JsonObject | null;
      // §4.6: isEncodingProblem and isTruncated are false or absent in a create.
      if (
        typeof bv !== 'object' ||
        bv === null ||
        typeof bv.value !== 'string' ||
        (bv.isEncodingProblem ?? false) !== false ||
        (bv.isTruncated ?? false) !== false
      )
        return { type: 'invalidProperties', properties: [`bodyValues/${id}`] };
    }
  }
  const values = (o.bodyValues ?? {}) as Record<string, { value?: unknown }>;
  // The fields the convenience properties given stand for: a header: property may not repeat one.
  const taken = new Set(
    Object.keys(CONVENIENCE_FIELD)
      .filter((p) => o[p] !== undefined && o[p] !== null)
      .map((p) => CONVENIENCE_FIELD[p]!),
  );
  const headers = headerPropsOut(o, '', taken, (f) => f.startsWith('content-'));
  if (!Array.isArray(headers)) return headers;
  const mail: Record<string, unknown> = {};
  for (const [prop, key] of [
    ['from', 'from'],
    ['to', 'to'],
    ['cc', 'cc'],
    ['bcc', 'bcc'],
    ['replyTo', 'replyTo'],
    ['sender', 'sender'],
  ] as const) {
    const a = addressesArg(o[prop]);
    if (a === false) return { type: 'invalidProperties', properties: [prop] };
    if (a) mail[key] = prop === 'sender' ? a[0] : a;
  }
  if (o.subject !== undefined && o.subject !== null && (typeof o.subject !== 'string' || !ONE_LINE.test(o.subject)))
    return { type: 'invalidProperties', properties: ['subject'] };
  if (typeof o.subject === 'string') mail.subject = o.subject;
  if (o.sentAt !== undefined && o.sentAt !== null) {
    if (typeof o.sentAt !== 'string' || !Number.isFinite(Date.parse(o.sentAt))) return { type: 'invalidProperties', properties: ['sentAt'] };
    mail.date = new Date(o.sentAt);
  }
  const ids = (prop: string): string | undefined | false => {
    const v = o[prop];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && MSG_ID.test(x))) return false;
    return v.map((x) => `<${x}>`).join(' ');
  };
  for (const [prop, header] of [
    ['messageId', 'messageId'],
    ['inReplyTo', 'inReplyTo'],
    ['references', 'references'],
  ] as const) {
    const v = ids(prop);
    if (v === false) return { type: 'invalidProperties', properties: [prop] };
    if (v) mail[header] = v;
  }

  if (o.bodyStructure !== undefined && o.bodyStructure !== null) {
    const plan = await planPart(ctx, o.bodyStructure, 'bodyStructure', values, { parts: 0 }, 0, new Set([...taken]));
    if (!isPlan(plan)) return plan;
    const root = await buildPart(plan);
    // The Email's own fields on the root, as MailComposer.compile() sets them.
    for (const h of headers) root.addHeader(h.key, h.value);
    for (const [field, key] of [
      ['from', 'from'],
      ['sender', 'sender'],
      ['to', 'to'],
      ['cc', 'cc'],
      ['bcc', 'bcc'],
      ['reply-to', 'replyTo'],
      ['in-reply-to', 'inReplyTo'],
      ['references', 'references'],
      ['subject', 'subject'],
      ['message-id', 'messageId'],
      ['date', 'date'],
    ] as const)
      if (mail[key] !== undefined) root.setHeader(field, mail[key] as MimeNodeHeaderValue);
    root.messageId();
    root.keepBcc = true; // as on the other path: EmailSubmission removes it from the copy it sends
    return root.createReadStream();
  }

  const textOf = (list: unknown, prop: string, type: string): string | SetError | undefined => {
    if (list === undefined || list === null) return undefined;
    if (!Array.isArray(list) || list.length !== 1) return { type: 'invalidProperties', properties: [prop] };
    const part = list[0] as JsonObject;
    if ((part.type ?? type) !== type || typeof part.partId !== 'string' || typeof values[part.partId]?.value !== 'string')
      return { type: 'invalidProperties', properties: [prop] };
    return values[part.partId]!.value as string;
  };
  const text = textOf(o.textBody, 'textBody', 'text/plain');
  const html = textOf(o.htmlBody, 'htmlBody', 'text/html');
  if (typeof text === 'object') return text;
  if (typeof html === 'object') return html;
  Object.assign(mail, { text: text ?? (html === undefined ? '' : undefined), html });
  if (headers.length) mail.headers = headers;
  if (o.attachments !== undefined && o.attachments !== null) {
    if (!Array.isArray(o.attachments)) return { type: 'invalidProperties', properties: ['attachments'] };
    const attachments: Record<string, unknown>[] = [];
    for (const a of o.attachments as JsonObject[]) {
      const blob = typeof a?.blobId === 'string' ? await ctx.blobs.get(a.blobId) : undefined;
      if (!blob) return { type: 'blobNotFound', notFound: [String(a?.blobId)] };
      attachments.push({
        content: await blob.open(),
        contentType: typeof a.type === 'string' ? a.type : (blob.type ?? 'application/octet-stream'),
        ...(typeof a.name === 'string' ? { filename: a.name } : {}),
        ...(typeof a.cid === 'string' ? { cid: a.cid } : {}),
        contentDisposition: a.disposition === 'inline' ? 'inline' : 'attachment',
      });
    }
    mail.attachments = attachments;
  }
  const composer = new MailComposer(mail as ConstructorParameters<typeof MailComposer>[0]);
  const root = composer.compile();
  // A draft keeps its Bcc (RFC 8621 §4.1.2 has it on the Email); EmailSubmission removes it from
  // the copy it sends.
  root.keepBcc = true;
  // The composer's stream is built as it is read: attachments stream from their blobs.
  return root.createReadStream();
}

async function emailSet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const oldState = await checkIfInState(ctx, args);
  const objectArg = (v: unknown, name: string): Record<string, unknown> => {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) throw new MethodError('invalidArguments', `${name} must be an object`);
    return v as Record<string, unknown>;
  };
  const create = objectArg(args.create, 'create');
  const update = objectArg(args.update, 'update');
  const destroy = idList(args.destroy, 'destroy') ?? [];
  const folders = new Set((await ctx.folders.list(ctx.user)).map((f) => f.id));
  const created: Record<string, JsonObject> = {};
  const notCreated: Record<string, SetError> = {};
  const updated: Record<string, null> = {};
  const notUpdated: Record<string, SetError> = {};
  const destroyed: string[] = [];
  const notDestroyed: Record<string, SetError> = {};

  for (const [cid, raw] of Object.entries(create)) {
    if (typeof raw !== 'object' || raw === null) {
      notCreated[cid] = { type: 'invalidProperties' };
      continue;
    }
    const o = raw as JsonObject;
    const f = filing(ctx, o, folders);
    if ('error' in f) {
      notCreated[cid] = f.error;
      continue;
    }
    const serverSet = ['id', 'blobId', 'threadId', 'size', 'hasAttachment', 'preview'].filter((p) => p in o);
    if (serverSet.length) {
      notCreated[cid] = { type: 'invalidProperties', properties: serverSet };
      continue;
    }
    const mime = await composeDraft(ctx, o);
    if (!(mime instanceof Readable)) {
      notCreated[cid] = mime;
      continue;
    }
    try {
      const receivedAt =
        typeof o.receivedAt === 'string' && Number.isFinite(Date.parse(o.receivedAt)) ? new Date(o.receivedAt).toISOString() : new Date().toISOString();
      const r = await storeEmail(ctx, mime, f.mailboxIds, f.keywords, receivedAt);
      created[cid] = r;
      ctx.createdIds.set(cid, r.id);
    } catch (e) {
      notCreated[cid] = storageSetError(e);
    }
  }

  const updateIds = Object.keys(update).map((id) => resolveId(ctx, id) ?? id);
  const destroyIds = destroy.map((id) => resolveId(ctx, id) ?? id);
  const found = updateIds.length || destroyIds.length ? await locateEmails(ctx, [...updateIds, ...destroyIds]) : new Map<string, EmailRecord>();
  // Patches that only add or remove keywords by path (`keywords/$seen: true`, the common case
  // of marking many Emails) are applied per folder in one storeFlags call each, not per Email.
  const grouped = groupKeywordPatches(update, updateIds, found);
  for (const [, g] of grouped) {
    for (const [folder, uids] of g.byFolder) {
      if (g.add.length) await ctx.folders.storeFlags(ctx.user, folder, uids, { mode: 'add', flags: g.add });
      if (g.remove.length) await ctx.folders.storeFlags(ctx.user, folder, uids, { mode: 'remove', flags: g.remove });
    }
    for (const rawId of g.rawIds) updated[rawId] = null;
  }
  for (const [i, [rawId, patch]] of Object.entries(update).entries()) {
    if (rawId in updated) continue;
    const rec = found.get(updateIds[i]!);
    if (!rec) {
      notUpdated[rawId] = { type: 'notFound' };
      continue;
    }
    if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) {
      notUpdated[rawId] = { type: 'invalidPatch' };
      continue;
    }
    try {
      const err = await updateEmail(ctx, rec, patch as Patch, folders);
      if (err) notUpdated[rawId] = err;
      else updated[rawId] = null;
    } catch (e) {
      notUpdated[rawId] = storageSetError(e);
    }
  }
  for (const [i, rawId] of destroy.entries()) {
    // Re-read: an update above may have moved it.
    const rec = (await locateEmails(ctx, [destroyIds[i]!])).get(destroyIds[i]!);
    if (!rec) {
      notDestroyed[rawId] = { type: 'notFound' };
      continue;
    }
    for (const l of rec.locations) await ctx.folders.expunge(ctx.user, l.folderId, [l.message.uid]);
    destroyed.push(rawId);
  }
  return setResponse(ctx.accountId, oldState, await currentState(ctx), { created, updated, destroyed, notCreated, notUpdated, notDestroyed });
}

// ---------------------------------------------------------------------------------------------
// Email/import, /parse, /copy (RFC 8621 §4.8, §4.9, §4.7)

async function emailImport(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const oldState = await checkIfInState(ctx, args);
  if (typeof args.emails !== 'object' || args.emails === null || Array.isArray(args.emails))
    throw new MethodError('invalidArguments', 'emails must be an object');
  const folders = new Set((await ctx.folders.list(ctx.user)).map((f) => f.id));
  const created: Record<string, JsonObject> = {};
  const notCreated: Record<string, SetError> = {};
  for (const [cid, raw] of Object.entries(args.emails as Record<string, unknown>)) {
    const o = (raw ?? {}) as JsonObject;
    const f = filing(ctx, o, folders);
    if ('error' in f) {
      notCreated[cid] = f.error;
      continue;
    }
    const blob = typeof o.blobId === 'string' ? await ctx.blobs.get(resolveId(ctx, o.blobId) ?? o.blobId) : undefined;
    if (!blob) {
      notCreated[cid] = { type: 'blobNotFound', notFound: [String(o.blobId)] };
      continue;
    }
    if (!(await startsWithHeader(blob))) {
      notCreated[cid] = { type: 'invalidEmail', description: 'the blob does not start with a header field (RFC 5322 §2.2)' };
      continue;
    }
    if (o.receivedAt !== undefined && (typeof o.receivedAt !== 'string' || !Number.isFinite(Date.parse(o.receivedAt)))) {
      notCreated[cid] = { type: 'invalidProperties', properties: ['receivedAt'] };
      continue;
    }
    try {
      const r = await storeEmail(
        ctx,
        await blob.open(),
        f.mailboxIds,
        f.keywords,
        new Date(typeof o.receivedAt === 'string' ? o.receivedAt : Date.now()).toISOString(),
      );
      created[cid] = r;
      ctx.createdIds.set(cid, r.id);
    } catch (e) {
      notCreated[cid] = storageSetError(e);
    }
  }
  const none = <T extends object>(o: T) => (Object.keys(o).length ? o : null);
  return { accountId: ctx.accountId, oldState, newState: await currentState(ctx), created: none(created), notCreated: none(notCreated) };
}

/** Whether a blob starts as a message does: a header field name and a colon (RFC 5322 §2.2), or
 * an mbox "From " line. Reads the first chunk only. */
async function startsWithHeader(blob: JmapBlob): Promise<boolean> {
  const stream = await blob.open();
  try {
    for await (const chunk of stream) {
      const head = Buffer.from(chunk as Buffer)
        .subarray(0, 1000)
        .toString('latin1');
      return /^(From |[\x21-\x39\x3b-\x7e]+[ \t]*:)/.test(head);
    }
    return false;
  } finally {
    stream.destroy();
  }
}

const PARSE_DEFAULT = [...Object.keys(HEADER_CONVENIENCE), 'hasAttachment', 'preview', 'bodyValues', 'textBody', 'htmlBody', 'attachments'];

async function emailParse(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const blobIds = idList(args.blobIds, 'blobIds') ?? [];
  const properties = checkProperties(args.properties, EMAIL_PROPERTIES, 'properties') ?? PARSE_DEFAULT;
  const opts = bodyOptions(args);
  const wantValues = properties.includes('bodyValues') && (opts.fetchAll || opts.fetchText || opts.fetchHtml);
  const parsed: Record<string, JsonObject> = {};
  const notParsable: string[] = [];
  const notFound: string[] = [];
  for (const blobId of blobIds) {
    const blob = await ctx.blobs.get(blobId);
    if (!blob) {
      notFound.push(blobId);
      continue;
    }
    try {
      // A part of an upload or of a stored message is a blob of its own (`<blobId>P<partId>`, served
      // by resolveUploadPart and resolveEmailBlob); parts of other blobs (a part of a part) are
      // not: blobId null, and the client downloads the whole.
      const partable = /^(U[0-9a-f]{1,64}|GM[0-9a-f]{24})$/.test(blobId);
      const p = await parseEmailBody(await blob.open(), (partId) => `${blobId}P${partId}`, textLeaf(wantValues));
      const nullBlobs = (part: BodyPart) => {
        part.blobId = null;
        part.subParts?.forEach(nullBlobs);
      };
      if (!partable) nullBlobs(p.structure);
      if (!p.headers.length) throw new Error('no header fields');
      parsed[blobId] = emailJson(properties, { blobId, size: blob.size, receivedAt: null }, p.headers, p, opts);
    } catch {
      notParsable.push(blobId);
    }
  }
  return { accountId: ctx.accountId, parsed: Object.keys(parsed).length ? parsed : null, notParsable, notFound };
}

/** One account per user: there is no other account to copy from (RFC 8620 §5.4). */
async function emailCopy(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  if (args.fromAccountId === ctx.accountId) throw new MethodError('invalidArguments', 'fromAccountId and accountId must differ');
  throw new MethodError('fromAccountNotFound');
}

// ---------------------------------------------------------------------------------------------
// `G` blobs: the engine's resolver for download and for blobIds given to other methods

/**
 * The blob of a `G<emailId>` (the raw message) or `G<emailId>P<partId>` (one decoded leaf), if
 * the Email is the user's; undefined otherwise. The engine calls this for every `G` blobId.
 */
export async function resolveEmailBlob(blobId: string, ctx: BlobOwner): Promise<JmapBlob | undefined> {
  const m = /^G(M[0-9a-f]{24})(?:P([1-9][0-9]{0,5}))?$/.exec(blobId);
  if (!m) return undefined;
  const rec = (await locateEmails(ctx, [m[1]!])).get(m[1]!);
  if (!rec) return undefined;
  const key = rec.blobKey;
  if (!m[2]) {
    const size = rec.locations[0]!.message.size;
    return { size, type: 'message/rfc822', open: async () => (await ctx.storage.mail.get(key)).body };
  }
  return messagePart(async () => (await ctx.storage.mail.get(key)).body, m[2]);
}

/**
 * Leaf `partId` of the message `open` reads, as a blob (its decoded bytes); undefined when the
 * message has no such leaf. The size and type come from one streamed read of the structure.
 */
async function messagePart(open: () => Promise<Readable>, partId: string): Promise<JmapBlob | undefined> {
  const parsed = await parseEmailBody(
    await open(),
    (p) => p,
    () => false,
  );
  const leaf = leavesOf(parsed.structure).find((p) => p.partId === partId);
  if (!leaf) return undefined;
  return {
    size: leaf.size,
    type: leaf.type,
    async open() {
      const part = await openPart(await open(), partId);
      if (!part) throw new Error(`part ${partId} went`);
      return part.body;
    },
  };
}

/**
 * The blob of a `U<uploadId>P<partId>`: one decoded leaf of an uploaded message, as Email/parse
 * names the parts of a parsed upload (RFC 8621 §4.9), so a client can show an attachment of a
 * message it has not imported. The upload is looked up through `owner.blob` (the engine's, so
 * its expiry and ownership rules hold); undefined when either is not there.
 */
export async function resolveUploadPart(blobId: string, owner: BlobOwner): Promise<JmapBlob | undefined> {
  const m = /^(U[0-9a-f]{1,64})P([1-9][0-9]{0,5})$/.exec(blobId);
  if (!m || !owner.blob) return undefined;
  const whole = await owner.blob(m[1]!);
  return whole && messagePart(() => whole.open(), m[2]!);
}

export const emailMethods: JmapMethods = {
  capability: MAIL_CAPABILITY,
  methods: {
    'Email/get': emailGet,
    'Email/changes': emailChanges,
    'Email/set': emailSet,
    'Email/import': emailImport,
    'Email/parse': emailParse,
    'Email/copy': emailCopy,
  },
};
