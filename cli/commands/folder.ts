/**
 * `folder list|create|rename|delete|subscribe|unsubscribe`: a user's folders (issue 21), through
 * FolderStore, the same model IMAP and JMAP use. Names are full names with `/` between levels
 * (core/mailbox/folders.ts DELIMITER), in UTF-8.
 */
import type { Command } from 'commander';
import { SPECIAL_USES, type FolderInfo, type FolderStore } from '../../core/mailbox/folders.js';
import { FolderError, INBOX } from '../../core/mailbox/keys.js';
import { parseSpecialUse } from '../../core/mailbox/maildir.js';
import { CliError, type CliContext } from '../context.js';
import { formatSize } from '../units.js';

async function requireUser(ctx: CliContext, address: string): Promise<string> {
  const u = await (await ctx.accounts()).getUser(address);
  if (!u) throw new CliError(`user ${address} does not exist`);
  return u.address;
}

/** FolderStore's refusals (bad name, exists, has children) as one-line CLI errors. */
async function folderCall<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof FolderError) throw new CliError(e.message);
    throw e;
  }
}

async function requireFolder(store: FolderStore, user: string, name: string): Promise<FolderInfo> {
  const f = await folderCall(() => store.find(user, name));
  if (!f) throw new CliError(`${user} has no folder ${name}`);
  return f;
}

/** Expunges in pages of this many uids, so that a big folder never sits in memory at once. */
const EXPUNGE_PAGE = 500;

/** Adds the `folder` command group. */
export function register(program: Command, ctx: CliContext): void {
  const folder = program.command('folder').description("a user's folders: list, create, rename, delete, subscribe");
  const folders = async () => (await ctx.mailboxes()).folders;

  folder
    .command('list')
    .argument('<user>')
    .description('every folder with its special use, subscription, message and unseen counts and size')
    .action(async (address: string) => {
      const user = await requireUser(ctx, address);
      const store = await folders();
      const rows = [];
      for (const f of await store.list(user)) {
        const s = await store.status(user, f.id);
        rows.push({
          name: f.name,
          specialUse: f.specialUse ?? null,
          subscribed: f.subscribed,
          messages: s.count,
          unseen: s.unseen,
          bytes: s.bytes,
          uidValidity: s.uidValidity,
          uidNext: s.uidNext,
        });
      }
      ctx.table(
        rows.map((r) => ({ ...r, specialUse: r.specialUse ?? '', subscribed: r.subscribed ? 'yes' : 'no', size: formatSize(r.bytes) })),
        [
          { key: 'name', title: 'NAME' },
          { key: 'specialUse', title: 'USE' },
          { key: 'subscribed', title: 'SUBSCRIBED' },
          { key: 'messages', title: 'MESSAGES', align: 'right' },
          { key: 'unseen', title: 'UNSEEN', align: 'right' },
          { key: 'size', title: 'SIZE', align: 'right' },
        ],
        rows,
      );
    });

  folder
    .command('create')
    .argument('<user>')
    .argument('<name>', 'full name, levels separated by / (missing levels above are made too)')
    .option('--special-use <use>', `mark it as one of ${Object.keys(SPECIAL_USES).join(' ')} (RFC 6154)`)
    .description('create a folder')
    .action(async (address: string, name: string, opts: { specialUse?: string }) => {
      const use = opts.specialUse === undefined ? undefined : parseSpecialUse(opts.specialUse);
      if (opts.specialUse !== undefined && !use)
        throw new CliError(`--special-use must be one of ${Object.keys(SPECIAL_USES).join(' ')}, not ${opts.specialUse}`);
      const user = await requireUser(ctx, address);
      const f = await folderCall(async () => (await folders()).create(user, name, use ? { specialUse: use } : {}));
      ctx.print(`created folder ${f.name}${f.specialUse ? ` (${f.specialUse})` : ''} of ${user}`, { user, ...f });
    });

  folder
    .command('rename')
    .argument('<user>')
    .argument('<old>')
    .argument('<new>')
    .description('rename a folder and every folder below it; UIDs and UIDVALIDITY stay')
    .action(async (address: string, from: string, to: string) => {
      const user = await requireUser(ctx, address);
      const store = await folders();
      const f = await requireFolder(store, user, from);
      // RFC 9051 §6.3.6 makes an IMAP RENAME of INBOX a move of its messages; here that would
      // surprise more than help, so it is refused with what to do instead.
      if (f.id === INBOX) throw new CliError('INBOX cannot be renamed; create a folder and move the messages with an IMAP client');
      const after = await folderCall(() => store.rename(user, f.id, to));
      ctx.print(`renamed folder ${f.name} of ${user} to ${after.name}`, { user, from: f.name, ...after });
    });

  folder
    .command('delete')
    .argument('<user>')
    .argument('<name>')
    .option('--force', 'also delete the messages in it')
    .description('delete a folder; one that holds messages only with --force')
    .action(async (address: string, name: string, opts: { force?: boolean }) => {
      const user = await requireUser(ctx, address);
      const store = await folders();
      const f = await requireFolder(store, user, name);
      if (f.id === INBOX) throw new CliError('INBOX cannot be deleted; it is where mail arrives');
      const below = (await store.list(user)).filter((x) => x.name.startsWith(f.name + '/'));
      if (below.length) throw new CliError(`${f.name} has folders below it (${below.map((x) => x.name).join(', ')}); delete those first`);
      const status = await store.status(user, f.id);
      if (status.count && !opts.force)
        throw new CliError(`${f.name} holds ${status.count} messages (${formatSize(status.bytes)}); pass --force to delete them with it`);
      // Expunged first, page by page, as an IMAP EXPUNGE would: blob references drop (a blob goes
      // with its last one), the quota usage shrinks and open IMAP sessions see the expunges.
      let expunged = 0;
      for (;;) {
        const page = await store.messages(user, f.id, { limit: EXPUNGE_PAGE });
        if (!page.items.length) break;
        await folderCall(() =>
          store.expunge(
            user,
            f.id,
            page.items.map((m) => m.uid),
          ),
        );
        expunged += page.items.length;
        ctx.progress(`deleting ${f.name}: ${expunged}/${status.count} messages`);
      }
      await folderCall(() => store.delete(user, f.id));
      const note = f.specialUse ? `; it was the ${f.specialUse} folder, made again (empty) the next time a client or delivery needs one` : '';
      ctx.print(`deleted folder ${f.name} of ${user}${expunged ? ` and its ${expunged} messages` : ''}${note}`, {
        user,
        deleted: f.name,
        messages: expunged,
        ...(f.specialUse ? { specialUse: f.specialUse } : {}),
      });
    });

  for (const [verb, subscribed] of [
    ['subscribe', true],
    ['unsubscribe', false],
  ] as const) {
    folder
      .command(verb)
      .argument('<user>')
      .argument('<name>')
      .description(`${verb} a folder (what IMAP LSUB and LIST (SUBSCRIBED) show)`)
      .action(async (address: string, name: string) => {
        const user = await requireUser(ctx, address);
        const store = await folders();
        const f = await requireFolder(store, user, name);
        await folderCall(() => store.subscribe(user, f.id, subscribed));
        ctx.print(`${verb}d folder ${f.name} of ${user}`, { user, folder: f.name, subscribed });
      });
  }
}
