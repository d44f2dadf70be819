/**
 * The application's answers to the SMTP engine's questions (SmtpHooks): who may log in, who may
 * send as what, which recipients are accepted where, and where message content goes.
 */
import type { Accounts } from '../../core/accounts/accounts.js';
import type { DsnRecipient } from '../../core/mail/jobs.js';
import type { MailboxStore } from '../../core/mailbox/store.js';
import { AuthThrottle, authFailureText } from '../auth-throttle.js';
import { ReplyError } from './protocol/command.js';
import type { MessageSink, SessionInfo, SmtpHooks, Transaction } from './session.js';
import { StorageSink, type SpoolDeps } from './spool.js';

/** Builds the hooks over the account model, the mailbox counters and the spool. `authFailureDelayMs`
 * is the failed-login throttle's base delay (see containers/auth-throttle.ts). */
export function createHooks(accounts: Accounts, mailboxes: MailboxStore, spool: SpoolDeps & { authFailureDelayMs?: number }): SmtpHooks {
  const throttle = new AuthThrottle({ baseDelayMs: spool.authFailureDelayMs ?? 1000 });
  return {
    async authenticate(login: string, password: string): Promise<string | undefined> {
      const user = await accounts.authenticate(login, password);
      return user?.address;
    },

    async authFailed(login: string, s: SessionInfo): Promise<void> {
      const listener = s.implicitTls ? 'submissions' : s.listener;
      spool.metrics?.authFailures.inc({ listener });
      spool.log.warn({ client: s.clientAddress, user: login, listener }, authFailureText(listener, s.clientAddress, login));
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
      const r = await accounts.resolve(rcpt.address);
      if (r.kind === 'remote') {
        if (s.authUser) return;
        throw new ReplyError(550, '5.7.1', 'Relaying denied');
      }
      if (r.kind === 'unknown') throw new ReplyError(550, '5.1.1', 'No such user here');
      if (r.users.length === 0 || r.remote.length > 0) return;
      // RFC 3463 X.2.2: a full mailbox is a temporary refusal (452 4.2.2), decided before DATA.
      const incoming = tx.declaredSize ?? 0;
      let full = 0;
      for (const login of r.users) if (await isFull(accounts, mailboxes, login, incoming)) full++;
      if (full === r.users.length) throw new ReplyError(452, '4.2.2', 'Mailbox full');
    },

    openMessage(tx: Transaction, s: SessionInfo): MessageSink {
      return new StorageSink(spool, tx, s);
    },
  };
}

async function isFull(accounts: Accounts, mailboxes: MailboxStore, login: string, incoming: number): Promise<boolean> {
  const user = await accounts.getUser(login);
  if (!user || !user.quotaBytes) return false;
  const meta = await mailboxes.meta(login).catch(() => undefined);
  if (!meta) return false;
  return meta.bytes + incoming >= user.quotaBytes;
}
