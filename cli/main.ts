/**
 * `tomlinson <command>`: the admin CLI. Each command group lives in cli/commands/<group>.ts and
 * exports `register(program, ctx)`; add a group by adding its loader to GROUPS. A run loads only
 * the group it names (all of them for help), so `user list` never loads the AWS SDK or the MIME
 * parser. Storage is whatever the configuration names (TOMLINSON_STORAGE=local|aws), opened only
 * by commands that need it.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { AccountsError, InvalidAddress } from '../core/accounts/accounts.js';
import { ConfigError } from '../core/config.js';
import { NoSuchMailbox, QuotaExceeded } from '../core/mailbox/store.js';
import { isStorageError } from '../core/storage/ports.js';
import { CliError, createContext, type CliContext } from './context.js';

type Register = (program: Command, ctx: CliContext) => void;
type Loader = () => Promise<{ register: Register }>;

/** Command modules by the top-level commands they add, in help order (queue.ts adds `queue` and
 * `dkim`; sweep.ts adds `mailbox sweep`). */
const GROUPS: [string[], Loader][] = [
  [['domain'], () => import('./commands/domain.js')],
  [['user'], () => import('./commands/user.js')],
  [['alias'], () => import('./commands/alias.js')],
  [['app-password'], () => import('./commands/app-password.js')],
  [['session'], () => import('./commands/session.js')],
  [['mailbox'], () => import('./commands/mailbox.js')],
  [['mailbox'], () => import('./commands/sweep.js')],
  [['folder'], () => import('./commands/folder.js')],
  [['vacation'], () => import('./commands/vacation.js')],
  [['spam'], () => import('./commands/spam.js')],
  [['queue', 'dkim'], () => import('./commands/queue.js')],
  [['dlq'], () => import('./commands/dlq.js')],
  [['cache'], () => import('./commands/cache.js')],
  [['config'], () => import('./commands/config.js')],
];

/** The loaders a run needs: the group of its first word, or every group (help, a typo). */
function groupsFor(argv: string[]): Loader[] {
  const word = argv.slice(2).find((a) => !a.startsWith('-'));
  const named = GROUPS.filter(([names]) => word !== undefined && names.includes(word));
  return (named.length ? named : GROUPS).map(([, load]) => load);
}

/** Set to show the stack of an unexpected error (a bug or an outage) after its one line. */
const DEBUG_ENV = 'TOMLINSON_DEBUG';

/** Streams and environment of one run (tests pass their own). */
export interface RunIo {
  env?: NodeJS.ProcessEnv;
  stdout?: NodeJS.WriteStream;
  stderr?: NodeJS.WriteStream;
  stdin?: NodeJS.ReadStream;
}

/** Words for errors an operator can act on; anything else is a bug or an outage. */
function explain(e: unknown): string | undefined {
  if (e instanceof CliError || e instanceof AccountsError || e instanceof InvalidAddress || e instanceof ConfigError) return e.message;
  if (e instanceof QuotaExceeded || e instanceof NoSuchMailbox) return e.message;
  if (isStorageError(e)) return `storage: ${e.message}${e.retryable ? ' (try again later)' : ''}`;
  return systemError(e);
}

const SYSCALL_WORDS: Record<string, string> = {
  open: 'open',
  mkdir: 'create',
  rename: 'rename',
  unlink: 'remove',
  scandir: 'read the folder',
  stat: 'read',
  lstat: 'read',
  read: 'read',
  write: 'write',
  access: 'use',
  rmdir: 'remove',
  copyfile: 'copy',
};

/** A file-system error (missing folder, no permission, a file where a folder should be) in words. */
function systemError(e: unknown): string | undefined {
  const err = e as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof err.code !== 'string' || !err.syscall || !/^E[A-Z]+$/.test(err.code)) return undefined;
  // "ENOENT: no such file or directory, open '/x'" -> "no such file or directory"
  const reason = err.message.replace(/^E[A-Z]+: /, '').replace(/, \w+ .*$/, '');
  const verb = SYSCALL_WORDS[err.syscall] ?? err.syscall;
  return err.path ? `cannot ${verb} ${err.path}: ${reason}` : `${verb} failed: ${reason}`;
}

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code. */
export async function run(argv: string[] = process.argv, io: RunIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const program = new Command('tomlinson');
  const debug = Boolean((io.env ?? process.env)[DEBUG_ENV]);
  const ctx = createContext({ env: io.env ?? process.env, stdout, stderr, stdin: io.stdin ?? process.stdin, json: () => Boolean(program.opts().json) });
  program
    .description('Tomlinson admin: domains, users, aliases, mailboxes (and the queue and cache when they are built in)')
    .option('--json', 'machine-readable output on stdout')
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeOut: (s) => stdout.write(s), writeErr: (s) => stderr.write(s) });
  for (const load of groupsFor(argv)) (await load()).register(program, ctx);
  // Every subcommand reports usage errors through exitOverride too (commander copies settings
  // only to commands created after the call, so apply it to the tree now).
  const walk = (c: Command) => {
    c.exitOverride();
    c.configureOutput({ writeOut: (s) => stdout.write(s), writeErr: (s) => stderr.write(s) });
    c.commands.forEach(walk);
  };
  program.commands.forEach(walk);

  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; usage errors were already printed by commander.
      return e.exitCode === 0 ? 0 : 2;
    }
    ctx.endProgress();
    const msg = explain(e);
    if (msg === undefined) {
      // One line; the stack only on request.
      const text = e instanceof Error ? `${e.name === 'Error' ? '' : `${e.name}: `}${e.message}` : String(e);
      stderr.write(`error: ${text.split('\n')[0]}${debug ? '' : ` (set ${DEBUG_ENV}=1 for details)`}\n`);
      if (debug) stderr.write(`${(e as Error)?.stack ?? ''}\n`);
      return 70; // EX_SOFTWARE (sysexits.h)
    }
    if (program.opts().json) stderr.write(`${JSON.stringify({ error: msg, code: (e as { code?: string }).code ?? (e as Error).name })}\n`);
    else stderr.write(`error: ${msg}\n`);
    return (e as CliError).exitCode ?? 1;
  } finally {
    await ctx.close().catch(() => undefined);
  }
}

function isEntryPoint(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Runs the CLI as the process (bin/tomlinson.mjs): an error that escapes the command (an 'error'
 * event nobody listened to) is reported in one line too, never as a bare stack trace.
 */
export async function main(): Promise<void> {
  const stray = (e: unknown) => {
    const text = e instanceof Error ? (process.env[DEBUG_ENV] ? (e.stack ?? e.message) : (systemError(e) ?? e.message)) : String(e);
    process.stderr.write(`error: ${text}\n`);
    process.exit(70);
  };
  process.on('uncaughtException', stray);
  process.on('unhandledRejection', stray);
  process.exitCode = await run();
}

if (isEntryPoint()) await main();
