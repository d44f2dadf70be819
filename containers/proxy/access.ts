/**
 * Who may use the proxy and where it may go: client address ranges, Proxy-Authorization Basic
 * against the accounts (with a short positive cache, since each check costs a scrypt), and the
 * origin guard that keeps it from being a way into loopback, link-local, metadata or its own
 * addresses (issue 6: "not an open proxy").
 */
import { createHash } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/** Strips the IPv4-mapped prefix so that ::ffff:10.0.0.1 is checked as 10.0.0.1. */
export function plainAddress(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

function family(address: string): 'ipv4' | 'ipv6' {
  return isIP(address) === 6 ? 'ipv6' : 'ipv4';
}

/** Builds a BlockList from CIDR strings ("10.0.0.0/8", "::1/128", or a bare address). */
export function cidrList(ranges: readonly string[]): BlockList {
  const list = new BlockList();
  for (const r of ranges) {
    const [addr, bits] = r.trim().split('/');
    const fam = family(addr);
    if (!isIP(addr)) throw new Error(`not an address range: ${r}`);
    if (bits === undefined) list.addAddress(addr, fam);
    else list.addSubnet(addr, Number(bits), fam);
  }
  return list;
}

/** True when the client address falls in one of the allowed ranges. */
export function clientAllowed(allowed: BlockList, address: string | undefined): boolean {
  if (!address) return false;
  const a = plainAddress(address);
  return allowed.check(a, family(a));
}

/**
 * Origins the proxy refuses unless allowPrivateOrigins is set: loopback, unspecified, link-local
 * (which holds the cloud metadata services at 169.254.169.254 and 169.254.170.2), the other
 * providers' metadata addresses, multicast and broadcast.
 */
const FORBIDDEN_ORIGINS = [
  '127.0.0.0/8',
  '0.0.0.0/8',
  '169.254.0.0/16',
  '100.100.100.200/32',
  '192.0.0.192/32',
  '224.0.0.0/4',
  '255.255.255.255/32',
  '::1/128',
  '::/128',
  'fe80::/10',
  'fd00:ec2::254/128',
  'ff00::/8',
];

/** Decides whether an origin address may be contacted. */
export class OriginGuard {
  private readonly forbidden: BlockList;

  /** @param allowPrivate allow everything (tests and benchmarks whose origin is on 127.0.0.1). */
  constructor(readonly allowPrivate: boolean) {
    const own: string[] = [];
    for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) own.push(i.address.split('%')[0]);
    this.forbidden = cidrList([...FORBIDDEN_ORIGINS, ...own.filter((a) => isIP(a))]);
  }

  /** True when the proxy may connect to this IP address. */
  allows(address: string): boolean {
    if (this.allowPrivate) return true;
    const a = plainAddress(address);
    return !this.forbidden.check(a, family(a));
  }

  /**
   * A dns.lookup replacement for net.connect that resolves and then refuses forbidden addresses,
   * so a name cannot be pointed at the metadata service after the check (no DNS rebinding gap).
   */
  readonly lookup = (
    hostname: string,
    options: { all?: boolean; family?: number },
    callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    dnsLookup(hostname, { all: true, family: options.family ?? 0 }, (err, addresses) => {
      if (err) return callback(err, '');
      const ok = addresses.filter((a) => this.allows(a.address));
      if (ok.length === 0) {
        const e: NodeJS.ErrnoException = new Error(`origin address refused: ${hostname}`);
        e.code = 'EORIGINFORBIDDEN';
        return callback(e, '');
      }
      if (options.all) callback(null, ok);
      else callback(null, ok[0].address, ok[0].family);
    });
  };
}

/** Options of ProxyAuth. */
export interface ProxyAuthOptions {
  /** Checks a login and password; true when valid. */
  check: (login: string, password: string) => Promise<boolean>;
  /** How long a verified credential is remembered, in ms. @default 60000 */
  ttlMs?: number;
  /** Entries kept at most. @default 10000 */
  maxEntries?: number;
  now?: () => number;
}

/** Proxy-Authorization: Basic (RFC 9110 §11.7.1, RFC 7617) with a small positive cache. */
export class ProxyAuth {
  private readonly good = new Map<string, number>();
  private readonly ttl: number;
  private readonly max: number;
  private readonly now: () => number;

  constructor(private readonly options: ProxyAuthOptions) {
    this.ttl = options.ttlMs ?? 60_000;
    this.max = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /** True when the header carries valid Basic credentials. */
  async verify(header: string | undefined): Promise<boolean> {
    if (!header) return false;
    const m = /^basic[ \t]+([A-Za-z0-9+/=]+)[ \t]*$/i.exec(header);
    if (!m) return false;
    // Remember a digest of the header, never the credential itself.
    const key = createHash('sha256').update(m[1]).digest('base64');
    const until = this.good.get(key);
    if (until !== undefined && until > this.now()) return true;
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return false;
    const ok = await this.options.check(decoded.slice(0, colon), decoded.slice(colon + 1));
    if (ok) {
      if (this.good.size >= this.max) this.good.delete(this.good.keys().next().value!);
      this.good.set(key, this.now() + this.ttl);
    }
    return ok;
  }
}
