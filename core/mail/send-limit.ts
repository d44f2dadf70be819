/**
 * The per-user hourly sending limit (`smtp.maxRecipientsPerUserHour`): a compromised account must
 * not burn the domain's reputation. It counts recipients, not messages: each recipient is one
 * delivery (one outbound item, one chance of a spam complaint), and a message to 100 recipients
 * does as much harm as 100 messages to one; counting messages would let a spammer send
 * limit x smtp.maxRecipients deliveries an hour.
 *
 * The counter is one item per user and clock hour (UTC), `SENDLIMIT#<user>` / `H#<YYYY-MM-DDTHH>`,
 * changed only by atomic adds through the Tables port, so every listener process (on AWS, every
 * task) shares it; it expires an hour after its hour ends. A fixed window: up to twice the limit
 * can go out across an hour boundary, which is the price of one write per message.
 */
import type { Tables } from '../storage/ports.js';

export const SEND_LIMIT_PK = 'SENDLIMIT#';

const keyOf = (user: string, now: Date) => ({ pk: `${SEND_LIMIT_PK}${user.toLowerCase()}`, sk: `H#${now.toISOString().slice(0, 13)}` });

/** Epoch seconds at which this hour's counter may go: an hour after the hour ends. */
const expiry = (now: Date) => Math.floor(now.getTime() / 3600_000 + 2) * 3600;

/** Recipients the user has sent to in the current hour. */
export async function sentThisHour(tables: Tables, user: string, now = new Date()): Promise<number> {
  const it = await tables.get(keyOf(user, now));
  return Number(it?.count ?? 0);
}

/**
 * Counts `n` more recipients for the user in this hour, atomically, if they fit under `limit`;
 * returns whether they did and the hour's count. When they do not fit the add is undone, so a
 * refused message never uses up the allowance (at the boundary, a concurrent message may see the
 * count briefly high and be refused too; its sender retries the 4xx).
 */
export async function reserveRecipients(tables: Tables, user: string, n: number, limit: number, now = new Date()): Promise<{ ok: boolean; count: number }> {
  const key = keyOf(user, now);
  const it = await tables.update(key, { add: { count: n }, ttl: expiry(now) });
  const count = Number(it.count ?? 0);
  if (count <= limit) return { ok: true, count };
  await tables.update(key, { add: { count: -n }, ttl: expiry(now) });
  return { ok: false, count: count - n };
}

/** Gives back recipients counted for a message that was then not accepted (storage failed). */
export async function releaseRecipients(tables: Tables, user: string, n: number, now: Date): Promise<void> {
  await tables.update(keyOf(user, now), { add: { count: -n }, ttl: expiry(now) });
}
