/**
 * Shared by the third-party IMAP client suites (test/imap/clients*.test.ts): running a client
 * program with a time bound, failing clearly when it is not installed, the message corpus with
 * its awkward parts, and reading back what the server holds (folders, flags, raw blobs) through
 * the store rather than through IMAP, so a client bug and a server bug cannot cancel out.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import type { FolderMessage } from '../../../core/mailbox/folders.js';
import type { ImapHarness } from '../harness.js';

export const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

/** CRLF to LF: what mbsync, offlineimap, getmail and fetchmail write to local files (Unix line ends). */
export const lf = (s: string) => s.replace(/\r\n/g, '\n');

/** Messages with the parts clients get wrong: dot lines, 8-bit UTF-8, a long line, a 50 KB body. */
export function corpus(tag: string): string[] {
  return [
    `From: Ann <ann@example.net>\r\nTo: x@example.com\r\nSubject: ${tag} plain\r\nMessage-ID: <${tag}-1@example.net>\r\nDate: Mon, 7 Dec 2026 10:00:01 +0000\r\n\r\nHello\r\n`,
    `From: a@example.net\r\nSubject: ${tag} dots\r\nMessage-ID: <${tag}-2@example.net>\r\nDate: Mon, 7 Dec 2026 10:00:02 +0000\r\n\r\n.\r\n..\r\n.hidden\r\nend\r\n`,
    `From: a@example.net\r\nSubject: =?UTF-8?Q?${tag}_gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <${tag}-3@example.net>\r\nDate: Mon, 7 Dec 2026 10:00:03 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n${'z'.repeat(900)}\r\n`,
    `From: a@example.net\r\nSubject: ${tag} big\r\nMessage-ID: <${tag}-4@example.net>\r\nDate: Mon, 7 Dec 2026 10:00:04 +0000\r\n\r\n${Array.from({ length: 700 }, (_, i) => `line ${i} ${'x'.repeat(64)}`).join('\r\n')}\r\n`,
  ];
}

/** Fails the calling test with the Debian package to install when `program` is not on PATH. */
export function need(program: string, pkg: string): void {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, program), constants.X_OK);
      return;
    } catch {
      // not in this folder
    }
  }
  throw new Error(`${program} is not installed: install the Debian package ${pkg} (.ci/run does)`);
}

export interface ToolRun {
  code: number;
  /** Standard output and error together, for the failure message. */
  out: string;
  stdout: string;
}

/** Runs a program to its end (killed after `timeoutMs`); never rejects, the caller checks `code`. */
export function runTool(cmd: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<ToolRun> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      {
        timeout: options.timeoutMs ?? 60_000,
        killSignal: 'SIGKILL',
        env: options.env ?? process.env,
        cwd: options.cwd,
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'latin1',
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; killed?: boolean }) | null;
        const code = !e ? 0 : typeof e.code === 'number' ? e.code : -1;
        const note = e?.killed ? `\n[${cmd} killed after ${options.timeoutMs ?? 60_000} ms]` : '';
        resolve({ code, stdout, out: `${stdout}${stderr}${note}` });
      },
    );
  });
}

/** The harness's self-signed certificate (made in the data folder at start), for clients to trust. */
export const certFile = (h: ImapHarness) => join(h.dir, 'tls', 'selfsigned.crt');

/** The folder id of `name` for `user`, failing when the server has no such folder. */
export async function folderId(h: ImapHarness, user: string, name: string): Promise<string> {
  if (name === 'INBOX') return 'INBOX';
  const f = await h.folders.find(user, name);
  if (!f) throw new Error(`${user} has no folder ${name}`);
  return f.id;
}

/** Every message of one folder as stored, each with its raw bytes. */
export async function serverMessages(h: ImapHarness, user: string, name: string): Promise<(FolderMessage & { raw: Buffer })[]> {
  const id = await folderId(h, user, name);
  const out: (FolderMessage & { raw: Buffer })[] = [];
  for await (const m of h.folders.entries(user, id)) {
    const { body } = await h.storage.mail.get(m.blobKey);
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c as Buffer);
    out.push({ ...m, raw: Buffer.concat(chunks) });
  }
  return out;
}

/** The files of a Maildir folder (cur and new), each with its name and text. */
export async function maildirFiles(dir: string): Promise<{ sub: 'cur' | 'new'; name: string; path: string; text: string }[]> {
  const out: { sub: 'cur' | 'new'; name: string; path: string; text: string }[] = [];
  for (const sub of ['cur', 'new'] as const) {
    const names = await readdir(join(dir, sub)).catch(() => [] as string[]);
    for (const name of names.sort()) out.push({ sub, name, path: join(dir, sub, name), text: await readFile(join(dir, sub, name), 'utf8') });
  }
  return out;
}

/** The Maildir flag letters of a file name (`...:2,FS` -> `FS`). */
export const maildirFlags = (name: string) => /:2,([A-Za-z]*)$/.exec(name)?.[1] ?? '';

/** Resolves when `check` returns true, polling; rejects with `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
