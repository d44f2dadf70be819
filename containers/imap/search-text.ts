/**
 * Text matching for IMAP SEARCH (RFC 9051 §6.4.4): case-insensitive substring matches on decoded
 * text. Header values are unfolded and their encoded-words decoded (libmime); BODY and TEXT read
 * the message as a stream through @zone-eu/mailsplit's splitter, decode each text part from
 * base64 or quoted-printable with the splitter's own decoders and from its charset into Unicode
 * with a streaming TextDecoder, and compare chunk by chunk, keeping only the last needle-length of
 * text between chunks. Memory stays bounded whatever the message size: one chunk, the overlap, and
 * the top-level header block (bounded by `maxHeaderBytes`).
 */
import { Writable, type Readable, type Transform } from 'node:stream';
import { TextDecoder } from 'node:util';
import { Splitter, type MimeNode } from '@zone-eu/mailsplit';
import { headerFields as rawHeaderFields } from '../../core/mail/imap-envelope.js';
import libmime from 'libmime';

/**
 * The case folding both sides of a comparison go through. RFC 9051 §6.4.4 asks for
 * case-insensitive matching and leaves the rule to the server; this is Unicode lower case, with
 * the final sigma (which `toLowerCase` writes as ς depending on the next character, so it could
 * differ at a chunk boundary) folded to σ.
 */
export function foldCase(text: string): string {
  return text.toLowerCase().replace(/ς/g, 'σ');
}

/**
 * Finds several needles in text that arrives in pieces. Each `feed` continues the current run of
 * text; `restart` begins an unrelated one (another header field, another part) so that a match
 * never spans two. Keeps the last (longest needle - 1) folded characters between pieces.
 */
export class NeedleScanner {
  /** found[i] is true once needles[i] was seen. */
  readonly found: boolean[];
  private readonly folded: string[];
  private readonly overlap: number;
  private tail = '';
  private left: number;

  /** `needles` as the client sent them; they are case-folded here. */
  constructor(needles: string[]) {
    this.folded = needles.map(foldCase);
    this.found = this.folded.map((n) => n.length === 0);
    this.left = this.found.filter((f) => !f).length;
    this.overlap = Math.max(0, ...this.folded.map((n) => n.length - 1));
  }

  /** True when every needle has been found (reading further cannot change the answer). */
  get done(): boolean {
    return this.left === 0;
  }

  /** Continues the current run of text with `piece`. */
  feed(piece: string): void {
    if (this.left === 0 || piece.length === 0) return;
    const text = this.tail + foldCase(piece);
    for (let i = 0; i < this.folded.length; i++) {
      if (!this.found[i] && text.includes(this.folded[i]!)) {
        this.found[i] = true;
        this.left--;
      }
    }
    this.tail = this.overlap > 0 ? text.slice(-this.overlap) : '';
  }

  /** Starts an unrelated run of text. */
  restart(): void {
    this.tail = '';
  }
}

/** One header field: its lower-case name and its value unfolded, with encoded-words decoded. */
export interface HeaderField {
  name: string;
  value: string;
}

/** The fields of a raw header block (RFC 5322 §2.2), in order: split as ENVELOPE splits them
 * (core/mail/imap-envelope.ts), names lower-cased and values decoded for comparison. */
export function headerFields(block: Buffer | string): HeaderField[] {
  const raw = rawHeaderFields(Buffer.isBuffer(block) ? block : Buffer.from(block));
  return raw.map((f) => ({ name: f.name.toLowerCase(), value: decodeHeaderValue(f.value) }));
}

/** A header value as SEARCH compares it: unfolded (RFC 5322 §2.2.3), encoded-words decoded (RFC 2047), trimmed. */
export function decodeHeaderValue(raw: string): string {
  const unfolded = raw.replace(/\r?\n(?=[ \t])/g, '').trim();
  try {
    return libmime.decodeWords(unfolded);
  } catch {
    return unfolded;
  }
}

/** What one pass over a message looks for. */
export interface ScanRequest {
  /** BODY needles: the decoded text parts. */
  body: string[];
  /** TEXT needles: every header field (the MIME parts' too) and the decoded text parts. */
  text: string[];
  /** Octets of the top-level header block kept (and of any part's header read). @default 1 MiB */
  maxHeaderBytes?: number;
}

/** What a pass found: the top-level header block and, per needle, whether it occurs. */
export interface ScanResult {
  header: Buffer;
  body: boolean[];
  text: boolean[];
}

/** Thrown into the pipeline to stop reading once every needle was found. */
class AllFound extends Error {}

/**
 * Reads `raw` once, streaming, and reports which BODY and TEXT needles it holds, with the
 * top-level header block (for HEADER, BCC and sent-date keys). Stops reading as soon as every
 * needle was found. A malformed MIME structure is not an error: what was read before it counts.
 * An error of `raw` itself is thrown (a message that could not be read must not be reported as
 * not matching).
 *
 * Text parts are text/* leaves (text/html is matched as its source); attachments that are not
 * text are not searched, as Dovecot does without a full-text index. An attached message/rfc822
 * that is not transfer-encoded is opened by the splitter and its parts searched like the rest.
 */
export async function scanMessage(raw: Readable, request: ScanRequest): Promise<ScanResult> {
  const maxHeaderBytes = request.maxHeaderBytes ?? 1024 * 1024;
  const body = new NeedleScanner(request.body);
  const text = new NeedleScanner(request.text);
  const done = (): boolean => body.done && text.done;
  let header: Buffer = Buffer.alloc(0);

  let inputError: unknown;
  raw.once('error', (e) => (inputError ??= e));

  // The text leaf streaming now: its transfer decoder and its charset decoder.
  let leaf: { node: MimeNode; transfer: Transform; chars: TextDecoder } | undefined;

  const feedBody = (piece: string): void => {
    body.feed(piece);
    text.feed(piece);
  };

  const endLeaf = async (): Promise<void> => {
    const current = leaf;
    leaf = undefined;
    if (!current) return;
    await new Promise<void>((resolve) => {
      current.transfer.once('end', resolve);
      current.transfer.once('error', () => resolve());
      current.transfer.end();
    });
    feedBody(current.chars.decode());
  };

  const onNode = (node: MimeNode): void => {
    const block = node.getHeaders();
    if (node.root && header.length === 0) header = block.subarray(0, maxHeaderBytes);
    if (!text.done) {
      for (const field of headerFields(block.subarray(0, maxHeaderBytes))) {
        text.restart();
        text.feed(`${field.name}: ${field.value}`);
      }
    }
    if (node.multipart) return;
    const type = (node.contentType || 'text/plain').toLowerCase();
    if (!type.startsWith('text/')) return;
    body.restart();
    text.restart();
    const transfer = node.getDecoder();
    const chars = charsetDecoder(node.charset || 'utf-8');
    transfer.on('data', (chunk: Buffer) => feedBody(chars.decode(chunk, { stream: true })));
    transfer.on('error', () => undefined);
    leaf = { node, transfer, chars };
  };

  const sink = new Writable({
    objectMode: true,
    write(chunk: MimeNode | { type: 'data' | 'body'; node: MimeNode; value: Buffer }, _enc, cb) {
      if (chunk.type === 'node') {
        endLeaf().then(() => {
          try {
            onNode(chunk as MimeNode);
          } catch (e) {
            return cb(e as Error);
          }
          cb(done() ? new AllFound() : null);
        }, cb);
        return;
      }
      const current = leaf;
      if (chunk.type === 'body' && current && chunk.node === current.node) current.transfer.write(chunk.value);
      cb(done() ? new AllFound() : null);
    },
    final(cb) {
      endLeaf().then(() => cb(), cb);
    },
  });

  try {
    // A Transform; its typings list only its 'data' events, hence the cast.
    const splitter = new Splitter({ ignoreEmbedded: false, maxHeadSize: maxHeaderBytes, maxChildNodes: 1000 }) as unknown as Transform;
    await connect(raw, splitter, sink);
  } catch (e) {
    if (inputError !== undefined) throw inputError;
    if (!(e instanceof AllFound)) await endLeaf().catch(() => undefined);
  }
  if (inputError !== undefined) throw inputError;
  return { header, body: body.found, text: text.found };
}

/**
 * A needle the raw screen can rule out: not empty, and without whitespace, controls, ':' or
 * U+FFFD. Those are the seams where the decoded text differs from the raw bytes in ways a
 * whitespace-free needle cannot see: header unfolding (RFC 5322 §2.2.3) removes a line break
 * before a space, a field is compared as `name: value` with its value trimmed, and an invalid
 * octet becomes U+FFFD (how many may differ between decoders).
 */
function screenable(needle: string): boolean {
  return needle.length > 0 && !/[\x00-\x20:\x7f\ufffd]/.test(needle);
}

/** Transfer encodings whose decoder passes the octets through (mailsplit's getDecoder). */
const IDENTITY_TRANSFER = /^(?:7bit|8bit|binary)?$/;
/** Encodings under which 7-bit octets do not decode to themselves (WHATWG Encoding). */
const NOT_ASCII_IDENTITY = new Set(['utf-16le', 'utf-16be', 'iso-2022-jp']);

/**
 * The values of every header field named `name` (lower case) in `lower` (the message as latin1,
 * lower-cased), folded lines included. Conservative by design: a line anywhere that starts a field
 * of that name counts, in a body too.
 */
function fieldValues(lower: string, name: string): string[] {
  const out: string[] = [];
  for (let at = lower.indexOf(name); at >= 0; at = lower.indexOf(name, at + name.length)) {
    let i = at + name.length;
    while (lower[i] === ' ' || lower[i] === '\t') i++;
    if (lower[i] !== ':') continue;
    let end = lower.indexOf('\n', i);
    while (end >= 0 && (lower[end + 1] === ' ' || lower[end + 1] === '\t')) end = lower.indexOf('\n', end + 1);
    out.push(lower.slice(i + 1, end < 0 ? lower.length : end));
  }
  return out;
}

/**
 * Tells, from the raw octets of a message alone, which needles it cannot hold in the text that
 * scanMessage compares (RFC 9051 §6.4.4 BODY and TEXT). Reading through the MIME splitter and the
 * decoders costs some hundred microseconds a message; a case-folded substring search over the
 * whole message costs a few. For a message whose every byte decodes to itself in that text (no
 * encoded-words, no base64 or quoted-printable, charsets that map its octets as UTF-8 or, for a
 * 7-bit message, as ASCII, no bare CR that unfolding would drop), the text scanMessage reads is
 * made of pieces of the raw message, so a needle absent from the whole raw message (folded the
 * same way) is absent from the text too. Returns, per needle, false when it is certainly absent
 * and true when it may be there (scanMessage decides), or undefined when the message or a needle
 * is not one this screen can judge.
 */
export function rawMayHold(raw: Buffer, needles: string[]): boolean[] | undefined {
  if (!needles.every(screenable)) return undefined;
  const lower = raw.toString('latin1').toLowerCase();
  if (lower.includes('=?')) return undefined; // RFC 2047 encoded-words are decoded
  const eightBit = /[\x80-\xff]/.test(lower);
  if (/\r(?!\n)/.test(lower)) return undefined; // a bare CR is dropped from header values
  for (const v of fieldValues(lower, 'content-transfer-encoding')) if (!IDENTITY_TRANSFER.test(v.replace(/\s+/g, ''))) return undefined;
  for (const v of fieldValues(lower, 'content-type')) {
    // Comments, quoted pairs and RFC 2231 parameters are parsed by libmime; leave them to it.
    if (/[(\\*]/.test(v)) return undefined;
    const labels = [...v.matchAll(/charset\s*=\s*"?\s*([^";\s]*)/g)];
    if (labels.length !== v.split('charset').length - 1) return undefined;
    for (const m of labels) {
      const encoding = charsetDecoder(m[1] || 'utf-8').encoding;
      if (eightBit ? encoding !== 'utf-8' : NOT_ASCII_IDENTITY.has(encoding)) return undefined;
    }
  }
  const text = eightBit ? foldCase(raw.toString('utf8')) : lower;
  return needles.map((n) => text.includes(foldCase(n)));
}

/**
 * Pipes `raw` through `splitter` into `sink` and settles when the sink finishes or any of them
 * fails, destroying all three either way, as stream.pipeline would. Written out because Node 20's
 * pipeline makes an AbortController per call and aborts it at the end, which builds a DOMException
 * with its stack: a third of the time of scanning a small message.
 */
function connect(raw: Readable, splitter: Transform, sink: Writable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const settle = (e?: unknown): void => {
      if (settled) return;
      settled = true;
      raw.unpipe(splitter);
      splitter.unpipe(sink);
      for (const stream of [raw, splitter, sink]) if (!stream.destroyed) stream.destroy();
      if (e === undefined) resolve();
      else reject(e instanceof Error ? e : new Error(String(e)));
    };
    raw.once('error', settle);
    splitter.once('error', settle);
    sink.once('error', settle);
    sink.once('finish', () => settle());
    // A source that closes without ending (destroyed) would leave the sink waiting for ever.
    raw.once('close', () => {
      if (!raw.readableEnded) settle(new Error('message stream closed before its end'));
    });
    raw.pipe(splitter).pipe(sink);
  });
}

/**
 * A streaming decoder for a MIME charset label. TextDecoder (WHATWG Encoding, with Node's ICU)
 * knows the labels mail uses (utf-8, iso-8859-*, windows-*, koi8-r, gb18030, big5, shift_jis,
 * iso-2022-jp, euc-kr...) and decodes across chunk boundaries; an unknown label falls back to
 * windows-1252, which never fails and keeps ASCII intact (as core/mail/mime.ts does for previews).
 */
export function charsetDecoder(label: string): TextDecoder {
  const name = label.trim().toLowerCase();
  try {
    return new TextDecoder(name === 'us-ascii' || name === 'ascii' ? 'utf-8' : name);
  } catch {
    return new TextDecoder('windows-1252');
  }
}
