/**
 * DNS blocklists (DNSxLs, RFC 5782) asked about an SMTP client when it connects to the MX
 * listener: for each configured zone, an A query for the client's address in the zone's form
 * (IPv4: octets reversed, §2.1; IPv6: nibbles reversed, §2.4), and when listed a TXT query for
 * the list's reason (§2.2). The queries go through the project's own resolver (core/dns.ts, the
 * one SPF uses), so its servers, timeouts and answer cache apply.
 *
 * Only zones the operator names are asked (none by default: every query tells a third party who
 * connects). A lookup that fails (timeout, SERVFAIL, refused, the list's own error codes) never
 * refuses a client: it is logged and counted, and the client is let in (fail open).
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
  /** Zones to ask, e.g. ['zen.spamhaus.org']. */
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

/**
 * What an A answer means (RFC 5782 §2.1, §5: listed entries are 127.0.0.0/8, never 127.0.0.1).
 * 127.255.255.0/24 is what Spamhaus answers for an error (a public resolver, over quota): not a
 * listing. Anything else outside 127/8 is not a DNSBL answer (a resolver that rewrites NXDOMAIN).
 */
function meaning(codes: string[]): { listed: string } | { error: string } | undefined {
  const listed = codes.find((c) => c.startsWith('127.') && c !== '127.0.0.1' && !c.startsWith('127.255.255.'));
  if (listed) return { listed };
  if (codes.length) return { error: `answer ${codes.join(',')} is not a listing` };
  return undefined;
}

type Cached = { expires: number; listing?: DnsblListing };

/** Asks the configured lists about client addresses, with a small cache per address. */
export class DnsblChecker {
  private readonly zones: string[];
  private readonly timeoutMs: number;
  private readonly cacheMs: number;
  private readonly failureMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly cache = new Map<string, Cached>();
  private readonly inflight = new Map<string, Promise<DnsblListing | undefined>>();

  constructor(private readonly o: DnsblOptions) {
    this.zones = o.zones.map((z) => z.trim().replace(/^\.+|\.+$/g, '')).filter(Boolean);
    this.timeoutMs = o.timeoutMs ?? 3000;
    this.cacheMs = (o.cacheSeconds ?? 300) * 1000;
    this.failureMs = (o.failureCacheSeconds ?? 30) * 1000;
    this.maxEntries = o.maxEntries ?? 10000;
    this.now = o.now ?? Date.now;
  }

  /** True when at least one zone is configured. */
  get active(): boolean {
    return this.zones.length > 0;
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
        this.zones.map((zone) =>
          Promise.race([this.ask(address, zone), deadline]).then((r) => {
            if (r === 'timeout' || 'error' in r) {
              failed = true;
              const error = r === 'timeout' ? `no answer within ${this.timeoutMs} ms` : r.error;
              this.o.metrics?.dnsblLookups.inc({ result: 'error' });
              this.o.log?.warn({ client: address, zone, error }, `DNSBL ${zone} lookup failed (${error}); client let in`);
              return undefined;
            }
            this.o.metrics?.dnsblLookups.inc({ result: r.listing ? 'listed' : 'clean' });
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

  private async ask(address: string, zone: string): Promise<{ listing?: DnsblListing } | { error: string }> {
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
    const m = meaning(codes);
    if (!m) return {};
    if ('error' in m) return m;
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
