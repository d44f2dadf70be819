/**
 * Client address ranges, for every listener: CIDR lists (the proxy's allowed clients, SMTP's
 * trusted networks) and the membership test, with IPv4-mapped IPv6 addresses checked as IPv4.
 */
import { BlockList, isIP } from 'node:net';

/** Strips the IPv4-mapped prefix so that ::ffff:10.0.0.1 is checked as 10.0.0.1. */
export function plainAddress(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** The BlockList family of an address. */
export function family(address: string): 'ipv4' | 'ipv6' {
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
