import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { summarizeMessage, type MessageSummary } from '../../core/mail/mime.js';

const sum = async (raw: string | Buffer, chunk = 7): Promise<MessageSummary> => {
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'utf8');
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunk) parts.push(buf.subarray(i, i + chunk));
  return (await summarizeMessage(Readable.from(parts))) as unknown as MessageSummary;
};

const MULTI = [
  'From: "=?ISO-8859-1?Q?Andr=E9?= Pirard" <PIRARD@vm1.ulg.ac.be>',
  'To: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>, Group: a@x.example, b@x.example;',
  'Cc: c@x.example',
  'Subject: =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=',
  '  =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=',
  'Date: Fri, 21 Nov 1997 09:55:06 -0600',
  'Message-ID: <1234@local.machine.example>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="outer"',
  '',
  'preamble',
  '--outer',
  'Content-Type: multipart/alternative; boundary="inner"',
  '',
  '--inner',
  'Content-Type: text/plain; charset=iso-8859-1',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Caf=E9   au   lait,',
  'bitte.',
  '--inner',
  'Content-Type: text/html; charset=utf-8',
  '',
  '<p>Caf\u00e9</p>',
  '--inner--',
  '--outer',
  'Content-Type: application/octet-stream; name="data.bin"',
  "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
  'Content-Transfer-Encoding: base64',
  '',
  Buffer.alloc(3000, 7).toString('base64').replace(/.{76}/g, '$&\r\n'),
  '--outer',
  'Content-Type: message/rfc822',
  '',
  'Subject: inner message',
  '',
  'inner body',
  '--outer--',
  '',
].join('\r\n');

describe('summarizeMessage', () => {
  it('decodes RFC 2047 headers and lists the part tree, attachments and a preview', async () => {
    const s = await sum(MULTI);
    expect(s.from).toBe('André Pirard <PIRARD@vm1.ulg.ac.be>');
    expect(s.fromAddress).toBe('PIRARD@vm1.ulg.ac.be');
    expect(s.to).toEqual(['Keith Moore <moore@cs.utk.edu>', 'a@x.example', 'b@x.example']);
    expect(s.cc).toEqual(['c@x.example']);
    expect(s.subject).toBe('If you can read this you understand the example.');
    expect(s.date).toBe('1997-11-21T15:55:06.000Z');
    expect(s.messageId).toBe('<1234@local.machine.example>');
    expect(s.size).toBe(Buffer.byteLength(MULTI));
    expect(s.parts.map((p) => [p.part, p.type])).toEqual([
      ['', 'multipart/mixed'],
      ['1', 'multipart/alternative'],
      ['1.1', 'text/plain'],
      ['1.2', 'text/html'],
      ['2', 'application/octet-stream'],
      ['3', 'message/rfc822'],
      ['3.TEXT', 'text/plain'],
    ]);
    expect(s.parts[5].message).toMatchObject({ subject: 'inner message', from: '' });
    expect(s.parts[2]).toMatchObject({ charset: 'iso-8859-1', encoding: 'quoted-printable' });
    expect(s.parts[4]).toMatchObject({ encoding: 'base64', disposition: 'attachment', filename: 'résumé.bin', decodedSize: 3000 });
    expect(s.attachments).toEqual([
      { name: 'résumé.bin', type: 'application/octet-stream', size: 3000 },
      { name: '', type: 'message/rfc822', size: expect.any(Number) },
    ]);
    expect(s.preview).toBe('Café au lait, bitte.');
    expect(s.malformed).toBeUndefined();
  });

  it('gives the same summary whatever the chunking', async () => {
    const whole = await sum(MULTI, 1 << 20);
    for (const size of [1, 3, 64, 1000]) expect(await sum(MULTI, size)).toEqual(whole);
  });

  it('the preview of a long plain text is its first 200 characters after cleaning, whatever the text', async () => {
    // The start of a long body is cleaned alone when that is enough; compare with cleaning it all.
    const pieces = ['word ', 'ünïcödé ', '😀', ' '.repeat(500), '\t\r\n', '\u0001', 'x'.repeat(300), '日本語 '];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let round = 0; round < 40; round++) {
      let body = '';
      while (Buffer.byteLength(body) < 6000) body += pieces[rnd(pieces.length)];
      const raw = `Subject: p\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n${body}`;
      const s = (await summarizeMessage(Readable.from([Buffer.from(raw)]))) as unknown as MessageSummary;

      const cleaned = body
        .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/g, '')
        .replace(/\s+/g, ' ')
        .trim();
      expect(s.preview).toBe(Array.from(cleaned).slice(0, 200).join(''));
    }
  });

  it('falls back to the HTML part for the preview', async () => {
    const s = await sum('Content-Type: text/html\r\n\r\n<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p></body></html>\r\n');
    expect(s.preview).toBe('Hi & bye');
  });

  it('keeps raw UTF-8 headers (SMTPUTF8 mail)', async () => {
    const s = await sum('From: Jürgen <jürgen@bücher.example>\r\nSubject: Grüße\r\n\r\nx\r\n');
    expect(s.subject).toBe('Grüße');
    expect(s.fromAddress).toBe('jürgen@bücher.example');
  });

  const malformed: [string, string][] = [
    ['no header/body separator', 'Subject: x'],
    ['an unterminated multipart', 'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello'],
    ['a multipart without a boundary', 'Content-Type: multipart/mixed\r\n\r\nwhatever\r\n'],
    ['broken base64', 'Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64***\r\n'],
    ['binary garbage', '\u0000\u0001\u0002\r\n\r\n\u00ff'],
    ['an empty message', ''],
    ['an unknown charset', 'Content-Type: text/plain; charset=x-unknown-42\r\n\r\nplain ascii\r\n'],
    ['a bad date and encoded word', 'Date: someday\r\nSubject: =?utf-8?Q?broken\r\n\r\nx'],
    ['an attached message of broken base64', 'Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!***\r\n'],
    ['an empty attached message', 'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n--b--\r\n'],
    ['an attached message of binary garbage', 'Content-Type: message/rfc822\r\n\r\n\u0000\u00ff\r\n\r\n\u0001'],
    [
      'an unterminated attached message',
      'Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhel',
    ],
  ];
  for (const [name, raw] of malformed) {
    it(`never throws on ${name}`, async () => {
      const s = await sum(raw);
      expect(s.v).toBe(1);
      expect(s.size).toBe(Buffer.byteLength(raw));
      expect(Array.isArray(s.parts)).toBe(true);
    });
  }

  it('throws when the input stream itself fails (a truncated read must not look whole)', async () => {
    const input = new Readable({
      read() {
        this.push(Buffer.from('Subject: x\r\n\r\n'));
        this.destroy(new Error('disk on fire'));
      },
    });
    await expect(summarizeMessage(input)).rejects.toThrow('disk on fire');
  });

  it('summarises a 40 MB attachment with bounded memory', async () => {
    const line = Buffer.from(Buffer.alloc(57, 0xab).toString('base64') + '\r\n');
    const lines = Math.ceil((40 * 1024 * 1024) / 57);
    async function* gen() {
      yield Buffer.from(
        'Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\nContent-Type: application/zip; name=big.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n',
      );
      const block = Buffer.concat(Array(1000).fill(line));
      for (let i = 0; i < lines; i += 1000) yield i + 1000 <= lines ? block : Buffer.concat(Array(lines - i).fill(line));
      yield Buffer.from('--zz--\r\n');
    }
    global.gc?.();
    const before = process.memoryUsage().rss;
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const s = (await summarizeMessage(Readable.from(gen()))) as unknown as MessageSummary;
    clearInterval(timer);
    expect(s.attachments).toEqual([{ name: 'big.zip', type: 'application/zip', size: lines * 57 }]);
    expect(s.preview).toBe('see attached');
    expect(peak - before).toBeLessThan(48 * 1024 * 1024);
  });
});

/** Quoted-printable (RFC 2045 §6.7) of a text with CRLF line ends: '=', 8-bit octets and trailing white space escaped, soft breaks at 72. */
function qp(text: string): string {
  return text
    .split('\r\n')
    .map((line) => {
      let out = '';
      let len = 0;
      const bytes = Buffer.from(line);
      for (const [i, b] of bytes.entries()) {
        const t =
          b === 0x3d || b > 0x7e || (i === bytes.length - 1 && (b === 0x20 || b === 0x09))
            ? `=${b.toString(16).toUpperCase().padStart(2, '0')}`
            : String.fromCharCode(b);
        if (len + t.length > 72) {
          out += '=\r\n';
          len = 0;
        }
        out += t;
        len += t.length;
      }
      return out;
    })
    .join('\r\n');
}

const b64 = (text: string | Buffer): string => Buffer.from(text).toString('base64').replace(/.{76}/g, '$&\r\n');

/** A message with a text part and an attached message carrying `inner` in the given transfer encoding. */
function withAttached(inner: string, encoding: '7bit' | 'base64' | 'quoted-printable', extra = ''): string {
  const body = encoding === 'base64' ? b64(inner) : encoding === 'quoted-printable' ? qp(inner) : inner;
  return [
    'From: outer@example.org',
    'Subject: forwarding',
    'Content-Type: multipart/mixed; boundary="outer-b"',
    '',
    '--outer-b',
    'Content-Type: text/plain',
    '',
    'see the attached message',
    '--outer-b',
    `Content-Type: message/rfc822${extra}`,
    `Content-Transfer-Encoding: ${encoding}`,
    '',
    body,
    '--outer-b--',
    '',
  ].join('\r\n');
}

const INNER = [
  'From: =?UTF-8?Q?J=C3=BCrgen?= <j@inner.example>',
  'To: a@inner.example, b@inner.example',
  'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_von_innen?=',
  'Date: Thu, 26 Nov 2026 08:00:00 +0100',
  'Message-ID: <inner-1@inner.example>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="inner-b"',
  '',
  '--inner-b',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: 8bit',
  '',
  'Grüße, a long line of inner text: ' + 'x = y '.repeat(30),
  '--inner-b',
  'Content-Type: application/pdf; name="report.pdf"',
  'Content-Disposition: attachment; filename="report.pdf"',
  'Content-Transfer-Encoding: base64',
  '',
  b64(Buffer.alloc(1000, 0x25)),
  '--inner-b--',
  '',
].join('\r\n');

describe('attached messages (message/rfc822) are opened', () => {
  const cases: [string, string][] = [
    ['unencoded, as an attachment', withAttached(INNER, '7bit', '\r\nContent-Disposition: attachment')],
    ['unencoded, inline', withAttached(INNER, '7bit', '\r\nContent-Disposition: inline')],
    ['base64-encoded', withAttached(INNER, 'base64', '; name="fwd.eml"\r\nContent-Disposition: attachment; filename="fwd.eml"')],
    ['quoted-printable', withAttached(INNER, 'quoted-printable')],
    ['message/global (RFC 6532), base64', withAttached(INNER, 'base64').replace('message/rfc822', 'message/global')],
  ];
  for (const [name, raw] of cases) {
    it(`lists the headers and parts of an attached message: ${name}`, async () => {
      for (const chunk of [1, 5, 1 << 20]) {
        const s = await sum(raw, chunk);
        expect(s.malformed).toBeUndefined();
        expect(s.parts.map((p) => [p.part, p.type])).toEqual([
          ['', 'multipart/mixed'],
          ['1', 'text/plain'],
          ['2', expect.stringMatching(/^message\/(rfc822|global)$/)],
          ['2.TEXT', 'multipart/mixed'],
          ['2.1', 'text/plain'],
          ['2.2', 'application/pdf'],
        ]);
        expect(s.parts[2].message).toEqual({
          from: 'Jürgen <j@inner.example>',
          fromAddress: 'j@inner.example',
          to: ['a@inner.example', 'b@inner.example'],
          cc: [],
          subject: 'Grüße von innen',
          date: '2026-11-26T07:00:00.000Z',
          messageId: '<inner-1@inner.example>',
        });
        expect(s.parts[2].decodedSize).toBe(Buffer.byteLength(INNER));
        expect(s.parts[4]).toMatchObject({ charset: 'utf-8', encoding: '8bit' });
        expect(s.parts[5]).toMatchObject({ filename: 'report.pdf', encoding: 'base64', decodedSize: 1000 });
        // The top-level message's own fields, attachments and preview are not the inner one's.
        expect(s.subject).toBe('forwarding');
        expect(s.attachments).toEqual([{ name: expect.any(String), type: s.parts[2].type, size: Buffer.byteLength(INNER) }]);
        expect(s.preview).toBe('see the attached message');
        expect(s.partCount).toBe(6);
      }
    });
  }

  it('opens a message attached at the top level (the whole message is message/rfc822)', async () => {
    const s = await sum(
      `Subject: wrapper\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64('Subject: wrapped\r\n\r\nhello\r\n')}\r\n`,
    );
    expect(s.parts.map((p) => [p.part, p.type, p.message?.subject])).toEqual([
      ['', 'message/rfc822', 'wrapped'],
      ['1.TEXT', 'text/plain', undefined],
    ]);
  });

  /** Level `k` of `n`: a text part and, below the last level, the next level attached in base64. */
  const nest = (k: number, n: number): string =>
    `Subject: level ${k}\r\nContent-Type: multipart/mixed; boundary=b${k}\r\n\r\n--b${k}\r\nContent-Type: text/plain\r\n\r\ntext ${k}\r\n` +
    (k < n ? `--b${k}\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64(nest(k + 1, n))}\r\n` : '') +
    `--b${k}--\r\n`;

  const depths: [string, number | undefined, number][] = [
    ['the default depth limit (5)', undefined, 5],
    ['a depth limit of 2', 2, 2],
    ['a depth limit of 0 (none opened)', 0, 0],
  ];
  for (const [name, maxMessageDepth, opened] of depths) {
    it(`opens messages inside attached messages recursively, up to ${name}`, async () => {
      const s = (await summarizeMessage(Readable.from([Buffer.from(nest(0, 8))]), { maxMessageDepth })) as unknown as MessageSummary;
      expect(s.malformed).toBeUndefined();
      const messages = s.parts.filter((p) => p.type === 'message/rfc822');
      expect(messages.map((p) => p.part)).toEqual(['2', '2.2', '2.2.2', '2.2.2.2', '2.2.2.2.2', '2.2.2.2.2.2'].slice(0, opened + 1));
      expect(messages.map((p) => p.message?.subject)).toEqual([...Array.from({ length: opened }, (_, i) => `level ${i + 1}`), undefined]);
      // The last one listed is a leaf: its size is still measured.
      expect(messages.at(-1)!.decodedSize).toBeGreaterThan(0);
      expect(s.parts.filter((p) => p.type === 'text/plain')).toHaveLength(opened + 1);
      expect(s.subject).toBe('level 0');
    });
  }

  it('stops at 1000 parts in all, attached messages included, and says so', async () => {
    const many = (n: number, tag: string) => `Content-Type: multipart/mixed; boundary=${tag}\r\n\r\n` + `--${tag}\r\n\r\nx\r\n`.repeat(n) + `--${tag}--\r\n`;
    const raw =
      'Subject: many\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n' +
      [0, 1, 2, 3].map((i) => `--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64(many(300, `in${i}`))}\r\n`).join('') +
      '--top--\r\n';
    const started = Date.now();
    const s = await sum(raw, 4096);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(s.malformed).toBe('more than 1000 MIME parts');
    expect(s.partCount).toBe(1001);
    expect(s.parts).toHaveLength(100);
    expect(s.subject).toBe('many');
  });

  it('a broken attached message is reported and the parts after it are still read', async () => {
    const raw =
      'Subject: outer\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n' +
      `--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64(`X-Big: ${'a'.repeat(1100 * 1024)}\r\n\r\nbody\r\n`)}\r\n` +
      '--top\r\nContent-Type: text/plain\r\n\r\nafter it\r\n--top--\r\n';
    const s = await sum(raw, 65536);
    expect(s.malformed).toBe('part 1: Max header size for a MIME node exceeded');
    expect(s.parts.map((p) => [p.part, p.type])).toEqual([
      ['', 'multipart/mixed'],
      ['1', 'message/rfc822'],
      ['2', 'text/plain'],
    ]);
    expect(s.parts[1].size).toBe(Buffer.byteLength(raw.split('\r\n\r\n')[2].split('\r\n--top')[0]));
    expect(s.preview).toBe('after it');
  });

  it('keeps the summary within its byte bound however many attached messages carry long headers', async () => {
    const longName = (i: number) => `"${'Ünïcödé '.repeat(60)}${i}" <user${i}@example.org>`;
    const inner = (i: number) =>
      `From: ${longName(i)}\r\nTo: ${Array.from({ length: 30 }, (_, j) => longName(j)).join(', ')}\r\nCc: ${Array.from({ length: 30 }, (_, j) => longName(j)).join(', ')}\r\nSubject: ${'Ω'.repeat(990)}\r\n\r\nbody ${i}\r\n`;
    const raw =
      `From: sender@example.org\r\nTo: ${Array.from({ length: 50 }, (_, j) => longName(j)).join(', ')}\r\nSubject: bound\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n` +
      Array.from({ length: 60 }, (_, i) => `--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64(inner(i))}\r\n`).join('') +
      '--top--\r\n';
    const s = await sum(raw, 65536);
    expect(s.malformed).toBeUndefined();
    expect(s.partCount).toBe(121);
    expect(Buffer.byteLength(JSON.stringify(s))).toBeLessThanOrEqual(64 * 1024);
    expect(s.trimmed).toBe(true);
    // What is kept is the start: the root and the first attached message with its subject.
    expect(s.parts[1].message?.subject).toBe('Ω'.repeat(990));
    expect(s.to.length).toBeGreaterThan(0);
    const small = (await summarizeMessage(Readable.from([Buffer.from(raw)]), { maxSummaryBytes: 20_000 })) as unknown as MessageSummary;
    expect(Buffer.byteLength(JSON.stringify(small))).toBeLessThanOrEqual(20_000);
    // A plain message is not trimmed.
    expect((await sum(MULTI)).trimmed).toBeUndefined();
  });

  it('summarises a base64 attached message holding a 24 MB attachment with bounded memory', async () => {
    // The attached message is itself base64 inside base64, made as it streams.
    const innerHead = Buffer.from(
      'Subject: big inner\r\nContent-Type: multipart/mixed; boundary=ib\r\n\r\n--ib\r\nContent-Type: application/zip; name=big.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n',
    );
    const innerTail = Buffer.from('--ib--\r\n');
    const line = Buffer.from(Buffer.alloc(57, 0xcd).toString('base64') + '\r\n');
    const lines = Math.ceil((24 * 1024 * 1024) / 57);
    function* inner() {
      yield innerHead;
      const block = Buffer.concat(Array(1000).fill(line));
      for (let i = 0; i < lines; i += 1000) yield i + 1000 <= lines ? block : Buffer.concat(Array(lines - i).fill(line));
      yield innerTail;
    }
    async function* gen() {
      yield Buffer.from(
        'Subject: outer\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nfwd\r\n--zz\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n',
      );
      let rest = Buffer.alloc(0);
      for (const piece of inner()) {
        const all = Buffer.concat([rest, piece]);
        const cut = all.length - (all.length % 57);
        rest = all.subarray(cut);
        const out: string[] = [];
        for (let i = 0; i < cut; i += 57) out.push(all.subarray(i, i + 57).toString('base64'));
        yield Buffer.from(out.join('\r\n') + '\r\n');
      }
      yield Buffer.from(rest.toString('base64') + '\r\n--zz--\r\n');
    }
    global.gc?.();
    const before = process.memoryUsage().rss;
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const s = (await summarizeMessage(Readable.from(gen()))) as unknown as MessageSummary;
    clearInterval(timer);
    expect(s.malformed).toBeUndefined();
    expect(s.parts.map((p) => [p.part, p.type])).toEqual([
      ['', 'multipart/mixed'],
      ['1', 'text/plain'],
      ['2', 'message/rfc822'],
      ['2.TEXT', 'multipart/mixed'],
      ['2.1', 'application/zip'],
    ]);
    expect(s.parts[2].message?.subject).toBe('big inner');
    expect(s.parts[4].decodedSize).toBe(lines * 57);
    expect(peak - before).toBeLessThan(48 * 1024 * 1024);
  });
});

describe('delimiter lines and header sections', () => {
  const multipart = (boundary: string, body: string): string => `Subject: m\r\nContent-Type: multipart/mixed; boundary="${boundary}"\r\n\r\n${body}`;
  const long = 'L'.repeat(150);
  // [name, raw, [part, type, size][], preview]
  const cases: [string, string, [string, string, number][], string][] = [
    [
      'a boundary longer than 70 characters',
      multipart(long, `--${long}\r\nContent-Type: text/plain\r\n\r\none\r\n--${long}\r\nContent-Type: text/html\r\n\r\n<b>two</b>\r\n--${long}--\r\n`),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 3],
        ['2', 'text/html', 10],
      ],
      'one',
    ],
    [
      'a line that starts with the delimiter but goes on is content (RFC 2046 §5.1.1)',
      multipart('b', '--b\r\n\r\none\r\n--bX\r\n--b-\r\n--b--X\r\n--b x\r\ntwo\r\n--b--\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 35],
      ],
      'one --bX --b- --b--X --b x two',
    ],
    [
      'transport padding after a delimiter and after the close delimiter',
      multipart('b', '--b \t \r\n\r\none\r\n--b\t\r\n\r\ntwo\r\n--b--  \r\nepilogue\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 3],
        ['2', 'text/plain', 3],
      ],
      'one',
    ],
    [
      'an empty part first (no header lines, no body)',
      multipart('b', '--b\r\n--b\r\n\r\nhello\r\n--b--\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 0],
        ['2', 'text/plain', 5],
      ],
      'hello',
    ],
    [
      'an empty part last, closed by the close delimiter',
      multipart('b', '--b\r\n\r\nhello\r\n--b\r\n--b--\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 5],
        ['2', 'text/plain', 0],
      ],
      'hello',
    ],
    [
      'a part of header lines only, ended by the next delimiter',
      multipart('b', '--b\r\nContent-Type: image/png\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'image/png', 0],
        ['2', 'text/plain', 5],
      ],
      'hello',
    ],
    [
      'an empty part between two parts with bodies',
      multipart('b', '--b\r\n\r\none\r\n--b\r\n\r\n--b\r\n\r\ntwo\r\n--b--\r\n'),
      [
        ['', 'multipart/mixed', 0],
        ['1', 'text/plain', 3],
        ['2', 'text/plain', 0],
        ['3', 'text/plain', 3],
      ],
      'one',
    ],
    [
      'a message that starts with an empty line has no header section',
      '\r\nSubject: not a header\r\n\r\nbody\r\n',
      [['', 'text/plain', 31]],
      'Subject: not a header body',
    ],
    ['a message without any header line is all body', 'just some text\r\nand: more\r\n', [['', 'text/plain', 27]], 'just some text and: more'],
    ['one line of text without a line end', 'hello there', [['', 'text/plain', 11]], 'hello there'],
    [
      'the header section ends at the first line that is not a header field (trace fields in front, as delivered)',
      'Return-Path: <s@x.example>\r\nReceived: from a\r\n\tby b; Thu, 26 Nov 2026 08:00:00 +0000\r\nno header here\r\nSubject: body too\r\n',
      [['', 'text/plain', 35]],
      'no header here Subject: body too',
    ],
  ];
  for (const [name, raw, parts, preview] of cases) {
    it(name, async () => {
      for (const chunk of [1, 2, 7, 1 << 20]) {
        const s = await sum(raw, chunk);
        expect(s.parts.map((p) => [p.part, p.type, p.size])).toEqual(parts);
        expect(s.preview).toBe(preview);
        expect(s.size).toBe(Buffer.byteLength(raw));
        expect(s.malformed).toBeUndefined();
      }
    });
  }

  it('an mbox From_ line, a field name with space before the colon and folded fields stay in the header section', async () => {
    const s = await sum('From someone Thu Nov 26 08:00:00 2026\r\nSubject : spaced\r\nTo: a@x.example,\r\n b@x.example\r\n\r\nbody\r\n', 3);
    expect(s.subject).toBe('spaced');
    expect(s.to).toEqual(['a@x.example', 'b@x.example']);
    expect(s.preview).toBe('body');
  });
});
