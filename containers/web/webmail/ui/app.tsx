/**
 * The signed-in screen: folders, the message list (a virtual list over Email/query windows), the
 * reader, and the keyboard shortcuts. Layout: three panes on a wide screen, one at a time on a
 * phone (styles.css).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Mailbox } from '../client/jmap-client.ts';
import { Compose, startCompose } from './compose.tsx';
import { EmptyTrashDialog, FolderNameDialog, HelpDialog, MoveDialog, SettingsDialog } from './dialogs.tsx';
import { displayName, shortDate } from './format.ts';
import { Reader } from './reader.tsx';
import { useStore, type Store } from './store.ts';

/** The height of a list row in CSS pixels; styles.css uses the same (--row). */
const ROW = 68;
const DRAG_TYPE = 'application/x-tomlinson-email';

export function App({ store, onSignOut }: { store: Store; onSignOut: () => void }) {
  useStore(store);
  useEffect(() => store.listen(), [store]);
  useKeyboard(store);

  const current = store.mailbox(store.currentMailbox);
  const folderName = store.search ? 'Search' : store.nameOf(current) || 'Mail';
  useEffect(() => {
    const unread = store.search ? 0 : (current?.unreadEmails ?? 0);
    document.title = unread > 0 ? `(${unread}) ${folderName} — Tomlinson` : `${folderName} — Tomlinson`;
  });

  return (
    <div class={`app pane-${store.pane}`}>
      <header class="topbar">
        <button
          type="button"
          class="icon menu-button"
          aria-label="Show folders"
          onClick={() => ((store.pane = store.pane === 'folders' ? 'list' : 'folders'), store.changed())}
        >
          ☰
        </button>
        <span class="brand">Tomlinson</span>
        <SearchBar store={store} />
        <button type="button" class="primary" onClick={() => startCompose(store, 'new')}>
          Compose
        </button>
        <button type="button" onClick={() => ((store.dialog = 'settings'), store.changed())}>
          Settings
        </button>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <Folders store={store} />
      <main class="list-pane" aria-label={folderName}>
        <Toolbar store={store} title={folderName} />
        <MessageList store={store} />
      </main>
      <Reader store={store} />
      {store.compose && <Compose store={store} />}
      {store.dialog === 'move' && <MoveDialog store={store} />}
      {store.dialog === 'settings' && <SettingsDialog store={store} />}
      {store.dialog === 'help' && <HelpDialog store={store} />}
      {store.dialog === 'newFolder' && <FolderNameDialog store={store} rename={false} />}
      {store.dialog === 'renameFolder' && <FolderNameDialog store={store} rename={true} />}
      {store.dialog === 'emptyTrash' && <EmptyTrashDialog store={store} />}
      <div class="status" role="status" aria-live="polite">
        {store.status}
      </div>
      {store.error && (
        <div class="error" role="alert">
          {store.error}{' '}
          <button type="button" onClick={() => ((store.error = ''), store.changed())}>
            Dismiss
          </button>
        </div>
      )}
    </div>
  );
}

function SearchBar({ store }: { store: Store }) {
  const [open, setOpen] = useState(false);
  const form = useRef<HTMLFormElement>(null);
  const submit = (e: Event) => {
    e.preventDefault();
    const data = new FormData(form.current!);
    const get = (k: string) => String(data.get(k) ?? '').trim() || undefined;
    store.setSearch({
      text: get('text'),
      from: get('from'),
      to: get('to'),
      subject: get('subject'),
      after: get('after'),
      before: get('before'),
      hasAttachment: data.get('hasAttachment') === 'on',
    });
  };
  return (
    <form role="search" class="search" ref={form} onSubmit={submit}>
      <input type="search" name="text" id="search-text" aria-label="Search mail" placeholder="Search mail" autocomplete="off" />
      <button type="button" aria-label="Search options" aria-expanded={open} aria-controls="search-options" onClick={() => setOpen(!open)}>
        Options
      </button>
      <div id="search-options" class="search-options" hidden={!open}>
        <label>
          From <input name="from" />
        </label>
        <label>
          To <input name="to" />
        </label>
        <label>
          Subject <input name="subject" />
        </label>
        <label>
          After <input name="after" type="date" />
        </label>
        <label>
          Before <input name="before" type="date" />
        </label>
        <label class="check">
          <input name="hasAttachment" type="checkbox" /> Has attachment
        </label>
      </div>
      <button type="submit">Search</button>
      {store.search && (
        <button
          type="button"
          onClick={() => {
            form.current!.reset();
            store.setSearch(null);
          }}
        >
          Clear search
        </button>
      )}
    </form>
  );
}

function Folders({ store }: { store: Store }) {
  const current = store.mailbox(store.currentMailbox);
  const custom = current && !current.role;
  return (
    <nav class="folders" aria-label="Folders">
      <ul>
        {store.mailboxes.map((m) => (
          <FolderLink key={m.id} store={store} mailbox={m} />
        ))}
      </ul>
      <div class="folder-actions">
        <button type="button" onClick={() => ((store.dialog = 'newFolder'), store.changed())}>
          New folder
        </button>
        {custom && (
          <button type="button" onClick={() => ((store.dialog = 'renameFolder'), store.changed())}>
            Rename folder
          </button>
        )}
      </div>
    </nav>
  );
}

function FolderLink({ store, mailbox: m }: { store: Store; mailbox: Mailbox }) {
  const [over, setOver] = useState(false);
  const here = !store.search && store.currentMailbox === m.id;
  const name = store.nameOf(m);
  return (
    <li>
      <a
        href={`#${encodeURIComponent(m.id)}`}
        class={`${here ? 'current' : ''} ${over ? 'drop' : ''}`}
        aria-current={here ? 'page' : undefined}
        onClick={(e) => {
          e.preventDefault();
          store.openMailbox(m.id);
          document.getElementById('message-list')?.focus();
        }}
        onDragOver={(e) => {
          if (e.dataTransfer?.types.includes(DRAG_TYPE)) {
            e.preventDefault();
            setOver(true);
          }
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          const id = e.dataTransfer?.getData(DRAG_TYPE);
          if (id) void store.move([id], m.id);
        }}
      >
        {/* The link's name is "Inbox, 3 unread": the visible count with the words around it hidden. */}
        <span class="folder-name">
          {name}
          {m.unreadEmails > 0 && <span class="hidden-comma">,</span>}
        </span>
        {m.unreadEmails > 0 && (
          <span class="count">
            {m.unreadEmails}
            <span class="visually-hidden"> unread</span>
          </span>
        )}
      </a>
    </li>
  );
}

function Toolbar({ store, title }: { store: Store; title: string }) {
  const id = store.targets()[0];
  const e = id ? (store.open?.id === id ? store.open : store.emails.get(id)) : undefined;
  const trash = store.byRole('trash');
  const inTrash = !store.search && trash && store.currentMailbox === trash.id;
  return (
    <div class="toolbar-wrap">
      <h1 class="list-title">
        {title}
        {store.total !== null && <span class="total"> {store.total.toLocaleString()}</span>}
      </h1>
      <div role="toolbar" aria-label="Message actions" class="toolbar">
        {e?.keywords.$seen ? (
          <button type="button" disabled={!e} onClick={() => void store.setKeyword([id!], '$seen', false)}>
            Mark unread
          </button>
        ) : (
          <button type="button" disabled={!e} onClick={() => void store.setKeyword([id!], '$seen', true)}>
            Mark read
          </button>
        )}
        {e?.keywords.$flagged ? (
          <button type="button" disabled={!e} onClick={() => void store.setKeyword([id!], '$flagged', false)}>
            Unflag
          </button>
        ) : (
          <button type="button" disabled={!e} onClick={() => void store.setKeyword([id!], '$flagged', true)}>
            Flag
          </button>
        )}
        <button type="button" disabled={!e} onClick={() => ((store.dialog = 'move'), store.changed())}>
          Move
        </button>
        <button type="button" disabled={!e} onClick={() => void store.archive([id!])}>
          Archive
        </button>
        <button type="button" disabled={!e} onClick={() => void store.remove([id!])}>
          Delete
        </button>
        {inTrash && (
          <button type="button" onClick={() => ((store.dialog = 'emptyTrash'), store.changed())}>
            Empty Trash
          </button>
        )}
        <label class="check">
          <input type="checkbox" checked={store.collapseThreads} onChange={(ev) => store.setCollapse((ev.target as HTMLInputElement).checked)} /> Conversations
        </label>
      </div>
    </div>
  );
}

function MessageList({ store }: { store: Store }) {
  const box = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(800);
  useEffect(() => {
    const el = box.current!;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  // A new query starts at the top.
  useEffect(() => {
    if (box.current && store.total === null) {
      box.current.scrollTop = 0;
      setScrollTop(0);
    }
  }, [store.total === null]);
  // Keep the cursor row in view when the keyboard moves it.
  const cursorPos = store.cursor ? store.positionOf(store.cursor) : -1;
  useEffect(() => {
    const el = box.current;
    if (!el || cursorPos < 0) return;
    const top = cursorPos * ROW;
    if (top < el.scrollTop) el.scrollTop = top;
    else if (top + ROW > el.scrollTop + el.clientHeight) el.scrollTop = top + ROW - el.clientHeight;
  }, [cursorPos]);

  const total = store.total ?? 0;
  const first = Math.max(0, Math.floor(scrollTop / ROW) - 4);
  const last = Math.min(total, Math.ceil((scrollTop + height) / ROW) + 4);
  store.visible = [first, last];
  if (store.total === null) store.idAt(0);
  const rows = [];
  for (let p = first; p < last; p++) rows.push(<Row key={p} store={store} position={p} total={total} />);
  const trash = store.byRole('trash');
  return (
    <div
      id="message-list"
      class="message-list"
      role="listbox"
      aria-label="Messages"
      tabIndex={0}
      aria-activedescendant={store.cursor && cursorPos >= 0 ? `row-${store.cursor}` : undefined}
      ref={box}
      onScroll={(e) => setScrollTop((e.target as HTMLElement).scrollTop)}
    >
      {store.total === 0 && (
        <p class="empty" role="presentation">
          {store.search ? 'Nothing matches this search.' : store.currentMailbox === trash?.id ? 'Trash is empty.' : 'No messages here.'}
        </p>
      )}
      <div class="rows" role="presentation" style={{ height: `${total * ROW}px` }}>
        {rows}
      </div>
    </div>
  );
}

function Row({ store, position, total }: { store: Store; position: number; total: number }) {
  const id = store.idAt(position);
  const e = id ? store.emails.get(id) : undefined;
  const style = { top: `${position * ROW}px`, height: `${ROW}px` };
  if (!id || !e)
    return (
      <div class="row loading" role="option" aria-selected={false} aria-posinset={position + 1} aria-setsize={total} style={style}>
        <span class="from">…</span>
      </div>
    );
  const sentLike = ['sent', 'drafts'].includes(store.mailbox(store.currentMailbox)?.role ?? '') && !store.search;
  const who = sentLike ? `To: ${displayName(e.to)}` : displayName(e.from);
  const n = store.collapseThreads ? (store.threadSizes.get(e.threadId) ?? 1) : 1;
  const unread = !e.keywords.$seen;
  const selected = store.cursor === id;
  return (
    <div
      id={`row-${id}`}
      data-email-id={id}
      class={`row ${unread ? 'unread' : ''} ${selected ? 'selected' : ''} ${store.open?.id === id ? 'open' : ''}`}
      role="option"
      aria-selected={selected}
      aria-posinset={position + 1}
      aria-setsize={total}
      style={style}
      draggable
      onDragStart={(ev) => {
        ev.dataTransfer?.setData(DRAG_TYPE, id);
        ev.dataTransfer?.setData('text/plain', e.subject ?? '');
      }}
      // The fetch starts when the button goes down; the click comes a press later.
      onPointerDown={() => void store.prefetch(id).catch(() => undefined)}
      onClick={() => void store.openEmail(id)}
    >
      <span class="from">
        {unread && <span class="visually-hidden">Unread, </span>}
        {who}
        {n > 1 && <span class="thread-count"> ({n})</span>}
      </span>
      <span class="date">{shortDate(e.receivedAt)}</span>
      <span class="subject">
        {e.keywords.$flagged && <FlagIcon />}
        {e.hasAttachment && <ClipIcon />}
        {e.subject || '(no subject)'}
      </span>
      <span class="preview">{e.preview}</span>
    </div>
  );
}

/* Icons are inline SVG, not emoji: a machine without an emoji font shows emoji as empty boxes. */
function FlagIcon() {
  return (
    <svg class="flag" viewBox="0 0 16 16" width="14" height="14" role="img" aria-label="Flagged">
      <path fill="currentColor" d="M8 1.2l2.1 4.3 4.7.7-3.4 3.3.8 4.7L8 12l-4.2 2.2.8-4.7-3.4-3.3 4.7-.7z" />
    </svg>
  );
}

function ClipIcon() {
  return (
    <svg class="clip" viewBox="0 0 16 16" width="14" height="14" role="img" aria-label="Has attachment">
      <path
        fill="none"
        stroke="currentColor"
        stroke-width="1.4"
        stroke-linecap="round"
        d="M10.5 4v6.5a2.5 2.5 0 0 1-5 0V3.5a1.5 1.5 0 0 1 3 0V10a.5.5 0 0 1-1 0V5"
      />
    </svg>
  );
}

/** Moves the cursor by `delta` rows (a row whose page is still loading is asked for, not entered). */
function moveCursor(store: Store, delta: number): void {
  const total = store.total ?? 0;
  if (!total) return;
  const at = store.cursor ? store.positionOf(store.cursor) : -1;
  const next = Math.max(0, Math.min(total - 1, at + delta));
  const id = store.idAt(next);
  if (!id) return;
  store.cursor = id;
  store.changed();
}

function useKeyboard(store: Store): void {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (t.closest('input, textarea, select, [contenteditable], dialog, .compose')) return;
      if (store.dialog) return;
      const targets = store.targets();
      const e0 = targets[0] ? (store.open?.id === targets[0] ? store.open : store.emails.get(targets[0])) : undefined;
      const act: Record<string, () => void> = {
        j: () => moveCursor(store, 1),
        ArrowDown: () => moveCursor(store, 1),
        k: () => moveCursor(store, -1),
        ArrowUp: () => moveCursor(store, -1),
        o: () => store.cursor && void store.openEmail(store.cursor),
        Enter: () => store.cursor && void store.openEmail(store.cursor),
        u: () => store.closeEmail(),
        Escape: () => store.closeEmail(),
        r: () => store.open && startCompose(store, 'reply'),
        a: () => store.open && startCompose(store, 'replyAll'),
        f: () => store.open && startCompose(store, 'forward'),
        c: () => startCompose(store, 'new'),
        e: () => void store.archive(targets),
        '#': () => void store.remove(targets),
        Delete: () => void store.remove(targets),
        s: () => e0 && void store.setKeyword(targets, '$flagged', !e0.keywords.$flagged),
        I: () => void store.setKeyword(targets, '$seen', true),
        U: () => void store.setKeyword(targets, '$seen', false),
        v: () => targets.length && ((store.dialog = 'move'), store.changed()),
        '/': () => document.getElementById('search-text')?.focus(),
        '?': () => ((store.dialog = 'help'), store.changed()),
      };
      const f = act[e.key];
      if (!f) return;
      // Arrow keys and Enter only drive the list when it has the focus (elsewhere they scroll or press).
      if (['ArrowDown', 'ArrowUp', 'Enter'].includes(e.key) && t.id !== 'message-list') return;
      e.preventDefault();
      f();
    };
    document.addEventListener('keydown', onKey);
    return () => document.removeEventListener('keydown', onKey);
  }, [store]);
}
