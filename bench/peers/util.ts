/**
 * Shared pieces of `npm run bench -- --peers`: statistics and tables (pure), config templating,
 * wrk Lua scripts, and the process side (free ports, memory of a process tree, Debian packages,
 * and a cleanup registry that stops every process the bench started, also on Ctrl-C).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { access } from 'node:fs/promises';
import net from 'node:net';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { promisify } from 'node:util';

const exec = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// Pure helpers (unit-tested in test/bench/peers.test.ts)

/** The median of the numbers (mean of the middle two for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/** The p-quantile (0..1) of the numbers by the nearest-rank method; NaN when empty. */
export function quantile(xs: readonly number[], p: number): number {
  const v = [...xs].sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const rank = Math.max(1, Math.ceil(p * v.length));
  return v[Math.min(v.length, rank) - 1]!;
}

/** ours / peer, rounded to two decimals; undefined when either side is missing or the peer is 0. */
export function ratio(ours: number | undefined, peer: number | undefined): number | undefined {
  if (ours === undefined || peer === undefined || !Number.isFinite(ours) || !Number.isFinite(peer) || peer === 0) return undefined;
  return Math.round((ours / peer) * 100) / 100;
}

/** A number for a table: thousands grouped for big values, one decimal for small ones, '–' for none. */
export function fmt(x: number | undefined, decimals?: number): string {
  if (x === undefined || !Number.isFinite(x)) return '–';
  const d = decimals ?? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2);
  return x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

/** A GitHub-flavoured Markdown table; cells are escaped for '|'. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const esc = (c: string) => c.replace(/\|/g, '\\|');
  const line = (r: readonly string[]) => `| ${r.map(esc).join(' | ')} |`;
  return [line(header), `|${header.map(() => '---').join('|')}|`, ...rows.map(line)].join('\n') + '\n';
}

/** A plain-text table with columns padded to their widest cell (first column left, others right). */
export function textTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return (
    all
      .map((r) =>
        r
          .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/**
 * Replaces every `{{NAME}}` in a config template by its value; throws when the template names a
 * value that was not given, so a typo cannot start a peer with a literal `{{...}}` in its config.
 */
export function fillTemplate(template: string, values: Readonly<Record<string, string | number>>): string {
  return template.replace(/\{\{([A-Z0-9_]+)\}\}/g, (_, name: string) => {
    const v = values[name];
    if (v === undefined) throw new Error(`config template names {{${name}}}, which was not given`);
    return String(v);
  });
}

/** The proxy scenarios: what a wrk request asks for. */
/** The proxy bench's rows, in their table order. */
export const PROXY_SCENARIOS = ['hit1k', 'hit100k', 'miss', 'reval'] as const;
export type ProxyScenario = (typeof PROXY_SCENARIOS)[number];

/**
 * The wrk Lua script of a proxy scenario: absolute-form requests for the origin `originBase`
 * (`http://127.0.0.1:PORT`), with the Host header naming the origin as RFC 9112 section 3.2
 * requires ("a client MUST send a Host header field ... identical to the authority component"),
 * since wrk would otherwise name the proxy. Misses get a URL never asked before: a per-thread
 * random prefix, the start time and a counter.
 */
export function wrkLua(scenario: ProxyScenario, originBase: string): string {
  const host = originBase.replace(/^https?:\/\//, '');
  if (!/^[\w.:[\]-]+$/.test(host)) throw new Error(`origin ${originBase} is not a host:port`);
  const head = `local headers = { ["Host"] = "${host}" }\n`;
  if (scenario === 'miss') {
    return (
      head +
      `local n = 0\nlocal prefix = ""\n` +
      `setup = function(thread) thread:set("id", tostring(math.random(1, 1e9))) end\n` +
      `init = function() prefix = "${originBase}/miss/" .. id .. "-" .. tostring(os.time()) .. "-" end\n` +
      `request = function()\n  n = n + 1\n  return wrk.format("GET", prefix .. n, headers)\nend\n`
    );
  }
  return head + `local req = wrk.format("GET", "${originBase}/${scenario}", headers)\nrequest = function()\n  return req\nend\n`;
}

/** wrk's latency figure ("812.00us", "1.23ms", "2.01s", "1.5m") in milliseconds. */
export function wrkTimeMs(s: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(s.trim());
  if (!m) return NaN;
  const v = Number(m[1]);
  return m[2] === 'us' ? v / 1000 : m[2] === 'ms' ? v : m[2] === 's' ? v * 1000 : v * 60_000;
}

/** What one wrk run reported. */
export interface WrkResult {
  requestsPerSecond: number;
  requests: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx/3xx responses plus socket errors (connect, read, write, timeout). */
  errors: number;
}

/** Parses the output of `wrk --latency`. */
export function parseWrk(stdout: string): WrkResult {
  const num = (re: RegExp) => Number(re.exec(stdout)?.[1] ?? NaN);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  const socketErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  return {
    requestsPerSecond: num(/Requests\/sec:\s+([\d.]+)/),
    requests: num(/(\d+) requests in/),
    p50Ms: wrkTimeMs(/\s50%\s+(\S+)/.exec(stdout)?.[1] ?? ''),
    p99Ms: wrkTimeMs(/\s99%\s+(\S+)/.exec(stdout)?.[1] ?? ''),
    errors: (Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0) || 0) + socketErrors,
  };
}

// ---------------------------------------------------------------------------------------------
// Interleaving (every protocol's peers take turns the same way)

/**
 * The servers in the order they take their turn at step `k`: the list rotated by k. Two servers
 * swap places at each step, three take each place in turn, so none always follows the same one.
 */
export function turnOrder<T>(servers: readonly T[], k: number): T[] {
  const n = servers.length;
  if (n === 0) return [];
  const s = ((k % n) + n) % n;
  return [...servers.slice(s), ...servers.slice(0, s)];
}

/**
 * Measures rows on servers that are all up at once: row i of run r runs on every server back to
 * back, in `turnOrder(servers, i + r - 1)`, so ours and a peer alternate from row to row and
 * each row's order is swapped from one run to the next. On a shared machine the load comes in
 * spells of tens of seconds (see SLICE_SECONDS in proxy.ts): a server that ran all its rows
 * before the other's met other spells than its peer did; back to back, a row's pair meets
 * about the same load. `run` is 1-based.
 */
export async function interleaveRows<T>(servers: readonly T[], rows: number, run: number, measure: (server: T, row: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < rows; i++) for (const s of turnOrder(servers, i + run - 1)) await measure(s, i);
}

// ---------------------------------------------------------------------------------------------
// Processes

const cleanups = new Map<number, () => Promise<void> | void>();
let nextCleanup = 0;
let handlersInstalled = false;

/**
 * Registers something to stop (a process, a peer instance) and returns a function that runs it
 * once and unregisters it. Everything still registered runs on SIGINT, SIGTERM or `runCleanups`.
 */
export function onCleanup(fn: () => Promise<void> | void): () => Promise<void> {
  const id = nextCleanup++;
  cleanups.set(id, fn);
  if (!handlersInstalled) {
    handlersInstalled = true;
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.once(sig, () => {
        process.stderr.write(`\nbench: ${sig}, stopping everything it started\n`);
        void runCleanups().finally(() => process.exit(130));
      });
    }
  }
  return async () => {
    const f = cleanups.get(id);
    if (!f) return;
    cleanups.delete(id);
    await f();
  };
}

/** Runs every registered cleanup (newest first), each at most once, errors reported not thrown. */
export async function runCleanups(): Promise<void> {
  for (const id of [...cleanups.keys()].reverse()) {
    const f = cleanups.get(id);
    cleanups.delete(id);
    try {
      await f?.();
    } catch (e) {
      process.stderr.write(`bench: cleanup failed: ${(e as Error).message}\n`);
    }
  }
}

/** Stops a child: SIGTERM, then SIGKILL after `graceMs`. @default graceMs 5000 */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Waits until 127.0.0.1:port accepts connections; throws after `timeoutMs`. @default timeoutMs 30000 */
export async function waitPort(port: number, timeoutMs = 30_000, what = `port ${port}`): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`${what} did not open within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Waits until a just-spawned server listens on `port`; rejects at once if it fails to spawn or
 * exits first, with the tail of what it wrote to stderr when that was piped.
 * @default timeoutMs 60000
 */
export async function waitListening(child: ChildProcess, port: number, what: string, timeoutMs = 60_000): Promise<void> {
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
  let onExit!: (code: number | null) => void;
  let onError!: (e: Error) => void;
  const died = new Promise<never>((_, reject) => {
    onExit = (code) => reject(new Error(`${what} exited with ${code} before listening: ${err.trim()}`));
    onError = (e) => reject(new Error(`${what} did not start: ${e.message}`));
    child.once('exit', onExit);
    child.once('error', onError);
  });
  try {
    await Promise.race([waitPort(port, timeoutMs, what), died]);
  } finally {
    child.off('exit', onExit);
    child.off('error', onError);
    died.catch(() => undefined);
  }
}

/** A /proc file's text, '' when the process is gone (these files are made in memory on read). */
function procText(path: string): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return '';
  }
}

/**
 * The process and its descendants, from each thread's `children` list in /proc. The bench samples
 * this every 200 ms during measured runs: scanning every process's stat with async reads cost the
 * bench's own process about 145 ms of CPU per second on this 2-core machine, beside the servers it
 * measures; this walk reads a few small files per process of the tree.
 */
export function processTree(root: number): number[] {
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${out[i]}/task`);
    } catch {
      continue; // gone
    }
    for (const t of tasks) {
      for (const c of procText(`/proc/${out[i]}/task/${t}/children`).split(' ')) {
        const pid = Number(c);
        if (c !== '' && Number.isInteger(pid) && !out.includes(pid)) out.push(pid);
      }
    }
  }
  return out;
}

/**
 * CPU time (user + system, every thread) used so far by a process and its descendants, in
 * microseconds, from /proc/PID/stat (clock ticks of 10 ms: read it across runs of seconds).
 * Children that exited and were waited for count through their parent's cutime and cstime
 * (Postfix's master reaps its smtpd, cleanup and delivery processes).
 */
export async function cpuMicros(root: number): Promise<number> {
  let ticks = 0;
  for (const p of processTree(root)) {
    const stat = procText(`/proc/${p}/stat`);
    const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 to 17 of stat(5) (utime, stime, cutime, cstime), counted from the state field as field 3.
    if (after.length > 15) ticks += Number(after[11]) + Number(after[12]) + Number(after[13]) + Number(after[14]);
  }
  return ticks * 10_000;
}

/** A /proc/PID/status memory field (VmRSS, VmHWM) in MiB; 0 when the process is gone. */
export function memMiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const status = procText(`/proc/${pid}/status`);
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
  return m ? Number(m[1]) / 1024 : 0;
}

/** Proportional set size of a process in MiB (shared pages split among their sharers); 0 when gone. */
export function pssMiB(pid: number): number {
  const rollup = procText(`/proc/${pid}/smaps_rollup`);
  const m = /^Pss:\s+(\d+) kB/m.exec(rollup);
  return m ? Number(m[1]) / 1024 : 0;
}

/** Memory of a server over a run, in MiB, summed over its process tree. */
export interface PeakMemory {
  /** Largest sum over the tree of VmHWM (each process's own peak RSS; shared pages count in each). */
  rss: number;
  /** Largest sampled sum over the tree of Pss (shared pages split, so a forking server is not overcounted). */
  pss: number;
  /** Sum of VmRSS over the tree when the watch stopped: what the server holds after the run. */
  afterRss: number;
  /** Sum of Pss over the tree when the watch stopped. */
  afterPss: number;
}

/**
 * Watches the memory of a server: every `everyMs` it sums VmHWM and Pss over the process tree
 * under `rootPid`, so processes a peer forks and reaps (Postfix's smtpd, nginx's workers, our
 * proxy's cluster workers) count while they live. `stop()` returns the largest sums seen and the
 * sums at that moment (call it after the last measured row and before stopping the server).
 * @default everyMs 200
 */
export function watchPeakMemory(rootPid: () => number | undefined, everyMs = 200): { stop: () => Promise<PeakMemory> } {
  const peak = { rss: 0, pss: 0 };
  // Synchronous reads of a few small /proc files; the tree is walked again every fifth sample
  // (about once a second), which still sees the processes a peer forks per session.
  let tree: number[] = [];
  let samples = 0;
  const sample = (fresh = false) => {
    const root = rootPid();
    if (!root) return { rss: 0, pss: 0 };
    if (fresh || samples++ % 5 === 0 || tree[0] !== root) tree = processTree(root);
    let hwm = 0;
    let rss = 0;
    let pss = 0;
    for (const p of tree) {
      hwm += memMiB(p, 'VmHWM');
      rss += memMiB(p, 'VmRSS');
      pss += pssMiB(p);
    }
    peak.rss = Math.max(peak.rss, hwm);
    peak.pss = Math.max(peak.pss, pss);
    return { rss, pss };
  };
  const t = setInterval(sample, everyMs);
  sample();
  const r = (x: number) => Math.round(x * 10) / 10;
  return {
    stop: async () => {
      clearInterval(t);
      const now = sample(true);
      return { rss: r(peak.rss), pss: r(peak.pss), afterRss: r(now.rss), afterPss: r(now.pss) };
    },
  };
}

/** Runs a command; resolves with its stdout, rejects with stderr in the message. */
export async function run(cmd: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  try {
    const { stdout } = await exec(cmd, args, { timeout: options.timeoutMs ?? 120_000, env: options.env ?? process.env, maxBuffer: 16 * 2 ** 20 });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(err.stderr || err.stdout || err.message).trim().slice(0, 800)}`, { cause: e });
  }
}

// ---------------------------------------------------------------------------------------------
// Debian packages and the machine

/** The binaries `--peers` runs and the Debian package each comes from. */
export const PEER_BINARIES: readonly { binary: string; pkg: string }[] = [
  { binary: '/usr/sbin/postfix', pkg: 'postfix' },
  { binary: '/usr/sbin/smtp-source', pkg: 'postfix' },
  { binary: '/usr/sbin/dovecot', pkg: 'dovecot-pop3d' },
  { binary: '/usr/lib/dovecot/imap', pkg: 'dovecot-imapd' },
  { binary: '/usr/sbin/squid', pkg: 'squid' },
  { binary: '/usr/sbin/nginx', pkg: 'nginx' },
  { binary: '/usr/bin/wrk', pkg: 'wrk' },
];

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * Installs the Debian packages of missing peer binaries (as root, non-interactively; Postfix
 * preseeded to "No configuration" so that its package sets up no system mail service). Throws with
 * the apt-get line to run when a binary is missing and this process is not root.
 */
export async function ensurePeerPackages(say: (s: string) => void): Promise<void> {
  const missing = new Set<string>();
  for (const b of PEER_BINARIES) if (!(await exists(b.binary))) missing.add(b.pkg);
  if (missing.size === 0) return;
  const pkgs = [...missing];
  if (process.getuid?.() !== 0) {
    throw new Error(`missing peer packages: ${pkgs.join(' ')}; install them as root: apt-get install -y --no-install-recommends ${pkgs.join(' ')}`);
  }
  say(`installing Debian packages: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (missing.has('postfix')) {
    await new Promise<void>((resolve, reject) => {
      const p = spawn('debconf-set-selections', [], { stdio: ['pipe', 'inherit', 'inherit'] });
      p.on('error', reject);
      p.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`debconf-set-selections exited ${c}`))));
      p.stdin!.end('postfix postfix/main_mailer_type select No configuration\npostfix postfix/mailname string bench.invalid\n');
    });
  }
  await run('apt-get', ['update'], { env, timeoutMs: 600_000 }).catch((e: Error) => say(`apt-get update: ${e.message} (trying the install anyway)`));
  await run('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { env, timeoutMs: 900_000 });
  for (const b of PEER_BINARIES) if (!(await exists(b.binary))) throw new Error(`${b.binary} still missing after installing ${b.pkg}`);
}

/** Versions of the peers, for the machine line. */
export async function peerVersions(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const grab = async (name: string, cmd: string, args: string[], re: RegExp) => {
    try {
      const { stdout, stderr } = await exec(cmd, args, { timeout: 10_000 }).catch((e: { stdout?: string; stderr?: string }) => ({
        stdout: e.stdout ?? '',
        stderr: e.stderr ?? '',
      }));
      const m = re.exec(`${stdout}\n${stderr}`);
      if (m) out[name] = m[1]!;
    } catch {
      /* not installed */
    }
  };
  await grab('postfix', 'postconf', ['-d', 'mail_version'], /mail_version = (\S+)/);
  await grab('dovecot', 'dovecot', ['--version'], /^(\S+)/);
  await grab('squid', 'squid', ['-v'], /Version (\S+)/);
  await grab('nginx', 'nginx', ['-v'], /nginx\/(\S+)/);
  await grab('wrk', 'wrk', ['-v'], /wrk (\S+)/);
  return out;
}

/** The machine line: CPU model, cores, RAM, kernel, Node version. */
export function machineLine(): string {
  return `${cpus()[0]?.model?.trim() ?? 'unknown CPU'}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${release()}, Node ${process.version}`;
}

/** The 1, 5 and 15 minute load averages (runnable processes, against the cores in the machine line). */
export function loadAverage(): string {
  return loadavg()
    .map((x) => x.toFixed(2))
    .join(' / ');
}
