/**
 * A bounded summary of a raw RFC 5322 / MIME message for the mailbox index: decoded header fields,
 * the part tree, attachments and a short text preview. Built on @zone-eu/mailsplit (the streaming
 * splitter underneath mailparser) rather than MailParser itself, because MailParser keeps whole
 * text bodies in memory and does not expose each part's transfer encoding and raw size; the
 * splitter hands us each node's headers and its body in chunks, which we count (and decode only
 * where a decoded size or the preview needs it) and then drop.
 */
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
  /** Addresses kept per address field. @default 50 */
  maxAddresses?: number;
}

/** One MIME part as kept in the summary. `size` is the encoded body size in octets. */
export interface PartSummary {
  /** IMAP-style part number: '' for the root, '1', '1.2', ... */
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
}

/** The summary's shape; summarizeMessage returns it typed as a Tables attribute map. */
export interface MessageSummary {
  v: 1;
  /** Octets of the whole raw message. */
  size: number;
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
  parts: PartSummary[];
  partCount: number;
  attachments: { name: string; type: string; size: number }[];
  preview: string;
  /** Set when the MIME structure could not be parsed to the end; the rest is what was read. */
  malformed?: string;
}

const MAX_HEADER_CHARS = 998; // RFC 5322 §2.1.1: a line is at most 998 characters.
const PREVIEW_BYTES = 16 * 1024;

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

  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      summary.size += chunk.length;
      cb(null, chunk);
    },
  });

  // The leaf whose body is streaming now.
  let current: { info: PartSummary; node: MimeNode; attachment: boolean; decoder?: Transform; text?: Buffer[]; textBytes?: number } | undefined;
  let previewSource: { bytes: Buffer; charset: string; html: boolean } | undefined;
  let plainSeen = false;

  const finishLeaf = async (): Promise<void> => {
    const leaf = current;
    current = undefined;
    if (!leaf) return;
    if (leaf.decoder) {
      const dec = leaf.decoder;
      await new Promise<void>((resolve) => {
        dec.once('end', resolve);
        dec.once('error', () => resolve());
        dec.end();
      });
    }
    if (leaf.attachment && summary.attachments.length < maxAttachments) {
      summary.attachments.push({
        name: leaf.info.filename ?? '',
        type: leaf.info.type,
        size: leaf.info.decodedSize ?? leaf.info.size,
      });
    }
    if (leaf.text && !leaf.attachment) {
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
    summary.partCount++;
    const type = (node.contentType || (node.multipart ? `multipart/${node.multipart}` : 'text/plain')).toLowerCase();
    const info: PartSummary = { part: partNumber(node), type, size: 0 };
    if (node.multipart) info.multipart = true;
    if (node.charset) info.charset = String(node.charset).toLowerCase();
    if (node.encoding) info.encoding = String(node.encoding).toLowerCase();
    if (node.disposition) info.disposition = String(node.disposition).toLowerCase();
    if (node.filename) info.filename = clip(String(node.filename), 255);
    if (summary.parts.length < maxParts) summary.parts.push(info);

    if (node.root) readRootHeaders(node, summary, maxAddresses);
    if (node.multipart) return;

    const isText = type === 'text/plain' || type === 'text/html';
    const attachment = info.disposition === 'attachment' || Boolean(info.filename) || (!isText && !type.startsWith('multipart/'));
    const leaf: NonNullable<typeof current> = { info, node, attachment };
    const wantText = !attachment && isText && (type === 'text/plain' ? !plainSeen : !previewSource);
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
    current = leaf;
  };

  const sink = new Writable({
    objectMode: true,
    write(chunk: MimeNode | { type: 'data' | 'body'; node: MimeNode; value: Buffer }, _enc, cb) {
      if (chunk.type === 'node') {
        finishLeaf().then(
          () => {
            onNode(chunk as MimeNode);
            cb();
          },
          (e: Error) => cb(e),
        );
        return;
      }
      if (chunk.type === 'body' && current && chunk.node === current.node) {
        current.info.size += chunk.value.length;
        if (current.decoder) current.decoder.write(chunk.value);
      }
      cb();
    },
    final(cb) {
      finishLeaf().then(() => cb(), cb);
    },
  });

  try {
    await pipeline(input, counter, new Splitter({ ignoreEmbedded: true, maxHeadSize: 1024 * 1024, maxChildNodes: 1000 }), sink);
  } catch (e) {
    if (inputError) throw inputError;
    summary.malformed = clip(e instanceof Error ? e.message : String(e), 200);
    await finishLeaf().catch(() => undefined);
  }
  if (inputError) throw inputError;

  if (previewSource) summary.preview = makePreview(previewSource.bytes, previewSource.charset, previewSource.html, previewChars);
  return summary as unknown as Record<string, AttrValue>;
}

function partNumber(node: MimeNode): string {
  const nr = node.partNr;
  if (!nr || (nr.length === 1 && nr[0] === 'TEXT')) return '';
  return nr.filter((x) => x !== 'TEXT').join('.');
}

function readRootHeaders(node: MimeNode, summary: MessageSummary, maxAddresses: number): void {
  const headers = node.headers;
  if (!headers) return;
  const first = (key: string): string => {
    try {
      return headers.getFirst(key) ?? '';
    } catch {
      return '';
    }
  };
  summary.subject = clip(decode(unfold(first('subject'))), MAX_HEADER_CHARS);
  summary.messageId = clip(unfold(first('message-id')).trim(), MAX_HEADER_CHARS);
  const date = unfold(first('date')).trim();
  const parsed = date ? Date.parse(date) : NaN;
  summary.date = Number.isFinite(parsed) ? new Date(parsed).toISOString() : clip(date, 200);

  const from = addresses(first('from'), 1);
  if (from[0]) {
    summary.from = from[0].display;
    summary.fromAddress = from[0].address;
  }
  summary.to = addresses(headers.get('to').map(stripName), maxAddresses).map((a) => a.display);
  summary.cc = addresses(headers.get('cc').map(stripName), maxAddresses).map((a) => a.display);
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
  // eslint-disable-next-line no-control-regex
  text = text.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/g, '').replace(/\s+/g, ' ').trim();
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
