/**
 * Who may use the proxy and where it may go: client address ranges, Proxy-Authorization Basic
 * against the accounts (with a short positive cache, since each check costs a scrypt), and the
 * origin guard that keeps it from being a way into private networks, metadata services or its own
 * addresses (issue 6: "not an open proxy"; issue 18: every non-public address).
 */
import { createHash } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { createDnsResolver, type DnsError } from '../../core/dns.js';

/** IPv4 ranges of the IANA special-purpose address registry (RFC 6890 and its successors): none is a public origin. */
const SPECIAL_V4: readonly (readonly [string, string])[] = [
  ['0.0.0.0/8', '"this network" (RFC 791)'],
  ['10.0.0.0/8', 'private-use (RFC 1918)'],
  ['100.64.0.0/10', 'shared address space (RFC 6598)'],
  ['127.0.0.0/8', 'loopback (RFC 1122)'],
  ['169.254.0.0/16', 'link-local (RFC 3927)'],
  ['172.16.0.0/12', 'private-use (RFC 1918)'],
  ['192.0.0.0/24', 'IETF protocol assignments (RFC 6890)'],
  ['192.0.2.0/24', 'documentation (RFC 5737)'],
  ['192.88.99.0/24', '6to4 relay anycast (RFC 7526)'],
  ['192.168.0.0/16', 'private-use (RFC 1918)'],
  ['198.18.0.0/15', 'benchmarking (RFC 2544)'],
  ['198.51.100.0/24', 'documentation (RFC 5737)'],
  ['203.0.113.0/24', 'documentation (RFC 5737)'],
  ['224.0.0.0/4', 'multicast (RFC 5771)'],
  ['240.0.0.0/4', 'reserved, with limited broadcast (RFC 1112, RFC 919)'],
];

/** IPv6 ranges of the same registry; IPv4-mapped, NAT64 and 6to4 addresses are judged by the IPv4 address they carry. */
const SPECIAL_V6: readonly (readonly [string, string])[] = [
  ['::/128', 'unspecified (RFC 4291)'],
  ['::1/128', 'loopback (RFC 4291)'],
  ['64:ff9b:1::/48', 'local-use NAT64 (RFC 8215)'],
  ['100::/64', 'discard-only (RFC 6666)'],
  ['2001::/23', 'IETF protocol assignments (RFC 2928)'],
  ['2001:db8::/32', 'documentation (RFC 3849)'],
  ['3fff::/20', 'documentation (RFC 9637)'],
  ['5f00::/16', 'segment routing (RFC 9602)'],
  ['fc00::/7', 'unique-local (RFC 4193)'],
  ['fe80::/10', 'link-local (RFC 4291)'],
  ['fec0::/10', 'site-local (RFC 3879)'],
  ['ff00::/8', 'multicast (RFC 4291)'],
];

/** Cloud metadata services (AWS, ECS, Alibaba, Oracle): refused even inside an allowed range. */
const METADATA = ['169.254.169.254', '169.254.170.2', '169.254.169.253', '169.254.169.123', 'fd00:ec2::254', '100.100.100.200', '192.0.0.192'];

/** Where the operator allows an internal origin (named in every refusal). */
export const ALLOW_SETTING = 'proxy.allowedOrigins (TOMLINSON_PROXY_ALLOWED_ORIGINS)';

/** An address range as bytes and a prefix length, with what it is. */
interface Range {
  bytes: Uint8Array;
  bits: number;
  what: string;
}

/**
 * The bytes of an IP address literal (4 for IPv4, 16 for IPv6; brackets and a zone index are
 * dropped), or undefined when it is not one. IPv4 here is the dotted-quad of node's isIP: URL hosts
 * in other spellings (0x7f.1, 2130706433, 127.1) are normalised by the WHATWG parser before this.
 */
export function addressBytes(literal: string): Uint8Array | undefined {
  let a = literal.startsWith('[') && literal.endsWith(']') ? literal.slice(1, -1) : literal;
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  const kind = isIP(a);
  if (kind === 4) return Uint8Array.from(a.split('.').map(Number));
  if (kind !== 6) return undefined;
  if (a.includes('.')) {
    // A trailing dotted quad (::ffff:10.0.0.1) becomes its two 16-bit groups.
    const at = a.lastIndexOf(':') + 1;
    const q = a.slice(at).split('.').map(Number);
    a = `${a.slice(0, at)}${((q[0] << 8) | q[1]).toString(16)}:${((q[2] << 8) | q[3]).toString(16)}`;
  }
  const groups = (s: string): number[] => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const gap = a.indexOf('::');
  const head = groups(gap < 0 ? a : a.slice(0, gap));
  const tail = gap < 0 ? [] : groups(a.slice(gap + 2));
  const out = gap < 0 ? head : [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  out.forEach((w, i) => {
    bytes[i * 2] = w >> 8;
    bytes[i * 2 + 1] = w & 0xff;
  });
  return bytes;
}

/** Parses "10.0.0.0/8", "fd00::/8" or a bare address; throws on anything else. */
function parseRange(cidr: string, what = cidr): Range {
  const [addr, bitsText, extra] = cidr.trim().split('/');
  const bytes = addressBytes(addr);
  const bits = bitsText === undefined ? (bytes?.length ?? 0) * 8 : /^\d{1,3}$/.test(bitsText) ? Number(bitsText) : -1;
  if (!bytes || extra !== undefined || bits < 0 || bits > bytes.length * 8) throw new Error(`not an address range: ${cidr}`);
  return { bytes, bits, what };
}

function inRange(b: Uint8Array, r: Range): boolean {
  if (b.length !== r.bytes.length) return false;
  let bits = r.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((b[i] & mask) !== (r.bytes[i] & mask)) return false;
  }
  return true;
}

const V4 = SPECIAL_V4.map(([c, w]) => parseRange(c, w));
const V6 = SPECIAL_V6.map(([c, w]) => parseRange(c, w));
const MAPPED = parseRange('::ffff:0:0/96');
const NAT64 = parseRange('64:ff9b::/96');
const SIX_TO_FOUR = parseRange('2002::/16');
const GLOBAL_UNICAST = parseRange('2000::/3');

/**
 * Why an address is not a public origin (the special-purpose range it falls in), or undefined when
 * it is one. IPv6 outside 2000::/3 is not global unicast (RFC 4291 §2.4) whatever the registry says.
 */
export function specialPurpose(b: Uint8Array): string | undefined {
  if (b.length === 4) return V4.find((r) => inRange(b, r))?.what;
  // RFC 4291 §2.5.5.2, RFC 6052 §2.1, RFC 3056 §2: these carry an IPv4 address that is what is reached.
  const inner = inRange(b, MAPPED) || inRange(b, NAT64) ? b.subarray(12) : inRange(b, SIX_TO_FOUR) ? b.subarray(2, 6) : undefined;
  if (inner) {
    const why = specialPurpose(inner);
    return why && `${why}, inside an IPv6 address`;
  }
  return V6.find((r) => inRange(b, r))?.what ?? (inRange(b, GLOBAL_UNICAST) ? undefined : 'not global unicast (RFC 4291)');
}

/** Why the proxy will not contact an origin address, for the 403 and the log. */
export interface Refusal {
  address: string;
  why: string;
}

/** The text of a 403 for an origin refusal: what was refused, why, and the setting that would allow it. */
export function refusalText(host: string, r: Refusal): string {
  const what = host === r.address ? `origin address ${host}` : `origin ${host} (resolves to ${r.address})`;
  if (r.why === METADATA_WHY) return `${what} refused: a cloud metadata service, which the proxy never contacts`;
  return `${what} refused: ${r.why}; the proxy contacts public addresses only unless ${ALLOW_SETTING} includes it`;
}

const METADATA_WHY = 'cloud metadata service';

/** An origin the guard refused, as the lookup reports it (code EORIGINFORBIDDEN); the message is the 403's text. */
export class OriginRefused extends Error {
  readonly code = 'EORIGINFORBIDDEN';
  constructor(
    readonly host: string,
    readonly refusal: Refusal,
  ) {
    super(refusalText(host, refusal));
    this.name = 'OriginRefused';
  }
}

/** Resolves a host name to its addresses (dns.lookup's `all: true` shape). */
export type OriginResolver = (hostname: string, family: number) => Promise<LookupAddress[]>;

/** Options of OriginGuard. */
export interface OriginGuardOptions {
  /** Allow every address: tests and benchmarks whose origin is on 127.0.0.1. @default false */
  allowAll?: boolean;
  /** CIDR ranges of internal origins the operator serves (proxy.allowedOrigins). @default [] */
  allowed?: readonly string[];
  /** Name resolution. @default dns.lookup (the system's resolver, /etc/hosts included) */
  resolve?: OriginResolver;
}

const systemResolve: OriginResolver = (hostname, fam) =>
  new Promise((resolve, reject) => dnsLookup(hostname, { all: true, family: fam }, (err, addresses) => (err ? reject(err) : resolve(addresses))));

/**
 * Decides whether an origin address may be contacted: public addresses only (every IANA
 * special-purpose range and the proxy host's own addresses are refused), except what
 * proxy.allowedOrigins names; cloud metadata addresses are refused even then.
 */
export class OriginGuard {
  private readonly own: Set<string>;
  private readonly allowAll: boolean;
  private readonly allowed: Range[];
  private readonly metadata: Range[];
  private readonly resolve: OriginResolver;

  constructor(options: OriginGuardOptions = {}) {
    this.allowAll = options.allowAll ?? false;
    this.allowed = (options.allowed ?? []).map((c) => parseRange(c));
    this.metadata = METADATA.map((a) => parseRange(a));
    this.resolve = options.resolve ?? systemResolve;
    this.own = new Set();
    for (const list of Object.values(networkInterfaces())) {
      for (const i of list ?? []) {
        const b = addressBytes(i.address);
        if (b) this.own.add(b.join('.'));
      }
    }
  }

  /** Why the proxy may not connect to this IP address, or undefined when it may. */
  check(address: string): Refusal | undefined {
    if (this.allowAll) return undefined;
    const b = addressBytes(address);
    if (!b) return { address, why: 'not an IP address' };
    const flat = inRange(b, MAPPED) ? b.subarray(12) : b;
    if (this.metadata.some((r) => inRange(flat, r))) return { address, why: METADATA_WHY };
    if (this.allowed.some((r) => inRange(b, r) || inRange(flat, r))) return undefined;
    const why = specialPurpose(b) ?? (this.own.has(b.join('.')) || this.own.has(flat.join('.')) ? 'an address of the proxy host' : undefined);
    return why === undefined ? undefined : { address, why };
  }

  /** True when the proxy may connect to this IP address. */
  allows(address: string): boolean {
    return this.check(address) === undefined;
  }

  /**
   * A dns.lookup replacement for net.connect that resolves and then keeps only allowed addresses,
   * so the check is on the address actually connected to (no DNS rebinding gap); with none left
   * it fails with OriginRefused.
   */
  readonly lookup = (
    hostname: string,
    options: { all?: boolean; family?: number },
    callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    const literal = isIP(hostname);
    const found: Promise<LookupAddress[]> = literal ? Promise.resolve([{ address: hostname, family: literal }]) : this.resolve(hostname, options.family ?? 0);
    found.then(
      (addresses) => {
        let refusal: Refusal | undefined;
        const ok = addresses.filter((a) => {
          const r = this.check(a.address);
          refusal ??= r;
          return r === undefined;
        });
        if (ok.length === 0) return callback(refusal ? new OriginRefused(hostname, refusal) : notFound(hostname), '');
        if (options.all) callback(null, ok);
        else callback(null, ok[0].address, ok[0].family);
      },
      (err: NodeJS.ErrnoException) => callback(err, ''),
    );
  };
}

function notFound(hostname: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`${hostname}: no address`);
  e.code = 'ENOTFOUND';
  return e;
}

/**
 * The host and port of a CONNECT request-target (RFC 9110 §9.3.6: authority-form), the host
 * normalised by the WHATWG URL parser as absolute-form targets are (so 0x7f.1 is 127.0.0.1).
 */
export function authorityTarget(raw: string): { host: string; port: number } | undefined {
  const m = /^([^/?#@\s]+):(\d{1,5})$/.exec(raw);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  let host: string;
  try {
    host = new URL(`http://${m[1]}/`).hostname;
  } catch {
    return undefined;
  }
  return { host: host.startsWith('[') ? host.slice(1, -1) : host, port };
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

/** An OriginResolver asking the given DNS servers (proxy.dnsServers) for A and AAAA records. */
export function dnsOriginResolver(servers: string[], timeoutMs = 2000): OriginResolver {
  const dns = createDnsResolver({ servers, timeoutMs });
  return async (hostname, fam) => {
    const name = hostname.replace(/\.$/, '');
    const [v4, v6] = await Promise.allSettled([fam === 6 ? Promise.resolve([]) : dns.resolve4(name), fam === 4 ? Promise.resolve([]) : dns.resolve6(name)]);
    const out: LookupAddress[] = [];
    if (v4.status === 'fulfilled') for (const address of v4.value) out.push({ address, family: 4 });
    if (v6.status === 'fulfilled') for (const address of v6.value) out.push({ address, family: 6 });
    if (out.length > 0) return out;
    const failed = [v4, v6].find((r): r is PromiseRejectedResult => r.status === 'rejected' && (r.reason as DnsError).code !== 'ENODATA');
    throw failed ? failed.reason : notFound(hostname);
  };
}
