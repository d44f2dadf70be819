/**
 * A message's IMAP ENVELOPE, BODYSTRUCTURE and BODY (RFC 9051 §7.5.2) and the byte offsets of its
 * parts (for BODY[section], §6.4.5), computed in one streaming pass at delivery and stored with
 * the message (`summary.imap`), so FETCH never re-parses a message and a section is one byte-range
 * read of the blob.
 *
 * The MIME walk is our own rather than mailsplit's (which core/mail/mime.ts uses for the summary):
 * mailsplit reports neither the byte offset of a part nor its line count, and it rewrites header
 * blocks; here every line is scanned once for the boundaries that are open, only header blocks are
 * kept (each bounded), and bodies pass by. The boundary and size rules follow Dovecot's parser
 * (a delimiter is any line that starts with `--` and an open boundary, innermost first; the line
 * break before a delimiter belongs to it, RFC 2046 §5.1.1), so that clients see the same sizes.
 * Sizes and offsets are of the raw bytes (the stored blob is what BODY[...] streams).
 */
import { once } from 'node:events';
import { PassThrough, type Readable } from 'node:stream';
import type { AttrValue } from '../storage/ports.js';
import { firstField, headerFields, parseParamValue, renderEnvelope, renderLanguage, renderParams, type HeaderField } from './imap-envelope.js';
import { imapList, imapString, nstring } from './imap-syntax.js';
import { summarizeMessage, type SummaryOptions } from './mime.js';

/** Byte offsets of one part in the raw message; `end` is exclusive. */
export interface PartOffsets {
  headerStart: number;
  bodyStart: number;
  end: number;
}

/** What is stored for IMAP with each message (`summary.imap`). */
export interface ImapStructure {
  v: 1;
  /** The ENVELOPE value exactly as written after `ENVELOPE ` in a FETCH response (RFC 9051 §7.5.2). */
  envelope: string;
  /** The BODYSTRUCTURE value (extension data included) and the BODY value (without it). */
  bodystructure: string;
  body: string;
  /**
   * Byte offsets per part number: '0' is the whole message (WHOLE_MESSAGE: DynamoDB refuses an
   * empty map key, so not ''), '1', '1.2'... its parts (a message
   * that is not multipart has '1', its body). For a message/rfc822 part '3', the attached message
   * as a whole (its header and text, for 3.HEADER and 3.TEXT) is under '3.0', and its parts are
   * '3.1', '3.2'... as RFC 9051 §6.4.5 numbers them.
   */
  parts: Record<string, PartOffsets>;
}

/** The `parts` key of the whole message; no part number is 0 (RFC 9051 §6.4.5 numbers from 1). */
export const WHOLE_MESSAGE = '0';

/** The section-text of a FETCH BODY[...] after the part number (RFC 9051 §6.4.5); '' for none. */
export type SectionKind = '' | 'HEADER' | 'TEXT' | 'MIME' | 'HEADER.FIELDS' | 'HEADER.FIELDS.NOT';

/** The largest `summary.imap` stored with a message, as JSON; a bigger one is computed on demand. */
export const MAX_STORED_STRUCTURE_BYTES = 48 * 1024;

// Dovecot's limits (message-parser.h): deeper or further parts are read as body text of the last one.
const MAX_DEPTH = 100;
const MAX_PARTS = 10_000;
/** Octets of a part's header block kept for parsing (the rest is counted, not read). */
const MAX_HEADER_BYTES = 64 * 1024;

interface Node {
  headerStart: number;
  bodyStart: number;
  end: number;
  /** LF count of the message before bodyStart and before end (for the `lines` field). */
  lfStart: number;
  lfEnd: number;
  header: Buffer[];
  headerBytes: number;
  inHeader: boolean;
  fields: HeaderField[];
  depth: number;
  parent?: Node;
  /** Set for a multipart with a boundary; `closed` after its close-delimiter (epilogue). */
  boundary?: Buffer;
  closed?: boolean;
  multipart: boolean;
  children: Node[];
  /** The attached message of a message/rfc822 part. */
  message?: Node;
}

function newNode(headerStart: number, lf: number, parent?: Node): Node {
  return {
    headerStart,
    bodyStart: headerStart,
    end: headerStart,
    lfStart: lf,
    lfEnd: lf,
    header: [],
    headerBytes: 0,
    inHeader: true,
    fields: [],
    depth: parent ? parent.depth + 1 : 0,
    parent,
    multipart: false,
    children: [],
  };
}

/** The streaming MIME walk: `write` each chunk, then `finish`. */
class StructureParser {
  readonly root = newNode(0, 0);
  private current = this.root;
  private pos = 0; // offset of the next byte
  private lineStart = 0;
  private line: Buffer[] = [];
  private lineKept = 0;
  private lf = 0; // LFs before lineStart
  /** The length of the previous line's break: 0, 1 (LF) or 2 (CRLF). */
  private prevEol = 0;
  /** Whether the previous line was a delimiter: its line break is never the next delimiter's. */
  private prevDelimiter = false;
  private count = 1;
  private openBoundaries = 0;

  write(chunk: Buffer): void {
    let from = 0;
    while (from < chunk.length) {
      const nl = chunk.indexOf(10, from);
      const stop = nl < 0 ? chunk.length : nl + 1;
      this.keep(chunk.subarray(from, stop));
      this.pos += stop - from;
      from = stop;
      if (nl >= 0) this.endLine();
    }
  }

  finish(): Node {
    if (this.pos > this.lineStart) this.endLine();
    for (let n: Node | undefined = this.current; n; n = n.parent) this.close(n, this.pos, this.lf, false);
    return this.root;
  }

  /** Keeps the start of the current line: enough for a header line or a delimiter. */
  private keep(piece: Buffer): void {
    const room = MAX_HEADER_BYTES - this.lineKept;
    if (room <= 0) return;
    const take = piece.length > room ? piece.subarray(0, room) : piece;
    this.line.push(take);
    this.lineKept += take.length;
  }

  private endLine(): void {
    const line = this.line.length === 1 ? this.line[0] : Buffer.concat(this.line);
    this.line = [];
    this.lineKept = 0;
    const start = this.lineStart;
    const length = this.pos - start;
    const eol = line[line.length - 1] === 10 ? (line[line.length - 2] === 13 ? 2 : 1) : 0;
    this.lineStart = this.pos;
    const delimiter = this.delimiter(line, start, length);
    if (!delimiter) {
      const cur = this.current;
      if (cur.inHeader) {
        if (line.length === eol && eol > 0) this.endHeader(cur, this.pos, this.lf + 1);
        else if (cur.headerBytes < MAX_HEADER_BYTES) {
          cur.header.push(Buffer.from(line));
          cur.headerBytes += line.length;
        }
      }
    }
    if (eol) this.lf++;
    this.prevEol = eol;
    this.prevDelimiter = delimiter;
  }

  /** Handles the line when it is a delimiter of an open multipart; false when it is not one. */
  private delimiter(line: Buffer, start: number, length: number): boolean {
    if (this.openBoundaries === 0 || line[0] !== 0x2d || line[1] !== 0x2d) return false;
    let owner: Node | undefined;
    for (let n: Node | undefined = this.current; n; n = n.parent) {
      if (n.boundary && !n.closed && line.length >= 2 + n.boundary.length && line.compare(n.boundary, 0, n.boundary.length, 2, 2 + n.boundary.length) === 0) {
        owner = n;
        break;
      }
    }
    if (!owner) return false;
    const closing = line[2 + owner.boundary!.length] === 0x2d && line[3 + owner.boundary!.length] === 0x2d;
    if (!closing && this.count >= MAX_PARTS) return false;
    // The break before the delimiter belongs to it (RFC 2046 §5.1.1), unless the part is still
    // in its header or the line before was a delimiter itself (Dovecot counts the break in the
    // part then, and clients expect its sizes).
    const keepBreak = this.current.inHeader || this.prevDelimiter || this.prevEol === 0;
    const end = keepBreak ? start : start - this.prevEol;
    const lfEnd = keepBreak ? this.lf : this.lf - 1;
    for (let n = this.current; n !== owner; n = n.parent!) this.close(n, end, lfEnd, true);
    if (closing) {
      owner.closed = true;
      this.openBoundaries--;
      this.current = owner;
    } else {
      const child = newNode(start + length, this.lf + (line[line.length - 1] === 10 ? 1 : 0), owner);
      owner.children.push(child);
      this.count++;
      this.current = child;
    }
    return true;
  }

  private close(n: Node, end: number, lfEnd: number, clamp: boolean): void {
    if (n.inHeader) this.endHeader(n, end, lfEnd, false);
    n.end = clamp ? Math.max(end, n.bodyStart) : end;
    n.lfEnd = Math.max(lfEnd, n.lfStart);
    if (n.boundary && !n.closed) {
      n.closed = true;
      this.openBoundaries--;
    }
  }

  /** The header block of `n` ended at `bodyStart`: read its fields, then open its body. */
  private endHeader(n: Node, bodyStart: number, lf: number, open = true): void {
    n.inHeader = false;
    n.bodyStart = bodyStart;
    n.lfStart = lf;
    n.fields = headerFields(Buffer.concat(n.header));
    n.header = [];
    const ct = contentType(n);
    if (ct.type.toLowerCase() === 'multipart') {
      n.multipart = true;
      const boundary = ct.params.find(([k]) => k.toLowerCase() === 'boundary')?.[1];
      if (open && boundary && n.depth < MAX_DEPTH) {
        n.boundary = Buffer.from(boundary, 'utf8');
        this.openBoundaries++;
      }
    } else if (open && isMessage(ct) && n.depth < MAX_DEPTH && this.count < MAX_PARTS) {
      n.message = newNode(bodyStart, lf, n);
      this.count++;
      this.current = n.message;
    }
  }
}

function contentType(n: Node): { type: string; subtype: string; params: [string, string][] } {
  const v = firstField(n.fields, 'content-type');
  const parsed = v === undefined ? undefined : parseParamValue(v, true);
  if (!parsed || !parsed.type || !parsed.subtype) return { type: 'text', subtype: 'plain', params: [['charset', 'us-ascii']] };
  return parsed;
}

function isMessage(ct: { type: string; subtype: string }): boolean {
  return ct.type.toLowerCase() === 'message' && ct.subtype.toLowerCase() === 'rfc822';
}

/** A body part as BODYSTRUCTURE (`extended`) or BODY writes it (RFC 9051 §7.5.2 `body`). */
function renderBody(n: Node, extended: boolean): string {
  const f = n.fields;
  const ext = (items: string[]): string[] => (extended ? items : []);
  const disposition = (): string => {
    const v = firstField(f, 'content-disposition');
    if (v === undefined) return 'NIL';
    const d = parseParamValue(v, false);
    return d.type ? imapList([imapString(d.type), renderParams(d.params)]) : 'NIL';
  };
  const tail = (): string[] => [disposition(), renderLanguage(firstField(f, 'content-language')), nstring(firstField(f, 'content-location'))];
  const ct = contentType(n);
  if (n.multipart) {
    // A multipart without parts (no boundary, or none found) still needs one (`1*body`): Dovecot
    // writes an empty text/plain one.
    const children = n.children.length ? n.children.map((c) => renderBody(c, extended)).join('') : emptyText(extended);
    return `(${[children, imapString(ct.subtype), ...ext([renderParams(ct.params), ...tail()])].join(' ')})`;
  }
  let params = ct.params;
  if (ct.type.toLowerCase() === 'text' && !params.some(([k]) => k.toLowerCase() === 'charset')) params = [...params, ['charset', 'us-ascii']];
  const items = [
    imapString(ct.type),
    imapString(ct.subtype),
    renderParams(params),
    nstring(firstField(f, 'content-id')),
    nstring(firstField(f, 'content-description')),
    imapString(firstField(f, 'content-transfer-encoding')?.trim() || '7bit'),
    String(n.end - n.bodyStart),
  ];
  const lines = String(n.lfEnd - n.lfStart);
  if (n.message) items.push(renderEnvelope(n.message.fields), renderBody(n.message, extended), lines);
  else if (isMessage(ct))
    items.push(`(${Array(10).fill('NIL').join(' ')})`, emptyText(extended), lines); // not opened (limits, or no body)
  else if (ct.type.toLowerCase() === 'text') items.push(lines);
  items.push(...ext([nstring(firstField(f, 'content-md5')), ...tail()]));
  return `(${items.join(' ')})`;
}

function emptyText(extended: boolean): string {
  return `("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0${extended ? ' NIL NIL NIL NIL' : ''})`;
}

/** Part numbers (RFC 9051 §6.4.5) of the parts inside body part `n`, numbered `num`. */
function numberParts(n: Node, num: string, out: Record<string, PartOffsets>): void {
  const at = (x: Node): PartOffsets => ({ headerStart: x.headerStart, bodyStart: x.bodyStart, end: x.end });
  const join = (i: number): string => (num ? `${num}.${i}` : String(i));
  if (n.multipart) {
    if (!n.children.length) out[join(1)] = { headerStart: n.end, bodyStart: n.end, end: n.end };
    n.children.forEach((c, i) => {
      out[join(i + 1)] = at(c);
      numberParts(c, join(i + 1), out);
    });
  } else if (n.message) {
    out[`${num}.0`] = at(n.message);
    numberMessage(n.message, num, out);
  }
}

/** Part numbers inside a message (the top one with `num` '', or one attached at part `num`). */
function numberMessage(m: Node, num: string, out: Record<string, PartOffsets>): void {
  if (m.multipart) return numberParts(m, num, out);
  const one = num ? `${num}.1` : '1';
  out[one] = { headerStart: m.headerStart, bodyStart: m.bodyStart, end: m.end };
  numberParts(m, one, out);
}

/**
 * Reads the message to its end and returns its IMAP structure. Memory is bounded by the parts'
 * header blocks (at most 64 KB each, 10,000 parts). A read error of `input` is thrown.
 */
export async function imapStructure(input: Readable): Promise<ImapStructure> {
  const parser = new StructureParser();
  for await (const chunk of input) parser.write(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  const root = parser.finish();
  const parts: Record<string, PartOffsets> = { [WHOLE_MESSAGE]: { headerStart: 0, bodyStart: root.bodyStart, end: root.end } };
  numberMessage(root, '', parts);
  return { v: 1, envelope: renderEnvelope(root.fields), bodystructure: renderBody(root, true), body: renderBody(root, false), parts };
}

/**
 * The byte range of a FETCH section (RFC 9051 §6.4.5): `part` numbers, then the section-text
 * (HEADER.FIELDS and HEADER.FIELDS.NOT give the header's range; filter it with
 * filterHeaderFields). `end` is exclusive. undefined when the part does not exist or the
 * section-text does not apply to it (the server answers an empty string, as Dovecot does).
 */
export function sectionRange(s: ImapStructure, part: number[], kind: SectionKind): { start: number; end: number } | undefined {
  const num = part.join('.');
  // '' is where structures stored before WHOLE_MESSAGE (local data only) keep the whole message.
  const p = num === '' ? (s.parts[WHOLE_MESSAGE] ?? s.parts['']) : s.parts[num];
  if (!p) return undefined;
  const headerRange = (x: PartOffsets) => ({ start: x.headerStart, end: x.bodyStart });
  if (part.length === 0) {
    if (kind === '') return { start: 0, end: p.end };
    if (kind === 'TEXT') return { start: p.bodyStart, end: p.end };
    if (kind === 'MIME') return undefined; // MIME needs a part number (§6.4.5)
    return headerRange(p);
  }
  if (kind === '') return { start: p.bodyStart, end: p.end };
  if (kind === 'MIME') return headerRange(p);
  // HEADER and TEXT of a part: only of a message/rfc822 part (its attached message).
  const m = s.parts[`${num}.0`];
  if (!m) return undefined;
  return kind === 'TEXT' ? { start: m.bodyStart, end: m.end } : headerRange(m);
}

/**
 * The header lines of a header block whose field names are (or, with `not`, are not) in
 * `fields`, folded continuation lines included, and the blank line (RFC 9051 §6.4.5
 * HEADER.FIELDS and HEADER.FIELDS.NOT). Names compare case-insensitively.
 */
export function filterHeaderFields(header: Buffer, fields: string[], not: boolean): Buffer {
  const wanted = new Set(fields.map((f) => f.toLowerCase()));
  const out: Buffer[] = [];
  let keep = false;
  let blank: Buffer | undefined;
  let from = 0;
  while (from < header.length) {
    const nl = header.indexOf(10, from);
    const stop = nl < 0 ? header.length : nl + 1;
    const line = header.subarray(from, stop);
    from = stop;
    const content = line.length && line[line.length - 1] === 10 ? line.subarray(0, line[line.length - 2] === 13 ? -2 : -1) : line;
    if (content.length === 0) {
      blank = line;
      break;
    }
    if (content[0] !== 0x20 && content[0] !== 0x09) {
      const colon = content.indexOf(0x3a);
      const name = colon > 0 ? content.subarray(0, colon).toString('latin1').trim().toLowerCase() : undefined;
      keep = name !== undefined && wanted.has(name) !== not;
    }
    if (keep) out.push(line);
  }
  // The blank line ends the result even when the block had none (or used bare LF).
  out.push(blank ?? Buffer.from('\r\n'));
  return Buffer.concat(out);
}

/** Copies `input` into two streams at the pace of the slower, so one read feeds two parsers. */
function tee(input: Readable): [PassThrough, PassThrough] {
  const outs: [PassThrough, PassThrough] = [new PassThrough(), new PassThrough()];
  const write = async (o: PassThrough, chunk: Buffer): Promise<void> => {
    if (o.destroyed || o.writableEnded) return;
    if (!o.write(chunk)) {
      // The listener of the event that did not come is removed (abort), or every wait would
      // leave one behind: a listener per backpressure pause, growing with the message.
      const ac = new AbortController();
      await Promise.race([once(o, 'drain', { signal: ac.signal }), once(o, 'close', { signal: ac.signal })]).catch(() => undefined);
      ac.abort();
    }
  };
  void (async () => {
    try {
      for await (const chunk of input) await Promise.all(outs.map((o) => write(o, chunk as Buffer)));
      for (const o of outs) if (!o.destroyed) o.end();
    } catch (e) {
      for (const o of outs) o.destroy(e as Error);
    }
  })();
  return outs;
}

/**
 * summarizeMessage (core/mail/mime.ts) and, in the same read of the message, its IMAP structure
 * as `summary.imap` (left out when its JSON passes MAX_STORED_STRUCTURE_BYTES, or when it could
 * not be made: the IMAP server then computes it from the blob). Every place that stores a message
 * summarizes it through here.
 */
export async function summarizeForMailbox(input: Readable, options?: SummaryOptions): Promise<Record<string, AttrValue>> {
  const [forSummary, forImap] = tee(input);
  const [summary, imap] = await Promise.all([
    summarizeMessage(forSummary, options),
    imapStructure(forImap).catch(() => {
      forImap.destroy();
      return undefined;
    }),
  ]);
  if (imap && Buffer.byteLength(JSON.stringify(imap)) <= MAX_STORED_STRUCTURE_BYTES) summary.imap = imap as unknown as AttrValue;
  return summary;
}
