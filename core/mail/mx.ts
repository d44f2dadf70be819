/**
 * Where to deliver mail for a domain: MX resolution as RFC 5321 §5.1 describes it, with the null
 * MX of RFC 7505. DNS goes through a small interface so that the resolver (servers, timeout) is
 * chosen at the edge and tests point it at their own DNS server on 127.0.0.1.
 */
import type { DnsResolver, MxRecord } from '../dns.js';

export type { MxRecord };

/** The DNS lookups MX routing needs: a subset of core/dns.ts's DnsResolver. Failures reject with
 * an error carrying node's `code` (ENOTFOUND = NXDOMAIN, ENODATA = no records, others temporary). */
export type MxDns = Pick<DnsResolver, 'resolveMx' | 'resolve4' | 'resolve6'>;

/** Why a lookup failed: the name does not exist, it has no records of the type, or DNS failed. */
export type DnsFailure = 'nxdomain' | 'nodata' | 'temporary';

/** A DNS lookup failure in the terms routing needs. */
export class DnsLookupError extends Error {
  constructor(
    readonly kind: DnsFailure,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DnsLookupError';
  }
}

function classify(e: unknown, what: string): DnsLookupError {
  const code = (e as { code?: string }).code;
  if (code === 'ENOTFOUND') return new DnsLookupError('nxdomain', `${what}: no such domain`, { cause: e });
  if (code === 'ENODATA') return new DnsLookupError('nodata', `${what}: no records`, { cause: e });
  return new DnsLookupError('temporary', `${what}: DNS failure ${code ?? String(e)}`, { cause: e });
}

async function lookup<T>(fn: () => Promise<T>, what: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw classify(e, what);
  }
}

/** A host to try, in order, with its addresses. */
export interface MxHost {
  host: string;
  priority: number;
  /** Addresses (IPv4 first); empty when the host's lookup failed (see `error`). */
  addresses: string[];
  error?: string;
}

/** The routing answer for a domain. */
export type MxRoute =
  | { kind: 'hosts'; hosts: MxHost[]; implicit: boolean }
  /** Permanent: the domain does not exist, publishes a null MX, or has no usable host. */
  | { kind: 'permanent'; status: string; reason: string }
  /** Temporary: DNS failed; try again later. */
  | { kind: 'temporary'; status: string; reason: string };

/** Fisher-Yates shuffle with an injectable random source. */
function shuffle<T>(xs: T[], random: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * Orders MX records: RFC 5321 §5.1 "the sender-SMTP MUST randomize them [records of equal
 * preference] to spread the load across multiple mail exchangers", lowest preference first.
 */
export function orderMx(records: MxRecord[], random: () => number = Math.random): MxRecord[] {
  const byPref = new Map<number, MxRecord[]>();
  for (const r of records) byPref.set(r.priority, [...(byPref.get(r.priority) ?? []), r]);
  return [...byPref.keys()].sort((a, b) => a - b).flatMap((p) => shuffle(byPref.get(p)!, random));
}

async function addressesOf(dns: MxDns, host: string): Promise<{ addresses: string[]; error?: DnsLookupError }> {
  const [v4, v6] = await Promise.allSettled([lookup(() => dns.resolve4(host), `A ${host}`), lookup(() => dns.resolve6(host), `AAAA ${host}`)]);
  const addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
  if (addresses.length) return { addresses };
  const errs = [v4, v6].filter((x): x is PromiseRejectedResult => x.status === 'rejected').map((x) => x.reason as DnsLookupError);
  const temporary = errs.find((e) => e.kind === 'temporary');
  const nx = errs.find((e) => e.kind === 'nxdomain');
  return { addresses, error: temporary ?? nx ?? new DnsLookupError('nodata', `${host}: no A or AAAA records`) };
}

/** Resolves the hosts to try for a domain, per RFC 5321 §5.1 and RFC 7505. */
export async function resolveMxRoute(dns: MxDns, domain: string, options: { random?: () => number } = {}): Promise<MxRoute> {
  let records: MxRecord[];
  try {
    records = await lookup(() => dns.resolveMx(domain), `MX ${domain}`);
  } catch (e) {
    const err = e as DnsLookupError;
    if (err.kind === 'nxdomain') return { kind: 'permanent', status: '5.1.2', reason: `domain ${domain} does not exist (NXDOMAIN)` };
    if (err.kind === 'temporary') return { kind: 'temporary', status: '4.4.3', reason: `MX lookup for ${domain} failed: ${err.message}` };
    records = [];
  }
  // RFC 7505 §3: a single MX with an empty exchange ("." ) and preference 0 means the domain
  // accepts no mail; "SMTP clients ... MUST NOT attempt delivery" and return 556/5.1.10.
  if (records.some((r) => r.exchange === '' || r.exchange === '.')) {
    return { kind: 'permanent', status: '5.1.10', reason: `domain ${domain} accepts no mail (null MX, RFC 7505)` };
  }
  let implicit = false;
  let ordered: MxRecord[];
  if (records.length === 0) {
    // RFC 5321 §5.1: "If an empty list of MXs is returned, the address is treated as if it was
    // associated with an implicit MX RR, with a preference of 0, pointing to that host."
    implicit = true;
    ordered = [{ exchange: domain, priority: 0 }];
  } else {
    ordered = orderMx(records, options.random);
  }
  const hosts: MxHost[] = [];
  let anyTemporary = false;
  for (const r of ordered) {
    const host = r.exchange.replace(/\.$/, '').toLowerCase();
    const { addresses, error } = await addressesOf(dns, host);
    if (error?.kind === 'temporary') anyTemporary = true;
    hosts.push({ host, priority: r.priority, addresses, error: error?.message });
  }
  if (!hosts.some((h) => h.addresses.length)) {
    if (anyTemporary) return { kind: 'temporary', status: '4.4.3', reason: `address lookup failed for every MX host of ${domain}` };
    return implicit
      ? { kind: 'permanent', status: '5.1.2', reason: `domain ${domain} has no MX and no address records` }
      : { kind: 'permanent', status: '5.4.4', reason: `no MX host of ${domain} has an address` };
  }
  return { kind: 'hosts', hosts, implicit };
}
