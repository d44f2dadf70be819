/**
 * The webmail's state and the actions that change it. One store, one version counter: a
 * component that reads it re-renders when anything changes (the app is small enough that this is
 * cheaper to reason about than fine-grained subscriptions). Everything goes through the JMAP API:
 * the list is a window of Email/query pages fetched as they scroll into view, never the whole
 * mailbox.
 */
import { useEffect, useState } from 'preact/hooks';
import { SUMMARY_PROPERTIES, type EmailFull, type EmailSummary, type Id, type JmapClient, type Mailbox } from '../client/jmap-client.ts';
import type { WebSession } from './session.ts';

/** Rows per Email/query page. */
export const PAGE = 50;

export interface SearchFilter {
  text?: string;
  from?: string;
  to?: string;
  subject?: string;
  after?: string;
  before?: string;
  hasAttachment?: boolean;
}

export interface ComposeDraft {
  kind: 'new' | 'reply' | 'replyAll' | 'forward';
  to: string;
  cc: string;
  bcc: string;
  subject: string;
  body: string;
  inReplyTo: string[] | null;
  references: string[] | null;
  /** Attachments uploaded (or carried over from a forwarded message). */
  attachments: { blobId: Id; name: string; type: string; size: number }[];
  /** The draft Email saved on the server, replaced at every save. */
  draftId: Id | null;
  /** The message this replies to or forwards, to mark $answered / $forwarded on send. */
  sourceId: Id | null;
}

export type Dialog = 'move' | 'settings' | 'help' | 'newFolder' | 'renameFolder' | 'emptyTrash' | null;

type Listener = () => void;

export class Store {
  version = 0;
  mailboxes: Mailbox[] = [];
  currentMailbox: Id | null = null;
  search: SearchFilter | null = null;
  collapseThreads = false;
  total: number | null = null;
  /** Page index → the ids of that window of the query. */
  private pages = new Map<number, Id[]>();
  private loading = new Set<number>();
  /** Bumped when the query changes, so late answers for an old query are dropped. */
  private generation = 0;
  emails = new Map<Id, EmailSummary>();
  threadSizes = new Map<Id, number>();
  /** The row the keyboard cursor is on. */
  cursor: Id | null = null;
  open: EmailFull | null = null;
  /** The open Email's conversation, oldest first, when it has more than one message. */
  openThread: EmailSummary[] = [];
  openLoading: Id | null = null;
  compose: ComposeDraft | null = null;
  dialog: Dialog = null;
  /** Announced to screen readers (aria-live) and shown briefly. */
  status = '';
  error = '';
  /** Remote images allowed for these Emails (this page view only). */
  imagesAllowed = new Set<Id>();
  /** Phone layout: which pane shows. */
  pane: 'list' | 'reader' | 'folders' = 'list';
  private listeners = new Set<Listener>();
  private statusTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly client: JmapClient,
    readonly session: WebSession,
  ) {}

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  changed(): void {
    this.version++;
    for (const l of this.listeners) l();
  }

  say(text: string): void {
    this.status = text;
    this.error = '';
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => {
      this.status = '';
      this.changed();
    }, 4000);
    this.changed();
  }

  fail(e: unknown): void {
    this.error = e instanceof Error ? e.message : String(e);
    this.changed();
  }

  // ---------------------------------------------------------------------------------------------
  // Mailboxes

  byRole(role: string): Mailbox | undefined {
    return this.mailboxes.find((m) => m.role === role);
  }

  /** What people call a folder: the inbox is "Inbox" whatever IMAP calls it. */
  nameOf(m: Mailbox | undefined): string {
    if (!m) return '';
    return m.role === 'inbox' ? 'Inbox' : m.name;
  }

  mailbox(id: Id | null): Mailbox | undefined {
    return this.mailboxes.find((m) => m.id === id);
  }

  async loadMailboxes(): Promise<void> {
    const { list } = await this.client.mailboxes();
    const order = ['inbox', 'drafts', 'sent', 'archive', 'junk', 'trash'];
    const rank = (m: Mailbox) => (m.role && order.includes(m.role) ? order.indexOf(m.role) : order.length);
    this.mailboxes = list.sort((a, b) => rank(a) - rank(b) || a.sortOrder - b.sortOrder || a.name.localeCompare(b.name));
    if (!this.currentMailbox || !this.mailbox(this.currentMailbox)) this.currentMailbox = this.byRole('inbox')?.id ?? this.mailboxes[0]?.id ?? null;
    this.changed();
  }

  // ---------------------------------------------------------------------------------------------
  // The message list: a window over Email/query

  private queryArgs(): { filter: Record<string, unknown> | null; sort: { property: string; isAscending: boolean }[]; collapseThreads: boolean } {
    const sort = [{ property: 'receivedAt', isAscending: false }];
    if (this.search) {
      const s = this.search;
      const conditions: Record<string, unknown>[] = [];
      if (s.text) conditions.push({ text: s.text });
      if (s.from) conditions.push({ from: s.from });
      if (s.to) conditions.push({ to: s.to });
      if (s.subject) conditions.push({ subject: s.subject });
      if (s.after) conditions.push({ after: new Date(`${s.after}T00:00:00`).toISOString() });
      if (s.before) conditions.push({ before: new Date(`${s.before}T00:00:00`).toISOString() });
      if (s.hasAttachment) conditions.push({ hasAttachment: true });
      // Search every folder but Trash and Junk, as people expect of a mail search.
      const away = ['trash', 'junk'].map((r) => this.byRole(r)?.id).filter((x): x is Id => !!x);
      if (away.length) conditions.push({ inMailboxOtherThan: away });
      return { filter: conditions.length === 1 ? conditions[0] : { operator: 'AND', conditions }, sort, collapseThreads: this.collapseThreads };
    }
    return { filter: this.currentMailbox ? { inMailbox: this.currentMailbox } : null, sort, collapseThreads: this.collapseThreads };
  }

  /** Forgets the loaded windows (a new query, or a change that may move rows). */
  resetList(keepCursor = false): void {
    this.generation++;
    this.pages.clear();
    this.loading.clear();
    if (!keepCursor) {
      this.total = null;
      this.cursor = null;
    }
    this.changed();
  }

  /** The id at a position, or undefined while its page is not loaded (asks for it). */
  idAt(position: number): Id | undefined {
    const page = Math.floor(position / PAGE);
    const ids = this.pages.get(page);
    if (!ids) {
      void this.loadPage(page);
      return undefined;
    }
    return ids[position - page * PAGE];
  }

  /** The list position of a loaded id, or -1. */
  positionOf(id: Id): number {
    for (const [page, ids] of this.pages) {
      const i = ids.indexOf(id);
      if (i >= 0) return page * PAGE + i;
    }
    return -1;
  }

  /** Every loaded id in list order (for keyboard moves and selection). */
  loadedIds(): Id[] {
    const out: Id[] = [];
    for (const k of [...this.pages.keys()].sort((a, b) => a - b)) out.push(...this.pages.get(k)!);
    return out;
  }

  async loadPage(page: number): Promise<void> {
    if (this.loading.has(page) || this.pages.has(page)) return;
    this.loading.add(page);
    const gen = this.generation;
    try {
      const r = await this.client.queryPage(this.queryArgs(), page * PAGE, PAGE);
      if (gen !== this.generation) return;
      for (const e of r.emails) this.emails.set(e.id, e);
      for (const [t, n] of Object.entries(r.threadSizes)) this.threadSizes.set(t, n);
      this.pages.set(page, r.ids);
      this.total = r.total;
      if (this.cursor === null && page === 0 && r.ids.length) this.cursor = r.ids[0];
      this.changed();
    } catch (e) {
      if (gen === this.generation) this.fail(e);
    } finally {
      this.loading.delete(page);
    }
  }

  /** The positions the list shows now (set by the list as it scrolls). */
  visible: [first: number, last: number] = [0, PAGE];

  /**
   * Reloads the windows on screen (after a change pushed by the server or made here) and forgets
   * the others, which load again when scrolled to: a change costs one or two queries however far
   * the user has scrolled.
   */
  async refreshList(): Promise<void> {
    const [first, last] = this.visible;
    const shown = [...this.pages.keys()].filter((p) => p >= Math.floor(first / PAGE) && p <= Math.floor(last / PAGE));
    this.generation++;
    const gen = this.generation;
    const fresh = new Map<number, Id[]>();
    let total = this.total;
    try {
      for (const page of shown.length ? shown : [0]) {
        const r = await this.client.queryPage(this.queryArgs(), page * PAGE, PAGE);
        if (gen !== this.generation) return;
        for (const e of r.emails) this.emails.set(e.id, e);
        for (const [t, n] of Object.entries(r.threadSizes)) this.threadSizes.set(t, n);
        fresh.set(page, r.ids);
        total = r.total;
      }
    } catch (e) {
      return this.fail(e);
    }
    this.pages = fresh;
    this.loading.clear();
    this.total = total;
    const ids = this.loadedIds();
    if (this.cursor && !ids.includes(this.cursor)) this.cursor = ids[0] ?? null;
    this.changed();
  }

  openMailbox(id: Id): void {
    this.currentMailbox = id;
    this.search = null;
    this.open = null;
    this.pane = 'list';
    this.resetList();
  }

  setSearch(filter: SearchFilter | null): void {
    const empty = !filter || Object.values(filter).every((v) => v === undefined || v === '' || v === false);
    this.search = empty ? null : filter;
    this.open = null;
    this.pane = 'list';
    this.resetList();
  }

  setCollapse(on: boolean): void {
    this.collapseThreads = on;
    this.resetList();
  }

  // ---------------------------------------------------------------------------------------------
  // Reading

  /** Emails whose keywords the user changed while they were opening: opening does not mark those read. */
  private touched = new Set<Id>();
  /** The Email just shown, until its mark-read is due (after the paint). */
  private settling: Id | null = null;
  /**
   * Emails fetched for the reader, newest last. An Email's content never changes (its id names
   * its bytes), so a cached one is good until evicted; its keywords and folders are taken from
   * the list's fresher summary when shown.
   */
  private bodies = new Map<Id, Promise<EmailFull | undefined>>();

  /** Starts fetching an Email for the reader (on pointer down, and for the next one after an open). */
  prefetch(id: Id): Promise<EmailFull | undefined> {
    let p = this.bodies.get(id);
    if (p) {
      this.bodies.delete(id);
    } else {
      p = this.client.email(id);
      // A failed fetch is not kept: the next open asks again.
      p.catch(() => this.bodies.delete(id));
    }
    this.bodies.set(id, p);
    while (this.bodies.size > 50) this.bodies.delete(this.bodies.keys().next().value!);
    return p;
  }

  async openEmail(id: Id): Promise<void> {
    this.touched.delete(id);
    this.cursor = id;
    this.openLoading = id;
    this.pane = 'reader';
    this.changed();
    try {
      const fetched = await this.prefetch(id);
      if (this.openLoading !== id) return;
      const summary = this.emails.get(id);
      const email = fetched && summary ? { ...fetched, keywords: summary.keywords, mailboxIds: summary.mailboxIds } : fetched;
      this.open = email ?? null;
      this.openLoading = null;
      this.openThread = [];
      if (!email) return this.fail('That message is gone.');
      this.changed();
      // The message is painted before anything else an open sets off (the conversation, the next
      // message's fetch, the mark-read and the push refresh it causes) asks the server or the page
      // for time.
      this.settling = id;
      await afterPaint();
      if (this.settling === id) this.settling = null;
      if ((this.threadSizes.get(email.threadId) ?? 1) > 1 || this.collapseThreads) void this.loadThread(email.threadId, id);
      // The next message is likely the next one read (j, or archive and move on).
      const at = this.positionOf(id);
      const next = at >= 0 ? this.idAt(at + 1) : undefined;
      if (next) void this.prefetch(next).catch(() => undefined);
      if (!email.keywords.$seen && !email.keywords.$draft && !this.touched.has(id)) await this.setKeyword([id], '$seen', true);
    } catch (e) {
      this.openLoading = null;
      this.fail(e);
    }
  }

  /** The other messages of a conversation, for the reader's list of them. */
  private async loadThread(threadId: Id, openId: Id): Promise<void> {
    try {
      const r = await this.client.run([
        ['Thread/get', { accountId: this.client.accountId, ids: [threadId] }, 't'],
        [
          'Email/get',
          { accountId: this.client.accountId, '#ids': { resultOf: 't', name: 'Thread/get', path: '/list/*/emailIds' }, properties: SUMMARY_PROPERTIES },
          'g',
        ],
      ]);
      if (this.open?.id !== openId) return;
      const list = (r.g as { list: EmailSummary[] }).list;
      this.openThread = list.length > 1 ? list.sort((a, b) => a.receivedAt.localeCompare(b.receivedAt)) : [];
      this.changed();
    } catch (e) {
      this.fail(e);
    }
  }

  closeEmail(): void {
    this.open = null;
    this.pane = 'list';
    this.changed();
  }

  /** The Emails an action applies to: the open one, else the one under the cursor. */
  targets(): Id[] {
    const id = this.open?.id ?? this.cursor;
    return id ? [id] : [];
  }

  // ---------------------------------------------------------------------------------------------
  // Organising

  async setKeyword(ids: Id[], keyword: string, on: boolean): Promise<void> {
    if (!ids.length) return;
    if (this.openLoading || this.settling) for (const id of ids) this.touched.add(id);
    // Shown at once; the server's answer (or the push after it) confirms.
    for (const id of ids) {
      const e = this.emails.get(id);
      if (e) {
        const keywords = { ...e.keywords };
        if (on) keywords[keyword] = true;
        else delete keywords[keyword];
        this.emails.set(id, { ...e, keywords });
      }
      if (this.open?.id === id) {
        const keywords = { ...this.open.keywords };
        if (on) keywords[keyword] = true;
        else delete keywords[keyword];
        this.open = { ...this.open, keywords };
      }
    }
    this.changed();
    try {
      await this.client.updateEmails(Object.fromEntries(ids.map((id) => [id, { [`keywords/${keyword}`]: on ? true : null }])));
      await this.loadMailboxes();
    } catch (e) {
      this.fail(e);
      await this.refreshList();
    }
  }

  /** Moves Emails out of the open folder (or out of wherever they are, in a search) into `to`. */
  async move(ids: Id[], to: Id, verb = 'Moved'): Promise<void> {
    if (!ids.length) return;
    const target = this.mailbox(to);
    const patches: Record<Id, Record<string, unknown>> = {};
    for (const id of ids) patches[id] = { mailboxIds: { [to]: true } };
    const next = this.nextAfter(ids);
    try {
      await this.client.updateEmails(patches);
      if (this.open && ids.includes(this.open.id)) {
        this.open = null;
        this.pane = 'list';
      }
      this.cursor = next;
      this.say(`${verb} ${ids.length === 1 ? 'a message' : `${ids.length} messages`} to ${this.nameOf(target) || 'the folder'}.`);
      await Promise.all([this.refreshList(), this.loadMailboxes()]);
    } catch (e) {
      this.fail(e);
    }
  }

  async archive(ids: Id[]): Promise<void> {
    const archive = this.byRole('archive');
    if (!archive) return this.fail('There is no Archive folder.');
    await this.move(ids, archive.id, 'Archived');
  }

  /** Moves to Trash; in Trash, destroys for good. */
  async remove(ids: Id[]): Promise<void> {
    const trash = this.byRole('trash');
    if (!ids.length) return;
    if (!trash || (this.currentMailbox === trash.id && !this.search)) {
      const next = this.nextAfter(ids);
      try {
        await this.client.destroyEmails(ids);
        if (this.open && ids.includes(this.open.id)) this.closeEmail();
        this.cursor = next;
        this.say(ids.length === 1 ? 'Deleted a message for good.' : `Deleted ${ids.length} messages for good.`);
        await Promise.all([this.refreshList(), this.loadMailboxes()]);
      } catch (e) {
        this.fail(e);
      }
      return;
    }
    await this.move(ids, trash.id, 'Moved');
  }

  async emptyTrash(): Promise<void> {
    const trash = this.byRole('trash');
    if (!trash) return;
    const max = Number(this.client.session.capabilities['urn:ietf:params:jmap:core']?.maxObjectsInSet ?? 500);
    try {
      let removed = 0;
      for (;;) {
        const r = await this.client.call<{ ids: Id[] }>('Email/query', { filter: { inMailbox: trash.id }, limit: Math.min(max, 500) });
        if (!r.ids.length) break;
        await this.client.destroyEmails(r.ids);
        removed += r.ids.length;
      }
      this.open = null;
      this.say(`Emptied Trash (${removed} ${removed === 1 ? 'message' : 'messages'}).`);
      await Promise.all([this.refreshList(), this.loadMailboxes()]);
    } catch (e) {
      this.fail(e);
    }
  }

  /** The id to put the cursor on after `ids` leave the list. */
  private nextAfter(ids: Id[]): Id | null {
    const all = this.loadedIds();
    const last = Math.max(...ids.map((id) => all.indexOf(id)));
    return (
      all.slice(last + 1).find((id) => !ids.includes(id)) ??
      all
        .slice(0, Math.max(0, last))
        .reverse()
        .find((id) => !ids.includes(id)) ??
      null
    );
  }

  async createFolder(name: string): Promise<void> {
    try {
      await this.client.call('Mailbox/set', { create: { n: { name, parentId: null } } });
      this.say(`Created the folder ${name}.`);
      await this.loadMailboxes();
    } catch (e) {
      this.fail(e);
    }
  }

  async renameFolder(id: Id, name: string): Promise<void> {
    try {
      await this.client.call('Mailbox/set', { update: { [id]: { name } } });
      this.say(`Renamed the folder to ${name}.`);
      await this.loadMailboxes();
    } catch (e) {
      this.fail(e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Push

  /** Keeps the folder counts and the list current as the server's push stream says. */
  listen(): () => void {
    const source = new EventSource(this.client.eventSourceUrl(60), { withCredentials: true });
    let timer: ReturnType<typeof setTimeout> | undefined;
    source.addEventListener('state', () => {
      // Changes come in bursts (a delivery touches Mailbox, Email and Thread): one refresh each.
      clearTimeout(timer);
      timer = setTimeout(() => {
        void this.loadMailboxes().catch((e: unknown) => this.fail(e));
        void this.refreshList();
      }, 50);
    });
    return () => {
      clearTimeout(timer);
      source.close();
    };
  }
}

/**
 * Resolves after the next frame is painted (the task after its animation frame callbacks), or after
 * 100 ms where no frame comes (a background tab runs no animation frames).
 */
function afterPaint(): Promise<void> {
  return new Promise((resolve) => {
    requestAnimationFrame(() => setTimeout(resolve, 0));
    setTimeout(resolve, 100);
  });
}

/** Re-renders the calling component whenever the store changes. */
export function useStore(store: Store): Store {
  const [, setVersion] = useState(store.version);
  useEffect(() => store.subscribe(() => setVersion(store.version)), [store]);
  return store;
}
