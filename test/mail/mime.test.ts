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
  'Content-Disposition: attachment; filename*=UTF-8\'\'r%C3%A9sum%C3%A9.bin',
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
    ]);
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
      // eslint-disable-next-line no-control-regex
      const cleaned = body.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/g, '').replace(/\s+/g, ' ').trim();
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
      yield Buffer.from('Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\nContent-Type: application/zip; name=big.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n');
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
