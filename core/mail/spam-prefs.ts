/**
 * Per-user and per-domain spam settings (`npx tomlinson spam off|on|junk-to-inbox|allow|block`),
 * read by the inbound worker when it files a message and by the learn worker:
 * - `off`: the user's mail is never filed into Junk (it goes to INBOX with its X-Spam-* header
 *   fields), and their moves teach rspamd nothing;
 * - `junkToInbox`: junk goes to INBOX with the header fields (POP3 users see only INBOX); moves
 *   still teach;
 * - `allow` / `block`: sender patterns (envelope MAIL FROM) filed into INBOX whatever the verdict,
 *   or into Junk whatever the verdict; the user's own lists and their domain's apply.
 * Items: `SPAMPREF` / `<address>` for a user, `SPAMPREF` / `@<domain>` for a domain.
 */
import type { Tables } from '../storage/ports.js';

export const SPAM_PREF_PK = 'SPAMPREF';

export interface SpamPrefs {
  off: boolean;
  junkToInbox: boolean;
  allow: string[];
  block: string[];
}

const key = (who: string) => ({ pk: SPAM_PREF_PK, sk: who.toLowerCase() });

/** One item's settings (a user's address, or `@domain`). */
export async function ownPrefs(tables: Tables, who: string): Promise<SpamPrefs> {
  const it = await tables.get(key(who));
  const list = (v: unknown) => (Array.isArray(v) ? v.map(String) : []);
  return { off: it?.off === true, junkToInbox: it?.junkToInbox === true, allow: list(it?.allow), block: list(it?.block) };
}

/** A user's settings merged with their domain's (lists add up; off / junkToInbox are the user's). */
export async function spamPrefs(tables: Tables, address: string): Promise<SpamPrefs> {
  const at = address.lastIndexOf('@');
  const [user, domain] = await Promise.all([ownPrefs(tables, address), at > 0 ? ownPrefs(tables, address.slice(at)) : undefined]);
  return { ...user, allow: [...user.allow, ...(domain?.allow ?? [])], block: [...user.block, ...(domain?.block ?? [])] };
}

export async function setPrefs(tables: Tables, who: string, patch: Partial<SpamPrefs>): Promise<SpamPrefs> {
  await tables.update(key(who), { set: { ...patch } });
  return ownPrefs(tables, who);
}

/**
 * Whether a sender matches a pattern: `user@example.com` (that address), `example.com` or
 * `@example.com` (that domain), `*.example.com` (its subdomains too), or `*` wildcards.
 */
export function senderMatches(pattern: string, sender: string): boolean {
  const p = pattern.trim().toLowerCase();
  const s = sender.trim().toLowerCase();
  if (!p || !s) return false;
  const domain = s.slice(s.lastIndexOf('@') + 1);
  if (!p.includes('@') && !p.includes('*')) return domain === p;
  if (p.startsWith('@') && !p.includes('*')) return domain === p.slice(1);
  if (p.startsWith('*.') && !p.includes('@')) return domain === p.slice(2) || domain.endsWith(p.slice(1));
  const re = new RegExp(
    '^' +
      p
        .split('*')
        .map((x) => x.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*') +
      '$',
  );
  return re.test(s);
}

/** Where a message goes for this user: the verdict's folder, unless a setting says otherwise. */
export function filing(prefs: SpamPrefs, sender: string, junkVerdict: boolean): { junk: boolean; why?: string } {
  if (prefs.allow.some((p) => senderMatches(p, sender))) return { junk: false, ...(junkVerdict ? { why: 'allow list' } : {}) };
  if (prefs.block.some((p) => senderMatches(p, sender))) return { junk: true, why: 'block list' };
  if (junkVerdict && prefs.off) return { junk: false, why: 'spam filtering off for this user' };
  if (junkVerdict && prefs.junkToInbox) return { junk: false, why: 'junk to INBOX (POP3)' };
  return { junk: junkVerdict };
}
