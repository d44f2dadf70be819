// IMAP SEARCH over a corpus of real MIME messages (base64 and quoted-printable bodies,
// ISO-8859-1 and UTF-8, encoded-word headers, an attachment), summarised by the delivery code's
// own summarizeMessage, with a reader that counts what it is asked to read.
import { Readable } from 'node:stream';
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { beforeAll, describe, expect, it } from 'vitest';
import { summarizeMessage } from '../../core/mail/mime.js';
import { atom, type ImapValue } from '../../containers/imap/protocol/values.js';
import {
  parseImapDate,
  parseSearch,
  runSearch,
  usesModseq,
  usesSummary,
  type MessageReader,
  type SearchMessage,
  type SearchProgram,
} from '../../containers/imap/search.js';
import { sequenceText } from '../../containers/imap/protocol/values.js';
import { formatEsearch, formatSearch, savedResult } from '../../containers/imap/search-response.js';
import { NeedleScanner, rawMayHold, scanMessage } from '../../containers/imap/search-text.js';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n'), 'latin1');
const b64 = (s: string, enc: BufferEncoding = 'utf8'): string => Buffer.from(s, enc).toString('base64');

const RAW: Buffer[] = [
  // 1: plain ASCII.
  crlf([
    'From: Alice Example <alice@example.org>',
    'To: bob@example.com',
    'Subject: Quarterly report',
    'Date: Mon, 5 Feb 2024 10:00:00 +0000',
    'Message-ID: <1@example.org>',
    '',
    'The numbers look good this quarter.',
    '',
  ]),
  // 2: encoded-word headers, UTF-8 base64 body; written on 6 Feb in New York, 7 Feb in UTC.
  crlf([
    'From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <jurgen@example.de>',
    'To: Bob <bob@example.com>',
    'Cc: Carol <carol@example.net>',
    `Subject: =?UTF-8?B?${b64('Café meeting')}?=`,
    'Date: Tue, 6 Feb 2024 23:30:00 -0500',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: base64',
    '',
    b64('Grüße aus München, from the Tomlinson team.\n'),
    '',
  ]),
  // 3: multipart/mixed: ISO-8859-1 quoted-printable text (a soft break inside a word) and a PDF.
  crlf([
    'From: Dave <dave@example.com>',
    'To: Alice <alice@example.org>, Erin <erin@example.org>',
    'Bcc: secret-list@example.com',
    'Subject: Re: [list] Fwd: Invoice',
    'Date: Sat, 10 Feb 2024 08:00:00 +0100',
    'X-Mailer: Frobnicator 3.1',
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="b1"',
    '',
    '--b1',
    'Content-Type: text/plain; charset=iso-8859-1',
    'Content-Transfer-Encoding: quoted-printable',
    '',
    'Le caf=E9 est pr=EAt. Sent by Toml=',
    'inson.',
    '--b1',
    'Content-Type: application/pdf; name="inv.pdf"',
    'Content-Disposition: attachment; filename="inv.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    b64('%PDF-1.4 SECRETWORD inside the attachment'),
    '--b1--',
    '',
  ]),
  // 4: multipart/alternative, no Date header.
  crlf([
    'From: newsletter@example.net',
    'To: alice@example.org',
    'Subject: Weekly news',
    'MIME-Version: 1.0',
    'Content-Type: multipart/alternative; boundary="alt"',
    '',
    '--alt',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'Plain version of the news.',
    '--alt',
    'Content-Type: text/html; charset=utf-8',
    '',
    '<p>HTML version: <b>hot</b> off the press</p>',
    '--alt--',
    '',
  ]),
];

const FLAGS = [['\\Seen'], ['\\Flagged', '\\Answered', '$Important', '\\Seen'], ['\\Deleted', '\\Draft'], ['\\Recent']];
// Local noon, so the date in the server's zone is the one written here whatever TZ is.
const INTERNAL = [new Date(2024, 1, 5, 12), new Date(2024, 1, 7, 12), new Date(2024, 1, 10, 12), new Date(2024, 1, 12, 12)];

let messages: SearchMessage[];

beforeAll(async () => {
  messages = await Promise.all(
    RAW.map(async (raw, i) => ({
      seq: i + 1,
      uid: [3, 5, 8, 12][i]!,
      flags: FLAGS[i]!,
      internalDate: INTERNAL[i]!,
      size: raw.length,
      modseq: [10, 40, 20, 30][i]!,
      summary: await summarizeMessage(Readable.from([raw])),
    })),
  );
});

/** A reader over RAW that streams in small chunks and counts its reads. */
function reader(): MessageReader & { headers: number; raws: number } {
  const r = {
    headers: 0,
    raws: 0,
    async header(m: SearchMessage): Promise<Buffer> {
      r.headers++;
      const raw = RAW[m.seq - 1]!;
      return raw.subarray(0, raw.indexOf('\r\n\r\n') + 4);
    },
    async raw(m: SearchMessage): Promise<Readable> {
      r.raws++;
      const raw = RAW[m.seq - 1]!;
      const chunks: Buffer[] = [];
      for (let i = 0; i < raw.length; i += 13) chunks.push(raw.subarray(i, i + 13));
      return Readable.from(chunks);
    },
  };
  return r;
}

/** Parses a SEARCH argument list written as IMAP values. */
function program(...args: ImapValue[]): SearchProgram {
  const parsed = parseSearch(args, { utf8: false });
  if ('error' in parsed) throw new Error(parsed.error);
  return parsed.program;
}

const a = (s: string) => atom(s);

/** The sequence numbers matching, and the reads it took. */
async function search(args: ImapValue[], saved?: number[]): Promise<{ seqs: number[]; headers: number; raws: number }> {
  const r = reader();
  const found = await runSearch(program(...args), messages, r, { maxSeq: 4, maxUid: 12, saved, now: new Date() });
  return { seqs: found.map((m) => m.seq), headers: r.headers, raws: r.raws };
}

describe('parseSearch', () => {
  it('reads RETURN and CHARSET before the keys', () => {
    const p = parseSearch([a('RETURN'), [a('min'), a('COUNT')], a('CHARSET'), 'utf-8', a('ALL')], { utf8: false });
    expect(p).toEqual({ program: { k: 'all' }, charset: 'UTF-8', returnOptions: ['MIN', 'COUNT'] });
    expect(parseSearch([a('RETURN'), [], a('ALL')], { utf8: false })).toMatchObject({ returnOptions: ['ALL'] });
  });

  it('answers an unknown charset with BADCHARSET, and CHARSET after UTF8=ACCEPT with BAD', () => {
    expect(parseSearch([a('CHARSET'), a('ISO-8859-1'), a('ALL')], { utf8: false })).toEqual({
      error: 'charset ISO-8859-1 is not supported',
      badCharset: true,
    });
    const bad = parseSearch([a('CHARSET'), a('US-ASCII'), a('ALL')], { utf8: true });
    expect(bad).toEqual({ error: 'CHARSET US-ASCII conflicts with UTF8=ACCEPT' });
  });

  it.each<[string, ImapValue[], string]>([
    ['no key', [], 'a search key is missing'],
    ['an unknown key', [a('FOO')], 'unknown search key FOO'],
    ['a key without its string', [a('SUBJECT')], 'the string after SUBJECT is missing'],
    ['a bad date', [a('SINCE'), a('30-Feb-2024')], 'SINCE needs a date such as 1-Feb-2024'],
    ['a date in the wrong form', [a('ON'), '2024-02-01'], 'ON needs a date such as 1-Feb-2024'],
    ['LARGER without a number', [a('LARGER'), a('big')], 'LARGER needs a number'],
    ['an empty group', [[]], 'an empty parenthesised group'],
    ['OR with one key', [a('OR'), a('SEEN')], 'a search key is missing'],
    ['UID without a set', [a('UID'), a('x')], 'UID needs a sequence set such as 1:5,7 or $'],
    ['KEYWORD that is not an atom', [a('KEYWORD'), 'two words'], 'KEYWORD needs a keyword atom'],
    ['HEADER without its string', [a('HEADER'), a('X-Mailer')], 'the string after HEADER X-Mailer is missing'],
    ['MODSEQ with a bad entry type', [a('MODSEQ'), '/flags/\\draft', a('mine'), a('5')], 'MODSEQ entry type must be priv, shared or all'],
    ['RETURN without a list', [a('RETURN'), a('MIN'), a('ALL')], 'RETURN needs a list of options, such as RETURN (MIN COUNT)'],
    ['an unknown RETURN option', [a('RETURN'), [a('PARTIAL')], a('ALL')], 'unknown RETURN option PARTIAL'],
    ['a NIL where a key goes', [null], 'a search key was expected, not NIL'],
    ['non-ASCII under CHARSET US-ASCII', [a('CHARSET'), a('US-ASCII'), a('BODY'), 'café'], 'the string after BODY is not US-ASCII, the CHARSET given'],
  ])('gives a BAD text for %s', (_name, args, error) => {
    expect(parseSearch(args, { utf8: false })).toEqual({ error });
  });

  it('parses IMAP dates, month case-insensitive, and refuses days that do not exist', () => {
    expect(parseImapDate('1-Feb-2024')).toBe(Date.UTC(2024, 1, 1) / 86_400_000);
    expect(parseImapDate('29-feb-2024')).toBe(Date.UTC(2024, 1, 29) / 86_400_000);
    expect(parseImapDate('29-Feb-2023')).toBeUndefined();
    expect(parseImapDate('1-Fev-2024')).toBeUndefined();
  });

  it('knows when a program uses MODSEQ (RFC 7162 §3.4)', () => {
    expect(usesModseq(program(a('OR'), a('SEEN'), [a('NOT'), a('MODSEQ'), a('5')]))).toBe(true);
    expect(usesModseq(program(a('SEEN')))).toBe(false);
  });

  it('knows when a program reads the stored summary (the session then loads it)', () => {
    expect(usesSummary(program(a('OR'), a('SEEN'), [a('NOT'), a('FROM'), 'x']))).toBe(true);
    expect(usesSummary(program(a('SENTSINCE'), '1-Feb-2024'))).toBe(true);
    expect(usesSummary(program(a('UNSEEN'), a('TEXT'), 'x', a('HEADER'), 'X-Tag', 'y', a('SINCE'), '1-Feb-2024'))).toBe(false);
  });

  it('a program without summary keys finds the same with empty summaries', async () => {
    const args: ImapValue[] = [a('OR'), a('TEXT'), 'quarterly', a('HEADER'), 'X-Mailer', 'frob'];
    const bare = messages.map((m) => ({ ...m, summary: {} }));
    const found = await runSearch(program(...args), bare, reader(), { maxSeq: 4, maxUid: 12, now: new Date() });
    expect(found.map((m) => m.seq)).toEqual((await search(args)).seqs);
    expect(found.map((m) => m.seq)).toEqual([1, 3]);
  });
});

describe('runSearch: keys decided from the index, without reading', () => {
  it.each<[string, ImapValue[], number[]]>([
    ['ALL', [a('ALL')], [1, 2, 3, 4]],
    ['ANSWERED', [a('ANSWERED')], [2]],
    ['UNANSWERED', [a('UNANSWERED')], [1, 3, 4]],
    ['DELETED and DRAFT', [a('DELETED'), a('DRAFT')], [3]],
    ['UNDELETED UNDRAFT', [a('UNDELETED'), a('UNDRAFT')], [1, 2, 4]],
    ['FLAGGED', [a('FLAGGED')], [2]],
    ['UNFLAGGED', [a('UNFLAGGED')], [1, 3, 4]],
    ['SEEN', [a('SEEN')], [1, 2]],
    ['UNSEEN', [a('UNSEEN')], [3, 4]],
    ['RECENT', [a('RECENT')], [4]],
    ['NEW (RECENT UNSEEN)', [a('NEW')], [4]],
    ['OLD (NOT RECENT)', [a('OLD')], [1, 2, 3]],
    ['KEYWORD, case-insensitive', [a('KEYWORD'), a('$important')], [2]],
    ['UNKEYWORD', [a('UNKEYWORD'), a('$Important')], [1, 3, 4]],
    ['a sequence set with *', [a('2,4:*')], [2, 4]],
    ['UID set', [a('UID'), a('4:8')], [2, 3]],
    ['UID *', [a('UID'), a('*')], [4]],
    ['LARGER', [a('LARGER'), a(String(RAW[1]!.length - 1))], [2, 3]],
    ['SMALLER', [a('SMALLER'), a(String(RAW[0]!.length + 1))], [1]],
    ['MODSEQ', [a('MODSEQ'), a('30')], [2, 4]],
    ['MODSEQ with an entry', [a('MODSEQ'), '/flags/\\draft', a('all'), a('21')], [2, 4]],
    ['BEFORE (internal date)', [a('BEFORE'), a('7-Feb-2024')], [1]],
    ['ON (internal date)', [a('ON'), a('7-feb-2024')], [2]],
    ['SINCE (internal date)', [a('SINCE'), a('10-Feb-2024')], [3, 4]],
    ['NOT', [a('NOT'), a('SEEN')], [3, 4]],
    ['OR', [a('OR'), a('DRAFT'), a('RECENT')], [3, 4]],
    ['a group', [[a('SEEN'), a('FLAGGED')]], [2]],
    ['NOT a group', [a('NOT'), [a('OR'), a('1'), a('4')]], [2, 3]],
  ])('%s', async (_name, args, expected) => {
    const r = await search(args);
    expect(r.seqs).toEqual(expected);
    expect(r.headers + r.raws).toBe(0);
  });

  it('$ and UID $ are the saved result (RFC 5182), by UID; no saved result matches nothing', async () => {
    expect((await search([a('$')], [5, 12])).seqs).toEqual([2, 4]);
    expect((await search([a('UID'), a('$'), a('SEEN')], [5, 12])).seqs).toEqual([2]);
    expect((await search([a('$')])).seqs).toEqual([]);
  });
});

describe('runSearch: header keys', () => {
  it('SUBJECT, FROM, TO and CC from the summary: decoded, case-insensitive, no read', async () => {
    for (const [args, expected] of [
      [[a('SUBJECT'), 'CAFÉ'], [2]],
      [[a('SUBJECT'), 'invoice'], [3]],
      [[a('FROM'), 'jürgen müller'], [2]],
      [
        [a('TO'), 'ALICE@example.org'],
        [3, 4],
      ],
      [[a('CC'), 'carol'], [2]],
      [
        [a('NOT'), a('TO'), 'bob'],
        [3, 4],
      ],
    ] as [ImapValue[], number[]][]) {
      const r = await search(args);
      expect(r.seqs, JSON.stringify(args)).toEqual(expected);
      expect(r.headers + r.raws).toBe(0);
    }
  });

  it('BCC and HEADER read the header block only, and only of messages the cheap keys leave open', async () => {
    const bcc = await search([a('BCC'), 'SECRET-list']);
    expect(bcc.seqs).toEqual([3]);
    expect(bcc).toMatchObject({ headers: 4, raws: 0 });
    const header = await search([a('HEADER'), a('x-mailer'), 'frobnicator 3']);
    expect(header.seqs).toEqual([3]);
    // An empty string matches every message that has the field at all (RFC 9051 §6.4.4).
    expect((await search([a('HEADER'), a('MIME-Version'), ''])).seqs).toEqual([2, 3, 4]);
    // Encoded-words are decoded before matching.
    expect((await search([a('HEADER'), a('From'), 'MÜLLER'])).seqs).toEqual([2]);
    const some = await search([a('FLAGGED'), a('HEADER'), a('Date'), '2024']);
    expect(some).toMatchObject({ seqs: [2], headers: 1 });
  });

  it('sent dates use the date as written in the Date header; only boundary messages are read', async () => {
    // Message 2 was written on 6 Feb (-0500) although it is 7 Feb in UTC.
    const on = await search([a('SENTON'), a('6-Feb-2024')]);
    expect(on.seqs).toEqual([2]);
    // Message 1 (5 Feb UTC) is within a day too; 3 (10 Feb) is decided from the summary, 4 has no Date.
    expect(on.headers).toBe(2);
    expect((await search([a('SENTBEFORE'), a('7-Feb-2024')])).seqs).toEqual([1, 2]);
    expect((await search([a('SENTSINCE'), a('7-Feb-2024')])).seqs).toEqual([3]);
    const far = await search([a('SENTSINCE'), a('1-Jan-2020')]);
    expect(far).toMatchObject({ seqs: [1, 2, 3], headers: 0 });
  });
});

describe('runSearch: BODY and TEXT read the message once, decoded', () => {
  it.each<[string, ImapValue[], number[]]>([
    ['UTF-8 in base64', [a('BODY'), 'GRÜSSE'], []],
    ['UTF-8 in base64, folded case', [a('BODY'), 'grüße aus münchen'], [2]],
    ['ISO-8859-1 in quoted-printable', [a('BODY'), 'café est prêt'], [3]],
    ['a word across a quoted-printable soft line break', [a('BODY'), 'Tomlinson'], [2, 3]],
    ['not in a non-text attachment', [a('BODY'), 'SECRETWORD'], []],
    ['both parts of an alternative', [a('BODY'), 'version'], [4]],
    ['HTML matched as its source', [a('BODY'), '<b>hot</b>'], [4]],
    ['BODY does not search the header', [a('BODY'), 'Quarterly'], []],
    ['TEXT searches the header', [a('TEXT'), 'quarterly'], [1]],
    ['TEXT searches decoded header fields', [a('TEXT'), 'Café meeting'], [2]],
    ['TEXT searches MIME part headers', [a('TEXT'), 'inv.pdf'], [3]],
    ['TEXT searches the body', [a('TEXT'), 'numbers look'], [1]],
    ['an empty string matches every message', [a('BODY'), ''], [1, 2, 3, 4]],
    ['BODY with cheap keys: only undecided messages are read', [a('UNSEEN'), a('BODY'), 'news'], [4]],
    ['OR of BODY and TEXT in one pass', [a('OR'), a('BODY'), 'prêt', a('TEXT'), 'Weekly'], [3, 4]],
    ['NOT BODY', [a('NOT'), a('BODY'), 'the'], [3]],
  ])('%s', async (_name, args, expected) => {
    expect((await search(args)).seqs).toEqual(expected);
  });

  it('reads each undecided message once, and none that the cheap keys decided', async () => {
    // UNSEEN decides messages 3 and 4; 1 and 2 are read, once each for both needles.
    const r = await search([a('OR'), a('BODY'), 'x', a('TEXT'), 'y', a('UNSEEN')]);
    expect(r).toMatchObject({ seqs: [3, 4], raws: 2 });
    const some = await search([a('UNSEEN'), a('BODY'), 'news']);
    expect(some).toMatchObject({ raws: 2, headers: 0 });
  });

  it('rejects when a message cannot be read, rather than calling it a non-match', async () => {
    const failing: MessageReader = {
      header: async () => Buffer.alloc(0),
      raw: async () =>
        new Readable({
          read() {
            this.destroy(new Error('blob gone'));
          },
        }),
    };
    await expect(runSearch(program(a('BODY'), 'x'), messages, failing, { maxSeq: 4, maxUid: 12, now: new Date() })).rejects.toThrow('blob gone');
  });
});

describe('rawMayHold: the raw screen before the MIME splitter', () => {
  const head = (lines: string[]) => crlf([...lines, '']);
  const plain = (type: string, body: string, extra: string[] = []) =>
    head(['From: a@example.org', 'Subject: Test', ...extra, `Content-Type: ${type}`, '', body]);
  // [what, raw, needle, does the decoded text hold it]
  const cases: [string, Buffer, string, boolean][] = [
    ['plain, absent', plain('text/plain; charset=us-ascii', 'Nothing to see.'), 'needle', false],
    ['plain, other case', plain('text/plain', 'A NeEdLe here.'), 'needle', true],
    ['a header field', plain('text/plain', 'x', ['X-Tag: Hidden-Value']), 'hidden-value', true],
    ['quoted-printable soft break', plain('text/plain', 'Toml=\r\ninson', ['Content-Transfer-Encoding: quoted-printable']), 'tomlinson', true],
    ['base64', plain('text/plain', b64('secretword'), ['Content-Transfer-Encoding: base64']), 'secretword', true],
    ['base64 behind a comment', plain('text/plain', b64('secretword'), ['Content-Transfer-Encoding: base(x)64']), 'secretword', true],
    ['an encoded-word', head(['Subject: =?utf-8?q?hidden=5Fword?=', '', 'x']), 'hidden_word', true],
    ['a bare CR in a header value', head(['Subject: ab\rcd', '', 'x']), 'abcd', true],
    ['UTF-16 from 7-bit octets', plain('text/plain; charset=utf-16le', 'a\0b\0c\0d\0'), 'abcd', true],
    ['UTF-16 label quoted with a space', plain('text/plain; charset=" UTF-16LE"', 'a\0b\0c\0d\0'), 'abcd', true],
    ['ISO-2022-JP escape inside a word', plain('text/plain; charset=iso-2022-jp', 'ab\x1b(Bcd'), 'abcd', true],
    ['ISO-8859-9 İ folds to i', plain('text/plain; charset=iso-8859-9', 'x\xddy'), 'xi', true],
    ['UTF-8 Kelvin sign folds to k', plain('text/plain; charset=utf-8', Buffer.from('\u212aelvin').toString('latin1')), 'kelvin', true],
    ['UTF-8, absent', plain('text/plain; charset=utf-8', Buffer.from('Grüße').toString('latin1')), 'gruesse', false],
    ['UTF-8, other case', plain('text/plain; charset=utf-8', Buffer.from('GRÜSSE').toString('latin1')), 'grüsse', true],
    ['an RFC 2231 charset', plain("text/plain; charset*=us-ascii''utf-16le", 'a\0b\0c\0d\0'), 'abcd', true],
  ];

  it.each(cases)('%s: never rules out a needle the decoded text holds', async (_what, raw, needle, holds) => {
    const scanned = await scanMessage(Readable.from([raw]), { body: [], text: [needle] });
    expect(scanned.text[0]).toBe(holds);
    const may = rawMayHold(raw, [needle]);
    if (holds) expect(may?.[0]).not.toBe(false);
  });

  it('decides plain messages, and leaves needles with seams to the splitter', () => {
    expect(rawMayHold(plain('text/plain', 'Nothing to see.'), ['needle', 'see'])).toEqual([false, true]);
    expect(rawMayHold(plain('text/plain; charset=utf-8', Buffer.from('Grüße').toString('latin1')), ['GRÜßE', 'nope'])).toEqual([true, false]);
    for (const needle of ['two words', 'subject:test', '', 'tab\there']) expect(rawMayHold(plain('text/plain', 'x'), [needle])).toBeUndefined();
  });

  it('runSearch with a synchronous reader finds what the streaming one finds, reading only the messages that may match', async () => {
    for (const args of [
      [a('BODY'), 'version'],
      [a('TEXT'), 'quarterly'],
      [a('TEXT'), 'Café'],
      [a('NOT'), a('BODY'), 'the'],
      [a('BODY'), 'zzz'],
    ] as ImapValue[][]) {
      const streaming = await search(args);
      const r = Object.assign(reader(), { smalls: 0, small: (m: SearchMessage) => (r.smalls++, RAW[m.seq - 1]) });
      const found = await runSearch(program(...args), messages, r, { maxSeq: 4, maxUid: 12, now: new Date() });
      expect(found.map((m) => m.seq)).toEqual(streaming.seqs);
      expect(r.smalls).toBe(4);
    }
    // Message 1 is plain ASCII: the screen decides it, nothing is streamed; 2 and 3 are encoded.
    const r = Object.assign(reader(), { small: (m: SearchMessage) => RAW[m.seq - 1] });
    await runSearch(program(a('BODY'), 'zzz'), messages.slice(0, 1), r, { maxSeq: 4, maxUid: 12, now: new Date() });
    expect(r.raws).toBe(0);
  });
});

describe('NeedleScanner', () => {
  it('finds a needle split at every position, and not across a restart', () => {
    const text = 'xx ΟΔΟΣ αβγ Straße end';
    for (let cut = 1; cut < text.length; cut++) {
      const s = new NeedleScanner(['οδοσ αβγ', 'STRASSE', 'straße']);
      s.feed(text.slice(0, cut));
      s.feed(text.slice(cut));
      expect(s.found, `cut at ${cut}`).toEqual([true, false, true]);
    }
    const s = new NeedleScanner(['ab']);
    s.feed('a');
    s.restart();
    s.feed('b');
    expect(s.found).toEqual([false]);
  });
});

describe('responses', () => {
  const m = (seq: number, uid: number, modseq = 1): SearchMessage => ({ seq, uid, flags: [], internalDate: new Date(0), size: 0, modseq, summary: {} });

  it('sequenceText writes ranges', () => {
    expect(sequenceText([1, 2, 3, 5, 9, 10, 11, 12])).toBe('1:3,5,9:12');
    expect(sequenceText([7])).toBe('7');
    expect(sequenceText([])).toBe('');
    expect(sequenceText([4, 2, 3, 3])).toBe('2:4');
  });

  it('formatEsearch writes RFC 4731 ESEARCH', () => {
    const found = [m(1, 10, 5), m(2, 11, 9), m(4, 20, 7)];
    expect(formatEsearch('a1', true, found, ['MIN', 'MAX', 'COUNT', 'ALL'])).toBe('* ESEARCH (TAG "a1") UID MIN 10 MAX 20 ALL 10:11,20 COUNT 3');
    expect(formatEsearch('a2', false, found, [])).toBe('* ESEARCH (TAG "a2") ALL 1:2,4');
    expect(formatEsearch('a3', false, [], ['MIN', 'ALL', 'COUNT'])).toBe('* ESEARCH (TAG "a3") COUNT 0');
    expect(formatEsearch('a4', false, [], [])).toBe('* ESEARCH (TAG "a4")');
    expect(formatEsearch('a5', false, found, ['SAVE'])).toBe('');
    expect(formatEsearch('a6', false, found, ['ALL'], { modseq: true })).toBe('* ESEARCH (TAG "a6") ALL 1:2,4 MODSEQ 9');
    // With only MIN/MAX, the MODSEQ is that of the messages returned (RFC 7162 §3.4).
    expect(formatEsearch('a7', false, found, ['MIN', 'MAX'], { modseq: true })).toBe('* ESEARCH (TAG "a7") MIN 1 MAX 4 MODSEQ 7');
    expect(formatEsearch('a"8', false, [], ['COUNT'])).toBe('* ESEARCH (TAG "a\\"8") COUNT 0');
  });

  it('formatSearch writes the IMAP4rev1 SEARCH response, with MODSEQ when asked and something matched', () => {
    expect(formatSearch(false, [m(2, 7, 3), m(5, 9, 8)])).toBe('* SEARCH 2 5');
    expect(formatSearch(true, [m(2, 7, 3), m(5, 9, 8)], { modseq: true })).toBe('* SEARCH 7 9 (MODSEQ 8)');
    expect(formatSearch(true, [], { modseq: true })).toBe('* SEARCH');
  });

  it('savedResult keeps the UIDs to save: all of them, or only MIN/MAX (RFC 5182 §2.4)', () => {
    const found = [m(1, 10), m(2, 11), m(4, 20)];
    expect(savedResult(found, ['COUNT'])).toBeUndefined();
    expect(savedResult(found, ['SAVE'])).toEqual([10, 11, 20]);
    expect(savedResult(found, ['SAVE', 'MIN'])).toEqual([10]);
    expect(savedResult(found, ['SAVE', 'MIN', 'MAX'])).toEqual([10, 20]);
    expect(savedResult(found, ['SAVE', 'MAX', 'COUNT'])).toEqual([10, 11, 20]);
    expect(savedResult([], ['SAVE', 'MIN'])).toEqual([]);
  });
});

describe('memory', () => {
  it('a TEXT search over a 20 MB message streams it: live heap growth stays small', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const head = Buffer.from('From: big@example.org\r\nSubject: big\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n');
    // 20 MB of base64 lines (76 characters each), the needle in the last line.
    const line = Buffer.from(`${b64('lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tem')}\r\n`);
    const lines = Math.ceil((20 * 1024 * 1024) / line.length);
    const tail = Buffer.from(`${b64('and at the very end: NEEDLE-AT-THE-END.')}\r\n`);
    const live = (): number => {
      const u = process.memoryUsage();
      return u.heapUsed + u.arrayBuffers;
    };
    gc();
    const base = live();
    let peak = 0;
    let sent = 0;
    async function* message(): AsyncGenerator<Buffer> {
      yield head;
      const block = Buffer.concat(Array.from({ length: 800 }, () => line)); // ~62 KB per chunk
      for (let i = 0; i < lines; i += 800) {
        yield Buffer.from(block);
        sent += block.length;
        if ((i / 800) % 32 === 0) {
          gc();
          peak = Math.max(peak, live() - base);
        }
      }
      yield tail;
    }
    const result = await scanMessage(Readable.from(message()), { body: [], text: ['needle-at-the-end', 'never there'] });
    expect(sent).toBeGreaterThan(20 * 1024 * 1024);
    expect(result.text).toEqual([true, false]);
    expect(peak).toBeLessThan(4 * 1024 * 1024);
  });
});
