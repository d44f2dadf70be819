/**
 * JMAP push over EventSource (RFC 8620 §7.3): a `text/event-stream` that sends a StateChange
 * (§7.1) whenever the user's mailbox state moves, and a `ping` every N seconds when asked. The
 * state of the mail types is the user's change-log position (core/mailbox/changes.ts), one string
 * for Mailbox, Email and Thread: any change may touch each. EmailDelivery (RFC 8621 §1.5) is the
 * MODSEQ of the last change that brought new mail (an append that is not a copy or move), read
 * from the log's new entries only when a stream asks for it. A push stream is woken at once by a
 * change made in this process (core/mailbox/notify.ts) and otherwise finds changes made elsewhere
 * (the AWS form: a Lambda delivers) by reading the change log every `pollMs`, as IMAP IDLE does.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ChangeLog } from '../../../core/mailbox/changes.js';
import { onMailboxChange } from '../../../core/mailbox/notify.js';
import type { Logger } from '../../../core/log.js';
import { coalescedWake } from '../../wake.js';

/** The data types whose state push reports, all read from the change log. */
export const PUSH_TYPES = ['Mailbox', 'Email', 'Thread', 'EmailDelivery'] as const;

/** RFC 8621 §1.5: a type with no methods whose state changes when new mail arrives, and not on
 * flag changes, moves or expunges, so battery-bound clients can wake for new mail only. */
const EMAIL_DELIVERY = 'EmailDelivery';

/** The state string of the change-log types for `user` (method modules return the same in /get). */
export async function mailState(changes: ChangeLog, user: string): Promise<string> {
  return String(await changes.position(user));
}

/**
 * The MODSEQ of the last change in (`after`, `upTo`] that added new Emails (an append entry not
 * marked `copied`), or undefined when none did. The log's items past `after` are read, which
 * position() has just read too, so this costs one more query of the same few items. A log whose
 * `after` has expired cannot say: then `upTo`, as though mail came (a spurious wake-up, never a
 * missed one).
 */
export async function lastDelivery(changes: ChangeLog, user: string, after: number, upTo: number): Promise<number | undefined> {
  let found: number | undefined;
  let at = after;
  while (at < upTo) {
    const page = await changes.since(user, at);
    if (page.tooOld) return upTo;
    for (const c of page.changes) {
      if (c.modseq > upTo) return found;
      if (c.entries.some((e) => e.kind === 'append' && !e.copied)) found = c.modseq;
    }
    if (!page.more || page.modseq === at) break;
    at = page.modseq;
  }
  return found;
}

/** The query of an eventsource URL (§7.3); a string saying what is wrong otherwise. */
export function parsePushQuery(params: URLSearchParams): { types: Set<string> | 'all'; closeAfterState: boolean; pingSeconds: number } | string {
  const typesText = params.get('types') ?? '*';
  const closeafter = params.get('closeafter') ?? 'no';
  const pingText = params.get('ping') ?? '0';
  if (closeafter !== 'state' && closeafter !== 'no') return 'closeafter must be "state" or "no"';
  if (!/^[0-9]{1,9}$/.test(pingText)) return 'ping must be a whole number of seconds';
  const types = typesText === '*' ? 'all' : new Set(typesText.split(',').filter(Boolean));
  // §7.3: the server may bound the interval; at least 1 s so a client cannot make it spin, at
  // most 5 minutes so proxies and load balancers keep the connection.
  const ping = Number(pingText);
  return { types, closeAfterState: closeafter === 'state', pingSeconds: ping === 0 ? 0 : Math.min(300, Math.max(1, ping)) };
}

/** What a push stream needs. */
export interface PushStream {
  user: string;
  accountId: string;
  changes: ChangeLog;
  pollMs: number;
  log: Logger;
  types: Set<string> | 'all';
  closeAfterState: boolean;
  pingSeconds: number;
}

/** Serves one EventSource connection until the client goes or `stop` is called; returns `stop`. */
export async function servePush(req: IncomingMessage, res: ServerResponse, p: PushStream): Promise<() => void> {
  const wanted = PUSH_TYPES.filter((t) => p.types === 'all' || p.types.has(t));
  const logTypes = wanted.filter((t) => t !== EMAIL_DELIVERY);
  const wantsDelivery = wanted.includes(EMAIL_DELIVERY);
  let last = await mailState(p.changes, p.user);
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-store',
    'x-accel-buffering': 'no',
  });
  // A comment line, so that the headers and a first byte leave now (proxies, client open events).
  res.write(': tomlinson push\n\n');
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    unsubscribe();
    clearInterval(poll);
    if (ping) clearInterval(ping);
    res.end();
  };
  const check = async (): Promise<void> => {
    const now = await mailState(p.changes, p.user);
    if (now === last || stopped) return;
    const delivered = wantsDelivery ? await lastDelivery(p.changes, p.user, Number(last), Number(now)) : undefined;
    if (stopped) return;
    last = now;
    // §7.1: a StateChange names only the types whose state changed.
    const changed: Record<string, string> = Object.fromEntries(logTypes.map((t) => [t, now]));
    if (delivered !== undefined) changed[EMAIL_DELIVERY] = String(delivered);
    if (!Object.keys(changed).length) return;
    res.write(`event: state\ndata: ${JSON.stringify({ '@type': 'StateChange', changed: { [p.accountId]: changed } })}\n\n`);
    if (p.closeAfterState) stop();
  };
  const wake = coalescedWake(check, { active: () => !stopped, onError: (e) => p.log.warn({ err: e.message }, 'push state check failed') });
  const unsubscribe = onMailboxChange(p.user, wake);
  const poll = setInterval(wake, p.pollMs);
  poll.unref();
  const ping =
    p.pingSeconds > 0
      ? setInterval(() => {
          if (!stopped) res.write(`event: ping\ndata: ${JSON.stringify({ interval: p.pingSeconds })}\n\n`);
        }, p.pingSeconds * 1000)
      : undefined;
  ping?.unref();
  req.on('close', stop);
  res.on('close', stop);
  return stop;
}
