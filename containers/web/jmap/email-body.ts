/**
 * The body side of RFC 8621 Email objects, read from the raw message as it streams:
 * - `parseEmailBody`: the EmailBodyPart tree (§4.1.4 bodyStructure), decoded part sizes, text
 *   values of the parts asked for (bodyValues, bounded per part), the top-level header fields;
 * - `bodyViews`: textBody, htmlBody and attachments by §4.1.4's algorithm (ported as the RFC
 *   gives it);
 * - `openPart`: one decoded leaf as a stream, for the `G<emailId>P<partId>` blob download;
 * - the header parsed forms of §4.1.2 (asRaw, asText, asAddresses, asGroupedAddresses,
 *   asMessageIds, asDate, asURLs).
 *
 * The MIME walk is the splitter core/mail/mime.ts uses (mailsplit, with its fixes), so a part is
 * the same part in the summary and here. Memory is bounded: bodies pass through decoders that
 * only count, except the text kept for a value (at most MAX_VALUE_BYTES per part) and header
 * blocks (the splitter caps them). Part ids are the leaves' positions in document order (1, 2,
 * ...): stable for a message (its bytes never change) and in the id alphabet, so a part's blobId
 * `G<emailId>P<n>` needs no escaping. An attached message (message/rfc822) is one leaf, as §4.1.4
 * has it; its blob is the attached message.
 */
import { PassThrough, Writable, type Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { MimeNode } from '@zone-eu/mailsplit';
import libmime from 'libmime';
import { parseAddressHeader } from 'mailparser';
import { HeaderSectionEnd, newSplitter } from '../../../core/mail/mime.js';
import type { JsonObject } from './types.js';

/** RFC 2045 §6.1's transfer encodings (the splitter decodes these; others pass through). */
const KNOWN_TRANSFER_ENCODINGS = new Set(['7bit', '8bit', 'binary', 'base64', 'quoted-printable']);

/** Parts read per message at most (as the summary's default). */
const MAX_NODES = 1000;
/** Decoded octets kept of one text part for its value, whatever maxBodyValueBytes says: beyond
 * this a value is truncated (isTruncated), so one request holds a bounded amount per part. */
export const MAX_VALUE_BYTES = 1024 * 1024;

/** One header field as §4.1.3 gives it: the name as it came, the raw value after the colon. */
export interface HeaderField {
  name: string;
  value: string;
}

/** RFC 8621 §4.1.4 EmailBodyPart. */
export interface BodyPart {
  partId: string | null;
  blobId: string | null;
  size: number;
  headers: HeaderField[];
  name: string | null;
  type: string;
  charset: string | null;
  disposition: string | null;
  cid: string | null;
  language: string[] | null;
  location: string | null;
  subParts?: BodyPart[];
}

/** RFC 8621 §4.1.4 EmailBodyValue. */
export interface BodyValue {
  value: string;
  isEncodingProblem: boolean;
  isTruncated: boolean;
}

export interface ParsedBody {
  structure: BodyPart;
  /** The message's own header fields. */
  headers: HeaderField[];
  /** Decoded text of leaves that were asked for, by partId (bytes, up to MAX_VALUE_BYTES);
   * `badEncoding` when the transfer encoding is unknown and the bytes are as they came. */
  text: Map<string, { bytes: Buffer; complete: boolean; charset: string; badEncoding?: boolean }>;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A header line as mailsplit gives it (one char per octet) read as UTF-8 when it is valid UTF-8
 * (RFC 6532 fields, and what Email/set writes for a non-ASCII Raw value), else octet for octet. */
function headerText(line: string): string {
  if (!/[\x80-\xff]/.test(line)) return line;
  try {
    return UTF8.decode(Buffer.from(line, 'latin1'));
  } catch {
    return line;
  }
}

/** Header fields from mailsplit's lines (name as written, value the raw octets after `:`). */
function fieldsOf(node: MimeNode): HeaderField[] {
  if (!node.headers) return [];
  const out: HeaderField[] = [];
  for (const h of node.headers.getList()) {
    const line = headerText(h.line);
    const colon = line.indexOf(':');
    // A line without a field name is no field (the splitter lists an empty header block so).
    if (colon > 0) out.push({ name: line.slice(0, colon), value: line.slice(colon + 1) });
  }
  return out;
}

/**
 * The fields of a header section given whole (the octets before the body): the name as written
 * and the raw value after `:`, folds (CRLF and the blank after it) kept, as fieldsOf gives them.
 * For header-only Email/get, where sending a few hundred octets through the MIME splitter costs
 * more than the read.
 */
export function headerSectionFields(section: Buffer): HeaderField[] {
  const out: HeaderField[] = [];
  let last: HeaderField | undefined;
  for (const line of section.toString('utf8').split(/\r?\n/)) {
    if (line === '') break; // the blank line that ends the section
    if (line[0] === ' ' || line[0] === '\t') {
      if (last) last.value += `\r\n${line}`;
      continue;
    }
    const colon = line.indexOf(':');
    last = colon > 0 ? { name: line.slice(0, colon), value: line.slice(colon + 1) } : undefined;
    if (last) out.push(last);
  }
  return out;
}

/** The last field of a name (§4.1.3: the parsed forms use the last instance), or undefined. */
export function lastField(fields: HeaderField[], name: string): HeaderField | undefined {
  const lower = name.toLowerCase();
  for (let i = fields.length - 1; i >= 0; i--) if (fields[i]!.name.toLowerCase() === lower) return fields[i];
  return undefined;
}

/**
 * Reads the raw message once and returns its body structure and the text of the leaves
 * `wantText` picks (called with each leaf as it is met). `blobIdOf(partId)` names each leaf's blob.
 */
export async function parseEmailBody(raw: Readable, blobIdOf: (partId: string) => string, wantText: (part: BodyPart) => boolean): Promise<ParsedBody> {
  const byNode = new Map<MimeNode, BodyPart>();
  let root: BodyPart | undefined;
  let topHeaders: HeaderField[] = [];
  let leaves = 0;
  const text: ParsedBody['text'] = new Map();
  let current: { part: BodyPart; node: MimeNode; decoder?: Transform; counted: Promise<void>; keep?: Buffer[]; kept: number } | undefined;

  const finish = async () => {
    const c = current;
    current = undefined;
    if (!c?.decoder) return;
    c.decoder.end();
    await c.counted;
    if (c.keep)
      text.set(c.part.partId!, {
        bytes: Buffer.concat(c.keep),
        complete: c.kept <= MAX_VALUE_BYTES,
        charset: c.part.charset ?? 'us-ascii',
        // RFC 8621 §4.1.4: an unknown Content-Transfer-Encoding is an encoding problem (the
        // splitter passes such a body through undecoded).
        ...(KNOWN_TRANSFER_ENCODINGS.has(String(c.node.encoding || '7bit')) ? {} : { badEncoding: true }),
      });
  };

  const onNode = (node: MimeNode) => {
    const headers = fieldsOf(node);
    if (node.root && !node.parentNode) topHeaders = headers;
    const type = (node.contentType || (node.multipart ? `multipart/${node.multipart}` : 'text/plain')).toLowerCase();
    const cid = lastField(headers, 'content-id')?.value.trim().replace(/^<|>$/g, '') || null;
    const lang = lastField(headers, 'content-language')?.value;
    const location = lastField(headers, 'content-location')?.value.trim() || null;
    const part: BodyPart = {
      partId: null,
      blobId: null,
      size: 0,
      headers,
      name: node.filename ? String(node.filename) : null,
      type,
      charset: node.charset ? String(node.charset).toLowerCase() : type.startsWith('text/') ? 'us-ascii' : null,
      disposition: node.disposition ? String(node.disposition).toLowerCase() : null,
      cid,
      language: lang
        ? lang
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : null,
      location,
    };
    if (node.multipart) part.subParts = [];
    byNode.set(node, part);
    const parent = node.parentNode ? byNode.get(node.parentNode as MimeNode) : undefined;
    if (parent?.subParts) parent.subParts.push(part);
    else if (!root) root = part;
    if (node.multipart) return;
    part.partId = String(++leaves);
    part.blobId = blobIdOf(part.partId);
    let decoder: Transform | undefined;
    try {
      decoder = node.getDecoder() as Transform;
    } catch {
      decoder = undefined; // an unknown transfer encoding: the raw size stands
    }
    const c: NonNullable<typeof current> = { part, node, decoder, counted: Promise.resolve(), kept: 0 };
    if (decoder) {
      if (wantText(part)) c.keep = [];
      decoder.on('data', (chunk: Buffer) => {
        part.size += chunk.length;
        if (c.keep && c.kept <= MAX_VALUE_BYTES) {
          const take = chunk.subarray(0, MAX_VALUE_BYTES + 1 - c.kept);
          c.keep.push(Buffer.from(take));
          c.kept += take.length;
        }
      });
      c.counted = new Promise<void>((resolve) => {
        decoder!.once('end', resolve);
        decoder!.once('error', () => resolve());
      });
    }
    current = c;
  };

  const sink = new Writable({
    objectMode: true,
    write(chunk: MimeNode | { type: 'data' | 'body'; node: MimeNode; value: Buffer }, _enc, cb) {
      if (chunk.type === 'node') {
        finish().then(() => {
          try {
            onNode(chunk as MimeNode);
            cb();
          } catch (e) {
            cb(e as Error);
          }
        }, cb);
        return;
      }
      const c = current;
      if (chunk.type !== 'body' || !c || chunk.node !== c.node) return cb();
      if (c.decoder) {
        if (!c.decoder.write(chunk.value)) return void c.decoder.once('drain', () => cb());
      } else c.part.size += chunk.value.length;
      cb();
    },
    final(cb) {
      finish().then(() => cb(), cb);
    },
  });
  try {
    await pipeline(raw, new HeaderSectionEnd(() => undefined), newSplitter(MAX_NODES), sink);
  } catch {
    // Malformed MIME past what the splitter takes: what was read stands (as the summary does).
    await finish().catch(() => undefined);
  }
  root ??= {
    partId: '1',
    blobId: blobIdOf('1'),
    size: 0,
    headers: [],
    name: null,
    type: 'text/plain',
    charset: 'us-ascii',
    disposition: null,
    cid: null,
    language: null,
    location: null,
  };
  return { structure: root, headers: topHeaders, text };
}

/** Streams the decoded body of leaf `partId` of the raw message; undefined when there is none.
 * Resolves once the part is found (its type known); the stream then carries its bytes. */
export async function openPart(raw: Readable, partId: string): Promise<{ type: string; name: string | null; body: Readable } | undefined> {
  const out = new PassThrough();
  let leaves = 0;
  let target: MimeNode | undefined;
  let decoder: Transform | undefined;
  let found: (v: { type: string; name: string | null } | undefined) => void = () => undefined;
  const foundP = new Promise<{ type: string; name: string | null } | undefined>((r) => (found = r));
  const sink = new Writable({
    objectMode: true,
    write(chunk: MimeNode | { type: 'data' | 'body'; node: MimeNode; value: Buffer }, _enc, cb) {
      if (chunk.type === 'node') {
        const node = chunk as MimeNode;
        if (decoder) {
          // The part is over: nothing more of the message is needed.
          decoder.end();
          decoder = undefined;
          return cb(new Done());
        }
        if (node.multipart || String(++leaves) !== partId) return cb();
        target = node;
        try {
          decoder = node.getDecoder() as Transform;
        } catch {
          decoder = new PassThrough();
        }
        decoder.pipe(out);
        found({ type: (node.contentType || 'text/plain').toLowerCase(), name: node.filename ? String(node.filename) : null });
        return cb();
      }
      if (chunk.type !== 'body' || !decoder || chunk.node !== target) return cb();
      if (!decoder.write(chunk.value)) return void decoder.once('drain', () => cb());
      cb();
    },
    final(cb) {
      decoder?.end();
      cb();
    },
  });
  pipeline(raw, new HeaderSectionEnd(() => undefined), newSplitter(MAX_NODES), sink).then(
    () => found(undefined),
    (e: unknown) => {
      if (e instanceof Done) return;
      found(undefined);
      out.destroy(e as Error);
    },
  );
  const info = await foundP;
  return info ? { ...info, body: out } : undefined;
}

class Done extends Error {}

// ---------------------------------------------------------------------------------------------
// §4.1.4 textBody, htmlBody, attachments

const isInlineMediaType = (type: string) => type.startsWith('image/') || type.startsWith('audio/') || type.startsWith('video/');

/** The RFC's parseStructure, as given in §4.1.4 (the lists are passed by reference and a branch
 * may drop one of them for the rest of its walk). */
function parseStructure(
  parts: BodyPart[],
  multipartType: string,
  inAlternative: boolean,
  htmlIn: BodyPart[] | null,
  textIn: BodyPart[] | null,
  attachments: BodyPart[],
): void {
  let htmlBody = htmlIn;
  let textBody = textIn;
  const textLength = textBody ? textBody.length : -1;
  const htmlLength = htmlBody ? htmlBody.length : -1;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const isMultipart = part.type.startsWith('multipart/');
    const isInline =
      part.disposition !== 'attachment' &&
      (part.type === 'text/plain' || part.type === 'text/html' || isInlineMediaType(part.type)) &&
      (i === 0 || (multipartType !== 'related' && (isInlineMediaType(part.type) || !part.name)));
    if (isMultipart) {
      const sub = part.type.split('/')[1] ?? 'mixed';
      parseStructure(part.subParts ?? [], sub, inAlternative || sub === 'alternative', htmlBody, textBody, attachments);
    } else if (isInline) {
      if (multipartType === 'alternative') {
        if (part.type === 'text/plain') textBody?.push(part);
        else if (part.type === 'text/html') htmlBody?.push(part);
        else attachments.push(part);
        continue;
      } else if (inAlternative) {
        if (part.type === 'text/plain') htmlBody = null;
        if (part.type === 'text/html') textBody = null;
      }
      textBody?.push(part);
      htmlBody?.push(part);
      if ((!textBody || !htmlBody) && isInlineMediaType(part.type)) attachments.push(part);
    } else attachments.push(part);
  }
  if (multipartType === 'alternative' && textBody && htmlBody) {
    // Only an HTML part was found: it is the text body too.
    if (textLength === textBody.length && htmlLength !== htmlBody.length) for (let i = htmlLength; i < htmlBody.length; i++) textBody.push(htmlBody[i]!);
    // Only a plain-text part was found: it is the HTML body too.
    if (htmlLength === htmlBody.length && textLength !== textBody.length) for (let i = textLength; i < textBody.length; i++) htmlBody.push(textBody[i]!);
  }
}

export function bodyViews(structure: BodyPart): { textBody: BodyPart[]; htmlBody: BodyPart[]; attachments: BodyPart[] } {
  const textBody: BodyPart[] = [];
  const htmlBody: BodyPart[] = [];
  const attachments: BodyPart[] = [];
  parseStructure([structure], 'mixed', false, htmlBody, textBody, attachments);
  return { textBody, htmlBody, attachments };
}

/** All leaves in document order. */
export function leavesOf(part: BodyPart): BodyPart[] {
  return part.subParts ? part.subParts.flatMap(leavesOf) : [part];
}

/** A text value of at most `max` UTF-8 octets (0: no limit of the client's), cut at a
 * character boundary; isEncodingProblem when the charset is unknown or the bytes invalid. */
export function bodyValue(t: { bytes: Buffer; complete: boolean; charset: string; badEncoding?: boolean }, max: number): BodyValue {
  let value: string;
  let isEncodingProblem = t.badEncoding === true;
  // A value cut at MAX_VALUE_BYTES may end inside a character: decoded as a stream, that
  // unfinished sequence is left out instead of counting as an encoding problem.
  const stream = !t.complete;
  try {
    value = new TextDecoder(t.charset, { fatal: true }).decode(t.complete ? t.bytes : t.bytes.subarray(0, MAX_VALUE_BYTES), { stream });
  } catch {
    isEncodingProblem = true;
    let label = t.charset;
    try {
      new TextDecoder(label);
    } catch {
      label = 'windows-1252'; // an unknown charset: never fails and keeps ASCII
    }
    value = new TextDecoder(label).decode(t.bytes.subarray(0, t.complete ? undefined : MAX_VALUE_BYTES), { stream });
  }
  let isTruncated = !t.complete;
  if (max > 0 && Buffer.byteLength(value) > max) {
    const cut = Buffer.from(value).subarray(0, max);
    // Drop a character cut in half (a trailing partial UTF-8 sequence decodes as U+FFFD).
    value = new TextDecoder('utf-8').decode(cut).replace(/\uFFFD$/, '');
    isTruncated = true;
  }
  return { value, isEncodingProblem, isTruncated };
}

// ---------------------------------------------------------------------------------------------
// §4.1.2 header parsed forms

type Form = 'Raw' | 'Text' | 'Addresses' | 'GroupedAddresses' | 'MessageIds' | 'Date' | 'URLs';
const FORMS = new Set<Form>(['Raw', 'Text', 'Addresses', 'GroupedAddresses', 'MessageIds', 'Date', 'URLs']);

/** Which form each field allows (§4.1.2: the others are invalidArguments); other fields allow
 * Raw and Text only... and every form is allowed for fields the RFC does not name. */
const ALLOWED: Record<string, Form[]> = {
  from: ['Raw', 'Addresses', 'GroupedAddresses'],
  sender: ['Raw', 'Addresses', 'GroupedAddresses'],
  'reply-to': ['Raw', 'Addresses', 'GroupedAddresses'],
  to: ['Raw', 'Addresses', 'GroupedAddresses'],
  cc: ['Raw', 'Addresses', 'GroupedAddresses'],
  bcc: ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-from': ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-sender': ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-reply-to': ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-to': ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-cc': ['Raw', 'Addresses', 'GroupedAddresses'],
  'resent-bcc': ['Raw', 'Addresses', 'GroupedAddresses'],
  subject: ['Raw', 'Text'],
  comments: ['Raw', 'Text'],
  keywords: ['Raw', 'Text'],
  'list-id': ['Raw', 'Text'],
  date: ['Raw', 'Date'],
  'resent-date': ['Raw', 'Date'],
  'message-id': ['Raw', 'MessageIds'],
  'in-reply-to': ['Raw', 'MessageIds'],
  references: ['Raw', 'MessageIds'],
  'resent-message-id': ['Raw', 'MessageIds'],
  'list-help': ['Raw', 'URLs'],
  'list-unsubscribe': ['Raw', 'URLs'],
  'list-subscribe': ['Raw', 'URLs'],
  'list-post': ['Raw', 'URLs'],
  'list-owner': ['Raw', 'URLs'],
  'list-archive': ['Raw', 'URLs'],
};

/** A parsed `header:Name[:asForm][:all]` property, or undefined when it is not valid. */
export function parseHeaderProperty(prop: string): { name: string; form: Form; all: boolean } | undefined {
  const m = /^header:([\x21-\x39\x3b-\x7e]+)(?::as([A-Za-z]+))?(:all)?$/.exec(prop);
  if (!m) return undefined;
  const form = (m[2] ?? 'Raw') as Form;
  if (!FORMS.has(form)) return undefined;
  const allowed = ALLOWED[m[1]!.toLowerCase()];
  if (allowed && !allowed.includes(form)) return undefined;
  return { name: m[1]!, form, all: m[3] !== undefined };
}

const unfold = (v: string) => v.replace(/\r?\n(?=[ \t])/g, '');

function decodeWords(v: string): string {
  try {
    return libmime.decodeWords(v);
  } catch {
    return v;
  }
}

/** §4.1.2.2 Text: unfolded, RFC 2047 words decoded, white space at both ends trimmed. */
export function asText(raw: string): string {
  return decodeWords(unfold(raw)).trim();
}

type Address = { name: string | null; email: string };
type Group = { name: string | null; addresses: Address[] };

/** §4.1.2.4 GroupedAddresses (addresses outside a group in groups of name null). */
export function asGroupedAddresses(raw: string): Group[] {
  let parsed: { name?: string; address?: string; group?: { name?: string; address?: string }[] }[];
  try {
    parsed = (parseAddressHeader(unfold(raw)) as { value?: typeof parsed })?.value ?? [];
  } catch {
    return [];
  }
  const out: Group[] = [];
  const one = (a: { name?: string; address?: string }): Address => ({ name: a.name ? decodeWords(a.name) : null, email: a.address ?? '' });
  for (const a of parsed) {
    if (Array.isArray(a.group)) out.push({ name: a.name ? decodeWords(a.name) : '', addresses: a.group.map(one) });
    else {
      const last = out[out.length - 1];
      if (last && last.name === null) last.addresses.push(one(a));
      else out.push({ name: null, addresses: [one(a)] });
    }
  }
  return out;
}

/** §4.1.2.3 Addresses: the groups flattened. */
export function asAddresses(raw: string): Address[] {
  return asGroupedAddresses(raw).flatMap((g) => g.addresses);
}

/** §4.1.2.5 MessageIds: the msg-ids without angle brackets; null when one does not parse. */
export function asMessageIds(raw: string): string[] | null {
  const text = unfold(raw).replace(/\([^()]*\)/g, ' ');
  const ids = [...text.matchAll(/<([^<>\s]+)>/g)].map((m) => m[1]!);
  return ids.length ? ids : null;
}

/** §4.1.2.6 Date: RFC 3339 (UTC), or null when it does not parse. */
export function asDate(raw: string): string | null {
  const t = Date.parse(
    unfold(raw)
      .replace(/\([^()]*\)/g, ' ')
      .trim(),
  );
  return Number.isFinite(t) ? new Date(t).toISOString().replace(/\.000Z$/, 'Z') : null;
}

/** §4.1.2.7 URLs: the URLs in angle brackets (RFC 2369), or null. */
export function asURLs(raw: string): string[] | null {
  const urls = [...unfold(raw).matchAll(/<([^<>]*)>/g)].map((m) => m[1]!.replace(/\s+/g, ''));
  return urls.length ? urls : null;
}

/** One field value in a form. */
export function headerForm(raw: string, form: Form): unknown {
  switch (form) {
    case 'Raw':
      return raw;
    case 'Text':
      return asText(raw);
    case 'Addresses':
      return asAddresses(raw);
    case 'GroupedAddresses':
      return asGroupedAddresses(raw);
    case 'MessageIds':
      return asMessageIds(raw);
    case 'Date':
      return asDate(raw);
    case 'URLs':
      return asURLs(raw);
  }
}

/** The value of a `header:` property over a list of fields (null/[] when absent). */
export function headerProperty(fields: HeaderField[], p: { name: string; form: Form; all: boolean }): unknown {
  const lower = p.name.toLowerCase();
  const matching = fields.filter((f) => f.name.toLowerCase() === lower);
  if (p.all) return matching.map((f) => headerForm(f.value, p.form));
  const last = matching[matching.length - 1];
  return last ? headerForm(last.value, p.form) : null;
}

/** The body part as JSON with only the asked-for properties (§4.1: bodyProperties). */
export function partJson(part: BodyPart, properties: string[]): JsonObject {
  const out: JsonObject = {};
  for (const p of properties) {
    if (p === 'subParts') continue;
    const h = p.startsWith('header:') ? parseHeaderProperty(p) : undefined;
    if (h) out[p] = headerProperty(part.headers, h);
    else out[p] = (part as unknown as JsonObject)[p] ?? null;
  }
  // A multipart's children are its structure: given whether or not bodyProperties names them.
  if (part.subParts) out.subParts = part.subParts.map((s) => partJson(s, properties));
  return out;
}

export const BODY_PART_PROPERTIES = [
  'partId',
  'blobId',
  'size',
  'headers',
  'name',
  'type',
  'charset',
  'disposition',
  'cid',
  'language',
  'location',
  'subParts',
];
export const DEFAULT_BODY_PROPERTIES = ['partId', 'blobId', 'size', 'name', 'type', 'charset', 'disposition', 'cid', 'language', 'location'];
