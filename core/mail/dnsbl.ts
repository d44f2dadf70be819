/**
 * DNS blocklists (DNSxLs, RFC 5782) asked about an SMTP client when it connects to the MX
 * listener: for each configured zone, an A query for the client's address in the zone's form
 * (IPv4: octets reversed, §2.1; IPv6: nibbles reversed, §2.4), and when listed a TXT query for
 * the list's reason (§2.2). The queries go through the project's own resolver (core/dns.ts, the
 * one SPF uses), so its servers, timeouts and answer cache apply.
 *
 * Only zones the operator names are asked (none by default: every query tells a third party who
 * connects). A zone may name the return codes that count, as Postfix's `reject_rbl_client
 * zone=d.d.d.d` does (parseDnsblEntry): a list such as Spamhaus ZEN answers different codes for
 * different sublists, and an operator may want only some of them; a listing with another code lets
 * the client in (logged at debug). A lookup that fails (timeout, SERVFAIL, refused, the list's
 * own error codes) never refuses a client: it is logged and counted, and the client is let in
 * (fail open).
 */
import { isIP } from 'node:net';
import type { DnsResolver } from '../dns.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';

/** A client found on a list. */
export interface DnsblListing {
  /** The zone that lists it, as configured. */
  zone: string;
  /** The A record's value, e.g. 127.0.0.2 (the list's return code). */
  code: string;
  /** The TXT record's text (the list's reason, often a URL), made safe for a reply line. */
  reason?: string;
}

export interface DnsblOptions {
  /** Zones to ask, each with an optional code filter (parseDnsblEntry), e.g.
   * ['zen.spamhaus.org=127.0.0.[2..11]', 'bl.spamcop.net']. */
  zones: readonly string[];
  resolver: DnsResolver;
  /** Longest wait for all zones together; past it the client is let in. @default 3000 */
  timeoutMs?: number;
  /** How long a client's result is kept. @default 300 */
  cacheSeconds?: number;
  /** How long a failed lookup is remembered (so a dead list does not slow every connection). @default 30 */
  failureCacheSeconds?: number;
  /** Cached clients at most (oldest dropped first). @default 10000 */
  maxEntries?: number;
  log?: Logger;
  metrics?: Metrics;
  /** @default Date.now */
  now?: () => number;
}

/** The name to query for `address` in `zone` (RFC 5782 §2.1, §2.4); undefined if not an IP. */
export function dnsblName(address: string, zone: string): string | undefined {
  const z = zone.replace(/^\.+|\.+$/g, '');
  const kind = isIP(address);
  if (kind === 4) return `${address.split('.').reverse().join('.')}.${z}`;
  if (kind !== 6) return undefined;
  return `${expandIpv6(address).split('').reverse().join('.')}.${z}`;
}

/** The 32 hex digits of an IPv6 address, without colons (an embedded IPv4 tail included).
 * Written here: node has no expander, and no address library is a dependency for ten lines. */
function expandIpv6(address: string): string {
  let a = address.toLowerCase().replace(/%.*$/, '');
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(a);
  if (v4) {
    const [b0, b1, b2, b3] = v4.slice(1).map(Number);
    a = a.slice(0, v4.index) + `${((b0 << 8) | b1).toString(16)}:${((b2 << 8) | b3).toString(16)}`;
  }
  const [head, tail] = a.includes('::') ? a.split('::') : [a, undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.map((g) => g.padStart(4, '0')).join('');
}

/** The return codes that count for a zone: for each of the 4 octets, the ranges it may be in. */
export type DnsblCodeFilter = [number, number][][];

/**
 * One `smtp.dnsbl` entry: `zone` (any listing counts) or `zone=d.d.d.d`, Postfix's
 * `reject_rbl_client` syntax (postconf(5)): each d is a number, or inside `[]` one or more
 * `;`-separated numbers or `number..number` ranges. `zen.spamhaus.org=127.0.0.[2..11]` counts
 * 127.0.0.2 to 127.0.0.11; `bl.example=127.0.0.[2;4;10..11]` those four.
 */
export function parseDnsblEntry(entry: string): { zone: string; filter?: DnsblCodeFilter } | { error: string } {
  const [zonePart, pattern, extra] = entry.trim().split('=');
  const zone = zonePart
    .trim()
    .replace(/^\.+|\.+$/g, '')
    .toLowerCase();
  if (!/^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(zone)) {
    return { error: `expected a DNS zone name such as zen.spamhaus.org, got ${JSON.stringify(zonePart)}` };
  }
  if (pattern === undefined) return { zone };
  // The 4 octets: dots inside [] are range dots, not separators.
  const octets = extra === undefined ? (pattern.trim().match(/\[[^\]]*\]|[^.[\]]+/g) ?? []) : [];
  if (octets.join('.') !== pattern.trim()) octets.length = 0;
  const filter: DnsblCodeFilter = [];
  for (const o of octets) {
    const items = /^\[(.+)\]$/.exec(o)?.[1].split(';') ?? [o];
    const ranges: [number, number][] = [];
    for (const item of items) {
      const m = /^(\d{1,3})(?:\.\.(\d{1,3}))?$/.exec(item.trim());
      const lo = Number(m?.[1]);
      const hi = m?.[2] === undefined ? lo : Number(m[2]);
      if (!m || lo > 255 || hi > 255 || lo > hi) break;
      ranges.push([lo, hi]);
    }
    if (ranges.length !== items.length) break;
    filter.push(ranges);
  }
  if (filter.length !== 4 || octets.length !== 4) {
    return { error: `expected return codes such as ${zone}=127.0.0.2 or ${zone}=127.0.0.[2..11], got ${JSON.stringify(entry.trim())}` };
  }
  return { zone, filter };
}

function matches(filter: DnsblCodeFilter, code: string): boolean {
  const octets = code.split('.').map(Number);
  return octets.length === 4 && filter.every((ranges, i) => ranges.some(([lo, hi]) => octets[i] >= lo && octets[i] <= hi));
}

/**
 * What an A answer means (RFC 5782 §2.1, §5: listed entries are 127.0.0.0/8, never 127.0.0.1).
 * 127.255.255.0/24 is what Spamhaus answers for an error (a public resolver, over quota): not a
 * listing. Anything else outside 127/8 is not a DNSBL answer (a resolver that rewrites NXDOMAIN).
 * With filters, only a code that one of them takes is a listing (the first such code); listed
 * with other codes only is `outside`.
 */
function meaning(codes: string[], filters: DnsblCodeFilter[] | undefined): { listed: string } | { outside: string[] } | { error: string } | undefined {
  const listings = codes.filter((c) => c.startsWith('127.') && c !== '127.0.0.1' && !c.startsWith('127.255.255.'));
  if (listings.length) {
    const listed = filters ? listings.find((c) => filters.some((f) => matches(f, c))) : listings[0];
    return listed ? { listed } : { outside: listings };
  }
  if (codes.length) return { error: `answer ${codes.join(',')} is not a listing` };
  return undefined;
}

type Cached = { expires: number; listing?: DnsblListing };

/** Asks the configured lists about client addresses, with a small cache per address. */
export class DnsblChecker {
  /** The zones in configured order, each with its code filters (undefined: any code counts). */
  private readonly zones: Map<string, DnsblCodeFilter[] | undefined>;
  private readonly timeoutMs: number;
  private readonly cacheMs: number;
  private readonly failureMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly cache = new Map<string, Cached>();
  private readonly inflight = new Map<string, Promise<DnsblListing | undefined>>();

  constructor(private readonly o: DnsblOptions) {
    // A zone named twice with filters takes a code either takes; named once without, any code.
    this.zones = new Map();
    for (const entry of o.zones) {
      if (!entry.trim()) continue;
      const p = parseDnsblEntry(entry);
      if ('error' in p) throw new Error(`smtp.dnsbl: ${p.error}`);
      const had = this.zones.get(p.zone);
      const any = (this.zones.has(p.zone) && had === undefined) || !p.filter;
      this.zones.set(p.zone, any ? undefined : [...(had ?? []), p.filter!]);
    }
    this.timeoutMs = o.timeoutMs ?? 3000;
    this.cacheMs = (o.cacheSeconds ?? 300) * 1000;
    this.failureMs = (o.failureCacheSeconds ?? 30) * 1000;
    this.maxEntries = o.maxEntries ?? 10000;
    this.now = o.now ?? Date.now;
  }

  /** True when at least one zone is configured. */
  get active(): boolean {
    return this.zones.size > 0;
  }

  /** The first zone (in configured order) that lists `address`, or undefined. Never throws. */
  async check(address: string): Promise<DnsblListing | undefined> {
    if (!this.active || !isIP(address)) return undefined;
    const hit = this.cache.get(address);
    if (hit && hit.expires > this.now()) return hit.listing;
    if (hit) this.cache.delete(address);
    let p = this.inflight.get(address);
    if (!p) {
      p = this.lookup(address).finally(() => this.inflight.delete(address));
      this.inflight.set(address, p);
    }
    return p;
  }

  private async lookup(address: string): Promise<DnsblListing | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.timeoutMs);
      timer.unref();
    });
    let failed = false;
    try {
      // All zones at once; the answer is the first listing in configured order.
      const results = await Promise.all(
        [...this.zones.keys()].map((zone) =>
          Promise.race([this.ask(address, zone), deadline]).then((r) => {
            if (r === 'timeout' || 'error' in r) {
              failed = true;
              const error = r === 'timeout' ? `no answer within ${this.timeoutMs} ms` : r.error;
              this.o.metrics?.dnsblLookups.inc({ result: 'error' });
              this.o.log?.warn({ client: address, zone, error }, `DNSBL ${zone} lookup failed (${error}); client let in`);
              return undefined;
            }
            this.o.metrics?.dnsblLookups.inc({ result: r.listing ? 'listed' : 'outside' in r ? 'filtered' : 'clean' });
            return r.listing;
          }),
        ),
      );
      const listing = results.find((r) => r !== undefined);
      this.remember(address, { expires: this.now() + (failed && !listing ? this.failureMs : this.cacheMs), listing });
      return listing;
    } finally {
      clearTimeout(timer);
    }
  }

  private async ask(address: string, zone: string): Promise<{ listing?: DnsblListing; outside?: true } | { error: string }> {
    const name = dnsblName(address, zone)!;
    let codes: string[];
    try {
      codes = await this.o.resolver.resolve4(name);
    } catch (e) {
      const code = (e as { code?: string }).code;
      // NXDOMAIN (or no A record): not listed (RFC 5782 §2.1).
      if (code === 'ENOTFOUND' || code === 'ENODATA') return {};
      return { error: code ?? String(e) };
    }
    const m = meaning(codes, this.zones.get(zone));
    if (!m) return {};
    if ('error' in m) return m;
    if ('outside' in m) {
      this.o.log?.debug(
        { client: address, zone, codes: m.outside },
        `listed by ${zone} with ${m.outside.join(',')}, outside the codes configured for it; client let in`,
      );
      return { outside: true };
    }
    let reason: string | undefined;
    try {
      reason = replyText((await this.o.resolver.resolveTxt(name)).map((chunks) => chunks.join('')).join(' '));
    } catch {
      // The TXT record is optional (§2.2); the reply names the list without it.
    }
    return { listing: { zone, code: m.listed, ...(reason ? { reason } : {}) } };
  }

  private remember(address: string, entry: Cached): void {
    if (this.cache.size >= this.maxEntries) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(address, entry);
  }
}

/** Text from a DNS record made safe for one SMTP reply line: printable ASCII, bounded. */
function replyText(s: string): string {
  return s
    .replace(/[^\x20-\x7e]/g, '?')
    .trim()
    .slice(0, 200);
}

/**
 * The refusal text for a listed client, in the form Postfix uses so that senders' postmasters
 * recognise it: `Service unavailable; client [192.0.2.1] blocked using zen.example; <reason>`.
 */
export function dnsblRefusalText(address: string, l: DnsblListing): string {
  return `Service unavailable; client [${address}] blocked using ${l.zone}${l.reason ? `; ${l.reason}` : ''}`;
}
