/** The pure parts of core/mailbox/maildir.ts: modified UTF-7 names, Maildir++ folder names and
 * Maildir flags, checked against what Dovecot writes (RFC 3501 §5.1.3 examples included). */
import { describe, expect, it } from 'vitest';
import {
  decodeMailboxUtf7,
  dirOfFolderName,
  encodeMailboxUtf7,
  flagsOfFileName,
  folderNameOfDir,
  infoOfFlags,
  parseSpecialUse,
  specialUseOfName,
} from '../../core/mailbox/maildir.js';

describe('modified UTF-7 (RFC 3501 §5.1.3)', () => {
  const pairs: [string, string][] = [
    ['Bücher', 'B&APw-cher'],
    ['~peter/mail/台北/日本語', '~peter/mail/&U,BTFw-/&ZeVnLIqe-'],
    ['Tom & Jerry', 'Tom &- Jerry'],
    ['Entwürfe', 'Entw&APw-rfe'],
    ['😀', '&2D3eAA-'],
  ];
  it.each(pairs)('%s <-> %s', (plain, encoded) => {
    expect(encodeMailboxUtf7(plain)).toBe(encoded);
    expect(decodeMailboxUtf7(encoded)).toBe(plain);
  });

  it('rejects what is not modified UTF-7', () => {
    for (const bad of ['&Jjo', '&Jjo!-', 'Bücher', '&A-', 'tab\there']) expect(decodeMailboxUtf7(bad), bad).toBeUndefined();
  });
});

describe('Maildir++ folder names', () => {
  it('maps dot-named directories to full names and back', () => {
    expect(folderNameOfDir('.Archive.2024')).toBe('Archive/2024');
    expect(folderNameOfDir('.B&APw-cher')).toBe('Bücher');
    expect(folderNameOfDir('.Bad&name')).toBe('Bad&name'); // not modified UTF-7: kept as it is
    expect(dirOfFolderName('Lists/node')).toBe('.Lists.node');
    expect(dirOfFolderName('Re: v1.2')).toBe('.Re: v1&AC4-2');
    expect(folderNameOfDir(dirOfFolderName('Re: v1.2/Bücher'))).toBe('Re: v1.2/Bücher');
  });

  it('recognises special uses by top-level name only', () => {
    expect(specialUseOfName('Sent')).toBe('\\Sent');
    expect(specialUseOfName('spam')).toBe('\\Junk');
    expect(specialUseOfName('Deleted Items')).toBe('\\Trash');
    expect(specialUseOfName('Projects/Sent')).toBeUndefined();
    expect(specialUseOfName('Sentinel')).toBeUndefined();
    expect(parseSpecialUse('\\archive')).toBe('\\Archive');
    expect(parseSpecialUse('Junk')).toBe('\\Junk');
    expect(parseSpecialUse('\\Important')).toBeUndefined();
  });
});

describe('Maildir flags', () => {
  it('reads system flags and keywords from the :2, suffix', () => {
    const keywords = new Map([['a', '$Label1']]);
    expect(flagsOfFileName('1.M1.host,S=38,W=42:2,FSa', keywords)).toEqual(['\\Flagged', '\\Seen', '$Label1']);
    expect(flagsOfFileName('1.M1.host:2,DRT')).toEqual(['\\Draft', '\\Answered', '\\Deleted']);
    expect(flagsOfFileName('1.M1.host:2,Sz')).toEqual(['\\Seen']); // a keyword letter with no name
    expect(flagsOfFileName('1.M1.host')).toEqual([]);
  });

  it('writes letters in ASCII order, keywords by their letter', () => {
    const letters = ['$Label1', 'project-x'];
    const letterOf = (k: string) => (letters.includes(k) ? String.fromCharCode(0x61 + letters.indexOf(k)) : undefined);
    expect(infoOfFlags(['\\Seen', 'project-x', '\\Flagged', '\\Answered', 'unknown'], letterOf)).toBe(':2,FRSb');
    expect(infoOfFlags([], letterOf)).toBe(':2,');
  });
});
