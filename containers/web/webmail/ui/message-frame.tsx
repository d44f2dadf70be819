/**
 * The HTML body of a message, shown in a sandboxed iframe (see message-html.ts for what the
 * document holds). The sandbox has no allow-scripts, so nothing in the message runs even if the
 * sanitiser missed it. allow-same-origin is there so that this page can reach the frame's document
 * (to put the message in it and to read its height, so the frame needs no inner scrollbar) and so
 * that the frame's image requests to /jmap/download and /webmail/image carry our SameSite=Strict
 * session cookie; without scripts in the frame it grants the message nothing.
 * allow-popups(-to-escape-sandbox) lets a link open in a normal new tab.
 *
 * One frame serves every message: its document (FRAME_DOCUMENT: our CSP, link target and styles)
 * is loaded once, and opening a message replaces the children of its body with the sanitised
 * nodes, imported straight into the frame's document. A new document per message (a srcdoc swap)
 * costs a navigation, a parse and a load event on each open; a body swap costs one layout. The
 * frame's document only ever holds our shell and sanitised nodes: nodes inserted there run no
 * script (the sandbox disables scripting in it) and fetch only what its CSP allows, exactly as if
 * its parser had made them.
 */
import { useEffect, useLayoutEffect, useMemo, useRef } from 'preact/hooks';
import { FRAME_DOCUMENT, sanitizeMessageHtml, type SanitizedMessageHtml } from './message-html.ts';

export interface MessageFrameProps {
  /** The message's HTML body, as sent; null hides the frame (and empties it). */
  html: string | null;
  /**
   * Whose body `html` is (the Email's id): another message is sanitised afresh even when its HTML
   * is the same, as its cid: parts are other blobs.
   */
  source?: string;
  /** Load remote images through our image proxy. */
  allowRemote: boolean;
  /** The same-origin URL of the part with this Content-ID, or undefined. */
  cidUrl: (cid: string) => string | undefined;
  /** Told how many remote images were blocked (0 included), after each preparation. */
  onRemoteBlocked?: (count: number) => void;
}

export function MessageFrame({ html, source, allowRemote, cidUrl, onRemoteBlocked }: MessageFrameProps) {
  const frame = useRef<HTMLIFrameElement>(null);
  // cidUrl is often a new function each render; the body only changes with html/allowRemote.
  const cid = useRef(cidUrl);
  cid.current = cidUrl;
  const prepared = useMemo(
    () => (html === null ? null : sanitizeMessageHtml(html, { allowRemote, cidUrl: (id) => cid.current(id) })),
    [html, source, allowRemote],
  );
  // What the frame should show, and the document it was put into (the frame's own once loaded).
  const wanted = useRef<SanitizedMessageHtml | null>(prepared);
  wanted.current = prepared;
  const shown = useRef<{ doc: Document; body: SanitizedMessageHtml | null } | null>(null);

  useEffect(() => {
    if (prepared) onRemoteBlocked?.(prepared.remoteBlocked);
    // Reporting once per preparation is the point; a new callback identity is not a new count.
  }, [prepared]);

  /** The frame's document once FRAME_DOCUMENT has loaded in it (before that, the initial about:blank). */
  const loaded = useRef<Document | null>(null);

  // The frame is as tall as its content: the reader pane scrolls, not the frame.
  // scrollHeight is never less than the frame's own height, so it is read with the frame
  // collapsed (in one task, so nothing is painted in between): a shorter message then shrinks it.
  const fit = () => {
    const iframe = frame.current;
    const d = loaded.current;
    if (!iframe || !d?.documentElement) return;
    iframe.style.height = '0px';
    iframe.style.height = `${Math.ceil(d.documentElement.scrollHeight)}px`;
  };

  /** Puts the wanted message into the loaded document, unless it is there already. */
  const show = () => {
    const doc = loaded.current;
    const body = wanted.current;
    if (!doc?.body || (shown.current?.doc === doc && shown.current.body === body)) return;
    // importNode copies the inert nodes into the frame's document; the prepared fragment stays
    // as it was, so showing it again (a frame reloaded) needs no second sanitising.
    doc.body.replaceChildren(...(body ? [doc.importNode(body.body, true)] : []));
    shown.current = { doc, body };
    fit();
  };

  // Layout effects run in the same task as the render that made the iframe, so the listener is
  // in place before its document can load (a load event is always a later task).
  useLayoutEffect(() => {
    const iframe = frame.current;
    if (!iframe) return;
    let observer: ResizeObserver | undefined;
    const onLoad = () => {
      const doc = iframe.contentDocument;
      loaded.current = doc;
      if (!doc) return;
      // Images that arrive after they are inserted (and lazy ones) change the height; load
      // events do not bubble, so listen in the capture phase. A ResizeObserver on the body
      // catches the rest (a narrower window that makes the text wrap more, the frame shown).
      doc.addEventListener('load', fit, true);
      observer?.disconnect();
      if (doc.body && typeof ResizeObserver === 'function') {
        observer = new ResizeObserver(fit);
        observer.observe(doc.body);
      }
      show();
    };
    iframe.addEventListener('load', onLoad);
    return () => {
      iframe.removeEventListener('load', onLoad);
      loaded.current?.removeEventListener('load', fit, true);
      observer?.disconnect();
    };
  }, []);

  // Each new message goes in during the commit that shows its headers: both are painted together.
  useLayoutEffect(show, [prepared]);

  return (
    <iframe
      ref={frame}
      title="Message body"
      class="message-frame"
      sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox"
      referrerpolicy="no-referrer"
      srcdoc={FRAME_DOCUMENT}
      style={{ width: '100%', border: 0, display: prepared ? 'block' : 'none' }}
    />
  );
}
