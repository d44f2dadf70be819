/**
 * The age of the oldest undelivered outbound message, from the table's listing of messages still
 * queued (outbound-store.ts, oldest first), published as one CloudWatch embedded metric format
 * line (CloudWatch user guide, "Embedded metric format specification"). SQS's own
 * ApproximateAgeOfOldestMessage leaves out messages received three times or more, and every
 * outbound retry is a receive, so mail that retries for hours falls out of it; this does not.
 * The monitoring stack's OutboundQueueAge alarm reads this metric.
 */
import type { Tables } from '../storage/ports.js';
import { QUEUE_LIST_PK } from './outbound-store.js';

/** Namespace, name, unit and dimension of the metric; the alarm uses the same. */
export const OUTBOUND_AGE_METRIC = { namespace: 'Tomlinson', name: 'outbound-oldest-age', unit: 'Seconds', dimension: 'Table' } as const;

/** Seconds since the oldest message still in the outbound queue was received; 0 when none is.
 * One query: the listing is sorted by receipt time and each entry carries it. */
export async function oldestOutboundAgeSeconds(tables: Tables, now: Date): Promise<number> {
  const { items } = await tables.query(QUEUE_LIST_PK, { limit: 1 });
  const at = Date.parse(String(items[0]?.receivedAt ?? ''));
  return Number.isFinite(at) ? Math.max(0, Math.round((now.getTime() - at) / 1000)) : 0;
}

/** The EMF line (JSON, no newline) reporting `ageSeconds` for the table `table`. */
export function outboundAgeLine(table: string, ageSeconds: number, now: Date): string {
  const m = OUTBOUND_AGE_METRIC;
  return JSON.stringify({
    _aws: { Timestamp: now.getTime(), CloudWatchMetrics: [{ Namespace: m.namespace, Dimensions: [[m.dimension]], Metrics: [{ Name: m.name, Unit: m.unit }] }] },
    [m.dimension]: table,
    [m.name]: ageSeconds,
  });
}

/** Measures and writes one EMF line to `write` (stdout, which Lambda and the awslogs driver send
 * to CloudWatch Logs). Never throws: a failed measurement is skipped, the next one reports. */
export async function reportOutboundAge(
  tables: Tables,
  table: string,
  now: Date,
  write: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
): Promise<void> {
  try {
    write(outboundAgeLine(table, await oldestOutboundAgeSeconds(tables, now), now));
  } catch {
    // The alarm keeps its state without data; the next batch or minute tries again.
  }
}
