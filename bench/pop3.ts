/**
 * POP3 throughput on the embedded default (issue 5, "Speed"): mailboxes of 1,000 messages of
 * 10 KB on local storage, a POP3 server in its own process, and a load client of our own (the
 * usual POP3 benchmarks are not packaged) that logs in, LISTs, RETRs every message one command at
 * a time and QUITs. Reports messages/s for one client and for ten clients on ten mailboxes, and
 * the server's resident memory as retrieval goes on (it must stay flat).
 *
 * Run: `npx tsx bench/pop3.ts [--messages 1000] [--size 10240] [--clients 10] [--runs 3] [--no-dovecot] [--json]`.
 * `runPop3Bench` is exported for bench/run.ts.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, link, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Accounts } from '../core/accounts/accounts.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { MailboxStore } from '../core/mailbox/store.js';
import { openStorage } from '../core/storage/open.js';
import { freePort, waitPort } from './peers/util.js';

/** Options of the POP3 bench. */
export interface Pop3BenchOptions {
  /** Messages per mailbox. @default 1000 */
  messages?: number;
  /** Octets per message. @default 10240 */
  size?: number;
  /** Clients (and mailboxes) of the parallel run. @default 10 */
  clients?: number;
  /** Runs of each scenario; the best is reported (the first warms caches). @default 3 */
  runs?: number;
  /** Progress lines on stderr. @default false */
  verbose?: boolean;
  /** Also measure Dovecot (when /usr/sbin/dovecot exists) on the same messages, runs interleaved. @default true */
  dovecot?: boolean;
}

/** One scenario's outcome. */
export interface ScenarioResult {
  clients: number;
  messages: number;
  seconds: number;
  messagesPerSecond: number;
  megabytesPerSecond: number;
  /** Server CPU time per message retrieved (user + system): a figure that machine load does not skew. */
  serverCpuMsPerMessage?: number;
}

/** What the bench measured. */
export interface Pop3BenchResult {
  single: ScenarioResult;
  parallel: ScenarioResult;
  /** Server RSS (MB) after 10% of one client's retrievals and at the end of them. */
  rssMb: { atStart: number; at10pct: number; atEnd: number; peak: number };
  seedSeconds: number;
  /** Dovecot measured in the same run, on the same messages, when it is installed. */
  dovecot?: { single: ScenarioResult; parallel: ScenarioResult };
  /** Reference figures from the issue (Dovecot 2.3 on this kind of machine). */
  reference: { dovecotSingle: number; dovecotParallel: number };
}

const TERM = Buffer.from('\r\n.\r\n');

/** A minimal POP3 client for load: one connection, responses read in order without copying. */
class LoadClient {
  private pending: { multi: boolean; resolve: (ok: boolean) => void; reject: (e: Error) => void }[] = [];
  private phase: 'status' | 'body' = 'status';
  private status = '';
  private statusOk = false;
  private tail = Buffer.alloc(0);
  bytes = 0;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.failAll(e));
    socket.on('close', () => this.failAll(new Error('connection closed')));
  }

  static async connect(port: number): Promise<LoadClient> {
    const socket = net.connect({ host: '127.0.0.1', port });
    const c = new LoadClient(socket);
    const greeting = c.expect(false);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    if (!(await greeting)) throw new Error('bad greeting');
    return c;
  }

  private failAll(e: Error): void {
    const p = this.pending;
    this.pending = [];
    for (const x of p) x.reject(e);
  }

  private expect(multi: boolean): Promise<boolean> {
    return new Promise((resolve, reject) => this.pending.push({ multi, resolve, reject }));
  }

  /** Sends a command; resolves true for +OK once the whole response (body included) is in. */
  send(line: string, multi = false): Promise<boolean> {
    const p = this.expect(multi);
    this.socket.write(`${line}\r\n`);
    return p;
  }

  private onData(d: Buffer): void {
    this.bytes += d.length;
    let i = 0;
    while (i < d.length && this.pending.length > 0) {
      if (this.phase === 'status') {
        const nl = d.indexOf(0x0a, i);
        if (nl < 0) {
          this.status += d.toString('latin1', i);
          return;
        }
        this.status += d.toString('latin1', i, nl + 1);
        i = nl + 1;
        this.statusOk = this.status.startsWith('+OK');
        this.status = '';
        if (this.pending[0]!.multi && this.statusOk) {
          this.phase = 'body';
          this.tail = Buffer.from('\r\n');
        } else {
          this.pending.shift()!.resolve(this.statusOk);
        }
        continue;
      }
      // Body: find CRLF.CRLF, which may straddle chunks (the tail keeps the last 4 octets).
      let end = -1;
      const head = Buffer.concat([this.tail, d.subarray(i, i + 4)]);
      const h = head.indexOf(TERM);
      if (h >= 0 && h < this.tail.length) end = i + h + TERM.length - this.tail.length;
      else {
        const j = d.indexOf(TERM, i);
        if (j >= 0) end = j + TERM.length;
      }
      if (end < 0) {
        const rest = d.subarray(i);
        this.tail = rest.length >= 4 ? Buffer.from(rest.subarray(rest.length - 4)) : Buffer.concat([this.tail, rest]).subarray(-4);
        return;
      }
      i = end;
      this.phase = 'status';
      this.pending.shift()!.resolve(true);
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** One POP3 session: login, LIST, RETR 1..n one at a time, QUIT. Returns messages retrieved. */
export async function session(port: number, user: string, password: string, n: number, onProgress?: (done: number) => void): Promise<number> {
  const c = await LoadClient.connect(port);
  try {
    if (!(await c.send(`USER ${user}`))) throw new Error('USER refused');
    if (!(await c.send(`PASS ${password}`))) throw new Error(`PASS refused for ${user}`);
    if (!(await c.send('LIST', true))) throw new Error('LIST failed');
    for (let i = 1; i <= n; i++) {
      if (!(await c.send(`RETR ${i}`, true))) throw new Error(`RETR ${i} failed`);
      onProgress?.(i);
    }
    await c.send('QUIT');
    return n;
  } finally {
    c.close();
  }
}

/**
 * Warms the load client's own code (V8 compiles it once it is hot) against an in-process POP3
 * responder that serves one fixed message, so that the first measured run of whichever server
 * comes first does not also pay for compiling the client. Measured on a busy machine: Dovecot's
 * first 1,000-message run with a cold client was about a quarter slower (median of four, alternated
 * with warmed ones). Call once before any measured session.
 */
export async function warmClient(size = 10 * 1024, retrs = 3000): Promise<void> {
  const raw = makeMessage(0, size);
  // Byte-stuffed once, as a server would send it (RFC 1939 §3).
  const body = Buffer.from(raw.toString('latin1').replace(/^\./gm, '..'), 'latin1');
  const retr = Buffer.concat([Buffer.from(`+OK ${raw.length} octets\r\n`), body, Buffer.from('.\r\n')]);
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.write('+OK ready\r\n');
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const verb = buf.slice(0, 4).toUpperCase();
        buf = buf.slice(nl + 1);
        if (verb === 'RETR') s.write(retr);
        else if (verb === 'LIST') s.write('+OK\r\n1 1\r\n.\r\n');
        else if (verb === 'QUIT') s.end('+OK bye\r\n');
        else s.write('+OK\r\n');
      }
    });
    s.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', resolve));
  try {
    const port = (server.address() as net.AddressInfo).port;
    for (let done = 0; done < retrs; done += 1000) await session(port, 'warm', 'warm', Math.min(1000, retrs - done));
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** A message of exactly `size` octets (at least the header), CRLF line ends, ending in CRLF. */
export function makeMessage(i: number, size: number): Buffer {
  const head = `From: load@example.net\r\nTo: user@bench.example\r\nSubject: load ${i}\r\nMessage-ID: <load-${i}@example.net>\r\n\r\n`;
  const lines: string[] = [head];
  let len = head.length;
  let k = 0;
  while (size - len > 100) {
    // Every 20th line starts with a dot, so byte-stuffing is on the measured path.
    const l = `${k % 20 === 0 ? '.' : ''}line ${k} ${'abcdefghij'.repeat(7)}\r\n`;
    lines.push(l);
    len += l.length;
    k++;
  }
  if (size - len >= 2) lines.push(`${'z'.repeat(size - len - 2)}\r\n`);
  return Buffer.from(lines.join(''));
}

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Math.round(Number(m[1]) / 102.4) / 10 : NaN;
}

/** CPU seconds (user + system) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of proc(5) (utime, stime), here 0-based after the command name: 11 and 12.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Dovecot's login for one of our users (its passwd-file wants no '@' trouble; keep the local part). */
export function dovecotUser(user: string): string {
  return user.slice(0, user.indexOf('@'));
}

/**
 * Seeds Dovecot's side: one Maildir per user under `dir`/dovecot holding the same messages (hard
 * links of one file each) and a passwd-file with the same password. Returns the Dovecot folder.
 */
export async function seedDovecot(dir: string, users: string[], password: string, n: number, size: number): Promise<string> {
  const base = join(dir, 'dovecot');
  // Dovecot's auth and mail processes run as other users: they must be able to enter the folder.
  await chmod(dir, 0o755);
  const shared = join(base, 'messages');
  await mkdir(join(base, 'run'), { recursive: true });
  await mkdir(shared, { recursive: true });
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const raw = makeMessage(i, size);
    const name = `${1_700_000_000 + i}.M${i}P1.bench,S=${raw.length},W=${raw.length}:2,S`;
    await writeFile(join(shared, name), raw);
    files.push(name);
  }
  for (const u of users) {
    const md = join(base, 'home', dovecotUser(u), 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(md, sub), { recursive: true });
    for (const f of files) await link(join(shared, f), join(md, 'cur', f));
  }
  await writeFile(join(base, 'passwd'), users.map((u) => `${dovecotUser(u)}:{PLAIN}${password}::::::\n`).join(''));
  await new Promise<void>((resolve, reject) =>
    execFile('chown', ['-R', 'nobody:nogroup', join(base, 'home')], (e) => (e ? reject(new Error(`chown: ${e.message}`)) : resolve())),
  );
  return base;
}

/** A running Dovecot: its port, its master process id, and a stop function. */
export interface DovecotInstance {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Starts Dovecot 2.3 (Debian's dovecot-pop3d) on a free port over a folder `seedDovecot` made,
 * with the config from bench/peers/dovecot.conf. Runs as root in the foreground; mail processes
 * run as nobody. Each user logs in once before it returns (Dovecot builds its index then).
 */
export async function startDovecotOn(base: string, users: string[], password: string): Promise<DovecotInstance> {
  const port = await freePort();
  const template = await readFile(new URL('./peers/dovecot.conf', import.meta.url), 'utf8');
  await writeFile(join(base, 'dovecot.conf'), template.replaceAll('{{DIR}}', base).replaceAll('{{PORT}}', String(port)));
  const child = spawn('/usr/sbin/dovecot', ['-F', '-c', join(base, 'dovecot.conf')], { stdio: ['ignore', 'ignore', 'inherit'] });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  try {
    await waitPort(port, 10_000, 'dovecot');
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  // Dovecot builds its index on the first login: do that outside the measured runs.
  try {
    for (const u of users) await session(port, dovecotUser(u), password, 1);
  } catch (e) {
    await stop();
    throw new Error(`dovecot warm-up failed (see ${base}/dovecot.log): ${(e as Error).message}`, { cause: e });
  }
  return { port, pid: child.pid!, stop };
}

/** Dovecot seeded and started, or undefined when it is not installed. */
async function startDovecot(
  dir: string,
  users: string[],
  password: string,
  n: number,
  size: number,
  say: (s: string) => void,
): Promise<{ port: number; stop(): Promise<void> } | undefined> {
  if (!(await stat('/usr/sbin/dovecot').catch(() => undefined))) {
    say('dovecot not installed (Debian package dovecot-pop3d): skipping the comparison');
    return undefined;
  }
  return startDovecotOn(await seedDovecot(dir, users, password, n, size), users, password);
}

/**
 * Seeds our side: the domain and users (from `users`, all in bench.example) and `n` messages in
 * every mailbox (blobs shared between mailboxes, as SMTP delivery shares them).
 */
export async function seedOurs(
  env: Record<string, string>,
  users: string[],
  password: string,
  n: number,
  size: number,
  say: (s: string) => void = () => undefined,
): Promise<void> {
  const storage = await openStorage(loadConfig(env), silentLogger);
  try {
    const accounts = new Accounts(storage.tables);
    await accounts.addDomain('bench.example');
    await Promise.all(users.map((u) => accounts.addUser(u, password)));
    const store = new MailboxStore(storage.tables, storage.mail);
    for (let i = 0; i < n; i++) {
      const raw = makeMessage(i, size);
      const blobKey = `bench/${randomUUID()}.eml`;
      await storage.mail.put(blobKey, raw);
      await Promise.all(
        users.map((u) => store.deliver(u, { jobId: `bench-${i}`, blobKey, size: raw.length, receivedAt: new Date().toISOString(), summary: {} })),
      );
      if (i % 200 === 199) say(`seeded ${i + 1}/${n}`);
    }
  } finally {
    await storage.close();
  }
}

/** Seeds the mailboxes, starts the server in a child process, runs both scenarios. */
export async function runPop3Bench(options: Pop3BenchOptions = {}): Promise<Pop3BenchResult> {
  const n = options.messages ?? 1000;
  const size = options.size ?? 10 * 1024;
  const clients = options.clients ?? 10;
  const runs = options.runs ?? 3;
  const say = (s: string) => options.verbose && process.stderr.write(`${s}\n`);
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-bench-pop3-'));
  const port = await freePort();
  const env = {
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_POP3_PORT: String(port),
    TOMLINSON_POP3S_PORT: '0',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_LOG_LEVEL: 'warn',
    TOMLINSON_LOG_PRETTY: 'false',
  };
  const users = Array.from({ length: clients }, (_, i) => `user${i}@bench.example`);
  const password = 'bench-password';
  let child: ChildProcess | undefined;
  let dovecot: Awaited<ReturnType<typeof startDovecot>>;
  try {
    // Seed: n blobs, each delivered to every mailbox (blobs are shared, as SMTP delivery shares them).
    const t0 = performance.now();
    await seedOurs(env, users, password, n, size, say);
    const seedSeconds = (performance.now() - t0) / 1000;
    say(`seeded ${clients} mailboxes x ${n} messages of ${size} octets in ${seedSeconds.toFixed(1)} s`);

    const main = fileURLToPath(new URL('../containers/main.ts', import.meta.url));
    const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
    child = spawn(process.execPath, [...prof, '--import', 'tsx', main, 'serve', 'pop3'], {
      env: { ...process.env, UV_THREADPOOL_SIZE: '16', ...env },
      stdio: ['ignore', 'ignore', 'inherit'],
    }); // as `npm start`
    await waitPort(port, 30_000, 'the POP3 server');
    const pid = child.pid!;
    dovecot = options.dovecot === false ? undefined : await startDovecot(dir, users, password, n, size, say);
    const dc = dovecot;

    await warmClient(size);
    // Runs alternate between the two servers so that both see the same machine load.
    // One client. RSS is sampled along the way: flat means no growth with messages retrieved.
    const rss = { atStart: await rssMb(pid), at10pct: 0, atEnd: 0, peak: 0 };
    let best = Infinity;
    let cpuPerMessageMs = Infinity;
    let dcBest = Infinity;
    for (let r = 0; r < runs; r++) {
      const cpu0 = await cpuSeconds(pid);
      const t = performance.now();
      let sampling: Promise<void> | undefined;
      await session(port, users[0]!, password, n, (done) => {
        if (done === Math.ceil(n / 10)) sampling = rssMb(pid).then((v) => void (rss.at10pct = Math.max(rss.at10pct, v)));
      });
      const s = (performance.now() - t) / 1000;
      best = Math.min(best, s);
      cpuPerMessageMs = Math.min(cpuPerMessageMs, (((await cpuSeconds(pid)) - cpu0) * 1000) / n);
      await sampling;
      rss.atEnd = await rssMb(pid);
      rss.peak = Math.max(rss.peak, rss.atEnd, rss.at10pct);
      say(`tomlinson 1 client run ${r + 1}: ${(n / s).toFixed(0)} msg/s`);
      if (dovecot) {
        const t2 = performance.now();
        await session(dc!.port, dovecotUser(users[0]!), password, n);
        const s2 = (performance.now() - t2) / 1000;
        dcBest = Math.min(dcBest, s2);
        say(`dovecot   1 client run ${r + 1}: ${(n / s2).toFixed(0)} msg/s`);
      }
    }
    const single: ScenarioResult = {
      clients: 1,
      messages: n,
      seconds: best,
      messagesPerSecond: n / best,
      megabytesPerSecond: (n * size) / best / 1e6,
      serverCpuMsPerMessage: cpuPerMessageMs,
    };

    let bestPar = Infinity;
    let cpuPar = Infinity;
    let dcBestPar = Infinity;
    for (let r = 0; r < runs; r++) {
      const cpu0 = await cpuSeconds(pid);
      const t = performance.now();
      await Promise.all(users.map((u) => session(port, u, password, n)));
      const s = (performance.now() - t) / 1000;
      bestPar = Math.min(bestPar, s);
      cpuPar = Math.min(cpuPar, (((await cpuSeconds(pid)) - cpu0) * 1000) / (n * clients));
      rss.peak = Math.max(rss.peak, await rssMb(pid));
      say(`tomlinson ${clients} clients run ${r + 1}: ${((n * clients) / s).toFixed(0)} msg/s`);
      if (dovecot) {
        const t2 = performance.now();
        await Promise.all(users.map((u) => session(dc!.port, dovecotUser(u), password, n)));
        const s2 = (performance.now() - t2) / 1000;
        dcBestPar = Math.min(dcBestPar, s2);
        say(`dovecot   ${clients} clients run ${r + 1}: ${((n * clients) / s2).toFixed(0)} msg/s`);
      }
    }
    const parallel: ScenarioResult = {
      clients,
      messages: n * clients,
      seconds: bestPar,
      messagesPerSecond: (n * clients) / bestPar,
      megabytesPerSecond: (n * clients * size) / bestPar / 1e6,
      serverCpuMsPerMessage: cpuPar,
    };
    const scenario = (clientsN: number, messages: number, seconds: number): ScenarioResult => ({
      clients: clientsN,
      messages,
      seconds,
      messagesPerSecond: messages / seconds,
      megabytesPerSecond: (messages * size) / seconds / 1e6,
    });
    return {
      single,
      parallel,
      dovecot: dovecot ? { single: scenario(1, n, dcBest), parallel: scenario(clients, n * clients, dcBestPar) } : undefined,
      rssMb: rss,
      seedSeconds,
      reference: { dovecotSingle: 5600, dovecotParallel: 12300 },
    };
  } finally {
    await dovecot?.stop();
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    if (!process.env.BENCH_KEEP) await rm(dir, { recursive: true, force: true });
  }
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const result = await runPop3Bench({
    messages: arg('messages') ? Number(arg('messages')) : undefined,
    size: arg('size') ? Number(arg('size')) : undefined,
    clients: arg('clients') ? Number(arg('clients')) : undefined,
    runs: arg('runs') ? Number(arg('runs')) : undefined,
    dovecot: !process.argv.includes('--no-dovecot'),
    verbose: true,
  });
  if (process.argv.includes('--json')) console.log(JSON.stringify(result, null, 2));
  else {
    const f = (x: number) => x.toFixed(0).padStart(7);
    console.log(`POP3 LIST + RETR all + QUIT, ${result.single.messages} messages per mailbox`);
    const cpu = (r: ScenarioResult) => `server CPU ${r.serverCpuMsPerMessage?.toFixed(3)} ms/msg`;
    console.log(`  1 client : ${f(result.single.messagesPerSecond)} msg/s, ${cpu(result.single)} (Dovecot reference ${result.reference.dovecotSingle})`);
    console.log(
      `  ${result.parallel.clients} clients: ${f(result.parallel.messagesPerSecond)} msg/s, ${cpu(result.parallel)} (Dovecot reference ${result.reference.dovecotParallel})`,
    );
    if (result.dovecot) {
      console.log(`  dovecot 1 client : ${f(result.dovecot.single.messagesPerSecond)} msg/s (same run, same messages)`);
      console.log(`  dovecot ${result.dovecot.parallel.clients} clients: ${f(result.dovecot.parallel.messagesPerSecond)} msg/s`);
    }
    console.log(`  server RSS MB: start ${result.rssMb.atStart}, after 10% ${result.rssMb.at10pct}, end ${result.rssMb.atEnd}, peak ${result.rssMb.peak}`);
  }
}
