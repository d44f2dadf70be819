/** `vacation set|show|off`: a user's automatic vacation reply (core/mail/vacation.ts). */
import type { Command } from 'commander';
import { VacationStore, type StoredVacation, type VacationSetting } from '../../core/mail/vacation.js';
import { CliError, type CliContext } from '../context.js';

/** A date option as UTC ISO, or a CliError naming the option. */
function isoDate(value: string | undefined, option: string): string | undefined {
  if (value === undefined) return undefined;
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new CliError(`${option}: not a date: ${value}`);
  return new Date(t).toISOString();
}

function describe(user: string, v: StoredVacation): string {
  if (!v.isEnabled) return `vacation reply for ${user}: off`;
  const lines = [`vacation reply for ${user}: on`];
  if (v.fromDate) lines.push(`  from:    ${v.fromDate}`);
  if (v.toDate) lines.push(`  until:   ${v.toDate}`);
  lines.push(`  subject: ${v.subject ?? '(Auto: and the original subject)'}`);
  if (v.textBody) lines.push(`  text:    ${v.textBody.replace(/\n/g, '\n           ')}`);
  if (v.htmlBody) lines.push(`  html:    ${v.htmlBody.length} characters`);
  return lines.join('\n');
}

/** Adds the `vacation` command group. */
export function register(program: Command, ctx: CliContext): void {
  const vacation = program.command('vacation').description('automatic vacation replies (RFC 3834), once per sender per week');

  const existingUser = async (user: string): Promise<string> => {
    const u = await (await ctx.accounts()).getUser(user);
    if (!u) throw new CliError(`no such user: ${user}`);
    return u.address;
  };

  vacation
    .command('set')
    .argument('<user>')
    .option('--subject <text>', 'subject of the reply (default: "Auto: " and the original subject)')
    .option('--text <text>', 'plain-text body of the reply')
    .option('--html <html>', 'HTML body of the reply')
    .option('--from <date>', 'first moment replies are sent (ISO 8601)')
    .option('--until <date>', 'moment replies stop (ISO 8601)')
    .description('turn the vacation reply on, with the given text and dates')
    .action(async (user: string, o: { subject?: string; text?: string; html?: string; from?: string; until?: string }) => {
      const address = await existingUser(user);
      const patch: Partial<VacationSetting> = {
        isEnabled: true,
        fromDate: isoDate(o.from, '--from') ?? null,
        toDate: isoDate(o.until, '--until') ?? null,
        subject: o.subject ?? null,
        textBody: o.text ?? null,
        htmlBody: o.html ?? null,
      };
      if (patch.fromDate && patch.toDate && patch.fromDate >= patch.toDate) throw new CliError('--until must be after --from');
      const v = await new VacationStore((await ctx.storage()).tables).set(address, patch);
      ctx.print(describe(address, v), { user: address, ...v });
    });

  vacation
    .command('show')
    .argument('<user>')
    .description("show a user's vacation reply")
    .action(async (user: string) => {
      const address = await existingUser(user);
      const v = await new VacationStore((await ctx.storage()).tables).get(address);
      ctx.print(describe(address, v), { user: address, ...v });
    });

  vacation
    .command('off')
    .argument('<user>')
    .description('turn the vacation reply off (its text is kept)')
    .action(async (user: string) => {
      const address = await existingUser(user);
      const v = await new VacationStore((await ctx.storage()).tables).set(address, { isEnabled: false });
      ctx.print(describe(address, v), { user: address, ...v });
    });
}
