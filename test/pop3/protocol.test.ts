/**
 * The pure POP3 layers: line framing and command parsing fed at every chunk size 1..512, and the
 * RETR/TOP encoder (CRLF normalisation, byte-stuffing, TOP line counts) likewise.
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { multiline, parseCommand, parseCount, parseMessageNumber, REPLY_GRAMMAR } from '../../containers/pop3/protocol/commands.js';
import { crlfSize, encodeMessage, encodeWhole, MessageEncoder } from '../../containers/pop3/protocol/encode.js';
import { LineReader, type LineResult } from '../../containers/pop3/protocol/lines.js';

function chunks(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

function readAll(input: Buffer, size: number, maxLine?: number): LineResult[] {
  const r = new LineReader(maxLine);
  const out: LineResult[] = [];
  for (const c of chunks(input, size)) {
    r.push(c);
    for (;;) {
      const x = r.next();
      if (x.kind === 'need-more') break;
      out.push(x);
    }
  }
  expect(r.next()).toEqual({ kind: 'need-more' });
  return out;
}

describe('RFC 1939 §3 / RFC 2449 §4: framing of command lines', () => {
  const long = 'X'.repeat(2000);
  const script = Buffer.from(
    `CAPA\r\nUSER bob@example.com\r\nPASS pass with spaces\r\nSTAT\nLIST 1\r\n${long}\r\nRETR 1\r\nTOP 1 0\r\nUIDL\r\n\r\nPASS p\u00e4ss\r\nQUIT\r\n`,
  );
  const expected: LineResult[] = [
    { kind: 'line', line: 'CAPA' },
    { kind: 'line', line: 'USER bob@example.com' },
    { kind: 'line', line: 'PASS pass with spaces' },
    { kind: 'line', line: 'STAT' },
    { kind: 'line', line: 'LIST 1' },
    { kind: 'too-long' },
    { kind: 'line', line: 'RETR 1' },
    { kind: 'line', line: 'TOP 1 0' },
    { kind: 'line', line: 'UIDL' },
    { kind: 'line', line: '' },
    { kind: 'line', line: 'PASS p\u00e4ss' },
    { kind: 'line', line: 'QUIT' },
  ];

  it('yields the same lines at every chunk size from 1 to 512', () => {
    for (let size = 1; size <= 512; size++) expect(readAll(script, size), `chunk size ${size}`).toEqual(expected);
  });

  it('says need-more until the line ending arrives', () => {
    const r = new LineReader();
    r.push(Buffer.from('NOOP'));
    expect(r.next()).toEqual({ kind: 'need-more' });
    r.push(Buffer.from('\r'));
    expect(r.next()).toEqual({ kind: 'need-more' });
    r.push(Buffer.from('\n'));
    expect(r.next()).toEqual({ kind: 'line', line: 'NOOP' });
  });

  it('bounds a line by the limit, CRLF included, and never buffers past it', () => {
    const limit = 16;
    expect(readAll(Buffer.from(`${'a'.repeat(14)}\r\n`), 1, limit)).toEqual([{ kind: 'line', line: 'a'.repeat(14) }]);
    expect(readAll(Buffer.from(`${'a'.repeat(15)}\r\nNOOP\r\n`), 3, limit)).toEqual([{ kind: 'too-long' }, { kind: 'line', line: 'NOOP' }]);
    const r = new LineReader(limit);
    r.push(Buffer.alloc(10_000, 0x41));
    expect(r.next()).toEqual({ kind: 'need-more' });
    expect(r.pending).toBe(0);
  });

  it('forgets buffered input on clear (RFC 2595 §4: nothing pipelined before TLS survives it)', () => {
    const r = new LineReader();
    r.push(Buffer.from('STLS\r\nUSER evil\r\n'));
    expect(r.next()).toEqual({ kind: 'line', line: 'STLS' });
    r.clear();
    expect(r.next()).toEqual({ kind: 'need-more' });
  });
});

describe('RFC 1939 §3: command syntax', () => {
  it.each([
    ['STAT', { verb: 'STAT', args: [], rest: '' }],
    ['list 3', { verb: 'LIST', args: ['3'], rest: '3' }],
    ['Top 1 10', { verb: 'TOP', args: ['1', '10'], rest: '1 10' }],
    ['PASS  two  spaces ', { verb: 'PASS', args: ['two', 'spaces'], rest: ' two  spaces ' }],
    ['AUTH PLAIN AGJvYgBzZWNyZXQ=', { verb: 'AUTH', args: ['PLAIN', 'AGJvYgBzZWNyZXQ='], rest: 'PLAIN AGJvYgBzZWNyZXQ=' }],
  ])('%s', (line, cmd) => expect(parseCommand(line)).toEqual(cmd));

  it.each(['', ' STAT', 'ST', 'RETRIEVE 1', 'R3TR 1', '\u00c4BCD'])('rejects %j', (line) => expect(parseCommand(line)).toBeUndefined());

  it('message numbers are positive decimals; TOP counts may be zero', () => {
    expect(parseMessageNumber('1')).toBe(1);
    expect(parseMessageNumber('007')).toBe(7);
    for (const bad of ['0', '-1', '1.0', ' 1', '', 'x', '1234567890', undefined]) expect(parseMessageNumber(bad)).toBeUndefined();
    expect(parseCount('0')).toBe(0);
    expect(parseCount('-1')).toBeUndefined();
  });

  it('multi-line replies are byte-stuffed and terminated, and match the reply grammar', () => {
    const text = multiline('+OK list\r\n', ['1 100', '.hidden']);
    expect(text).toBe('+OK list\r\n1 100\r\n..hidden\r\n.\r\n');
    expect('+OK list').toMatch(REPLY_GRAMMAR);
    expect('-ERR [IN-USE] locked').toMatch(REPLY_GRAMMAR);
    expect('+ ').toMatch(REPLY_GRAMMAR);
    expect('OK').not.toMatch(REPLY_GRAMMAR);
  });
});

function encodeAt(input: Buffer, size: number, topLines?: number): { out: string; octets: number } {
  const e = new MessageEncoder({ topLines });
  const parts: Buffer[] = [];
  for (const c of chunks(input, size)) parts.push(e.encode(c));
  parts.push(e.finish());
  return { out: Buffer.concat(parts).toString('latin1'), octets: e.messageOctets };
}

describe('RFC 1939 §3, §5 RETR, §7 TOP: the response body', () => {
  const message = Buffer.from('Subject: dots\r\nX-A: 1\r\n\r\n.starts with a dot\r\nline 2\r\n..two dots\r\n.\r\nlast\r\n', 'latin1');
  const cases: { name: string; input: Buffer; top?: number; expected: string; octets?: number }[] = [
    {
      name: 'RETR stuffs every line that starts with a dot',
      input: message,
      expected: 'Subject: dots\r\nX-A: 1\r\n\r\n..starts with a dot\r\nline 2\r\n...two dots\r\n..\r\nlast\r\n.\r\n',
      octets: message.length,
    },
    {
      name: 'bare LF and bare CR become CRLF; a missing final line end is added',
      input: Buffer.from('A: 1\n\nbody\rmore\r\n.x\nend', 'latin1'),
      expected: 'A: 1\r\n\r\nbody\r\nmore\r\n..x\r\nend\r\n.\r\n',
      octets: 'A: 1\r\n\r\nbody\r\nmore\r\n.x\r\nend\r\n'.length,
    },
    { name: 'TOP n 0 sends the header and the blank line', input: message, top: 0, expected: 'Subject: dots\r\nX-A: 1\r\n\r\n.\r\n' },
    { name: 'TOP n 2 sends two body lines', input: message, top: 2, expected: 'Subject: dots\r\nX-A: 1\r\n\r\n..starts with a dot\r\nline 2\r\n.\r\n' },
    {
      name: 'TOP past the end sends everything',
      input: message,
      top: 100,
      expected: 'Subject: dots\r\nX-A: 1\r\n\r\n..starts with a dot\r\nline 2\r\n...two dots\r\n..\r\nlast\r\n.\r\n',
    },
    { name: 'TOP of a message without a body sends it all', input: Buffer.from('A: 1\r\nB: 2\r\n'), top: 0, expected: 'A: 1\r\nB: 2\r\n.\r\n' },
    { name: 'an empty message is just the terminator', input: Buffer.alloc(0), expected: '.\r\n', octets: 0 },
    { name: 'a CR at the very end becomes CRLF', input: Buffer.from('A: 1\r\n\r\nx\r'), expected: 'A: 1\r\n\r\nx\r\n.\r\n', octets: 11 },
  ];
  for (const c of cases) {
    it(`${c.name}, at every chunk size 1..512`, () => {
      for (let size = 1; size <= 512; size++) {
        const r = encodeAt(c.input, size, c.top);
        expect(r.out, `chunk size ${size}`).toBe(c.expected);
        if (c.octets !== undefined) expect(r.octets, `chunk size ${size}`).toBe(c.octets);
      }
    });
  }

  it('encodeMessage streams, stops reading once TOP has enough, and crlfSize counts CRLF octets', async () => {
    let pulled = 0;
    async function* source() {
      yield Buffer.from('A: 1\r\n\r\nline 1\r\n');
      pulled++;
      yield Buffer.from('line 2\r\n');
      pulled++;
      yield Buffer.from('line 3\r\n');
      pulled++;
    }
    const parts: Buffer[] = [];
    for await (const b of encodeMessage(source(), { topLines: 1 })) parts.push(b);
    expect(Buffer.concat(parts).toString()).toBe('A: 1\r\n\r\nline 1\r\n.\r\n');
    expect(pulled).toBe(0);
    expect(await crlfSize(Readable.from([Buffer.from('a\nb\r\n')]))).toBe(6);
  });

  it('the fast path for CRLF-clean chunks agrees with the byte-by-byte path on random input', () => {
    // TOP with a huge count sends the whole message through the general path; RETR takes the
    // fast path wherever it can. Both must give the same bytes for any input and chunking.
    let seed = 12345;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const alphabet = ['a', 'b', '.', '\r\n', '\r\n', '\r\n.', '\n', '\r', ' '];
    for (let round = 0; round < 300; round++) {
      let text = '';
      const len = rnd(400);
      for (let i = 0; i < len; i++) text += alphabet[rnd(alphabet.length)];
      const input = Buffer.from(`H: 1\r\n\r\n${text}`);
      const size = 1 + rnd(64);
      const retr = encodeAt(input, size);
      const top = encodeAt(input, size, 1e9);
      expect(retr.out, JSON.stringify({ text, size })).toBe(top.out);
    }
  });

  it('encodeWhole gives the status line plus what the streaming encoder gives, or declines', () => {
    // Whole-message RETR must match the stream encoder byte for byte on CRLF-clean input and
    // decline (undefined) on anything with a bare CR or LF; with or without a buffer to reuse.
    let seed = 777;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const clean = ['a', 'b', '.', '\r\n', '\r\n', '\r\n.', ' ', '..'];
    const dirty = [...clean, '\n', '\r'];
    let reused: Buffer | undefined;
    let declined = 0;
    for (let round = 0; round < 400; round++) {
      const alphabet = round % 2 === 0 ? clean : dirty;
      let text = '';
      const len = rnd(300);
      for (let i = 0; i < len; i++) text += alphabet[rnd(alphabet.length)];
      const input = Buffer.from(text, 'latin1');
      const stream = encodeAt(input, 1 + rnd(64));
      const whole = encodeWhole('+OK x\r\n', input, round % 3 === 0 ? undefined : reused);
      const isClean = !/\r(?!\n)|(^|[^\r])\n/.test(text);
      if (!isClean) {
        expect(whole, JSON.stringify(text)).toBeUndefined();
        declined++;
        continue;
      }
      expect(whole, JSON.stringify(text)).toBeDefined();
      expect(whole!.response.toString('latin1'), JSON.stringify(text)).toBe(`+OK x\r\n${stream.out}`);
      expect(whole!.octets).toBe(stream.octets);
      reused = Buffer.from(whole!.response.buffer);
    }
    expect(declined).toBeGreaterThan(50);
    // The cases above by name: empty, no final CRLF, a final line starting with a dot.
    expect(encodeWhole('+OK\r\n', Buffer.alloc(0))?.response.toString()).toBe('+OK\r\n.\r\n');
    expect(encodeWhole('+OK\r\n', Buffer.from('a\r\n.b'))?.response.toString()).toBe('+OK\r\na\r\n..b\r\n.\r\n');
    expect(encodeWhole('+OK\r\n', Buffer.from('a\r\nb\r'))).toBeUndefined();
  });

  it('keeps memory bounded: output per chunk is at most twice the chunk plus two', () => {
    const e = new MessageEncoder();
    const worst = Buffer.alloc(65536, 0x0a);
    expect(e.encode(worst).length).toBeLessThanOrEqual(2 * worst.length + 2);
  });
});
