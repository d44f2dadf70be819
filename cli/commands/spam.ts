/**
 * `spam stats|show|off|on|junk-to-inbox|allow|block`: the daily spam counters
 * (core/mail/spam-stats.ts) and the per-user and per-domain filing settings
 * (core/mail/spam-prefs.ts).
 */
import type { Command } from 'commander';
import { ownPrefs, setPrefs, type SpamPrefs } from '../../core/mail/spam-prefs.js';
import { SPAM_EVENTS, spamStats, type SpamEvent } from '../../core/mail/spam-stats.js';
import { CliError, type CliContext } from '../context.js';

function describe(who: string, p: SpamPrefs): string {
  const lines = [`spam settings for ${who}:`];
  if (!who.startsWith('@')) {
    lines.push(`  filtering:     ${p.off ? 'off (junk goes to INBOX; moves teach nothing)' : 'on'}`);
    lines.push(`  junk-to-inbox: ${p.junkToInbox ? 'on (for POP3: junk goes to INBOX with its X-Spam-* header fields)' : 'off'}`);
  }
  lines.push(`  allow:         ${p.allow.join(', ') || '(none)'}`);
  lines.push(`  block:         ${p.block.join(', ') || '(none)'}`);
  return lines.join('\n');
}

/** Column titles of `spam stats`, short enough for a terminal. */
const STATS_TITLES: Record<SpamEvent, string> = {
  scanned: 'SCANNED',
  rejected: 'REJECTED',
  deferred: 'DEFERRED',
  junked: 'JUNKED',
  skipped: 'SKIPPED',
  learnedSpam: 'LEARNED_SPAM',
  learnedHam: 'LEARNED_HAM',
  learnSkipped: 'LEARN_SKIPPED',
  outboundScanned: 'OUT_SCANNED',
  outboundRejected: 'OUT_REJECTED',
  outboundDeferred: 'OUT_DEFERRED',
  outboundSkipped: 'OUT_SKIPPED',
  dnsblRefused: 'DNSBL_REFUSED',
};

/** The counters of the second table: what users send, and connect-time refusals. */
const SENT_EVENTS: readonly SpamEvent[] = ['outboundScanned', 'outboundRejected', 'outboundDeferred', 'outboundSkipped', 'dnsblRefused'];

/** A sender pattern: an address, a domain, `@domain`, `*.domain`, or `*` wildcards; no spaces. */
function pattern(p: string): string {
  const v = p.trim().toLowerCase();
  if (!v || /\s/.test(v) || v.length > 254) throw new CliError(`not a sender pattern: ${p}`);
  return v;
}

/** Adds the `spam` command group. */
export function register(program: Command, ctx: CliContext): void {
  const spam = program.command('spam').description('spam filtering (rspamd): counters, per-user settings, allow and block lists');

  const tables = async () => (await ctx.storage()).tables;
  const existingUser = async (user: string): Promise<string> => {
    const u = await (await ctx.accounts()).getUser(user);
    if (!u) throw new CliError(`no such user: ${user}`);
    return u.address;
  };
  /** A user's address, or `@domain` for a domain (given as `example.com` or `@example.com`). */
  const target = async (who: string): Promise<string> => {
    if (who.includes('@') && !who.startsWith('@')) return existingUser(who);
    const domain = who.replace(/^@/, '').toLowerCase();
    if (!(await (await ctx.accounts()).getDomain(domain))) throw new CliError(`no such domain: ${domain}`);
    return `@${domain}`;
  };

  spam
    .command('stats')
    .option('--days <n>', 'days shown', '14')
    .description(
      'per day: MX mail scanned, rejected, deferred (451), junked, skipped scans, learned spam and ham, lessons skipped; ' +
        'mail users sent (SMTP or JMAP) scanned, rejected, deferred, skipped; MX clients refused by a DNS blocklist',
    )
    .action(async (o: { days: string }) => {
      const days = Number(o.days);
      if (!Number.isInteger(days) || days < 1 || days > 400) throw new CliError('--days: a whole number from 1 to 400');
      const rows = await spamStats(await tables(), days);
      if (ctx.json() || !rows.length) return ctx.table(rows, [], rows);
      // Two tables, so that a line stays readable on a terminal: received mail, then sent mail
      // and the connect-time refusals.
      const columns = (events: readonly SpamEvent[]) => [
        { key: 'day', title: 'DAY' },
        ...events.map((e) => ({ key: e, title: STATS_TITLES[e], align: 'right' as const })),
      ];
      ctx.print('Received on the MX listener, and learning from what users move:', null);
      ctx.table(rows, columns(SPAM_EVENTS.filter((e) => !SENT_EVENTS.includes(e))));
      ctx.print('\nSent by users (submission ports and JMAP), and MX clients refused at connect:', null);
      ctx.table(rows, columns(SENT_EVENTS));
    });

  spam
    .command('show')
    .argument('<address-or-domain>')
    .description('show the spam settings of a user or a domain')
    .action(async (who: string) => {
      const t = await target(who);
      const p = await ownPrefs(await tables(), t);
      ctx.print(describe(t, p), { target: t, ...p });
    });

  for (const [name, off] of [
    ['off', true],
    ['on', false],
  ] as const) {
    spam
      .command(name)
      .argument('<address>')
      .description(off ? 'turn spam filing off for a user: their junk goes to INBOX with its X-Spam-* header fields' : 'turn spam filing back on for a user')
      .action(async (user: string) => {
        const address = await existingUser(user);
        const p = await setPrefs(await tables(), address, { off });
        ctx.print(describe(address, p), { target: address, ...p });
      });
  }

  spam
    .command('junk-to-inbox')
    .argument('<on|off>')
    .argument('<address>')
    .description('for POP3 users, who see only INBOX: file their junk into INBOX (with the X-Spam-* header fields)')
    .action(async (state: string, user: string) => {
      if (state !== 'on' && state !== 'off') throw new CliError('junk-to-inbox: on or off');
      const address = await existingUser(user);
      const p = await setPrefs(await tables(), address, { junkToInbox: state === 'on' });
      ctx.print(describe(address, p), { target: address, ...p });
    });

  for (const list of ['allow', 'block'] as const) {
    spam
      .command(list)
      .argument('<address-or-domain>', 'a user, or a domain (for all its users)')
      .argument('<sender>', 'envelope sender: user@example.net, example.net, *.example.net, or with * wildcards')
      .option('--remove', 'take the pattern off the list')
      .description(
        list === 'allow' ? 'file mail from these senders into INBOX whatever the spam verdict' : 'file mail from these senders into Junk whatever the verdict',
      )
      .action(async (who: string, sender: string, o: { remove?: boolean }) => {
        const t = await target(who);
        const p = pattern(sender);
        const tb = await tables();
        const now = await ownPrefs(tb, t);
        const next = o.remove ? now[list].filter((x) => x !== p) : [...new Set([...now[list], p])];
        if (next.length > 1000) throw new CliError(`at most 1000 patterns on a ${list} list`);
        const saved = await setPrefs(tb, t, { [list]: next });
        ctx.print(describe(t, saved), { target: t, ...saved });
      });
  }
}
