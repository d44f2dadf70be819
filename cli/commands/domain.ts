/** `domain add|remove|list`: the domains whose mail is delivered here. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';

/** Adds the `domain` command group. */
export function register(program: Command, ctx: CliContext): void {
  const domain = program.command('domain').description('local domains (mail for them is delivered here)');

  domain
    .command('add')
    .argument('<domain>', 'domain name; international names are stored as A-labels')
    .description('add a local domain')
    .action(async (name: string) => {
      const d = await (await ctx.accounts()).addDomain(name);
      ctx.print(`added domain ${d.domain}${d.unicode !== d.domain ? ` (${d.unicode})` : ''}`, d);
    });

  domain
    .command('remove')
    .argument('<domain>')
    .description('remove a local domain that has no users or aliases left')
    .action(async (name: string) => {
      const accounts = await ctx.accounts();
      const d = await accounts.getDomain(name);
      await accounts.removeDomain(name);
      ctx.print(`removed domain ${d?.domain ?? name}`, { removed: d?.domain ?? name });
    });

  domain
    .command('list')
    .description('list the local domains')
    .action(async () => {
      const domains = await (await ctx.accounts()).listDomains();
      ctx.table(
        domains.map((d) => ({ ...d, unicode: d.unicode === d.domain ? '' : d.unicode })),
        [
          { key: 'domain', title: 'DOMAIN' },
          { key: 'unicode', title: 'UNICODE' },
          { key: 'createdAt', title: 'CREATED' },
        ],
        domains,
      );
    });
}
