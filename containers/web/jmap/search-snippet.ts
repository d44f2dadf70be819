/**
 * SearchSnippet/get (RFC 8621 §5.1): for each Email, its subject and a fragment of its text with
 * the filter's search terms marked `<mark>…</mark>`, HTML-escaped otherwise (§5: "the snippet is
 * HTML"). Terms are the positive `text`, `subject` (subject only) and `body` (preview only)
 * conditions of the filter. The fragment is the stored preview (core/mail/mime.ts: the start of
 * the first text part), so a term that occurs only deeper in the body gives `preview: null`; no
 * message is read, which keeps the call as cheap as the query it follows.
 */
import { foldCase } from '../../imap/search-text.js';
import { accountIndex, filterTerms } from './email-query.js';
import { MAIL_CAPABILITY, MethodError, type JmapContext, type JmapMethods, type JsonObject } from './types.js';

/** Most emailIds one call takes (the engine's maxObjectsInGet applies as for a /get). */
export const MAX_SNIPPETS = 500;

/** RFC 8621 §5.1 names the three replacements: &, < and >. */
const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;' };
/** A preview snippet "MUST NOT be bigger than 255 octets" (RFC 8621 §5.1), markup included. */
export const MAX_PREVIEW_OCTETS = 255;
/** Characters kept before the first match when a preview must be cut to fit. */
const LEAD = 30;

function escapeHtml(s: string): string {
  return s.replace(/[&<>]/g, (c) => ESCAPES[c]!);
}

/**
 * The marked preview within MAX_PREVIEW_OCTETS: when the whole is too long, a window that starts
 * a little before the first match, shortened from its end until it fits (re-marked each time, so
 * no tag or entity is ever cut).
 */
export function previewSnippet(text: string, terms: string[]): string | undefined {
  const whole = markTerms(text, terms);
  if (whole === undefined || Buffer.byteLength(whole) <= MAX_PREVIEW_OCTETS) return whole;
  let first = Math.max(0, matchRanges(text, terms)[0]![0] - LEAD);
  if (/[\udc00-\udfff]/.test(text[first] ?? '')) first++; // never start inside a surrogate pair
  let chars = [...text.slice(first)];
  let out = markTerms(chars.join(''), terms) ?? '';
  while (Buffer.byteLength(out) > MAX_PREVIEW_OCTETS && chars.length > 0) {
    chars = chars.slice(0, Math.max(0, chars.length - Math.ceil((Buffer.byteLength(out) - MAX_PREVIEW_OCTETS) / 4) - 1));
    out = markTerms(chars.join(''), terms) ?? escapeHtml(chars.join(''));
  }
  return out;
}

/**
 * Where terms occur in `text`, case-insensitively, as [start, end) offsets of the original,
 * sorted by start. Case is folded per code point (as IMAP SEARCH folds, search-text.ts) with a
 * map back to the original offsets, since folding may change a string's length.
 */
function matchRanges(text: string, terms: string[]): [number, number][] {
  const needles = terms.map(foldCase).filter((t) => t.length > 0);
  if (needles.length === 0 || !text) return [];
  let folded = '';
  const origin: number[] = []; // folded offset -> original offset
  let offset = 0;
  for (const ch of text) {
    const f = foldCase(ch);
    for (let i = 0; i < f.length; i++) origin.push(offset);
    folded += f;
    offset += ch.length;
  }
  origin.push(text.length);
  const ranges: [number, number][] = [];
  for (const needle of needles) {
    for (let at = folded.indexOf(needle); at >= 0; at = folded.indexOf(needle, at + needle.length)) {
      ranges.push([origin[at]!, origin[at + needle.length] ?? text.length]);
    }
  }
  return ranges.sort((a, b) => a[0] - b[0]);
}

/** `text` with every case-insensitive occurrence of a term marked, HTML-escaped; undefined when no term occurs. */
export function markTerms(text: string, terms: string[]): string | undefined {
  const ranges = matchRanges(text, terms);
  if (ranges.length === 0) return undefined;
  let out = '';
  let pos = 0;
  let open: [number, number] | undefined;
  const flush = () => {
    if (!open) return;
    out += `${escapeHtml(text.slice(pos, open[0]))}<mark>${escapeHtml(text.slice(open[0], open[1]))}</mark>`;
    pos = open[1];
  };
  for (const r of ranges) {
    if (open && r[0] <= open[1]) open[1] = Math.max(open[1], r[1]);
    else {
      flush();
      open = [r[0], r[1]];
    }
  }
  flush();
  return out + escapeHtml(text.slice(pos));
}

/** SearchSnippet/get (RFC 8621 §5.1). */
async function searchSnippetGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const ids = args.emailIds;
  if (!Array.isArray(ids) || !ids.every((id) => typeof id === 'string')) throw new MethodError('invalidArguments', 'emailIds must be a list of ids');
  if (ids.length > MAX_SNIPPETS) throw new MethodError('requestTooLarge', `at most ${MAX_SNIPPETS} emailIds`);
  const terms = filterTerms(args.filter);
  const index = await accountIndex(ctx);
  const list: JsonObject[] = [];
  const notFound: string[] = [];
  for (const id of new Set(ids as string[])) {
    const e = index.emails.get(id);
    if (!e) {
      notFound.push(id);
      continue;
    }
    const subject = typeof e.fields.subject === 'string' ? e.fields.subject : '';
    list.push({ emailId: id, subject: markTerms(subject, terms.subject) ?? null, preview: previewSnippet(e.preview, terms.body) ?? null });
  }
  return { accountId: ctx.accountId, list, notFound };
}

/** The methods of this module. */
export const searchSnippetMethods: JmapMethods = {
  capability: MAIL_CAPABILITY,
  methods: { 'SearchSnippet/get': searchSnippetGet },
};
