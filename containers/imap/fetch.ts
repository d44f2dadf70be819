/**
 * FETCH (RFC 9051 §6.4.5, §7.5.2) and CONDSTORE's CHANGEDSINCE and MODSEQ (RFC 7162 §3.1).
 *
 * ENVELOPE, BODYSTRUCTURE and BODY come from the structure stored with the message at delivery
 * (`summary.imap`, core/mail/imap-structure.ts); a message stored without one (older data, or a
 * structure too big to keep) has it computed from its blob on demand. Body sections are byte
 * ranges of the blob (sectionRange), streamed to the client with backpressure: a FETCH of a
 * 50 MB message holds one read chunk at a time, whatever the size.
 */
import type { Readable } from 'node:stream';
import {
  filterHeaderFields,
  imapStructure,
  MAX_STORED_STRUCTURE_BYTES,
  sectionRange,
  type ImapStructure,
  type SectionKind,
} from '../../core/mail/imap-structure.js';
import { isStorageError, type AttrValue, type SmallBlobReader } from '../../core/storage/ports.js';
import type { FolderMessage } from '../../core/mailbox/folders.js';
import { flagList } from './protocol/encode.js';
import { is, isAtom, number, text, type Atom, type ImapValue } from './protocol/values.js';
import { formatDateTime } from './messages.js';
import type { SelectedFolder } from './selected.js';
import { CommandError, type ImapSession } from './session.js';

/** One body section asked for. */
interface SectionItem {
  kind: 'section';
  /** The name the response uses: `BODY[1.2]`, `RFC822`, `RFC822.HEADER`, `RFC822.TEXT`. */
  label: string;
  part: number[];
  section: SectionKind;
  fields: string[];
  partial?: { start: number; length?: number };
  /** BODY.PEEK and RFC822.HEADER leave \Seen alone. */
  peek: boolean;
}

type FetchItem = { kind: 'UID' | 'FLAGS' | 'INTERNALDATE' | 'RFC822.SIZE' | 'ENVELOPE' | 'BODYSTRUCTURE' | 'BODY' | 'MODSEQ' } | SectionItem;

/** The largest header block HEADER.FIELDS filters (a bigger one is cut there). */
const MAX_HEADER_READ = 1024 * 1024;
/** Messages up to this size are read whole and synchronously when the storage can (local files). */
const SMALL_READ_BYTES = 256 * 1024;
/** Messages read from the store per round trip. */
const PAGE = 100;

/** Parses the attributes of a FETCH (after the sequence set), with their modifiers. */
export function parseFetchItems(args: ImapValue[]): { items: FetchItem[]; changedSince?: number; vanished: boolean } {
  const spec = args[0];
  const list = Array.isArray(spec) ? spec : spec === undefined ? [] : [spec];
  if (!list.length) throw new CommandError('BAD', 'FETCH needs data items');
  const items: FetchItem[] = [];
  for (const v of list) {
    if (!isAtom(v)) throw new CommandError('BAD', 'Invalid FETCH data item');
    const name = v.value.toUpperCase();
    if (v.section !== undefined) {
      items.push(parseSection(v, name));
      continue;
    }
    switch (name) {
      case 'ALL':
        items.push({ kind: 'FLAGS' }, { kind: 'INTERNALDATE' }, { kind: 'RFC822.SIZE' }, { kind: 'ENVELOPE' });
        break;
      case 'FAST':
        items.push({ kind: 'FLAGS' }, { kind: 'INTERNALDATE' }, { kind: 'RFC822.SIZE' });
        break;
      case 'FULL':
        items.push({ kind: 'FLAGS' }, { kind: 'INTERNALDATE' }, { kind: 'RFC822.SIZE' }, { kind: 'ENVELOPE' }, { kind: 'BODY' });
        break;
      case 'UID':
      case 'FLAGS':
      case 'INTERNALDATE':
      case 'RFC822.SIZE':
      case 'ENVELOPE':
      case 'BODYSTRUCTURE':
      case 'BODY':
      case 'MODSEQ':
        items.push({ kind: name });
        break;
      case 'RFC822':
        items.push({ kind: 'section', label: 'RFC822', part: [], section: '', fields: [], peek: false });
        break;
      case 'RFC822.HEADER':
        items.push({ kind: 'section', label: 'RFC822.HEADER', part: [], section: 'HEADER', fields: [], peek: true });
        break;
      case 'RFC822.TEXT':
        items.push({ kind: 'section', label: 'RFC822.TEXT', part: [], section: 'TEXT', fields: [], peek: false });
        break;
      default:
        throw new CommandError('BAD', `Unknown FETCH data item ${name.slice(0, 30)}`);
    }
  }
  let changedSince: number | undefined;
  let vanished = false;
  const mods = args[1];
  if (mods !== undefined) {
    if (!Array.isArray(mods)) throw new CommandError('BAD', 'Invalid FETCH modifiers');
    for (let i = 0; i < mods.length; i++) {
      if (is(mods[i], 'CHANGEDSINCE')) {
        changedSince = number(mods[++i]);
        if (changedSince === undefined) throw new CommandError('BAD', 'CHANGEDSINCE needs a MODSEQ');
      } else if (is(mods[i], 'VANISHED')) vanished = true;
      else throw new CommandError('BAD', 'Unknown FETCH modifier');
    }
  }
  return { items, ...(changedSince !== undefined ? { changedSince } : {}), vanished };
}

function parseSection(v: Atom, name: string): SectionItem {
  if (name !== 'BODY' && name !== 'BODY.PEEK') throw new CommandError('BAD', `${name.slice(0, 20)}[...] is not supported (BODY[...] and BODY.PEEK[...] are)`);
  const spec = v.section ?? [];
  const head = spec.length ? text(spec[0]) : '';
  if (head === undefined) throw new CommandError('BAD', 'Invalid section');
  const pieces = head ? head.toUpperCase().split('.') : [];
  const part: number[] = [];
  while (pieces.length && /^\d+$/.test(pieces[0]!)) {
    const n = Number(pieces.shift());
    if (n < 1) throw new CommandError('BAD', 'Part numbers start at 1');
    part.push(n);
  }
  const section = pieces.join('.') as SectionKind;
  if (!['', 'HEADER', 'TEXT', 'MIME', 'HEADER.FIELDS', 'HEADER.FIELDS.NOT'].includes(section))
    throw new CommandError('BAD', `Unknown section ${head.slice(0, 30)}`);
  if (section === 'MIME' && !part.length) throw new CommandError('BAD', 'MIME needs a part number');
  let fields: string[] = [];
  if (section.startsWith('HEADER.FIELDS')) {
    const list = spec[1];
    if (!Array.isArray(list) || !list.length) throw new CommandError('BAD', `${section} needs a list of field names`);
    fields = list.map((f) => text(f) ?? '').filter(Boolean);
  }
  const sectionText = spec.length ? `${head.toUpperCase()}${fields.length ? ` (${fields.map((f) => f.toUpperCase()).join(' ')})` : ''}` : '';
  return {
    kind: 'section',
    label: `BODY[${sectionText}]`,
    part,
    section,
    fields,
    ...(v.partial ? { partial: v.partial } : {}),
    peek: name === 'BODY.PEEK',
  };
}

/**
 * What one FETCH command keeps from message to message: the storage's synchronous reader, taken
 * once (each `smallReader()` through the instrumented port is timed), a slab that small messages
 * are read into one after another, and the octets handed to the socket since it was last asked to
 * drain.
 */
interface FetchContext {
  small: SmallBlobReader | undefined;
  slab: Buffer;
  /** The first octet of `slab` not handed to the socket yet. */
  slabUsed: number;
  unflushed: number;
}

/** Runs a FETCH over `uids` (ascending) of the view. */
export async function runFetch(s: ImapSession, view: SelectedFolder, uids: number[], args: ImapValue[], byUid: boolean): Promise<void> {
  const { items, changedSince, vanished } = parseFetchItems(args);
  if (vanished && (!byUid || changedSince === undefined || !s.qresync))
    throw new CommandError('BAD', 'VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC');
  if (changedSince !== undefined || items.some((i) => i.kind === 'MODSEQ')) s.condstore = true;
  if (byUid && !items.some((i) => i.kind === 'UID')) items.unshift({ kind: 'UID' });
  if (s.condstore && changedSince !== undefined && !items.some((i) => i.kind === 'MODSEQ')) items.push({ kind: 'MODSEQ' });
  let wanted = uids.filter((u) => !view.isExpunged(u));
  if (changedSince !== undefined) wanted = wanted.filter((u) => (view.entry(u)?.modseq ?? 0) > changedSince);

  // The view knows each message's flags, size, date and blob; only the structure (ENVELOPE,
  // BODYSTRUCTURE, a part of the body) needs the message's item.
  const needsItem = items.some(needsStructure);
  const setsSeen = !view.readOnly && items.some((i) => i.kind === 'section' && !i.peek);
  if (setsSeen) {
    // RFC 9051 §6.4.5: fetching a body without PEEK sets \Seen; the new flags go in the response.
    const unseen = wanted.filter((u) => !view.entry(u)!.flags.includes('\\Seen'));
    if (unseen.length) {
      const r = await s.services.folders.storeFlags(s.user, view.folder.id, unseen, { mode: 'add', flags: ['\\Seen'] });
      for (const u of r.updated) view.noteOwnFlags(u.uid, u.flags, u.modseq);
      if (!items.some((i) => i.kind === 'FLAGS')) items.push({ kind: 'FLAGS' });
    }
  }

  const ctx: FetchContext = { small: s.services.blobs.smallReader?.(), slab: Buffer.alloc(0), slabUsed: 0, unflushed: 0 };
  for (let i = 0; i < wanted.length; i += PAGE) {
    const chunk = wanted.slice(i, i + PAGE);
    const loaded = needsItem ? await loadMessages(s, view, chunk) : undefined;
    if (loaded) for (const m of loaded.values()) view.keepSearchFields(m.uid, m.summary);
    for (const uid of chunk) {
      const m = loaded?.get(uid);
      if (needsItem && !m) continue; // expunged under us; its EXPUNGE follows
      await writeOne(s, view, uid, m, items, ctx);
    }
  }
}

/** Octets handed to the socket between two waits for it to drain (server.ts sends at FLUSH_BYTES). */
const DRAIN_EVERY = 64 * 1024;
/** The slab small messages are read into; a message that does not fit starts a new one. */
const SLAB_BYTES = 512 * 1024;
/** Room beyond a message's size for its blob file's header (fs-blobs.ts reads both at once). */
const READ_SLACK = 8 * 1024;

/**
 * Lets the socket drain once enough was written since the last time: waiting after every message
 * was a trip through the microtask queue per message for nothing (server.ts only sends once
 * FLUSH_BYTES are waiting).
 */
async function drainSometimes(s: ImapSession, ctx: FetchContext, written: number): Promise<void> {
  ctx.unflushed += written;
  if (ctx.unflushed < DRAIN_EVERY) return;
  ctx.unflushed = 0;
  await s.out.drained();
}

/**
 * A small message read whole into the command's slab, synchronously, or undefined when the
 * storage cannot or the message is larger. The bytes stay valid: the slab is only written past
 * them, and a new slab is taken when the rest is too short.
 */
function readSmall(ctx: FetchContext, m: { blobKey: string; size: number }): Buffer | undefined {
  if (!ctx.small || m.size > SMALL_READ_BYTES) return undefined;
  const room = m.size + READ_SLACK;
  if (ctx.slab.length - ctx.slabUsed < room) {
    ctx.slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, room));
    ctx.slabUsed = 0;
  }
  const into = ctx.slab.subarray(ctx.slabUsed);
  const got = ctx.small.readSmallSync(m.blobKey, { maxBytes: SMALL_READ_BYTES, sizeHint: m.size, into });
  // The header sits before the body in `into`; everything up to the body's end is used.
  if (got && got.buffer === ctx.slab.buffer) ctx.slabUsed = got.byteOffset - ctx.slab.byteOffset + got.length;
  return got;
}

/** True for the items that need the message's stored structure. */
function needsStructure(i: FetchItem): boolean {
  return i.kind === 'ENVELOPE' || i.kind === 'BODYSTRUCTURE' || i.kind === 'BODY' || (i.kind === 'section' && (i.part.length > 0 || i.section !== ''));
}

/** The stored items of `uids`: a range query when they are dense, point reads otherwise. */
async function loadMessages(s: ImapSession, view: SelectedFolder, uids: number[]): Promise<Map<number, FolderMessage>> {
  const out = new Map<number, FolderMessage>();
  const first = uids[0]!;
  const last = uids[uids.length - 1]!;
  const folders = s.services.folders;
  if (last - first < uids.length * 2) {
    const want = new Set(uids);
    let cursor: string | undefined;
    do {
      const page = await folders.messages(s.user, view.folder.id, { from: first, to: last, cursor, limit: PAGE * 2 });
      for (const m of page.items) if (want.has(m.uid)) out.set(m.uid, m);
      cursor = page.cursor;
    } while (cursor);
  } else {
    const got = await Promise.all(uids.map((u) => folders.get(s.user, view.folder.id, u)));
    for (const m of got) if (m) out.set(m.uid, m);
  }
  return out;
}

async function writeOne(s: ImapSession, view: SelectedFolder, uid: number, m: FolderMessage | undefined, items: FetchItem[], ctx: FetchContext): Promise<void> {
  const entry = view.entry(uid)!;
  let structure: ImapStructure | undefined;
  if (m) structure = await structureOf(s, view, m);
  const out = s.out;
  // One write per response (a body literal aside): a sync of 10,000 messages otherwise hands the
  // socket some 150,000 small pieces.
  let text = `* ${view.seqOf(uid)} FETCH (`;
  let sep = '';
  for (const item of items) {
    text += sep;
    sep = ' ';
    switch (item.kind) {
      case 'UID':
        text += `UID ${uid}`;
        break;
      case 'FLAGS':
        text += `FLAGS ${flagList(entry.flags)}`;
        break;
      case 'MODSEQ':
        text += `MODSEQ (${entry.modseq})`;
        break;
      case 'INTERNALDATE':
        text += `INTERNALDATE ${formatDateTime(new Date(entry.receivedAt))}`;
        break;
      case 'RFC822.SIZE':
        text += `RFC822.SIZE ${entry.size}`;
        break;
      case 'ENVELOPE':
        text += `ENVELOPE ${structure!.envelope}`;
        break;
      case 'BODYSTRUCTURE':
        text += `BODYSTRUCTURE ${structure!.bodystructure}`;
        break;
      case 'BODY':
        text += `BODY ${structure!.body}`;
        break;
      case 'section':
        out.write(text);
        text = '';
        await writeSection(s, entry, structure, item, ctx);
        break;
    }
  }
  out.write(`${text})\r\n`);
  await drainSometimes(s, ctx, text.length);
}

/**
 * The stored structure, or one made from the blob now and kept with the message when it is small
 * enough (mail delivered before the structure was stored is parsed once, not on every FETCH).
 */
async function structureOf(s: ImapSession, view: SelectedFolder, m: FolderMessage): Promise<ImapStructure> {
  const stored = m.summary?.imap as unknown as ImapStructure | undefined;
  if (stored && stored.v === 1) return stored;
  const { body } = await s.services.blobs.get(m.blobKey);
  const made = await imapStructure(body);
  if (Buffer.byteLength(JSON.stringify(made)) <= MAX_STORED_STRUCTURE_BYTES) {
    const summary = { ...(m.summary ?? {}), imap: made as unknown as AttrValue };
    await s.services.folders.rememberSummary(s.user, view.folder.id, m.uid, m.modseq, summary).catch((e: unknown) => {
      s.services.log.debug({ err: (e as Error).message }, 'could not keep the IMAP structure');
    });
  }
  return made;
}

async function writeSection(
  s: ImapSession,
  m: { blobKey: string; size: number },
  structure: ImapStructure | undefined,
  item: SectionItem,
  ctx: FetchContext,
): Promise<void> {
  const out = s.out;
  const partialLabel = item.partial ? `<${item.partial.start}>` : '';
  // The whole message needs no structure: its range is the blob.
  const range = !item.part.length && item.section === '' ? { start: 0, end: m.size } : structure ? sectionRange(structure, item.part, item.section) : undefined;
  if (!range) {
    out.write(`${item.label}${partialLabel} ""`);
    return;
  }
  if (item.section === 'HEADER.FIELDS' || item.section === 'HEADER.FIELDS.NOT') {
    const end = Math.min(range.end, range.start + MAX_HEADER_READ);
    const header =
      end > range.start ? await readAll((await s.services.blobs.get(m.blobKey, { range: { start: range.start, end: end - 1 } })).body) : Buffer.alloc(0);
    const filtered = applyPartial(filterHeaderFields(header, item.fields, item.section === 'HEADER.FIELDS.NOT'), item.partial);
    out.write(`${item.label}${partialLabel} {${filtered.length}}\r\n`);
    out.write(filtered);
    return;
  }
  let start = range.start;
  let length = range.end - range.start;
  if (item.partial) {
    const skip = Math.min(item.partial.start, length);
    start += skip;
    length = Math.min(length - skip, item.partial.length ?? Infinity);
  }
  if (length <= 0) {
    out.write(`${item.label}${partialLabel} {0}\r\n`);
    return;
  }
  // A small message is read whole in one synchronous call where the storage offers it (local
  // files): opening a stream per message is most of a FETCH's cost (docs/performance.md, IMAP).
  // Either way the bytes are in hand before the literal is announced: a message another session
  // expunged a moment ago (its blob gone) is answered NIL instead of a promise we cannot keep.
  let small: Buffer | undefined;
  let body: Readable;
  try {
    small = readSmall(ctx, m);
    if (small && small.length >= start + length) {
      out.write(`${item.label}${partialLabel} {${length}}\r\n`);
      out.write(small.subarray(start, start + length));
      await drainSometimes(s, ctx, length);
      return;
    }
    body = (await s.services.blobs.get(m.blobKey, { range: { start, end: start + length - 1 } })).body;
  } catch (e) {
    if (!isStorageError(e, 'NotFound')) throw e;
    out.write(`${item.label}${partialLabel} NIL`);
    return;
  }
  out.write(`${item.label}${partialLabel} {${length}}\r\n`);
  let sent = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    const piece = sent + chunk.length > length ? chunk.subarray(0, length - sent) : chunk;
    out.write(piece);
    sent += piece.length;
    await out.drained();
    if (sent >= length) break;
  }
  // The literal's size was promised: a blob shorter than its recorded size (damage) is padded so
  // the connection stays in step, and logged.
  if (sent < length) {
    s.services.log.error({ user: s.user, blobKey: m.blobKey, expected: length, sent }, 'message blob shorter than its section');
    out.write(Buffer.alloc(length - sent, 0x20));
  }
}

function applyPartial(b: Buffer, partial: SectionItem['partial']): Buffer {
  if (!partial) return b;
  const start = Math.min(partial.start, b.length);
  return b.subarray(start, partial.length === undefined ? b.length : start + partial.length);
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}
