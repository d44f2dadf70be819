/**
 * What every CLI command group gets: configuration and storage opened lazily (so `--help` needs
 * neither), output helpers that print tables for people and JSON for scripts, and password input
 * that never comes from argv.
 */
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { Accounts } from '../core/accounts/accounts.js';
import { loadConfig, type Config } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { MailboxStore } from '../core/mailbox/store.js';
import { openStorage } from '../core/storage/open.js';
import type { Storage } from '../core/storage/ports.js';

/** A refusal the CLI reports as `error: <message>` with a non-zero exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Shared state of one CLI run. */
export interface CliContext {
  /** The configuration (read from the environment on first use). */
  config(): Config;
  /** Storage opened on first use and closed when the command ends. */
  storage(): Promise<Storage>;
  accounts(): Promise<Accounts>;
  mailboxes(): Promise<MailboxStore>;
  log(): Logger;
  /** True when `--json` was given. */
  json(): boolean;
  /** Prints a JSON value (with --json) or the human text. */
  print(human: string | (() => string), data: unknown): void;
  /** Prints rows as an aligned table (or a JSON array with --json). */
  table(rows: object[], columns: { key: string; title: string; align?: 'right' }[], data?: unknown): void;
  /** Reads a password from standard input (`--password-stdin`) or a no-echo prompt. */
  readPassword(opts: { stdin?: boolean; confirm?: boolean }): Promise<string>;
  /** Progress line on a terminal (stderr); a no-op otherwise. */
  progress(text: string): void;
  /** Ends the progress line (if one is shown), so that what follows starts on a line of its own. */
  endProgress(): void;
  close(): Promise<void>;
}

/** Options of createContext (tests pass their own env and streams). */
export interface ContextOptions {
  env: NodeJS.ProcessEnv;
  stdout: NodeJS.WriteStream | Writable;
  stderr: NodeJS.WriteStream | Writable;
  stdin: NodeJS.ReadStream;
  json: () => boolean;
}

/** Reads the first line of standard input (without its line break). */
async function readStdinLine(stdin: NodeJS.ReadStream): Promise<string> {
  const rl = createInterface({ input: stdin, terminal: false });
  try {
    for await (const line of rl) return line.replace(/\r$/, '');
  } finally {
    rl.close();
  }
  return '';
}

/** Prompts on the terminal without echoing what is typed. */
async function prompt(question: string, stdin: NodeJS.ReadStream, stderr: NodeJS.WritableStream): Promise<string> {
  let muted = false;
  // readline echoes through its output stream: a muted wrapper hides the typed characters.
  const output = new Writable({
    write(chunk, _enc, cb) {
      if (!muted) stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: stdin, output, terminal: true });
  try {
    return await new Promise<string>((resolve) => {
      rl.question(question, (answer) => resolve(answer));
      muted = true;
    });
  } finally {
    muted = false;
    rl.close();
    stderr.write('\n');
  }
}

function cell(v: unknown): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v)) return v.join(', ');
  return String(v);
}

/** Builds the context for one run. */
export function createContext(o: ContextOptions): CliContext {
  let config: Config | undefined;
  let log: Logger | undefined;
  let storage: Promise<Storage> | undefined;
  let accounts: Accounts | undefined;
  let mailboxes: MailboxStore | undefined;
  const ttyErr = (o.stderr as NodeJS.WriteStream).isTTY === true;
  let progressShown = false;

  const ctx: CliContext = {
    config() {
      config ??= loadConfig(o.env);
      return config;
    },
    log() {
      // Logs go to stderr so that stdout stays clean for --json; warnings and worse by default.
      log ??= createLogger({ level: o.env.TOMLINSON_LOG_LEVEL || 'warn', pretty: false, destination: o.stderr });
      return log;
    },
    storage() {
      storage ??= openStorage(ctx.config(), ctx.log());
      return storage;
    },
    async accounts() {
      accounts ??= new Accounts((await ctx.storage()).tables);
      return accounts;
    },
    async mailboxes() {
      const s = await ctx.storage();
      mailboxes ??= new MailboxStore(s.tables, s.mail);
      return mailboxes;
    },
    json: o.json,
    print(human, data) {
      ctx.endProgress();
      if (o.json()) o.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
      else o.stdout.write(`${typeof human === 'function' ? human() : human}\n`);
    },
    table(rows, columns, data) {
      ctx.endProgress();
      if (o.json()) {
        o.stdout.write(`${JSON.stringify(data ?? rows, null, 2)}\n`);
        return;
      }
      if (!rows.length) {
        o.stdout.write('(none)\n');
        return;
      }
      const text = rows.map((r) => columns.map((c) => cell((r as Record<string, unknown>)[c.key])));
      const widths = columns.map((c, i) => Math.max(c.title.length, ...text.map((t) => [...t[i]].length)));
      const fmt = (vals: string[]) =>
        vals
          .map((v, i) => (columns[i].align === 'right' ? v.padStart(widths[i]) : i === vals.length - 1 ? v : v.padEnd(widths[i])))
          .join('  ')
          .trimEnd();
      o.stdout.write(`${fmt(columns.map((c) => c.title))}\n`);
      for (const t of text) o.stdout.write(`${fmt(t)}\n`);
    },
    async readPassword({ stdin, confirm }) {
      let pw: string;
      if (stdin) {
        pw = await readStdinLine(o.stdin);
      } else {
        if (!o.stdin.isTTY) throw new CliError('no terminal to ask for the password; pipe it in with --password-stdin');
        pw = await prompt('Password: ', o.stdin, o.stderr);
        if (confirm) {
          const again = await prompt('Repeat password: ', o.stdin, o.stderr);
          if (again !== pw) throw new CliError('the passwords do not match; nothing changed');
        }
      }
      if (!pw) throw new CliError('empty password; nothing changed');
      return pw;
    },
    progress(text) {
      if (!ttyErr || o.json()) return;
      o.stderr.write(`\r\x1b[2K${text}`);
      progressShown = true;
    },
    endProgress() {
      if (progressShown) o.stderr.write('\n');
      progressShown = false;
    },
    async close() {
      ctx.endProgress();
      if (storage) await (await storage).close();
    },
  };
  return ctx;
}
