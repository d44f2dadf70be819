/**
 * Blobs as files under one root folder (`<dataDir>/blobs/mail`, `<dataDir>/blobs/cache`).
 *
 * A put writes a temporary file in `<root>/.tmp/` (same filesystem), hashes and counts the bytes as
 * they arrive, fdatasyncs, then renames it into place (or links it, for put-if-absent, so that
 * exactly one racer wins), and fsyncs the directory. Readers open the final name only, so they see
 * a whole object or none; a crash leaves at most an orphaned temporary file that `open` removes.
 *
 * Each file starts with a small header that holds the object's sha256, content type and metadata.
 * Keeping them inside the file (rather than in a sidecar) makes them atomic with the object: one
 * rename publishes both, and there is no state where one exists without the other. The sha256 is
 * only known at the end of the stream, so the header reserves its place and we `pwrite` it before
 * the fsync.
 *
 * Key layout: a key `a/b/c` is the file `a%2F/b%2F/c`: every folder name ends in `%2F` so that
 * the keys `a` and `a/b` can both exist (as S3 allows), `%` is escaped as `%25` and a leading `.`
 * as `%2E`, so no key can reach `.tmp` or collide with a folder.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants as fsConstants, fstatSync, openSync, readSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from '../../log.js';
import {
  ConditionFailed,
  InvalidRequest,
  NotFound,
  StorageError,
  TooLarge,
  Unavailable,
  type BlobBody,
  type BlobInfo,
  type BlobListPage,
  type BlobPutOptions,
  type Blobs,
  type ByteRange,
  type SmallBlobReader,
} from '../ports.js';
import { GroupSync } from './group-sync.js';
import { compareUtf8 } from './order.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from './private.js';

/** Objects (with their header) up to this size are read whole with the header, in one read. */
const SMALL_READ_BYTES = 64 * 1024;

const MAGIC = 'TMLB1 ';
/** `TMLB1 <8 hex: header length> <64 hex: sha256>\n<json>\n` */
const FIXED = MAGIC.length + 8 + 1 + 64 + 1;
const SHA_OFFSET = MAGIC.length + 8 + 1;
const TMP = '.tmp';
const DIR_SUFFIX = '%2F';
/** S3's limit on key length, kept here so that both families accept the same keys. */
const MAX_KEY_BYTES = 1024;
/** Metadata travels in S3 headers, limited to 2 KB in all; keep the same bound. */
const MAX_METADATA_BYTES = 2048;
/** More than any header can take (fixed part, content type, metadata JSON): bounds readSmallSync. */
const MAX_HEADER_BYTES = FIXED + MAX_METADATA_BYTES + 1024;
/** Orphaned temporary files of live processes are kept unless older than this. */
const ORPHAN_AGE_MS = 24 * 3600 * 1000;
/** Small writes are gathered into one write call up to this many bytes. */
const WRITE_CHUNK = 256 * 1024;

interface Header {
  size: number;
  headerLength: number;
  sha256: string;
  contentType?: string;
  metadata?: Record<string, string>;
}

/** Options of FsBlobs. */
export interface FsBlobsOptions {
  /** Folder holding the objects; created when absent. */
  root: string;
  log: Logger;
  /** Name used in errors and logs (e.g. `mail`). */
  name: string;
}

function encodeSegment(s: string): string {
  // The usual segment needs no escaping: skip the regular expression (RETR computes a path per message).
  if (s.charCodeAt(0) !== 0x2e && !s.includes('%')) return s;
  let out = s.replace(/%/g, '%25');
  if (out.startsWith('.')) out = '%2E' + out.slice(1);
  return out;
}

function decodeSegment(s: string): string {
  return s.replace(/%(25|2E)/g, (_m, h: string) => (h === '25' ? '%' : '.'));
}

/** Checks a key and returns its path segments. Throws InvalidRequest. */
function keySegments(key: unknown): string[] {
  if (typeof key !== 'string' || key.length === 0) throw new InvalidRequest('blob key must be a non-empty string');
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) throw new InvalidRequest(`blob key longer than ${MAX_KEY_BYTES} bytes`);
  if (key.includes('\0')) throw new InvalidRequest('blob key contains NUL');
  if (key.startsWith('/')) throw new InvalidRequest(`blob key is absolute: ${JSON.stringify(key)}`);
  const segs = key.split('/');
  for (const s of segs) {
    if (s === '' || s === '.' || s === '..') throw new InvalidRequest(`blob key has an empty, '.' or '..' segment: ${JSON.stringify(key)}`);
  }
  return segs;
}

function fsError(e: unknown, what: string): StorageError {
  if (e instanceof StorageError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new NotFound(what, { cause: e });
  if (code === 'ENAMETOOLONG') return new InvalidRequest(`key segment too long: ${what}`, { cause: e });
  return new Unavailable(`${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

/** An error thrown by the caller's body stream, carried past our own error mapping untouched. */
class BodyError {
  constructor(readonly error: unknown) {}
}

/** Normalises every BlobBody form into an async iterable of byte chunks. */
async function* chunksOf(body: BlobBody): AsyncIterable<Uint8Array> {
  if (typeof body === 'string') {
    yield Buffer.from(body, 'utf8');
    return;
  }
  if (body instanceof Uint8Array) {
    yield body;
    return;
  }
  const it = (body as AsyncIterable<Uint8Array | string>)[Symbol.asyncIterator]();
  try {
    for (;;) {
      let r: IteratorResult<Uint8Array | string>;
      try {
        r = await it.next();
      } catch (e) {
        throw new BodyError(e);
      }
      if (r.done) return;
      yield typeof r.value === 'string' ? Buffer.from(r.value, 'utf8') : r.value;
    }
  } finally {
    // Stopping early (TooLarge, a failed write) ends the source, as a failed pipeline would.
    await it.return?.().catch(() => undefined);
  }
}

function cleanMetadata(m: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!m) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== 'string' || !/^[\x20-\x7e]*$/.test(v)) throw new InvalidRequest(`metadata ${k}: values must be printable ASCII`);
    if (!/^[a-z0-9][a-z0-9-_]*$/i.test(k)) throw new InvalidRequest(`metadata key ${JSON.stringify(k)}: use letters, digits, - and _`);
    out[k.toLowerCase()] = v;
  }
  if (Buffer.byteLength(JSON.stringify(out)) > MAX_METADATA_BYTES) throw new InvalidRequest(`metadata larger than ${MAX_METADATA_BYTES} bytes`);
  return Object.keys(out).length ? out : undefined;
}

function encodeHeader(contentType: string | undefined, metadata: Record<string, string> | undefined): Buffer {
  const json = Buffer.from(JSON.stringify({ t: contentType, m: metadata }), 'utf8');
  const total = FIXED + json.length + 1;
  const head = `${MAGIC}${total.toString(16).padStart(8, '0')} ${'0'.repeat(64)}\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), json, Buffer.from('\n')]);
}

function parseHeader(buf: Buffer, fileSize: number, what: string): Header | 'need-more' {
  if (buf.length < FIXED || buf.toString('latin1', 0, MAGIC.length) !== MAGIC) throw new Unavailable(`${what}: not a blob file (bad header)`);
  const headerLength = parseInt(buf.toString('latin1', MAGIC.length, MAGIC.length + 8), 16);
  if (!Number.isFinite(headerLength) || headerLength < FIXED || headerLength > fileSize) throw new Unavailable(`${what}: corrupt blob header`);
  if (buf.length < headerLength) return 'need-more';
  const sha256 = buf.toString('latin1', SHA_OFFSET, SHA_OFFSET + 64);
  const meta = JSON.parse(buf.toString('utf8', FIXED, headerLength - 1)) as { t?: string; m?: Record<string, string> };
  return { size: fileSize - headerLength, headerLength, sha256, contentType: meta.t, metadata: meta.m };
}

/** Options of FsBlobs.readSmallSync. */
export interface SmallReadOptions {
  /** Larger bodies are not read (undefined is returned). @default 65536 */
  maxBytes?: number;
  /** The body size the caller expects, to size the read buffer. @default 65536 */
  sizeHint?: number;
  /**
   * A buffer to read into when it is big enough (the caller reuses it from one read to the next);
   * the body returned is then a view of it. @default a new buffer
   */
  into?: Buffer;
}

/** Room for the header beyond the expected body size in readSmallSync's first read. */
const HEADER_SLACK = 512;

/** Reads from `at` until the buffer is full or the file ends; returns the octets now in `buf`. */
function readFully(fd: number, buf: Buffer, at: number): number {
  while (at < buf.length) {
    const n = readSync(fd, buf, at, buf.length - at, at);
    if (n === 0) break;
    at += n;
  }
  return at;
}

/** The header length of a blob file read whole (`got` octets), checked against the file. */
function headerLengthOf(buf: Buffer, got: number, what: string): number {
  if (got < FIXED || buf.toString('latin1', 0, MAGIC.length) !== MAGIC) throw new Unavailable(`${what}: not a blob file (bad header)`);
  const headerLength = parseInt(buf.toString('latin1', MAGIC.length, MAGIC.length + 8), 16);
  if (!Number.isFinite(headerLength) || headerLength < FIXED || headerLength > got) throw new Unavailable(`${what}: corrupt blob header`);
  return headerLength;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The local Blobs adapter: one folder of files. */
export class FsBlobs implements Blobs {
  private readonly root: string;
  private readonly tmpDir: string;
  private readonly log: Logger;
  private readonly name: string;
  private readonly dirSync = new GroupSync();
  /** Folders known to exist (saves a mkdir per put). */
  private readonly knownDirs = new Set<string>();

  private constructor(options: FsBlobsOptions) {
    this.root = resolve(options.root);
    this.tmpDir = join(options.root, TMP);
    this.log = options.log;
    this.name = options.name;
  }

  /** Creates the folders and removes temporary files orphaned by crashed processes. */
  static async open(options: FsBlobsOptions): Promise<FsBlobs> {
    const b = new FsBlobs(options);
    await fsp.mkdir(b.tmpDir, { recursive: true, mode: PRIVATE_DIR_MODE });
    // Make the folders themselves durable (they may have just been made): root, blobs/, dataDir.
    for (const d of [b.root, dirname(b.root), dirname(dirname(b.root))]) await b.dirSync.sync(d);
    b.knownDirs.add(b.root);
    await b.removeOrphans();
    return b;
  }

  /** Removes temporary files whose writer is gone (pid not alive) or that are older than a day. */
  async removeOrphans(): Promise<number> {
    let removed = 0;
    for (const name of await fsp.readdir(this.tmpDir)) {
      const pid = Number(name.split('-')[0]);
      const path = join(this.tmpDir, name);
      let stale = !Number.isInteger(pid) || pid === process.pid ? false : !isAlive(pid);
      if (!stale) {
        const st = await fsp.stat(path).catch(() => undefined);
        stale = st !== undefined && Date.now() - st.mtimeMs > ORPHAN_AGE_MS;
      }
      if (stale) {
        await fsp.rm(path, { force: true });
        removed++;
      }
    }
    if (removed) this.log.info({ blobs: this.name, removed }, 'removed orphaned temporary blob files');
    return removed;
  }

  /**
   * The folder and file of a key, by concatenation: the segments are checked (none empty, '.' or
   * '..', none holding '/') and encoded, so path.join's normalisation, a JavaScript loop over every
   * character that RETR paid per message, has nothing to change below the root (resolved once).
   */
  private pathOf(segs: string[]): { dir: string; file: string } {
    let dir = this.root;
    const last = segs.length - 1;
    for (let i = 0; i < last; i++) dir += '/' + encodeSegment(segs[i]!) + DIR_SUFFIX;
    return { dir, file: dir + '/' + encodeSegment(segs[last]!) };
  }

  async put(key: string, body: BlobBody, options: BlobPutOptions = {}): Promise<BlobInfo> {
    const segs = keySegments(key);
    const { dir, file } = this.pathOf(segs);
    const maxBytes = options.maxBytes ?? Infinity;
    const metadata = cleanMetadata(options.metadata);
    if (options.ifAbsent) {
      // Early refusal saves streaming a body we would throw away; link(2) below stays the arbiter.
      const exists = await fsp.access(file).then(
        () => true,
        () => false,
      );
      if (exists) {
        discard(body);
        throw new ConditionFailed(`blob ${key} exists`);
      }
    }
    const header = encodeHeader(options.contentType, metadata);
    const tmp = join(this.tmpDir, `${process.pid}-${randomBytes(9).toString('base64url')}`);
    let fh: fsp.FileHandle | undefined;
    let size = 0;
    try {
      fh = await fsp.open(tmp, 'wx', PRIVATE_FILE_MODE);
      const hash = createHash('sha256');
      let pending: Uint8Array[] = [header];
      let pendingBytes = header.length;
      let position = 0;
      // One write in flight while the next batch gathers: reading overlaps writing, and memory
      // stays bounded at about two batches.
      let inflight: Promise<unknown> | undefined;
      const file_ = fh;
      for await (const chunk of chunksOf(body)) {
        size += chunk.length;
        if (size > maxBytes) throw new TooLarge(maxBytes);
        hash.update(chunk);
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= WRITE_CHUNK) {
          if (inflight) await inflight;
          inflight = file_.writev(pending, position);
          inflight.catch(() => undefined); // awaited below; this only marks it handled meanwhile
          position += pendingBytes;
          pending = [];
          pendingBytes = 0;
        }
      }
      if (inflight) await inflight;
      const sha256 = hash.digest('hex');
      if (position === 0) {
        // Small object, nothing written yet: put the sha256 into the header and write once.
        header.write(sha256, SHA_OFFSET, 64, 'latin1');
        await fh.writev(pending, 0);
      } else {
        if (pendingBytes) await fh.writev(pending, position);
        await fh.write(Buffer.from(sha256, 'latin1'), 0, 64, SHA_OFFSET);
      }
      // A non-durable put (a cache object) skips both fsyncs: a crash may lose the object or
      // leave it short, which its reader detects by size; mail always takes them.
      const durable = options.durable !== false;
      if (durable) await fh.datasync();
      await fh.close();
      fh = undefined;
      await this.ensureDir(dir);
      if (options.ifAbsent) {
        try {
          await fsp.link(tmp, file);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new ConditionFailed(`blob ${key} exists`, { cause: e });
          throw e;
        }
        await fsp.unlink(tmp);
      } else {
        await fsp.rename(tmp, file);
      }
      if (durable) await this.dirSync.sync(dir);
      const info: BlobInfo = { key, size, sha256, lastModified: new Date() };
      if (options.contentType !== undefined) info.contentType = options.contentType;
      if (metadata !== undefined) info.metadata = metadata;
      return info;
    } catch (e) {
      if (fh) await fh.close().catch(() => undefined);
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      // Errors from the caller's stream are the caller's: pass them through untouched.
      if (e instanceof BodyError) throw e.error;
      throw fsError(e, `blob ${key}`);
    }
  }

  /** mkdir -p the folder and fsync the parents of any folder it created, once per folder. */
  private async ensureDir(dir: string): Promise<void> {
    if (this.knownDirs.has(dir)) return;
    const first = await fsp.mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
    if (first !== undefined) {
      // A new folder is durable only once its parent's entry is: fsync the parent of each one made.
      const created: string[] = [];
      for (let d = dir; d.length > this.root.length; d = dirname(d)) {
        created.unshift(d);
        if (d === first) break;
      }
      for (const d of created) await this.dirSync.sync(dirname(d));
    }
    this.knownDirs.add(dir);
  }

  /** Opens an object and reads its header; the first `prefetch` bytes read come back as `first`,
   * so that a small object is served from that one read. */
  private async openObject(key: string, prefetch = 4096): Promise<{ fh: fsp.FileHandle; header: Header; mtime: Date; first: Buffer }> {
    const segs = keySegments(key);
    const { file } = this.pathOf(segs);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') throw new NotFound(`blob ${key}`, { cause: e });
      throw fsError(e, `blob ${key}`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new NotFound(`blob ${key}`);
      let want = prefetch;
      for (;;) {
        const buf = Buffer.alloc(Math.min(want, st.size));
        const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
        const first = buf.subarray(0, bytesRead);
        const header = parseHeader(first, st.size, `blob ${key}`);
        if (header !== 'need-more') return { fh, header, mtime: st.mtime, first };
        want = Math.max(prefetch, parseInt(buf.toString('latin1', MAGIC.length, MAGIC.length + 8), 16));
      }
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw fsError(e, `blob ${key}`);
    }
  }

  private info(key: string, h: Header, mtime: Date): BlobInfo {
    const info: BlobInfo = { key, size: h.size, sha256: h.sha256, lastModified: mtime };
    if (h.contentType !== undefined) info.contentType = h.contentType;
    if (h.metadata !== undefined) info.metadata = h.metadata;
    return info;
  }

  async get(key: string, options: { range?: ByteRange } = {}): Promise<{ info: BlobInfo; body: Readable }> {
    const { fh, header, mtime, first } = await this.openObject(key, SMALL_READ_BYTES);
    const info = this.info(key, header, mtime);
    let start = 0;
    let end = header.size - 1;
    if (options.range) {
      const r = options.range;
      const last = r.end === undefined ? header.size - 1 : Math.min(r.end, header.size - 1);
      if (!Number.isInteger(r.start) || r.start < 0 || (r.end !== undefined && (!Number.isInteger(r.end) || r.end < r.start)) || r.start >= header.size) {
        await fh.close();
        throw new InvalidRequest(`range ${r.start}-${r.end ?? ''} of blob ${key} (${header.size} bytes)`);
      }
      start = r.start;
      end = last;
    }
    if (header.size === 0) {
      await fh.close();
      return { info, body: Readable.from([]) };
    }
    const from = header.headerLength + start;
    const to = header.headerLength + end;
    if (to < first.length) {
      // The whole range came with the header read: no second read (docs/performance.md, Local
      // storage). Bounded by SMALL_READ_BYTES.
      await fh.close();
      return { info, body: Readable.from([first.subarray(from, to + 1)]) };
    }
    // Reading through the handle we opened keeps the body consistent even if the key is replaced.
    const body = fh.createReadStream({ start: header.headerLength + start, end: header.headerLength + end, autoClose: true });
    return { info, body };
  }

  /**
   * The body of an object of at most `maxBytes` octets, read whole with blocking calls (open, one
   * read, close), or undefined when the object is larger (then use get). For hot paths that read
   * many small objects (POP3 RETR): each of the four async calls of get() is a thread-pool round
   * trip that costs more CPU than reading a small file from the page cache (see docs/performance.md,
   * Local storage). The price is that the event loop waits for one small read (on a cold page
   * cache, one disk read), so keep `maxBytes` small.
   */
  readSmallSync(key: string, options: SmallReadOptions = {}): Buffer | undefined {
    const maxBytes = options.maxBytes ?? SMALL_READ_BYTES;
    const what = `blob ${key}`;
    const { file } = this.pathOf(keySegments(key));
    let fd: number;
    try {
      // The numeric flag: 'r' is parsed again at every call (stringToFlags), on the RETR path.
      fd = openSync(file, fsConstants.O_RDONLY);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') throw new NotFound(what, { cause: e });
      throw fsError(e, what);
    }
    try {
      // Sized from the hint, so the usual read needs no fstat (which costs as much as the read),
      // and one read: a regular file reads short only at its end.
      const limit = maxBytes + MAX_HEADER_BYTES;
      const want = Math.min(limit, (options.sizeHint ?? SMALL_READ_BYTES) + HEADER_SLACK);
      let buf = options.into !== undefined && options.into.length >= want ? options.into : Buffer.allocUnsafe(want);
      let got = readSync(fd, buf, 0, buf.length, 0);
      if (got === buf.length) {
        // The hint was short (or the object is too big): size the buffer from the file itself.
        const size = fstatSync(fd).size;
        if (size > limit) return undefined;
        if (size > got) {
          const whole = Buffer.allocUnsafe(size);
          buf.copy(whole, 0, 0, got);
          buf = whole;
          got = readFully(fd, buf, got);
          if (got !== size) throw new Unavailable(`${what}: file shorter than its size`);
        }
      }
      const headerLength = headerLengthOf(buf, got, what);
      if (got - headerLength > maxBytes) return undefined;
      return buf.subarray(headerLength, got);
    } catch (e) {
      if (e instanceof Error && (e as NodeJS.ErrnoException).code === 'EISDIR') throw new NotFound(what, { cause: e });
      throw fsError(e, what);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * readSmallSync on an object of its own, for a hot path to hold (POP3 RETR). Calls through it are
   * not timed one by one by the storage instrumentation, whose histogram observation (two label
   * hashes, a timer) costs more than reading a small file from the page cache; the caller counts
   * what it does instead.
   */
  smallReader(): SmallBlobReader {
    return { readSmallSync: (key, options) => this.readSmallSync(key, options) };
  }

  async head(key: string): Promise<BlobInfo> {
    const { fh, header, mtime } = await this.openObject(key);
    await fh.close();
    return this.info(key, header, mtime);
  }

  async delete(key: string): Promise<void> {
    const { dir, file } = this.pathOf(keySegments(key));
    try {
      await fsp.unlink(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw fsError(e, `blob ${key}`);
    }
    await this.dirSync.sync(dir).catch((e) => {
      throw fsError(e, `blob ${key}`);
    });
  }

  async list(prefix: string, options: { limit?: number; cursor?: string } = {}): Promise<BlobListPage> {
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidRequest('list limit must be 1..1000');
    if (typeof prefix !== 'string') throw new InvalidRequest('list prefix must be a string');
    let after: string | undefined;
    if (options.cursor !== undefined) {
      after = Buffer.from(options.cursor, 'base64url').toString('utf8');
      if (!after) throw new InvalidRequest('bad list cursor');
    }
    // Start in the deepest folder the prefix names fully.
    const cut = prefix.lastIndexOf('/');
    const dirKey = cut >= 0 ? prefix.slice(0, cut + 1) : '';
    let dir = this.root;
    if (dirKey) {
      for (const s of dirKey.slice(0, -1).split('/')) {
        if (s === '' || s === '.' || s === '..' || s.includes('\0')) return { items: [] };
        dir = join(dir, encodeSegment(s) + DIR_SUFFIX);
      }
    }
    const items: BlobInfo[] = [];
    let more = false;
    try {
      for await (const found of this.walk(dir, dirKey, prefix, after)) {
        if (items.length === limit) {
          more = true;
          break;
        }
        items.push(found);
      }
    } catch (e) {
      throw fsError(e, `list ${prefix}`);
    }
    const page: BlobListPage = { items };
    if (more) page.cursor = Buffer.from(items[items.length - 1].key, 'utf8').toString('base64url');
    return page;
  }

  /** Keys under `dir` (whose keys start with `dirKey`) in UTF-8 byte order, filtered by prefix and cursor. */
  private async *walk(dir: string, dirKey: string, prefix: string, after: string | undefined): AsyncGenerator<BlobInfo> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw e;
    }
    const sorted: { sortKey: string; isDir: boolean; name: string }[] = [];
    for (const ent of entries) {
      if (ent.name.startsWith('.')) continue;
      if (ent.isDirectory()) {
        if (!ent.name.endsWith(DIR_SUFFIX)) continue;
        sorted.push({ sortKey: dirKey + decodeSegment(ent.name.slice(0, -DIR_SUFFIX.length)) + '/', isDir: true, name: ent.name });
      } else if (ent.isFile()) {
        sorted.push({ sortKey: dirKey + decodeSegment(ent.name), isDir: false, name: ent.name });
      }
    }
    sorted.sort((a, b) => compareUtf8(a.sortKey, b.sortKey));
    for (const e of sorted) {
      const k = e.sortKey;
      if (e.isDir) {
        if (!(k.startsWith(prefix) || prefix.startsWith(k))) continue;
        // Every key below k is longer than k and starts with it.
        if (after !== undefined && compareUtf8(after, k) >= 0 && !after.startsWith(k)) continue;
        yield* this.walk(join(dir, e.name), k, prefix, after);
      } else {
        if (!k.startsWith(prefix)) continue;
        if (after !== undefined && compareUtf8(k, after) <= 0) continue;
        try {
          yield await this.head(k);
        } catch (err) {
          if (err instanceof NotFound) continue; // deleted while we listed
          throw err;
        }
      }
    }
  }

  /** True when the folder is there and writable. */
  async check(): Promise<boolean> {
    try {
      await fsp.access(this.tmpDir, fsp.constants.W_OK);
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    await this.dirSync.close();
  }
}

/** Stops a body we refuse without reading it (a stream is destroyed, as a failed pipeline would). */
function discard(body: BlobBody): void {
  const r = body as Partial<Readable>;
  if (typeof r.destroy === 'function') r.destroy();
}
