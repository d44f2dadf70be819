/** `mailbox sweep`: the documented cleanup of orphaned raw messages (core/mail/sweep.ts). */
import type { Command } from 'commander';
import { sweepOptionsFrom, sweepOrphanBlobs } from '../../core/mail/sweep.js';
import { CliError, type CliContext } from '../context.js';

function whole(name: string, raw: string | undefined, min: number, max: number): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new CliError(`${name} must be a whole number ${min}..${max}`);
  return Number(raw);
}

/** Adds `sweep` to the `mailbox` command group (creating the group if it is not there). */
export function register(program: Command, ctx: CliContext): void {
  const mailbox = program.commands.find((c) => c.name() === 'mailbox') ?? program.command('mailbox');
  mailbox
    .command('sweep')
    .description('delete raw messages that nothing refers to any more (left by a crash or a storage failure between storing a message and queueing it)')
    .option('--grace-hours <n>', 'unreferenced blobs older than this go even while the queues have work (default: mail.orphanGraceHours, 360)')
    .option(
      '--settle-minutes <n>',
      'a blob must have been seen unreferenced this long by an earlier sweep; 0 deletes on first sight: only with every listener stopped (default: mail.orphanSettleMinutes, 15)',
    )
    .option('--dry-run', 'list what would be deleted; change nothing')
    .option('--list', 'print the deleted keys (at most 1000)')
    .action(async (opts: { graceHours?: string; settleMinutes?: string; dryRun?: boolean; list?: boolean }) => {
      const defaults = sweepOptionsFrom(ctx.config());
      const grace = whole('--grace-hours', opts.graceHours, 1, 24 * 3650);
      const settle = whole('--settle-minutes', opts.settleMinutes, 0, 10080);
      const r = await sweepOrphanBlobs(await ctx.storage(), {
        graceSeconds: grace === undefined ? defaults.graceSeconds : grace * 3600,
        settleSeconds: settle === undefined ? defaults.settleSeconds : settle * 60,
        dryRun: opts.dryRun === true,
        log: ctx.log(),
      });
      ctx.print(() => {
        const lines = [
          `${r.dryRun ? 'would delete' : 'deleted'} ${r.deleted} orphaned blob${r.deleted === 1 ? '' : 's'} of ${r.scanned} scanned; ` +
            `kept ${r.keptReferenced} referenced, ${r.keptYoung} young (${r.marked} seen unreferenced for the first time); ` +
            (r.releasedHolds ? `${r.releasedHolds} stale hold${r.releasedHolds === 1 ? '' : 's'} released; ` : '') +
            `queues ${r.quiescent ? 'empty' : 'busy'}${r.complete ? '' : '; stopped early'}`,
        ];
        if (r.dryRun || opts.list) lines.push(...r.deletedKeys.map((k) => `  ${k}`));
        return lines.join('\n');
      }, r);
    });
}
