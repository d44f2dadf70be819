/**
 * The IMAP commands on the messages of the selected folder (RFC 9051 §6.4): STORE, COPY, MOVE
 * (RFC 6851), EXPUNGE and UID EXPUNGE (UIDPLUS, RFC 4315), SEARCH and SORT (search.ts, sort.ts),
 * APPEND (to any folder), and QRESYNC's SELECT parameter (RFC 7162 §3.2.5). FETCH is fetch.ts.
 */
import { Readable } from 'node:stream';
import type { AttrValue } from '../../core/storage/ports.js';
import { flagList } from './protocol/encode.js';
import { is, isAtom, number, sequenceSet, sequenceText, text, type ImapValue } from './protocol/values.js';
import { runFetch } from './fetch.js';
import { BADCHARSET_CODE, parseSearch, runSearch, usesModseq, usesSummary, type MessageReader, type SearchMessage, type SearchProgram } from './search.js';
import { formatEsearch, formatSearch, savedResult } from './search-response.js';
import { formatSort, parseSort, sortMessages } from './sort.js';
import { searchedFields, type SelectedFolder } from './selected.js';
import { CommandError, type Command, type ImapSession, type Next } from './session.js';

/** An APPEND's message, streamed into blobs while its literal arrived (server.ts makes it). */
export interface AppendSource {
  size: number;
  /** Resolves once the message is durable, with its blob key and summary. */
  stored: Promise<{ blobKey: string; summary: Record<string, AttrValue> }>;
  /** The command failed before the message was filed: drop the blob. */
  discard(): void;
}

const SYSTEM_FLAGS = new Set(['\\seen', '\\answered', '\\flagged', '\\deleted', '\\draft']);

export class MessageCommands {
  constructor(private readonly s: ImapSession) {}

  private get view(): SelectedFolder {
    return this.s.selected!;
  }

  /** `UID FETCH|STORE|COPY|MOVE|SEARCH|SORT|EXPUNGE` (RFC 9051 §6.4.9). */
  async uid(c: Command): Promise<Next> {
    const sub = text(c.args[0])?.toUpperCase();
    const rest: Command = { ...c, name: `UID ${sub}`, args: c.args.slice(1) };
    switch (sub) {
      case 'FETCH':
        return this.fetch(rest, true);
      case 'STORE':
        return this.store(rest, true);
      case 'COPY':
        return this.copy(rest, true, false);
      case 'MOVE':
        return this.copy(rest, true, true);
      case 'SEARCH':
        return this.search(rest, true);
      case 'SORT':
        return this.sort(rest, true);
      case 'EXPUNGE': {
        const set = sequenceSet(rest.args[0]);
        if (!set) throw new CommandError('BAD', 'UID EXPUNGE needs a UID set');
        return this.expunge(rest, this.view.resolve(set, true));
      }
      default:
        throw new CommandError('BAD', `Unknown UID command ${String(sub ?? '').slice(0, 20)}`);
    }
  }

  /** The UIDs a sequence-set argument names (`$` is the saved search result, RFC 5182). */
  uidsOf(arg: ImapValue | undefined, byUid: boolean): number[] {
    if (isAtom(arg) && arg.value === '$') return (this.s.savedSearch ?? []).filter((u) => this.view.seqOf(u) > 0);
    const set = sequenceSet(arg);
    if (!set) throw new CommandError('BAD', 'Invalid sequence set');
    const uids = this.view.resolve(set, byUid);
    if (!uids) throw new CommandError('BAD', 'Message number out of range');
    return uids;
  }

  async fetch(c: Command, byUid: boolean): Promise<Next> {
    const uids = this.uidsOf(c.args[0], byUid);
    await runFetch(this.s, this.view, uids, c.args.slice(1), byUid);
    return this.s.ok(c.tag, `${c.name} completed`, { allowExpunge: byUid });
  }

  /** STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.2). */
  async store(c: Command, byUid: boolean): Promise<Next> {
    const view = this.view;
    if (view.readOnly) throw new CommandError('NO', 'The folder is read-only (EXAMINE)', 'READ-ONLY');
    const uids = this.uidsOf(c.args[0], byUid);
    let i = 1;
    let unchangedSince: number | undefined;
    if (Array.isArray(c.args[i])) {
      const mods = c.args[i] as ImapValue[];
      if (!is(mods[0], 'UNCHANGEDSINCE') || number(mods[1]) === undefined) throw new CommandError('BAD', 'Unknown STORE modifier');
      unchangedSince = number(mods[1]);
      this.s.condstore = true;
      i++;
    }
    const op = text(c.args[i])?.toUpperCase() ?? '';
    const m = /^([+-]?)FLAGS(\.SILENT)?$/.exec(op);
    if (!m) throw new CommandError('BAD', 'STORE needs FLAGS, +FLAGS or -FLAGS');
    const raw = Array.isArray(c.args[i + 1]) ? (c.args[i + 1] as ImapValue[]) : c.args.slice(i + 1);
    const flags: string[] = [];
    for (const f of raw) {
      const t = text(f);
      if (t === undefined || !/^\\?[^\s()\]{%*"\\]+$/.test(t)) throw new CommandError('BAD', 'Invalid flag');
      if (t.startsWith('\\') && !SYSTEM_FLAGS.has(t.toLowerCase())) {
        if (t.toLowerCase() === '\\recent') continue;
        throw new CommandError('BAD', `Unknown system flag ${t.slice(0, 20)}`);
      }
      flags.push(t);
    }
    const mode = m[1] === '+' ? 'add' : m[1] === '-' ? 'remove' : 'replace';
    const live = uids.filter((u) => !view.isExpunged(u));
    const result = await this.s.services.folders.storeFlags(this.s.user, view.folder.id, live, {
      mode,
      flags,
      ...(unchangedSince !== undefined ? { unchangedSince } : {}),
    });
    for (const u of result.updated) view.noteOwnFlags(u.uid, u.flags, u.modseq);
    const modified = new Set(result.modified);
    if (!m[2] || this.s.condstore) {
      const changed = new Set(result.updated.map((u) => u.uid));
      for (const uid of live) {
        if (modified.has(uid)) continue;
        // .SILENT: RFC 7162 §3.2 still wants MODSEQ for what changed.
        if (m[2] && !changed.has(uid)) continue;
        const e = view.entry(uid)!;
        const parts = [`UID ${uid}`];
        if (!m[2]) parts.push(`FLAGS ${flagList(e.flags)}`);
        if (this.s.condstore) parts.push(`MODSEQ (${e.modseq})`);
        this.s.out.write(`* ${view.seqOf(uid)} FETCH (${parts.join(' ')})\r\n`);
      }
    }
    const code = modified.size ? `MODIFIED ${uidOrSeqText(view, [...modified], byUid)}` : undefined;
    return this.s.ok(c.tag, `${c.name} completed`, { allowExpunge: byUid, ...(code ? { code } : {}) });
  }

  /** COPY (RFC 9051 §6.4.7) and MOVE (RFC 6851), with COPYUID (RFC 4315). */
  async copy(c: Command, byUid: boolean, move: boolean): Promise<Next> {
    const view = this.view;
    if (move && view.readOnly) throw new CommandError('NO', 'The folder is read-only (EXAMINE)', 'READ-ONLY');
    const uids = this.uidsOf(c.args[0], byUid).filter((u) => !view.isExpunged(u));
    const name = this.s.clientName(c.args[1]);
    const target = await this.s.findFolder(name);
    if (!target) throw new CommandError('NO', `No folder ${name}`, 'TRYCREATE');
    if (!uids.length) return this.s.ok(c.tag, `${c.name} completed (nothing to ${move ? 'move' : 'copy'})`);
    const folders = this.s.services.folders;
    const { pairs } =
      target.id === view.folder.id && move
        ? { pairs: [] as [number, number][] }
        : move
          ? await folders.move(this.s.user, view.folder.id, uids, target.id)
          : await folders.copy(this.s.user, view.folder.id, uids, target.id);
    const status = await folders.status(this.s.user, target.id);
    const copyUid = pairs.length ? `COPYUID ${status.uidValidity} ${sequenceText(pairs.map((p) => p[0]))} ${sequenceText(pairs.map((p) => p[1]))}` : undefined;
    if (!move) return this.s.ok(c.tag, `${c.name} completed`, { allowExpunge: byUid, ...(copyUid ? { code: copyUid } : {}) });
    // MOVE: the COPYUID goes untagged before the expunges (RFC 6851 §4.3).
    if (copyUid) this.s.out.write(`* OK [${copyUid}] Moved\r\n`);
    this.announceExpunged(pairs.map((p) => p[0]));
    return this.s.ok(c.tag, `${c.name} completed`);
  }

  /** Removes `uids` from the view and tells the client, in the style it enabled. */
  private announceExpunged(uids: number[]): void {
    const view = this.view;
    const sorted = [...uids].filter((u) => view.seqOf(u) > 0).sort((a, b) => a - b);
    if (!sorted.length) return;
    if (this.s.qresync) this.s.out.write(`* VANISHED ${sequenceText(sorted)}\r\n`);
    else for (const u of [...sorted].reverse()) this.s.out.write(`* ${view.seqOf(u)} EXPUNGE\r\n`);
    view.dropOwn(sorted);
  }

  /** EXPUNGE, or UID EXPUNGE of `only` (RFC 4315 §2.1). */
  async expunge(c: Command, only: number[] | undefined): Promise<Next> {
    if (this.view.readOnly) throw new CommandError('NO', 'The folder is read-only (EXAMINE)', 'READ-ONLY');
    const gone = await this.expungeDeleted(this.view, only);
    this.announceExpunged(gone);
    return this.s.ok(c.tag, `${c.name} completed`);
  }

  /** Expunges the messages flagged \Deleted (of `only`, when given); returns their UIDs. */
  async expungeDeleted(view: SelectedFolder, only: number[] | undefined): Promise<number[]> {
    await view.refresh();
    const candidates = only ?? view.allUids;
    const deleted = candidates.filter((u) => !view.isExpunged(u) && view.entry(u)?.flags.includes('\\Deleted'));
    if (deleted.length) await this.s.services.folders.expunge(this.s.user, view.folder.id, deleted);
    return deleted;
  }

  /** The messages of the view as SEARCH and SORT read them, and a reader of their bytes. */
  private async searchable(withSummary: boolean): Promise<{ messages: SearchMessage[]; reader: MessageReader }> {
    const view = this.view;
    // Flags as they are now, not as of the last command (their FETCH updates go out with the OK).
    await view.refresh();
    // A program of flags, UIDs, sizes, dates, HEADER, BODY or TEXT reads no summary field: its
    // first run in a session (UNSEEN at every sync) need not read every message item.
    const fields = withSummary ? await this.searchFields(view) : undefined;
    const messages: SearchMessage[] = [];
    for (const uid of view.allUids) {
      const e = view.entry(uid)!;
      const summary = fields ? fields.get(uid) : NO_SUMMARY;
      if (view.isExpunged(uid) || !summary) continue;
      messages.push({ seq: view.seqOf(uid), uid, flags: [...e.flags], internalDate: new Date(e.receivedAt), size: e.size, modseq: e.modseq, summary });
    }
    const blobs = this.s.services.blobs;
    const reader: MessageReader = {
      header: async (msg) => readHeader(await blobs.get(view.entry(msg.uid)!.blobKey, { range: { start: 0, end: 256 * 1024 - 1 } })),
      raw: async (msg) => {
        // A small message in one synchronous read where the storage offers it, as FETCH does.
        const e = view.entry(msg.uid)!;
        const small =
          e.size <= SMALL_READ_BYTES ? blobs.smallReader?.()?.readSmallSync(e.blobKey, { maxBytes: SMALL_READ_BYTES, sizeHint: e.size }) : undefined;
        return small ? Readable.from([small]) : (await blobs.get(e.blobKey)).body;
      },
    };
    const smallReader = blobs.smallReader?.();
    if (smallReader) {
      // One buffer for the whole search, read into again for each message (runSearch copies what
      // it keeps): 10,000 messages otherwise make 10,000 buffers for the collector.
      let scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
      reader.small = (msg) => {
        const e = view.entry(msg.uid)!;
        if (e.size > SMALL_READ_BYTES) return undefined;
        if (e.size + SCRATCH_SLACK > scratch.length) scratch = Buffer.allocUnsafe(e.size + SCRATCH_SLACK);
        return smallReader.readSmallSync(e.blobKey, { maxBytes: SMALL_READ_BYTES, sizeHint: e.size, into: scratch });
      };
    }
    return { messages, reader };
  }

  /**
   * The summary fields SEARCH and SORT read, per message of the view: read from the store once per
   * session and kept (they never change for a message), so a client's next search reads nothing
   * but the messages it must open. New messages are read as they join the view.
   */
  private async searchFields(view: SelectedFolder): Promise<Map<number, Record<string, AttrValue>>> {
    const cache = (view.searchFields ??= new Map());
    const missing = view.allUids.filter((u) => !cache.has(u));
    if (missing.length > 200) {
      for await (const m of this.s.services.folders.entries(this.s.user, view.folder.id)) if (!cache.has(m.uid)) cache.set(m.uid, searchedFields(m.summary));
    } else if (missing.length) {
      const items = await Promise.all(missing.map((u) => this.s.services.folders.get(this.s.user, view.folder.id, u)));
      for (const m of items) if (m) cache.set(m.uid, searchedFields(m.summary));
    }
    return cache;
  }

  /** SEARCH (RFC 9051 §6.4.4), ESEARCH results (RFC 4731) and SAVE (RFC 5182). */
  async search(c: Command, byUid: boolean): Promise<Next> {
    const parsed = parseSearch(c.args, { utf8: this.s.enabled.has('UTF8=ACCEPT') });
    if ('error' in parsed) throw new CommandError(parsed.badCharset ? 'NO' : 'BAD', parsed.error, parsed.badCharset ? BADCHARSET_CODE : undefined);
    const found = await this.runProgram(parsed.program, usesSummary(parsed.program));
    const modseq = usesModseq(parsed.program);
    if (modseq) this.s.condstore = true;
    const options = parsed.returnOptions;
    const saved = savedResult(found, options);
    if (saved) this.s.savedSearch = saved;
    // IMAP4rev2 answers every SEARCH with ESEARCH (RFC 9051 §6.4.4).
    const line =
      options !== undefined || this.s.rev2 ? formatEsearch(c.tag, byUid, found, options ?? ['ALL'], { modseq }) : formatSearch(byUid, found, { modseq });
    if (line) this.s.out.write(`${line}\r\n`);
    return this.s.ok(c.tag, `${c.name} completed`, { allowExpunge: byUid });
  }

  /** SORT (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO). */
  async sort(c: Command, byUid: boolean): Promise<Next> {
    const parsed = parseSort(c.args, { utf8: this.s.enabled.has('UTF8=ACCEPT') });
    if ('error' in parsed) throw new CommandError(parsed.badCharset ? 'NO' : 'BAD', parsed.error, parsed.badCharset ? BADCHARSET_CODE : undefined);
    const found = await this.runProgram(parsed.program, true);
    const modseq = usesModseq(parsed.program);
    if (modseq) this.s.condstore = true;
    this.s.out.write(`${formatSort(byUid, sortMessages(found, parsed.criteria), { modseq })}\r\n`);
    return this.s.ok(c.tag, `${c.name} completed`, { allowExpunge: byUid });
  }

  private async runProgram(program: SearchProgram, withSummary: boolean): Promise<SearchMessage[]> {
    const view = this.view;
    const { messages, reader } = await this.searchable(withSummary);
    return runSearch(program, messages, reader, { maxSeq: view.exists, maxUid: view.maxUid, saved: this.s.savedSearch, now: new Date() });
  }

  /**
   * APPEND (RFC 9051 §6.3.12) with APPENDUID (RFC 4315): the OK only once the message and its
   * folder entry are durable.
   */
  async append(c: Command): Promise<Next> {
    const source = c.append;
    if (!source) throw new CommandError('BAD', 'APPEND needs a message literal');
    try {
      const folder = await this.s.findFolder(this.s.clientName(c.args[0]));
      if (!folder) throw new CommandError('NO', 'No such folder', 'TRYCREATE');
      let flags: string[] = [];
      let date: Date | undefined;
      for (const a of c.args.slice(1, -1)) {
        if (Array.isArray(a)) flags = a.map((f) => text(f) ?? '').filter((f) => f && f.toLowerCase() !== '\\recent');
        else if (typeof a === 'string') {
          date = parseDateTime(a);
          if (!date) throw new CommandError('BAD', 'Invalid date-time (e.g. "07-Dec-2026 10:00:00 +0000")');
        }
      }
      if (flags.some((f) => f.startsWith('\\') && !SYSTEM_FLAGS.has(f.toLowerCase()))) throw new CommandError('BAD', 'Unknown system flag');
      const stored = await source.stored;
      const r = await this.s.services.folders.append(this.s.user, folder.id, {
        blobKey: stored.blobKey,
        size: source.size,
        receivedAt: (date ?? new Date()).toISOString(),
        summary: stored.summary,
        flags,
      });
      const status = await this.s.services.folders.status(this.s.user, folder.id);
      return this.s.ok(c.tag, 'APPEND completed', { code: `APPENDUID ${status.uidValidity} ${r.uid}`, refresh: this.s.selected?.folder.id === folder.id });
    } catch (e) {
      source.discard();
      throw e;
    }
  }

  /**
   * SELECT ... (QRESYNC (uidvalidity modseq [known-uids])): what changed since the client's
   * MODSEQ, as VANISHED (EARLIER) and FETCH lines. The vanished set is every UID the client may
   * know (up to the largest known, or 1:UIDNEXT-1) that is not in the folder now: exact, and
   * needs no history.
   */
  async qresyncSelect(view: SelectedFolder, params: ImapValue[]): Promise<void> {
    const validity = number(params[0]);
    const since = number(params[1]);
    if (validity === undefined || since === undefined) throw new CommandError('BAD', 'QRESYNC needs uidvalidity and modseq');
    if (validity !== view.uidValidity) return; // the client must resync from scratch
    const knownSet = sequenceSet(params[2]);
    const present = new Set(view.allUids);
    const top = knownSet
      ? Math.min(view.uidNext - 1, Math.max(...knownSet.map((r) => (r.to === '*' ? view.uidNext - 1 : Math.max(Number(r.from), Number(r.to))))))
      : view.uidNext - 1;
    const vanished: number[] = [];
    for (let u = 1; u <= top && vanished.length < 1_000_000; u++) if (!present.has(u)) vanished.push(u);
    if (vanished.length) this.s.out.write(`* VANISHED (EARLIER) ${sequenceText(vanished)}\r\n`);
    for (const uid of view.allUids) {
      const e = view.entry(uid)!;
      if (e.modseq > since) this.s.out.write(`* ${view.seqOf(uid)} FETCH (UID ${uid} FLAGS ${flagList(e.flags)} MODSEQ (${e.modseq}))\r\n`);
    }
  }
}

/** The summary of every message to a search whose program reads none (usesSummary). */
const NO_SUMMARY: Record<string, AttrValue> = Object.freeze({});

/** Messages up to this size are read whole and synchronously by a search where the storage can. */
const SMALL_READ_BYTES = 256 * 1024;
/** A search's read buffer to begin with, and the room beyond a message for its blob file's header. */
const SCRATCH_BYTES = 64 * 1024;
const SCRATCH_SLACK = 8 * 1024;

/** UIDs (or their sequence numbers) as a set text. */
function uidOrSeqText(view: SelectedFolder, uids: number[], byUid: boolean): string {
  return sequenceText(byUid ? uids : uids.map((u) => view.seqOf(u)));
}

/** The header block of a message: bytes up to and including the first empty line. */
async function readHeader(got: { body: NodeJS.ReadableStream }): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of got.body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    const all = Buffer.concat(chunks, size);
    const end = headerEnd(all);
    if (end >= 0) {
      (got.body as unknown as { destroy?: () => void }).destroy?.();
      return all.subarray(0, end);
    }
  }
  return Buffer.concat(chunks, size);
}

function headerEnd(b: Buffer): number {
  const crlf = b.indexOf('\r\n\r\n');
  const lf = b.indexOf('\n\n');
  if (crlf >= 0 && (lf < 0 || crlf < lf)) return crlf + 4;
  return lf >= 0 ? lf + 2 : -1;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 9051 `date-time`: `"07-Dec-2026 10:00:00 +0100"` (day may be space-padded). */
export function parseDateTime(s: string): Date | undefined {
  const m = /^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$/.exec(s);
  if (!m) return undefined;
  const month = MONTHS.findIndex((x) => x.toLowerCase() === m[2]!.toLowerCase());
  if (month < 0) return undefined;
  const offset = (m[7] === '-' ? -1 : 1) * (Number(m[8]) * 60 + Number(m[9]));
  const t = Date.UTC(Number(m[3]), month, Number(m[1]!.trim()), Number(m[4]), Number(m[5]), Number(m[6])) - offset * 60_000;
  return Number.isFinite(t) ? new Date(t) : undefined;
}

/** INTERNALDATE as RFC 9051 writes it, in UTC. */
export function formatDateTime(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `"${p(d.getUTCDate())}-${MONTHS[d.getUTCMonth()]}-${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000"`;
}
