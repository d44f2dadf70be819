/** `mailbox show|import|export`: look into a mailbox, move mail in from Maildir++/Maildir/mbox into
 * folders, out as mbox per folder or as a Maildir++ tree. */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, open, rename, rm, rmdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { finished } from 'node:stream/promises';
import type { Command } from 'commander';
import { CliError, type CliContext } from '../context.js';
import { formatSize } from '../units.js';

async function requireUser(ctx: CliContext, address: string): Promise<string> {
  const u = await (await ctx.accounts()).getUser(address);
  if (!u) throw new CliError(`user ${address} does not exist`);
  return u.address;
}

function bar(fraction: number, width = 24): string {
  const n = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}] ${(fraction * 100).toFixed(0).padStart(3)}%`;
}

/** Adds the `mailbox` command group. */
export function register(program: Command, ctx: CliContext): void {
  const mailbox = program.command('mailbox').description('mailbox contents: show, import (Maildir++, Maildir or mbox), export (mbox or Maildir++)');

  mailbox
    .command('show')
    .argument('<user>')
    .option('--limit <n>', 'newest messages to list', '10')
    .description('message count, size and the newest messages')
    .action(async (address: string, opts: { limit: string }) => {
      const limit = Number(opts.limit);
      if (!Number.isInteger(limit) || limit < 0 || limit > 1000) throw new CliError('--limit must be a whole number 0..1000');
      const user = await requireUser(ctx, address);
      const u = (await (await ctx.accounts()).getUser(user))!;
      const store = await ctx.mailboxes();
      const meta = await store.meta(user);
      const newest = limit ? await store.newest(user, limit) : [];
      const rows = newest.map((e) => ({
        uid: e.uid,
        date: typeof e.summary.date === 'string' && e.summary.date ? e.summary.date : e.receivedAt,
        from: typeof e.summary.from === 'string' ? e.summary.from : '',
        subject: typeof e.summary.subject === 'string' ? e.summary.subject : '',
        size: e.size,
        flags: e.flags,
      }));
      if (ctx.json()) {
        ctx.print('', { user, quotaBytes: u.quotaBytes, ...meta, newest: rows });
        return;
      }
      ctx.print(
        `${user}: ${meta.count} messages, ${formatSize(meta.bytes)} of ${formatSize(u.quotaBytes, 'unlimited')}; uidNext ${meta.uidNext}, uidValidity ${meta.uidValidity}`,
        null,
      );
      if (rows.length) {
        ctx.table(
          rows.map((r) => ({ ...r, size: formatSize(r.size), subject: r.subject.length > 60 ? `${r.subject.slice(0, 59)}…` : r.subject })),
          [
            { key: 'uid', title: 'UID', align: 'right' },
            { key: 'date', title: 'DATE' },
            { key: 'from', title: 'FROM' },
            { key: 'size', title: 'SIZE', align: 'right' },
            { key: 'subject', title: 'SUBJECT' },
          ],
        );
      }
    });

  mailbox
    .command('import')
    .argument('<user>')
    .argument('<path>', 'a Maildir++ tree (Dovecot: .Sent, .Archive.2024 ...), a Maildir folder (with cur/ and new/) or an mbox file')
    .option('--folder <name>', 'folder to import a single Maildir or mbox file into (made if missing)', 'INBOX')
    .description('import messages into folders; a second run skips what is already in')
    .action(async (address: string, path: string, opts: { folder: string }) => {
      if (!existsSync(path)) throw new CliError(`${path} does not exist`);
      const user = await requireUser(ctx, address);
      const storage = await ctx.storage();
      // Loaded on demand: the MIME parser is the heaviest part of the CLI's start-up.
      const { importMailbox, ImportSourceError } = await import('../../core/mailbox/import.js');
      const report = await importMailbox({
        user,
        path,
        ...(opts.folder.toUpperCase() === 'INBOX' ? {} : { folder: opts.folder }),
        store: await ctx.mailboxes(),
        tables: storage.tables,
        blobs: storage.mail,
        maxBytes: ctx.config().smtp.maxMessageBytes,
        onProgress: (p) => {
          const fraction = p.total ? p.done / p.total : p.bytesTotal ? (p.bytesRead ?? 0) / p.bytesTotal : 0;
          ctx.progress(`importing ${p.folder} ${bar(fraction)} ${p.done}${p.total ? `/${p.total}` : ''} messages`);
        },
      }).catch((e: Error) => {
        if (e instanceof ImportSourceError) throw new CliError(e.message);
        throw e;
      });
      ctx.endProgress();
      ctx.print(
        () => {
          const lines = [
            `${report.format} ${path} -> ${user}: ${report.found} found, ${report.imported} imported (${formatSize(report.bytes)}), ${report.skipped} skipped (already in), ${report.refused.length} refused`,
          ];
          if (report.format === 'maildir++')
            for (const f of report.folders)
              lines.push(
                `  ${f.folder}${f.specialUse ? ` (${f.specialUse})` : ''}${f.subscribed ? '' : ' (not subscribed)'}: ${f.found} found, ${f.imported} imported, ${f.skipped} skipped, ${f.refused.length} refused`,
              );
          for (const r of report.refused) lines.push(`  refused ${r.source}: ${r.reason}`);
          return lines.join('\n');
        },
        { user, path, ...report },
      );
      // Partly done: what is in stays in, and the same command resumes once there is room.
      if (report.stopped) throw new CliError(`import stopped: ${report.stopped}; raise the quota (user quota) and run the same import again to resume`);
    });

  mailbox
    .command('export')
    .argument('<user>')
    .argument('<path>', 'mbox file to write, or - for standard output; with --maildir, the folder to create')
    .option('--folder <name>', 'the folder to export as mbox', 'INBOX')
    .option('--maildir', 'export every folder as a Maildir++ tree (Dovecot layout) into a new folder')
    .option('--force', 'overwrite an existing file')
    .description('export a folder as an mbox file, or every folder as a Maildir++ tree')
    .action(async (address: string, path: string, opts: { folder: string; maildir?: boolean; force?: boolean }) => {
      const user = await requireUser(ctx, address);
      const storage = await ctx.storage();
      const store = await ctx.mailboxes();
      if (opts.maildir) return exportTree(ctx, user, path, opts);
      const folder = await store.folders.find(user, opts.folder).catch((e: Error) => {
        throw new CliError(e.message);
      });
      if (!folder) throw new CliError(`${user} has no folder ${opts.folder}`);
      const toStdout = path === '-';
      if (!toStdout) {
        const parent = dirname(resolve(path));
        if (!existsSync(parent)) throw new CliError(`folder ${parent} does not exist`);
        if (!statSync(parent).isDirectory()) throw new CliError(`${parent} is not a folder`);
        if (existsSync(path) && statSync(path).isDirectory()) throw new CliError(`${path} is a folder; name the mbox file to write`);
        if (existsSync(path) && !opts.force) throw new CliError(`${path} exists; pass --force to overwrite it`);
      }
      // Written under a temporary name and renamed at the end: a failed export leaves no half file.
      const tmp = `${path}.partial`;
      const { exportMailbox } = await import('../../core/mailbox/export.js');
      // Opened here, so that an error (no permission) is this command's error, not a stream event;
      // 0600 like everything else in the data folder's reach.
      const out = toStdout ? process.stdout : (await open(tmp, 'w', 0o600)).createWriteStream();
      try {
        const report = await exportMailbox({
          user,
          store,
          blobs: storage.mail,
          out,
          folderId: folder.id,
          onProgress: (done, total) => ctx.progress(`exporting ${bar(total ? done / total : 1)} ${done}/${total} messages`),
        });
        ctx.endProgress();
        if (!toStdout) {
          out.end();
          await finished(out);
          await rename(tmp, path);
        }
        const summary = { user, folder: folder.name, path, ...report };
        if (toStdout) process.stderr.write(`${JSON.stringify(summary)}\n`);
        else
          ctx.print(
            `exported ${report.exported} messages (${formatSize(report.bytes)}) of ${user}${folder.id === 'INBOX' ? '' : ` folder ${folder.name}`} to ${path}${report.missing.length ? `; ${report.missing.length} missing from storage (uids ${report.missing.join(', ')})` : ''}`,
            summary,
          );
      } catch (e) {
        if (!toStdout) {
          out.destroy();
          await rm(tmp, { force: true });
        }
        throw e;
      }
    });
}

/** `mailbox export --maildir`: every folder into a new Maildir++ tree, made under a temporary
 * name and renamed at the end, so that a failed export leaves no half tree. */
async function exportTree(ctx: CliContext, user: string, path: string, opts: { folder: string }): Promise<void> {
  if (opts.folder.toUpperCase() !== 'INBOX') throw new CliError('--maildir exports every folder; --folder is for an mbox export');
  if (path === '-') throw new CliError('--maildir writes a folder tree; name the folder to create');
  const parent = dirname(resolve(path));
  if (!existsSync(parent)) throw new CliError(`folder ${parent} does not exist`);
  if (existsSync(path)) {
    if (!statSync(path).isDirectory()) throw new CliError(`${path} exists and is not a folder`);
    // Never replaced, even with --force: a mistyped path must not delete someone's folder.
    if (readdirSync(path).length) throw new CliError(`${path} is not empty; name a new or empty folder`);
  }
  const storage = await ctx.storage();
  const { exportMaildirTree } = await import('../../core/mailbox/export.js');
  const tmp = await mkdtemp(`${resolve(path)}.partial-`);
  try {
    const report = await exportMaildirTree({
      user,
      store: await ctx.mailboxes(),
      blobs: storage.mail,
      root: tmp,
      onProgress: (folder, done, total) => ctx.progress(`exporting ${folder} ${bar(total ? done / total : 1)} ${done}/${total} messages`),
    });
    ctx.endProgress();
    if (existsSync(path)) await rmdir(path); // empty, checked above
    await rename(tmp, path);
    ctx.print(
      () => {
        const lines = [`exported ${report.exported} messages (${formatSize(report.bytes)}) in ${report.folders.length} folders of ${user} to ${path}`];
        for (const f of report.folders) {
          const notes = [
            ...(f.missing.length ? [`${f.missing.length} missing from storage (uids ${f.missing.join(', ')})`] : []),
            ...(f.droppedKeywords.length ? [`keywords past 26 left off: ${f.droppedKeywords.join(' ')}`] : []),
          ];
          lines.push(`  ${f.folder} -> ${f.dir || '.'}: ${f.exported} messages${notes.length ? `; ${notes.join('; ')}` : ''}`);
        }
        return lines.join('\n');
      },
      { user, path, ...report },
    );
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}
