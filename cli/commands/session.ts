/** `session list|revoke`: the webmail sign-ins of a user (core/accounts/web-sessions.ts). */
import type { Command } from 'commander';
import { AccountsError } from '../../core/accounts/accounts.js';
import { WebSessions } from '../../core/accounts/web-sessions.js';
import type { CliContext } from '../context.js';

/** Adds the `session` command group. */
export function register(program: Command, ctx: CliContext): void {
  const group = program.command('session').description('webmail sign-ins: list them, sign one or all out');
  const open = async (address: string) => {
    const accounts = await ctx.accounts();
    const user = await accounts.getUser(address);
    if (!user) throw new AccountsError('NotFound', `user ${address} does not exist`);
    return { sessions: new WebSessions((await ctx.storage()).tables, accounts), user: user.address };
  };

  group
    .command('list')
    .argument('<address>')
    .description("list a user's webmail sessions (never their cookies)")
    .action(async (address: string) => {
      const { sessions, user } = await open(address);
      const rows = (await sessions.list(user)).map((s) => ({
        id: s.id,
        created: new Date(s.created).toISOString(),
        expires: new Date(s.expires).toISOString(),
        client: s.client,
        userAgent: s.userAgent,
      }));
      ctx.table(
        rows,
        [
          { key: 'id', title: 'ID' },
          { key: 'created', title: 'CREATED' },
          { key: 'expires', title: 'EXPIRES' },
          { key: 'client', title: 'CLIENT' },
          { key: 'userAgent', title: 'BROWSER' },
        ],
        rows,
      );
    });

  group
    .command('revoke')
    .argument('<address>')
    .argument('[id]', 'the id from `list`, or enough of its first digits to name one session')
    .option('--all', 'sign every session of the user out')
    .description('sign a webmail session out; its next request is refused')
    .action(async (address: string, id: string | undefined, opts: { all?: boolean }) => {
      if (Boolean(opts.all) === (id !== undefined)) throw new AccountsError('Invalid', 'give a session id or --all (one of them)');
      const { sessions, user } = await open(address);
      if (opts.all) {
        const n = await sessions.revokeAll(user);
        return ctx.print(`signed out ${n} webmail session${n === 1 ? '' : 's'} of ${user}`, { revoked: n, address: user });
      }
      const s = await sessions.revoke(user, id!);
      if (!s) throw new AccountsError('NotFound', `no webmail session ${id} for ${user}`);
      ctx.print(`signed out webmail session ${s.id} of ${user} (${s.client})`, { revoked: s.id, address: user });
    });
}
