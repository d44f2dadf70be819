/**
 * Modal dialogs on the native <dialog> element (focus kept inside, Escape closes, the page behind
 * inert): move to folder, new or renamed folder, settings (the vacation reply), keyboard help.
 */
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { VacationResponse } from '../client/jmap-client.ts';
import type { Store } from './store.ts';

function Modal({ store, label, children }: { store: Store; label: string; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current!;
    const back = document.activeElement as HTMLElement | null;
    d.showModal();
    return () => back?.focus?.();
  }, []);
  return (
    <dialog ref={ref} aria-label={label} class="modal" onClose={() => ((store.dialog = null), store.changed())}>
      <h2>{label}</h2>
      {children}
    </dialog>
  );
}

const close = (store: Store) => {
  store.dialog = null;
  store.changed();
};

export function MoveDialog({ store }: { store: Store }) {
  const ids = store.targets();
  return (
    <Modal store={store} label="Move to folder">
      <ul class="move-list">
        {store.mailboxes
          .filter((m) => store.search || m.id !== store.currentMailbox)
          .map((m) => (
            <li key={m.id}>
              <button
                type="button"
                onClick={() => {
                  close(store);
                  void store.move(ids, m.id);
                }}
              >
                {store.nameOf(m)}
              </button>
            </li>
          ))}
      </ul>
      <button type="button" onClick={() => close(store)}>
        Cancel
      </button>
    </Modal>
  );
}

export function FolderNameDialog({ store, rename }: { store: Store; rename: boolean }) {
  const current = store.mailbox(store.currentMailbox);
  const [name, setName] = useState(rename ? (current?.name ?? '') : '');
  return (
    <Modal store={store} label={rename ? 'Rename folder' : 'New folder'}>
      <form
        method="dialog"
        onSubmit={(e) => {
          e.preventDefault();
          const n = name.trim();
          if (!n) return;
          close(store);
          if (rename && current) void store.renameFolder(current.id, n);
          else void store.createFolder(n);
        }}
      >
        <label>
          Folder name <input value={name} onInput={(e) => setName(e.currentTarget.value)} required maxLength={200} />
        </label>
        <div class="dialog-actions">
          <button type="submit" class="primary">
            {rename ? 'Rename' : 'Create'}
          </button>
          <button type="button" onClick={() => close(store)}>
            Cancel
          </button>
        </div>
      </form>
    </Modal>
  );
}

/** `YYYY-MM-DD` of a UTCDate, for a date input. */
const day = (iso: string | null) => (iso ? iso.slice(0, 10) : '');

/** A date input for a UTCDate: the day chosen at `time` (the start or the end of it), or null. */
function DateField({ label, value, time, onChange }: { label: string; value: string | null; time: string; onChange: (v: string | null) => void }) {
  return (
    <label>
      {label} <input type="date" value={day(value)} onInput={(e) => onChange(e.currentTarget.value ? `${e.currentTarget.value}${time}` : null)} />
    </label>
  );
}

export function SettingsDialog({ store }: { store: Store }) {
  const [v, setV] = useState<VacationResponse | null>(null);
  const [problem, setProblem] = useState('');
  useEffect(() => {
    store.client
      .call<{ list: VacationResponse[] }>('VacationResponse/get', { ids: ['singleton'] })
      .then((r) => setV(r.list[0]))
      .catch((e: Error) => setProblem(e.message));
  }, []);
  const save = async (e: Event) => {
    e.preventDefault();
    if (!v) return;
    try {
      await store.client.call('VacationResponse/set', {
        update: {
          singleton: {
            isEnabled: v.isEnabled,
            subject: v.subject || null,
            textBody: v.textBody || null,
            fromDate: v.fromDate || null,
            toDate: v.toDate || null,
          },
        },
      });
      close(store);
      store.say(v.isEnabled ? 'The vacation reply is on.' : 'The vacation reply is off.');
    } catch (err) {
      setProblem((err as Error).message);
    }
  };
  return (
    <Modal store={store} label="Settings">
      {!v && !problem && <p>Loading…</p>}
      {v && (
        <form onSubmit={(e) => void save(e)}>
          <fieldset>
            <legend>Vacation reply</legend>
            <label class="check">
              <input type="checkbox" checked={v.isEnabled} onChange={(e) => setV({ ...v, isEnabled: e.currentTarget.checked })} /> Send a vacation reply
            </label>
            <label>
              Vacation subject <input value={v.subject ?? ''} onInput={(e) => setV({ ...v, subject: e.currentTarget.value })} />
            </label>
            <label>
              Vacation message <textarea rows={5} value={v.textBody ?? ''} onInput={(e) => setV({ ...v, textBody: e.currentTarget.value })} />
            </label>
            <DateField label="From date" value={v.fromDate} time="T00:00:00Z" onChange={(fromDate) => setV({ ...v, fromDate })} />
            <DateField label="Until date" value={v.toDate} time="T23:59:59Z" onChange={(toDate) => setV({ ...v, toDate })} />
          </fieldset>
          <div class="dialog-actions">
            <button type="submit" class="primary">
              Save
            </button>
            <button type="button" onClick={() => close(store)}>
              Cancel
            </button>
          </div>
        </form>
      )}
      {problem && <p role="alert">{problem}</p>}
    </Modal>
  );
}

export function EmptyTrashDialog({ store }: { store: Store }) {
  const n = store.byRole('trash')?.totalEmails ?? 0;
  return (
    <Modal store={store} label="Empty Trash">
      <p>Delete {n === 1 ? 'the message' : `all ${n.toLocaleString()} messages`} in Trash for good? This cannot be undone.</p>
      <div class="dialog-actions">
        <button
          type="button"
          class="danger"
          onClick={() => {
            close(store);
            void store.emptyTrash();
          }}
        >
          Delete for good
        </button>
        <button type="button" onClick={() => close(store)}>
          Cancel
        </button>
      </div>
    </Modal>
  );
}

const KEYS: [string, string][] = [
  ['j / k', 'Next / previous message'],
  ['Enter or o', 'Open the message'],
  ['u or Esc', 'Back to the list'],
  ['r / a / f', 'Reply / reply all / forward'],
  ['c', 'Compose'],
  ['e', 'Archive'],
  ['#', 'Delete'],
  ['s', 'Flag or unflag'],
  ['Shift+i / Shift+u', 'Mark read / unread'],
  ['v', 'Move to a folder'],
  ['/', 'Search'],
  ['?', 'This help'],
];

export function HelpDialog({ store }: { store: Store }) {
  return (
    <Modal store={store} label="Keyboard shortcuts">
      <table class="keys">
        <tbody>
          {KEYS.map(([k, what]) => (
            <tr key={k}>
              <th scope="row">
                <kbd>{k}</kbd>
              </th>
              <td>{what}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <button type="button" onClick={() => close(store)}>
        Close
      </button>
    </Modal>
  );
}
