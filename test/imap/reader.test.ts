import { describe, expect, it } from 'vitest';
import { CommandReader, MAX_NESTING, type LiteralDecision, type ReaderEvent, type ReaderLimits } from '../../containers/imap/protocol/reader.js';
import { atom, type ImapValue } from '../../containers/imap/protocol/values.js';

const LIMITS: ReaderLimits = { maxLineBytes: 1024, maxLiteralBytes: 4096 };

/** A copy of a value as it is now (a 'literal' event's args array keeps growing afterwards). */
function snapshot(v: ImapValue): ImapValue {
  if (Array.isArray(v)) return v.map(snapshot);
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (v && typeof v === 'object') return { ...v, ...(v.section ? { section: v.section.map(snapshot) } : {}) };
  return v;
}

interface Run {
  events: ReaderEvent[];
  /** What each streamed literal's sink received, and whether it was ended once. */
  streamed: { parts: Buffer[]; ended: number }[];
  maxPending: number;
}

/** Feeds `input` in chunks of `chunk` octets (all at once by default), answering literals with `decide`. */
function run(
  input: Buffer | string,
  options: { limits?: ReaderLimits; chunk?: number; decide?: (e: Extract<ReaderEvent, { kind: 'literal' }>) => LiteralDecision | 'stream' } = {},
): Run {
  const reader = new CommandReader(options.limits ?? LIMITS);
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const chunk = options.chunk ?? bytes.length;
  const out: Run = { events: [], streamed: [], maxPending: 0 };
  for (let at = 0; at < bytes.length; at += chunk) {
    reader.push(bytes.subarray(at, at + chunk));
    for (let e = reader.next(); e; e = reader.next()) {
      out.events.push(e.kind === 'command' || e.kind === 'literal' ? { ...e, args: e.args.map(snapshot) } : e);
      if (e.kind === 'literal') {
        const d = options.decide ? options.decide(e) : { take: 'buffer' as const };
        if (d === 'stream') {
          const record = { parts: [] as Buffer[], ended: 0 };
          out.streamed.push(record);
          reader.decide({
            take: 'stream',
            sink: { write: (b) => record.parts.push(b), end: () => record.ended++ },
          });
        } else reader.decide(d);
      }
    }
    out.maxPending = Math.max(out.maxPending, reader.pending);
  }
  return out;
}

function commands(r: Run): { tag: string; name: string; args: ImapValue[] }[] {
  return r.events.flatMap((e) => (e.kind === 'command' ? [{ tag: e.tag, name: e.name, args: e.args }] : []));
}

function one(line: string): { tag: string; name: string; args: ImapValue[] } {
  const r = run(line);
  expect(r.events.map((e) => e.kind)).toEqual(['command']);
  return commands(r)[0]!;
}

function bads(r: Run): { tag: string | undefined; text: string; fatal: boolean }[] {
  return r.events.flatMap((e) => (e.kind === 'bad' ? [{ tag: e.tag, text: e.text, fatal: e.fatal }] : []));
}

const A = (value: string, extra = {}) => atom(value, extra);

describe('constructs (RFC 9051 §9)', () => {
  it('reads tag, upper-cased name and atoms; UID FETCH is UID with FETCH as first argument', () => {
    expect(one('a1 uid fetch 1:*,5 (FLAGS)\r\n')).toEqual({ tag: 'a1', name: 'UID', args: [A('fetch'), A('1:*,5'), [A('FLAGS')]] });
    expect(one('A.b]7 NOOP\r\n')).toEqual({ tag: 'A.b]7', name: 'NOOP', args: [] });
  });

  it('reads quoted strings with \\" and \\\\ and UTF-8, and NIL as null', () => {
    expect(one('t LOGIN "us\\"er" "p\\\\ss wörd" NIL nil\r\n').args).toEqual(['us"er', 'p\\ss wörd', null, null]);
    expect(one('t LOGIN "" ""\r\n').args).toEqual(['', '']);
  });

  it('reads nested lists, empty lists and flags', () => {
    expect(one('t STORE 1 +FLAGS.SILENT (\\Seen \\* $Forwarded (a (b)) ())\r\n').args).toEqual([
      A('1'),
      A('+FLAGS.SILENT'),
      [A('\\Seen'), A('\\*'), A('$Forwarded'), [A('a'), [A('b')]], []],
    ]);
  });

  it('splits fetch attributes into section and partial', () => {
    const args = one('t FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048> BINARY[1.2] BODY[] RFC822.HEADER body[1.2.MIME]<10> BINARY.SIZE[3])\r\n').args;
    expect(args[1]).toEqual([
      A('BODY.PEEK', { section: [A('HEADER.FIELDS'), [A('FROM'), A('TO')]], partial: { start: 0, length: 2048 } }),
      A('BINARY', { section: [A('1.2')] }),
      A('BODY', { section: [] }),
      A('RFC822.HEADER'),
      A('body', { section: [A('1.2.MIME')], partial: { start: 10 } }),
      A('BINARY.SIZE', { section: [A('3')] }),
    ]);
  });

  it('keeps brackets of other atoms as part of the atom (astring mailbox names)', () => {
    expect(one('t SELECT [Gmail]/Sent\r\n').args).toEqual([A('[Gmail]/Sent')]);
    expect(one('t LIST "" %/*\r\n').args).toEqual(['', A('%/*')]);
  });

  it('accepts lists nested exactly MAX_NESTING deep', () => {
    const deep = '('.repeat(MAX_NESTING) + ')'.repeat(MAX_NESTING);
    expect(run(`t SEARCH ${deep}\r\n`).events.map((e) => e.kind)).toEqual(['command']);
  });
});

describe('literals (RFC 9051 §4.3, RFC 7888, RFC 3516)', () => {
  it('announces a synchronizing literal, then gives the command with the buffered octets', () => {
    const r = run('a LOGIN {4}\r\nus\0r {3+}\r\np\r\n\r\n');
    expect(r.events).toEqual([
      { kind: 'literal', tag: 'a', name: 'LOGIN', args: [], size: 4, sync: true, binary: false },
      { kind: 'literal', tag: 'a', name: 'LOGIN', args: [Buffer.from('us\0r')], size: 3, sync: false, binary: false },
      { kind: 'command', tag: 'a', name: 'LOGIN', args: [Buffer.from('us\0r'), Buffer.from('p\r\n')] },
    ]);
  });

  it('marks ~{n} as binary and places literals inside lists', () => {
    const r = run(Buffer.from('a APPEND INBOX (\\Seen) {0}\r\n (x ~{2+}\r\n\xff\x00)\r\n', 'latin1'));
    const lit = r.events.filter((e) => e.kind === 'literal');
    expect(lit.map((e) => e.kind === 'literal' && [e.size, e.binary])).toEqual([
      [0, false],
      [2, true],
    ]);
    expect(commands(r)[0]!.args).toEqual([A('INBOX'), [A('\\Seen')], Buffer.alloc(0), [A('x'), Buffer.from([0xff, 0])]]);
  });

  it('streams a literal to the sink in pieces, an empty Buffer standing in its place', () => {
    const body = Buffer.alloc(1_000_000, 'x');
    const input = Buffer.concat([Buffer.from(`a APPEND Sent {${body.length}+}\r\n`), body, Buffer.from(' extra\r\nb NOOP\r\n')]);
    const r = run(input, { chunk: 997, decide: () => 'stream' });
    expect(r.streamed).toHaveLength(1);
    expect(r.streamed[0]!.ended).toBe(1);
    expect(Buffer.concat(r.streamed[0]!.parts).equals(body)).toBe(true);
    expect(commands(r)).toEqual([
      { tag: 'a', name: 'APPEND', args: [A('Sent'), Buffer.alloc(0), A('extra')] },
      { tag: 'b', name: 'NOOP', args: [] },
    ]);
    // Bounded memory: nothing beyond one chunk is held while streaming.
    expect(r.maxPending).toBeLessThan(997 * 2);
  });

  it('refused synchronizing literal: the command is dropped and the next line is a new command', () => {
    const r = run('a APPEND INBOX {99999999}\r\nb NOOP\r\n', { decide: () => ({ refuse: 'a NO [TOOBIG] too big\r\n' }) });
    expect(r.events.map((e) => e.kind)).toEqual(['literal', 'command']);
    expect(commands(r)[0]!.tag).toBe('b');
  });

  it('refused non-synchronizing literal: exactly its octets and the rest of the command are dropped', () => {
    const payload = 'b DELETE INBOX\r\n'.padEnd(5000, 'z');
    const r = run(`a APPEND INBOX {5000+}\r\n${payload} (x {4+}\r\nc NO) {3}\r\nc NOOP\r\n`, {
      decide: (e) => (e.size > 4096 ? { refuse: 'a BAD [TOOBIG] over 4096\r\n' } : { take: 'buffer' }),
    });
    expect(r.events.map((e) => e.kind)).toEqual(['literal', 'command']);
    expect(commands(r)).toEqual([{ tag: 'c', name: 'NOOP', args: [] }]);
  });

  it('gives the literal event past maxLiteralBytes; asked to buffer it, reads and drops it and says why', () => {
    const r = run(`a APPEND INBOX {5000}\r\n${'b NOOP\r\n'.repeat(625)}\r\nc NOOP\r\n`);
    expect(r.events[0]).toMatchObject({ kind: 'literal', size: 5000 });
    expect(bads(r)).toEqual([{ tag: 'a', text: 'literal of 5000 octets is over the limit of 4096', fatal: false }]);
    expect(commands(r).map((c) => c.tag)).toEqual(['c']);
  });

  it('decide() without a pending literal is a programming error', () => {
    expect(() => new CommandReader(LIMITS).decide({ take: 'buffer' })).toThrow(/without a pending literal/);
  });
});

describe('limits and bad input', () => {
  const long = 'x'.repeat(1100);

  it('an over-long line gives a bad with its tag, and the reader resynchronises at the next CRLF', () => {
    for (const chunk of [1, 7, 5000]) {
      const r = run(`a1 LOGIN ${long}\r\na2 NOOP\r\n`, { chunk });
      expect(bads(r)).toEqual([{ tag: 'a1', text: 'command line over 1024 octets', fatal: false }]);
      expect(commands(r).map((c) => c.tag)).toEqual(['a2']);
    }
  });

  it('counts every segment of a command against maxLineBytes, literals excluded', () => {
    const half = 'y'.repeat(600);
    expect(bads(run(`a X ${half} {1}\r\nz ${half}\r\nb NOOP\r\n`))).toEqual([{ tag: 'a', text: 'command line over 1024 octets', fatal: false }]);
    expect(commands(run(`a X ${half.slice(0, 400)} {2000}\r\n${'q'.repeat(2000)} ${half}\r\n`))).toHaveLength(1);
  });

  it('an over-long line ending in a non-synchronizing literal drops the literal too (no command injection)', () => {
    for (const chunk of [1, 3, 64, 4000]) {
      const r = run(`a1 APPEND ${long} {17+}\r\nb1 DELETE INBOX\r\n\r\nc1 NOOP\r\n`, { chunk });
      expect(commands(r).map((c) => c.tag)).toEqual(['c1']);
    }
  });

  it('a bad line ending in a non-synchronizing literal drops the literal too', () => {
    const r = run('a1 APPEND INBOX (\\Seen "x) {17+}\r\nb1 DELETE INBOX\r\n\r\nc1 NOOP\r\n');
    expect(bads(r)).toEqual([{ tag: 'a1', text: 'quoted string not closed', fatal: false }]);
    expect(commands(r).map((c) => c.tag)).toEqual(['c1']);
  });

  it('a non-synchronizing literal size beyond 32 bits cannot be skipped: fatal', () => {
    const r = run('a1 APPEND INBOX {99999999999+}\r\nwhatever\r\n');
    expect(bads(r)).toEqual([{ tag: 'a1', text: 'non-synchronizing literal size out of range', fatal: true }]);
    expect(commands(r)).toEqual([]);
  });

  it.each([
    ['a (', 'missing or malformed command name'],
    ['a+1 NOOP', 'missing or malformed tag'],
    ['', 'empty command line'],
    ['a', 'missing or malformed command name'],
    ['a NOOP\0', 'NUL octet in command'],
    ['a LOGIN \xe9', '8-bit octet outside a quoted string or literal'],
    ['a LOGIN x\ry', 'bare CR in command line'],
    ['a LOGIN x\ty', 'control character 0x09 in command'],
    ['a FETCH 1 (FLAGS))', "')' without a matching '('"],
    ['a FETCH 1 (FLAGS', "'(' not closed at the end of the command"],
    ['a FETCH 1 BODY[1', "'[' not closed at the end of the command"],
    ['a LOGIN "x"y', "expected a space before 'y'"],
    ['a LOGIN "x\\n"', 'only \\" and \\\\ may be escaped in a quoted string'],
    ['a LOGIN "x', 'quoted string not closed'],
    ['a LOGIN {3} x', 'a literal size must end the line'],
    ['a LOGIN {x}', 'malformed literal size'],
    ['a FETCH 1 BODY[]<0.0>', 'malformed <partial> after a section'],
    ['a FETCH 1 BODY[]<1', 'malformed <partial> after a section'],
    ['a LOGIN \\', "'\\' not followed by a flag name"],
    [`a SEARCH ${'('.repeat(MAX_NESTING + 1)}`, `lists nested deeper than ${MAX_NESTING}`],
  ])('%j gives a bad saying %j, then reads on', (line, text) => {
    const r = run(Buffer.from(`${line}\r\nz NOOP\r\n`, 'latin1'));
    expect(bads(r).map((b) => b.text)).toEqual([text]);
    expect(bads(r)[0]!.fatal).toBe(false);
    expect(commands(r).map((c) => c.tag)).toEqual(['z']);
  });

  it('a line ended by a bare LF is bad', () => {
    const r = run('a NOOP\nb NOOP\r\n');
    expect(bads(r)).toEqual([{ tag: undefined, text: 'line ended by a bare LF (IMAP lines end with CRLF)', fatal: false }]);
    expect(commands(r).map((c) => c.tag)).toEqual(['b']);
  });

  it('text after a literal without a space is bad', () => {
    const r = run('a LOGIN {3}\r\nabcdef\r\nb NOOP\r\n');
    expect(bads(r)).toEqual([{ tag: 'a', text: "expected a space before 'd'", fatal: false }]);
    expect(commands(r).map((c) => c.tag)).toEqual(['b']);
  });
});

describe('line mode (AUTHENTICATE, IDLE)', () => {
  it('gives raw lines while expectLine is set, commands again after', () => {
    const reader = new CommandReader(LIMITS);
    reader.push(Buffer.from('a IDLE\r\nDONE\r\nb NOOP\r\n'));
    expect(reader.next()).toMatchObject({ kind: 'command', name: 'IDLE' });
    reader.expectLine = true;
    expect(reader.next()).toEqual({ kind: 'line', text: 'DONE' });
    reader.expectLine = false;
    expect(reader.next()).toMatchObject({ kind: 'command', tag: 'b' });
    expect(reader.next()).toBeUndefined();
  });

  it('bounds raw lines by maxLineBytes too', () => {
    const reader = new CommandReader(LIMITS);
    reader.expectLine = true;
    reader.push(Buffer.from(`${'A'.repeat(3000)}\r\n=\r\n`));
    expect(reader.next()).toEqual({ kind: 'bad', tag: undefined, text: 'command line over 1024 octets', fatal: false });
    expect(reader.next()).toEqual({ kind: 'line', text: '=' });
  });
});

/** What real clients send (from their traces); each must parse without a 'bad'. */
const CORPUS = [
  // Python imaplib
  'JKPL1 CAPABILITY',
  'JKPL2 LOGIN alice "pa ss\\"word"',
  'JKPL3 SELECT INBOX',
  'JKPL4 FETCH 1 (RFC822)',
  'JKPL5 UID SEARCH ALL',
  'JKPL6 STORE 1 +FLAGS (\\Deleted)',
  'JKPL7 APPEND INBOX (\\Seen) "01-Jan-2024 10:00:00 +0000" {26}\r\nSubject: hi\r\n\r\nHello there',
  // isync mbsync
  '1 CAPABILITY',
  '3 LIST "" "*"',
  '5 SELECT "INBOX"',
  '6 UID FETCH 1:1000000000 (UID FLAGS)',
  '7 UID FETCH 5 (BODY.PEEK[])',
  '8 APPEND "Sent" (\\Seen) {12+}\r\nSubject: x\r\n',
  '9 UID STORE 5 +FLAGS.SILENT (\\Deleted)',
  '10 UID EXPUNGE 5',
  // Thunderbird
  '1 capability',
  '2 authenticate PLAIN',
  '3 ID ("name" "Thunderbird" "version" "115.3.1")',
  '4 list (subscribed) "" "*" return (special-use)',
  '5 select "INBOX" (CONDSTORE)',
  '6 UID fetch 1:* (FLAGS)',
  'a1 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])',
  '8 IDLE',
  '9 UID STORE 4 +FLAGS (\\Seen $Forwarded)',
  '10 UID MOVE 4,7:9 "Trash"',
  // iOS Mail
  '1 ID ("name" "iPhone Mail" "version" "21A329" "os" "iOS" "os-version" "17.0")',
  '3 ENABLE QRESYNC',
  '4 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))',
  '5 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)',
  '6 UID FETCH 3 (BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (Date Subject From Content-Type)])',
  '7 UID FETCH 4 (BODY.PEEK[1]<0.10240>)',
  // others
  '11 UID SEARCH RETURN (MIN MAX COUNT) UNSEEN SINCE 1-Feb-2024 NOT FROM "bob"',
  '12 SEARCH CHARSET UTF-8 SUBJECT {6}\r\nжук',
  '13 STATUS "Entw&APw-rfe" (MESSAGES UNSEEN UIDNEXT SIZE)',
  '14 LIST "" "%" RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))',
  '15 GETQUOTAROOT INBOX',
  '16 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==',
  '17 UID FETCH 7 (BINARY.PEEK[1.2]<0.4096> BINARY.SIZE[1])',
];
const CORPUS_TEXT = CORPUS.map((c) => `${c}\r\n`).join('');

describe('a real command corpus', () => {
  it('parses every command without a bad', () => {
    const r = run(CORPUS_TEXT);
    expect(bads(r)).toEqual([]);
    expect(commands(r)).toHaveLength(CORPUS.length);
    expect(commands(r)[21]!.args[2]).toContainEqual(
      A('BODY.PEEK', {
        section: [
          A('HEADER.FIELDS'),
          'From To Cc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To'.split(' ').map((h) => A(h)),
        ],
      }),
    );
    expect(commands(r)[32]!.args[3]).toEqual(Buffer.from('жук'));
  });

  it('gives the same events whatever the chunking (every size 1..64, and random splits)', () => {
    const whole = run(CORPUS_TEXT).events;
    for (let chunk = 1; chunk <= 64; chunk++) expect(run(CORPUS_TEXT, { chunk }).events).toEqual(whole);
    const bytes = Buffer.from(CORPUS_TEXT);
    const rand = seeded(7);
    for (let round = 0; round < 50; round++) {
      const reader = new CommandReader(LIMITS);
      const events: ReaderEvent[] = [];
      for (let at = 0; at < bytes.length;) {
        const n = 1 + Math.floor(rand() * 40);
        reader.push(bytes.subarray(at, at + n));
        at += n;
        for (let e = reader.next(); e; e = reader.next()) {
          events.push(e.kind === 'command' || e.kind === 'literal' ? { ...e, args: e.args.map(snapshot) } : e);
          if (e.kind === 'literal') reader.decide({ take: 'buffer' });
        }
      }
      expect(events).toEqual(whole);
    }
  });

  it('reads a burst of pipelined UID FETCH lines from one chunk', () => {
    const burst = Array.from({ length: 5000 }, (_, i) => `f${i} UID FETCH ${i + 1} (UID FLAGS BODY.PEEK[])\r\n`).join('');
    const r = run(burst);
    expect(commands(r)).toHaveLength(5000);
    expect(commands(r)[4999]).toMatchObject({ tag: 'f4999', name: 'UID' });
  });
});

/** A small deterministic PRNG (mulberry32) so a failing garbage case can be replayed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('garbage', () => {
  it('never throws and holds no more than a line and a literal, on thousands of random inputs', () => {
    const limits = { maxLineBytes: 256, maxLiteralBytes: 512 };
    const pieces = [
      'a1 ',
      'FETCH ',
      '(',
      ')',
      '[',
      ']',
      '<1.2>',
      '"',
      '\\',
      '{5}\r\n',
      '{3+}\r\n',
      '~{2}\r\n',
      '{999999999999+}\r\n',
      '\r\n',
      '\r',
      '\n',
      ' ',
      'NIL',
      'BODY[',
      '\0',
      '\xff',
    ];
    const rand = seeded(21);
    let events = 0;
    for (let round = 0; round < 3000; round++) {
      const parts: Buffer[] = [];
      const count = 1 + Math.floor(rand() * 40);
      for (let k = 0; k < count; k++) {
        if (rand() < 0.5) parts.push(Buffer.from(pieces[Math.floor(rand() * pieces.length)]!, 'latin1'));
        else parts.push(Buffer.from(Array.from({ length: Math.floor(rand() * 300) }, () => Math.floor(rand() * 256))));
      }
      const reader = new CommandReader(limits);
      const input = Buffer.concat(parts);
      for (let at = 0; at < input.length;) {
        const n = 1 + Math.floor(rand() * 100);
        reader.push(input.subarray(at, at + n));
        at += n;
        for (let e = reader.next(); e; e = reader.next()) {
          events++;
          if (e.kind === 'literal') {
            const pick = rand();
            if (pick < 0.4) reader.decide({ take: 'buffer' });
            else if (pick < 0.7) reader.decide({ take: 'stream', sink: { write: () => {}, end: () => {} } });
            else reader.decide({ refuse: `${e.tag} NO no\r\n` });
          }
        }
        expect(reader.pending).toBeLessThanOrEqual(limits.maxLineBytes + limits.maxLiteralBytes + 2);
      }
    }
    expect(events).toBeGreaterThan(3000);
  });
});
