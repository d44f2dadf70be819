/**
 * POP3 input framing: bytes in, command lines out, with an explicit "need more data" result so the
 * parser never blocks and can be fed any chunking (STYLE.md example 2). Pure: no sockets.
 */

/** What the reader has for the caller next. */
export type LineResult =
  /** One complete line, without its line ending. */
  | { kind: 'line'; line: string }
  /** No complete line buffered yet: feed more bytes. */
  | { kind: 'need-more' }
  /** A line passed the length limit; its bytes up to the next LF were discarded. */
  | { kind: 'too-long' };

/**
 * RFC 2449 §4: "the maximum length of a command is increased from 47 characters ... to 255 octets,
 * including the terminating CRLF". We allow more than that (SASL responses, long passwords) but
 * keep a hard bound so that a client cannot make us buffer without end.
 * @default 1024
 */
export const DEFAULT_MAX_LINE = 1024;

const LF = 0x0a;
const CR = 0x0d;

/**
 * Splits the client's byte stream into lines ended by CRLF (a bare LF is accepted too, as most
 * servers do, since some clients send it). Lines are decoded as UTF-8.
 */
export class LineReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** True while skipping the rest of an over-long line. */
  private discarding = false;
  private reportTooLong = false;

  constructor(private maxLine: number = DEFAULT_MAX_LINE) {}

  /** Bytes waiting to be read as lines. */
  get pending(): number {
    return this.buffered;
  }

  /** Changes the limit for the lines read from now on (e.g. a SASL continuation). */
  setMaxLine(n: number): void {
    this.maxLine = n;
  }

  /** Appends bytes received from the client. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.buffered += chunk.length;
  }

  /** Forgets everything buffered (RFC 2595 §4: data sent before the TLS handshake is discarded). */
  clear(): void {
    this.chunks = [];
    this.buffered = 0;
    this.discarding = false;
    this.reportTooLong = false;
  }

  /** The next complete line, or need-more, or too-long (reported once per over-long line). */
  next(): LineResult {
    for (;;) {
      if (this.reportTooLong && !this.discarding) {
        this.reportTooLong = false;
        return { kind: 'too-long' };
      }
      const lf = this.indexOfLf();
      if (this.discarding) {
        if (lf < 0) {
          this.drop(this.buffered);
          return { kind: 'need-more' };
        }
        this.drop(lf + 1);
        this.discarding = false;
        continue;
      }
      if (lf < 0) {
        // The limit counts the line with its CRLF, so a line of maxLine-2 characters is fine.
        if (this.buffered > this.maxLine) {
          this.discarding = true;
          this.reportTooLong = true;
          continue;
        }
        return { kind: 'need-more' };
      }
      if (lf + 1 > this.maxLine) {
        this.drop(lf + 1);
        return { kind: 'too-long' };
      }
      const bytes = this.take(lf + 1);
      let end = bytes.length - 1;
      if (end > 0 && bytes[end - 1] === CR) end--;
      return { kind: 'line', line: bytes.toString('utf8', 0, end) };
    }
  }

  private indexOfLf(): number {
    let offset = 0;
    for (const c of this.chunks) {
      const i = c.indexOf(LF);
      if (i >= 0) return offset + i;
      offset += c.length;
    }
    return -1;
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      this.drop(n);
      return out;
    }
    const all = Buffer.concat(this.chunks, this.buffered);
    const out = all.subarray(0, n);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return out;
  }

  private drop(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      if (first.length <= n) {
        n -= first.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = first.subarray(n);
        n = 0;
      }
    }
  }
}
