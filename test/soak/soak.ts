/**
 * Crash-safety soak (issue 9). Drives SMTP at a steady rate with many sessions while the
 * all-in-one process is SIGKILLed at random moments and restarted; then drives it again with the
 * storage failing at random (errors injected into the real adapters). Afterwards every message
 * that got a 250 must be in its recipient's mailbox exactly once, no index item may point at a
 * missing blob, and POP3 downloads must match what was sent byte for byte. Blobs left unreferenced
 * by the kills (stored, then killed before the job was sent) are removed by the documented cleanup,
 * the orphan sweep (core/mail/sweep.ts, `tomlinson mailbox sweep`), run on its fast path once the
 * queues are drained and nothing else runs; after it no blob may be unreferenced, and the POP3
 * downloads that follow prove it deleted nothing a mailbox still needs.
 *
 * `npm run soak` runs the long form (10 kills); test/soak/soak.test.ts a short one in `npm test`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { sweepOrphanBlobs } from '../../core/mail/sweep.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import { Unavailable, type Storage } from '../../core/storage/ports.js';
import { startApp } from '../../containers/app.js';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { pop3DownloadAll, smtpSend } from './clients.js';

const root = new URL('../..', import.meta.url).pathname;
const USER = 'user@soak.test';
const PASSWORD = 'soak-password-1';

/** Options of one soak run. */
export interface SoakOptions {
  /** SIGKILLs of the process while mail flows. @default 10 */
  kills?: number;
  /** Concurrent SMTP sessions. @default 8 */
  sessions?: number;
  /** Mean time between kills. @default 3000 */
  killEveryMs?: number;
  /** How long mail flows with failing storage. @default 5000 */
  faultMs?: number;
  /** Share of blob puts and queue sends that fail in the fault phase. @default 0.2 */
  faultRate?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** The outcome; `lost` must be 0. */
export interface SoakSummary {
  sent: number;
  accepted: number;
  delivered: number;
  duplicates: number;
  lost: number;
  /** Delivered although the client never saw the 250 (the connection died after the commit). */
  unacknowledgedDelivered: number;
  kills: number;
  /** 4xx answers during the fault phase. */
  temporaryFailures: number;
  /** 250s during the fault phase. */
  acceptedUnderFaults: number;
  danglingIndexItems: number;
  /** Unreferenced blobs once the queues were drained, before the cleanup. */
  orphanBlobsBeforeCleanup: number;
  /** Blobs the orphan sweep deleted. */
  sweptBlobs: number;
  /** Unreferenced blobs after the cleanup: must be 0. */
  orphanBlobs: number;
  pop3Downloaded: number;
  pop3Mismatches: number;
}

/** The summary line the soak prints. */
export function summaryLine(s: SoakSummary): string {
  return (
    `soak: sent ${s.sent}, accepted ${s.accepted}, delivered ${s.delivered}, duplicates ${s.duplicates}, lost ${s.lost}` +
    ` (kills ${s.kills}; under storage faults: ${s.acceptedUnderFaults} accepted, ${s.temporaryFailures} 4xx;` +
    ` dangling index items ${s.danglingIndexItems}, orphan blobs ${s.orphanBlobsBeforeCleanup} before cleanup,` +
    ` ${s.sweptBlobs} swept, ${s.orphanBlobs} after; pop3 mismatches ${s.pop3Mismatches}/${s.pop3Downloaded})`
  );
}

interface Sent {
  seq: number;
  message: string;
  accepted: boolean;
  reply: string;
  phase: 'kill' | 'fault';
}

function messageFor(seq: number): string {
  const lines = [
    `From: <sender${seq % 7}@elsewhere.test>`,
    `To: <${USER}>`,
    `Subject: soak message ${seq}`,
    `Message-ID: <soak-${seq}@soak.test>`,
    `Date: ${new Date().toUTCString()}`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
  ];
  const body: string[] = [];
  const n = 20 + (seq % 150);
  for (let i = 0; i < n; i++)
    body.push(i % 17 === 0 ? `.line ${i} of message ${seq} starts with a dot` : `line ${i} of message ${seq}: ${'x'.repeat(seq % 60)}`);
  return [...lines, ...body].join('\r\n') + '\r\n';
}

async function waitHealthy(port: number, child: ChildProcess | undefined, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`tomlinson exited with ${child.exitCode} while starting`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) return;
    } catch {
      // not yet
    }
    if (Date.now() > until) throw new Error(`tomlinson not healthy within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function queueBacklog(storage: Storage): Promise<number> {
  let n = 0;
  for (const q of ['inbound', 'outbound'] as const) {
    const s = await storage.queues.stats(q);
    n += s.visible + s.inFlight + s.delayed;
  }
  return n;
}

/** Wraps storage so that a share of blob puts and queue sends fail as an unreachable backend would. */
function faulty(storage: Storage, rate: () => number): Storage {
  const inject = <T extends object>(target: T, methods: string[], what: string): T =>
    new Proxy(target, {
      get(obj, prop, receiver) {
        const v = Reflect.get(obj, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        if (typeof prop === 'string' && methods.includes(prop)) {
          return async (...args: unknown[]) => {
            if (Math.random() < rate()) {
              throw new Unavailable(`${what}.${prop} (injected by the soak)`);
            }
            return (v as (...a: unknown[]) => unknown).apply(obj, args);
          };
        }
        return (v as (...a: unknown[]) => unknown).bind(obj);
      },
    });
  return {
    ...storage,
    mail: inject(storage.mail, ['put'], 'mail'),
    queues: inject(storage.queues, ['send'], 'queues'),
    tables: storage.tables,
    cache: storage.cache,
    check: () => storage.check(),
    close: () => storage.close(),
  };
}

/** Runs the soak in a fresh data folder and returns its summary (it throws only on harness errors). */
export async function runSoak(options: SoakOptions = {}): Promise<SoakSummary> {
  const kills = options.kills ?? 10;
  const sessions = options.sessions ?? 8;
  const killEveryMs = options.killEveryMs ?? 3000;
  const faultMs = options.faultMs ?? 5000;
  const faultRate = options.faultRate ?? 0.2;
  const say = options.log ?? (() => undefined);

  const dir = await tempDir('tomlinson-soak-');
  const [smtp, sub, subs, pop, pops, proxy, health] = await freePorts(7);
  const env: Record<string, string> = {
    TOMLINSON_DATA_DIR: join(dir.path, 'data'),
    TOMLINSON_SMTP_PORT: String(smtp),
    TOMLINSON_SUBMISSION_PORT: String(sub),
    TOMLINSON_SUBMISSIONS_PORT: String(subs),
    TOMLINSON_POP3_PORT: String(pop),
    TOMLINSON_POP3S_PORT: String(pops),
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_IMAPS_PORT: '0',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_PROXY_ENABLED: 'false',
    TOMLINSON_PROXY_PORT: String(proxy),
    TOMLINSON_HEALTH_PORT: String(health),
    // The soak is about durability; SPF/DKIM/DMARC lookups would only wait on absent DNS.
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    // A job held by a killed worker comes back after this many seconds.
    TOMLINSON_WORKER_VISIBILITY: '3',
    TOMLINSON_LOG_PRETTY: 'false',
    TOMLINSON_LOG_LEVEL: 'warn',
  };
  const config: Config = loadConfig(env);
  const childLog = createWriteStream(join(dir.path, 'tomlinson.log'));

  {
    const storage = await openLocalStorage(config, silentLogger);
    const accounts = new Accounts(storage.tables);
    await accounts.addDomain('soak.test');
    await accounts.addUser(USER, PASSWORD);
    await storage.close();
  }

  let child: ChildProcess | undefined;
  const startChild = async () => {
    child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'smtp,pop3,workers'], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(childLog, { end: false });
    child.stderr!.pipe(childLog, { end: false });
    await waitHealthy(health, child, 120_000);
  };
  const exited = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

  const sent: Sent[] = [];
  let seq = 0;
  let sending = true;
  let phase: Sent['phase'] = 'kill';
  const sender = async () => {
    while (sending) {
      const n = ++seq;
      const message = messageFor(n);
      const p = phase;
      const r = await smtpSend(smtp, `sender${n % 7}@elsewhere.test`, USER, message, 20_000);
      if (r.refused) {
        // The process is restarting; nothing was offered, so nothing counts as sent.
        await new Promise((res) => setTimeout(res, 100));
        continue;
      }
      sent.push({ seq: n, message, accepted: r.accepted, reply: r.reply, phase: p });
      if (!r.accepted && r.reply.startsWith('error')) await new Promise((res) => setTimeout(res, 50));
    }
  };

  try {
    // Phase 1: SIGKILL at random moments while mail flows.
    await startChild();
    say(`phase 1: ${sessions} sessions, ${kills} kills`);
    const senders = Array.from({ length: sessions }, () => sender());
    for (let k = 0; k < kills; k++) {
      await new Promise((r) => setTimeout(r, killEveryMs * (0.5 + Math.random())));
      const c = child!;
      c.kill('SIGKILL');
      await exited(c);
      say(`kill ${k + 1}/${kills} after ${sent.length} sends`);
      await startChild();
    }
    await new Promise((r) => setTimeout(r, killEveryMs / 2));
    sending = false;
    await Promise.all(senders);
    const c = child!;
    c.kill('SIGTERM');
    await exited(c);
    child = undefined;

    // Phase 2: the same process code in this process, with storage failing at random.
    say(`phase 2: storage faults at ${Math.round(faultRate * 100)}% for ${faultMs} ms`);
    let rate = faultRate;
    const app = await startApp(config, ['smtp', 'workers'], silentLogger, { wrapStorage: (s) => faulty(s, () => rate) });
    sending = true;
    phase = 'fault';
    const faultSenders = Array.from({ length: sessions }, () => sender());
    await new Promise((r) => setTimeout(r, faultMs));
    sending = false;
    await Promise.all(faultSenders);
    rate = 0;
    const until = Date.now() + 120_000;
    while ((await queueBacklog(app.storage)) > 0) {
      if (Date.now() > until) throw new Error('queues did not drain within 120 s');
      await new Promise((r) => setTimeout(r, 200));
    }
    await app.close(5000);

    // Verification against the storage itself.
    const storage = await openLocalStorage(config, silentLogger);
    const unreferenced = async (referenced: Set<string>): Promise<number> => {
      let n = 0;
      let cursor: string | undefined;
      do {
        const page = await storage.mail.list('', { cursor, limit: 1000 });
        for (const b of page.items) if (!referenced.has(b.key)) n++;
        cursor = page.cursor;
      } while (cursor);
      return n;
    };
    const referencedKeys = async () => new Set((await new MailboxStore(storage.tables, storage.mail).list(USER)).map((e) => e.blobKey));
    const orphansBefore = await unreferenced(await referencedKeys());
    // The documented cleanup: its fast path (every queue empty), deleting on first sight because no
    // listener or worker runs now (`tomlinson mailbox sweep --settle-minutes 0`).
    const swept = await sweepOrphanBlobs(storage, { settleSeconds: 0 });
    if (!swept.quiescent) say(`cleanup: the queues were not empty (a dead-letter queue?); only the grace rule applied`);
    const entries = await new MailboxStore(storage.tables, storage.mail).list(USER);
    const inMailbox = new Map<number, number>();
    const referenced = new Set<string>();
    let dangling = 0;
    for (const e of entries) {
      const id = String((e.summary as Record<string, unknown>).messageId ?? '');
      const m = /^<soak-(\d+)@soak\.test>$/.exec(id);
      if (m) inMailbox.set(Number(m[1]), (inMailbox.get(Number(m[1])) ?? 0) + 1);
      referenced.add(e.blobKey);
      try {
        await storage.mail.head(e.blobKey);
      } catch {
        dangling++;
      }
    }
    const orphans = await unreferenced(referenced);
    await storage.close();

    const accepted = sent.filter((s) => s.accepted);
    let lost = 0;
    let duplicates = 0;
    for (const s of accepted) {
      const n = inMailbox.get(s.seq) ?? 0;
      if (n === 0) {
        lost++;
        say(`LOST: message ${s.seq} (${s.phase}) got "${s.reply}" but is not in the mailbox`);
      }
      if (n > 1) duplicates += n - 1;
    }
    const acceptedSeqs = new Set(accepted.map((s) => s.seq));
    const unacknowledged = [...inMailbox.keys()].filter((k) => !acceptedSeqs.has(k)).length;

    // POP3 through the real process: byte-identical to what was sent, after the added headers.
    await startChild();
    const downloads = await pop3DownloadAll(pop, USER, PASSWORD);
    const bySeq = new Map(sent.map((s) => [s.seq, s.message]));
    let mismatches = 0;
    for (const d of downloads) {
      const m = /^Message-ID: <soak-(\d+)@soak\.test>\r$/m.exec(d);
      const original = m ? bySeq.get(Number(m[1])) : undefined;
      if (!original || !d.endsWith(original)) mismatches++;
    }
    const c2 = child!;
    c2.kill('SIGTERM');
    await exited(c2);
    child = undefined;

    const fault = sent.filter((s) => s.phase === 'fault');
    return {
      sent: sent.length,
      accepted: accepted.length,
      delivered: accepted.length - lost,
      duplicates,
      lost,
      unacknowledgedDelivered: unacknowledged,
      kills,
      temporaryFailures: fault.filter((s) => /^4\d\d/.test(s.reply)).length,
      acceptedUnderFaults: fault.filter((s) => s.accepted).length,
      danglingIndexItems: dangling,
      orphanBlobsBeforeCleanup: orphansBefore,
      sweptBlobs: swept.deleted,
      orphanBlobs: orphans,
      pop3Downloaded: downloads.length,
      pop3Mismatches: mismatches,
    };
  } finally {
    sending = false;
    if (child && child.exitCode === null) child.kill('SIGKILL');
    childLog.end();
    if (!process.env.TOMLINSON_SOAK_KEEP) await dir.remove();
    else say(`data kept in ${dir.path}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const log = createLogger({ level: 'info' });
  const kills = Number(process.env.SOAK_KILLS ?? 10);
  runSoak({ kills, log: (l) => log.info(l) }).then(
    (s) => {
      process.stdout.write(summaryLine(s) + '\n');
      const ok = s.lost === 0 && s.duplicates === 0 && s.danglingIndexItems === 0 && s.orphanBlobs === 0 && s.pop3Mismatches === 0;
      process.exit(ok ? 0 : 1);
    },
    (e: Error) => {
      process.stderr.write(`soak failed: ${e.stack ?? e.message}\n`);
      process.exit(1);
    },
  );
}
