/** `app-password add|list|revoke`: per-device passwords for JMAP clients (core/accounts/app-passwords.ts). */
import type { Command } from 'commander';
import { AppPasswords } from '../../core/accounts/app-passwords.js';
import type { CliContext } from '../context.js';

/** Adds the `app-password` command group. */
export function register(program: Command, ctx: CliContext): void {
  const group = program.command('app-password').description('app passwords: one per device or API client, revocable on its own');
  const open = async () => new AppPasswords((await ctx.storage()).tables, await ctx.accounts());

  group
    .command('add')
    .argument('<address>')
    .argument('<label>', 'what it is for, e.g. "phone"')
    .description('make an app password; it is printed once and cannot be shown again')
    .action(async (address: string, label: string) => {
      const p = await (await open()).add(address, label);
      ctx.print(`app password ${p.id} (${p.label}) for ${p.address}:\n${p.password}\nIt is shown only now.`, p);
    });

  group
    .command('list')
    .argument('<address>')
    .description("list a user's app passwords (never the passwords)")
    .action(async (address: string) => {
      const rows = await (await open()).list(address);
      ctx.table(
        rows,
        [
          { key: 'id', title: 'ID' },
          { key: 'label', title: 'LABEL' },
          { key: 'createdAt', title: 'CREATED' },
        ],
        rows,
      );
    });

  group
    .command('revoke')
    .argument('<address>')
    .argument('<id>', 'the id from `list` (or a label that names one app password)')
    .description('revoke an app password; the next request with it is refused')
    .action(async (address: string, id: string) => {
      const p = await (await open()).revoke(address, id);
      ctx.print(`revoked app password ${p.id} (${p.label}) of ${p.address}`, { revoked: p.id, address: p.address });
    });
}
