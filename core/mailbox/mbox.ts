/**
 * mbox files (RFC 4155, the "mboxrd" variant for writing): reading splits on `From ` separator
 * lines and undoes `>From ` quoting; writing quotes every `>*From ` line with one more `>`, so a
 * round trip is lossless.
 */
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { linePieces, stripCr } from './lines.js';

const FROM = Buffer.from('From ');
const CRLF = Buffer.from('\r\n');
const LF = Buffer.from('\n');

/** True for a line that needs (or, reading, had) `>` quoting: `>*From ` at its start. */
function isQuotedFrom(line: Buffer): boolean {
  let i = 0;
  while (i < line.length && line[i] === 0x3e) i++;
  return line.subarray(i, i + 5).equals(FROM);
}

/** A message found in an mbox file. */
export interface MboxMessage {
  /** 1-based position in the file. */
  index: number;
  /** The separator line after `From `, e.g. `alice@example.org Tue Nov 25 10:00:00 2025`. */
  separator: string;
  /** The date from the separator, when it parses. */
  date?: Date;
}

/** Where a parsed message's bytes go; `end` is called once at its end. */
export interface MessageSink {
  write(data: Buffer): Promise<void> | void;
  end(): Promise<void> | void;
}

function separatorDate(sep: string): Date | undefined {
  // RFC 4155 §2: "From " sender SP asctime date, e.g. "Tue Nov 25 10:00:00 2025" (maybe a zone).
  const rest = sep.slice(sep.indexOf(' ') + 1).trim();
  const t = Date.parse(rest);
  return Number.isNaN(t) ? undefined : new Date(t);
}

/**
 * Reads an mbox stream, calling `open` for each message and writing its content (CRLF line
 * ends, `>From ` quoting undone, the blank separator line dropped) into the sink it returns.
 * Throws when the stream does not start with a `From ` line.
 */
export async function readMbox(input: Readable, open: (m: MboxMessage) => Promise<MessageSink>): Promise<number> {
  let sink: MessageSink | undefined;
  let index = 0;
  let pendingBlank = 0;
  let midLine = false;
  for await (const p of linePieces(input)) {
    if (p.start && p.data.subarray(0, 5).equals(FROM)) {
      if (sink) {
        // The one blank line before a separator belongs to the mbox format, not to the message.
        for (; pendingBlank > 1; pendingBlank--) await sink.write(CRLF);
        await sink.end();
      }
      const separator = stripCr(p).subarray(5).toString('latin1');
      index++;
      sink = await open({ index, separator, date: separatorDate(separator) });
      pendingBlank = 0;
      if (!p.eol) midLine = true; // an absurdly long separator: skip the rest of it
      continue;
    }
    if (!sink) {
      if (p.data.length === 0 && p.eol) continue; // blank lines before the first message
      throw new Error('not an mbox file: it does not start with a "From " line');
    }
    if (midLine && !p.start) {
      midLine = !p.eol;
      continue;
    }
    midLine = false;
    let data = stripCr(p);
    if (p.start && p.eol && data.length === 0) {
      pendingBlank++;
      continue;
    }
    for (; pendingBlank > 0; pendingBlank--) await sink.write(CRLF);
    if (p.start && data[0] === 0x3e && isQuotedFrom(data)) data = data.subarray(1);
    await sink.write(data);
    if (p.eol) await sink.write(CRLF);
  }
  if (sink) {
    // At the end of the file, the last message's trailing blank line is the separator too.
    for (; pendingBlank > 1; pendingBlank--) await sink.write(CRLF);
    await sink.end();
  }
  return index;
}

/** Appends one message to an mbox stream (mboxrd quoting, LF line ends, a blank line after). */
export async function writeMboxMessage(out: Writable, message: Readable, envelope: { from: string; date: Date }): Promise<void> {
  const write = async (b: Buffer) => {
    if (!out.write(b)) await once(out, 'drain');
  };
  // RFC 4155 §2: the separator carries the envelope sender and a UTC asctime date.
  const d = envelope.date;
  const asctime = `${d.toUTCString().slice(0, 3)} ${d.toUTCString().slice(8, 11)} ${String(d.getUTCDate()).padStart(2, ' ')} ${d.toISOString().slice(11, 19)} ${d.getUTCFullYear()}`;
  await write(Buffer.from(`From ${envelope.from.replace(/\s/g, '') || 'MAILER-DAEMON'} ${asctime}\n`));
  let endedWithEol = true;
  for await (const p of linePieces(message)) {
    const data = stripCr(p);
    if (p.start && isQuotedFrom(data)) await write(Buffer.from('>'));
    await write(data);
    if (p.eol) await write(LF);
    endedWithEol = p.eol;
  }
  if (!endedWithEol) await write(LF);
  await write(LF);
}

/** SHA-256 (hex) of a byte stream, the stable import key of a message. */
export function sha256Hasher(): { update(b: Buffer): void; digest(): string } {
  const h = createHash('sha256');
  return { update: (b) => void h.update(b), digest: () => h.digest('hex') };
}
