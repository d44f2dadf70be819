/**
 * The body of a RETR or TOP response, made from the stored message chunk by chunk: line ends
 * normalised to CRLF, lines byte-stuffed, the termination line appended (RFC 1939 §3). Pure and
 * incremental, so a message of any size streams through a bounded buffer.
 */

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const TERMINATOR = Buffer.from('.\r\n');
const DOT_BUF = Buffer.from('.');
const CRLF_TERMINATOR = Buffer.from('\r\n.\r\n');

/** Options of the encoder. */
export interface EncoderOptions {
  /**
   * TOP: send the header, the blank line, then at most this many lines of the body (RFC 1939 §7).
   * @default undefined (RETR: the whole message)
   */
  topLines?: number;
}

/**
 * Incremental RETR/TOP encoder. RFC 1939 §3: "If any line begins with the termination octet, the
 * line is 'byte-stuffed' by pre-pending the termination octet to that line of the response." A bare
 * CR or bare LF in a stored message becomes CRLF, since POP3 lines end with CRLF.
 */
export class MessageEncoder {
  private atLineStart = true;
  private lineEmpty = true;
  private pendingCr = false;
  private inHeader: boolean;
  private bodyLinesLeft: number;
  private stuffed = 0;
  private written = 0;
  private finished = false;
  /** True once TOP has sent all it should; further input is ignored. */
  done = false;

  constructor(options: EncoderOptions = {}) {
    this.inHeader = options.topLines !== undefined;
    this.bodyLinesLeft = options.topLines ?? Infinity;
  }

  /** Octets of the message as sent with CRLF line ends, without stuffing and terminator. */
  get messageOctets(): number {
    return this.written - this.stuffed;
  }

  /** Encodes the next chunk of the stored message. */
  encode(chunk: Uint8Array): Buffer {
    if (this.done || chunk.length === 0) return Buffer.alloc(0);
    const clean = this.inHeader || this.bodyLinesLeft !== Infinity ? undefined : this.encodeClean(chunk);
    return clean ?? this.encodeBytes(chunk);
  }

  /**
   * The common case, a RETR chunk whose lines all end in CRLF: native indexOf scans instead of a
   * byte loop, and no copy when no line starts with a dot (see docs/performance.md, POP3). Returns undefined,
   * having changed nothing, when the chunk needs the general path (bare CR or LF, a CRLF split
   * across chunks).
   */
  private encodeClean(c: Uint8Array): Buffer | undefined {
    if (this.pendingCr) return undefined;
    const buf = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.length);
    let dots: number[] | undefined;
    let pos = 0;
    let lineStart = this.atLineStart;
    for (;;) {
      if (lineStart && pos < buf.length && buf[pos] === DOT) (dots ??= []).push(pos);
      const lf = buf.indexOf(LF, pos);
      const cr = buf.indexOf(CR, pos);
      if (lf < 0) {
        // A partial last line: it may hold no CR at all (a CR here is bare or split from its LF).
        if (cr >= 0) return undefined;
        lineStart = pos === buf.length ? lineStart : false;
        break;
      }
      // The LF must end a CRLF, and the line must hold no other CR.
      if (lf === 0 || cr !== lf - 1) return undefined;
      pos = lf + 1;
      lineStart = true;
      if (pos === buf.length) break;
    }
    this.atLineStart = lineStart;
    this.lineEmpty = lineStart;
    let out: Buffer = buf;
    if (dots) {
      const parts: Buffer[] = [];
      let from = 0;
      for (const d of dots) {
        parts.push(buf.subarray(from, d), DOT_BUF);
        from = d;
      }
      parts.push(buf.subarray(from));
      out = Buffer.concat(parts, buf.length + dots.length);
      this.stuffed += dots.length;
    }
    this.written += out.length;
    return out;
  }

  /** The general path: byte by byte, for TOP and for messages with bare CR or LF. */
  private encodeBytes(chunk: Uint8Array): Buffer {
    // Worst case every byte doubles (bare LF -> CRLF, "." -> ".."), plus a CRLF for a pending CR.
    const out = Buffer.allocUnsafe(chunk.length * 2 + 2);
    let o = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.pendingCr) {
        this.pendingCr = false;
        out[o++] = CR;
        out[o++] = LF;
        if (this.endLine()) break;
        if (b === LF) continue;
      }
      if (b === CR) {
        this.pendingCr = true;
      } else if (b === LF) {
        out[o++] = CR;
        out[o++] = LF;
        if (this.endLine()) break;
      } else {
        if (this.atLineStart) {
          this.atLineStart = false;
          this.lineEmpty = false;
          if (b === DOT) {
            out[o++] = DOT;
            this.stuffed++;
          }
        }
        out[o++] = b;
      }
    }
    this.written += o;
    return out.subarray(0, o);
  }

  /** The end of the response: a CRLF if the message did not end with one, then ".CRLF". */
  finish(): Buffer {
    if (this.finished) return Buffer.alloc(0);
    this.finished = true;
    if (this.pendingCr && !this.done) {
      this.pendingCr = false;
      this.written += 2;
      this.endLine();
      return CRLF_TERMINATOR;
    }
    if (!this.atLineStart && !this.done) {
      this.written += 2;
      return CRLF_TERMINATOR;
    }
    return TERMINATOR;
  }

  /** Bookkeeping at the end of a line; true when TOP has sent enough. */
  private endLine(): boolean {
    const wasEmpty = this.lineEmpty;
    this.atLineStart = true;
    this.lineEmpty = true;
    if (this.inHeader) {
      // RFC 1939 §7 (TOP): "the headers of the message, the blank line separating the headers from
      // the body, and then the number of lines of the indicated message's body".
      if (wasEmpty) {
        this.inHeader = false;
        if (this.bodyLinesLeft === 0) this.done = true;
      }
      return this.done;
    }
    if (this.bodyLinesLeft !== Infinity && --this.bodyLinesLeft <= 0) this.done = true;
    return this.done;
  }
}

/** encodeWhole rounds the buffers it allocates up to a multiple of this, for reuse. */
const REUSE_ROUNDING = 16 * 1024;

/** Line starts holding a dot, found by encodeWhole's scan (grown as needed, reused). */
let dotStarts = new Int32Array(256);

/**
 * A whole RETR response in one buffer: the status line `head`, the message byte-stuffed (RFC 1939
 * §3), a CRLF if the message does not end with one, and the terminator. Writes into `out` when it
 * is big enough (a connection reuses one buffer for all its responses); else allocates a buffer of
 * its own (response.buffer) that can be reused the same way. Only for
 * messages whose line ends are all CRLF, which is what SMTP stores: undefined for any other, and
 * the caller uses MessageEncoder. `octets` is the message as sent, before stuffing.
 */
export function encodeWhole(head: string, message: Buffer, out?: Buffer): { response: Buffer; octets: number } | undefined {
  // One native LF search per line (the line must end in CRLF, and a dot at its start is noted),
  // then a count of every CR: equal counts mean no bare CR anywhere (see docs/performance.md, POP3).
  const n = message.length;
  let dots = 0;
  let lines = 0;
  let pos = 0;
  while (pos < n) {
    if (message[pos] === DOT) {
      if (dots === dotStarts.length) {
        const grown = new Int32Array(dotStarts.length * 2);
        grown.set(dotStarts);
        dotStarts = grown;
      }
      dotStarts[dots++] = pos;
    }
    const lf = message.indexOf(LF, pos);
    if (lf < 0) break;
    if (lf === 0 || message[lf - 1] !== CR) return undefined;
    lines++;
    pos = lf + 1;
  }
  let crs = 0;
  for (let cr = message.indexOf(CR); cr >= 0; cr = message.indexOf(CR, cr + 1)) crs++;
  if (crs !== lines) return undefined;
  const open = pos < n; // a last line without its CRLF
  const octets = n + (open ? 2 : 0);
  const headLength = head.length;
  const size = headLength + octets + dots + TERMINATOR.length;
  // A buffer of its own (never a slice of Node's shared pool) with room to spare, so that the
  // caller can reuse it for the next response.
  const buf =
    out !== undefined && out.length >= size
      ? out
      : Buffer.allocUnsafeSlow(size <= REUSE_ROUNDING * 8 ? Math.ceil(size / REUSE_ROUNDING) * REUSE_ROUNDING : size);
  // The status line is a few ASCII characters: a loop beats Buffer.write's argument handling.
  for (let i = 0; i < headLength; i++) buf[i] = head.charCodeAt(i);
  let o = headLength;
  let from = 0;
  for (let i = 0; i < dots; i++) {
    const d = dotStarts[i]!;
    o += message.copy(buf, o, from, d);
    buf[o++] = DOT;
    from = d;
  }
  o += message.copy(buf, o, from, n);
  if (open) {
    buf[o++] = CR;
    buf[o++] = LF;
  }
  o += TERMINATOR.copy(buf, o);
  return { response: buf.subarray(0, o), octets };
}

/**
 * A streaming transform (usable with stream.pipeline / compose) from the stored message to the
 * RETR or TOP response body, terminator included. Stops reading the source once TOP has enough.
 */
export async function* encodeMessage(source: AsyncIterable<Uint8Array>, options: EncoderOptions = {}): AsyncGenerator<Buffer> {
  const encoder = new MessageEncoder(options);
  for await (const chunk of source) {
    const out = encoder.encode(chunk);
    if (out.length > 0) yield out;
    if (encoder.done) break;
  }
  yield encoder.finish();
}

/**
 * Octets a message has when sent with CRLF line ends (the size RFC 1939 §5 LIST reports), counted
 * by streaming it once.
 */
export async function crlfSize(source: AsyncIterable<Uint8Array>): Promise<number> {
  const encoder = new MessageEncoder();
  for await (const chunk of source) encoder.encode(chunk);
  encoder.finish();
  return encoder.messageOctets;
}
