/**
 * Imports a Maildir folder or an mbox file into a mailbox, streaming one message at a time
 * through a temporary file (so its SHA-256 is known before anything is stored). Resumable: a
 * message's delivery id is its SHA-256 (CRLF line ends) and how many identical messages came
 * before it in the source (`import:<sha256>` for the first, `import:<sha256>#<n>` for the n-th
 * copy after it), so a second run skips what the first stored while two real copies in the source
 * stay two; the id does not depend on a Maildir file's flags suffix or an mbox message's position,
 * which change without the message changing. The blob key `import/<sha256>` is shared by copies
 * and by mailboxes importing the same message.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { summarizeForMailbox } from '../mail/imap-structure.js';
import { isStorageError, type Blobs } from '../storage/ports.js';
import { linePieces, stripCr } from './lines.js';
import { readMbox, sha256Hasher, type MessageSink } from './mbox.js';
import { QuotaExceeded, type MailboxStore } from './store.js';

/** What an import did. */
export interface ImportReport {
  format: 'maildir' | 'mbox';
  /** Messages found in the source. */
  found: number;
  imported: number;
  /** Already in the mailbox (imported by an earlier run from this or another source). */
  skipped: number;
  refused: { source: string; reason: string }[];
  /** Bytes of the imported messages. */
  bytes: number;
}

/** Progress of an import, for a progress bar. */
export interface ImportProgress {
  done: number;
  /** Messages in the source when known up front (Maildir). */
  total?: number;
  /** Bytes read so far and the file size (mbox). */
  bytesRead?: number;
  bytesTotal?: number;
}

/** Options of importMailbox. */
export interface ImportOptions {
  user: string;
  /** A Maildir folder (with cur/ and new/) or an mbox file. */
  path: string;
  store: MailboxStore;
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

// Maildir info flags (cr.yp.to/proto/maildir.html, ":2," suffix) as IMAP system flags.
const MAILDIR_FLAGS: Record<string, string> = { D: '\\Draft', F: '\\Flagged', R: '\\Answered', S: '\\Seen', T: '\\Deleted' };

function maildirFlags(name: string): string[] {
  const i = name.lastIndexOf(':2,');
  if (i < 0) return [];
  return [...name.slice(i + 3)].map((c) => MAILDIR_FLAGS[c]).filter((f): f is string => Boolean(f));
}

/** Imports every message of `path`; throws only when the source cannot be read at all. */
export async function importMailbox(o: ImportOptions): Promise<ImportReport> {
  const now = o.now ?? (() => new Date());
  const info = await stat(o.path);
  const format: ImportReport['format'] = info.isDirectory() ? 'maildir' : 'mbox';
  const report: ImportReport = { format, found: 0, imported: 0, skipped: 0, refused: [], bytes: 0 };
  const tmp = await mkdtemp(join(tmpdir(), 'tomlinson-import-'));
  const holder = `import:${randomUUID()}`;
  let seq = 0;
  /** Identical messages seen so far in this source, by SHA-256. */
  const copies = new Map<string, number>();
  const newTemp = () => new TempMessage(join(tmp, `${++seq}.eml`), o.maxBytes);

  const take = async (c: Candidate) => {
    report.found++;
    try {
      await store(c);
    } finally {
      await rm(c.msg.path, { force: true });
    }
  };

  const store = async (c: Candidate) => {
    const { msg } = c;
    if (msg.tooLarge) return void report.refused.push({ source: c.source, reason: `larger than the ${o.maxBytes}-byte message limit` });
    if (msg.size === 0) return void report.refused.push({ source: c.source, reason: 'empty message' });
    if (!HEADER_LINE.test(msg.firstLine)) return void report.refused.push({ source: c.source, reason: 'does not start with a header field' });
    const sha = msg.hash.digest();
    const copy = copies.get(sha) ?? 0;
    copies.set(sha, copy + 1);
    const jobId = copy ? `import:${sha}#${copy}` : `import:${sha}`;
    if ((await o.store.delivered(jobId, o.user)) !== undefined) return void report.skipped++;
    const blobKey = `import/${sha}`;
    // The hold keeps the blob referenced between the put and the delivery, and lets it be
    // deleted again if the delivery is refused (quota).
    await o.store.holdBlob(blobKey, holder);
    try {
      try {
        await o.blobs.put(blobKey, createReadStream(msg.path), { ifAbsent: true, maxBytes: o.maxBytes, contentType: 'message/rfc822' });
      } catch (e) {
        if (!isStorageError(e, 'ConditionFailed')) throw e; // same content already stored: share it
      }
      const summary = await summarizeForMailbox(createReadStream(msg.path));
      try {
        const r = await o.store.deliver(o.user, { jobId, blobKey, size: msg.size, receivedAt: c.receivedAt.toISOString(), summary, markerTtlSeconds: 0 });
        if (r.duplicate) report.skipped++;
        else {
          report.imported++;
          report.bytes += msg.size;
          if (c.flags.length) await o.store.setFlags(o.user, r.uid, c.flags);
        }
      } catch (e) {
        if (!(e instanceof QuotaExceeded)) throw e;
        report.refused.push({ source: c.source, reason: `mailbox full (quota ${e.quotaBytes} bytes, ${e.usedBytes} used)` });
      }
    } finally {
      await o.store.releaseBlob(blobKey, holder);
    }
  };

  try {
    if (format === 'maildir') {
      const files: { dir: string; name: string }[] = [];
      let sawFolder = false;
      for (const dir of ['new', 'cur']) {
        let names: string[];
        try {
          names = await readdir(join(o.path, dir));
          sawFolder = true;
        } catch {
          continue;
        }
        for (const name of names.sort()) if (!name.startsWith('.')) files.push({ dir, name });
      }
      if (!sawFolder) throw new Error(`${o.path} is not a Maildir folder: it has no cur/ or new/ folder`);
      for (const f of files) {
        const file = join(o.path, f.dir, f.name);
        const msg = newTemp();
        for await (const p of linePieces(createReadStream(file))) {
          await msg.write(stripCr(p));
          if (p.eol) await msg.write(CRLF);
        }
        await msg.end();
        // Maildir names start with the delivery time in seconds; the file time is the fallback.
        const t = /^(\d{9,11})\./.exec(f.name);
        const receivedAt = t ? new Date(Number(t[1]) * 1000) : (await stat(file)).mtime;
        await take({ source: `${f.dir}/${f.name}`, msg, receivedAt, flags: maildirFlags(f.name) });
        o.onProgress?.({ done: report.found, total: files.length });
      }
    } else {
      const input = createReadStream(o.path);
      let bytesRead = 0;
      input.on('data', (b) => (bytesRead += b.length));
      await readMbox(input, async (m) => {
        const msg = newTemp();
        const c: Candidate = { source: `message ${m.index}`, msg, receivedAt: m.date ?? now(), flags: [] };
        return {
          write: (d) => msg.write(d),
          end: async () => {
            await msg.end();
            await take(c);
            o.onProgress?.({ done: report.found, bytesRead, bytesTotal: info.size });
          },
        };
      });
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return report;
}
