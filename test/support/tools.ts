/**
 * The third-party programs the tests drive (vitest globalSetup, see vitest.config.ts): checked
 * once before any test runs, so that a machine without them gets one message naming each missing
 * one and the install command, instead of test after test failing with ENOENT. Run it alone with
 * `npx tsx test/support/tools.ts` (exit 1 and the message when something is missing, silent 0
 * otherwise). TOMLINSON_TEST_TOOLS=skip runs the tests anyway.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The Debian python the tests run for the remote MX (aiosmtpd) and the DKIM verifier (dkimpy). */
const SYSTEM_PYTHON = '/usr/bin/python3';

/** Programs looked up on PATH, with the Debian package that brings each. */
const PROGRAMS: { names: string[]; pkg: string; use: string }[] = [
  { names: ['swaks'], pkg: 'swaks', use: 'SMTP client' },
  { names: ['curl'], pkg: 'curl', use: 'SMTP, POP3 and HTTP client' },
  { names: ['fetchmail'], pkg: 'fetchmail', use: 'POP3 downloader' },
  { names: ['chromium', 'chromium-browser'], pkg: 'chromium', use: 'browser behind the proxy' },
  { names: ['openssl'], pkg: 'openssl', use: 'certificates' },
  { names: ['script'], pkg: 'bsdutils', use: 'pseudo-terminal for the CLI prompts' },
  { names: ['python3'], pkg: 'python3', use: 'smtplib, poplib, imaplib and moto' },
  { names: ['doveadm'], pkg: 'dovecot-core', use: "Dovecot's ENVELOPE/BODYSTRUCTURE to compare ours with, and Maildir++ trees" },
  { names: ['mbsync'], pkg: 'isync', use: 'IMAP sync client' },
  { names: ['offlineimap'], pkg: 'offlineimap3', use: 'IMAP sync client' },
  { names: ['getmail'], pkg: 'getmail6', use: 'IMAP downloader' },
  { names: ['neomutt'], pkg: 'neomutt', use: 'IMAP mail reader (driven through tmux)' },
  { names: ['tmux'], pkg: 'tmux', use: 'terminal for neomutt' },
  { names: ['rspamd'], pkg: 'rspamd', use: 'spam filter the MX listener scans with (test/spam starts its own)' },
  { names: ['redis-server'], pkg: 'redis-server', use: "rspamd's Bayes store (test/spam starts its own)" },
];

/** Python modules, by interpreter, with the package that brings each. */
const SYSTEM_MODULES: { module: string; pkg: string; use: string }[] = [
  { module: 'aiosmtpd', pkg: 'python3-aiosmtpd', use: 'remote MX for outbound delivery' },
  { module: 'dkim', pkg: 'python3-dkim', use: 'dkimpy, the independent DKIM verifier' },
];
const MOTO_MODULES = ['moto', 'flask', 'flask_cors'];

/** Where `name` is on `path`, or undefined. */
function onPath(name: string, path: string): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

// A python3 behind a version manager's shim (pyenv) takes seconds to start on a loaded machine, so
// a moto check that passed is remembered for a day for the same PATH and python3.
const MOTO_CACHE = join(ROOT, 'node_modules/.cache/tomlinson-test-tools.json');
const MOTO_CACHE_MS = 24 * 3600_000;

function motoKnownGood(key: string): boolean {
  try {
    const c = JSON.parse(readFileSync(MOTO_CACHE, 'utf8')) as { key?: string; at?: number };
    return c.key === key && typeof c.at === 'number' && Date.now() - c.at < MOTO_CACHE_MS;
  } catch {
    return false;
  }
}

async function missingMoto(env: NodeJS.ProcessEnv): Promise<string[]> {
  const python = onPath('python3', env.PATH ?? '');
  if (!python) return MOTO_MODULES;
  const key = `${env.PATH}\0${python}`;
  if (motoKnownGood(key)) return [];
  const missing = await missingModules('python3', MOTO_MODULES, env);
  if (!missing.length) {
    try {
      mkdirSync(join(MOTO_CACHE, '..'), { recursive: true });
      writeFileSync(MOTO_CACHE, JSON.stringify({ key, at: Date.now() }));
    } catch {
      // no cache then
    }
  }
  return missing;
}

/** The modules of `modules` that `python` cannot find (all of them when it cannot run). */
function missingModules(python: string, modules: string[], env: NodeJS.ProcessEnv): Promise<string[]> {
  // find_spec locates a module without importing it: moto takes a second to import.
  const code = 'import importlib.util as u, sys\nprint(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))';
  return new Promise((resolve) => {
    execFile(python, ['-c', code, ...modules], { env, timeout: 10_000 }, (err, stdout) => {
      resolve(err ? modules : stdout.trim().split(/\s+/).filter(Boolean));
    });
  });
}

/** The apt packages .ci/run installs (its PKGS line), so the advice matches CI. */
function ciPackages(): string[] {
  try {
    const m = /^PKGS=\(([^)]*)\)/m.exec(readFileSync(join(ROOT, '.ci/run'), 'utf8'));
    if (m) return m[1].trim().split(/\s+/);
  } catch {
    // fall through
  }
  return [...new Set([...PROGRAMS.map((p) => p.pkg), ...SYSTEM_MODULES.map((m) => m.pkg)])];
}

/** Checks every tool; resolves to the message to print, or undefined when nothing is missing. */
export async function checkTools(env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const path = env.PATH ?? '';
  const missing: string[] = [];
  for (const p of PROGRAMS) if (!p.names.some((n) => onPath(n, path) !== undefined)) missing.push(`${p.names[0]} (${p.use}; Debian package ${p.pkg})`);
  const [system, moto] = await Promise.all([
    missingModules(
      SYSTEM_PYTHON,
      SYSTEM_MODULES.map((m) => m.module),
      env,
    ),
    missingMoto(env),
  ]);
  for (const m of SYSTEM_MODULES) if (system.includes(m.module)) missing.push(`${m.module} in ${SYSTEM_PYTHON} (${m.use}; Debian package ${m.pkg})`);
  const motoMissing = moto.length > 0 && env.TOMLINSON_CONTRACT_AWS !== 'external';
  if (!missing.length && !motoMissing) return undefined;
  const lines = ['The tests drive third-party programs that this machine lacks:'];
  for (const m of missing) lines.push(`  - ${m}`);
  if (motoMissing)
    lines.push(`  - moto's server (${moto.join(', ')} not importable by python3 on PATH; the aws adapter tests start it, see test/support/moto.ts)`);
  if (missing.length)
    lines.push(
      'Install the Debian packages (the list .ci/run installs) with:',
      `  apt-get update && apt-get install -y --no-install-recommends ${ciPackages().join(' ')}`,
    );
  if (motoMissing) {
    lines.push(
      'moto is not packaged by Debian: install it for the python3 on PATH with',
      '  pip install "moto[server]>=5.2"',
      'or point the aws tests at another endpoint with TOMLINSON_CONTRACT_AWS=external (README.md).',
    );
  }
  lines.push('TOMLINSON_TEST_TOOLS=skip runs the tests anyway.');
  return lines.join('\n');
}

/** vitest globalSetup: stops the run, with the message, when a tool is missing. */
export default async function setup(): Promise<void> {
  if (process.env.TOMLINSON_TEST_TOOLS === 'skip') return;
  const message = await checkTools();
  if (!message) return;
  process.stderr.write(`\n${message}\n\n`);
  process.exit(1);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const message = await checkTools();
  if (message) {
    process.stderr.write(`${message}\n`);
    process.exit(1);
  }
}
