import { describe, expect, it } from 'vitest';
import { astring, continuation, flagList, imapString, mailboxName, nstring, tagged, untagged } from '../../containers/imap/protocol/encode.js';
import { decodeMailboxName, encodeMailboxName, mailboxNameFromClient, mailboxNameToClient } from '../../core/mailbox/mailbox-name.js';

describe('response lines (RFC 9051 §7)', () => {
  it('writes untagged, tagged and continuation lines', () => {
    expect(untagged('3 EXISTS')).toBe('* 3 EXISTS\r\n');
    expect(tagged('a1', 'OK', 'SELECT completed', 'READ-WRITE')).toBe('a1 OK [READ-WRITE] SELECT completed\r\n');
    expect(tagged('a2', 'NO', 'no such mailbox')).toBe('a2 NO no such mailbox\r\n');
    expect(continuation('ready for literal')).toBe('+ ready for literal\r\n');
    expect(continuation()).toBe('+ \r\n');
  });

  it('never lets text end the line early (no response injection)', () => {
    expect(tagged('a', 'BAD', 'x\r\n* BYE\0', 'A\nB')).toBe('a BAD [A B] x  * BYE \r\n');
    expect(untagged('OK\r\nb OK')).toBe('* OK  b OK\r\n');
  });

  it('writes flag lists', () => {
    expect(flagList(['\\Seen', '$Forwarded'])).toBe('(\\Seen $Forwarded)');
    expect(flagList(new Set<string>())).toBe('()');
  });

  it('re-exports the string syntax of core', () => {
    expect(imapString('a"b')).toBe('"a\\"b"');
    expect(nstring(null)).toBe('NIL');
  });
});

describe('astring and mailbox names', () => {
  it.each([
    ['INBOX', 'INBOX'],
    ['[Gmail]/Sent', '[Gmail]/Sent'],
    ['Sent Items', '"Sent Items"'],
    ['', '""'],
    ['NIL', '"NIL"'],
    ['nil', '"nil"'],
    ['a%b', '"a%b"'],
    ['a*', '"a*"'],
    ['(x)', '"(x)"'],
    ['a\\b', '"a\\\\b"'],
    ['a\nb', '{3}\r\na\nb'],
    ['Entwürfe', '{9}\r\nEntwürfe'],
  ])('astring(%j) is %j', (value, wire) => {
    expect(astring(value)).toBe(wire);
  });

  it('sends UTF-8 names quoted to UTF-8 clients, modified UTF-7 to the others', () => {
    expect(astring('Entwürfe', true)).toBe('"Entwürfe"');
    expect(mailboxName('Entwürfe', false)).toBe('Entw&APw-rfe');
    expect(mailboxName('Entwürfe', true)).toBe('"Entwürfe"');
    expect(mailboxName('Tom & Jerry', false)).toBe('"Tom &- Jerry"');
  });
});

describe('modified UTF-7 (RFC 3501 §5.1.3)', () => {
  it.each([
    ['Entwürfe', 'Entw&APw-rfe'],
    ['日本語', '&ZeVnLIqe-'],
    ['&', '&-'],
    ['a&b', 'a&-b'],
    ['~peter/mail/台北/日本語', '~peter/mail/&U,BTFw-/&ZeVnLIqe-'],
    ['😀 Fun', '&2D3eAA- Fun'],
    ['plain/ASCII name', 'plain/ASCII name'],
  ])('%j is %j both ways', (name, wire) => {
    expect(encodeMailboxName(name)).toBe(wire);
    expect(decodeMailboxName(wire)).toBe(name);
  });

  it.each([
    ['&', '& without its -'],
    ['&Jjo', 'unterminated run'],
    ['&AGE-', 'printable ASCII encoded'],
    ['&Jjo!-', 'bad BASE64 character'],
    ['&U,BTFw-&ZeVnLIqe-', 'two runs back to back'],
    ['Entwürfe', 'raw 8-bit character'],
    ['a\tb', 'raw control character'],
    ['&2D0-', 'lone high surrogate'],
    ['&3gA-', 'lone low surrogate'],
    ['&APx-', 'nonzero padding bits'],
    ['&AP-', 'not a whole UTF-16 unit'],
    ['&APwA-', 'a BASE64 character too many'],
  ])('refuses %j (%s)', (wire) => {
    expect(decodeMailboxName(wire)).toBeUndefined();
  });

  it('round-trips random names', () => {
    let seed = 5;
    const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const alphabet = ['a', 'Z', ' ', '&', '-', '/', '.', 'ü', 'ß', '日', '本', '😀', '\u00a0', '~', '+', ','];
    for (let n = 0; n < 2000; n++) {
      const name = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join('');
      const wire = encodeMailboxName(name);
      expect(wire).toMatch(/^[\x20-\x7e]*$/);
      expect(decodeMailboxName(wire)).toBe(name);
    }
  });

  it('converts only for clients without UTF-8', () => {
    expect(mailboxNameFromClient('Entw&APw-rfe', false)).toBe('Entwürfe');
    expect(mailboxNameFromClient('Entw&APw-rfe', true)).toBe('Entw&APw-rfe');
    expect(mailboxNameFromClient('Entw&rfe', false)).toBeUndefined();
    expect(mailboxNameToClient('日本語', false)).toBe('&ZeVnLIqe-');
    expect(mailboxNameToClient('日本語', true)).toBe('日本語');
  });
});
