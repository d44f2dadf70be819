/** `alias add|remove|list`: addresses (or `@domain` catch-alls) forwarding to users or elsewhere. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';

/** Adds the `alias` command group. */
export function register(program: Command, ctx: CliContext): void {
  const alias = program.command('alias').description('aliases: an address or @domain catch-all forwarding to users or remote addresses');

  alias
    .command('add')
    .argument('<address>', 'alias address, or @domain for a catch-all')
    .argument('<targets...>', 'local users, other aliases or remote addresses')
    .description('create an alias, or add targets to an existing one')
    .action(async (address: string, targets: string[]) => {
      const a = await (await ctx.accounts()).addAlias(address, targets);
      ctx.print(`alias ${a.address} -> ${a.targets.join(', ')}`, a);
    });

  alias
    .command('remove')
    .argument('<address>')
    .argument('[targets...]', 'remove only these targets (the alias goes when none remain)')
    .description('remove an alias or some of its targets')
    .action(async (address: string, targets: string[]) => {
      const accounts = await ctx.accounts();
      await accounts.removeAlias(address, targets);
      const left = await accounts.getAlias(address);
      ctx.print(left ? `alias ${left.address} -> ${left.targets.join(', ')}` : `removed alias ${address}`, left ?? { removed: address });
    });

  alias
    .command('list')
    .argument('[domain]', 'only this domain')
    .description('list aliases')
    .action(async (domain?: string) => {
      const aliases = await (await ctx.accounts()).listAliases(domain);
      ctx.table(
        aliases,
        [
          { key: 'address', title: 'ALIAS' },
          { key: 'targets', title: 'TARGETS' },
        ],
        aliases,
      );
    });
}
