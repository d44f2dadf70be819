/**
 * What to do with a message an authenticated user sends, from rspamd's scan of it (issue 24,
 * "Outbound"): one decision shared by the submission ports (containers/smtp/outbound-scan.ts,
 * which turns it into an SMTP reply) and JMAP's EmailSubmission/set (containers/web/jmap, which
 * turns it into a SetError), so that both refuse, defer, log and count alike.
 *
 * rspamd is told the message is outbound by the `User` request header (its authenticated-user
 * path: the checks meant for strangers, such as SPF of the client address, greylisting and the
 * client RBLs, are skipped, and its ratelimit module keys on the user).
 *
 * Only refusals matter: reject -> `reject`, nothing is sent; soft reject / greylist -> `defer`,
 * the sender may retry. A message rspamd would merely mark (add header, rewrite subject) goes out
 * unmarked, with a log line for the operator: rewriting a user's own mail would break their DKIM
 * signature and tell the recipient nothing useful. A skipped scan (rspamd down or slow) sends the
 * message, logged and counted.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../log.js';
import type { Tables } from '../storage/ports.js';
import { isSkipped, type ScanEnvelope, type SpamResult, type SpamScanner, type SpamVerdict } from './spam.js';
import { countSpamLater } from './spam-stats.js';

/** How the log line of a skipped outbound scan starts; the AWS alarm's metric filter matches it too (infra/stacks/monitoring.ts). */
export const OUTBOUND_SPAM_SKIPPED_MSG = 'outbound spam scan skipped';

/** The outcome of an outbound scan: send, or refuse for good (`reject`) or for now (`defer`). */
export type OutboundDecision =
  | { kind: 'send'; result: SpamResult }
  | {
      kind: 'reject' | 'defer';
      verdict: SpamVerdict;
      /** The refusal text for the user (SMTP reply text, JMAP SetError description). */
      text: string;
    };

/** Scans one message an authenticated user sends and decides; never throws for rspamd's sake. */
export async function outboundDecision(
  scanner: SpamScanner,
  message: Buffer | Readable,
  env: ScanEnvelope & { user: string },
  deps: { log: Logger; tables: Tables },
): Promise<OutboundDecision> {
  const r = await scanner.scan(message, env);
  const who = { id: env.queueId, user: env.user, client: env.ip };
  // The daily counters of `spam stats` (core/mail/spam-stats.ts), written off the caller's path.
  const count = (event: 'outboundScanned' | 'outboundSkipped' | 'outboundRejected' | 'outboundDeferred') => countSpamLater(deps.tables, event, deps.log);
  if (isSkipped(r)) {
    count('outboundSkipped');
    deps.log.warn({ ...who, reason: r.skipped, detail: r.detail }, `${OUTBOUND_SPAM_SKIPPED_MSG} (${r.skipped}); message sent unscanned`);
    return { kind: 'send', result: r };
  }
  count('outboundScanned');
  if (r.action === 'reject') {
    count('outboundRejected');
    deps.log.warn({ ...who, from: env.from, score: r.score, symbols: r.symbols.slice(0, 10) }, `outbound message from ${env.user} rejected as spam`);
    return { kind: 'reject', verdict: r, text: `Message rejected as spam${r.message ? `: ${r.message}` : ''}; it was not sent` };
  }
  if (r.action === 'soft reject' || r.action === 'greylist') {
    count('outboundDeferred');
    deps.log.info({ ...who, score: r.score, action: r.action }, 'outbound spam check says try later');
    return { kind: 'defer', verdict: r, text: r.message || 'Try again later' };
  }
  if (r.action !== 'no action') {
    deps.log.warn(
      { ...who, from: env.from, score: r.score, action: r.action, symbols: r.symbols.slice(0, 10) },
      `outbound message from ${env.user} looks like spam; sent`,
    );
  }
  return { kind: 'send', result: r };
}
