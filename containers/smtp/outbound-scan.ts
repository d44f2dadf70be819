/**
 * The spam scan of what an authenticated user submits on the submission ports (issue 24,
 * "Outbound"): the decision is core/mail/outbound-verdict.ts's, shared with JMAP's
 * EmailSubmission/set; here it becomes an SMTP reply. reject -> 550 5.7.1 and nothing is sent;
 * soft reject / greylist -> 451 4.7.1 (RFC 3463 X.7.1: refused by policy; the client retries a
 * 4xx); anything else, a skipped scan included, sends the message.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../../core/log.js';
import { outboundDecision } from '../../core/mail/outbound-verdict.js';
import type { ScanEnvelope, SpamScanner } from '../../core/mail/spam.js';
import type { Metrics } from '../../core/metrics.js';
import type { Tables } from '../../core/storage/ports.js';
import { ReplyError } from './protocol/command.js';

/** Scans one submitted message; throws ReplyError when rspamd refuses it. */
export async function scanOutbound(
  scanner: SpamScanner,
  message: Buffer | Readable,
  env: ScanEnvelope & { user: string },
  deps: { log: Logger; metrics?: Metrics; tables: Tables },
): Promise<void> {
  const d = await outboundDecision(scanner, message, env, deps);
  if (d.kind === 'reject') {
    deps.metrics?.smtpRefusals.inc({ reason: 'outbound_spam' });
    throw new ReplyError(550, '5.7.1', d.text);
  }
  if (d.kind === 'defer') throw new ReplyError(451, '4.7.1', d.text);
}
