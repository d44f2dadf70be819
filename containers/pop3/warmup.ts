/**
 * A warm-up of the POP3 code at start. Node compiles a function to fast machine code only after it
 * has run a while; until then it is interpreted. A freshly started server therefore spends its
 * first few thousand RETRs several times slower than later (measured on a 10 KB message: about
 * 250-300 µs of server CPU per RETR over the first 1,000, 60-90 µs after 3,000; one client at
 * 1,600-2,000 messages/s against 5,700-7,000). So before the listeners open, the server talks POP3
 * to itself over loopback: a private listener on 127.0.0.1, the real maildrop code over a blob
 * store in a temporary folder (one message, listed a thousand times), and a small client doing
 * LIST, RETR of every message and QUIT. The client runs in a worker thread: its sockets and calls
 * would otherwise teach the compiler shapes that real traffic never shows, and the code compiled
 * for them is thrown away at the first real client (measured: most of the gain lost). No account,
 * no mailbox, no metrics and nothing a client could reach are involved.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../core/log.js';
import type { MailboxStore } from '../../core/mailbox/store.js';
import { FsBlobs } from '../../core/storage/local/fs-blobs.js';
import type { Tables } from '../../core/storage/ports.js';
import { StoreMaildrop, uidlOf, type SnapshotMessage } from './maildrop.js';
import type { Pop3Hooks } from './session.js';

/** Messages in the warm-up maildrop: one session RETRs them all. */
const MESSAGES = 1000;
/** How long the whole warm-up may take before it is abandoned (a start must not hang on it). */
const TIMEOUT_MS = 20_000;

/** A message like mail usually is: CRLF lines, some starting with a dot (stuffing runs too). */
function sample(size: number): Buffer {
  let text = 'From: warm-up@localhost\r\nTo: warm-up@localhost\r\nSubject: warm-up\r\n\r\n';
  for (let k = 0; text.length < size; k++) text += `${k % 20 === 0 ? '.' : ''}line ${k} ${'abcdefghij'.repeat(7)}\r\n`;
  return Buffer.from(text);
}

/** The warm-up's login and maildrops, and how to remove its temporary folder. */
export interface Warmup {
  hooks: Pop3Hooks;
  user: string;
  password: string;
  close(): Promise<void>;
}

/**
 * The hooks of the private listener: one login (a random password of this process) and, for it, a
 * StoreMaildrop over an FsBlobs in a temporary folder. The lease it never needs is a stub.
 */
export async function warmupHooks(log: Logger, size = 10 * 1024): Promise<Warmup> {
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-pop3-warmup-'));
  try {
    const blobs = await FsBlobs.open({ root: dir, log, name: 'pop3-warm-up' });
    const blobKey = 'warm-up/message.eml';
    const body = sample(size);
    await blobs.put(blobKey, body, { durable: false });
    // The same fields in the same order as StoreMaildrops.open's snapshot.
    const messages: SnapshotMessage[] = Array.from({ length: MESSAGES }, (_, i) => ({ uid: i + 1, blobKey, size: body.length, uidl: uidlOf(1, i + 1) }));
    const lease = { renewLease: async () => true, releaseLease: async () => undefined } as unknown as MailboxStore;
    const user = 'warm-up';
    const password = randomBytes(12).toString('hex');
    return {
      user,
      password,
      hooks: {
        // The same members in the same order as the listeners' hooks.
        authenticate: async (login, pass) => (login === user && pass === password ? user : undefined),
        authFailed: async () => undefined,
        authSucceeded: () => undefined,
        openMaildrop: async () => new StoreMaildrop(lease, {} as Tables, blobs, user, 'warm-up', 86_400, messages, log),
      },
      close: () => rm(dir, { recursive: true, force: true }),
    };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * The client, as JavaScript for a worker thread: sessions against `port` until `retrs` RETRs were
 * answered: USER/PASS, LIST, RETR 1..n one at a time (as a client downloading a maildrop does),
 * QUIT. Commands are sequential, so a reply is complete when the data so far ends with its
 * terminator (CRLF.CRLF for a multi-line +OK, CRLF otherwise).
 */
const CLIENT = `
const net = require('node:net');
const { workerData, parentPort } = require('node:worker_threads');
const { port, user, password, retrs, messages } = workerData;
function session(n) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    const script = ['USER ' + user, 'PASS ' + password, 'LIST'];
    for (let i = 1; i <= n; i++) script.push('RETR ' + i);
    script.push('QUIT');
    let step = -1;
    let first = '';
    let tail = '';
    const next = () => {
      step++;
      first = '';
      tail = '';
      if (step < script.length) socket.write(script[step] + '\\r\\n');
    };
    socket.on('data', (d) => {
      if (first.length < 4) first += d.toString('latin1', 0, 4 - first.length);
      tail = (tail + d.toString('latin1', Math.max(0, d.length - 8))).slice(-8);
      const ok = first.startsWith('+');
      const verb = step < 0 ? '' : script[step].slice(0, 4);
      const multi = ok && (verb === 'LIST' || verb === 'RETR');
      if (!tail.endsWith(multi ? '\\r\\n.\\r\\n' : '\\r\\n')) return;
      if (!ok) {
        socket.destroy();
        return reject(new Error('warm-up: ' + (verb || 'greeting') + ' refused'));
      }
      if (verb === 'QUIT') {
        socket.destroy();
        return resolve();
      }
      next();
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('warm-up connection closed')));
  });
}
(async () => {
  let done = 0;
  while (done < retrs) {
    const n = Math.min(messages, retrs - done);
    await session(n);
    done += n;
  }
  parentPort.postMessage(done);
})().catch((e) => parentPort.postMessage({ error: e.message }));
`;

/**
 * Runs the warm-up client (above) in a worker thread against `port`; resolves with the RETRs
 * answered, rejects on a refused command, a closed connection or the timeout.
 */
export async function warmupClient(port: number, user: string, password: string, retrs: number): Promise<number> {
  const worker = new Worker(CLIENT, { eval: true, workerData: { port, user, password, retrs, messages: MESSAGES } });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<number>((resolve, reject) => {
      worker.once('message', (m: number | { error: string }) => (typeof m === 'number' ? resolve(m) : reject(new Error(m.error))));
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`warm-up client exited (${code})`)));
      timer = setTimeout(() => reject(new Error('warm-up timed out')), TIMEOUT_MS);
    });
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
}
