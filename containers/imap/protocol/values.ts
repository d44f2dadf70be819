/**
 * The values an IMAP command is made of (RFC 9051 §4, RFC 3501 §4), as the command reader
 * (reader.ts) hands them to the session, the FETCH, STORE and SEARCH code. One shape for every
 * command, so a handler reads its arguments with the helpers below and never sees raw bytes.
 *
 * - an atom (`FLAGS`, `1:*`, `\Seen`, `BODY.PEEK[HEADER.FIELDS (FROM)]<0.100>`) is an Atom: a
 *   fetch attribute's `[section]` and `<partial>` are split out by the reader;
 * - a quoted string is a JS string; a literal is a Buffer (it may hold any octet);
 * - a parenthesised list is an array; NIL is null.
 */

/** An atom. `section` and `partial` only on BODY[...], BODY.PEEK[...], BINARY[...] and the like. */
export interface Atom {
  kind: 'atom';
  /** As sent (case kept); compare with `is`. For `BODY.PEEK[1]` it is `BODY.PEEK`. */
  value: string;
  /** What was between `[` and `]`: the section spec as values, e.g. `HEADER.FIELDS (FROM TO)` is
   * [atom HEADER.FIELDS, [atom FROM, atom TO]]; `[]` is an empty array. */
  section?: ImapValue[];
  /** `<start.length>` of a fetch attribute, or `<start>` of a fetch response. */
  partial?: { start: number; length?: number };
}

export type ImapValue = Atom | string | Buffer | ImapValue[] | null;

/** An atom value. */
export function atom(value: string, extra: Omit<Atom, 'kind' | 'value'> = {}): Atom {
  return { kind: 'atom', value, ...extra };
}

export function isAtom(v: ImapValue | undefined): v is Atom {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && v.kind === 'atom';
}

/** True when `v` is the atom `name` (case-insensitive, as IMAP compares keywords). */
export function is(v: ImapValue | undefined, name: string): boolean {
  return isAtom(v) && v.value.toUpperCase() === name.toUpperCase();
}

/**
 * The astring value (RFC 9051 `astring`: atom, quoted or literal) as text, or undefined when `v`
 * is a list or NIL. Literals are read as UTF-8.
 */
export function text(v: ImapValue | undefined): string | undefined {
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (isAtom(v) && !v.section && !v.partial) return v.value;
  return undefined;
}

/** A non-negative integer argument (RFC 9051 `number`), or undefined. */
export function number(v: ImapValue | undefined): number | undefined {
  const t = isAtom(v) ? v.value : undefined;
  if (t === undefined || !/^\d{1,20}$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** One range of a sequence set; `'*'` is the largest number in use (RFC 9051 §9 `seq-number`). */
export type SeqBound = number | '*';

/** A parsed sequence set (`1:3,7,9:*`): ranges in the order given, each with its bounds as written. */
export type SequenceSet = { from: SeqBound; to: SeqBound }[];

/**
 * Parses a sequence set (RFC 9051 `sequence-set`), or undefined when it is not one. `$` (the
 * saved search result, RFC 5182) is not a sequence set here; callers check for it first.
 */
export function sequenceSet(v: ImapValue | undefined): SequenceSet | undefined {
  const t = isAtom(v) ? v.value : undefined;
  if (!t) return undefined;
  const out: SequenceSet = [];
  for (const piece of t.split(',')) {
    const m = /^(\d+|\*)(?::(\d+|\*))?$/.exec(piece);
    if (!m) return undefined;
    const bound = (s: string): SeqBound | undefined => {
      if (s === '*') return '*';
      const n = Number(s);
      return Number.isSafeInteger(n) && n > 0 && n <= 0xffffffff ? n : undefined;
    };
    const from = bound(m[1]!);
    const to = m[2] === undefined ? from : bound(m[2]);
    if (from === undefined || to === undefined) return undefined;
    out.push({ from, to });
  }
  return out;
}

/**
 * True when `n` is in `set`, where `*` stands for `max` (the highest UID or message number of the
 * folder); a range may be written either way round (`5:2` is `2:5`).
 */
export function inSequenceSet(set: SequenceSet, n: number, max: number): boolean {
  for (const r of set) {
    const a = r.from === '*' ? max : r.from;
    const b = r.to === '*' ? max : r.to;
    if (n >= Math.min(a, b) && n <= Math.max(a, b)) return true;
  }
  return false;
}

/** Message numbers or UIDs as a sequence set, ascending: `1:3,5,9:12` (RFC 9051 `sequence-set`); duplicates merge. */
export function sequenceText(numbers: number[]): string {
  const sorted = Float64Array.from(numbers).sort();
  const out: string[] = [];
  let i = 0;
  while (i < sorted.length) {
    const start = sorted[i]!;
    let end = start;
    while (i + 1 < sorted.length && sorted[i + 1]! <= end + 1) end = sorted[++i]!;
    out.push(start === end ? String(start) : `${start}:${end}`);
    i++;
  }
  return out.join(',');
}
