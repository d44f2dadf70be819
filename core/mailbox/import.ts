/**
 * Imports mail into a user's folders: a Maildir++ tree (Dovecot's layout: the root's cur/ and
 * new/ are INBOX, `.Sent`, `.Archive.2024` are folders, see maildir.ts), one Maildir folder, or
 * an mbox file. Messages stream one at a time through a temporary file (so a message's SHA-256 is
 * known before anything is stored).
 *
 * Resumable and idempotent per folder: a message's append key is its SHA-256 (CRLF line ends)
 * and how many identical messages came before it in the same source folder (`import:<sha256>`
 * for the first, `import:<sha256>#<n>` for the n-th copy after it); the key's marker is kept per
 * (user, folder) for good, so a second run skips what the first stored while two real copies in
 * the source stay two. The key does not depend on a Maildir file's flags suffix or an mbox
 * message's position, which change without the message changing. For INBOX the marker is the
 * delivery marker imports always wrote, so INBOX imports made by older code are still skipped.
 * The blob key `import/<sha256>` is shared by copies, folders and users importing the same
 * message (one blob, one reference per entry).
 *
 * Quota: the first message that does not fit stops the import (`stopped` in the report): what is
 * in stays in, and after the quota is raised the same command resumes where it stopped.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { randomUUID } from 'node:crypto';
import { summarizeForMailbox } from '../mail/imap-structure.js';
import { isStorageError, type Blobs, type Tables } from '../storage/ports.js';
import { DELIMITER, type FolderStore, type SpecialUse } from './folders.js';
import { FolderError, folderKeys, INBOX } from './keys.js';
import { linePieces, stripCr } from './lines.js';
import { flagsOfFileName, listMaildirTree, listMessageFiles, readKeywords, readSubscriptions, specialUseOfName, type MaildirFolder } from './maildir.js';
import { readMbox, sha256Hasher, type MessageSink } from './mbox.js';
import { QuotaExceeded, type MailboxStore } from './store.js';

/** The source cannot be imported at all (not a Maildir, not an mbox file, a bad --folder). */
export class ImportSourceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImportSourceError';
  }
}

/** Counts of one import (of the whole source, or of one folder). */
export interface ImportCounts {
  /** Messages found in the source. */
  found: number;
  imported: number;
  /** Already in the folder (imported by an earlier run). */
  skipped: number;
  refused: { source: string; reason: string }[];
  /** Bytes of the imported messages. */
  bytes: number;
}

/** What the import did in one folder. */
export interface FolderImportReport extends ImportCounts {
  /** The folder the messages went into. */
  folder: string;
  /** Where they came from: the Maildir directory or mbox file. */
  source: string;
  specialUse?: SpecialUse;
  subscribed: boolean;
}

/** What an import did: totals, then per folder. */
export interface ImportReport extends ImportCounts {
  format: 'maildir' | 'maildir++' | 'mbox';
  folders: FolderImportReport[];
  /** Why the import stopped before the end (the quota), if it did; a re-run resumes. */
  stopped?: string;
}

/** Progress of an import, for a progress bar. */
export interface ImportProgress {
  /** The folder being imported. */
  folder: string;
  done: number;
  /** Messages in the folder when known up front (Maildir). */
  total?: number;
  /** Bytes read so far and the file size (mbox). */
  bytesRead?: number;
  bytesTotal?: number;
}

/** Options of importMailbox. */
export interface ImportOptions {
  user: string;
  /** A Maildir++ tree, a Maildir folder (with cur/ and new/) or an mbox file. */
  path: string;
  /** The folder to import a single Maildir or mbox file into. @default INBOX */
  folder?: string;
  store: MailboxStore;
  /** The table the store uses, to look up append markers before storing and parsing a message
   * again (a faster re-run; without it the append's own marker check still skips it). */
  tables?: Tables;
  blobs: Blobs;
  /** Messages larger than this are refused. */
  maxBytes: number;
  onProgress?: (p: ImportProgress) => void;
  /** Injectable clock for messages without a date. @default () => new Date() */
  now?: () => Date;
}

const CRLF = Buffer.from('\r\n');
const HEADER_LINE = /^[\x21-\x39\x3b-\x7e]+:/; // RFC 5322 §2.2 field name, then ':'

/** A message being copied into a temporary file, measured and hashed as it goes. */
class TempMessage implements MessageSink {
  readonly hash = sha256Hasher();
  size = 0;
  tooLarge = false;
  firstLine = '';
  private readonly out: WriteStream;
  private done?: Promise<void>;

  constructor(
    readonly path: string,
    private readonly maxBytes: number,
  ) {
    this.out = createWriteStream(path, { mode: 0o600 });
  }

  async write(data: Buffer): Promise<void> {
    if (this.size === 0 && !this.firstLine) this.firstLine = data.subarray(0, 200).toString('latin1');
    this.size += data.length;
    this.hash.update(data);
    if (this.size > this.maxBytes) {
      this.tooLarge = true; // keep counting, stop storing
      return;
    }
    if (!this.out.write(data)) await once(this.out, 'drain');
  }

  end(): Promise<void> {
    this.done ??= new Promise((resolve, reject) => {
      this.out.once('error', reject);
      this.out.end(() => resolve());
    });
    return this.done;
  }
}

interface Candidate {
  source: string;
  msg: TempMessage;
  receivedAt: Date;
  flags: string[];
}

/** Thrown inside the readers to stop the whole import (the quota). */
class StopImport extends Error {}

/** The folder a source folder goes into, made when missing. A name that means a special use
 * (Sent, Spam...) goes into the user's folder of that use, made under this name if there is none. */
async function targetFolder(
  folders: FolderStore,
  user: string,
  name: string,
): Promise<{ id: string; name: string; specialUse?: SpecialUse; subscribed: boolean }> {
  const levels = name.split(DELIMITER);
  // The top level of a nested name is recognised as if it were a folder of its own, so that
  // `.Archive.2024` alone gives the same Archive as `.Archive` and `.Archive.2024` together.
  if (levels.length > 1 && levels[0]!.toUpperCase() !== INBOX) await targetFolder(folders, user, levels[0]!);
  const use = specialUseOfName(name);
  if (use) {
    const existing = (await folders.list(user)).find((f) => f.specialUse === use);
    if (existing) return existing;
    const sameName = await folders.find(user, name);
    if (sameName) return sameName; // a plain folder of that name: keep it plain rather than guess
    try {
      return await folders.create(user, name, { specialUse: use });
    } catch (e) {
      if (!(e instanceof FolderError && e.code === 'AlreadyExists')) throw e;
      return (await targetFolder(folders, user, name))!; // a racer made it: take theirs
    }
  }
  const found = await folders.find(user, name);
  if (found) return found;
  try {
    return await folders.create(user, name);
  } catch (e) {
    if (!(e instanceof FolderError && e.code === 'AlreadyExists')) throw e;
    return (await folders.find(user, name))!;
  }
}

/** Imports every message of `path`; throws only when the source cannot be read at all. */
export async function importMailbox(o: ImportOptions): Promise<ImportReport> {
  const now = o.now ?? (() => new Date());
  const folders = o.store.folders;
  const info = await stat(o.path);
  let sources: MaildirFolder[] = [];
  let format: ImportReport['format'] = 'mbox';
  if (info.isDirectory()) {
    sources = await listMaildirTree(o.path);
    if (!sources.length) throw new ImportSourceError(`${o.path} is not a Maildir folder: it has no cur/ or new/ folder, nor Maildir++ folders (.Sent, ...)`);
    format = sources.some((s) => s.dir !== o.path) ? 'maildir++' : 'maildir';
    if (format === 'maildir++' && o.folder !== undefined)
      throw new ImportSourceError(`${o.path} is a Maildir++ tree of ${sources.length} folders; --folder takes one Maildir folder or an mbox file`);
  }
  const report: ImportReport = { format, found: 0, imported: 0, skipped: 0, refused: [], bytes: 0, folders: [] };
  const subscriptions = format === 'maildir++' ? await readSubscriptions(o.path) : undefined;
  const tmp = await mkdtemp(join(tmpdir(), 'tomlinson-import-'));
  const holder = `import:${randomUUID()}`;
  let seq = 0;
  const newTemp = () => new TempMessage(join(tmp, `${++seq}.eml`), o.maxBytes);

  /** Opens the target folder of one source folder and returns what stores a message into it. */
  const openFolder = async (name: string, source: string) => {
    let target;
    try {
      target = await targetFolder(folders, o.user, name);
    } catch (e) {
      if (!(e instanceof FolderError)) throw e;
      throw new ImportSourceError(`cannot import into folder "${name}": ${e.message}`);
    }
    if (subscriptions && target.id !== INBOX) {
      const want = subscriptions.has(name);
      if (want !== target.subscribed) await folders.subscribe(o.user, target.id, want);
      target = { ...target, subscribed: want };
    }
    const fr: FolderImportReport = {
      folder: target.name,
      source,
      ...(target.specialUse ? { specialUse: target.specialUse } : {}),
      subscribed: target.subscribed,
      found: 0,
      imported: 0,
      skipped: 0,
      refused: [],
      bytes: 0,
    };
    report.folders.push(fr);
    /** Identical messages seen so far in this source folder, by SHA-256. */
    const copies = new Map<string, number>();
    const refuse = (c: Candidate, reason: string) => {
      fr.refused.push({ source: c.source, reason });
      report.refused.push({ source: c.source, reason });
    };

    const store = async (c: Candidate) => {
      const { msg } = c;
      if (msg.tooLarge) return refuse(c, `larger than the ${o.maxBytes}-byte message limit`);
      if (msg.size === 0) return refuse(c, 'empty message');
      if (!HEADER_LINE.test(msg.firstLine)) return refuse(c, 'does not start with a header field');
      const sha = msg.hash.digest();
      const copy = copies.get(sha) ?? 0;
      copies.set(sha, copy + 1);
      const key = copy ? `import:${sha}#${copy}` : `import:${sha}`;
      const skip = () => {
        fr.skipped++;
        report.skipped++;
      };
      if (o.tables && (await o.tables.get(folderKeys.marker(key, o.user, target.id)))) return skip();
      const blobKey = `import/${sha}`;
      // The hold keeps the blob referenced between the put and the append, and lets it be
      // deleted again if the append is refused (quota).
      await o.store.holdBlob(blobKey, holder);
      try {
        try {
          await o.blobs.put(blobKey, createReadStream(msg.path), { ifAbsent: true, maxBytes: o.maxBytes, contentType: 'message/rfc822' });
        } catch (e) {
          if (!isStorageError(e, 'ConditionFailed')) throw e; // same content already stored: share it
        }
        const summary = await summarizeForMailbox(createReadStream(msg.path));
        let r;
        try {
          r = await folders.append(o.user, target.id, {
            key,
            jobId: key,
            blobKey,
            size: msg.size,
            receivedAt: c.receivedAt.toISOString(),
            summary,
            flags: c.flags,
            markerTtlSeconds: 0,
          });
        } catch (e) {
          if (!(e instanceof QuotaExceeded)) throw e;
          refuse(c, `mailbox full (quota ${e.quotaBytes} bytes, ${e.usedBytes} used)`);
          report.stopped = `mailbox full at ${c.source} (quota ${e.quotaBytes} bytes, ${e.usedBytes} used, the message has ${e.size})`;
          throw new StopImport();
        }
        if (r.duplicate) return skip();
        fr.imported++;
        fr.bytes += msg.size;
        report.imported++;
        report.bytes += msg.size;
      } finally {
        await o.store.releaseBlob(blobKey, holder);
      }
    };

    const take = async (c: Candidate) => {
      fr.found++;
      report.found++;
      try {
        await store(c);
      } finally {
        await rm(c.msg.path, { force: true });
      }
    };
    return { take, fr };
  };

  const importMaildir = async (src: MaildirFolder) => {
    const name = format === 'maildir++' ? src.name : (o.folder ?? INBOX);
    const prefix = format === 'maildir++' && src.dir !== o.path ? `${relative(o.path, src.dir)}/` : '';
    const { take, fr } = await openFolder(name, src.dir);
    const [files, keywords] = await Promise.all([listMessageFiles(src.dir), readKeywords(src.dir)]);
    for (const f of files) {
      const file = join(src.dir, f.sub, f.name);
      const msg = newTemp();
      try {
        for await (const p of linePieces(createReadStream(file))) {
          await msg.write(stripCr(p));
          if (p.eol) await msg.write(CRLF);
        }
      } finally {
        await msg.end();
      }
      // Maildir names start with the delivery time in seconds; the file time is the fallback.
      const t = /^(\d{9,11})\./.exec(f.name);
      const receivedAt = t ? new Date(Number(t[1]) * 1000) : (await stat(file)).mtime;
      await take({ source: `${prefix}${f.sub}/${f.name}`, msg, receivedAt, flags: flagsOfFileName(f.name, keywords) });
      o.onProgress?.({ folder: fr.folder, done: fr.found, total: files.length });
    }
  };

  const importMbox = async () => {
    const { take, fr } = await openFolder(o.folder ?? INBOX, o.path);
    const input = createReadStream(o.path);
    let bytesRead = 0;
    input.on('data', (b) => (bytesRead += b.length));
    try {
      await readMbox(input, async (m) => {
        const msg = newTemp();
        const c: Candidate = { source: `message ${m.index}`, msg, receivedAt: m.date ?? now(), flags: [] };
        return {
          write: (d) => msg.write(d),
          end: async () => {
            await msg.end();
            await take(c);
            o.onProgress?.({ folder: fr.folder, done: fr.found, bytesRead, bytesTotal: info.size });
          },
        };
      });
    } catch (e) {
      input.destroy();
      if (e instanceof Error && e.message.startsWith('not an mbox file')) throw new ImportSourceError(e.message);
      throw e;
    }
  };

  try {
    if (format === 'mbox') await importMbox();
    else for (const src of sources) await importMaildir(src);
  } catch (e) {
    if (!(e instanceof StopImport)) throw e;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return report;
}
