import { describe, expect, it } from 'vitest';
import { SmtpReader, type DataStats } from '../../containers/smtp/protocol/reader.js';
import { decodeXtext, formatReply, isMailbox, parsePathCommand, ReplyError } from '../../containers/smtp/protocol/command.js';

type Unit = { line: string } | { tooLong: true } | { data: string; stats: DataStats };

/** Feeds `script` in chunks of `size` octets, switching modes as a session would, and returns
 * the units with consecutive content chunks joined. */
function run(script: Buffer, size: number): Unit[] {
  const r = new SmtpReader(600);
  const out: Unit[] = [];
  let data: Buffer[] | undefined;
  for (let off = 0; off < script.length; off += size) {
    r.push(script.subarray(off, off + size));
    for (;;) {
      const ev = r.next();
      if (ev.type === 'need-more') break;
      if (ev.type === 'line') {
        const line = ev.line.toString('latin1');
        out.push({ line });
        const bdat = /^BDAT (\d+)/.exec(line);
        if (line === 'DATA') {
          r.expectData();
          data = [];
        } else if (bdat) {
          r.expectBdat(Number(bdat[1]), true);
          data = [];
        }
      } else if (ev.type === 'line-too-long') out.push({ tooLong: true });
      else if (ev.type === 'data') data!.push(Buffer.from(ev.chunk));
      else if (ev.type === 'data-end') {
        out.push({ data: Buffer.concat(data!).toString('latin1'), stats: { ...r.dataStats() } });
        data = undefined;
      }
    }
  }
  return out;
}

const SCRIPT = Buffer.from(
  [
    'EHLO client.example\r\n',
    'MAIL FROM:<a@example.org> SIZE=100\r\n',
    'RCPT TO:<b@example.test>\r\n',
    'DATA\r\n',
    'Subject: x\r\n\r\n',
    '..leading dot\r\n',
    '.\r\n', // the end
    'NOOP\n', // a bare-LF command line is tolerated
    'DATA\r\n',
    'line with bare LF\n.\nstill data\r\n',
    'bare CR\r.\rstill data\r\n',
    '\r\n.\r\n',
    'X'.repeat(700) + '\r\n', // an over-long command line
    'BDAT 12\r\n',
    'abc\r\n.\r\ndef\n',
    'QUIT\r\n',
  ].join(''),
  'latin1',
);

describe('SmtpReader (RFC 5321 §4.1.1.4, §4.5.2; RFC 3030)', () => {
  it('gives the same units for every chunk size from 1 to 512', () => {
    const whole = run(SCRIPT, SCRIPT.length);
    for (let size = 1; size <= 512; size++) {
      expect(run(SCRIPT, size), `chunk size ${size}`).toEqual(whole);
    }
  });

  it('reads commands, unstuffs dots and ends DATA only at CRLF.CRLF', () => {
    const units = run(SCRIPT, SCRIPT.length);
    expect(units.slice(0, 4)).toEqual([
      { line: 'EHLO client.example' },
      { line: 'MAIL FROM:<a@example.org> SIZE=100' },
      { line: 'RCPT TO:<b@example.test>' },
      { line: 'DATA' },
    ]);
    const first = units[4] as { data: string; stats: DataStats };
    expect(first.data).toBe('Subject: x\r\n\r\n.leading dot\r\n');
    expect(first.stats).toMatchObject({ bareLf: false, bareCr: false, bytes: first.data.length });
    expect(units[5]).toEqual({ line: 'NOOP' });
    const second = units[7] as { data: string; stats: DataStats };
    // <LF>.<LF> and <CR>.<CR> never end the data; they are kept and flagged.
    expect(second.data).toBe('line with bare LF\n.\nstill data\r\nbare CR\r.\rstill data\r\n\r\n');
    expect(second.stats.bareLf).toBe(true);
    expect(second.stats.bareCr).toBe(true);
    expect(units[8]).toEqual({ tooLong: true });
    expect(units[9]).toEqual({ line: 'BDAT 12' });
    const bdat = units[10] as { data: string; stats: DataStats };
    expect(bdat.data).toBe('abc\r\n.\r\ndef\n'); // BDAT octets are counted, never dot-scanned
    expect(bdat.stats.bareLf).toBe(true);
    expect(units[11]).toEqual({ line: 'QUIT' });
    expect(units).toHaveLength(12);
  });

  // The published SMTP smuggling end-of-data variants: none may end DATA, so the "second
  // message" after them stays inside the first one.
  const variants: [string, string][] = [
    ['<LF>.<LF>', '\n.\n'],
    ['<LF>.<CR><LF>', '\n.\r\n'],
    ['<CR>.<CR>', '\r.\r'],
    ['<CR>.<LF>', '\r.\n'],
    ['<CR><LF>.<LF>', '\r\n.\n'],
    ['<CR><LF>.<CR>', '\r\n.\r'],
    ['<LF>.<CR>', '\n.\r'],
    ['<CR><LF>.<NUL><CR><LF>', '\r\n.\0\r\n'],
  ];
  for (const [name, seq] of variants) {
    it(`does not end DATA at ${name}`, () => {
      const smuggled = `DATA\r\nSubject: first\r\n\r\nbody${seq}MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n`;
      for (const size of [1, 2, 3, 7, 64, smuggled.length]) {
        const units = run(Buffer.from(smuggled, 'latin1'), size);
        expect(units[0]).toEqual({ line: 'DATA' });
        const d = units[1] as { data: string; stats: DataStats };
        expect(d.data).toContain('MAIL FROM:<evil@example.org>');
        expect(d.data).toContain('Subject: smuggled');
        expect(d.stats.bareLf || d.stats.bareCr || d.data.includes('\0')).toBe(true);
        expect(units[2]).toEqual({ line: 'QUIT' });
        expect(units).toHaveLength(3);
      }
    });
  }

  it('measures the longest text line including CRLF, across chunks', () => {
    const body = 'a'.repeat(998) + '\r\n' + 'b'.repeat(999) + '\r\n.\r\n';
    for (const size of [1, 5, 1000, 5000]) {
      const units = run(Buffer.from('DATA\r\n' + body), size);
      expect((units[1] as { stats: DataStats }).stats.longestLine).toBe(1001);
    }
  });

  it('flags 8-bit content', () => {
    const units = run(Buffer.from('DATA\r\nSubject: caf\u00e9\r\n\r\n.\r\n', 'utf8'), 3);
    expect((units[1] as { stats: DataStats }).stats.eightBit).toBe(true);
  });

  it('discard() drops bytes pipelined after STARTTLS (RFC 3207 §4.2)', () => {
    const r = new SmtpReader();
    r.push(Buffer.from('STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n'));
    const ev = r.next();
    expect(ev).toMatchObject({ type: 'line' });
    r.discard();
    expect(r.next()).toEqual({ type: 'need-more' });
  });
});

describe('command grammar (RFC 5321 §4.1.2, RFC 3461, RFC 6531)', () => {
  it('parses paths and parameters', () => {
    const m = parsePathCommand('FROM:<a@example.org> SIZE=10 BODY=8BITMIME', 'FROM', { utf8: false });
    expect(m.address).toBe('a@example.org');
    expect([...m.params]).toEqual([
      ['SIZE', '10'],
      ['BODY', '8BITMIME'],
    ]);
    expect(parsePathCommand('FROM:<>', 'FROM', { utf8: false }).address).toBe('');
    expect(parsePathCommand('to: <@relay.example:b@example.test>', 'TO', { utf8: false }).address).toBe('b@example.test');
    expect(parsePathCommand('TO:<"odd user"@example.test>', 'TO', { utf8: false }).address).toBe('"odd user"@example.test');
  });

  const bad: [string, 'FROM' | 'TO', number, string][] = [
    ['FROM:a@example.org', 'FROM', 501, '5.5.4'],
    ['FROM:<a@example.org', 'FROM', 501, '5.5.4'],
    ['TO:<>', 'TO', 501, '5.1.3'],
    ['TO:<no-at-sign>', 'TO', 501, '5.1.3'],
    ['TO:<a@-bad-.example>', 'TO', 501, '5.1.3'],
    ['TO:<j\u00fcrgen@example.test>', 'TO', 553, '5.6.7'],
    ['FROM:<a@example.org> SIZE=1 SIZE=2', 'FROM', 501, '5.5.4'],
    ['FROM:<a@example.org>X', 'FROM', 501, '5.5.4'],
    ['TO:<a@example.org>', 'FROM', 501, '5.5.4'],
  ];
  for (const [arg, kw, code, enhanced] of bad) {
    it(`refuses ${JSON.stringify(arg)} with ${code} ${enhanced}`, () => {
      try {
        parsePathCommand(arg, kw, { utf8: false });
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(ReplyError);
        expect((e as ReplyError).code).toBe(code);
        expect((e as ReplyError).enhanced).toBe(enhanced);
      }
    });
  }

  it('accepts UTF-8 mailboxes only with SMTPUTF8', () => {
    expect(isMailbox('j\u00fcrgen@b\u00fccher.example', true)).toBe(true);
    expect(isMailbox('j\u00fcrgen@b\u00fccher.example', false)).toBe(false);
    expect(isMailbox('a@[192.0.2.1]', false)).toBe(true);
    expect(isMailbox('x'.repeat(65) + '@example.org', false)).toBe(false);
  });

  it('decodes xtext (RFC 3461 §4)', () => {
    expect(decodeXtext('rfc822+3Bbob+2Bx@example.org')).toBe('rfc822;bob+x@example.org');
    expect(decodeXtext('bad+2')).toBeUndefined();
    expect(decodeXtext('a=b')).toBeUndefined();
  });

  it('formats multi-line replies with the enhanced code on each line (RFC 2034 §4)', () => {
    expect(formatReply({ code: 250, enhanced: '2.0.0', lines: ['a', 'b'] })).toBe('250-2.0.0 a\r\n250 2.0.0 b\r\n');
    expect(formatReply({ code: 220, lines: ['hi'] })).toBe('220 hi\r\n');
  });
});
