/** `queue list|show|retry|hold|release|delete` (the outbound queue) and `dkim generate`. */
import type { Command } from 'commander';
import { generateDkimKey, type DkimAlgorithm } from '../../core/mail/dkim.js';
import { listQuotaWaits } from '../../core/mail/inbound.js';
import { OutboundQueueAdmin, QueueAdminError } from '../../core/mail/outbound-admin.js';
import { formatSize } from '../units.js';
import { CliError, type CliContext } from '../context.js';

async function admin(ctx: CliContext): Promise<OutboundQueueAdmin> {
  return new OutboundQueueAdmin(await ctx.storage());
}

/** Turns an operator refusal into a CLI error (exit 1, message on stderr). */
async function guard<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof QueueAdminError) throw new CliError(e.message);
    throw e;
  }
}

/** Adds the `queue` and `dkim` command groups. */
export function register(program: Command, ctx: CliContext): void {
  const queue = program
    .command('queue')
    .description('the outbound queue: messages waiting for remote delivery (list also shows inbound ones waiting for room in a full mailbox)');

  queue
    .command('list')
    .description('messages still queued, oldest first')
    .option('--limit <n>', 'at most this many', '1000')
    .action(async (opts: { limit: string }) => {
      const limit = Number(opts.limit) || 1000;
      const outbound = await (await admin(ctx)).list({ limit });
      // Inbound messages waiting for room in a full mailbox are queued too, on the inbound side.
      const waiting = (await listQuotaWaits((await ctx.storage()).tables, limit)).map((w) => ({
        id: w.id,
        receivedAt: w.receivedAt,
        from: w.from,
        size: w.size,
        rcpts: w.users.length,
        state: 'waiting for room',
        next: w.nextAttemptAt,
        lastReply: `mailbox full: ${w.users.join(', ')} (until ${w.giveUpAt})`,
      }));
      const rows = [
        ...outbound.map((r) => ({ ...r, state: r.held ? 'held' : `${r.pending} pending`, next: r.held ? '' : (r.nextAttemptAt ?? '') })),
        ...waiting,
      ]
        .sort((a, b) => a.receivedAt.localeCompare(b.receivedAt))
        .slice(0, limit);
      ctx.table(
        rows.map((r) => ({ ...r, size: formatSize(r.size) })),
        [
          { key: 'id', title: 'ID' },
          { key: 'receivedAt', title: 'RECEIVED' },
          { key: 'from', title: 'FROM' },
          { key: 'size', title: 'SIZE', align: 'right' },
          { key: 'rcpts', title: 'RCPTS', align: 'right' },
          { key: 'state', title: 'STATE' },
          { key: 'next', title: 'NEXT ATTEMPT' },
          { key: 'lastReply', title: 'LAST REPLY' },
        ],
        rows,
      );
    });

  queue
    .command('show')
    .argument('<id>', 'queue id (as in 250 2.0.0 <id>)')
    .description('one message and the state of each recipient')
    .action(async (id: string) => {
      const { message, recipients } = await guard(async () => (await admin(ctx)).show(id));
      if (ctx.json()) {
        ctx.print('', { message, recipients });
        return;
      }
      ctx.print(
        [
          `id:        ${message.id}`,
          `from:      <${message.from}>`,
          `received:  ${message.receivedAt}`,
          `size:      ${formatSize(message.size)}`,
          `status:    ${message.status}${message.held ? ' (held)' : ''}`,
          `dsn sent:  ${message.dsnSent ? 'yes' : 'no'}`,
        ].join('\n'),
        null,
      );
      ctx.table(
        recipients.map((r) => ({ ...r, next: r.nextAttemptAt ?? '' })),
        [
          { key: 'address', title: 'RECIPIENT' },
          { key: 'state', title: 'STATE' },
          { key: 'attempts', title: 'TRIES', align: 'right' },
          { key: 'next', title: 'NEXT ATTEMPT' },
          { key: 'remoteHost', title: 'HOST' },
          { key: 'lastReply', title: 'LAST REPLY' },
        ],
      );
    });

  queue
    .command('retry')
    .argument('<id>')
    .description('try the pending recipients again now')
    .action(async (id: string) => {
      const m = await guard(async () => (await admin(ctx)).retry(id));
      ctx.print(`message ${id} will be tried again now`, { id, retried: true, seq: m.seq });
    });

  queue
    .command('hold')
    .argument('<id>')
    .description('stop delivery attempts until release')
    .action(async (id: string) => {
      await guard(async () => (await admin(ctx)).hold(id));
      ctx.print(`message ${id} is held`, { id, held: true });
    });

  queue
    .command('release')
    .argument('<id>')
    .description('end a hold and try again now')
    .action(async (id: string) => {
      await guard(async () => (await admin(ctx)).release(id));
      ctx.print(`message ${id} released`, { id, held: false });
    });

  queue
    .command('delete')
    .argument('<id>')
    .description('remove a message from the queue (no bounce is sent)')
    .action(async (id: string) => {
      const r = await guard(async () => (await admin(ctx)).delete(id));
      ctx.print(`message ${id} deleted (${r.deleted.length} recipient(s) dropped)`, { id, ...r });
    });

  const dkim = program.command('dkim').description('DKIM signing keys of local domains');
  dkim
    .command('generate')
    .argument('<domain>', 'the signing domain (d=)')
    .option('--selector <name>', 'selector (s=)', 'tomlinson')
    .option('--algorithm <alg>', 'rsa-sha256 or ed25519-sha256', 'rsa-sha256')
    .option('--bits <n>', 'RSA key size', '2048')
    .option('--print-key', 'print the private key instead of storing it')
    .option('--force', 'make a key for a domain that is not local (mail from it is not sent from here)')
    .description('make a key for a local domain, store it where the outbound worker reads keys, and print the DNS TXT record')
    .action(async (domainArg: string, opts: { selector: string; algorithm: string; bits: string; printKey?: boolean; force?: boolean }) => {
      const domain = domainArg.toLowerCase();
      if (!/^[a-z0-9.-]+$/.test(domain) || domain.includes('..')) throw new CliError(`not a domain name: ${domainArg}`);
      // A key for a domain this server does not send for is almost always a typo.
      if (!opts.force && !(await (await ctx.accounts()).isLocalDomain(domain))) {
        throw new CliError(`${domain} is not a local domain (see \`tomlinson domain list\`); pass --force to make a key for it anyway`);
      }
      if (!/^[a-z0-9][a-z0-9._-]*$/i.test(opts.selector)) throw new CliError(`not a selector: ${opts.selector}`);
      if (opts.algorithm !== 'rsa-sha256' && opts.algorithm !== 'ed25519-sha256') throw new CliError('algorithm must be rsa-sha256 or ed25519-sha256');
      const bits = Number(opts.bits);
      if (!(bits >= 1024 && bits <= 4096)) throw new CliError('bits must be between 1024 and 4096');
      const key = generateDkimKey(domain, opts.selector, opts.algorithm as DkimAlgorithm, bits);
      let stored: string;
      const config = ctx.config();
      if (opts.printKey) {
        stored = 'printed';
      } else {
        // Where the outbound worker reads keys: the secret <prefix><domain>, or <dkimDir>/<domain>/.
        const { openSecrets, SecretExists } = await import('../../core/secrets.js');
        const secrets = openSecrets(config);
        try {
          stored = await secrets.addDkimKey(domain, { selector: opts.selector, privateKey: key.privateKey });
        } catch (e) {
          if (e instanceof SecretExists) throw new CliError(e.message);
          throw e;
        } finally {
          secrets.close();
        }
      }
      const data = {
        domain,
        selector: opts.selector,
        algorithm: opts.algorithm,
        name: key.name,
        txt: key.txt,
        stored,
        ...(opts.printKey ? { privateKey: key.privateKey } : {}),
      };
      ctx.print(
        () =>
          [
            ...(opts.printKey ? [key.privateKey.trimEnd(), ''] : [`key stored: ${stored}`, '']),
            'Publish this DNS record:',
            `${key.name}. IN TXT "${key.txt}"`,
          ].join('\n'),
        data,
      );
    });
}
