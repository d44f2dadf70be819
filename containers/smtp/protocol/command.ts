/**
 * SMTP command-line grammar (RFC 5321 §4.1), pure: verbs, MAIL/RCPT paths with their ESMTP
 * parameters, DSN parameters (RFC 3461) and replies. No I/O, no policy.
 */

/** An SMTP reply: the basic code, an enhanced status code (RFC 3463) and text lines. */
export interface Reply {
  code: number;
  /** e.g. '2.0.0'; omitted on the greeting and on EHLO lines (RFC 2034 §3). */
  enhanced?: string;
  lines: string[];
}

/** An error that carries the reply it should produce (STYLE.md example 4). */
export class ReplyError extends Error {
  constructor(
    readonly code: number,
    readonly enhanced: string | undefined,
    text: string,
    /** Close the connection after replying (421 and limit replies). */
    readonly close = false,
  ) {
    super(text);
    this.name = 'ReplyError';
  }
  /** The reply this error stands for. */
  get reply(): Reply {
    return { code: this.code, enhanced: this.enhanced, lines: [this.message] };
  }
}

/** Renders a reply on the wire (RFC 5321 §4.2.1: `code-text` on all but the last line). */
export function formatReply(r: Reply): string {
  const lines = r.lines.length ? r.lines : [''];
  let out = '';
  for (let i = 0; i < lines.length; i++) {
    const sep = i === lines.length - 1 ? ' ' : '-';
    const text = r.enhanced ? `${r.enhanced} ${lines[i]}` : lines[i];
    out += `${r.code}${sep}${text}\r\n`;
  }
  return out;
}

/** A command line split into its verb (upper-cased) and argument text. */
export interface CommandLine {
  verb: string;
  arg: string;
}

/** Splits `VERB [SP args]`. */
export function splitCommand(line: string): CommandLine {
  const sp = line.indexOf(' ');
  if (sp < 0) return { verb: line.toUpperCase(), arg: '' };
  return { verb: line.slice(0, sp).toUpperCase(), arg: line.slice(sp + 1) };
}

/** MAIL FROM / RCPT TO parsed: the address ('' for the null path) and the ESMTP parameters. */
export interface PathCommand {
  address: string;
  /** Upper-cased keyword -> value (undefined for a keyword without `=`). */
  params: Map<string, string | undefined>;
}

/**
 * Parses `FROM:<path> [params]` or `TO:<path> [params]` (RFC 5321 §4.1.1.2, §4.1.1.3,
 * §4.1.2). A space after the colon is tolerated (common in the wild); a source route
 * (`<@a,@b:user@c>`) is accepted and ignored (§4.1.1.3, Appendix C).
 */
export function parsePathCommand(arg: string, keyword: 'FROM' | 'TO', options: { utf8: boolean }): PathCommand {
  const m = /^([a-zA-Z]+):\s*/.exec(arg);
  if (!m || m[1].toUpperCase() !== keyword) throw new ReplyError(501, '5.5.4', `Syntax: ${keyword === 'FROM' ? 'MAIL FROM:<address>' : 'RCPT TO:<address>'}`);
  let rest = arg.slice(m[0].length);
  if (!rest.startsWith('<')) throw new ReplyError(501, '5.5.4', 'Address must be in angle brackets');
  const close = findClosingBracket(rest);
  if (close < 0) throw new ReplyError(501, '5.5.4', 'Missing closing angle bracket');
  let path = rest.slice(1, close);
  rest = rest.slice(close + 1);
  if (rest && !rest.startsWith(' ')) throw new ReplyError(501, '5.5.4', 'Bad parameter syntax');
  if (path.startsWith('@')) {
    const colon = path.indexOf(':');
    if (colon < 0) throw new ReplyError(501, '5.1.3', 'Bad source route');
    path = path.slice(colon + 1);
  }
  // RFC 5321 §4.1.1.3 / §4.5.1: "RCPT TO:<Postmaster>" without a domain MUST be accepted.
  if (keyword === 'TO' && /^postmaster$/i.test(path)) {
    // The policy decides which local postmaster it names.
  } else if (path !== '' || keyword === 'TO') {
    if (!isMailbox(path, options.utf8)) {
      // RFC 6531 §3.5: a non-ASCII address without SMTPUTF8 gets 553 5.6.7.
      if (!options.utf8 && /[^\x00-\x7f]/.test(path)) throw new ReplyError(553, '5.6.7', 'Non-ASCII address needs SMTPUTF8');
      throw new ReplyError(501, '5.1.3', 'Bad address syntax');
    }
  }
  const params = new Map<string, string | undefined>();
  for (const p of rest.split(' ')) {
    if (!p) continue;
    const eq = p.indexOf('=');
    const key = (eq < 0 ? p : p.slice(0, eq)).toUpperCase();
    // RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    if (!/^[A-Z0-9][A-Z0-9-]*$/.test(key)) throw new ReplyError(501, '5.5.4', 'Bad parameter syntax');
    if (params.has(key)) throw new ReplyError(501, '5.5.4', `Duplicate parameter ${key}`);
    params.set(key, eq < 0 ? undefined : p.slice(eq + 1));
  }
  return { address: canonicalMailbox(path, options.utf8), params };
}

/**
 * RFC 5321 §4.1.2: a quoted-string local part that is a valid dot-string once unquoted names the
 * same mailbox as the dot-string, so `"alice"@example.test` becomes `alice@example.test`. Other
 * quoted local parts are returned unchanged.
 */
export function canonicalMailbox(address: string, utf8: boolean): string {
  if (!address.startsWith('"')) return address;
  const at = address.lastIndexOf('@');
  const local = address.slice(1, at - 1).replace(/\\(.)/g, '$1');
  const dotString = local.split('.').every((atom) => atom !== '' && ATEXT.test(utf8 ? atom.replace(/[^\x00-\x7f]/g, 'a') : atom));
  return dotString ? `${local}${address.slice(at)}` : address;
}

function findClosingBracket(s: string): number {
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '>') return i;
  }
  return -1;
}

const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+$/;

/**
 * RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ); with SMTPUTF8 (RFC 6531
 * §3.3) UTF-8 is allowed in both parts.
 */
export function isMailbox(s: string, utf8: boolean): boolean {
  if (s.length > 320) return false;
  const at = s.lastIndexOf('@');
  if (at <= 0 || at === s.length - 1) return false;
  const local = s.slice(0, at);
  const domain = s.slice(at + 1);
  if (!utf8 && /[^\x00-\x7f]/.test(s)) return false;
  if (Buffer.byteLength(local) > 64) return false; // §4.5.3.1.1
  if (local.startsWith('"')) {
    if (!/^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e]|[^\x00-\x7f])*"$/.test(local)) return false;
  } else {
    for (const atom of local.split('.')) {
      if (!atom) return false;
      const ascii = utf8 ? atom.replace(/[^\x00-\x7f]/g, 'a') : atom;
      if (!ATEXT.test(ascii)) return false;
    }
  }
  if (domain.startsWith('[')) return /^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]$/.test(domain);
  if (Buffer.byteLength(domain) > 255) return false; // §4.5.3.1.2
  for (const label of domain.split('.')) {
    const ascii = utf8 ? label.replace(/[^\x00-\x7f]/g, 'a') : label;
    if (!/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(ascii)) return false;
  }
  return true;
}

/** Decodes RFC 3461 §4 xtext (`+XX` hex escapes); undefined when malformed. */
export function decodeXtext(s: string): string | undefined {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2b) {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return undefined;
      out += String.fromCharCode(parseInt(hex, 16));
      i += 2;
    } else if (c < 0x21 || c > 0x7e || c === 0x3d) {
      return undefined;
    } else out += s[i];
  }
  return out;
}

/** Parses a HELO/EHLO argument: a domain or an address literal (RFC 5321 §4.1.1.1). */
export function isHeloName(s: string): boolean {
  if (!s || s.length > 255 || /\s/.test(s)) return false;
  if (s.startsWith('[')) return /^\[[^\]]+\]$/.test(s);
  // Lenient: any printable token (real clients send bare hostnames with underscores).
  return /^[\x21-\x7e\u0080-\uffff]+$/.test(s);
}
