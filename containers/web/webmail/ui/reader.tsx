/**
 * The reader pane: the open message's headers, its conversation, its body (plain text here, HTML
 * in the sandboxed MessageFrame) and its attachments.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { startCompose } from './compose.tsx';
import { displayName, linkify, longDate, shortDate, size } from './format.ts';
import { MessageFrame } from './message-frame.tsx';
import type { EmailFull } from '../client/jmap-client.ts';
import type { Store } from './store.ts';

export function Reader({ store }: { store: Store }) {
  const e = store.open;
  const heading = useRef<HTMLHeadingElement>(null);
  // Remote images blocked in the open Email, as the frame reports them (its effect runs before
  // ours, so the count is kept with the id it belongs to rather than reset here).
  const [blockedIn, setBlockedIn] = useState<{ id: string; n: number }>({ id: '', n: 0 });
  useEffect(() => {
    if (e) heading.current?.focus();
  }, [e?.id]);
  const body = e ? bodyOf(store, e) : null;
  const allowed = !!e && store.imagesAllowed.has(e.id);
  const blocked = e && blockedIn.id === e.id ? blockedIn.n : 0;
  // One tree whether a message is open or not, so that the body frame (message-frame.tsx) stays in
  // place, loaded, between messages and before the first: opening an HTML message then swaps the
  // frame's body instead of loading a new document. With nothing open the article is hidden.
  return (
    <section class={e ? 'reader' : 'reader empty-reader'} aria-label="Reader">
      {!e && <p>{store.openLoading ? 'Opening…' : 'Choose a message to read it.'}</p>}
      <article aria-label="Message" hidden={!e}>
        {e && (
          <>
            <div class="reader-bar" role="toolbar" aria-label="Reply and forward">
              <button type="button" class="back" onClick={() => store.closeEmail()}>
                Back
              </button>
              <button type="button" onClick={() => startCompose(store, 'reply')}>
                Reply
              </button>
              <button type="button" onClick={() => startCompose(store, 'replyAll')}>
                Reply all
              </button>
              <button type="button" onClick={() => startCompose(store, 'forward')}>
                Forward
              </button>
              {/* On a phone the list's toolbar is out of sight while reading. */}
              <button type="button" class="phone-only" onClick={() => void store.archive([e.id])}>
                Archive
              </button>
              <button type="button" class="phone-only" onClick={() => ((store.dialog = 'move'), store.changed())}>
                Move
              </button>
              <button type="button" class="phone-only" onClick={() => void store.remove([e.id])}>
                Delete
              </button>
            </div>
            <h2 tabIndex={-1} ref={heading}>
              {e.subject || '(no subject)'}
            </h2>
            <dl class="headers">
              <dt>From</dt>
              <dd>{addressLine(e.from)}</dd>
              <dt>To</dt>
              <dd>{addressLine(e.to)}</dd>
              {e.cc?.length ? (
                <>
                  <dt>Cc</dt>
                  <dd>{addressLine(e.cc)}</dd>
                </>
              ) : null}
              <dt>Date</dt>
              <dd>{longDate(e.sentAt ?? e.receivedAt)}</dd>
            </dl>
            {store.openThread.length > 1 && (
              <nav class="thread" aria-label="Conversation">
                <p>{store.openThread.length} messages in this conversation</p>
                <ol>
                  {store.openThread.map((t) => (
                    <li key={t.id}>
                      <button
                        type="button"
                        aria-current={t.id === e.id ? 'true' : undefined}
                        disabled={t.id === e.id}
                        onClick={() => void store.openEmail(t.id)}
                      >
                        <span class="from">{displayName(t.from)}</span> <span class="date">{shortDate(t.receivedAt)}</span>{' '}
                        <span class="preview">{t.preview}</span>
                      </button>
                    </li>
                  ))}
                </ol>
              </nav>
            )}
            {blocked > 0 && !allowed && (
              <p class="images-blocked">
                {blocked === 1 ? 'A remote image was' : `${blocked} remote images were`} blocked so that the sender cannot see when you read this.{' '}
                <button
                  type="button"
                  onClick={() => {
                    store.imagesAllowed.add(e.id);
                    store.changed();
                  }}
                >
                  Show images
                </button>
              </p>
            )}
          </>
        )}
        <MessageFrame
          html={body?.html ?? null}
          source={e?.id}
          allowRemote={allowed}
          cidUrl={body?.cidUrl ?? noCid}
          onRemoteBlocked={(n) => e && setBlockedIn({ id: e.id, n })}
        />
        {body && body.html === null && (
          <div class="text-body">
            {linkify(body.text).map((r, i) =>
              r.href ? (
                <a key={i} href={r.href} target="_blank" rel="noopener noreferrer">
                  {r.text}
                </a>
              ) : (
                r.text
              ),
            )}
          </div>
        )}
        {body && body.attachments.length > 0 && (
          <section class="attachments" aria-label="Attachments">
            <ul>
              {body.attachments.map((p) => (
                <li key={p.partId}>
                  <a href={store.client.downloadUrl(p.blobId!, p.name ?? 'attachment', p.type)} download={p.name ?? 'attachment'}>
                    {p.name ?? 'attachment'}
                  </a>{' '}
                  <span class="size">{size(p.size)}</span>
                </li>
              ))}
            </ul>
          </section>
        )}
      </article>
    </section>
  );
}

const noCid = () => undefined;

/** What the reader shows of an Email's body: its HTML (null when it has none), its text, its attachments. */
function bodyOf(store: Store, e: EmailFull) {
  const htmlParts = e.htmlBody.filter((p) => p.type === 'text/html' && p.partId);
  const cids = new Map(e.attachments.filter((p) => p.cid && p.blobId).map((p) => [p.cid!.replace(/^<|>$/g, ''), p]));
  const cidUrl = (cid: string) => {
    const p = cids.get(cid);
    return p ? store.client.downloadUrl(p.blobId!, p.name ?? 'inline', p.type) : undefined;
  };
  let html = '';
  if (htmlParts.length) {
    for (const p of e.htmlBody) {
      if (!p.partId) continue;
      if (p.type === 'text/html') html += e.bodyValues[p.partId]?.value ?? '';
      else if (p.type === 'text/plain') html += `<pre>${escapeHtml(e.bodyValues[p.partId]?.value ?? '')}</pre>`;
      else if (p.type.startsWith('image/') && p.blobId)
        html += `<img src="${escapeHtml(store.client.downloadUrl(p.blobId, p.name ?? 'image', p.type))}" alt="">`;
    }
  }
  const text = e.textBody
    .filter((p) => p.type === 'text/plain' && p.partId)
    .map((p) => e.bodyValues[p.partId!]?.value ?? '')
    .join('\n');
  const shownInline = (cid: string | null) => !!cid && html.includes(`cid:${cid.replace(/^<|>$/g, '')}`);
  const attachments = e.attachments.filter((p) => p.blobId && !(p.disposition !== 'attachment' && shownInline(p.cid)));
  return { html: htmlParts.length ? html : null, text, cidUrl, attachments };
}

function addressLine(list: { name: string | null; email: string }[] | null): string {
  return (list ?? []).map((a) => (a.name ? `${a.name} <${a.email}>` : a.email)).join(', ') || '(nobody)';
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
