/**
 * Streaming line handling for mailbox files: splits a byte stream into line pieces without ever
 * buffering more than `maxPiece` bytes of one line (a message may hold a megabyte-long line).
 */

/** A piece of a line: the whole line when short, else consecutive parts of it. */
export interface LinePiece {
  /** The bytes, without the line feed (a CR before it is kept; callers strip it). */
  data: Buffer;
  /** True when this piece starts a line. */
  start: boolean;
  /** True when a line feed ended this piece. */
  eol: boolean;
  /** Offset of the first byte of `data` in the stream. */
  offset: number;
}

/** Splits a stream into LinePieces. */
export async function* linePieces(source: AsyncIterable<Buffer | string>, maxPiece = 64 * 1024): AsyncGenerator<LinePiece> {
  let buf: Buffer = Buffer.alloc(0);
  let bufOffset = 0;
  let start = true;
  for await (const raw of source) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : raw;
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    let from = 0;
    let i: number;
    while ((i = buf.indexOf(10, from)) >= 0) {
      yield { data: buf.subarray(from, i), start, eol: true, offset: bufOffset + from };
      start = true;
      from = i + 1;
    }
    buf = buf.subarray(from);
    bufOffset += from;
    if (buf.length > maxPiece) {
      // Keep a trailing CR back: it may be the first half of a CRLF split across chunks.
      const cut = buf[buf.length - 1] === 13 ? buf.length - 1 : buf.length;
      yield { data: buf.subarray(0, cut), start, eol: false, offset: bufOffset };
      start = false;
      buf = Buffer.from(buf.subarray(cut));
      bufOffset += cut;
    }
  }
  if (buf.length) yield { data: buf, start, eol: false, offset: bufOffset };
}

/** Strips one trailing CR from a piece that ended a line. */
export function stripCr(p: LinePiece): Buffer {
  return p.eol && p.data.length && p.data[p.data.length - 1] === 13 ? p.data.subarray(0, -1) : p.data;
}
