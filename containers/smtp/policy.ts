/**
 * The application's answers to the SMTP engine's questions (SmtpHooks): which clients are served
 * (DNS blocklists at connect), who may log in, who may send as what and how much (the hourly
 * limit), which recipients are accepted where, and where message content goes.
 */
import type { Accounts, Resolution } from '../../core/accounts/accounts.js';
import type { DsnRecipient } from '../../core/mail/jobs.js';
import { dnsblRefusalText, type DnsblChecker } from '../../core/mail/dnsbl.js';
import { releaseRecipients, reserveRecipients, sentThisHour } from '../../core/mail/send-limit.js';
import { countSpamLater } from '../../core/mail/spam-stats.js';
import type { MailboxStore } from '../../core/mailbox/store.js';
import { AuthThrottle, authFailureText } from '../auth-throttle.js';
import { ReplyError } from './protocol/command.js';
import type { MessageSink, SessionInfo, SmtpHooks, Transaction } from './session.js';
import { StorageSink, type SpoolDeps } from './spool.js';

/** Policy settings of the hooks besides the spool's. */
export interface PolicyDeps {
  /** The failed-login throttle's base delay (see containers/auth-throttle.ts). @default 1000 */
  authFailureDelayMs?: number;
  /** DNS blocklists asked about MX clients at connect; absent or without zones: none. */
  dnsbl?: DnsblChecker;
  /** Clients never looked up in a blocklist (smtp.trustedNetworks, loopback by default). */
  dnsblExempt?: (address: string) => boolean;
  /** Recipients per authenticated user per hour (smtp.maxRecipientsPerUserHour); 0 or absent: no limit. */
  maxRecipientsPerUserHour?: number;
}

/** Builds the hooks over the account model, the mailbox counters and the spool. */
export function createHooks(accounts: Accounts, mailboxes: MailboxStore, spool: SpoolDeps & PolicyDeps): SmtpHooks {
  const throttle = new AuthThrottle({ baseDelayMs: spool.authFailureDelayMs ?? 1000 });
  const limit = spool.maxRecipientsPerUserHour ?? 0;
  const dnsbl = spool.dnsbl?.active ? spool.dnsbl : undefined;
  return {
    // RFC 5321 §3.1: a listed client is refused with 554 instead of the greeting. Only the MX
    // listener asks; submission clients authenticate instead, and trusted networks (loopback by
    // default, smtp.trustedNetworks) are our own (as Postfix's permit_mynetworks comes before
    // reject_rbl_client).
    ...(dnsbl
      ? {
          async connect(s: SessionInfo): Promise<void> {
            if (s.listener !== 'mx' || spool.dnsblExempt?.(s.clientAddress)) return;
            const listing = await dnsbl.check(s.clientAddress);
            if (!listing) return;
            spool.metrics?.smtpRefusals.inc({ reason: 'dnsbl' });
            countSpamLater(spool.storage.tables, 'dnsblRefused', spool.log);
            spool.log.info(
              { client: s.clientAddress, zone: listing.zone, code: listing.code, reason: listing.reason },
              `client refused: listed by ${listing.zone}`,
            );
            throw new ReplyError(554, '5.7.1', dnsblRefusalText(s.clientAddress, listing));
          },
        }
      : {}),

    async authenticate(login: string, password: string): Promise<string | undefined> {
      const user = await accounts.authenticate(login, password);
      return user?.address;
    },

    async authFailed(login: string, s: SessionInfo): Promise<void> {
      const listener = s.implicitTls ? 'submissions' : s.listener;
      spool.metrics?.authFailures.inc({ listener });
      // The user name goes only in the message, after the address: a field before it could carry a
      // crafted "auth failed: client=<victim>" that a log matcher would find first.
      spool.log.warn({ client: s.clientAddress, listener }, authFailureText(listener, s.clientAddress, login));
      await throttle.fail(s.clientAddress, login);
    },

    authSucceeded(login: string, s: SessionInfo): void {
      throttle.succeed(s.clientAddress, login);
    },

    async mailFrom(address: string, _tx: Transaction, s: SessionInfo): Promise<void> {
      if (!s.authUser) return;
      // Submission (RFC 6409 §6.1): the envelope sender must be the user's own address or alias.
      if (!address || !(await accounts.canSendAs(s.authUser, address))) {
        throw new ReplyError(553, '5.7.1', `Sender address not owned by ${s.authUser}`);
      }
    },

    async rcptTo(rcpt: DsnRecipient, tx: Transaction, s: SessionInfo): Promise<void> {
      let r = await accounts.resolve(rcpt.address);
      // RFC 5321 §4.5.1: "Postmaster" (no domain) and postmaster@ every local domain MUST be
      // accepted; both go to the postmaster of the primary local domain when they name no mailbox.
      const bare = !rcpt.address.includes('@');
      if (bare || (r.kind === 'unknown' && /^postmaster@/i.test(rcpt.address))) {
        const target = await postmasterAddress(accounts, spool.hostname);
        if (!target) throw new ReplyError(550, '5.1.1', 'No postmaster mailbox configured here');
        if (!bare) rcpt.orcpt ??= `rfc822;${rcpt.address}`;
        rcpt.address = target.address;
        r = target.resolution;
      }
      if (s.authUser && limit > 0) await checkHourlyLimit(tx, s, s.authUser);
      if (r.kind === 'remote') {
        if (s.authUser) return noteRoom(tx, Infinity);
        throw new ReplyError(550, '5.7.1', 'Relaying denied');
      }
      if (r.kind === 'unknown') throw new ReplyError(550, '5.1.1', 'No such user here');
      if (r.users.length === 0 || r.remote.length > 0) return noteRoom(tx, Infinity);
      // RFC 3463 X.2.2: a full mailbox is a temporary refusal (452 4.2.2), decided before DATA.
      const incoming = tx.declaredSize ?? 0;
      let room = 0;
      for (const login of r.users) room = Math.max(room, await roomOf(accounts, mailboxes, login));
      if (room <= incoming) throw new ReplyError(452, '4.2.2', 'Mailbox full');
      noteRoom(tx, room);
    },

    openMessage(tx: Transaction, s: SessionInfo): MessageSink {
      const sink = withQuotaCheck(new StorageSink(spool, tx, s), tx);
      const user = s.authUser;
      if (!user || limit <= 0) return sink;
      // The recipients are counted atomically once the whole message is in, and given back when
      // it is then not accepted (a spam reject, a storage failure), so a refusal costs nothing.
      return {
        id: sink.id,
        write: (chunk) => sink.write(chunk),
        abort: (reason) => sink.abort(reason),
        async finish(stats) {
          const at = new Date();
          const n = tx.rcpts.length;
          const r = await reserveRecipients(spool.storage.tables, user, n, limit, at);
          if (!r.ok) throw overLimit(s, user, r.count, n);
          try {
            await sink.finish(stats);
          } catch (e) {
            await releaseRecipients(spool.storage.tables, user, n, at).catch((err: unknown) => spool.log.warn({ err, user }, 'send counter not given back'));
            throw e;
          }
        },
      };
    },
  };

  /** RCPT: refuses a recipient that would take the user past the hour's limit (RFC 5321 §4.2.2:
   * a 4xx per recipient, which the client retries later; RFC 3463 X.7.1: refused by policy). The
   * hour's count is read once per transaction; finish() counts atomically. */
  async function checkHourlyLimit(tx: Transaction, s: SessionInfo, user: string): Promise<void> {
    let used = usedByTx.get(tx);
    if (used === undefined) {
      used = await sentThisHour(spool.storage.tables, user);
      usedByTx.set(tx, used);
    }
    if (used + tx.rcpts.length + 1 > limit) throw overLimit(s, user, used, tx.rcpts.length + 1);
  }

  function overLimit(s: SessionInfo, user: string, used: number, asked: number): ReplyError {
    spool.metrics?.smtpRefusals.inc({ reason: 'rate_limit' });
    spool.log.warn(
      { user, client: s.clientAddress, listener: s.listener, sentThisHour: used, asked, limit },
      `sending limit reached: ${user} has sent to ${used} recipients this hour (limit ${limit}); 451`,
    );
    return new ReplyError(451, '4.7.1', `Sending limit reached: ${user} may send to ${limit} recipients per hour; try again later`);
  }
}

/** The hour's count read at the transaction's first RCPT. */
const usedByTx = new WeakMap<Transaction, number>();

/** Wraps the sink with the quota check that RCPT prepared (roomByTx). */
function withQuotaCheck(sink: MessageSink, tx: Transaction): MessageSink {
  const rooms = roomByTx.get(tx);
  if (!rooms || rooms.some((x) => x === Infinity)) return sink;
  // Every recipient is a mailbox with a quota: a message that fits none of them is refused
  // for now (452 4.2.2, the sender retries) rather than accepted to wait for room.
  return {
    id: sink.id,
    write: (chunk) => sink.write(chunk),
    abort: (reason) => sink.abort(reason),
    async finish(stats) {
      if (rooms.every((x) => x < stats.bytes)) throw new ReplyError(452, '4.2.2', 'Mailbox full');
      return sink.finish(stats);
    },
  };
}

/** Per transaction, the most room any mailbox of each accepted recipient has (Infinity: no quota
 * or not only local mailboxes). */
const roomByTx = new WeakMap<Transaction, number[]>();

function noteRoom(tx: Transaction, room: number): void {
  const rooms = roomByTx.get(tx);
  if (rooms) rooms.push(room);
  else roomByTx.set(tx, [room]);
}

/** Bytes the mailbox can still take; Infinity without a quota. */
async function roomOf(accounts: Accounts, mailboxes: MailboxStore, login: string): Promise<number> {
  const user = await accounts.getUser(login);
  if (!user || !user.quotaBytes) return Infinity;
  // Every folder counts against the quota, as delivery checks it.
  const used = await mailboxes.usedBytes(login).catch(() => 0);
  return user.quotaBytes - used;
}

/**
 * The postmaster that a bare "Postmaster" names: postmaster@ the hostname's domain or one of its
 * parents when local, else the first local domain (sorted) whose postmaster leads to a mailbox.
 */
async function postmasterAddress(accounts: Accounts, hostname: string): Promise<{ address: string; resolution: Resolution } | undefined> {
  const labels = hostname.toLowerCase().split('.');
  const preferred = labels.slice(0, -1).map((_, i) => labels.slice(i).join('.'));
  const domains = [...preferred, ...(await accounts.listDomains()).map((d) => d.domain)];
  for (const d of domains) {
    const address = `postmaster@${d}`;
    const r = await accounts.resolve(address);
    if (r.kind === 'local') return { address, resolution: r };
  }
  return undefined;
}
