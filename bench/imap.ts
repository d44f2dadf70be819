/**
 * IMAP load (issue 21, "Speed"): a load client of our own that speaks IMAP over a socket, the
 * messages and folders of the bench, seeding for ours (through the mailbox store, with the stored
 * summary, so FETCH ENVELOPE and BODYSTRUCTURE come from the store) and for Dovecot (Maildir
 * files), and the measured scenarios. bench/peers/imap.ts runs them side by side.
 *
 * Run alone: `npx tsx bench/imap.ts [--runs 1] [--no-dovecot] [--imap-messages 1000]
 * [--imap-sync 10000] [--imap-big 100000]` prints the same table as `npm run bench -- --peers imap`.
 */
import { execFile } from 'node:child_process';
import { chmod, link, mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Accounts } from '../core/accounts/accounts.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { summarizeForMailbox } from '../core/mail/imap-structure.js';
import { INBOX } from '../core/mailbox/keys.js';
import { MailboxStore } from '../core/mailbox/store.js';
import type { AttrValue } from '../core/storage/ports.js';
import { openStorage } from '../core/storage/open.js';
import { dovecotUser, makeMessage } from './pop3.js';

/** The outcome of one command: its tagged status, and what came before it. */
export interface Reply {
  status: 'OK' | 'NO' | 'BAD';
  text: string;
  /** Untagged FETCH responses. */
  fetches: number;
  /** Octets of literals received (message bodies, mostly). */
  literalBytes: number;
  /** Other untagged lines (the first 4 KiB of each; SEARCH results, EXISTS...). */
  untagged: string[];
}

interface Pending extends Reply {
  tag: string;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * A minimal IMAP client for load: one connection, commands pipelined when the caller sends
 * several before awaiting, responses parsed as they stream in. Literals are counted, not kept, so
 * a FETCH of 10 MB costs the client no copies; only short lines become strings.
 */
export class ImapLoadClient {
  private pending: Pending[] = [];
  private next = 0;
  /** The response line so far (literals left out). */
  private line = '';
  /** Octets of literal still to skip before the line goes on. */
  private literalLeft = 0;
  private continuation?: () => void;
  /** Called with every untagged line as it completes (IDLE waits for EXISTS this way). */
  onUntagged?: (line: string) => void;
  private greeted!: Promise<void>;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.failAll(e));
    socket.on('close', () => this.failAll(new Error('connection closed')));
  }

  /** Connects and waits for the greeting. */
  static async connect(port: number): Promise<ImapLoadClient> {
    const socket = net.connect({ host: '127.0.0.1', port });
    const c = new ImapLoadClient(socket);
    c.greeted = new Promise((resolve, reject) => {
      c.onUntagged = (l) => (l.startsWith('* OK') ? resolve() : reject(new Error(`greeting: ${l}`)));
      socket.once('error', reject);
    });
    await c.greeted;
    c.onUntagged = undefined;
    return c;
  }

  /** Connects, logs in and (unless `folder` is null) selects a folder. */
  static async session(port: number, login: string, password: string, folder: string | null = 'INBOX'): Promise<ImapLoadClient> {
    const c = await ImapLoadClient.connect(port);
    try {
      await c.must(`LOGIN ${quote(login)} ${quote(password)}`);
      if (folder !== null) await c.must(`SELECT ${quote(folder)}`);
      return c;
    } catch (e) {
      c.close();
      throw e;
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.splice(0)) p.reject(e);
  }

  /** Sends one command (text, and for APPEND a LITERAL+ literal after it); resolves at its tagged reply. */
  send(command: string, literal?: Buffer): Promise<Reply> {
    const tag = `b${++this.next}`;
    const p = new Promise<Reply>((resolve, reject) =>
      this.pending.push({ tag, resolve, reject, status: 'OK', text: '', fetches: 0, literalBytes: 0, untagged: [] }),
    );
    if (literal) {
      this.socket.write(`${tag} ${command} {${literal.length}+}\r\n`);
      this.socket.write(literal);
      this.socket.write('\r\n');
    } else this.socket.write(`${tag} ${command}\r\n`);
    return p;
  }

  /** As `send`, throwing unless the reply is OK. */
  async must(command: string, literal?: Buffer): Promise<Reply> {
    const r = await this.send(command, literal);
    if (r.status !== 'OK') throw new Error(`${command.slice(0, 60)}: ${r.status} ${r.text}`);
    return r;
  }

  /** Starts IDLE; resolves once the server says it idles. `done()` ends it at its tagged reply. */
  async idle(): Promise<{ done: () => Promise<Reply> }> {
    const cont = new Promise<void>((resolve) => (this.continuation = resolve));
    const reply = this.send('IDLE');
    await Promise.race([cont, reply.then((r) => Promise.reject(new Error(`IDLE: ${r.status} ${r.text}`)))]);
    return {
      done: () => {
        this.socket.write('DONE\r\n');
        return reply;
      },
    };
  }

  private onData(d: Buffer): void {
    let i = 0;
    while (i < d.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, d.length - i);
        this.literalLeft -= take;
        if (this.pending[0]) this.pending[0].literalBytes += take;
        i += take;
        continue;
      }
      const nl = d.indexOf(LF, i);
      if (nl < 0) {
        this.line += d.toString('latin1', i);
        return;
      }
      this.line += d.toString('latin1', i, nl > i && d[nl - 1] === CR ? nl - 1 : nl);
      if (this.line.endsWith('\r')) this.line = this.line.slice(0, -1); // CR at the end of the last chunk
      i = nl + 1;
      const lit = /\{(\d+)\}$/.exec(this.line);
      if (lit) {
        // The line goes on after the literal; keep a mark of it, not its octets.
        this.literalLeft = Number(lit[1]);
        this.line = this.line.slice(0, lit.index) + '{}';
        continue;
      }
      const line = this.line;
      this.line = '';
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const head = this.pending[0];
    if (line.startsWith('+')) {
      const c = this.continuation;
      this.continuation = undefined;
      c?.();
      return;
    }
    if (line.startsWith('* ')) {
      this.onUntagged?.(line);
      if (!head) return;
      if (/^\* \d+ FETCH /.test(line)) head.fetches++;
      else head.untagged.push(line.slice(0, 4096));
      return;
    }
    const sp = line.indexOf(' ');
    const tag = line.slice(0, sp);
    const idx = this.pending.findIndex((p) => p.tag === tag);
    if (idx < 0) return;
    const [p] = this.pending.splice(idx, 1);
    const rest = line.slice(sp + 1);
    const status = rest.slice(0, rest.indexOf(' ') < 0 ? undefined : rest.indexOf(' ')) as Reply['status'];
    p!.resolve({ status, text: rest.slice(status.length + 1), fetches: p!.fetches, literalBytes: p!.literalBytes, untagged: p!.untagged });
  }

  /** LOGOUT, then close. */
  async logout(): Promise<void> {
    await this.send('LOGOUT').catch(() => undefined);
    this.close();
  }

  close(): void {
    this.socket.destroy();
  }
}

/** An IMAP quoted string (the bench's strings hold no quote or backslash to escape... but escape anyway). */
export function quote(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

// ---------------------------------------------------------------------------------------------
// Messages and seeding

/** Distinct senders in the sync folder: a SEARCH FROM of one of them matches 1 message in SENDERS. */
export const SENDERS = 100;

/** The word a SEARCH TEXT looks for: in the body of exactly one message of the sync folder. */
export function needle(n: number): string {
  return `needle${Math.floor(n / 2)}x`;
}

/**
 * A message of the sync folder (the "first sync" and SEARCH rows): a sender out of SENDERS,
 * every third message multipart/alternative (text and HTML) so BODYSTRUCTURE has parts to tell,
 * about `size` octets, CRLF line ends. The message at n/2 holds `needle(n)` in its body.
 */
export function syncMessage(i: number, n: number, size: number): Buffer {
  const date = new Date(Date.UTC(2024, 0, 1) + i * 60_000).toUTCString().replace('GMT', '+0000');
  const head =
    `From: Sender ${i % SENDERS} <sender${i % SENDERS}@example.org>\r\nTo: user@bench.example\r\nSubject: sync message ${i}\r\n` +
    `Date: ${date}\r\nMessage-ID: <sync-${i}@example.org>\r\nMIME-Version: 1.0\r\n`;
  const word = i === Math.floor(n / 2) ? needle(n) : 'haystack';
  const text = (budget: number) => {
    const lines: string[] = [`Hello, this is message ${i} with a ${word} in it.\r\n`];
    let len = lines[0]!.length;
    for (let k = 0; len < budget; k++) {
      const l = `line ${k} of message ${i}: the quick brown fox jumps over the lazy dog\r\n`;
      lines.push(l);
      len += l.length;
    }
    return lines.join('');
  };
  if (i % 3 !== 0) return Buffer.from(`${head}Content-Type: text/plain; charset=utf-8\r\n\r\n${text(size - head.length - 50)}`);
  const b = `b-${i}`;
  const half = Math.max(100, (size - head.length - 300) / 2);
  return Buffer.from(
    `${head}Content-Type: multipart/alternative; boundary="${b}"\r\n\r\n--${b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${text(half)}` +
      `--${b}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><pre>\r\n${text(half - 40)}</pre></body></html>\r\n--${b}--\r\n`,
  );
}

/** What the bench keeps in each server's mail store. */
export interface ImapPlan {
  /** Users with an INBOX of `messages` × `size` (the FETCH BODY and STORE rows), one per client. */
  fetchUsers: string[];
  messages: number;
  size: number;
  /** The user whose INBOX holds `syncMessages` sync messages (first sync, SEARCH). */
  syncUser: string;
  syncMessages: number;
  syncSize: number;
  /** The user APPEND and IDLE rows write to (empty INBOX at first). */
  writeUser: string;
  /** The user of the big folder, and its size (0: none). */
  bigUser: string;
  bigMessages: number;
  bigSize: number;
  password: string;
}

/** Every user of a plan. */
export function planUsers(p: ImapPlan): string[] {
  return [...p.fetchUsers, p.syncUser, p.writeUser, ...(p.bigMessages > 0 ? [p.bigUser] : [])];
}

/** Runs `fn` over 0..n-1 with at most `width` at once. */
async function pool(n: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, n) }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

/**
 * Seeds our side through the store API on the data folder (the server is not running yet): the
 * accounts, then every message with the summary the inbound worker stores (summarizeForMailbox),
 * each raw message stored once and shared by the fetch users' INBOXes. The sync and big folders
 * go in UID order, one append at a time per folder (appends to one folder commit in UID order),
 * folders side by side.
 */
export async function seedOursImap(dataDir: string, p: ImapPlan, say: (s: string) => void = () => undefined): Promise<void> {
  const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: dataDir, TOMLINSON_LOG_LEVEL: 'warn' }), silentLogger);
  try {
    const accounts = new Accounts(storage.tables);
    await accounts.addDomain('bench.example');
    for (const u of planUsers(p)) await accounts.addUser(u, p.password);
    const store = new MailboxStore(storage.tables, storage.mail);
    const folders = store.folders;
    const receivedAt = new Date().toISOString();
    // The raw files skip their fsyncs (as Dovecot's seeding does): the bench measures reads of
    // them from the page cache either way, and seeding 100,000 files with two fsyncs each takes
    // minutes. The mailbox items commit as they always do.
    const stored = async (key: string, raw: Buffer): Promise<Record<string, AttrValue>> => {
      await storage.mail.put(key, raw, { durable: false });
      return summarizeForMailbox(Readable.from([raw]));
    };
    // Appends to one folder side by side share their commits (the local store commits a turn's
    // writes together); UIDs a racing append burned leave gaps, which IMAP allows.
    const fill = async (user: string, n: number, make: (i: number) => Buffer, label: string) => {
      let done = 0;
      await pool(n, 16, async (i) => {
        const raw = make(i);
        const blobKey = `bench/${label}/${i}.eml`;
        await folders.append(user, INBOX, { blobKey, size: raw.length, receivedAt, summary: await stored(blobKey, raw) });
        if (++done % 10_000 === 0) say(`imap: seeded ${label} ${done}/${n}`);
      });
    };
    const fetchBoxes = (async () => {
      for (let i = 0; i < p.messages; i++) {
        const raw = makeMessage(i, p.size);
        const blobKey = `bench/fetch/${i}.eml`;
        const summary = await stored(blobKey, raw);
        await Promise.all(p.fetchUsers.map((u) => folders.append(u, INBOX, { blobKey, size: raw.length, receivedAt, summary })));
      }
    })();
    await Promise.all([
      fetchBoxes,
      fill(p.syncUser, p.syncMessages, (i) => syncMessage(i, p.syncMessages, p.syncSize), 'sync'),
      fill(p.bigUser, p.bigMessages, (i) => syncMessage(i, p.bigMessages, p.bigSize), 'big'),
    ]);
  } finally {
    await storage.close();
  }
}

/**
 * Seeds Dovecot's side under `dir`/dovecot: a Maildir per user with the same messages (unseen,
 * in cur/ as a client that has looked at the folder leaves them; the fetch users' files are hard
 * links of one file each), and a passwd-file. Returns the Dovecot folder.
 */
export async function seedDovecotImap(dir: string, p: ImapPlan): Promise<string> {
  const base = join(dir, 'dovecot');
  await chmod(dir, 0o755); // Dovecot's mail processes run as nobody and must enter it.
  await mkdir(join(base, 'run'), { recursive: true });
  const maildir = async (user: string) => {
    const md = join(base, 'home', dovecotUser(user), 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(md, sub), { recursive: true });
    return join(md, 'cur');
  };
  const fileName = (label: string, i: number, raw: Buffer) => `${1_700_000_000 + i}.M${i}P1.${label},S=${raw.length},W=${raw.length}:2,`;
  const shared = join(base, 'shared');
  await mkdir(shared, { recursive: true });
  const boxes = await Promise.all(p.fetchUsers.map(maildir));
  for (let i = 0; i < p.messages; i++) {
    const raw = makeMessage(i, p.size);
    const name = fileName('fetch', i, raw);
    await writeFile(join(shared, name), raw);
    for (const cur of boxes) await link(join(shared, name), join(cur, name));
  }
  const fill = async (user: string, n: number, size: number, label: string) => {
    const cur = await maildir(user);
    await pool(n, 16, async (i) => {
      const raw = syncMessage(i, n, size);
      await writeFile(join(cur, fileName(label, i, raw)), raw);
    });
  };
  await fill(p.syncUser, p.syncMessages, p.syncSize, 'sync');
  await maildir(p.writeUser);
  if (p.bigMessages > 0) await fill(p.bigUser, p.bigMessages, p.bigSize, 'big');
  await writeFile(
    join(base, 'passwd'),
    planUsers(p)
      .map((u) => `${dovecotUser(u)}:{PLAIN}${p.password}::::::\n`)
      .join(''),
  );
  await new Promise<void>((resolve, reject) =>
    execFile('chown', ['-R', 'nobody:nogroup', join(base, 'home')], (e) => (e ? reject(new Error(`chown: ${e.message}`)) : resolve())),
  );
  return base;
}

/** `npx tsx bench/imap.ts`: the side-by-side rows, printed as a table. */
async function main(): Promise<void> {
  const { runImapPeers } = await import('./peers/imap.js');
  const { reportText } = await import('./peers/report.js');
  const num = (name: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? Number(process.argv[i + 1]) : undefined;
  };
  const rep = await runImapPeers({
    runs: num('runs') ?? 1,
    messages: num('imap-messages'),
    syncMessages: num('imap-sync'),
    bigMessages: num('imap-big'),
    servers: process.argv.includes('--no-dovecot') ? ['tomlinson'] : undefined,
    say: (s) => process.stderr.write(`  ${s}\n`),
  });
  process.stdout.write(reportText(rep));
}

// Not awaited at the top level: bench/peers/imap.ts imports this module, and a dynamic import of
// it from a top-level await here would wait for this module's own evaluation forever.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) void main();
