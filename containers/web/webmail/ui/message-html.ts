/**
 * Turns the HTML body of a message (written by a stranger) into nodes the reader shows in the body
 * of a sandboxed iframe's document (message-frame.tsx, FRAME_DOCUMENT below). Three layers, each enough on its own for scripts:
 *   1. DOMPurify (the sanitiser; we only configure it and add hooks, we write no HTML parser)
 *      removes scripts, event handlers, forms, frames, plug-ins, <base>, <meta>, <link>, SVG and
 *      MathML, and unsafe URL schemes;
 *   2. the document carries its own Content-Security-Policy (no script, no fetch but same-origin
 *      images and data: images, no fonts, no form posts), on top of the app page's policy which
 *      an about:srcdoc document inherits;
 *   3. the iframe has no allow-scripts.
 * Privacy is the hooks' job: a message must not tell its sender when, where or whether it was
 * read, so nothing is fetched from any other origin. Remote images are removed (and counted, so
 * the reader can offer "Show images"), or, once the user asks, fetched through our own image proxy
 * (/webmail/image, which forwards no cookie, Referer or address of the reader). `cid:` parts
 * (RFC 2392) become same-origin /jmap/download URLs.
 *
 * SVG is dropped rather than sanitised: mail clients rarely send it inline, and it brings the
 * largest set of extra vectors (foreignObject, <use href>, animate/set of href, xlink, namespace
 * confusion behind most mutation-XSS finds). An SVG *image* (<img src=…svg>) still works, as an
 * image cannot run script or fetch.
 */
import DOMPurify from 'dompurify';

export interface MessageHtmlOptions {
  /** The user asked to show remote images for this message (or its sender). */
  allowRemote: boolean;
  /** The same-origin URL of the part with this Content-ID (RFC 2392), or undefined if none. */
  cidUrl: (cid: string) => string | undefined;
}

export interface PreparedMessageHtml {
  /** FRAME_DOCUMENT with the sanitised message in its body. */
  document: string;
  /** Remote images removed because allowRemote was false: what "Show images" would bring back. */
  remoteBlocked: number;
}

/**
 * The frame's own policy. img-src 'self' admits /jmap/download (cid: parts) and /webmail/image
 * (the proxy), data: admits inline images; everything else (scripts, fetch, fonts, media, frames,
 * form posts) is refused even if the sanitiser let something through.
 */
export const FRAME_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; font-src 'none'; form-action 'none'";

/** Readable defaults that a message's own styles may override; nothing here fetches. */
const BASE_STYLE = `:root{color-scheme:light}
html{background:#fff;color:#222}
body{margin:8px;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;overflow-wrap:anywhere;word-wrap:break-word}
img,video{max-width:100%;height:auto}
table{max-width:100%}
pre{white-space:pre-wrap}
blockquote{margin:0 0 0 .8ex;border-left:2px solid #ccc;padding-left:1ex}`;

/**
 * Tags removed beyond DOMPurify's defaults (which already drop script, iframe, frame, object,
 * embed, applet, base, meta, link, noscript): forms and their controls (a phishing form must not
 * post a password anywhere; form-action 'none' is the backstop), media whose source we cannot
 * proxy (<audio>, <source>, <track>), and markup that only makes sense with scripts.
 */
const FORBID_TAGS = [
  'form',
  'input',
  'button',
  'select',
  'option',
  'optgroup',
  'textarea',
  'datalist',
  'output',
  'audio',
  'source',
  'track',
  'template',
  'slot',
  'shadow',
  'content',
  'element',
  'decorator',
  'dialog',
  'canvas',
  'menuitem',
];

/**
 * Attributes removed beyond DOMPurify's defaults (which already drop every on* handler):
 * form plumbing, <a ping> (a request to the sender on each click), download (would let a link
 * save a file under a name the sender chose), and attributes that make the browser fetch or act
 * without a script (integrity/crossorigin/nonce for subresources, popover and command invokers).
 */
const FORBID_ATTR = [
  'action',
  'method',
  'enctype',
  'formaction',
  'ping',
  'download',
  'integrity',
  'crossorigin',
  'nonce',
  'popover',
  'popovertarget',
  'popovertargetaction',
  'command',
  'commandfor',
  'autoplay',
  'preload',
];

/** CSS properties whose url() is an image that "Show images" may load through the proxy. */
const IMAGE_PROPERTIES = new Set(['background-image', 'list-style-image', 'border-image-source', 'content']);

/** Inline images the frame may show: raster formats only (an SVG data: URL can carry script). */
const DATA_IMAGE = /^data:image\/(png|gif|jpeg|webp)[;,]/i;

/** State of the one sanitize() call running now (sanitize is synchronous, so one at a time). */
interface Run {
  options: MessageHtmlOptions;
  remoteBlocked: number;
}
let run: Run | undefined;

/**
 * What an image URL in the message becomes: a URL the frame may load, or undefined (removed).
 * Counts the remote ones removed because the user has not allowed remote content.
 */
function imageUrl(raw: string, r: Run): string | undefined {
  const value = raw.trim();
  if (/^cid:/i.test(value)) {
    // RFC 2392: the Content-ID, %-encoded, without its angle brackets.
    try {
      return r.options.cidUrl(decodeURIComponent(value.slice(4)));
    } catch {
      return undefined;
    }
  }
  if (DATA_IMAGE.test(value)) return value;
  if (/^https?:/i.test(value) || value.startsWith('//')) {
    let url: URL;
    try {
      url = new URL(value, 'https://invalid.invalid/');
    } catch {
      return undefined;
    }
    if (!r.options.allowRemote) {
      r.remoteBlocked++;
      return undefined;
    }
    return `/webmail/image?url=${encodeURIComponent(url.href)}`;
  }
  // Relative URLs mean nothing in a message (they would resolve against our own origin).
  return undefined;
}

/**
 * Serialised url("…") tokens. The value comes from the browser's own CSS parser (CSSOM), which
 * writes every url() in this one quoted form, escapes included, so a short pattern finds them all.
 */
const CSS_URL = /url\("((?:[^"\\]|\\.)*)"\)/g;

/**
 * Cleans one declaration block (a style attribute or one rule of a <style> sheet) in place, as the
 * browser parsed it: image URLs are rewritten or removed, any other property that would fetch
 * (cursor, mask, filter, shape-outside, …) is removed, and so are custom properties and var(),
 * because their values are kept as raw text that the parser has not normalised.
 */
function cleanDeclarations(style: CSSStyleDeclaration, r: Run): void {
  // Remove while walking backwards: CSSStyleDeclaration is a live list.
  for (let i = style.length - 1; i >= 0; i--) {
    const name = style.item(i);
    const value = style.getPropertyValue(name);
    if (name.startsWith('--') || /var\(|image-set\(|expression\(|-moz-binding|behavior/i.test(value)) {
      style.removeProperty(name);
      continue;
    }
    if (!/url\(/i.test(value)) continue;
    if (!IMAGE_PROPERTIES.has(name)) {
      style.removeProperty(name);
      continue;
    }
    let dropped = false;
    const cleaned = value.replace(CSS_URL, (_m, quoted: string) => {
      const url = imageUrl(quoted.replace(/\\(.)/g, '$1'), r);
      if (url === undefined) dropped = true;
      return `url("${(url ?? '').replace(/["\\]/g, '\\$&')}")`;
    });
    // One url() lost means the whole value goes (a list of layers cannot keep a hole); a value
    // the pattern did not fully account for is removed too.
    if (dropped || /url\((?!")/i.test(cleaned)) style.removeProperty(name);
    else style.setProperty(name, cleaned, style.getPropertyPriority(name));
  }
  // Shorthands whose value holds var() have no longhand values to walk: catch them whole.
  if (/var\(/i.test(style.cssText)) style.cssText = '';
}

/** A scratch element in a document that is never rendered: setting its style fetches nothing. */
let scratch: HTMLElement | undefined;

/** Cleans a style attribute's value through the browser's CSS parser. */
function cleanStyleAttribute(value: string, r: Run): string {
  scratch ??= document.implementation.createHTMLDocument('').createElement('div');
  scratch.setAttribute('style', value);
  cleanDeclarations(scratch.style, r);
  return scratch.style.cssText;
}

/**
 * Cleans a <style> element's text through the browser's CSS parser (a constructed sheet that is
 * never adopted, so nothing in it is fetched; replaceSync ignores @import). Only style rules
 * (nested ones too), grouping rules (@media, @supports, @layer, @container, @scope, …), @page and
 * @keyframes stay, their declarations cleaned; every other at-rule goes: @import, @font-face and
 * anything newer whose descriptors might fetch (@counter-style symbols, …). `<` is escaped so that
 * the text can never close the <style> element when the frame parses the document again.
 */
function cleanStyleSheet(text: string, r: Run): string {
  const sheet = new CSSStyleSheet();
  try {
    sheet.replaceSync(text);
  } catch {
    return '';
  }
  // `remove` deletes the i-th rule from the list being walked (a sheet's or a group's).
  const walk = (rules: CSSRuleList, remove: (i: number) => void): void => {
    for (let i = rules.length - 1; i >= 0; i--) {
      const rule = rules[i];
      const kept =
        rule instanceof CSSStyleRule ||
        rule instanceof CSSGroupingRule ||
        rule instanceof CSSPageRule ||
        rule instanceof CSSKeyframesRule ||
        rule instanceof CSSKeyframeRule ||
        rule.constructor.name === 'CSSLayerStatementRule';
      if (!kept) {
        remove(i);
        continue;
      }
      if ('style' in rule && rule.style instanceof CSSStyleDeclaration) cleanDeclarations(rule.style, r);
      // Style rules hold nested rules (CSS Nesting) and are grouping rules where that is known.
      if (rule instanceof CSSGroupingRule || (rule instanceof CSSStyleRule && 'cssRules' in rule)) {
        const group = rule as CSSGroupingRule;
        walk(group.cssRules, (j) => group.deleteRule(j));
      }
      // Keyframes hold only declaration blocks, which are never removed whole.
      else if (rule instanceof CSSKeyframesRule) walk(rule.cssRules, () => undefined);
    }
  };
  walk(sheet.cssRules, (i) => sheet.deleteRule(i));
  return Array.from(sheet.cssRules, (rule) => rule.cssText)
    .join('\n')
    .replace(/</g, '\\3c ');
}

/** Only these link schemes open: web pages and new-message links (RFC 6068). */
const LINK = /^(https?:|mailto:)/i;

/**
 * The per-element rules, run after DOMPurify has removed disallowed attributes, so they see only
 * what DOMPurify allows and tighten it.
 */
function afterSanitizeAttributes(node: Element): void {
  const r = run;
  if (!r) return;
  const tag = node.localName;
  if (tag === 'a' || tag === 'area') {
    const href = node.getAttribute('href');
    if (href !== null && !LINK.test(href.trim())) node.removeAttribute('href');
    // A new browsing context with no way back to us (window.opener) and no Referer for the sender.
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
  // srcset: candidate lists are not rewritten; an <img> with srcset but no src gets its first
  // candidate as src (then treated as any src), and the list goes.
  if (node.hasAttribute('srcset')) {
    const first = (node.getAttribute('srcset') ?? '').trim().split(/\s+/)[0]?.replace(/,$/, '');
    node.removeAttribute('srcset');
    node.removeAttribute('sizes');
    if (tag === 'img' && first && !node.hasAttribute('src')) node.setAttribute('src', first);
  }
  for (const attr of ['src', 'background', 'poster']) {
    const value = node.getAttribute(attr);
    if (value === null) continue;
    // Only images can be proxied: a video's or other element's own src is never loaded.
    const url = tag === 'img' || attr !== 'src' ? imageUrl(value, r) : undefined;
    if (url === undefined) node.removeAttribute(attr);
    else node.setAttribute(attr, url);
  }
  const style = node.getAttribute('style');
  if (style !== null) {
    const cleaned = cleanStyleAttribute(style, r);
    if (cleaned) node.setAttribute('style', cleaned);
    else node.removeAttribute('style');
  }
}

/** <style> elements: their text is CSS, which DOMPurify leaves alone; we clean it here. */
function uponSanitizeElement(node: Node, data: { tagName: string }): void {
  if (run && data.tagName === 'style' && node.textContent) node.textContent = cleanStyleSheet(node.textContent, run);
}

/** Our own DOMPurify instance, so that hooks added here never touch another user of the library. */
let purify: ReturnType<typeof DOMPurify> | undefined;

function instance(): ReturnType<typeof DOMPurify> {
  if (!purify) {
    purify = DOMPurify(window);
    purify.addHook('afterSanitizeAttributes', afterSanitizeAttributes);
    purify.addHook('uponSanitizeElement', uponSanitizeElement);
  }
  return purify;
}

/**
 * The frame's document without a message: our policy, our link target and our styles around an
 * empty body. MessageFrame loads it once and swaps each message's sanitised nodes into its body.
 */
export const FRAME_DOCUMENT =
  '<!doctype html><html><head><meta charset="utf-8">' +
  `<meta http-equiv="Content-Security-Policy" content="${FRAME_CSP}">` +
  '<meta name="referrer" content="no-referrer">' +
  // Ours, not the message's (DOMPurify removes any <base>): every link opens outside the frame.
  '<base target="_blank">' +
  `<style>${BASE_STYLE}</style></head><body></body></html>`;

export interface SanitizedMessageHtml {
  /**
   * The message's body content, sanitised. Its nodes belong to DOMPurify's inert document (one
   * with no browsing context: nothing in it loads or runs), never to the app's page; the frame
   * imports them into its own document (Document.importNode), where its CSP and sandbox apply.
   */
  body: DocumentFragment;
  /** Remote images removed because allowRemote was false: what "Show images" would bring back. */
  remoteBlocked: number;
}

/** Sanitises a message's HTML into nodes for the frame's body (see the file header). */
export function sanitizeMessageHtml(html: string, options: MessageHtmlOptions): SanitizedMessageHtml {
  const r: Run = { options, remoteBlocked: 0 };
  run = r;
  let body: DocumentFragment;
  try {
    body = instance().sanitize(html, {
      // HTML only: SVG and MathML go (see the header).
      USE_PROFILES: { html: true },
      FORBID_TAGS,
      FORBID_ATTR,
      // Parse as body content, so a message's <head><style> survives (in the body, where it
      // applies the same) instead of being dropped with the head.
      FORCE_BODY: true,
      // Nodes, not a string: the frame takes them as they are, never parsing the markup again,
      // which leaves no room for mutation XSS between the sanitiser and the frame.
      RETURN_DOM_FRAGMENT: true,
    });
  } finally {
    run = undefined;
  }
  return { body, remoteBlocked: r.remoteBlocked };
}

/** The whole frame document for a message, as a string: the same nodes, serialised (tests read it). */
export function prepareMessageHtml(html: string, options: MessageHtmlOptions): PreparedMessageHtml {
  const { body, remoteBlocked } = sanitizeMessageHtml(html, options);
  const holder = body.ownerDocument.createElement('body');
  holder.append(body);
  return { document: FRAME_DOCUMENT.replace('<body></body>', () => `<body>${holder.innerHTML}</body>`), remoteBlocked };
}
