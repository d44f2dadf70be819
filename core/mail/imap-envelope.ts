/**
 * The header-field side of IMAP's ENVELOPE and BODYSTRUCTURE (RFC 9051 §7.5.2): a header block
 * split into raw field values, address lists as IMAP address structures, and the
 * `type/subtype; name=value` syntax of Content-Type and Content-Disposition (RFC 2045 §5.1, RFC
 * 2183, RFC 2231). Written here rather than taken from mailparser/libmime because IMAP wants the
 * values as sent (encoded-words still encoded, names and parameters in their own case, quoted
 * strings unquoted), and those libraries decode and normalise them; the rules follow Dovecot's so
 * that clients see what they see there (test/mail/imap-structure.test.ts compares the two).
 */
import { imapList, imapString, nstring } from './imap-syntax.js';

/** One header field: its name as sent and its value with the leading blanks and every CR and LF removed. */
export interface HeaderField {
  name: string;
  value: string;
  /** Set when the value was folded after some text (see envelopeString). */
  folded?: true;
}

/**
 * The fields of a header block, in order. The value keeps folding blanks but loses CR and LF
 * (RFC 5322 §2.2.3 unfolding); a line without a colon is skipped, as Dovecot skips it.
 */
export function headerFields(block: Buffer): HeaderField[] {
  // UTF-8: 8-bit header text is UTF-8 in practice (RFC 6532); an invalid byte becomes U+FFFD.
  const lines = block.toString('utf8').split('\n');
  const out: HeaderField[] = [];
  let last: HeaderField | undefined;
  for (let line of lines) {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line === '') continue;
    const c = line.charCodeAt(0);
    if (c === 0x20 || c === 0x09) {
      if (last) {
        if (last.value !== '') last.folded = true;
        last.value += line;
      }
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) {
      last = undefined;
      continue;
    }
    last = { name: line.slice(0, colon).trimEnd(), value: line.slice(colon + 1).replace(/^[ \t]+/, '') };
    out.push(last);
  }
  for (const f of out) f.value = f.value.replace(/\r/g, '');
  return out;
}

/**
 * A raw field value for ENVELOPE: NIL when absent; a literal when it was folded after some text
 * (the folds removed), as Dovecot writes it; otherwise a string as imapString writes it.
 */
function envelopeString(fields: HeaderField[], name: string): string {
  const lower = name.toLowerCase();
  const f = fields.find((x) => x.name.toLowerCase() === lower);
  if (!f) return 'NIL';
  return f.folded ? `{${Buffer.byteLength(f.value)}}\r\n${f.value}` : imapString(f.value);
}

/** The value of the first field named `name` (case-insensitive), or undefined. */
export function firstField(fields: HeaderField[], name: string): string | undefined {
  const lower = name.toLowerCase();
  for (const f of fields) if (f.name.toLowerCase() === lower) return f.value;
  return undefined;
}

/**
 * The ENVELOPE of a message from its header fields (RFC 9051 §7.5.2): date, subject, from, sender,
 * reply-to, to, cc, bcc, in-reply-to, message-id; sender and reply-to default to from when absent
 * or empty, as the RFC requires.
 */
export function renderEnvelope(fields: HeaderField[]): string {
  const raw = (name: string): string => envelopeString(fields, name);
  const addr = (name: string): string | undefined => {
    const v = firstField(fields, name);
    return v === undefined ? undefined : addressList(v);
  };
  const from = addr('from') ?? 'NIL';
  const orFrom = (v: string | undefined): string => (v === undefined || v === 'NIL' ? from : v);
  return imapList([
    raw('date'),
    raw('subject'),
    from,
    orFrom(addr('sender')),
    orFrom(addr('reply-to')),
    addr('to') ?? 'NIL',
    addr('cc') ?? 'NIL',
    addr('bcc') ?? 'NIL',
    raw('in-reply-to'),
    raw('message-id'),
  ]);
}

type Token = { kind: 'word' | 'quoted' | 'comment' | 'special'; text: string };

/** RFC 5322 §3.2 lexical tokens; atoms include '.' so obs-phrase and dot-atoms stay one word. */
function tokenize(s: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === ' ' || c === '\t') i++;
    else if (c === '"') {
      let text = '';
      for (i++; i < s.length && s[i] !== '"'; i++) text += s[i] === '\\' && i + 1 < s.length ? s[++i] : s[i];
      i++;
      out.push({ kind: 'quoted', text });
    } else if (c === '(') {
      let depth = 0;
      let text = '';
      for (; i < s.length; i++) {
        const d = s[i];
        if (d === '\\' && i + 1 < s.length) text += s[++i];
        else if (d === '(') {
          if (depth++ > 0) text += d;
        } else if (d === ')') {
          if (--depth === 0) break;
          text += d;
        } else text += d;
      }
      i++;
      out.push({ kind: 'comment', text });
    } else if ('<>@,:;[]'.includes(c)) {
      if (c === '[') {
        // A domain literal: kept whole, brackets included.
        const end = s.indexOf(']', i);
        const stop = end < 0 ? s.length : end + 1;
        out.push({ kind: 'word', text: s.slice(i, stop) });
        i = stop;
      } else {
        out.push({ kind: 'special', text: c });
        i++;
      }
    } else {
      let j = i;
      while (j < s.length && !' \t"(<>@,:;['.includes(s[j])) j++;
      out.push({ kind: 'word', text: s.slice(i, j) });
      i = j;
    }
  }
  return out;
}

/** Dovecot's placeholders for an address part that is missing (what clients already know). */
const MISSING_MAILBOX = 'MISSING_MAILBOX';
const MISSING_DOMAIN = 'MISSING_DOMAIN';

/**
 * An address header as an IMAP address list (RFC 9051 §7.5.2, `1*address` with no separator):
 * each mailbox as (name adl mailbox host); a group as (NIL NIL name NIL), its members, then
 * (NIL NIL NIL NIL). NIL when the header holds no address at all.
 */
export function addressList(value: string): string {
  const tokens = tokenize(value);
  const out: string[] = [];
  let i = 0;
  const peek = (): Token | undefined => tokens[i];
  const isSpecial = (t: Token | undefined, c: string): boolean => t?.kind === 'special' && t.text === c;

  /** One mailbox (or a group's start when it meets ':'); stops before ',' ';' or at the end. */
  const element = (inGroup: boolean): void => {
    const phrase: string[] = [];
    let comment: string | undefined;
    let local = '';
    let domain = '';
    let route: string | undefined;
    let angle = false;
    let sawAt = false;
    let afterAddress = false;
    while (i < tokens.length) {
      const t = tokens[i];
      if (t.kind === 'comment') {
        if (afterAddress || local || sawAt) comment = t.text;
        i++;
        continue;
      }
      if (isSpecial(t, ',') || (inGroup && isSpecial(t, ';'))) break;
      if (isSpecial(t, ':') && !inGroup && !angle) {
        // A group (RFC 5322 §3.4): its members follow up to ';'.
        i++;
        out.push(imapList(['NIL', 'NIL', imapString(phrase.join(' ')), 'NIL']));
        for (;;) {
          while (isSpecial(peek(), ',')) i++;
          if (i >= tokens.length || isSpecial(peek(), ';')) break;
          element(true);
        }
        if (isSpecial(peek(), ';')) i++;
        out.push('(NIL NIL NIL NIL)');
        return;
      }
      if (isSpecial(t, '<')) {
        angle = true;
        i++;
        // An obsolete source route `@a,@b:` (RFC 5322 §4.4) goes to the adl field.
        if (isSpecial(peek(), '@')) {
          const hops: string[] = [];
          while (isSpecial(peek(), '@') || isSpecial(peek(), ',')) {
            if (isSpecial(peek(), ',')) {
              i++;
              continue;
            }
            i++;
            hops.push(`@${peek()?.kind === 'word' ? tokens[i++].text : ''}`);
          }
          if (isSpecial(peek(), ':')) {
            i++;
            route = hops.join(',');
          } else route = 'INVALID_ROUTE';
        }
        while (i < tokens.length && !isSpecial(peek(), '>')) {
          const u = tokens[i++];
          if (u.kind === 'comment') continue;
          if (isSpecial(u, '@')) sawAt = true;
          else if (sawAt) domain += u.text;
          else local += u.kind === 'quoted' ? u.text : u.text;
        }
        i++;
        afterAddress = true;
        continue;
      }
      if (afterAddress) {
        i++;
        continue;
      }
      if (isSpecial(t, '@')) {
        // An addr-spec without angle brackets: the words so far were its local part.
        sawAt = true;
        local = phrase.join('');
        phrase.length = 0;
        i++;
        while (i < tokens.length && tokens[i].kind !== 'special' && tokens[i].kind !== 'comment') domain += tokens[i++].text;
        afterAddress = true;
        continue;
      }
      if (t.kind === 'special') {
        i++;
        continue;
      }
      phrase.push(t.text);
      i++;
    }
    if (!angle && !sawAt) {
      // No '@' and no brackets: the words are a mailbox without a domain.
      local = phrase.join('');
      phrase.length = 0;
    }
    const name = phrase.length ? phrase.join(' ') : comment;
    out.push(imapList([nstring(name), nstring(route), imapString(local || MISSING_MAILBOX), imapString(domain || MISSING_DOMAIN)]));
  };

  let elements = 0;
  while (i < tokens.length) {
    if (isSpecial(peek(), ',')) {
      // An empty element between two commas is an address with nothing in it (Dovecot lists it).
      i++;
      if (elements > 0 && i < tokens.length && isSpecial(peek(), ',')) out.push(`(NIL NIL "${MISSING_MAILBOX}" "${MISSING_DOMAIN}")`);
      continue;
    }
    if (tokens.slice(i).every((t) => t.kind === 'comment')) break;
    element(false);
    elements++;
  }
  return out.length ? `(${out.join('')})` : 'NIL';
}

/** A parsed `type/subtype; a=b` (Content-Type) or `type; a=b` (Content-Disposition) value. */
export interface ParamValue {
  /** As sent; '' when the value is missing or does not parse. */
  type: string;
  subtype: string;
  /** Name and value pairs as sent; RFC 2231 continuations joined. */
  params: [string, string][];
}

/** Parses a Content-Type or Content-Disposition value (RFC 2045 §5.1 with comments; RFC 2231 §3 continuations). */
export function parseParamValue(value: string, withSubtype: boolean): ParamValue {
  let i = 0;
  const s = value;
  const skipBlanksAndComments = (): void => {
    for (;;) {
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++;
      if (s[i] !== '(') return;
      let depth = 0;
      for (; i < s.length; i++) {
        if (s[i] === '\\') i++;
        else if (s[i] === '(') depth++;
        else if (s[i] === ')' && --depth === 0) break;
      }
      i++;
    }
  };
  const token = (stop: string): string => {
    const from = i;
    while (i < s.length && !stop.includes(s[i]) && s[i] !== ' ' && s[i] !== '\t' && s[i] !== '(') i++;
    return s.slice(from, i);
  };
  const quoted = (): string => {
    let text = '';
    for (i++; i < s.length && s[i] !== '"'; i++) text += s[i] === '\\' && i + 1 < s.length ? s[++i] : s[i];
    i++;
    return text;
  };
  skipBlanksAndComments();
  const type = token(';/');
  let subtype = '';
  skipBlanksAndComments();
  if (withSubtype && s[i] === '/') {
    i++;
    skipBlanksAndComments();
    subtype = token(';');
  }
  const raw: [string, string][] = [];
  while (i < s.length) {
    skipBlanksAndComments();
    if (s[i] !== ';') {
      // Junk between parameters: skip to the next ';'.
      const next = s.indexOf(';', i);
      if (next < 0) break;
      i = next;
    }
    i++;
    skipBlanksAndComments();
    const name = token(';=');
    skipBlanksAndComments();
    if (s[i] !== '=') continue;
    i++;
    skipBlanksAndComments();
    const v = s[i] === '"' ? quoted() : token(';');
    if (name) raw.push([name, v]);
  }
  return { type, subtype, params: joinContinuations(raw) };
}

/**
 * RFC 2231 §3: `name*0`, `name*1*`... joined into one `name` (or `name*` when a section is
 * extended, its value then still `charset'lang'%XX`), after the plain parameters, as Dovecot writes them.
 */
function joinContinuations(raw: [string, string][]): [string, string][] {
  const plain: [string, string][] = [];
  const joined = new Map<string, { name: string; extended: boolean; sections: [number, string][] }>();
  for (const [name, value] of raw) {
    const m = /^(.+)\*(\d+)(\*?)$/.exec(name);
    if (!m) {
      plain.push([name, value]);
      continue;
    }
    const key = m[1].toLowerCase();
    let j = joined.get(key);
    if (!j) joined.set(key, (j = { name: m[1], extended: false, sections: [] }));
    j.sections.push([Number(m[2]), value]);
    if (m[3]) j.extended = true;
  }
  for (const j of joined.values()) {
    j.sections.sort((a, b) => a[0] - b[0]);
    plain.push([j.extended ? `${j.name}*` : j.name, j.sections.map((x) => x[1]).join('')]);
  }
  return plain;
}

/** Parameters as an IMAP list `("name" "value" ...)`, or NIL when there are none (RFC 9051 body-fld-param). */
export function renderParams(params: [string, string][]): string {
  return params.length ? imapList(params.flatMap(([n, v]) => [imapString(n), imapString(v)])) : 'NIL';
}

/** Content-Language (RFC 3282) as an IMAP list of language tags, or NIL. */
export function renderLanguage(value: string | undefined): string {
  if (value === undefined) return 'NIL';
  const tags = value
    .replace(/\([^)]*\)/g, ' ')
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  return tags.length ? imapList(tags.map((t) => imapString(t))) : 'NIL';
}
