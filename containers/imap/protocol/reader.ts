/**
 * IMAP command framing and parsing (RFC 9051 §9, RFC 3501 §9): bytes in, commands out, with an
 * explicit "need more bytes" result (STYLE.md example 2). Pure: no sockets, no clock; one reader
 * per connection, fed by the listener and drained by the session.
 *
 * Why hand-written rather than an npm IMAP command parser (emailjs-imap-handler, imap-handler):
 * those parse a whole command already buffered in memory. An APPEND literal may be as large as the
 * message size limit and must stream to storage in bounded memory, and the line and literal limits
 * must hold byte by byte, before anything is buffered. So this reader frames the stream itself and
 * hands each literal to the session, which chooses to buffer it, stream it or refuse it.
 *
 * Commands are read segment by segment: a segment is the text up to CRLF; a segment that ends with
 * a literal marker (`{n}`, `{n+}`, `~{n}`) is followed by n raw octets and then the next segment of
 * the same command. The parse state (open lists, the section of a fetch attribute) carries across
 * segments, so a literal may appear wherever a string may.
 */
import { atom, type Atom, type ImapValue } from './values.js';

/** Limits the reader enforces while it reads. */
export interface ReaderLimits {
  /** Longest command, its literals excluded (all its segments together, CRLFs not counted). */
  maxLineBytes: number;
  /** Largest literal the reader collects into a Buffer (`take: 'buffer'`); streamed ones are the session's to bound. */
  maxLiteralBytes: number;
}

/** Where a streamed literal's octets go, in order, as they arrive; `end` once all have. */
export interface LiteralSink {
  write(chunk: Buffer): void;
  end(): void;
}

/** The session's answer to a 'literal' event. */
export type LiteralDecision =
  /** Collect into a Buffer. Over maxLiteralBytes the reader reads and drops the octets and gives a 'bad'. */
  | { take: 'buffer' }
  /** Hand the octets to `sink` as they arrive, then `sink.end()`; the value in args is an empty Buffer. */
  | { take: 'stream'; sink: LiteralSink }
  /**
   * Refuse: the session writes `refuse` (a whole response line, CRLF included) and the command is
   * dropped. For a synchronizing literal the client sends nothing more of it; for a
   * non-synchronizing one (RFC 7888 §4, LITERAL-) the reader discards exactly its octets and the
   * rest of the command.
   */
  | { refuse: string };

/** What the reader has for the session next. */
export type ReaderEvent =
  /** A whole command. `name` is upper-cased; `UID FETCH` is name 'UID' with args[0] the atom FETCH. */
  | { kind: 'command'; tag: string; name: string; args: ImapValue[] }
  /** A literal is announced; `args` holds the values so far. Answer with decide() before next(). */
  | { kind: 'literal'; tag: string; name: string; args: ImapValue[]; size: number; sync: boolean; binary: boolean }
  /** A raw line (without CRLF), only while expectLine is set (AUTHENTICATE responses, IDLE's DONE). */
  | { kind: 'line'; text: string }
  /** A syntax error or a limit; `text` says which. `fatal`: the stream cannot be resynchronised, close it. */
  | { kind: 'bad'; tag: string | undefined; text: string; fatal: boolean };

/**
 * Deepest nesting of parenthesised lists and `[section]`s in one command. The deepest a real
 * client goes is a SEARCH with grouped keys or a fetch attribute's header list inside a list
 * (depth 3); the handlers that walk these values (SEARCH above all) recurse, so the cap keeps a
 * hostile `((((...` from reaching them.
 */
export const MAX_NESTING = 16;

/** RFC 9051 §9: `number` is an unsigned 32-bit integer; a literal's size is one. */
const MAX_NUMBER = 0xffffffff;

/** Octets of a skipped line kept to see a literal marker at its end (`~{4294967295+}` is 14). */
const TAIL_KEEP = 24;

const SP = 0x20;
const CR = 0x0d;
const LF = 0x0a;
const DQUOTE = 0x22;
const BACKSLASH = 0x5c;
const LPAREN = 0x28;
const RPAREN = 0x29;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const LT = 0x3c;
const GT = 0x3e;
const PLUS = 0x2b;
const TILDE = 0x7e;
const STAR = 0x2a;

/**
 * RFC 9051 §9 ATOM-CHAR: any CHAR except atom-specials `( ) {` SP CTL `% *` `" \` `]`. Values here
 * also take the list wildcards `% *` (LIST patterns, the `*` of `1:*`) and `]` outside a section
 * (astring, e.g. `[Gmail]/Sent`): the reader does not know which argument wants which.
 */
const ATOM_CHAR = new Uint8Array(256);
const VALUE_CHAR = new Uint8Array(256);
/** RFC 9051 §9 `tag`: ASTRING-CHAR except `+`. */
const TAG_CHAR = new Uint8Array(256);
for (let c = 0x21; c < 0x7f; c++) {
  const special = '(){%*"\\]'.includes(String.fromCharCode(c));
  ATOM_CHAR[c] = special ? 0 : 1;
  VALUE_CHAR[c] = special && !'%*]'.includes(String.fromCharCode(c)) ? 0 : 1;
  TAG_CHAR[c] = ATOM_CHAR[c] || c === RBRACKET ? (c === PLUS ? 0 : 1) : 0;
}

/** Fetch attributes that take a `[section]` (RFC 9051 §6.4.5, RFC 3516 §4.2). */
const SECTION_ATOMS = new Set(['BODY', 'BODY.PEEK', 'BINARY', 'BINARY.PEEK', 'BINARY.SIZE']);

/** An open list or section while a command is parsed. */
interface Frame {
  items: ImapValue[];
  close: typeof RPAREN | typeof RBRACKET;
  /** The fetch attribute a `[section]` belongs to (its `<partial>` follows the `]`). */
  owner?: Atom;
}

/** How a segment ended. */
type SegmentEnd = { kind: 'done' } | { kind: 'literal'; size: number; sync: boolean; binary: boolean } | { kind: 'error'; text: string };

/** What the reader is doing with the bytes in front of it. */
type Mode =
  | { kind: 'segment' }
  | { kind: 'decide'; size: number; sync: boolean }
  | { kind: 'buffer'; size: number }
  | { kind: 'stream'; left: number; sink: LiteralSink }
  /** Dropping a literal's octets, then the rest of the command. */
  | { kind: 'skip'; left: number }
  /** Dropping up to the next LF; a non-synchronizing literal at the end is dropped too. */
  | { kind: 'discard'; tail: Buffer; literals: boolean }
  | { kind: 'dead' };

/** A byte queue over the pushed chunks: no copying until a piece spans chunks. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The first chunk, or undefined when empty. */
  peek(): Buffer | undefined {
    return this.chunks[this.head];
  }

  /** Removes and returns up to `max` octets of the first chunk (no copy). */
  shift(max: number): Buffer {
    const first = this.chunks[this.head]!;
    if (first.length <= max) {
      this.chunks[this.head++] = EMPTY;
      if (this.head > 64) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      }
      this.length -= first.length;
      return first;
    }
    this.chunks[this.head] = first.subarray(max);
    this.length -= max;
    return first.subarray(0, max);
  }

  /** Removes and returns exactly `n` octets (n <= length). */
  take(n: number): Buffer {
    const first = this.shift(n);
    if (first.length === n) return first;
    const parts = [first];
    let got = first.length;
    while (got < n) {
      const part = this.shift(n - got);
      parts.push(part);
      got += part.length;
    }
    return Buffer.concat(parts, n);
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Turns the client's bytes into IMAP commands. Push what arrives with push(), then call next()
 * until it returns undefined. Never throws on any input, and holds at most one command line
 * (maxLineBytes) plus one buffered literal (maxLiteralBytes) beyond what was pushed and not yet read.
 */
export class CommandReader {
  /** While true, next() gives the next whole line raw (AUTHENTICATE continuations, IDLE's DONE). */
  expectLine = false;

  private readonly queue = new ByteQueue();
  private readonly events: ReaderEvent[] = [];
  private mode: Mode = { kind: 'segment' };
  /** The current segment's octets before its LF, held while it is incomplete. */
  private lineParts: Buffer[] = [];
  private lineLength = 0;

  // The command being parsed (reset at each command's end).
  private inCommand = false;
  private tag: string | undefined;
  private name = '';
  private args: ImapValue[] = [];
  private frames: Frame[] = [];
  /** True when the last thing parsed was a value, so the next must be SP or a closer. */
  private afterValue = false;
  /** Segment octets of this command so far, for maxLineBytes. */
  private lineUsed = 0;

  constructor(private readonly limits: ReaderLimits) {}

  /** Octets pushed and not yet turned into events (for backpressure). */
  get pending(): number {
    return this.queue.length + this.lineLength;
  }

  /** Adds bytes received from the client. */
  push(chunk: Buffer): void {
    if (this.mode.kind !== 'dead') this.queue.push(chunk);
  }

  /** The next event, or undefined when more bytes are needed (or a decide() is awaited). */
  next(): ReaderEvent | undefined {
    for (;;) {
      const queued = this.events.shift();
      if (queued) return queued;
      if (!this.step()) return undefined;
    }
  }

  /**
   * Answers the last 'literal' event. For a synchronizing literal the session then writes `+ ...`
   * if it took it (RFC 9051 §7.5), or its refusal line. Check the size against maxLiteralBytes
   * before taking 'buffer': above it the reader reads and drops the octets and gives a 'bad'.
   * Calling decide() with no literal pending is a programming error and throws.
   */
  decide(d: LiteralDecision): void {
    if (this.mode.kind !== 'decide') throw new Error('CommandReader.decide() without a pending literal');
    const { size, sync } = this.mode;
    if ('refuse' in d) {
      if (sync) this.endCommand();
      else this.mode = { kind: 'skip', left: size };
    } else if (d.take === 'stream') {
      this.mode = { kind: 'stream', left: size, sink: d.sink };
    } else if (size > this.limits.maxLiteralBytes) {
      // The session may already have sent `+`: read the octets, keep none, then refuse the command.
      this.bad(`literal of ${size} octets is over the limit of ${this.limits.maxLiteralBytes}`);
      this.mode = { kind: 'skip', left: size };
    } else {
      this.mode = { kind: 'buffer', size };
    }
  }

  /** Does one unit of work; false when it needs more bytes or a decision. */
  private step(): boolean {
    const mode = this.mode;
    switch (mode.kind) {
      case 'dead':
      case 'decide':
        return false;
      case 'buffer': {
        if (this.queue.length < mode.size) return false;
        this.addValue(this.queue.take(mode.size));
        this.mode = { kind: 'segment' };
        return true;
      }
      case 'stream': {
        while (mode.left > 0 && this.queue.length > 0) {
          const piece = this.queue.shift(mode.left);
          mode.left -= piece.length;
          mode.sink.write(piece);
        }
        if (mode.left > 0) return false;
        mode.sink.end();
        this.addValue(EMPTY);
        this.mode = { kind: 'segment' };
        return true;
      }
      case 'skip': {
        while (mode.left > 0 && this.queue.length > 0) mode.left -= this.queue.shift(mode.left).length;
        if (mode.left > 0) return false;
        this.mode = { kind: 'discard', tail: EMPTY, literals: true };
        return true;
      }
      case 'discard':
        return this.discardLine(mode);
      case 'segment':
        return this.readSegment();
    }
  }

  /** Collects the next segment up to LF and parses it (or hands it out raw in line mode). */
  private readSegment(): boolean {
    const lineMode = this.expectLine && !this.inCommand;
    const allowance = lineMode ? this.limits.maxLineBytes : this.limits.maxLineBytes - this.lineUsed;
    for (;;) {
      const chunk = this.queue.peek();
      if (!chunk) return false;
      const lf = chunk.indexOf(LF);
      if (lf < 0) {
        this.lineParts.push(this.queue.shift(chunk.length));
        this.lineLength += chunk.length;
        // allowance octets and a CR may still be followed by a valid LF.
        if (this.lineLength > allowance + 1) {
          const held = Buffer.concat(this.lineParts);
          this.clearLine();
          this.tooLong(held, lineMode);
          this.mode = { kind: 'discard', tail: held.subarray(Math.max(0, held.length - TAIL_KEEP)), literals: !lineMode };
          return true;
        }
        continue;
      }
      this.lineParts.push(this.queue.shift(lf + 1));
      const line = this.lineParts.length === 1 ? this.lineParts[0]! : Buffer.concat(this.lineParts);
      this.clearLine();
      const crlf = line.length >= 2 && line[line.length - 2] === CR;
      const segment = line.subarray(0, line.length - (crlf ? 2 : 1));
      if (segment.length > allowance) {
        this.tooLong(segment, lineMode);
        this.afterBadSegment(segment, !lineMode);
      } else if (!crlf) {
        this.bad('line ended by a bare LF (IMAP lines end with CRLF)');
        this.afterBadSegment(segment, !lineMode);
      } else if (lineMode) {
        this.events.push({ kind: 'line', text: segment.toString('utf8') });
      } else {
        this.lineUsed += segment.length;
        this.parseSegment(segment);
      }
      return true;
    }
  }

  private clearLine(): void {
    this.lineParts = [];
    this.lineLength = 0;
  }

  private tooLong(start: Buffer, lineMode: boolean): void {
    if (!this.inCommand && !lineMode) this.tag = tagOf(start);
    this.bad(`command line over ${this.limits.maxLineBytes} octets`);
  }

  /** Drops the bytes up to the next LF; a non-synchronizing literal announced at its end is dropped too. */
  private discardLine(mode: Extract<Mode, { kind: 'discard' }>): boolean {
    for (;;) {
      const chunk = this.queue.peek();
      if (!chunk) return false;
      const lf = chunk.indexOf(LF);
      const piece = this.queue.shift(lf < 0 ? chunk.length : lf + 1);
      const joined = Buffer.concat([mode.tail, piece.subarray(Math.max(0, piece.length - TAIL_KEEP - 2))]);
      mode.tail = joined.subarray(Math.max(0, joined.length - TAIL_KEEP - 2));
      if (lf >= 0) {
        const end = mode.tail[mode.tail.length - 2] === CR ? mode.tail.length - 2 : mode.tail.length - 1;
        this.afterBadSegment(mode.tail.subarray(0, end), mode.literals);
        return true;
      }
    }
  }

  /**
   * After a segment that will not be parsed: if it announced a non-synchronizing literal, the
   * client sends it anyway, so its octets and the rest of the command are dropped (otherwise they
   * would be read as commands: RFC 7888 §4 LITERAL-, and a command-injection risk). A
   * synchronizing literal is never sent without our `+`, so the command simply ends.
   */
  private afterBadSegment(segment: Buffer, literals: boolean): void {
    const lit = literals ? literalAtEnd(segment) : undefined;
    if (lit && !lit.sync) {
      if (lit.size === undefined) {
        this.events.push({ kind: 'bad', tag: this.tag, text: 'non-synchronizing literal size out of range', fatal: true });
        this.mode = { kind: 'dead' };
        while (this.queue.length > 0) this.queue.shift(this.queue.length);
        return;
      }
      this.mode = { kind: 'skip', left: lit.size };
      return;
    }
    this.endCommand();
  }

  private bad(text: string): void {
    this.events.push({ kind: 'bad', tag: this.tag, text, fatal: false });
  }

  /** Resets the command state; the next segment starts a new command. */
  private endCommand(): void {
    this.mode = { kind: 'segment' };
    this.inCommand = false;
    this.tag = undefined;
    this.name = '';
    this.args = [];
    this.frames = [];
    this.afterValue = false;
    this.lineUsed = 0;
  }

  private addValue(v: ImapValue): void {
    const frame = this.frames[this.frames.length - 1];
    (frame ? frame.items : this.args).push(v);
    this.afterValue = true;
  }

  /** Parses one complete segment and queues the event it ends with. */
  private parseSegment(seg: Buffer): void {
    let i = 0;
    if (!this.inCommand) {
      const head = this.parseHead(seg);
      if (typeof head === 'string') return this.failSegment(seg, head);
      i = head;
      this.inCommand = true;
    }
    const end = this.parseValues(seg, i);
    if (end.kind === 'error') return this.failSegment(seg, end.text);
    if (end.kind === 'literal') {
      this.mode = { kind: 'decide', size: end.size, sync: end.sync };
      this.events.push({ kind: 'literal', tag: this.tag!, name: this.name, args: this.args, size: end.size, sync: end.sync, binary: end.binary });
      return;
    }
    if (this.frames.length > 0) {
      const open = this.frames[this.frames.length - 1]!.close === RPAREN ? "'('" : "'['";
      return this.failSegment(seg, `${open} not closed at the end of the command`);
    }
    this.events.push({ kind: 'command', tag: this.tag!, name: this.name, args: this.args });
    this.endCommand();
  }

  private failSegment(seg: Buffer, text: string): void {
    // An unskippable literal gets the one (fatal) bad from afterBadSegment instead.
    const lit = literalAtEnd(seg);
    if (!lit || lit.sync || lit.size !== undefined) this.bad(text);
    this.afterBadSegment(seg, true);
  }

  /** Reads `tag SP name`; returns the offset after the name, or the error text. */
  private parseHead(seg: Buffer): number | string {
    if (seg.length === 0) return 'empty command line';
    let i = 0;
    while (i < seg.length && TAG_CHAR[seg[i]!]) i++;
    if (i === 0 || (i < seg.length && seg[i] !== SP)) return 'missing or malformed tag';
    this.tag = seg.toString('latin1', 0, i);
    const start = ++i;
    while (i < seg.length && ATOM_CHAR[seg[i]!]) i++;
    if (i < seg.length && seg[i] !== SP && i > start && !VALUE_CHAR[seg[i]!] && seg[i] !== LPAREN) return describeBadOctet(seg[i]!);
    if (i === start || (i < seg.length && seg[i] !== SP)) return 'missing or malformed command name';
    this.name = seg.toString('latin1', start, i).toUpperCase();
    this.afterValue = true;
    return i;
  }

  /** Parses values from `i` to the end of the segment. */
  private parseValues(seg: Buffer, i: number): SegmentEnd {
    while (i < seg.length) {
      const c = seg[i]!;
      const top = this.frames[this.frames.length - 1];
      if (c === SP) {
        this.afterValue = false;
        i++;
        continue;
      }
      if (top && c === top.close) {
        this.frames.pop();
        i++;
        if (top.owner) {
          const partial = parsePartial(seg, i);
          if (typeof partial === 'string') return { kind: 'error', text: partial };
          if (partial) {
            top.owner.partial = partial.value;
            i = partial.end;
          }
        }
        this.afterValue = true;
        continue;
      }
      if (c === RPAREN) return { kind: 'error', text: "')' without a matching '('" };
      if (!VALUE_CHAR[c] && c !== LPAREN && c !== DQUOTE && c !== LBRACE && c !== BACKSLASH) return { kind: 'error', text: describeBadOctet(c) };
      if (this.afterValue) return { kind: 'error', text: `expected a space before '${printable(c)}'` };
      if (c === LPAREN) {
        if (this.frames.length >= MAX_NESTING) return { kind: 'error', text: `lists nested deeper than ${MAX_NESTING}` };
        const list: ImapValue[] = [];
        this.addValue(list);
        this.frames.push({ items: list, close: RPAREN });
        this.afterValue = false;
        i++;
      } else if (c === DQUOTE) {
        const q = parseQuoted(seg, i);
        if (typeof q === 'string') return { kind: 'error', text: q };
        this.addValue(q.value);
        i = q.end;
      } else if (c === LBRACE || (c === TILDE && seg[i + 1] === LBRACE)) {
        return parseLiteralMarker(seg, i);
      } else if (c === BACKSLASH) {
        // A flag (RFC 9051 §9 `flag`): `\` atom, or `\*` in PERMANENTFLAGS-like lists.
        let j = i + 1;
        if (seg[j] === STAR) j++;
        else while (j < seg.length && ATOM_CHAR[seg[j]!]) j++;
        if (j === i + 1) return { kind: 'error', text: "'\\' not followed by a flag name" };
        this.addValue(atom(seg.toString('latin1', i, j)));
        i = j;
      } else {
        const next = this.parseAtom(seg, i, top);
        if (typeof next === 'string') return { kind: 'error', text: next };
        i = next;
      }
    }
    return { kind: 'done' };
  }

  /**
   * An atom from `i`; a fetch attribute's name followed by `[` opens its section instead. Returns
   * the offset after it, or the error text.
   */
  private parseAtom(seg: Buffer, i: number, top: Frame | undefined): number | string {
    const inSection = top?.close === RBRACKET;
    let j = i;
    while (j < seg.length && VALUE_CHAR[seg[j]!] && !(seg[j] === RBRACKET && inSection)) {
      if (seg[j] === LBRACKET && SECTION_ATOMS.has(seg.toString('latin1', i, j).toUpperCase())) break;
      j++;
    }
    const value = seg.toString('latin1', i, j);
    if (seg[j] !== LBRACKET) {
      this.addValue(value.toUpperCase() === 'NIL' ? null : atom(value));
      return j;
    }
    if (this.frames.length >= MAX_NESTING) return `lists nested deeper than ${MAX_NESTING}`;
    const owner = atom(value, { section: [] });
    this.addValue(owner);
    this.frames.push({ items: owner.section!, close: RBRACKET, owner });
    this.afterValue = false;
    return j + 1;
  }
}

/** The tag at the start of an over-long line, if it has a well-formed one. */
function tagOf(start: Buffer): string | undefined {
  let i = 0;
  while (i < start.length && TAG_CHAR[start[i]!]) i++;
  return i > 0 && start[i] === SP ? start.toString('latin1', 0, i) : undefined;
}

/** A quoted string (RFC 9051 §9 `quoted`: only `\"` and `\\` escapes; UTF-8 allowed, IMAP4rev2). */
function parseQuoted(seg: Buffer, start: number): { value: string; end: number } | string {
  let pieces: Buffer[] | undefined;
  let from = start + 1;
  for (let i = from; i < seg.length; i++) {
    const c = seg[i]!;
    if (c === DQUOTE) {
      if (!pieces) return { value: seg.toString('utf8', from, i), end: i + 1 };
      pieces.push(seg.subarray(from, i));
      return { value: Buffer.concat(pieces).toString('utf8'), end: i + 1 };
    }
    if (c === BACKSLASH) {
      const next = seg[i + 1];
      if (next !== DQUOTE && next !== BACKSLASH) return 'only \\" and \\\\ may be escaped in a quoted string';
      (pieces ??= []).push(seg.subarray(from, i));
      from = i + 1;
      i++;
    } else if (c === 0 || c === CR) {
      return describeBadOctet(c);
    }
  }
  return 'quoted string not closed';
}

/** `{n}`, `{n+}`, `~{n}`, `~{n+}` at `i`; it must end the segment (RFC 9051 §4.3). */
function parseLiteralMarker(seg: Buffer, i: number): SegmentEnd {
  const binary = seg[i] === TILDE;
  let j = binary ? i + 2 : i + 1;
  const digits = j;
  while (j < seg.length && seg[j]! >= 0x30 && seg[j]! <= 0x39) j++;
  const size = j > digits && j - digits <= 10 ? Number(seg.toString('latin1', digits, j)) : NaN;
  const sync = seg[j] !== PLUS;
  if (!sync) j++;
  if (seg[j] !== RBRACE || !(size <= MAX_NUMBER)) return { kind: 'error', text: 'malformed literal size' };
  if (j + 1 !== seg.length) return { kind: 'error', text: 'a literal size must end the line' };
  return { kind: 'literal', size, sync, binary };
}

/** A literal marker at the very end of `seg`, read backwards; size undefined when out of range. */
function literalAtEnd(seg: Buffer): { size: number | undefined; sync: boolean } | undefined {
  let j = seg.length - 1;
  if (seg[j] !== RBRACE) return undefined;
  j--;
  const sync = seg[j] !== PLUS;
  if (!sync) j--;
  const last = j;
  while (j >= 0 && seg[j]! >= 0x30 && seg[j]! <= 0x39) j--;
  if (j === last || seg[j] !== LBRACE) return undefined;
  const size = last - j <= 10 ? Number(seg.toString('latin1', j + 1, last + 1)) : Infinity;
  return { size: size <= MAX_NUMBER ? size : undefined, sync };
}

/** `<start>` or `<start.length>` after a section (RFC 9051 §9 `section-partial`), if present. */
function parsePartial(seg: Buffer, i: number): { value: { start: number; length?: number }; end: number } | string | undefined {
  if (seg[i] !== LT) return undefined;
  const close = seg.indexOf(GT, i);
  const m = close < 0 ? null : /^(\d{1,10})(?:\.(\d{1,10}))?$/.exec(seg.toString('latin1', i + 1, close));
  if (!m) return 'malformed <partial> after a section';
  const start = Number(m[1]);
  const length = m[2] === undefined ? undefined : Number(m[2]);
  if (start > MAX_NUMBER || (length !== undefined && (length === 0 || length > MAX_NUMBER))) return 'malformed <partial> after a section';
  return { value: length === undefined ? { start } : { start, length }, end: close + 1 };
}

function printable(c: number): string {
  return c > 0x20 && c < 0x7f ? String.fromCharCode(c) : `0x${c.toString(16).padStart(2, '0')}`;
}

/** Says what is wrong with an octet that may not appear outside a quoted string or literal. */
function describeBadOctet(c: number): string {
  if (c === 0) return 'NUL octet in command';
  if (c === CR) return 'bare CR in command line';
  if (c >= 0x80) return '8-bit octet outside a quoted string or literal';
  if (c < 0x20 || c === 0x7f) return `control character 0x${c.toString(16).padStart(2, '0')} in command`;
  return `unexpected '${printable(c)}'`;
}
