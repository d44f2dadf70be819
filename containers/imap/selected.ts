/**
 * The selected folder as one IMAP session sees it (RFC 9051 §2.3.1.2): the message sequence
 * numbers it has announced, each message's UID, flags and MODSEQ, and the changes other sessions,
 * POP3 and delivery made since, waiting for the moment the protocol allows them to be told.
 *
 * Changes come from the user's change log (core/mailbox/changes.ts), read from the position the
 * view was built at, never by re-listing the folder: a refresh costs one query of the log's tail
 * plus one item read per message that changed. Only when the log no longer reaches back that far
 * (past its horizon) is the folder listed again and compared.
 *
 * Memory: per message a UID, a flags array (shared between messages with the same flags) and a
 * MODSEQ; a 100,000-message folder holds a few MB. Bodies and whole summaries are never kept;
 * the few summary fields SEARCH reads are, once a search or a FETCH of structure made them.
 */
import type { ChangeLog } from '../../core/mailbox/changes.js';
import type { AttrValue } from '../../core/storage/ports.js';
import type { FolderInfo, FolderMessage, FolderStore } from '../../core/mailbox/folders.js';
import { flagList } from './protocol/encode.js';
import { inSequenceSet, sequenceText, type SequenceSet } from './protocol/values.js';

/** What the view keeps of one message. */
export interface ViewEntry {
  uid: number;
  flags: readonly string[];
  modseq: number;
  /** Where the raw message is, its size and INTERNALDATE: enough for FETCH of whole bodies, sizes
   * and dates without reading the message's item again (docs/performance.md, IMAP). */
  blobKey: string;
  size: number;
  receivedAt: string;
}

/** The largest folder whose search fields a FETCH keeps (a few hundred octets a message). */
const KEEP_FROM_FETCH_MAX = 20_000;

/** The summary fields SEARCH and SORT read; the rest (structure, parts, preview) is left behind so
 * a search over a big folder holds a few hundred bytes per message, not the whole summary. */
const SEARCHED_FIELDS = ['subject', 'from', 'fromAddress', 'to', 'cc', 'date', 'messageId', 'trimmed'];
export function searchedFields(summary: Record<string, AttrValue> | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {};
  for (const k of SEARCHED_FIELDS) if (summary?.[k] !== undefined) out[k] = summary[k]!;
  return out;
}

/** How the session wants updates worded (what the client ENABLEd). */
export interface UpdateStyle {
  /** RFC 7162: MODSEQ in unsolicited FETCH responses. */
  condstore: boolean;
  /** RFC 7162 §3.2.10: VANISHED instead of EXPUNGE. */
  qresync: boolean;
}

/** The folder's state in the store went away (deleted or renamed by another session). */
export class FolderGone extends Error {}

export class SelectedFolder {
  private uids: number[] = [];
  private readonly byUid = new Map<number, ViewEntry>();
  /** UIDs gone from the store, still numbered here until the client may be told. */
  private readonly expunged = new Set<number>();
  /** UIDs whose flags changed by someone else, not told yet. */
  private readonly flagsChanged = new Set<number>();
  /** The message count the client was told (EXISTS). */
  private announced = 0;
  /** The change log position this view reflects. */
  private position = 0;
  /** The highest MODSEQ of the folder as this view knows it. */
  highestModSeq = 0;
  uidNext = 1;
  uidValidity = 0;
  /** Set when the folder was deleted or renamed away under the session. */
  gone = false;
  /** SEARCH's per-message summary fields, made on the session's first search (messages.ts) or
   * kept from a FETCH that read the messages' items anyway (`keepSearchFields`). */
  searchFields: Map<number, Record<string, AttrValue>> | undefined;
  /** Interned flag arrays, so that 100,000 unseen messages share one. */
  private readonly flagSets = new Map<string, readonly string[]>();

  private constructor(
    private readonly store: FolderStore,
    private readonly log: ChangeLog,
    readonly user: string,
    readonly folder: FolderInfo,
    readonly readOnly: boolean,
  ) {}

  /** Builds the view: the log position first, then the listing, so no change falls between them. */
  static async open(store: FolderStore, log: ChangeLog, user: string, folder: FolderInfo, readOnly: boolean): Promise<SelectedFolder> {
    const view = new SelectedFolder(store, log, user, folder, readOnly);
    view.position = await log.position(user);
    await view.load();
    view.announced = view.uids.length;
    return view;
  }

  private async load(): Promise<void> {
    const status = await this.store.status(this.user, this.folder.id);
    this.uidNext = status.uidNext;
    this.uidValidity = status.uidValidity;
    this.highestModSeq = status.highestModSeq;
    const uids: number[] = [];
    this.byUid.clear();
    for await (const m of this.store.entries(this.user, this.folder.id)) {
      uids.push(m.uid);
      this.byUid.set(m.uid, this.entryOf(m));
    }
    this.uids = uids;
  }

  private entryOf(m: Pick<FolderMessage, 'uid' | 'flags' | 'modseq' | 'blobKey' | 'size' | 'receivedAt'>): ViewEntry {
    const key = m.flags.join(' ');
    let flags = this.flagSets.get(key);
    if (!flags) this.flagSets.set(key, (flags = Object.freeze([...m.flags])));
    return { uid: m.uid, flags, modseq: m.modseq, blobKey: m.blobKey, size: m.size, receivedAt: m.receivedAt };
  }

  /**
   * Keeps the fields SEARCH and SORT read of a message whose item a FETCH has in hand (ENVELOPE,
   * BODYSTRUCTURE): a client's first sync then leaves its first search nothing to read. Only in
   * folders of up to KEEP_FROM_FETCH_MAX messages, so that a session that never searches a big
   * folder does not hold them all; a search still makes them for any folder.
   */
  keepSearchFields(uid: number, summary: Record<string, AttrValue> | undefined): void {
    if (this.uids.length > KEEP_FROM_FETCH_MAX || !this.byUid.has(uid)) return;
    const cache = (this.searchFields ??= new Map());
    if (!cache.has(uid)) cache.set(uid, searchedFields(summary));
  }

  /** Messages the client knows of (the last EXISTS, plus expunged ones not yet told). */
  get exists(): number {
    return this.uids.length;
  }

  /** UIDs in sequence order (index + 1 is the sequence number). */
  get allUids(): readonly number[] {
    return this.uids;
  }

  get maxUid(): number {
    return this.uids.length ? this.uids[this.uids.length - 1]! : 0;
  }

  entry(uid: number): ViewEntry | undefined {
    return this.byUid.get(uid);
  }

  /** True when the message is gone from the store (expunged by someone else, not told yet). */
  isExpunged(uid: number): boolean {
    return this.expunged.has(uid);
  }

  /** The sequence number of `uid`, or 0. */
  seqOf(uid: number): number {
    let lo = 0;
    let hi = this.uids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = this.uids[mid]!;
      if (v === uid) return mid + 1;
      if (v < uid) lo = mid + 1;
      else hi = mid - 1;
    }
    return 0;
  }

  /**
   * The UIDs a sequence set names, ascending. By UID, `*` is the highest UID and numbers not in
   * the folder are ignored (RFC 9051 §6.4.9); by sequence number, numbers past EXISTS make the
   * set invalid (undefined: the caller answers BAD).
   */
  resolve(set: SequenceSet, byUid: boolean): number[] | undefined {
    const n = this.uids.length;
    if (byUid) {
      // Each range by binary search: a pipelined `UID FETCH 4711` on a big folder costs a lookup,
      // not a walk over the folder.
      const max = this.maxUid;
      const picked = new Set<number>();
      for (const r of set) {
        const a = r.from === '*' ? max : r.from;
        const b = r.to === '*' ? max : r.to;
        const [lo, hi] = a <= b ? [a, b] : [b, a];
        for (let i = this.lowerBound(lo); i < n && this.uids[i]! <= hi; i++) picked.add(this.uids[i]!);
      }
      return set.length === 1 ? [...picked] : [...picked].sort((x, y) => x - y);
    }
    for (const r of set) {
      for (const b of [r.from, r.to]) if (b !== '*' && (b < 1 || b > n)) return undefined;
    }
    if (n === 0) return set.every((r) => r.from === '*' && r.to === '*') ? [] : undefined;
    const out: number[] = [];
    for (let seq = 1; seq <= n; seq++) if (inSequenceSet(set, seq, n)) out.push(this.uids[seq - 1]!);
    return out;
  }

  /** The index of the first UID ≥ `uid`. */
  private lowerBound(uid: number): number {
    let lo = 0;
    let hi = this.uids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.uids[mid]! < uid) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Records this session's own flag change (its STORE), so a refresh does not report it back. */
  noteOwnFlags(uid: number, flags: string[], modseq: number): void {
    const e = this.byUid.get(uid);
    if (!e || e.modseq > modseq) return;
    this.byUid.set(uid, this.entryOf({ ...e, uid, flags, modseq }));
    this.flagsChanged.delete(uid);
    if (modseq > this.highestModSeq) this.highestModSeq = modseq;
  }

  /** Records this session's own expunge: the caller tells the client now (EXPUNGE or VANISHED). */
  dropOwn(uids: number[]): void {
    const gone = new Set(uids);
    this.uids = this.uids.filter((u) => !gone.has(u));
    for (const u of uids) {
      this.byUid.delete(u);
      this.searchFields?.delete(u);
      this.expunged.delete(u);
      this.flagsChanged.delete(u);
    }
    this.announced = Math.max(0, this.announced - uids.length);
  }

  /**
   * Reads what changed since the view's position and queues it for the client: new messages join
   * the view at once (their EXISTS is owed), flag changes and expunges wait for `updates`.
   */
  async refresh(): Promise<void> {
    // One at a time: an IDLE wake-up may still be reading when the next command refreshes.
    const run = this.refreshing.then(() => this.readChanges());
    this.refreshing = run.catch(() => undefined);
    return run;
  }

  private refreshing: Promise<void> = Promise.resolve();

  private async readChanges(): Promise<void> {
    for (;;) {
      const page = await this.log.since(this.user, this.position);
      if (page.tooOld) return this.resync();
      const added: number[] = [];
      /** Uids whose flags changed, with the MODSEQ of their latest flag change in the page. */
      const flagged = new Map<number, number>();
      for (const change of page.changes) {
        for (const e of change.entries) {
          if (e.folder !== this.folder.id) continue;
          if (e.kind === 'folder-delete') this.gone = true;
          else if (e.kind === 'append') added.push(...(e.uids ?? []));
          else if (e.kind === 'flags') for (const u of e.uids ?? []) flagged.set(u, Math.max(change.modseq, flagged.get(u) ?? 0));
          else if (e.kind === 'expunge') for (const u of e.uids ?? []) if (this.byUid.has(u)) this.expunged.add(u);
        }
        if (change.modseq > this.highestModSeq && change.entries.some((e) => e.folder === this.folder.id)) this.highestModSeq = change.modseq;
      }
      await this.admit(added);
      // A change the view already holds (this session's own STORE, noted with its MODSEQ) is not
      // read again: after a STORE of 1,000 messages the next NOOP or IDLE would read them all.
      await this.rereadFlags([...flagged].filter(([u, modseq]) => (this.byUid.get(u)?.modseq ?? modseq) < modseq && !this.expunged.has(u)).map(([u]) => u));
      // `more` with no progress: a young gap (a change still being written); the next refresh
      // picks it up.
      const moved = page.modseq !== this.position;
      this.position = page.modseq;
      if (!page.more || !moved) return;
    }
  }

  /** New messages: read and appended in UID order (the store commits them in that order). */
  private async admit(uids: number[]): Promise<void> {
    const fresh = [...new Set(uids)].filter((u) => !this.byUid.has(u) && u > this.maxUid).sort((a, b) => a - b);
    if (!fresh.length) return;
    const items = await Promise.all(fresh.map((u) => this.store.get(this.user, this.folder.id, u)));
    for (const m of items) {
      if (!m) continue; // appended then expunged before we looked
      this.uids.push(m.uid);
      this.byUid.set(m.uid, this.entryOf(m));
      if (m.uid >= this.uidNext) this.uidNext = m.uid + 1;
    }
  }

  private async rereadFlags(uids: number[]): Promise<void> {
    const items = await Promise.all(uids.map((u) => this.store.get(this.user, this.folder.id, u)));
    for (const m of items) {
      if (!m) continue;
      const before = this.byUid.get(m.uid);
      if (!before || m.modseq <= before.modseq) continue; // our own change, already told
      this.byUid.set(m.uid, this.entryOf(m));
      this.flagsChanged.add(m.uid);
    }
  }

  /** The log no longer reaches back to the view's position: list the folder and compare. */
  private async resync(): Promise<void> {
    const position = await this.log.position(this.user);
    const before = new Map(this.byUid);
    const shown = this.uids;
    await this.load();
    const now = new Set(this.uids);
    const max = shown.length ? shown[shown.length - 1]! : 0;
    // Keep the numbering the client knows: old UIDs stay until told, new ones follow.
    const kept = shown.filter((u) => {
      if (!now.has(u)) {
        this.expunged.add(u);
        this.byUid.set(u, before.get(u)!);
      }
      return true;
    });
    this.uids = [...kept, ...this.uids.filter((u) => u > max)];
    for (const u of kept) {
      const b = before.get(u);
      const a = this.byUid.get(u);
      if (b && a && now.has(u) && a.modseq !== b.modseq) this.flagsChanged.add(u);
    }
    this.position = position;
  }

  /**
   * The untagged lines owed to the client, in the order RFC 9051 §7 wants them. `allowExpunge`
   * is false during FETCH, STORE and SEARCH by sequence number (§7.5.1: numbers must not shift
   * under the client), and then expunged messages stay numbered.
   */
  updates(allowExpunge: boolean, style: UpdateStyle): string[] {
    const lines: string[] = [];
    if (allowExpunge && this.expunged.size) {
      const gone = [...this.expunged].sort((a, b) => a - b);
      if (style.qresync) {
        lines.push(`* VANISHED ${sequenceText(gone)}\r\n`);
        this.dropOwn(gone);
      } else {
        // Highest first, so each number is still right when the client reads it.
        for (const u of [...gone].reverse()) lines.push(`* ${this.seqOf(u)} EXPUNGE\r\n`);
        this.dropOwn(gone);
      }
    }
    if (this.uids.length !== this.announced) {
      if (this.uids.length > this.announced) lines.push(`* ${this.uids.length} EXISTS\r\n`);
      this.announced = this.uids.length;
    }
    for (const u of [...this.flagsChanged].sort((a, b) => a - b)) {
      const e = this.byUid.get(u);
      if (!e || this.expunged.has(u)) continue;
      const modseq = style.condstore ? ` MODSEQ (${e.modseq})` : '';
      lines.push(`* ${this.seqOf(u)} FETCH (UID ${u} FLAGS ${flagList(e.flags)}${modseq})\r\n`);
    }
    this.flagsChanged.clear();
    return lines;
  }
}
