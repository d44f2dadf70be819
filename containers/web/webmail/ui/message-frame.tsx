/**
 * The HTML body of a message, shown in a sandboxed iframe (see message-html.ts for what the
 * document holds). The sandbox has no allow-scripts, so nothing in the message runs even if the
 * sanitiser missed it. allow-same-origin is there so that this page can read the frame's height
 * (to size it, no inner scrollbar) and so that the frame's image requests to /jmap/download and
 * /webmail/image carry our SameSite=Strict session cookie; without scripts in the frame it grants
 * the message nothing. allow-popups(-to-escape-sandbox) lets a link open in a normal new tab.
 */
import { useEffect, useMemo, useRef } from 'preact/hooks';
import { prepareMessageHtml } from './message-html.ts';

export interface MessageFrameProps {
  /** The message's HTML body, as sent. */
  html: string;
  /** Load remote images through our image proxy. */
  allowRemote: boolean;
  /** The same-origin URL of the part with this Content-ID, or undefined. */
  cidUrl: (cid: string) => string | undefined;
  /** Told how many remote images were blocked (0 included), after each preparation. */
  onRemoteBlocked?: (count: number) => void;
}

export function MessageFrame({ html, allowRemote, cidUrl, onRemoteBlocked }: MessageFrameProps) {
  const frame = useRef<HTMLIFrameElement>(null);
  // cidUrl is often a new function each render; the body only changes with html/allowRemote.
  const cid = useRef(cidUrl);
  cid.current = cidUrl;
  const prepared = useMemo(() => prepareMessageHtml(html, { allowRemote, cidUrl: (id) => cid.current(id) }), [html, allowRemote]);

  useEffect(() => {
    onRemoteBlocked?.(prepared.remoteBlocked);
    // Reporting once per preparation is the point; a new callback identity is not a new count.
  }, [prepared]);

  useEffect(() => {
    const iframe = frame.current;
    if (!iframe) return;
    let observer: ResizeObserver | undefined;
    let doc: Document | null = null;
    // The frame is as tall as its content: the reader pane scrolls, not the frame.
    // scrollHeight is never less than the frame's own height, so it is read with the frame
    // collapsed (in one task, so nothing is painted in between): a shorter message then shrinks it.
    const fit = () => {
      const d = iframe.contentDocument;
      if (!d?.documentElement) return;
      iframe.style.height = '0px';
      iframe.style.height = `${Math.ceil(d.documentElement.scrollHeight)}px`;
    };
    const onLoad = () => {
      doc = iframe.contentDocument;
      fit();
      if (!doc) return;
      // Images that arrive after the frame's load event (lazy ones) change the height; load
      // events do not bubble, so listen in the capture phase. A ResizeObserver on the body
      // catches the rest (a narrower window that makes the text wrap more).
      doc.addEventListener('load', fit, true);
      observer?.disconnect();
      if (doc.body && typeof ResizeObserver === 'function') {
        observer = new ResizeObserver(fit);
        observer.observe(doc.body);
      }
    };
    iframe.addEventListener('load', onLoad);
    return () => {
      iframe.removeEventListener('load', onLoad);
      doc?.removeEventListener('load', fit, true);
      observer?.disconnect();
    };
  }, [prepared]);

  return (
    <iframe
      ref={frame}
      title="Message body"
      class="message-frame"
      sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox"
      referrerpolicy="no-referrer"
      srcdoc={prepared.document}
      style={{ width: '100%', border: 0, display: 'block' }}
    />
  );
}
