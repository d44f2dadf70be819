/**
 * Maildir and Maildir++ as Dovecot and Courier lay them out (cr.yp.to/proto/maildir.html; the
 * Maildir++ folder convention; Dovecot's `dovecot-uidlist`, `dovecot-keywords` and
 * `subscriptions` files): folder directory names, message flags in file names, and the modified
 * UTF-7 that folder names are written in on disk (RFC 3501 §5.1.3).
 *
 * Pure functions and small directory reads, shared by the import (import.ts) and the Maildir++
 * export (export.ts). No library: the npm `utf7` package is unmaintained and the rest is a few
 * file formats of a few lines each.
 */
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { decodeMailboxName, encodeMailboxName } from './mailbox-name.js';
import { DELIMITER, SPECIAL_USES, type SpecialUse } from './folders.js';

// ---------------------------------------------------------------------------------------------
// Modified UTF-7 (RFC 3501 §5.1.3), shared with the IMAP listener: core/mailbox/mailbox-name.ts.

export { decodeMailboxName as decodeMailboxUtf7, encodeMailboxName as encodeMailboxUtf7 } from './mailbox-name.js';

// ---------------------------------------------------------------------------------------------
// Folder names

/** The Maildir++ separator between levels in a folder's directory name (`.Archive.2024`). */
const MAILDIRPP_SEPARATOR = '.';

/** A level of a directory name decoded from modified UTF-7 (kept as it is when it is not). */
function decodeLevel(level: string): string {
  return decodeMailboxName(level, { escaped: MAILDIRPP_SEPARATOR }) ?? level;
}

/** `.Archive.2024` → `Archive/2024`; `.B&APw-cher` → `Bücher`. */
export function folderNameOfDir(dirName: string): string {
  return dirName.slice(1).split(MAILDIRPP_SEPARATOR).map(decodeLevel).join(DELIMITER);
}

/**
 * `Archive/2024` → `.Archive.2024`. A `.` inside a level cannot be written raw (it separates
 * levels), so it is written in modified UTF-7 (`&AC4-`), which this module's reader decodes.
 */
export function dirOfFolderName(name: string): string {
  return (
    MAILDIRPP_SEPARATOR +
    name
      .split(DELIMITER)
      .map((l) => encodeMailboxName(l, MAILDIRPP_SEPARATOR))
      .join(MAILDIRPP_SEPARATOR)
  );
}

/** Top-level names that mean a special use (RFC 6154), as Dovecot, Thunderbird, Apple Mail and
 * Outlook name them. */
const SPECIAL_USE_NAMES: Record<string, SpecialUse> = {
  sent: '\\Sent',
  'sent items': '\\Sent',
  'sent messages': '\\Sent',
  'sent mail': '\\Sent',
  drafts: '\\Drafts',
  draft: '\\Drafts',
  trash: '\\Trash',
  'deleted items': '\\Trash',
  'deleted messages': '\\Trash',
  junk: '\\Junk',
  spam: '\\Junk',
  'junk e-mail': '\\Junk',
  'junk email': '\\Junk',
  archive: '\\Archive',
  archives: '\\Archive',
};

/** The special use a top-level folder's name means, if any (`Spam` → `\Junk`). */
export function specialUseOfName(name: string): SpecialUse | undefined {
  if (name.includes(DELIMITER)) return undefined;
  return SPECIAL_USE_NAMES[name.toLowerCase()];
}

/** Parses `--special-use`: `\Archive` or `Archive`, any case. */
export function parseSpecialUse(text: string): SpecialUse | undefined {
  const want = text.replace(/^\\/, '').toLowerCase();
  return (Object.keys(SPECIAL_USES) as SpecialUse[]).find((u) => u.slice(1).toLowerCase() === want);
}

// ---------------------------------------------------------------------------------------------
// Message file names

// Maildir info flags (the ":2," suffix) as IMAP system flags; lower-case letters are keywords
// numbered in the folder's dovecot-keywords file.
const FLAG_OF_LETTER: Record<string, string> = { D: '\\Draft', F: '\\Flagged', R: '\\Answered', S: '\\Seen', T: '\\Deleted' };
const LETTER_OF_FLAG = Object.fromEntries(Object.entries(FLAG_OF_LETTER).map(([k, v]) => [v.toLowerCase(), k]));

/** The IMAP flags in a Maildir file name's `:2,` suffix; `keywords` maps `a`..`z` to keywords. */
export function flagsOfFileName(name: string, keywords: Map<string, string> = new Map()): string[] {
  const i = name.lastIndexOf(':2,');
  if (i < 0) return [];
  const out: string[] = [];
  for (const c of name.slice(i + 3)) {
    const f = FLAG_OF_LETTER[c] ?? keywords.get(c);
    if (f && !out.includes(f)) out.push(f);
  }
  return out;
}

/** The `:2,` suffix for these flags, letters in ASCII order as the Maildir spec asks; a keyword
 * gets its letter from `letterOf` (undefined: not written, Maildir has only 26). */
export function infoOfFlags(flags: string[], letterOf: (keyword: string) => string | undefined): string {
  const letters = new Set<string>();
  for (const f of flags) {
    const l = f.startsWith('\\') ? LETTER_OF_FLAG[f.toLowerCase()] : letterOf(f);
    if (l) letters.add(l);
  }
  return `:2,${[...letters].sort().join('')}`;
}

/** The part of a Maildir file name that stays when its flags change (dovecot-uidlist's key). */
export function baseOfFileName(name: string): string {
  const i = name.indexOf(':');
  return i < 0 ? name : name.slice(0, i);
}

// ---------------------------------------------------------------------------------------------
// Dovecot's and Courier's side files

/** Reads a file line by line (bounded memory), or nothing when it does not exist. */
async function* lines(path: string): AsyncGenerator<string> {
  let input;
  try {
    input = createReadStream(path, { encoding: 'utf8' });
    await new Promise<void>((resolve, reject) => input!.once('open', () => resolve()).once('error', reject));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for await (const line of createInterface({ input, crlfDelay: Infinity })) yield line;
}

/**
 * The UIDs of a Dovecot `dovecot-uidlist` by file base name. Version 3 lines are
 * `<uid> [<ext>...] :<base>`, version 1 lines `<uid> <base>`; the header line is skipped.
 */
export async function readUidList(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  let first = true;
  for await (const line of lines(join(dir, 'dovecot-uidlist'))) {
    if (first) {
      first = false;
      continue;
    }
    const m = /^(\d+)(?:\s[^:]*)?\s:?(\S+)$/.exec(line) ?? /^(\d+) (\S+)$/.exec(line);
    if (m) out.set(baseOfFileName(m[2]!), Number(m[1]));
  }
  return out;
}

/** A folder's keywords by Maildir letter, from `dovecot-keywords` (`<n> <keyword>` lines). */
export async function readKeywords(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const line of lines(join(dir, 'dovecot-keywords'))) {
    const m = /^(\d+) (\S+)$/.exec(line);
    if (m && Number(m[1]) < 26) out.set(String.fromCharCode(0x61 + Number(m[1])), m[2]!);
  }
  return out;
}

/**
 * The subscribed folders of a Maildir++ root, as full names; undefined when there is no
 * subscriptions file. Dovecot 2.x writes `subscriptions` with a `V\t2` header and the levels of
 * each name separated by tabs, in modified UTF-7; older Dovecot and Courier
 * (`courierimapsubscribed`) write one name per line with `.` (or `/`) between levels, Courier
 * with an `INBOX.` prefix before every folder.
 */
export async function readSubscriptions(root: string): Promise<Set<string> | undefined> {
  let found = false;
  const out = new Set<string>();
  for (const file of ['subscriptions', 'courierimapsubscribed']) {
    let version2 = false;
    let n = 0;
    for await (const line of lines(join(root, file))) {
      found = true;
      if (n++ === 0 && line === 'V\t2') {
        version2 = true;
        continue;
      }
      if (!line) continue;
      let levels = version2 || line.includes('\t') ? line.split('\t') : line.split(/[./]/);
      if (file === 'courierimapsubscribed' && levels.length > 1 && levels[0]!.toUpperCase() === 'INBOX') levels = levels.slice(1);
      out.add(levels.map(decodeLevel).join(DELIMITER));
    }
  }
  return found ? out : undefined;
}

// ---------------------------------------------------------------------------------------------
// Walking a tree

/** One folder of a Maildir++ tree. */
export interface MaildirFolder {
  /** Our folder name (`INBOX`, `Archive/2024`). */
  name: string;
  /** The directory holding its cur/ and new/. */
  dir: string;
}

/** True when `dir` has a cur/ or new/ folder. */
export async function isMaildir(dir: string): Promise<boolean> {
  for (const sub of ['cur', 'new']) {
    try {
      if ((await stat(join(dir, sub))).isDirectory()) return true;
    } catch {
      // absent: try the other
    }
  }
  return false;
}

/**
 * The folders of a Maildir++ tree: the root itself as INBOX when it is a Maildir, and every
 * dot-named directory below it that is one (`.Sent`, `.Archive.2024`), parents before children.
 */
export async function listMaildirTree(root: string): Promise<MaildirFolder[]> {
  const out: MaildirFolder[] = [];
  if (await isMaildir(root)) out.push({ name: 'INBOX', dir: root });
  const entries = await readdir(root, { withFileTypes: true });
  const dirs = entries.filter((e) => e.isDirectory() && e.name.startsWith('.') && e.name !== '.' && e.name !== '..' && e.name.length > 1);
  const sub: MaildirFolder[] = [];
  for (const d of dirs) {
    const dir = join(root, d.name);
    if (await isMaildir(dir)) sub.push({ name: folderNameOfDir(d.name), dir });
  }
  sub.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return [...out, ...sub];
}

/** The message files of one Maildir (new/ and cur/), in the order of its dovecot-uidlist when it
 * has one (so that the old server's UID order is kept), then by name (delivery time first). */
export async function listMessageFiles(dir: string): Promise<{ sub: 'new' | 'cur'; name: string }[]> {
  const files: { sub: 'new' | 'cur'; name: string }[] = [];
  for (const sub of ['new', 'cur'] as const) {
    let names: string[];
    try {
      names = await readdir(join(dir, sub));
    } catch {
      continue;
    }
    for (const name of names) if (!name.startsWith('.')) files.push({ sub, name });
  }
  const uids = await readUidList(dir);
  const key = (f: { name: string }) => uids.get(baseOfFileName(f.name)) ?? Number.MAX_SAFE_INTEGER;
  files.sort((a, b) => key(a) - key(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return files;
}
