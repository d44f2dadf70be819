/**
 * A bounded summary of a raw RFC 5322 / MIME message for the mailbox index: decoded header fields,
 * the part tree, attachments and a short text preview. Built on @zone-eu/mailsplit (the streaming
 * splitter underneath mailparser) rather than MailParser itself, because MailParser keeps whole
 * text bodies in memory and does not expose each part's transfer encoding and raw size; the
 * splitter hands us each node's headers and its body in chunks, which we count (and decode only
 * where a decoded size or the preview needs it) and then drop. An attached message is opened by
 * a splitter of its own fed with its decoded body as it streams, up to `maxMessageDepth` deep and
 * `maxNodes` parts in all; the summary's JSON is kept within `maxSummaryBytes`, as it is stored in
 * one table item (DynamoDB's are at most 400 KB).
 */
import { once } from 'node:events';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Splitter, type MimeNode } from '@zone-eu/mailsplit';
import libmime from 'libmime';
import { parseAddressHeader } from 'mailparser';
import type { AttrValue } from '../storage/ports.js';

/** Options for summarizeMessage. */
export interface SummaryOptions {
  /** Characters kept in `preview`. @default 200 */
  previewChars?: number;
  /** Parts listed in `parts` (the rest are counted in `partCount` only). @default 100 */
  maxParts?: number;
  /** Attachments listed. @default 50 */
  maxAttachments?: number;
  /** Addresses kept per address field (of an attached message: at most 10). @default 50 */
  maxAddresses?: number;
  /** Attached messages opened inside one another; a deeper one is listed as a leaf. @default 5 */
  maxMessageDepth?: number;
  /** MIME parts read in all, attached messages' included; past that reading stops (`malformed`). @default 1000 */
  maxNodes?: number;
  /** Octets the summary may take as JSON (it is stored in one table item); past that lists are cut from the end (its single fields take at most about 24 KB). @default 65536 */
  maxSummaryBytes?: number;
}

/** The header fields the summary keeps of a message, the top-level one or an attached one. */
export interface MessageHeaders {
  /** Display form of the first From address, e.g. `Jürgen <j@example.org>`; '' when absent. */
  from: string;
  /** The bare address of the first From mailbox; '' when absent. */
  fromAddress: string;
  to: string[];
  cc: string[];
  subject: string;
  /** ISO 8601 when the Date header parses; otherwise the header as it came; '' when absent. */
  date: string;
  messageId: string;
  /** Message-IDs (without angle brackets) of In-Reply-To and References, for threading
   * (RFC 8621 §3, RFC 5322 §3.6.4); absent when the header is. References keeps its last
   * MAX_REFERENCES, the nearest ancestors. */
  inReplyTo?: string[];
  references?: string[];
}

/** One MIME part as kept in the summary. `size` is the encoded body size in octets. */
export interface PartSummary {
  /**
   * IMAP-style part number (RFC 3501 §6.4.5): '' for the root, '1', '1.2', ...; inside an
   * attached message at '3' its root is '3.TEXT' and its parts '3.1', '3.2', ...
   */
  part: string;
  type: string;
  multipart?: boolean;
  charset?: string;
  encoding?: string;
  disposition?: string;
  filename?: string;
  /** Octets of the (still encoded) body. */
  size: number;
  /** Octets after transfer decoding; only measured for attachments. */
  decodedSize?: number;
  /** The header fields of an attached message (message/rfc822 or message/global) that was opened. */
  message?: MessageHeaders;
}

/** The summary's shape; summarizeMessage returns it typed as a Tables attribute map. */
export interface MessageSummary extends MessageHeaders {
  v: 1;
  /** Octets of the whole raw message. */
  size: number;
  /** Every part read, those of attached messages included, in the order they appear. */
  parts: PartSummary[];
  partCount: number;
  /** The leaves of the top-level message that are attachments (an attached message's own are in `parts`). */
  attachments: { name: string; type: string; size: number }[];
  preview: string;
  /** Set when the MIME structure could not be parsed to the end; the rest is what was read. */
  malformed?: string;
  /** Set when lists were cut to keep the summary within `maxSummaryBytes`. */
  trimmed?: true;
}

const MAX_HEADER_CHARS = 998; // RFC 5322 §2.1.1: a line is at most 998 characters.
const PREVIEW_BYTES = 16 * 1024;
const MAX_NESTED_ADDRESSES = 10;

/** Thrown (and caught) when a message has more parts than `maxNodes`. */
class TooManyParts extends Error {}

/**
 * Reads the message stream to its end and returns its summary. Never throws for malformed MIME:
 * it returns what it could read, with `malformed` set. A read error of `input` itself is thrown
 * (a truncated message must not be summarised as if it were whole).
 */
export async function summarizeMessage(input: Readable, options: SummaryOptions = {}): Promise<Record<string, AttrValue>> {
  const previewChars = options.previewChars ?? 200;
  const maxParts = options.maxParts ?? 100;
  const maxAttachments = options.maxAttachments ?? 50;
  const maxAddresses = options.maxAddresses ?? 50;
  const maxDepth = options.maxMessageDepth ?? 5;
  const maxNodes = options.maxNodes ?? 1000;

  const summary: MessageSummary = {
    v: 1,
    size: 0,
    from: '',
    fromAddress: '',
    to: [],
    cc: [],
    subject: '',
    date: '',
    messageId: '',
    parts: [],
    partCount: 0,
    attachments: [],
    preview: '',
  };

  let inputError: unknown;
  input.once('error', (e) => (inputError ??= e));

  let previewSource: { bytes: Buffer; charset: string; html: boolean } | undefined;
  let plainSeen = false;

  /**
   * The sink for one message's splitter: the top-level message (`base` undefined, depth 0) or
   * one attached at part `base` (its headers go to `headers`).
   */
  const messageSink = (depth: number, base?: string, headers?: (h: MessageHeaders) => void): { sink: Writable; finish: () => Promise<void> } => {
    // The leaf whose body is streaming now.
    let current:
      | {
          info: PartSummary;
          node: MimeNode;
          attachment: boolean;
          decoder?: Transform;
          text?: Buffer[];
          textBytes?: number;
          nested?: { input: Transform; done: Promise<unknown>; error?: unknown };
        }
      | undefined;

    const finishLeaf = async (): Promise<void> => {
      const leaf = current;
      current = undefined;
      if (!leaf) return;
      if (leaf.nested) {
        const nested = leaf.nested;
        if (nested.error === undefined) nested.input.end();
        await nested.done;
        if (nested.error instanceof TooManyParts) throw nested.error;
        if (nested.error !== undefined) summary.malformed ??= clip(`part ${leaf.info.part}: ${message(nested.error)}`, 200);
      } else if (leaf.decoder) {
        const dec = leaf.decoder;
        await new Promise<void>((resolve) => {
          dec.once('end', resolve);
          dec.once('error', () => resolve());
          dec.end();
        });
      }
      if (depth === 0 && leaf.attachment && summary.attachments.length < maxAttachments) {
        summary.attachments.push({
          name: leaf.info.filename ?? '',
          type: leaf.info.type,
          size: leaf.info.decodedSize ?? leaf.info.size,
        });
      }
      if (leaf.text && !leaf.attachment && leaf.textBytes! > 0) {
        const isHtml = leaf.info.type === 'text/html';
        if (!isHtml && !plainSeen) {
          plainSeen = true;
          previewSource = { bytes: Buffer.concat(leaf.text), charset: leaf.info.charset ?? 'utf-8', html: false };
        } else if (isHtml && !previewSource) {
          previewSource = { bytes: Buffer.concat(leaf.text), charset: leaf.info.charset ?? 'utf-8', html: true };
        }
      }
    };

    const onNode = (node: MimeNode): void => {
      if (++summary.partCount > maxNodes) throw new TooManyParts(`more than ${maxNodes} MIME parts`);
      const type = (node.contentType || (node.multipart ? `multipart/${node.multipart}` : 'text/plain')).toLowerCase();
      const own = partNumber(node);
      const part = base === undefined ? own : own === '' ? `${base}.TEXT` : `${base}.${own}`;
      const info: PartSummary = { part, type, size: 0 };
      if (node.multipart) info.multipart = true;
      if (node.charset) info.charset = String(node.charset).toLowerCase();
      if (node.encoding) info.encoding = String(node.encoding).toLowerCase();
      if (node.disposition) info.disposition = String(node.disposition).toLowerCase();
      if (node.filename) info.filename = clip(String(node.filename), 255);
      if (summary.parts.length < maxParts) summary.parts.push(info);

      if (node.root) {
        const h = readHeaders(node, depth === 0 ? maxAddresses : Math.min(maxAddresses, MAX_NESTED_ADDRESSES));
        if (depth === 0) Object.assign(summary, h);
        else headers?.(h);
      }
      if (node.multipart) return;

      const isText = type === 'text/plain' || type === 'text/html';
      const attachment = info.disposition === 'attachment' || Boolean(info.filename) || (!isText && !type.startsWith('multipart/'));
      const leaf: NonNullable<typeof current> = { info, node, attachment };
      current = leaf;

      // The splitter opens an attached message only when it is unencoded and inline (and not at
      // all with ignoreEmbedded), so every one is opened here instead: its decoded body goes
      // through a splitter of its own, streamed, so a base64 message is never held whole.
      if ((type === 'message/rfc822' || type === 'message/global') && depth < maxDepth) {
        const decoder = node.getDecoder() as Transform;
        info.decodedSize = 0;
        const { sink } = messageSink(depth + 1, part || '1', (h) => (info.message = h));
        const nested: NonNullable<typeof leaf.nested> = { input: decoder, done: Promise.resolve() };
        nested.done = pipeline(decoder, new HeaderSectionEnd((n) => (info.decodedSize! += n)), newSplitter(maxNodes), sink).catch(
          (e: unknown) => (nested.error = e ?? new Error('failed')),
        );
        leaf.nested = nested;
        return;
      }

      const wantText = depth === 0 && !attachment && isText && (type === 'text/plain' ? !plainSeen : !previewSource);
      if (attachment || wantText) {
        try {
          const decoder = node.getDecoder() as Transform;
          if (attachment) info.decodedSize = 0;
          if (wantText) {
            leaf.text = [];
            leaf.textBytes = 0;
          }
          decoder.on('data', (chunk: Buffer) => {
            if (info.decodedSize !== undefined) info.decodedSize += chunk.length;
            if (leaf.text && leaf.textBytes! < PREVIEW_BYTES) {
              const take = chunk.subarray(0, PREVIEW_BYTES - leaf.textBytes!);
              leaf.text.push(Buffer.from(take));
              leaf.textBytes! += take.length;
            }
          });
          decoder.on('error', () => undefined);
          leaf.decoder = decoder;
        } catch {
          // An unknown transfer encoding: keep the raw size only.
        }
      }
    };

    const sink = new Writable({
      objectMode: true,
      write(chunk: MimeNode | { type: 'data' | 'body'; node: MimeNode; value: Buffer }, _enc, cb) {
        if (chunk.type === 'node') {
          finishLeaf().then(
            () => {
              try {
                onNode(chunk as MimeNode);
              } catch (e) {
                return cb(e as Error);
              }
              cb();
            },
            (e: Error) => cb(e),
          );
          return;
        }
        const leaf = current;
        if (chunk.type !== 'body' || !leaf || chunk.node !== leaf.node) return cb();
        leaf.info.size += chunk.value.length;
        const nested = leaf.nested;
        if (nested) {
          if (nested.error instanceof TooManyParts) return cb(nested.error);
          // The attached message is read at its own pace (a part of it may be decoding): wait
          // rather than buffer what it has not taken yet.
          if (nested.error === undefined && !nested.input.write(chunk.value)) {
            Promise.race([once(nested.input, 'drain').catch(() => undefined), nested.done]).then(() => cb());
            return;
          }
        } else if (leaf.decoder) leaf.decoder.write(chunk.value);
        cb();
      },
      final(cb) {
        finishLeaf().then(() => cb(), cb);
      },
    });
    return { sink, finish: finishLeaf };
  };

  const top = messageSink(0);
  try {
    await pipeline(input, new HeaderSectionEnd((n) => (summary.size += n)), newSplitter(maxNodes), top.sink);
  } catch (e) {
    if (inputError) throw inputError;
    summary.malformed = clip(message(e), 200);
    await top.finish().catch(() => undefined);
  }
  if (inputError) throw inputError;

  if (previewSource) summary.preview = makePreview(previewSource.bytes, previewSource.charset, previewSource.html, previewChars);
  fitSummary(summary, options.maxSummaryBytes ?? 64 * 1024);
  return summary as unknown as Record<string, AttrValue>;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

type SplitterInternals = Transform & { node: MimeNode & { parseHeaders(): void }; checkBoundary(line: Buffer): 1 | 2 | 3 | 4 | false };
const SplitterBase = Splitter as unknown as new (config: ConstructorParameters<typeof Splitter>[0]) => SplitterInternals;

/**
 * The splitter, with one fix: a part that a delimiter line ends while its header section is still
 * open (an empty part, or header lines with no empty line after them) is a part (RFC 2046
 * §5.1.1: "body-part := MIME-part-headers [CRLF *OCTET]", so even no octets at all make a part);
 * mailsplit 5.4 drops it unless it had header lines and the delimiter closes the multipart.
 */
class PartSplitter extends SplitterBase {
  override checkBoundary(line: Buffer): 1 | 2 | 3 | 4 | false {
    const found = super.checkBoundary(line);
    // 3 and 4: the delimiter of an enclosing multipart, seen by the node being read.
    if ((found === 3 || found === 4) && this.node.parentNode && !this.node.headers) {
      this.node.parseHeaders();
      this.push(this.node);
    }
    return found;
  }
}

/** The splitter every reader of MIME structure uses (JMAP's body parser too, so part numbering agrees). */
export function newSplitter(maxNodes: number): Transform {
  return new PartSplitter({ ignoreEmbedded: true, maxHeadSize: 1024 * 1024, maxChildNodes: maxNodes });
}

/**
 * Ends a message's header section at its first line that is neither a header field (RFC 5322
 * §2.2: a field name, then ":") nor the continuation of one, by putting the empty line in front
 * of it: such a line starts the body (as Python's email parser reads it). The splitter would read
 * the whole text of a message without header fields as one header block and find no body; a
 * message taken over SMTP has our Return-Path and Received fields in front, so "the first line" is
 * not enough. An mbox "From " line is let through at the start, as the splitter knows it.
 * Only the start of each header line is held back (at most a line's 998 characters). `count` is
 * told the octets of the message as they come in.
 */
export class HeaderSectionEnd extends Transform {
  private state: 'start' | 'cr' | 'name' | 'space' | 'value' | 'body' = 'start';
  private held: number[] = [];
  private first = true;

  constructor(private readonly count: (octets: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null, data?: Buffer) => void): void {
    this.count(chunk.length);
    if (this.state === 'body') return cb(null, chunk);
    const out: Buffer[] = [];
    let from = 0; // start of the bytes of `chunk` that pass as they are
    for (let i = 0; i < chunk.length && this.state !== 'body'; i++) {
      const b = chunk[i];
      switch (this.state) {
        case 'value':
          if (b === 0x0a) {
            this.state = 'start';
            this.first = false;
          }
          break;
        case 'start':
          if (b === 0x20 || b === 0x09 || b === 0x3a) this.state = 'value';
          else if (b === 0x0a) this.state = 'body';
          else {
            out.push(chunk.subarray(from, i));
            from = i + 1;
            this.held = [b];
            if (b === 0x0d) this.state = 'cr';
            else if (b > 0x20 && b < 0x7f) this.state = 'name';
            else this.notHeader(out);
          }
          break;
        default: {
          // cr, name, space: the line so far is held in `held`.
          this.held.push(b);
          from = i + 1;
          if (this.state === 'cr') {
            if (b === 0x0a) this.release(out, 'body');
            else this.notHeader(out);
          } else if (b === 0x3a) this.release(out, 'value');
          else if (this.state === 'name' && b > 0x20 && b < 0x7f && this.held.length <= MAX_HEADER_CHARS) break;
          else if (b === 0x20 || b === 0x09) {
            if (this.first && this.state === 'name' && Buffer.from(this.held).toString('latin1') === 'From ') this.release(out, 'value');
            else this.state = 'space';
          } else this.notHeader(out);
        }
      }
    }
    if (this.state === 'body' || this.state === 'value' || this.state === 'start') out.push(chunk.subarray(from));
    cb(null, Buffer.concat(out));
  }

  override _flush(cb: (e?: Error | null, data?: Buffer) => void): void {
    const out: Buffer[] = [];
    if (this.held.length) this.notHeader(out);
    cb(null, Buffer.concat(out));
  }

  private release(out: Buffer[], next: 'body' | 'value'): void {
    out.push(Buffer.from(this.held));
    this.held = [];
    this.state = next;
  }

  private notHeader(out: Buffer[]): void {
    out.push(Buffer.from('\r\n'));
    this.release(out, 'body');
  }
}

/** Cuts the summary's lists from the end until its JSON takes at most `max` octets. */
function fitSummary(summary: MessageSummary, max: number): void {
  const bytes = (x: unknown): number => Buffer.byteLength(JSON.stringify(x));
  let size = bytes(summary);
  if (size <= max) return;
  summary.trimmed = true;
  // Attached messages' address lists go first, then parts, attachments and addresses from the end.
  for (const p of summary.parts) {
    if (p.message && (p.message.to.length || p.message.cc.length)) {
      p.message.to = [];
      p.message.cc = [];
    }
  }
  size = bytes(summary);
  const shrink = (list: unknown[]): void => {
    // The element's JSON and, unless it was the only one, the comma before it.
    while (size > max && list.length) size -= bytes(list.pop()) + (list.length ? 1 : 0);
  };
  shrink(summary.parts);
  shrink(summary.attachments);
  shrink(summary.cc);
  shrink(summary.to);
}

function partNumber(node: MimeNode): string {
  const nr = node.partNr;
  if (!nr || (nr.length === 1 && nr[0] === 'TEXT')) return '';
  return nr.filter((x) => x !== 'TEXT').join('.');
}

/** References kept per message: the nearest ancestors are what threading needs. */
const MAX_REFERENCES = 20;

/**
 * The msg-ids of an In-Reply-To or References field (RFC 5322 §3.6.4: `<left@right>` tokens,
 * anything between them is skipped, as §4.5.4's obsolete forms need). A regular expression: all
 * threading needs is what stands between angle brackets.
 */
export function messageIds(field: string): string[] {
  const out: string[] = [];
  for (const m of unfold(field).matchAll(/<([^<>\s]{1,250})>/g)) out.push(m[1]!);
  return out;
}

function readHeaders(node: MimeNode, maxAddresses: number): MessageHeaders {
  const out: MessageHeaders = { from: '', fromAddress: '', to: [], cc: [], subject: '', date: '', messageId: '' };
  const headers = node.headers;
  if (!headers) return out;
  const first = (key: string): string => {
    try {
      return headers.getFirst(key) ?? '';
    } catch {
      return '';
    }
  };
  out.subject = clip(decode(unfold(first('subject'))), MAX_HEADER_CHARS);
  out.messageId = clip(unfold(first('message-id')).trim(), MAX_HEADER_CHARS);
  const inReplyTo = messageIds(first('in-reply-to')).slice(0, MAX_REFERENCES);
  const references = messageIds(first('references')).slice(-MAX_REFERENCES);
  if (inReplyTo.length) out.inReplyTo = inReplyTo;
  if (references.length) out.references = references;
  const date = unfold(first('date')).trim();
  const parsed = date ? Date.parse(date) : NaN;
  out.date = Number.isFinite(parsed) ? new Date(parsed).toISOString() : clip(date, 200);

  const from = addresses(first('from'), 1);
  if (from[0]) {
    out.from = from[0].display;
    out.fromAddress = from[0].address;
  }
  out.to = addresses(headers.get('to').map(stripName), maxAddresses).map((a) => a.display);
  out.cc = addresses(headers.get('cc').map(stripName), maxAddresses).map((a) => a.display);
  return out;
}

/** `headers.get` returns whole lines; drop the `Name:` part. */
function stripName(line: string): string {
  const i = line.indexOf(':');
  return i >= 0 ? line.slice(i + 1) : line;
}

function addresses(value: string | string[], max: number): { display: string; address: string }[] {
  const out: { display: string; address: string }[] = [];
  if (!value || (Array.isArray(value) && value.length === 0)) return out;
  let parsed;
  try {
    parsed = parseAddressHeader(Array.isArray(value) ? value.map(unfold) : unfold(value));
  } catch {
    return [{ display: clip(decode(unfold(Array.isArray(value) ? value.join(', ') : value)).trim(), MAX_HEADER_CHARS), address: '' }];
  }
  const walk = (list: { name?: string; address?: string; group?: unknown[] }[]): void => {
    for (const a of list) {
      if (out.length >= max) return;
      if (Array.isArray(a.group)) {
        walk(a.group as typeof list);
        continue;
      }
      const address = a.address ?? '';
      const name = a.name ?? '';
      const display = name && address ? `${name} <${address}>` : name || address;
      if (display) out.push({ display: clip(display, MAX_HEADER_CHARS), address: clip(address, 320) });
    }
  };
  walk((parsed?.value ?? []) as { name?: string; address?: string; group?: unknown[] }[]);
  return out;
}

function unfold(value: string): string {
  return value.replace(/\r?\n[ \t]*/g, ' ');
}

function decode(value: string): string {
  try {
    return libmime.decodeWords(value);
  } catch {
    return value;
  }
}

function clip(value: string, max: number): string {
  return value.length > max ? value.slice(0, max) : value;
}

function makePreview(bytes: Buffer, charset: string, html: boolean, max: number): string {
  // Plain text needs only its start: cleaning is local (control characters dropped, whitespace
  // runs collapsed), so a prefix that still gives `max` characters gives the same preview as the
  // whole, for a fraction of the work (this runs for every accepted message).
  const cut = max * 16;
  if (!html && bytes.length > cut) {
    const start = previewText(bytes.subarray(0, cut), charset, false, max);
    if (start.complete) return start.text;
  }
  return previewText(bytes, charset, html, max).text;
}

function previewText(bytes: Buffer, charset: string, html: boolean, max: number): { text: string; complete: boolean } {
  let text: string;
  try {
    text = new TextDecoder(charset, { fatal: false }).decode(bytes);
  } catch {
    // An unknown charset label: windows-1252 never fails and keeps ASCII intact.
    text = new TextDecoder('windows-1252').decode(bytes);
  }
  if (html) {
    text = text
      .replace(/<(style|script|head)\b[\s\S]*?<\/\1\s*>/gi, ' ')
      .replace(/<[^>]*>/g, ' ')
      .replace(/&nbsp;/gi, ' ')
      .replace(/&lt;/gi, '<')
      .replace(/&gt;/gi, '>')
      .replace(/&quot;/gi, '"')
      .replace(/&#39;|&apos;/gi, "'")
      .replace(/&amp;/gi, '&');
  }
  // Drop control characters (other than whitespace, collapsed below) so the preview is printable.

  text = text
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  // The first `max` code points (more than `max` there means the cut lost nothing that counts).
  let n = 0;
  let end = 0;
  for (const ch of text) {
    if (n === max) return { text: text.slice(0, end), complete: true };
    n++;
    end += ch.length;
  }
  return { text, complete: false };
}
