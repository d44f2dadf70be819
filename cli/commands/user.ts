/** `user add|remove|list|passwd|quota|disable|enable`: mailbox owners; passwords never on argv. */
import type { Command } from 'commander';
import { CliError, type CliContext } from '../context.js';
import { formatSize, parseSize } from '../units.js';

function sizeArg(text: string): number {
  const n = parseSize(text);
  if (n === undefined) throw new CliError(`invalid size ${JSON.stringify(text)}: use bytes or a unit (500M, 2G) or "unlimited"`);
  return n;
}

/** Adds the `user` command group. */
export function register(program: Command, ctx: CliContext): void {
  const user = program.command('user').description('users: the login is the address; each has one mailbox');

  user
    .command('add')
    .argument('<address>')
    .description('add a user (asks for the password, or reads it with --password-stdin)')
    .option('--password-stdin', 'read the password from the first line of standard input')
    .option('--quota <size>', 'mailbox quota: bytes, 500M, 2G or unlimited', 'unlimited')
    .option('--disabled', 'create the user disabled')
    .action(async (address: string, opts: { passwordStdin?: boolean; quota: string; disabled?: boolean }) => {
      const quotaBytes = sizeArg(opts.quota);
      const accounts = await ctx.accounts();
      const normalized = accounts.normalize(address);
      // Refuse before asking for a password the refusals that do not need it.
      if (await accounts.getUser(normalized)) throw new CliError(`user ${normalized} already exists`);
      const password = await ctx.readPassword({ stdin: opts.passwordStdin, confirm: true });
      const u = await accounts.addUser(normalized, password, { quotaBytes, enabled: !opts.disabled });
      ctx.print(`added user ${u.address} (quota ${formatSize(u.quotaBytes, 'unlimited')}${u.enabled ? '' : ', disabled'})`, u);
    });

  user
    .command('remove')
    .argument('<address>')
    .description('remove a user; refuses while the mailbox holds mail unless --purge')
    .option('--purge', 'also delete every message in the mailbox')
    .action(async (address: string, opts: { purge?: boolean }) => {
      const accounts = await ctx.accounts();
      const u = await accounts.getUser(address);
      if (!u) throw new CliError(`user ${address} does not exist`);
      const store = await ctx.mailboxes();
      const meta = await store.meta(u.address);
      if (meta.count > 0 && !opts.purge)
        throw new CliError(`the mailbox of ${u.address} holds ${meta.count} messages; pass --purge to delete them with the user`);
      // Mail first, so that a failure leaves the user in place for a second try; then the account
      // (after which no delivery lands), then whatever arrived in between.
      let purged = await store.purge(u.address);
      await accounts.removeUser(u.address);
      purged += await store.purge(u.address);
      ctx.print(`removed user ${u.address}${purged ? ` and ${purged} messages` : ''}`, { removed: u.address, messagesDeleted: purged });
    });

  user
    .command('list')
    .argument('[domain]', 'only this domain')
    .description('list users with their mailbox use')
    .action(async (domain?: string) => {
      const users = await (await ctx.accounts()).listUsers(domain);
      const store = await ctx.mailboxes();
      const rows = [];
      for (const u of users) {
        const m = await store.meta(u.address);
        rows.push({ ...u, messages: m.count, bytes: m.bytes });
      }
      ctx.table(
        rows.map((r) => ({ ...r, quota: formatSize(r.quotaBytes, 'unlimited'), used: formatSize(r.bytes), state: r.enabled ? 'enabled' : 'disabled' })),
        [
          { key: 'address', title: 'USER' },
          { key: 'messages', title: 'MESSAGES', align: 'right' },
          { key: 'used', title: 'USED', align: 'right' },
          { key: 'quota', title: 'QUOTA', align: 'right' },
          { key: 'state', title: 'STATE' },
        ],
        rows,
      );
    });

  user
    .command('passwd')
    .argument('<address>')
    .description('set a new password')
    .option('--password-stdin', 'read the password from the first line of standard input')
    .action(async (address: string, opts: { passwordStdin?: boolean }) => {
      const accounts = await ctx.accounts();
      const u = await accounts.getUser(address);
      if (!u) throw new CliError(`user ${address} does not exist`);
      const password = await ctx.readPassword({ stdin: opts.passwordStdin, confirm: true });
      await accounts.setPassword(u.address, password);
      ctx.print(`password changed for ${u.address}`, { address: u.address, passwordChanged: true });
    });

  user
    .command('quota')
    .argument('<address>')
    .argument('<size>', 'bytes, 500M, 2G or unlimited')
    .description('set the mailbox quota')
    .action(async (address: string, size: string) => {
      const u = await (await ctx.accounts()).setQuota(address, sizeArg(size));
      ctx.print(`quota of ${u.address} is ${formatSize(u.quotaBytes, 'unlimited')}`, u);
    });

  user
    .command('disable')
    .argument('<address>')
    .description('stop a user from logging in and sending (mail to it is still kept)')
    .action(async (address: string) => {
      const u = await (await ctx.accounts()).setEnabled(address, false);
      ctx.print(`disabled ${u.address}`, u);
    });

  user
    .command('enable')
    .argument('<address>')
    .description('let a disabled user log in again')
    .action(async (address: string) => {
      const u = await (await ctx.accounts()).setEnabled(address, true);
      ctx.print(`enabled ${u.address}`, u);
    });
}
