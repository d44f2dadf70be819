/**
 * `tomlinson <command>`: the admin CLI. Each command group lives in cli/commands/<group>.ts and
 * exports `register(program, ctx)`; add a group by importing it and adding it to GROUPS.
 * Storage is whatever the configuration names (TOMLINSON_STORAGE=local|aws), opened only by
 * commands that need it.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { AccountsError, InvalidAddress } from '../core/accounts/accounts.js';
import { ConfigError } from '../core/config.js';
import { NoSuchMailbox, QuotaExceeded } from '../core/mailbox/store.js';
import { isStorageError } from '../core/storage/ports.js';
import { register as alias } from './commands/alias.js';
import { register as cache } from './commands/cache.js';
import { register as config } from './commands/config.js';
import { register as dlq } from './commands/dlq.js';
import { register as domain } from './commands/domain.js';
import { register as mailbox } from './commands/mailbox.js';
import { register as queue } from './commands/queue.js';
import { register as sweep } from './commands/sweep.js';
import { register as user } from './commands/user.js';
import { CliError, createContext, type CliContext } from './context.js';

type Register = (program: Command, ctx: CliContext) => void;

/** The command groups, in help order. */
const GROUPS: Register[] = [domain, user, alias, mailbox, sweep, queue, dlq, cache, config];

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
  return undefined;
}

/** Runs the CLI on `argv` (as process.argv) and resolves to the exit code. */
export async function run(argv: string[] = process.argv, io: RunIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  const program = new Command('tomlinson');
  const ctx = createContext({ env: io.env ?? process.env, stdout, stderr, stdin: io.stdin ?? process.stdin, json: () => Boolean(program.opts().json) });
  program
    .description('Tomlinson admin: domains, users, aliases, mailboxes (and the queue and cache when they are built in)')
    .option('--json', 'machine-readable output on stdout')
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeOut: (s) => stdout.write(s), writeErr: (s) => stderr.write(s) });
  for (const group of GROUPS) group(program, ctx);
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
    const msg = explain(e);
    if (msg === undefined) {
      stderr.write(`error: ${(e as Error)?.stack ?? String(e)}\n`);
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

if (isEntryPoint()) {
  process.exitCode = await run();
}
