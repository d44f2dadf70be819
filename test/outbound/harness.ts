/**
 * Shared pieces of the outbound tests: a scripted aiosmtpd remote MX (remote_mx.py), a
 * configuration pointing the worker at the test DNS server and the remote's port, local storage
 * on a temporary folder with one injected clock for the worker, the tables and the queues, and a
 * drain loop that works the queues through the same runOne the in-process worker uses.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import type { OutboundJob } from '../../core/mail/jobs.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { QueueName, Storage } from '../../core/storage/ports.js';
import type { JobContext, JobHandler, JobOutcome } from '../../core/workers/job.js';
import { runOne } from '../../core/workers/runner.js';

const here = fileURLToPath(new URL('.', import.meta.url));

/** One event printed by the remote. */
export interface RemoteEvent {
  event: 'message' | 'rcpt-rejected';
  n?: number;
  mail_from?: string;
  mail_options?: string[];
  rcpts?: string[];
  rcpt?: string;
  file?: string | null;
  reply: string;
  tls?: boolean;
}

/** A running scripted remote MX. */
export interface RemoteMx {
  port: number;
  events: RemoteEvent[];
  dir: string;
  close(): Promise<void>;
}

/** Starts remote_mx.py with the given script (see its usage line). */
export async function startRemote(
  args: {
    dataReplies?: number[];
    reject?: Record<string, number>;
    tls?: { cert: string; key: string };
    noSmtputf8?: boolean;
    brokenTls?: boolean;
    sizeLimit?: number;
    noEhlo?: boolean;
  } = {},
): Promise<RemoteMx> {
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-remote-'));
  const argv = [join(here, 'remote_mx.py'), dir, '--data-replies', (args.dataReplies ?? [250]).join(',')];
  for (const [a, c] of Object.entries(args.reject ?? {})) argv.push('--reject', `${a}=${c}`);
  if (args.tls) argv.push('--tls', args.tls.cert, args.tls.key);
  if (args.noSmtputf8) argv.push('--no-smtputf8');
  if (args.brokenTls) argv.push('--broken-tls');
  if (args.sizeLimit) argv.push('--size-limit', String(args.sizeLimit));
  if (args.noEhlo) argv.push('--no-ehlo');
  const child: ChildProcess = spawn('/usr/bin/python3', argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  // aiosmtpd logs refused handshakes as tracebacks; keep the tail for a start-up failure only.
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  const events: RemoteEvent[] = [];
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('remote MX did not start')), 15_000);
    child.once('exit', (code) => reject(new Error(`remote MX exited with ${code}: ${stderr}`)));
    lines.on('line', (line) => {
      const m = /^READY (\d+)$/.exec(line);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      } else if (line.startsWith('{')) events.push(JSON.parse(line) as RemoteEvent);
    });
  });
  return {
    port,
    events,
    dir,
    async close() {
      child.stdin!.end();
      const exited = new Promise((r) => child.once('exit', r));
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A settable clock shared by the worker and local storage. */
export class TestClock {
  constructor(public ms = Date.parse('2026-03-01T08:00:00Z')) {}
  now = (): Date => new Date(this.ms);
  advance(seconds: number): void {
    this.ms += seconds * 1000;
  }
}

/** A worker context over fresh local storage in a temporary folder. */
export interface TestEnv {
  config: Config;
  storage: Storage;
  clock: TestClock;
  ctx: JobContext;
  close(): Promise<void>;
}

/** Opens local storage in a temporary folder with `env` settings (names as in core/config.ts). */
export async function openEnv(env: Record<string, string>, clock = new TestClock(), existingDir?: string): Promise<TestEnv> {
  const dataDir = existingDir ?? (await mkdtemp(join(tmpdir(), 'tomlinson-outbound-')));
  const config = loadConfig({ TOMLINSON_DATA_DIR: dataDir, TOMLINSON_HOSTNAME: 'mx.tomlinson.test', TOMLINSON_LOG_LEVEL: 'silent', ...env });
  const storage = await openLocalStorage(config, silentLogger, { now: () => clock.ms, purgeIntervalMs: 0 });
  const ctx: JobContext = { config, storage, log: silentLogger, now: clock.now };
  return {
    config,
    storage,
    clock,
    ctx,
    async close() {
      await storage.close();
      if (!existingDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** What a drain pass did. */
export interface DrainResult {
  outcomes: (JobOutcome | Error)[];
}

/** Works every message visible now on `queue`, each at most once per pass. */
export async function drain(env: TestEnv, queue: QueueName, handler: JobHandler, maxMessages = 50): Promise<DrainResult> {
  const outcomes: (JobOutcome | Error)[] = [];
  const seen = new Set<string>();
  while (outcomes.length < maxMessages) {
    const batch = await env.storage.queues.receive(queue, { max: 10, visibilitySeconds: 60, waitSeconds: 0 });
    const fresh = batch.filter((m) => !seen.has(m.id));
    if (fresh.length === 0) {
      // Put back what we saw twice in this pass (a retry with 0 s), for the next pass.
      for (const m of batch) await env.storage.queues.changeVisibility(queue, m.receipt, 0);
      break;
    }
    for (const m of batch) {
      if (seen.has(m.id)) {
        await env.storage.queues.changeVisibility(queue, m.receipt, 0);
        continue;
      }
      seen.add(m.id);
      outcomes.push(await runOne(queue, m, handler, env.ctx));
    }
  }
  return { outcomes };
}

/** Stores a message and enqueues its OutboundJob, as the inbound worker would. */
export async function queueMessage(env: TestEnv, job: Omit<OutboundJob, 'v' | 'blobKey' | 'size' | 'receivedAt'>, raw: string): Promise<OutboundJob> {
  const blobKey = `test/${job.id}.eml`;
  const info = await env.storage.mail.put(blobKey, raw);
  const full: OutboundJob = { v: 1, blobKey, size: info.size, receivedAt: env.clock.now().toISOString(), ...job };
  await env.storage.queues.send('outbound', JSON.stringify(full));
  return full;
}

/** A small CRLF message. */
export function sampleMessage(from: string, to: string, subject = 'Outbound test', extra = ''): string {
  return [
    `From: Alice <${from}>`,
    `To: <${to}>`,
    `Subject: ${subject}`,
    'Date: Sun, 01 Mar 2026 08:00:00 +0000',
    `Message-ID: <${subject.replace(/\W+/g, '-')}@local.test>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
    'Hello from the outbound tests.',
    '.leading dot line must survive dot-stuffing',
    extra,
    '',
  ].join('\r\n');
}
