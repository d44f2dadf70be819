/**
 * A private rspamd for a test: Debian's `rspamd` binary, started in the foreground on a free
 * 127.0.0.1 port with its own run, database and log folders under a temp folder, and the shipped
 * local settings (containers/smtp/rspamd/local.d) plus the test's own. The Debian package's system
 * service (if any) is neither needed nor touched. The normal (scanner) worker runs, and with
 * `controller` the controller worker too (learn_spam / learn_ham, /stat), trusting 127.0.0.1
 * (`secure_ip`) or asking for a password. Bayes: with `redis` (test/support/redis.ts) in that
 * Redis, as the shipped classifier-bayes.conf does, with a lower `min_learns` so that a test can
 * see BAYES_SPAM after a few lessons; without it, and with the controller, in SQLite files in the
 * temp folder (rspamd 3.4 still has that backend; it counts learns, but its verdicts were never
 * seen), and otherwise off (its Redis address points where nothing answers, so a test never meets
 * a Redis of the machine). No proxy or fuzzy storage; DNS goes to a port where nothing answers, so
 * a test never queries the network.
 *
 * rspamd compiles its regular expressions (Hyperscan) on first start, which takes a minute on a
 * loaded machine; the compiled cache is kept in one folder under the OS temp dir and shared by
 * every test run, so later starts take seconds.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { freePorts } from './ports.js';
import { tempDir } from './tmp.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The local settings we ship for operators (README, "Spam filtering (rspamd)"). */
export const SHIPPED_LOCAL_D = join(ROOT, 'containers/smtp/rspamd/local.d');
const HS_CACHE = join(tmpdir(), 'tomlinson-rspamd-hs-cache');

export const RSPAMD_BIN = process.env.TOMLINSON_RSPAMD ?? '/usr/bin/rspamd';

/** A running rspamd. */
export interface Rspamd {
  /** Base URL of the normal worker, e.g. http://127.0.0.1:40123. */
  url: string;
  port: number;
  /** Base URL of the controller worker, when started (`controller`). */
  controllerUrl?: string;
  /** Port of the proxy worker in milter mode, when started (`milter`). */
  milterPort?: number;
  /** Stops it (SIGTERM, then SIGKILL to its process group after 5 s) and removes its folder. */
  stop(): Promise<void>;
  /** Stops the process but keeps the folder, to start again on the same port with `restart`. */
  kill(): Promise<void>;
  restart(): Promise<void>;
  /** Its console output so far. */
  output(): string;
}

export interface RspamdOptions {
  /** Extra files for local.d (name -> content), after the shipped ones (same name replaces). */
  local?: Record<string, string>;
  /** Turn on rspamd's non-reject GTUBE variants (YJS... = add header, ZJS... = rewrite subject). */
  testPatterns?: boolean;
  /** Longest wait for /ping. @default 150000 */
  startTimeoutMs?: number;
  /** Start the controller worker too; with a password it asks for it (no secure_ip), otherwise it
   * trusts 127.0.0.1. */
  controller?: boolean | { password: string };
  /** Keep Bayes in this Redis (`host:port`), giving a verdict after `minLearns` learns of each
   * class (@default 5; rspamd's own is 200). */
  redis?: { address: string; minLearns?: number };
  /** Start a proxy worker in milter mode (for an MTA's milter client such as Postfix's
   * smtpd_milters) that hands each message to the normal worker, so that mail through the milter
   * and mail through /checkv2 is scanned by the same process. */
  milter?: boolean;
}

/** Starts rspamd; throws with its output when it does not answer /ping in time. */
export async function startRspamd(o: RspamdOptions = {}): Promise<Rspamd> {
  try {
    await readFile(RSPAMD_BIN);
  } catch {
    throw new Error(`rspamd not found at ${RSPAMD_BIN}: install Debian's package (apt-get install rspamd); the spam tests start their own rspamd from it`);
  }
  const dir = await tempDir('tomlinson-rspamd-');
  const localD = join(dir.path, 'local', 'local.d');
  await mkdir(localD, { recursive: true });
  await Promise.all(['run', 'db'].map((d) => mkdir(join(dir.path, d))));
  await mkdir(HS_CACHE, { recursive: true });
  for (const f of await readdir(SHIPPED_LOCAL_D)) await copyFile(join(SHIPPED_LOCAL_D, f), join(localD, f));
  const options = [
    `hs_cache_dir = "${HS_CACHE}";`,
    // Port 9 (discard) on loopback: nothing answers, so lookups fail fast and stay on this machine.
    'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }',
    o.testPatterns ? 'enable_test_patterns = true;' : '',
  ];
  await writeFile(join(localD, 'options.inc'), options.join('\n') + '\n');
  for (const [name, text] of Object.entries(o.local ?? {})) await writeFile(join(localD, name), text);
  const [port, controllerPort, milterPort] = await freePorts(3);
  // The whole classifier (override.d, over the shipped local.d/classifier-bayes.conf).
  await mkdir(join(dir.path, 'local', 'override.d'));
  const bayes = o.redis
    ? [`servers = "${o.redis.address}";`, `min_learns = ${o.redis.minLearns ?? 5};`]
    : o.controller
      ? // Statfiles in SQLite under the temp folder, and a learn cache (which gives the "already
        // learned" answer for a message learned before).
        [
          'backend = "sqlite3";',
          `cache { path = "${join(dir.path, 'db', 'learn_cache.sqlite')}"; }`,
          `statfile { symbol = "BAYES_HAM"; spam = false; path = "${join(dir.path, 'db', 'bayes.ham.sqlite')}"; }`,
          `statfile { symbol = "BAYES_SPAM"; spam = true; path = "${join(dir.path, 'db', 'bayes.spam.sqlite')}"; }`,
        ]
      : ['servers = "127.0.0.1:9";'];
  await writeFile(join(dir.path, 'local', 'override.d', 'classifier-bayes.conf'), bayes.join('\n') + '\n');
  const password = typeof o.controller === 'object' ? o.controller.password : undefined;
  // The top level: rspamd's own common part and defaults from /etc/rspamd, one normal worker.
  await writeFile(
    join(dir.path, 'rspamd.conf'),
    [
      '.include "$CONFDIR/common.conf"',
      'options {',
      '  pidfile = "$RUNDIR/rspamd.pid";',
      '  .include "$CONFDIR/options.inc"',
      '  .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"',
      '}',
      'logging { type = "console"; level = "error"; }',
      'worker "normal" {',
      `  bind_socket = "127.0.0.1:${port}";`,
      '  .include "$CONFDIR/worker-normal.inc"',
      '  count = 1;',
      '}',
      ...(o.controller
        ? [
            'worker "controller" {',
            `  bind_socket = "127.0.0.1:${controllerPort}";`,
            '  count = 1;',
            password ? `  password = "${password}"; enable_password = "${password}";` : '  secure_ip = "127.0.0.1";',
            '  static_dir = "${WWWDIR}";',
            '}',
          ]
        : []),
      ...(o.milter
        ? [
            'worker "rspamd_proxy" {',
            `  bind_socket = "127.0.0.1:${milterPort}";`,
            '  milter = yes;',
            '  timeout = 120s;',
            '  count = 1;',
            `  upstream "local" { default = yes; hosts = "127.0.0.1:${port}"; }`,
            '}',
          ]
        : []),
      '',
    ].join('\n'),
  );
  const args = [
    '-f',
    '-c',
    join(dir.path, 'rspamd.conf'),
    `--var=LOCAL_CONFDIR=${join(dir.path, 'local')}`,
    `--var=RUNDIR=${join(dir.path, 'run')}`,
    `--var=DBDIR=${join(dir.path, 'db')}`,
    `--var=LOGDIR=${dir.path}`,
  ];
  // As root rspamd wants to be told which user to become; root is fine for a test.
  if (process.getuid?.() === 0) args.push('-u', 'root', '-g', 'root');
  const url = `http://127.0.0.1:${port}`;
  let out = '';
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    // Its own process group, so that stopping it can reach its workers too.
    const c = spawn(RSPAMD_BIN, args, { cwd: dir.path, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    const keep = (d: Buffer) => {
      out = (out + d.toString('utf8')).slice(-20_000);
    };
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    const exited = new Promise<number | null>((resolve) => c.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + (o.startTimeoutMs ?? 150_000);
    for (;;) {
      if (await ping(url)) return;
      const done = await Promise.race([exited, new Promise((r) => setTimeout(r, 250, 'wait'))]);
      if (done !== 'wait') throw new Error(`rspamd exited (${String(done)}) before answering /ping:\n${out}`);
      if (Date.now() > deadline) {
        await stopChild();
        throw new Error(`rspamd did not answer /ping within ${o.startTimeoutMs ?? 150_000} ms:\n${out}`);
      }
    }
  };

  const stopChild = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const t = setTimeout(() => {
      // The group we made at spawn: the main process and the workers it forked.
      if (c.pid) {
        try {
          process.kill(-c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }, 5000);
    await gone;
    clearTimeout(t);
    // Its workers leave with the main process; wait until the port is really free.
    for (let i = 0; i < 40 && (await ping(url)); i++) await new Promise((r) => setTimeout(r, 100));
  };

  try {
    await launch();
  } catch (e) {
    await dir.remove();
    throw e;
  }
  return {
    url,
    port,
    ...(o.controller ? { controllerUrl: `http://127.0.0.1:${controllerPort}` } : {}),
    ...(o.milter ? { milterPort } : {}),
    output: () => out,
    kill: stopChild,
    restart: launch,
    async stop() {
      await stopChild();
      await dir.remove();
    },
  };
}

async function ping(url: string): Promise<boolean> {
  try {
    const r = await request(`${url}/ping`, { signal: AbortSignal.timeout(1000) });
    return (await r.body.text()).trim() === 'pong';
  } catch {
    return false;
  }
}
