/**
 * Spam counters per day (`npx tomlinson spam stats`), kept in Tables so that they survive restarts
 * and add up over every listener and worker (on AWS, several tasks and Lambdas): one item per UTC
 * day, `SPAMSTATS` / `YYYY-MM-DD`, each event an atomic add. The Prometheus metrics (spamScans...)
 * are per process and reset on restart; these are the operator's history.
 */
import type { Logger } from '../log.js';
import type { Tables } from '../storage/ports.js';

export const SPAM_STATS_PK = 'SPAMSTATS';
/** Days of history kept. */
const KEEP_DAYS = 400;

/** What is counted, by the code path that does it: MX scans (containers/smtp/spool.ts), filing
 * (the inbound worker), learning (the learn worker), scans of what users send over SMTP or JMAP
 * (./outbound-verdict.ts), and MX clients refused at connect by a DNS blocklist. */
export const SPAM_EVENTS = [
  'scanned',
  'rejected',
  'deferred',
  'junked',
  'skipped',
  'learnedSpam',
  'learnedHam',
  'learnSkipped',
  'outboundScanned',
  'outboundRejected',
  'outboundDeferred',
  'outboundSkipped',
  'dnsblRefused',
] as const;
export type SpamEvent = (typeof SPAM_EVENTS)[number];

export type DayStats = { day: string } & Record<SpamEvent, number>;

/** Adds `n` to today's counter of `event`. */
export async function countSpam(tables: Tables, event: SpamEvent, n = 1, now = new Date()): Promise<void> {
  if (n <= 0) return;
  const day = now.toISOString().slice(0, 10);
  await tables.update({ pk: SPAM_STATS_PK, sk: day }, { add: { [event]: n }, ttl: Math.floor(now.getTime() / 1000) + KEEP_DAYS * 86400 });
}

/** countSpam off the caller's path (the SMTP reply): a failure is logged, never thrown. */
export function countSpamLater(tables: Tables, event: SpamEvent, log: Logger): void {
  countSpam(tables, event).catch((e: unknown) => log.warn({ err: e, event }, 'spam counter not updated'));
}

/** The last `days` days that have counts, newest first. */
export async function spamStats(tables: Tables, days = 30, now = new Date()): Promise<DayStats[]> {
  const from = new Date(now.getTime() - (days - 1) * 86400_000).toISOString().slice(0, 10);
  const page = await tables.query(SPAM_STATS_PK, { range: { gte: from }, reverse: true, limit: days });
  return page.items.map((it) => ({ day: it.sk, ...Object.fromEntries(SPAM_EVENTS.map((e) => [e, Number(it[e] ?? 0)])) }) as DayStats);
}
