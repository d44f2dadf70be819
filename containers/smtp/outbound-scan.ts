/**
 * The spam scan of what an authenticated user submits (issue 24, "Outbound"): a compromised
 * account or an infected client must not send spam under the domain's name. rspamd is told the
 * message is outbound by the `User` request header (its authenticated-user path: the checks meant
 * for strangers, such as SPF of the client address, greylisting and the client RBLs, are skipped
 * for an authenticated user, and its ratelimit module keys on the user).
 *
 * Only refusals matter here: reject -> 550 5.7.1 and nothing is sent; soft reject / greylist ->
 * 451 4.7.1. A message rspamd would merely mark (add header, rewrite subject) goes out unmarked,
 * with a log line for the operator: rewriting a user's own mail would break their DKIM signature
 * and tell the recipient nothing useful. A skipped scan (rspamd down or slow) sends the message.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../../core/log.js';
import { isSkipped, type ScanEnvelope, type SpamScanner } from '../../core/mail/spam.js';
import type { Metrics } from '../../core/metrics.js';
import { ReplyError } from './protocol/command.js';

/** Scans one submitted message; throws ReplyError when rspamd refuses it. */
export async function scanOutbound(
  scanner: SpamScanner,
  message: Buffer | Readable,
  env: ScanEnvelope & { user: string },
  deps: { log: Logger; metrics?: Metrics },
): Promise<void> {
  const r = await scanner.scan(message, env);
  const who = { id: env.queueId, user: env.user, client: env.ip };
  if (isSkipped(r)) {
    deps.log.warn({ ...who, reason: r.skipped, detail: r.detail }, `outbound spam scan skipped (${r.skipped}); message sent unscanned`);
    return;
  }
  if (r.action === 'reject') {
    deps.metrics?.smtpRefusals.inc({ reason: 'outbound_spam' });
    deps.log.warn({ ...who, from: env.from, score: r.score, symbols: r.symbols.slice(0, 10) }, `outbound message from ${env.user} rejected as spam`);
    throw new ReplyError(550, '5.7.1', `Message rejected as spam${r.message ? `: ${r.message}` : ''}; it was not sent`);
  }
  if (r.action === 'soft reject' || r.action === 'greylist') {
    deps.log.info({ ...who, score: r.score, action: r.action }, 'outbound spam check says try later; 451');
    throw new ReplyError(451, '4.7.1', r.message || 'Try again later');
  }
  if (r.action !== 'no action') {
    deps.log.warn(
      { ...who, from: env.from, score: r.score, action: r.action, symbols: r.symbols.slice(0, 10) },
      `outbound message from ${env.user} looks like spam; sent`,
    );
  }
}
