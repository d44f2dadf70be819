/**
 * SMTP accept throughput on the embedded default (issue 4, "Speed"): the SMTP listener and the
 * in-process workers (on their own thread by default) over local storage with durable writes
 * (fsync before 250), in a process of their own; 10 KB messages over fresh connections. Load comes from Postfix's smtp-source (the
 * load generator the issue names) at 1, 10 and 50 sessions; a small client of our own measures
 * the accept latency (end of data -> 250) at 10 sessions for the p99; and a fresh server takes a
 * 50 MB message while its resident memory is watched (VmHWM from /proc).
 *
 * Run: `npx tsx bench/smtp.ts [--messages 3000] [--json]`. `runSmtpBench` is exported for
 * bench/run.ts. The figures to beat (from the issue, this kind of machine): Postfix delivering to
 * Maildir 390 / 590 / 590 messages/s at 1 / 10 / 50 sessions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Options of the SMTP bench. */
export interface SmtpBenchOptions {
  /** Messages per smtp-source run. @default 3000 */
  messages?: number;
  /** Octets of payload per message. @default 10240 */
  size?: number;
  /** Session counts to run. @default [1, 10, 50] */
  sessions?: number[];
  /** Messages for the latency run (own client, 10 sessions). @default 2000 */
  latencyMessages?: number;
  /** Size of the big message for the memory check (50 MB, under the 50 MiB default limit). @default 50000000 */
  bigBytes?: number;
  verbose?: boolean;
}

/** One throughput scenario. */
export interface SmtpScenario {
  sessions: number;
  messages: number;
  seconds: number;
  messagesPerSecond: number;
  /** The Postfix-to-Maildir figure for the same session count. */
  postfixReference?: number;
  /** Postfix's smtp-sink (accepts and stores nothing) measured in this run: how fast this
   * machine is right now (the issue measured 1,600 / 5,100 / 3,700 on its machine). */
  smtpSinkNow?: number;
}

/** What the bench measured. */
export interface SmtpBenchResult {
  throughput: SmtpScenario[];
  latency: { sessions: number; messages: number; p50Ms: number; p99Ms: number; maxMs: number; messagesPerSecond: number };
  bigMessage: { bytes: number; seconds: number; rssBeforeMb: number; rssPeakMb: number; growthMb: number };
}

const POSTFIX: Record<number, number> = { 1: 390, 10: 590, 50: 590 };
const SELF = fileURLToPath(import.meta.url);

/** Starts the embedded default (smtp + workers) in a child process; resolves with its MX port. */
async function startServer(dataDir: string, verbose: boolean): Promise<{ child: ChildProcess; port: number; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, '--serve', dataDir], {
    env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
    stdio: ['ignore', 'pipe', verbose ? 'inherit' : 'ignore'],
  }); // thread pool as `npm start` sizes it: each blob fdatasync holds a thread
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`bench server exited with ${code}`)));
  });
  return {
    child,
    port,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** The child: open storage, add the domain and user, start smtp + workers, print the port. */
async function serve(dataDir: string): Promise<void> {
  const { loadConfig } = await import('../core/config.js');
  const { createLogger } = await import('../core/log.js');
  const { startApp } = await import('../containers/app.js');
  const { Accounts } = await import('../core/accounts/accounts.js');
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dataDir,
    TOMLINSON_HOSTNAME: 'bench.tomlinson.test',
    TOMLINSON_SMTP_PORT: '0',
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_HEALTH_PORT: '0',
    // SPF/DKIM/DMARC need DNS, which a bench machine may not have; Postfix's figure has none either.
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '1000',
    TOMLINSON_LOG_LEVEL: 'warn',
  });
  const log = createLogger({ level: 'warn', pretty: false });
  const app = await startApp(config, ['smtp', 'workers'], log);
  const accounts = new Accounts(app.storage.tables);
  if (!(await accounts.isLocalDomain('bench.test'))) {
    await accounts.addDomain('bench.test');
    await accounts.addUser('user@bench.test', 'bench-password-1');
  }
  const port = Number(/:(\d+)$/.exec(app.listeners[0].addresses[0])![1]);
  process.stdout.write(`PORT ${port}\n`);
  process.once('SIGTERM', () => {
    app.close(2000).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}

/** Runs Postfix's smtp-sink on a free port (the machine's speed of light for SMTP). */
async function startSink(): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  // smtp-sink refuses to run as root without a user to switch to.
  const asRoot = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
  const child = spawn('smtp-sink', [...asRoot, '-m', '1000', `127.0.0.1:${port}`, '1000'], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (up) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** Runs Postfix's smtp-source (fresh connection per message); resolves with the seconds it took. */
export async function smtpSource(port: number, sessions: number, messages: number, size: number): Promise<number> {
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const p = spawn(
      'smtp-source',
      [
        '-s',
        String(sessions),
        '-m',
        String(messages),
        '-l',
        String(size),
        '-f',
        'sender@remote.example',
        '-t',
        'user@bench.test',
        '-M',
        'client.bench',
        `127.0.0.1:${port}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`smtp-source exited ${code}: ${err.slice(0, 500)}`))));
  });
  return (performance.now() - started) / 1000;
}

/** One message over a fresh connection; returns the time from the end of data to the 250. */
export function oneMessage(port: number, body: Buffer, rcpt = 'user@bench.test'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    let step = 0;
    let sentAt = 0;
    s.setNoDelay(true);
    s.on('error', reject);
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const i = buf.indexOf('\r\n');
        if (i < 0) return;
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (line[3] === '-') continue;
        const code = Number(line.slice(0, 3));
        if (step === 0 && code === 220) s.write(`EHLO client.bench\r\nMAIL FROM:<sender@remote.example>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
        else if (step >= 1 && step <= 3 && code === 250) {
          /* EHLO, MAIL, RCPT */
        } else if (step === 4 && code === 354) {
          s.write(body);
          sentAt = performance.now();
        } else if (step === 5 && code === 250) {
          const ms = performance.now() - sentAt;
          s.end('QUIT\r\n');
          resolve(ms);
          return;
        } else if (step < 6) {
          s.destroy();
          reject(new Error(`unexpected reply at step ${step}: ${line}`));
          return;
        }
        step++;
      }
    });
  });
}

/** A message of about `size` octets, CRLF lines, with the terminating dot line. */
export function tenKb(size: number): Buffer {
  const line = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n'; // 80 octets
  return Buffer.from(`From: sender@remote.example\r\nTo: user@bench.test\r\nSubject: bench\r\n\r\n${line.repeat(Math.ceil(size / line.length))}.\r\n`);
}

/** `messages` messages over fresh connections from `sessions` parallel clients; accept-latency quantiles. */
export async function latencyRun(port: number, sessions: number, messages: number, size: number): Promise<SmtpBenchResult['latency']> {
  const body = tenKb(size);
  const times: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: sessions }, async () => {
      while (next < messages) {
        next++;
        times.push(await oneMessage(port, body));
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
  return {
    sessions,
    messages,
    p50Ms: round(q(0.5)),
    p99Ms: round(q(0.99)),
    maxMs: round(times[times.length - 1]),
    messagesPerSecond: round(messages / seconds),
  };
}

async function rssMb(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** A fresh server takes one `bytes`-octet message while its resident memory is watched. */
export async function bigMessage(dataDir: string, bytes: number, verbose: boolean): Promise<SmtpBenchResult['bigMessage']> {
  const server = await startServer(dataDir, verbose);
  try {
    await oneMessage(server.port, tenKb(10240)); // warm up every code path once
    const before = await rssMb(server.child.pid!, 'VmRSS');
    const line = Buffer.from('0123456789'.repeat(7) + 'abcdefgh\r\n');
    const head = Buffer.from('From: sender@remote.example\r\nTo: user@bench.test\r\nSubject: big\r\n\r\n');
    const started = performance.now();
    await new Promise<void>((resolve, reject) => {
      const s = net.connect(server.port, '127.0.0.1');
      let buf = '';
      let sent = false;
      s.on('error', reject);
      s.on('data', async (d: Buffer) => {
        buf += d.toString('latin1');
        if (!sent && /^354 /m.test(buf)) {
          sent = true;
          s.write(head);
          const block = Buffer.concat(Array(1024).fill(line));
          for (let n = 0; n < bytes; n += block.length) if (!s.write(block)) await new Promise((r) => s.once('drain', r));
          s.write('.\r\n');
        } else if (sent && /\r\n250 2\.0\.0 /.test(buf)) {
          s.end('QUIT\r\n');
          resolve();
        } else if (/^[45]\d\d /m.test(buf)) reject(new Error(buf));
      });
      s.write('EHLO client.bench\r\nMAIL FROM:<sender@remote.example>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n');
    });
    const seconds = (performance.now() - started) / 1000;
    const peak = await rssMb(server.child.pid!, 'VmHWM');
    return { bytes, seconds: round(seconds), rssBeforeMb: round(before), rssPeakMb: round(peak), growthMb: round(peak - before) };
  } finally {
    await server.stop();
  }
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/** Runs every scenario and returns the figures. */
export async function runSmtpBench(options: SmtpBenchOptions = {}): Promise<SmtpBenchResult> {
  const messages = options.messages ?? 3000;
  const size = options.size ?? 10240;
  const verbose = options.verbose ?? false;
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-bench-smtp-'));
  try {
    const server = await startServer(join(dir, 'a'), verbose);
    const throughput: SmtpScenario[] = [];
    let latency: SmtpBenchResult['latency'];
    try {
      await smtpSource(server.port, 10, 200, size); // warm-up
      for (const sessions of options.sessions ?? [1, 10, 50]) {
        const n = sessions === 1 ? Math.min(messages, 1500) : messages;
        const seconds = await smtpSource(server.port, sessions, n, size);
        const sink = await startSink();
        const sinkSeconds = await smtpSource(sink.port, sessions, n, size).finally(() => sink.stop());
        throughput.push({
          sessions,
          messages: n,
          seconds: round(seconds),
          messagesPerSecond: round(n / seconds),
          postfixReference: POSTFIX[sessions],
          smtpSinkNow: round(n / sinkSeconds),
        });
        if (verbose) process.stderr.write(`smtp-source ${sessions} sessions: ${round(n / seconds)} msg/s\n`);
      }
      latency = await latencyRun(server.port, 10, options.latencyMessages ?? 2000, size);
    } finally {
      await server.stop();
    }
    const big = await bigMessage(join(dir, 'b'), options.bigBytes ?? 50_000_000, verbose);
    return { throughput, latency, bigMessage: big };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function printTable(r: SmtpBenchResult): void {
  const rows = [['sessions', 'messages', 'seconds', 'msg/s', 'Postfix (issue)', 'smtp-sink now']];
  for (const t of r.throughput)
    rows.push([
      String(t.sessions),
      String(t.messages),
      String(t.seconds),
      String(t.messagesPerSecond),
      String(t.postfixReference ?? ''),
      String(t.smtpSinkNow ?? ''),
    ]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  for (const row of rows) console.log(row.map((c, i) => c.padStart(widths[i])).join('  '));
  console.log(
    `accept latency at ${r.latency.sessions} sessions (own client, fresh connections): p50 ${r.latency.p50Ms} ms, p99 ${r.latency.p99Ms} ms, max ${r.latency.maxMs} ms, ${r.latency.messagesPerSecond} msg/s`,
  );
  console.log(
    `${Math.round(r.bigMessage.bytes / 1e6)} MB message: ${r.bigMessage.seconds} s, RSS ${r.bigMessage.rssBeforeMb} MB -> peak ${r.bigMessage.rssPeakMb} MB (+${r.bigMessage.growthMb} MB)`,
  );
}

const argv = process.argv.slice(2);
if (process.argv[1] === SELF) {
  if (argv[0] === '--serve') {
    await serve(argv[1]);
  } else {
    const get = (name: string) => {
      const i = argv.indexOf(name);
      return i >= 0 ? Number(argv[i + 1]) : undefined;
    };
    const result = await runSmtpBench({ messages: get('--messages'), latencyMessages: get('--latency-messages'), verbose: argv.includes('--verbose') });
    if (argv.includes('--json')) console.log(JSON.stringify(result, null, 2));
    else printTable(result);
  }
}
