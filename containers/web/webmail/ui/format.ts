/** Small text helpers of the webmail (dates, sizes, names, quoting). */
import type { EmailAddress, EmailFull } from '../client/jmap-client.ts';

export function displayName(list: EmailAddress[] | null | undefined): string {
  if (!list?.length) return '(nobody)';
  return list.map((a) => a.name || a.email).join(', ');
}

/** Today: the time; this year: day and month; else the date. */
export function shortDate(iso: string, now = new Date()): string {
  const d = new Date(iso);
  if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  if (d.getFullYear() === now.getFullYear()) return d.toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
  return d.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
}

export function longDate(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'short' }) : '';
}

export function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The plain text of a message for quoting in a reply: its text parts, else its HTML's text. */
export function plainText(email: EmailFull): string {
  const text = email.textBody
    .filter((p) => p.type === 'text/plain' && p.partId)
    .map((p) => email.bodyValues[p.partId!]?.value ?? '')
    .join('\n');
  if (text.trim()) return text;
  const html = email.htmlBody
    .filter((p) => p.type === 'text/html' && p.partId)
    .map((p) => email.bodyValues[p.partId!]?.value ?? '')
    .join('\n');
  // DOMParser makes an inert document: nothing in it loads or runs.
  return html ? (new DOMParser().parseFromString(html, 'text/html').body.textContent ?? '') : '';
}

export function quote(text: string): string {
  return text
    .replace(/\s+$/, '')
    .split('\n')
    .map((l) => (l.startsWith('>') ? `>${l}` : `> ${l}`))
    .join('\n');
}

/** Adds a prefix ("Re:", "Fwd:") unless the subject already has it. */
export function prefixed(prefix: string, subject: string | null): string {
  const s = subject ?? '';
  return new RegExp(`^${prefix}`, 'i').test(s) ? s : `${prefix} ${s}`.trim();
}

/** Splits text into plain runs and http(s) links, for the plain-text reader. */
export function linkify(text: string): { text: string; href?: string }[] {
  const out: { text: string; href?: string }[] = [];
  const re = /\bhttps?:\/\/[^\s<>"')\]]+/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m.index > last) out.push({ text: text.slice(last, m.index) });
    out.push({ text: m[0], href: m[0] });
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push({ text: text.slice(last) });
  return out;
}
