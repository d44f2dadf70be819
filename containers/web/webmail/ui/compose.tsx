/**
 * Writing mail: new, reply, reply all, forward. The draft is saved in Drafts as the user types
 * (Email/set create, the previous draft destroyed in the same request); sending is one JMAP
 * request: the Email, its EmailSubmission, and on success the move from Drafts to Sent
 * (RFC 8621 §7.5 onSuccessUpdateEmail). Attachments upload with progress before they are named in
 * the Email.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { formatAddresses, parseAddresses, type Id, type Identity, type Invocation } from '../client/jmap-client.ts';
import { plainText, prefixed, quote, size } from './format.ts';
import { uploadWithProgress } from './session.ts';
import type { ComposeDraft, Store } from './store.ts';

/** Seconds of quiet typing before the draft is saved. */
const SAVE_AFTER_MS = 1500;

/**
 * Why a send request sent nothing, in words for the person sending, or undefined when it was sent:
 * a method error, or the refusal of the Email or its submission. A SetError's description says
 * why (RFC 8621 §7.5, e.g. rspamd's reason for forbiddenToSend); its type is the fallback. The
 * implicit Email/set that files the sent message, and the $answered keyword (call 2), are not the
 * sending: their failures do not make a sent message look unsent.
 */
function whyNotSent(responses: Invocation[]): string | undefined {
  for (const [name, args, callId] of responses) {
    if (callId === '2') continue;
    if (name === 'error') return typeof args.description === 'string' ? args.description : String(args.type);
    if (callId === '1' && name === 'Email/set') continue;
    const refused = Object.values((args.notCreated as Record<string, { type: string; description?: string }> | null | undefined) ?? {})[0];
    if (refused) return refused.description ?? refused.type;
  }
  return undefined;
}

export function startCompose(store: Store, kind: ComposeDraft['kind']): void {
  const src = kind === 'new' ? null : store.open;
  if (kind !== 'new' && !src) return;
  const me = store.session.username.toLowerCase();
  const draft: ComposeDraft = {
    kind,
    to: '',
    cc: '',
    bcc: '',
    subject: '',
    body: '',
    inReplyTo: null,
    references: null,
    attachments: [],
    draftId: null,
    sourceId: src?.id ?? null,
  };
  if (src) {
    const when = new Date(src.sentAt ?? src.receivedAt).toLocaleString();
    const who = formatAddresses(src.from);
    if (kind === 'forward') {
      draft.subject = prefixed('Fwd:', src.subject);
      draft.body = `\n\n---------- Forwarded message ----------\nFrom: ${who}\nDate: ${when}\nSubject: ${src.subject ?? ''}\nTo: ${formatAddresses(src.to)}\n\n${plainText(src)}`;
      draft.attachments = src.attachments
        .filter((p) => p.blobId && p.disposition !== 'inline')
        .map((p) => ({ blobId: p.blobId!, name: p.name ?? 'attachment', type: p.type, size: p.size }));
    } else {
      draft.subject = prefixed('Re:', src.subject);
      draft.to = formatAddresses(src.replyTo?.length ? src.replyTo : src.from);
      if (kind === 'replyAll') {
        const replyTo = new Set((src.replyTo?.length ? src.replyTo : (src.from ?? [])).map((a) => a.email.toLowerCase()));
        const others = [...(src.to ?? []), ...(src.cc ?? [])].filter((a) => a.email.toLowerCase() !== me && !replyTo.has(a.email.toLowerCase()));
        draft.cc = formatAddresses(others);
      }
      draft.inReplyTo = src.messageId;
      draft.references = [...(src.references ?? []), ...(src.messageId ?? [])];
      draft.body = `\n\nOn ${when}, ${who} wrote:\n${quote(plainText(src))}\n`;
    }
  }
  store.compose = draft;
  store.changed();
}

/** The Email object of a draft (RFC 8621 §4.6 create). */
function emailObject(store: Store, d: ComposeDraft, identity: Identity | undefined, mailboxId: Id): Record<string, unknown> {
  const addr = (s: string) => parseAddresses(s).list;
  const email: Record<string, unknown> = {
    mailboxIds: { [mailboxId]: true },
    keywords: { $draft: true, $seen: true },
    from: [{ name: identity?.name || null, email: identity?.email ?? store.session.username }],
    to: addr(d.to),
    subject: d.subject,
    bodyValues: { body: { value: d.body } },
    textBody: [{ partId: 'body', type: 'text/plain' }],
  };
  if (d.cc.trim()) email.cc = addr(d.cc);
  if (d.bcc.trim()) email.bcc = addr(d.bcc);
  if (d.inReplyTo?.length) email.inReplyTo = d.inReplyTo;
  if (d.references?.length) email.references = d.references;
  if (d.attachments.length) email.attachments = d.attachments.map((a) => ({ blobId: a.blobId, type: a.type, name: a.name, disposition: 'attachment' }));
  return email;
}

async function identityOf(store: Store): Promise<Identity | undefined> {
  const r = await store.client.call<{ list: Identity[] }>('Identity/get', { ids: null });
  const me = store.session.username.toLowerCase();
  return r.list.find((i) => i.email.toLowerCase() === me) ?? r.list[0];
}

export function Compose({ store }: { store: Store }) {
  const d = store.compose!;
  const [, redraw] = useState(0);
  const [saved, setSaved] = useState('');
  const [uploads, setUploads] = useState<{ name: string; fraction: number }[]>([]);
  const [sending, setSending] = useState(false);
  const [problem, setProblem] = useState('');
  const identity = useRef<Promise<Identity | undefined> | undefined>(undefined);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const saving = useRef<Promise<void>>(Promise.resolve());
  const firstField = useRef<HTMLInputElement | HTMLTextAreaElement>(null);
  identity.current ??= identityOf(store);

  useEffect(() => {
    firstField.current?.focus();
    if (d.kind === 'reply' || d.kind === 'replyAll') {
      const t = firstField.current as HTMLTextAreaElement;
      t.setSelectionRange(0, 0);
    }
    return () => clearTimeout(timer.current);
  }, []);

  /** Saves the draft now (one at a time, so drafts never pile up). */
  const save = (): Promise<void> => {
    clearTimeout(timer.current);
    saving.current = saving.current.then(async () => {
      const drafts = store.byRole('drafts');
      if (!drafts || store.compose !== d) return;
      try {
        const r = await store.client.run([
          [
            'Email/set',
            {
              accountId: store.client.accountId,
              create: { d: emailObject(store, d, await identity.current, drafts.id) },
              destroy: d.draftId ? [d.draftId] : undefined,
            },
            '0',
          ],
        ]);
        d.draftId = (r['0'].created as Record<string, { id: Id }>).d.id;
        setSaved('Draft saved');
      } catch (e) {
        setSaved('');
        setProblem(`The draft was not saved: ${(e as Error).message}`);
      }
    });
    return saving.current;
  };

  const edit = (field: 'to' | 'cc' | 'bcc' | 'subject' | 'body', value: string) => {
    d[field] = value;
    setSaved('');
    clearTimeout(timer.current);
    timer.current = setTimeout(() => void save(), SAVE_AFTER_MS);
  };

  const attach = async (files: FileList | null) => {
    for (const file of Array.from(files ?? [])) {
      const entry = { name: file.name, fraction: 0 };
      setUploads((u) => [...u, entry]);
      try {
        const r = await uploadWithProgress(store.client, store.session, file, (f) => {
          entry.fraction = f;
          setUploads((u) => [...u]);
        });
        d.attachments.push({ blobId: r.blobId, name: file.name, type: r.type, size: r.size });
        void save();
      } catch (e) {
        setProblem((e as Error).message);
      } finally {
        setUploads((u) => u.filter((x) => x !== entry));
      }
    }
  };

  const send = async () => {
    const to = parseAddresses(d.to);
    const cc = parseAddresses(d.cc);
    const bcc = parseAddresses(d.bcc);
    const bad = [...to.invalid, ...cc.invalid, ...bcc.invalid];
    if (bad.length) return setProblem(`Not an address: ${bad.join(', ')}`);
    if (!to.list.length && !cc.list.length && !bcc.list.length) return setProblem('Add at least one recipient.');
    if (uploads.length) return setProblem('Wait for the attachments to finish uploading.');
    setSending(true);
    setProblem('');
    clearTimeout(timer.current);
    await saving.current;
    try {
      const drafts = store.byRole('drafts');
      const sent = store.byRole('sent');
      const id = await identity.current;
      if (!drafts || !id) throw new Error('There is no Drafts folder or no identity to send as.');
      const a = store.client.accountId;
      const calls: Invocation[] = [
        ['Email/set', { accountId: a, create: { m: emailObject(store, d, id, drafts.id) }, destroy: d.draftId ? [d.draftId] : undefined }, '0'],
        [
          'EmailSubmission/set',
          {
            accountId: a,
            create: { s: { identityId: id.id, emailId: '#m' } },
            onSuccessUpdateEmail: {
              '#s': { [`mailboxIds/${drafts.id}`]: null, ...(sent ? { [`mailboxIds/${sent.id}`]: true } : {}), 'keywords/$draft': null },
            },
          },
          '1',
        ],
      ];
      if (d.sourceId && d.kind !== 'new')
        calls.push(['Email/set', { accountId: a, update: { [d.sourceId]: { [`keywords/${d.kind === 'forward' ? '$forwarded' : '$answered'}`]: true } } }, '2']);
      const responses = await store.client.request(calls);
      // The Email is made even when its submission is refused: from then on it is the draft, so
      // that a second Send replaces it instead of leaving a copy in Drafts (and destroying the
      // draft it replaced a second time, which would fail).
      const made = responses.find(([name, , callId]) => name === 'Email/set' && callId === '0')?.[1];
      if (made && d.draftId && (made.destroyed as Id[] | undefined)?.includes(d.draftId)) d.draftId = null;
      const createdId = (made?.created as Record<string, { id: Id }> | null | undefined)?.m?.id;
      if (createdId) d.draftId = createdId;
      const refusal = whyNotSent(responses);
      if (refusal !== undefined) throw new Error(refusal);
      store.compose = null;
      store.say('Message sent.');
      void store.refreshList();
      void store.loadMailboxes();
    } catch (e) {
      setProblem(`Not sent: ${(e as Error).message}`);
      setSending(false);
    }
  };

  const discard = async () => {
    clearTimeout(timer.current);
    await saving.current;
    store.compose = null;
    store.changed();
    if (d.draftId) {
      try {
        await store.client.destroyEmails([d.draftId]);
        store.say('Draft discarded.');
      } catch (e) {
        store.fail(e);
      }
    }
  };

  const title = d.kind === 'new' ? 'New message' : d.kind === 'forward' ? 'Forward' : 'Reply';
  const reply = d.kind === 'reply' || d.kind === 'replyAll';
  return (
    <section
      class="compose"
      role="dialog"
      aria-label={title}
      onKeyDown={(e) => e.key === 'Escape' && void save().then(() => ((store.compose = null), store.changed()))}
    >
      <h2>{title}</h2>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void send();
        }}
      >
        <label>
          To{' '}
          <input
            ref={reply ? undefined : (firstField as preact.Ref<HTMLInputElement>)}
            value={d.to}
            onInput={(e) => edit('to', e.currentTarget.value)}
            autocomplete="email"
            multiple
          />
        </label>
        <label>
          Cc <input value={d.cc} onInput={(e) => edit('cc', e.currentTarget.value)} />
        </label>
        <label>
          Bcc <input value={d.bcc} onInput={(e) => edit('bcc', e.currentTarget.value)} />
        </label>
        <label>
          Subject <input value={d.subject} onInput={(e) => edit('subject', e.currentTarget.value)} />
        </label>
        <label class="body">
          <span>Message</span>
          <textarea
            ref={reply ? (firstField as preact.Ref<HTMLTextAreaElement>) : undefined}
            value={d.body}
            onInput={(e) => edit('body', e.currentTarget.value)}
            rows={12}
          />
        </label>
        {d.attachments.length > 0 && (
          <ul class="attached" aria-label="Attached files">
            {d.attachments.map((a, i) => (
              <li key={a.blobId + i}>
                {a.name} <span class="size">{size(a.size)}</span>{' '}
                <button
                  type="button"
                  aria-label={`Remove ${a.name}`}
                  onClick={() => {
                    d.attachments.splice(i, 1);
                    redraw((n) => n + 1);
                    void save();
                  }}
                >
                  ✕
                </button>
              </li>
            ))}
          </ul>
        )}
        {uploads.map((u) => (
          <div class="upload" key={u.name}>
            {u.name} <progress role="progressbar" aria-label={`Uploading ${u.name}`} value={u.fraction} max={1} />
          </div>
        ))}
        {problem && (
          <p class="problem" role="alert">
            {problem}
          </p>
        )}
        <div class="compose-actions">
          <button type="submit" class="primary" disabled={sending}>
            {sending ? 'Sending…' : 'Send'}
          </button>
          <label class="attach">
            Attach files{' '}
            <input
              type="file"
              multiple
              onChange={(e) => {
                const input = e.currentTarget;
                void attach(input.files).then(() => (input.value = ''));
              }}
            />
          </label>
          <span class="saved" role="status">
            {saved}
          </span>
          <button type="button" onClick={() => void discard()}>
            Discard
          </button>
        </div>
      </form>
    </section>
  );
}
