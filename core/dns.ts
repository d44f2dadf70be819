/**
 * The DNS resolver every mail component uses (SPF/DKIM/DMARC checks on the MX listener, MX lookups
 * for outbound delivery): node's c-ares Resolver with configurable servers, a short per-query
 * timeout and a hard deadline (a slow or dead server gives ETIMEOUT, never a stalled session), an
 * answer cache with negative caching, and coalescing of identical queries in flight.
 * Errors keep node's codes (ENOTFOUND = NXDOMAIN, ENODATA = no record of that type, ETIMEOUT,
 * ESERVFAIL, ECONNREFUSED, ...) because mailauth maps exactly those to none/temperror.
 */
import { Resolver } from 'node:dns/promises';
import type { Config } from './config.js';

/** An MX answer; a null MX (RFC 7505) has `exchange` '' (node's rendering of the root name). */
export interface MxRecord {
  exchange: string;
  priority: number;
}

/** The record types resolve() understands (what mailauth asks for). */
export type RrType = 'A' | 'AAAA' | 'MX' | 'TXT' | 'PTR' | 'CNAME' | 'NS';

/** A DNS failure; `code` is node's (ENOTFOUND, ENODATA, ETIMEOUT, ESERVFAIL, ...). */
export class DnsError extends Error {
  constructor(
    readonly code: string,
    readonly hostname: string,
    readonly rrtype: string,
  ) {
    super(`${rrtype} ${hostname}: ${code}`);
    this.name = 'DnsError';
  }
  /** True when the name or record positively does not exist (not worth retrying). */
  get permanent(): boolean {
    return this.code === 'ENOTFOUND' || this.code === 'ENODATA';
  }
}

/** Options for createDnsResolver. */
export interface DnsOptions {
  /** `ip` or `ip:port` (`[v6]:port`); empty: the system's resolvers. @default [] */
  servers?: string[];
  /** Per-attempt timeout in milliseconds. @default 2000 */
  timeoutMs?: number;
  /** Attempts per query. @default 2 */
  tries?: number;
  /** How long answers are cached, in seconds (A/AAAA use the record TTL when shorter). @default 300 */
  cacheSeconds?: number;
  /** How long NXDOMAIN / no-data answers are cached, in seconds. @default 60 */
  negativeCacheSeconds?: number;
  /** Cached names at most (oldest dropped first). @default 10000 */
  maxEntries?: number;
  /** Injectable clock (ms). @default Date.now */
  now?: () => number;
}

/** A caching resolver with the dns.promises shapes for the calls mail code makes. */
export interface DnsResolver {
  resolveMx(name: string): Promise<MxRecord[]>;
  resolveTxt(name: string): Promise<string[][]>;
  resolve4(name: string): Promise<string[]>;
  resolve6(name: string): Promise<string[]>;
  resolvePtr(name: string): Promise<string[]>;
  /** dns.promises.resolve(name, type) shape, as mailauth's `resolver` option expects. */
  resolve(name: string, rrtype: RrType | string): Promise<unknown>;
  /** Drops every cached answer. */
  clear(): void;
}

interface Entry {
  expires: number;
  value?: unknown;
  error?: DnsError;
}

/** Builds a resolver from `config.smtp.dnsServers` and `config.smtp.dnsTimeoutMs`. */
export function dnsResolverFromConfig(config: Config): DnsResolver {
  return createDnsResolver({ servers: config.smtp.dnsServers, timeoutMs: config.smtp.dnsTimeoutMs });
}

/** Creates a caching resolver (see DnsOptions for defaults). */
export function createDnsResolver(options: DnsOptions = {}): DnsResolver {
  const timeoutMs = options.timeoutMs ?? 2000;
  const tries = options.tries ?? 2;
  const cacheMs = (options.cacheSeconds ?? 300) * 1000;
  const negativeMs = (options.negativeCacheSeconds ?? 60) * 1000;
  const maxEntries = options.maxEntries ?? 10000;
  const now = options.now ?? Date.now;
  const resolver = new Resolver({ timeout: timeoutMs, tries });
  if (options.servers && options.servers.length > 0) resolver.setServers(options.servers);
  // c-ares gives up after tries x timeout; the extra deadline guards against anything that hangs.
  const deadlineMs = timeoutMs * tries + 250;

  const cache = new Map<string, Entry>();
  const inflight = new Map<string, Promise<unknown>>();

  const lookup = async (rrtype: RrType, rawName: string): Promise<unknown> => {
    const name = rawName.replace(/\.$/, '').toLowerCase();
    const key = `${rrtype} ${name}`;
    const hit = cache.get(key);
    if (hit && hit.expires > now()) {
      if (hit.error) throw hit.error;
      return hit.value;
    }
    if (hit) cache.delete(key);
    const pending = inflight.get(key);
    if (pending) return pending;
    const p = query(rrtype, name)
      .then(
        ({ value, ttlMs }) => {
          remember(key, { expires: now() + Math.min(cacheMs, ttlMs ?? cacheMs), value });
          return value;
        },
        (e: unknown) => {
          const err = toDnsError(e, name, rrtype);
          if (err.permanent) remember(key, { expires: now() + negativeMs, error: err });
          throw err;
        },
      )
      .finally(() => inflight.delete(key));
    inflight.set(key, p);
    return p;
  };

  const remember = (key: string, entry: Entry): void => {
    if (cache.size >= maxEntries) {
      const oldest = cache.keys().next().value;
      if (oldest !== undefined) cache.delete(oldest);
    }
    cache.set(key, entry);
  };

  const query = async (rrtype: RrType, name: string): Promise<{ value: unknown; ttlMs?: number }> => {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DnsError('ETIMEOUT', name, rrtype)), deadlineMs);
      timer.unref();
    });
    try {
      return await Promise.race([ask(rrtype, name), deadline]);
    } finally {
      clearTimeout(timer);
    }
  };

  const ask = async (rrtype: RrType, name: string): Promise<{ value: unknown; ttlMs?: number }> => {
    switch (rrtype) {
      case 'A':
      case 'AAAA': {
        const records = rrtype === 'A' ? await resolver.resolve4(name, { ttl: true }) : await resolver.resolve6(name, { ttl: true });
        const ttl = Math.min(...records.map((r) => r.ttl));
        return { value: records.map((r) => r.address), ttlMs: Number.isFinite(ttl) ? ttl * 1000 : undefined };
      }
      case 'MX':
        return { value: await resolver.resolveMx(name) };
      case 'TXT':
        return { value: await resolver.resolveTxt(name) };
      case 'PTR':
        return { value: await resolver.resolvePtr(name) };
      case 'CNAME':
        return { value: await resolver.resolveCname(name) };
      case 'NS':
        return { value: await resolver.resolveNs(name) };
    }
  };

  return {
    resolveMx: (name) => lookup('MX', name) as Promise<MxRecord[]>,
    resolveTxt: (name) => lookup('TXT', name) as Promise<string[][]>,
    resolve4: (name) => lookup('A', name) as Promise<string[]>,
    resolve6: (name) => lookup('AAAA', name) as Promise<string[]>,
    resolvePtr: (name) => lookup('PTR', name) as Promise<string[]>,
    resolve: (name, rrtype) => {
      const t = String(rrtype).toUpperCase();
      if (!['A', 'AAAA', 'MX', 'TXT', 'PTR', 'CNAME', 'NS'].includes(t)) return Promise.reject(new DnsError('ENOTIMP', name, t));
      return lookup(t as RrType, name);
    },
    clear: () => cache.clear(),
  };
}

function toDnsError(e: unknown, name: string, rrtype: string): DnsError {
  if (e instanceof DnsError) return e;
  const code = (e as { code?: unknown })?.code;
  return new DnsError(typeof code === 'string' ? code : 'EUNKNOWN', name, rrtype);
}
