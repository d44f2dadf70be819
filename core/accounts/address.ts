/**
 * Mail address normalisation for the account model: the domain is compared case-insensitively and
 * stored as A-labels (RFC 5890 §2.3.2.1), the local part is kept as UTF-8 (RFC 6531 §3.3) and
 * compared case-insensitively unless configured otherwise.
 */
import { domainToASCII } from 'node:url';

/** An address or domain could not be parsed; `message` says why in words for an operator. */
export class InvalidAddress extends Error {
  constructor(
    readonly input: string,
    reason: string,
  ) {
    super(`invalid address ${JSON.stringify(input)}: ${reason}`);
    this.name = 'InvalidAddress';
  }
}

/** A parsed address: `local@domain`, with `domain` in lower-case A-labels. */
export interface ParsedAddress {
  local: string;
  domain: string;
  address: string;
}

// RFC 5321 §4.5.3.1.1 (local part at most 64 octets) and §4.5.3.1.2 (domain at most 255 octets;
// 253 in presentation form without the trailing dot).
const MAX_LOCAL_OCTETS = 64;
const MAX_DOMAIN_OCTETS = 253;
// Characters never valid unquoted in a local part (RFC 5322 §3.2.3 specials, controls, space).
// Quoted local parts are refused on purpose: no mailbox here needs one and they invite confusion.
const BAD_LOCAL = /[\s\x00-\x1f\x7f"(),:;<>@[\\\]]/u;

/** Turns a domain (U-labels or A-labels, any case, optional trailing dot) into lower-case A-labels. */
export function normalizeDomain(input: string): string {
  const raw = input.trim().replace(/\.$/, '');
  if (!raw) throw new InvalidAddress(input, 'empty domain');
  if (raw.startsWith('[')) throw new InvalidAddress(input, 'address literals are not local domains');
  // domainToASCII parses like a URL host: it would cut "example.test/x" at the "/" (also "?", "#",
  // "\\"), percent-decode and drop tabs. Only letters, digits, hyphens, dots and non-ASCII
  // (U-labels, RFC 5890 §2.3.2.1) may reach it.
  const bad = /[\x00-\x2c\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]/.exec(raw);
  if (bad) throw new InvalidAddress(input, `domain has a forbidden character ${JSON.stringify(bad[0])}`);
  const ascii = domainToASCII(raw.normalize('NFC').toLowerCase());
  if (!ascii) throw new InvalidAddress(input, 'not a valid domain name');
  if (ascii.length > MAX_DOMAIN_OCTETS) throw new InvalidAddress(input, 'domain longer than 253 octets');
  const labels = ascii.split('.');
  for (const label of labels) {
    // RFC 1035 §2.3.1 preferred name syntax (letters, digits, hyphen; no edge hyphens; <= 63).
    if (!/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(label)) throw new InvalidAddress(input, `bad label ${JSON.stringify(label)}`);
  }
  return ascii;
}

/** Options of address normalisation. */
export interface AddressOptions {
  /** Compare local parts case-sensitively (RFC 5321 §2.4 allows it; almost nobody does). @default false */
  localPartCaseSensitive?: boolean;
}

/** Normalises a local part: NFC (RFC 6532 §3.1), lower case unless case-sensitive. */
export function normalizeLocal(local: string, options: AddressOptions = {}): string {
  const nfc = local.normalize('NFC');
  return options.localPartCaseSensitive ? nfc : nfc.toLowerCase();
}

/** Parses and normalises `local@domain` (angle brackets and surrounding space are tolerated). */
export function parseAddress(input: string, options: AddressOptions = {}): ParsedAddress {
  let s = input.trim();
  if (s.startsWith('<') && s.endsWith('>')) s = s.slice(1, -1).trim();
  const at = s.lastIndexOf('@');
  if (at < 0) throw new InvalidAddress(input, 'missing @');
  const localRaw = s.slice(0, at);
  if (!localRaw) throw new InvalidAddress(input, 'empty local part');
  if (BAD_LOCAL.test(localRaw)) throw new InvalidAddress(input, 'local part has a forbidden character');
  if (localRaw.startsWith('.') || localRaw.endsWith('.') || localRaw.includes('..')) throw new InvalidAddress(input, 'misplaced dot in local part');
  const local = normalizeLocal(localRaw, options);
  if (Buffer.byteLength(local, 'utf8') > MAX_LOCAL_OCTETS) throw new InvalidAddress(input, 'local part longer than 64 octets');
  const domain = normalizeDomain(s.slice(at + 1));
  return { local, domain, address: `${local}@${domain}` };
}

/** Parses a catch-all pattern `@domain`, returning the normalised domain. */
export function parseCatchAll(input: string): string | undefined {
  const s = input.trim();
  return s.startsWith('@') ? normalizeDomain(s.slice(1)) : undefined;
}
