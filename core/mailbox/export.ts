/**
 * Exports a user's mail, one message at a time from the blobs: one folder as an mbox stream
 * (mboxrd), or every folder as a Maildir++ tree that Dovecot reads as it is (the root is INBOX,
 * `Archive/2024` is `.Archive.2024`, flags in the file names, keywords in `dovecot-keywords`,
 * subscriptions in Dovecot's `subscriptions` file, INTERNALDATE as the file time, which is where
 * Dovecot reads it from).
 */
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { isStorageError, type Blobs } from '../storage/ports.js';
import { DELIMITER, type FolderMessage } from './folders.js';
import { INBOX } from './keys.js';
import { linePieces, stripCr } from './lines.js';
import { dirOfFolderName, encodeMailboxUtf7, infoOfFlags } from './maildir.js';
import { writeMboxMessage } from './mbox.js';
import type { MailboxStore } from './store.js';

/** What an export did. */
export interface ExportReport {
  exported: number;
  /** Bytes of the messages as stored (before mbox quoting and LF line ends). */
  bytes: number;
  /** UIDs whose raw message is missing from the blobs (reported, not fatal). */
  missing: number[];
}

/** Opens a message's raw blob; undefined when it is missing. */
async function openBlob(blobs: Blobs, m: { blobKey: string }): Promise<Readable | undefined> {
  try {
    return (await blobs.get(m.blobKey)).body;
  } catch (err) {
    if (!isStorageError(err, 'NotFound')) throw err;
    return undefined;
  }
}

/** Writes every message of one folder (INBOX by default) to `out` in UID order; does not end `out`. */
export async function exportMailbox(o: {
  user: string;
  store: MailboxStore;
  blobs: Blobs;
  out: Writable;
  /** @default INBOX */
  folderId?: string;
  onProgress?: (done: number, total: number) => void;
}): Promise<ExportReport> {
  const folderId = o.folderId ?? INBOX;
  const report: ExportReport = { exported: 0, bytes: 0, missing: [] };
  const total = (await o.store.folders.status(o.user, folderId)).count;
  for await (const e of o.store.folders.entries(o.user, folderId)) {
    const body = await openBlob(o.blobs, e);
    if (!body) {
      report.missing.push(e.uid);
      continue;
    }
    const from = typeof e.summary.fromAddress === 'string' ? e.summary.fromAddress : '';
    const date = Number.isNaN(Date.parse(e.receivedAt)) ? new Date(0) : new Date(e.receivedAt);
    await writeMboxMessage(o.out, body, { from, date });
    report.exported++;
    report.bytes += e.size;
    o.onProgress?.(report.exported, total);
  }
  return report;
}

/** What a Maildir++ export did in one folder. */
export interface FolderExportReport extends ExportReport {
  folder: string;
  /** The folder's directory below the root ('' for INBOX). */
  dir: string;
  /** Keywords past the 26 a Maildir folder can name, left off the messages' flags. */
  droppedKeywords: string[];
}

/** A Maildir-safe host part of a file name: the spec asks for `/` and `:` to be escaped. */
const HOST = hostname().replace(/\//g, '\\057').replace(/:/g, '\\072').replace(/\./g, '_') || 'localhost';

/**
 * Writes one message into a Maildir the way the spec delivers: into tmp/, then renamed into cur/
 * under its final name, which holds Dovecot's sizes (`S=` the file, `W=` with CRLF line ends) and
 * the flags. LF line ends, as every Maildir program writes them.
 */
async function writeMaildirMessage(dir: string, m: FolderMessage, body: Readable, info: string): Promise<void> {
  const received = Number.isNaN(Date.parse(m.receivedAt)) ? new Date(0) : new Date(m.receivedAt);
  const base = `${Math.floor(received.getTime() / 1000)}.M${m.uid}P${process.pid}.${HOST}`;
  const tmp = join(dir, 'tmp', base);
  const out = createWriteStream(tmp, { mode: 0o600 });
  let size = 0;
  let lines = 0;
  const write = async (b: Buffer) => {
    size += b.length;
    if (!out.write(b)) await once(out, 'drain');
  };
  try {
    for await (const p of linePieces(body)) {
      await write(stripCr(p));
      if (p.eol) {
        lines++;
        await write(Buffer.from('\n'));
      }
    }
    out.end();
    await finished(out);
  } catch (e) {
    out.destroy();
    throw e;
  }
  const final = join(dir, 'cur', `${base},S=${size},W=${size + lines}${info}`);
  await rename(tmp, final);
  await utimes(final, received, received); // Dovecot's INTERNALDATE of a Maildir message
}

/**
 * Writes every folder of `user` as a Maildir++ tree under `root` (which must exist and be empty):
 * the folders, their messages with flags and keywords, and the subscriptions.
 */
export async function exportMaildirTree(o: {
  user: string;
  store: MailboxStore;
  blobs: Blobs;
  root: string;
  onProgress?: (folder: string, done: number, total: number) => void;
}): Promise<ExportReport & { folders: FolderExportReport[] }> {
  const folders = o.store.folders;
  const report: ExportReport & { folders: FolderExportReport[] } = { exported: 0, bytes: 0, missing: [], folders: [] };
  const subscribed: string[] = [];
  for (const f of await folders.list(o.user)) {
    const rel = f.id === INBOX ? '' : dirOfFolderName(f.name);
    const dir = join(o.root, rel);
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(dir, sub), { recursive: true, mode: 0o700 });
    // Maildir++: the marker file that says "this is a folder, not a root".
    if (rel) await writeFile(join(dir, 'maildirfolder'), '', { mode: 0o600 });
    if (f.subscribed) subscribed.push(f.name);
    const fr: FolderExportReport = { folder: f.name, dir: rel, exported: 0, bytes: 0, missing: [], droppedKeywords: [] };
    report.folders.push(fr);
    const keywords: string[] = [];
    const letterOf = (kw: string) => {
      let i = keywords.indexOf(kw);
      if (i < 0 && keywords.length < 26) i = keywords.push(kw) - 1;
      if (i < 0) {
        if (!fr.droppedKeywords.includes(kw)) fr.droppedKeywords.push(kw);
        return undefined;
      }
      return String.fromCharCode(0x61 + i);
    };
    const total = (await folders.status(o.user, f.id)).count;
    for await (const m of folders.entries(o.user, f.id)) {
      const body = await openBlob(o.blobs, m);
      if (!body) {
        fr.missing.push(m.uid);
        report.missing.push(m.uid);
        continue;
      }
      await writeMaildirMessage(dir, m, body, infoOfFlags(m.flags, letterOf));
      fr.exported++;
      fr.bytes += m.size;
      report.exported++;
      report.bytes += m.size;
      o.onProgress?.(f.name, fr.exported, total);
    }
    if (keywords.length) await writeFile(join(dir, 'dovecot-keywords'), keywords.map((k, i) => `${i} ${k}\n`).join(''), { mode: 0o600 });
  }
  // Dovecot 2.x's subscriptions file: a version header, then one name a line, its levels in
  // modified UTF-7 separated by tabs.
  const lines = subscribed.map((n) =>
    n
      .split(DELIMITER)
      .map((l) => encodeMailboxUtf7(l))
      .join('\t'),
  );
  await writeFile(join(o.root, 'subscriptions'), `V\t2\n\n${lines.map((l) => `${l}\n`).join('')}`, { mode: 0o600 });
  return report;
}
