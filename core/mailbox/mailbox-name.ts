/**
 * Mailbox names in modified UTF-7: on the IMAP wire, and in Maildir++ directory names (import
 * and export, core/mailbox/maildir.ts). Folders are stored with UTF-8 names (core/mailbox/folders.ts); an
 * IMAP4rev1 client that has not enabled UTF8=ACCEPT (RFC 6855) or IMAP4rev2 (RFC 9051 §6.3.1)
 * sends and expects modified UTF-7 (RFC 3501 §5.1.3), so the session converts at its edge with
 * mailboxNameFromClient / mailboxNameToClient.
 *
 * Written here rather than taken from a package: modified UTF-7 is some forty lines, and the npm
 * `utf7` package is not among our dependencies; the strict decoder (refusing every malformed or
 * non-canonical form, so one folder has one wire name) is what we need and a lenient one is not.
 */

/** RFC 3501 §5.1.3: modified BASE64 (RFC 2152 with `,` in place of `/`). */
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,';
const B64_VALUE = new Map([...B64].map((c, i) => [c, i]));

/** True for the characters modified UTF-7 writes as themselves: printable US-ASCII (0x20-0x7e). */
function direct(code: number): boolean {
  return code >= 0x20 && code <= 0x7e;
}

/**
 * Encodes a UTF-8 (JS string) mailbox name as modified UTF-7; `&` becomes `&-`. `escape` lists
 * printable characters to encode as well (a Maildir++ directory name cannot hold its `.`).
 */
export function encodeMailboxName(name: string, escape = ''): string {
  let out = '';
  let i = 0;
  const plain = (code: number) => direct(code) && !escape.includes(String.fromCharCode(code));
  while (i < name.length) {
    const code = name.charCodeAt(i);
    if (plain(code)) {
      out += code === 0x26 ? '&-' : name[i];
      i++;
      continue;
    }
    // A run of other characters as UTF-16BE in modified BASE64, between `&` and `-`.
    let j = i;
    while (j < name.length && !plain(name.charCodeAt(j))) j++;
    const bytes = Buffer.alloc((j - i) * 2);
    for (let k = i; k < j; k++) bytes.writeUInt16BE(name.charCodeAt(k), (k - i) * 2);
    out += '&' + bytes.toString('base64').replace(/=+$/, '').replace(/\//g, ',') + '-';
    i = j;
  }
  return out;
}

/**
 * Decodes a modified UTF-7 mailbox name, or undefined when it is not canonical modified UTF-7:
 * an 8-bit or control character, `&` without its `-`, a bad BASE64 character or length, nonzero
 * padding bits, a printable ASCII character encoded, two encoded runs back to back, or an
 * unpaired UTF-16 surrogate. RFC 3501 §5.1.3 makes each of these a form a client must not send.
 * `escaped`: printable characters that may be encoded (what `encodeMailboxName` was told to escape).
 */
export function decodeMailboxName(wire: string, options: { escaped?: string } = {}): string | undefined {
  let out = '';
  let i = 0;
  let lastRunEnd = -1;
  while (i < wire.length) {
    const code = wire.charCodeAt(i);
    if (!direct(code)) return undefined;
    if (code !== 0x26) {
      out += wire[i];
      i++;
      continue;
    }
    const dash = wire.indexOf('-', i + 1);
    if (dash < 0) return undefined;
    if (dash === i + 1) {
      out += '&';
      i = dash + 1;
      continue;
    }
    if (lastRunEnd === i) return undefined;
    const run = decodeRun(wire.slice(i + 1, dash), options.escaped ?? '');
    if (run === undefined) return undefined;
    out += run;
    i = dash + 1;
    lastRunEnd = i;
  }
  return out;
}

/** One `&...-` run's BASE64 as UTF-16BE, or undefined when malformed. */
function decodeRun(b64: string, escaped: string): string | undefined {
  let bits = 0;
  let acc = 0;
  const units: number[] = [];
  for (const c of b64) {
    const v = B64_VALUE.get(c);
    if (v === undefined) return undefined;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 16) {
      bits -= 16;
      units.push((acc >>> bits) & 0xffff);
      acc &= (1 << bits) - 1;
    }
  }
  // Leftover bits must be fewer than 6 and zero (RFC 2152), and a run holds whole UTF-16 units.
  if (bits >= 6 || acc !== 0 || units.length === 0) return undefined;
  const text = String.fromCharCode(...units);
  for (let k = 0; k < units.length; k++) {
    const u = units[k]!;
    if (direct(u) && !escaped.includes(String.fromCharCode(u))) return undefined;
    if (u >= 0xd800 && u <= 0xdbff) {
      const low = units[k + 1];
      if (low === undefined || low < 0xdc00 || low > 0xdfff) return undefined;
      k++;
    } else if (u >= 0xdc00 && u <= 0xdfff) {
      return undefined;
    }
  }
  return text;
}

/**
 * A mailbox name as the client sent it, in the stored (UTF-8) form: as is when the client speaks
 * UTF-8 (IMAP4rev2 or UTF8=ACCEPT enabled), else decoded from modified UTF-7; undefined when malformed.
 */
export function mailboxNameFromClient(raw: string, utf8: boolean): string | undefined {
  return utf8 ? raw : decodeMailboxName(raw);
}

/** A stored mailbox name in the form the client reads (see mailboxNameFromClient). */
export function mailboxNameToClient(name: string, utf8: boolean): string {
  return utf8 ? name : encodeMailboxName(name);
}
