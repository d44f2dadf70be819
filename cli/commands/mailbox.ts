/** `mailbox show|import|export`: look into a mailbox, move mail in from Maildir/mbox, out as mbox. */
import { existsSync, statSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
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
  const mailbox = program.command('mailbox').description('mailbox contents: show, import (Maildir or mbox), export (mbox)');

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
    .argument('<path>', 'a Maildir folder (with cur/ and new/) or an mbox file')
    .description('import messages; a second run skips what is already in')
    .action(async (address: string, path: string) => {
      if (!existsSync(path)) throw new CliError(`${path} does not exist`);
      const user = await requireUser(ctx, address);
      const storage = await ctx.storage();
      // Loaded on demand: the MIME parser is the heaviest part of the CLI's start-up.
      const { importMailbox } = await import('../../core/mailbox/import.js');
      const report = await importMailbox({
        user,
        path,
        store: await ctx.mailboxes(),
        blobs: storage.mail,
        maxBytes: ctx.config().smtp.maxMessageBytes,
        onProgress: (p) => {
          const fraction = p.total ? p.done / p.total : p.bytesTotal ? (p.bytesRead ?? 0) / p.bytesTotal : 0;
          ctx.progress(`importing ${bar(fraction)} ${p.done}${p.total ? `/${p.total}` : ''} messages`);
        },
      }).catch((e: Error) => {
        if (/not an mbox file|not a Maildir/.test(e.message)) throw new CliError(e.message);
        throw e;
      });
      ctx.endProgress();
      ctx.print(
        () => {
          const lines = [
            `${report.format} ${path} -> ${user}: ${report.found} found, ${report.imported} imported (${formatSize(report.bytes)}), ${report.skipped} skipped (already in), ${report.refused.length} refused`,
          ];
          for (const r of report.refused) lines.push(`  refused ${r.source}: ${r.reason}`);
          return lines.join('\n');
        },
        { user, path, ...report },
      );
    });

  mailbox
    .command('export')
    .argument('<user>')
    .argument('<path>', 'mbox file to write, or - for standard output')
    .option('--force', 'overwrite an existing file')
    .description('export every message as an mbox file')
    .action(async (address: string, path: string, opts: { force?: boolean }) => {
      const user = await requireUser(ctx, address);
      const storage = await ctx.storage();
      const toStdout = path === '-';
      if (!toStdout) {
        const folder = dirname(resolve(path));
        if (!existsSync(folder)) throw new CliError(`folder ${folder} does not exist`);
        if (!statSync(folder).isDirectory()) throw new CliError(`${folder} is not a folder`);
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
          store: await ctx.mailboxes(),
          blobs: storage.mail,
          out,
          onProgress: (done, total) => ctx.progress(`exporting ${bar(total ? done / total : 1)} ${done}/${total} messages`),
        });
        ctx.endProgress();
        if (!toStdout) {
          out.end();
          await finished(out);
          await rename(tmp, path);
        }
        const summary = { user, path, ...report };
        if (toStdout) process.stderr.write(`${JSON.stringify(summary)}\n`);
        else
          ctx.print(
            `exported ${report.exported} messages (${formatSize(report.bytes)}) of ${user} to ${path}${report.missing.length ? `; ${report.missing.length} missing from storage (uids ${report.missing.join(', ')})` : ''}`,
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
