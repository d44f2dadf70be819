/** `dlq list|redrive|drop`: jobs that failed too often and ended in a dead-letter queue. */
import type { Command } from 'commander';
import { DeadLetterAdmin, type DlqSource } from '../../core/mail/dlq-admin.js';
import { formatSize } from '../units.js';
import { CliError, type CliContext } from '../context.js';

const SOURCES: readonly DlqSource[] = ['inbound', 'outbound'];

function source(name: string): DlqSource {
  if (!(SOURCES as readonly string[]).includes(name)) throw new CliError(`unknown queue "${name}": use inbound or outbound`);
  return name as DlqSource;
}

async function admin(ctx: CliContext): Promise<DeadLetterAdmin> {
  const storage = await ctx.storage();
  // Queues whose short receive samples (listingWaitSeconds > 0) need a long poll to see every message.
  return new DeadLetterAdmin(storage.queues, storage.capabilities.listingWaitSeconds);
}

/** Adds the `dlq` command group. */
export function register(program: Command, ctx: CliContext): void {
  const dlq = program.command('dlq').description('dead-letter queues: jobs that failed too often (the worker log says why); list, re-drive or drop them');

  dlq
    .command('list')
    .argument('[queue]', 'inbound or outbound (default: both)')
    .option('--limit <n>', 'at most this many per queue', '1000')
    .description('the dead letters, oldest first (they stay in the queue)')
    .action(async (queue: string | undefined, opts: { limit: string }) => {
      const a = await admin(ctx);
      const rows = [];
      for (const q of queue ? [source(queue)] : SOURCES) {
        for (const d of await a.list(q, { limit: Number(opts.limit) || 1000 })) rows.push({ queue: q, ...d });
      }
      ctx.table(
        rows.map((r) => ({
          ...r,
          id: r.jobId ?? r.messageId,
          from: r.from === undefined ? '' : `<${r.from}>`,
          rcpts: r.rcpts ? r.rcpts.join(', ') : '',
          size: r.size === undefined ? '' : formatSize(r.size),
          received: r.receivedAt ?? r.sentAt,
          note: r.unreadable ?? '',
        })),
        [
          { key: 'queue', title: 'QUEUE' },
          { key: 'id', title: 'ID' },
          { key: 'received', title: 'RECEIVED' },
          { key: 'from', title: 'FROM' },
          { key: 'rcpts', title: 'RECIPIENTS' },
          { key: 'size', title: 'SIZE', align: 'right' },
          { key: 'receiveCount', title: 'TRIES', align: 'right' },
          { key: 'note', title: 'NOTE' },
        ],
        rows,
      );
    });

  dlq
    .command('redrive')
    .argument('<queue>', 'inbound or outbound')
    .argument('[ids...]', 'job ids (as in 250 2.0.0 <id>) or dead-letter message ids')
    .option('--all', 'every dead letter of the queue')
    .description('put dead letters back on their queue, to be worked again (fix the cause first)')
    .action(async (queue: string, ids: string[], opts: { all?: boolean }) => {
      const q = source(queue);
      if (!opts.all && ids.length === 0) throw new CliError('name the ids to re-drive, or give --all');
      if (opts.all && ids.length > 0) throw new CliError('give ids or --all, not both');
      const r = await (await admin(ctx)).redrive(q, opts.all ? undefined : ids);
      ctx.print(`re-drove ${r.done.length} job(s) to ${q}`, { queue: q, redriven: r.done, missing: r.missing });
      notFound(q, r.missing);
    });

  dlq
    .command('drop')
    .argument('<queue>', 'inbound or outbound')
    .argument('<ids...>', 'job ids or dead-letter message ids')
    .description('delete dead letters for good (no bounce is sent)')
    .action(async (queue: string, ids: string[]) => {
      const q = source(queue);
      const r = await (await admin(ctx)).drop(q, ids);
      ctx.print(`dropped ${r.done.length} job(s) from the ${q} dead-letter queue`, { queue: q, dropped: r.done, missing: r.missing });
      notFound(q, r.missing);
    });
}

/** Ids that were asked for but not there make the command fail (after saying what was done). */
function notFound(queue: DlqSource, missing: string[]): void {
  if (missing.length) throw new CliError(`not in the ${queue} dead-letter queue: ${missing.join(', ')}`);
}
