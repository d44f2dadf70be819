/**
 * Bytes -> SMTP protocol units, with no I/O: command lines, DATA content (dot-unstuffed, ended
 * only by CRLF.CRLF) and BDAT chunks (counted octets). The session tells the reader which unit it
 * expects next; `next()` returns one event at a time or `need-more` (STYLE.md example 2).
 *
 * SMTP smuggling defence (RFC 5321 §4.1.1.4, §2.3.8): in DATA only `<CRLF>.<CRLF>` ends the
 * message. A bare LF or bare CR never starts a line for end-of-data purposes; it is recorded in
 * `DataStats` so the session can refuse the message, so a `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`
 * or `<CR>.<LF>` sequence can never end one message and start another.
 */

/** One unit read from the client. */
export type ReaderEvent =
  /** A command line without its line ending. `bareLf` when it ended in LF alone. */
  | { type: 'line'; line: Buffer; bareLf: boolean }
  /** A command line passed the limit; its bytes up to the next LF were dropped. */
  | { type: 'line-too-long' }
  /** Message content (DATA: unstuffed, line endings as sent; BDAT: raw octets). */
  | { type: 'data'; chunk: Buffer }
  /** DATA ended with CRLF.CRLF, or the BDAT chunk's octet count was reached. */
  | { type: 'data-end' }
  /** Nothing complete is buffered. */
  | { type: 'need-more' };

/** What the reader saw in the DATA content just ended (or the BDAT octets so far). */
export interface DataStats {
  /** Content octets after dot-unstuffing. */
  bytes: number;
  /** An LF not preceded by CR was seen. */
  bareLf: boolean;
  /** A CR not followed by LF was seen. */
  bareCr: boolean;
  /** The longest line, in octets including its CRLF. */
  longestLine: number;
  /** Octets with the high bit set were seen. */
  eightBit: boolean;
}

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

type Mode = { kind: 'line' } | { kind: 'data'; atLineStart: boolean } | { kind: 'bdat'; left: number };

/** Incremental SMTP reader: push() bytes in, call next() until it returns `need-more`. */
export class SmtpReader {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  private rest: Buffer[] = [];
  private queued = 0;
  private mode: Mode = { kind: 'line' };
  private discarding = false;
  private lineLen = 0;
  private stats: DataStats = newStats();

  /**
   * @param maxLineBytes Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4 sets
   *   512; AUTH lines may be longer, RFC 4954 §4 allows 12288, so the session checks 512 itself).
   */
  constructor(private readonly maxLineBytes = 12288) {}

  /** Adds received bytes. Chunks are queued, not concatenated: a unit that spans two chunks
   * (a partial line, a CR or '.' at a chunk's end) merges only the small remainder. */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.queued += chunk.length;
    if (this.pos >= this.buf.length && this.rest.length === 0) {
      this.buf = chunk;
      this.pos = 0;
    } else this.rest.push(chunk);
  }

  /** Octets buffered and not yet returned. */
  get buffered(): number {
    return this.queued;
  }

  /** Drops everything buffered (RFC 3207 §4.2: nothing sent before the TLS handshake counts). */
  discard(): void {
    this.buf = Buffer.alloc(0);
    this.pos = 0;
    this.rest = [];
    this.queued = 0;
  }

  /** Moves to the next queued chunk when the current one is used up. */
  private advance(): void {
    while (this.pos >= this.buf.length && this.rest.length > 0) {
      this.buf = this.rest.shift()!;
      this.pos = 0;
    }
  }

  /** Joins the unread remainder of the current chunk with the next one; false when none is queued. */
  private mergeNext(): boolean {
    const next = this.rest.shift();
    if (!next) return false;
    this.buf = this.pos < this.buf.length ? Buffer.concat([this.buf.subarray(this.pos), next]) : next;
    this.pos = 0;
    return true;
  }

  private consumed(n: number): void {
    this.queued -= n;
  }

  /** The next units are DATA content up to CRLF.CRLF. */
  expectData(): void {
    this.mode = { kind: 'data', atLineStart: true };
    this.stats = newStats();
    this.lineLen = 0;
  }

  /** The next `size` octets are a BDAT chunk. Stats carry over between chunks of one message. */
  expectBdat(size: number, first: boolean): void {
    this.mode = { kind: 'bdat', left: size };
    if (first) {
      this.stats = newStats();
      this.lineLen = 0;
      this.bdatCr = false;
    }
  }

  /** Statistics of the DATA content or BDAT octets read since expectData / the first expectBdat. */
  dataStats(): DataStats {
    return this.stats;
  }

  /** Whether the reader is in the middle of DATA / BDAT content. */
  get inData(): boolean {
    return this.mode.kind !== 'line';
  }

  private bdatCr = false;

  /** Returns the next unit, or `need-more`. */
  next(): ReaderEvent {
    for (;;) {
      this.advance();
      const before = this.pos;
      let ev: ReaderEvent;
      switch (this.mode.kind) {
        case 'line':
          ev = this.nextLine();
          break;
        case 'data':
          ev = this.nextData(this.mode);
          break;
        case 'bdat':
          ev = this.nextBdat(this.mode);
          break;
      }
      this.consumed(this.pos - before);
      if (ev.type !== 'need-more') return ev;
      // The current chunk alone cannot complete a unit: join it with the next, if any.
      if (!this.mergeNext()) return ev;
    }
  }

  private nextLine(): ReaderEvent {
    const buf = this.buf;
    for (;;) {
      if (this.pos >= buf.length) return { type: 'need-more' };
      const lf = buf.indexOf(LF, this.pos);
      if (lf < 0) {
        if (buf.length - this.pos > this.maxLineBytes) {
          // Drop what we have and the rest of the line when it comes.
          this.pos = buf.length;
          if (!this.discarding) {
            this.discarding = true;
            return { type: 'line-too-long' };
          }
        }
        return { type: 'need-more' };
      }
      const start = this.pos;
      this.pos = lf + 1;
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      if (lf + 1 - start > this.maxLineBytes) return { type: 'line-too-long' };
      const bareLf = lf === start || buf[lf - 1] !== CR;
      return { type: 'line', line: buf.subarray(start, bareLf ? lf : lf - 1), bareLf };
    }
  }

  private nextData(mode: { kind: 'data'; atLineStart: boolean }): ReaderEvent {
    const buf = this.buf;
    const len = buf.length;
    let i = this.pos;
    if (i >= len) return { type: 'need-more' };
    if (mode.atLineStart && buf[i] === DOT) {
      // RFC 5321 §4.5.2: a line starting with '.' has it removed; '.' CRLF alone ends the data.
      if (i + 1 >= len) return { type: 'need-more' };
      if (buf[i + 1] === CR) {
        if (i + 2 >= len) return { type: 'need-more' };
        if (buf[i + 2] === LF) {
          this.pos = i + 3;
          this.mode = { kind: 'line' };
          return { type: 'data-end' };
        }
      }
      // Not an end: drop the stuffed dot and go on with the line.
      i += 1;
      this.pos = i;
      this.lineLen = 1;
      mode.atLineStart = false;
      if (i >= len) return { type: 'need-more' };
    }
    mode.atLineStart = false;
    const start = i;
    const stats = this.stats;
    // Scan whole lines until the buffer ends or a line starts with '.', which the next call
    // handles (unstuffing or the end of data).
    let seg = i;
    let j = i;
    for (; j < len; j++) {
      const b = buf[j];
      if (b === CR) {
        if (j + 1 >= len) break; // a CR at the end: wait to see what follows
        if (buf[j + 1] !== LF) {
          stats.bareCr = true;
          continue;
        }
        j += 2;
        const line = this.lineLen + (j - seg);
        if (line > stats.longestLine) stats.longestLine = line;
        this.lineLen = 0;
        seg = j;
        if (j >= len || buf[j] === DOT) {
          mode.atLineStart = true;
          break;
        }
        j--; // the loop's j++ lands on the next line's first byte
      } else if (b === LF) {
        stats.bareLf = true;
      } else if (b > 0x7f) {
        stats.eightBit = true;
      }
    }
    if (!mode.atLineStart) {
      this.lineLen += j - seg;
      if (this.lineLen > stats.longestLine) stats.longestLine = this.lineLen;
    }
    this.pos = j;
    if (j === start) return { type: 'need-more' };
    stats.bytes += j - start;
    return { type: 'data', chunk: buf.subarray(start, j) };
  }

  private nextBdat(mode: { kind: 'bdat'; left: number }): ReaderEvent {
    if (mode.left === 0) {
      this.mode = { kind: 'line' };
      return { type: 'data-end' };
    }
    const avail = this.buf.length - this.pos;
    if (avail <= 0) return { type: 'need-more' };
    const n = Math.min(avail, mode.left);
    const chunk = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    mode.left -= n;
    this.scanBdat(chunk);
    return { type: 'data', chunk };
  }

  /** Line statistics over BDAT octets, which may split a CRLF between chunks. */
  private scanBdat(chunk: Buffer): void {
    const stats = this.stats;
    stats.bytes += chunk.length;
    let line = this.lineLen;
    for (let k = 0; k < chunk.length; k++) {
      const b = chunk[k];
      if (this.bdatCr && b !== LF) stats.bareCr = true;
      if (b === LF) {
        if (!this.bdatCr) stats.bareLf = true;
        line++;
        if (line > stats.longestLine) stats.longestLine = line;
        line = 0;
      } else {
        line++;
        if (b > 0x7f) stats.eightBit = true;
      }
      this.bdatCr = b === CR;
    }
    this.lineLen = line;
    if (line > stats.longestLine) stats.longestLine = line;
  }
}

function newStats(): DataStats {
  return { bytes: 0, bareLf: false, bareCr: false, longestLine: 0, eightBit: false };
}
