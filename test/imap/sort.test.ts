// IMAP SORT (RFC 5256, RFC 5957): the base-subject algorithm step by step, each sort key's
// order, REVERSE, ties by sequence number, and the parser's BAD texts.
import { describe, expect, it } from 'vitest';
import type { AttrValue } from '../../core/storage/ports.js';
import { atom, type ImapValue } from '../../containers/imap/protocol/values.js';
import type { SearchMessage } from '../../containers/imap/search.js';
import { baseSubject, formatSort, parseSort, sortMessages, splitAddress, type SortCriterion } from '../../containers/imap/sort.js';

const a = (s: string) => atom(s);

describe('baseSubject (RFC 5256 §2.1)', () => {
  it('step 1: runs of whitespace become one space', () => {
    expect(baseSubject('Lunch \t  on\r\n Friday')).toBe('Lunch on Friday');
  });
  it('step 2: trailing "(fwd)" and whitespace go, repeatedly', () => {
    expect(baseSubject('Plans (fwd) (FWD)  ')).toBe('Plans');
    expect(baseSubject('Plans(fwd)')).toBe('Plans');
  });
  it('step 3: Re:, Fw:, Fwd: leaders go, with blobs before and inside them', () => {
    expect(baseSubject('Re: Re: RE: Plans')).toBe('Plans');
    expect(baseSubject('Fw: fwd: Plans')).toBe('Plans');
    expect(baseSubject('[list] Re: Plans')).toBe('Plans');
    expect(baseSubject('Re [2]: Plans')).toBe('Plans');
    expect(baseSubject('Reply: Plans')).toBe('Reply: Plans');
  });
  it('step 4: a leading blob goes unless it is all there is', () => {
    expect(baseSubject('[list] Plans')).toBe('Plans');
    expect(baseSubject('[list]')).toBe('[list]');
    expect(baseSubject('[list] [other]')).toBe('[other]');
  });
  it('step 5: steps 3 and 4 repeat until nothing changes', () => {
    expect(baseSubject('[a] Re: [b] Fwd: [c] Plans')).toBe('Plans');
  });
  it('step 6: a [fwd: ...] wrapper is unwrapped and the whole done again', () => {
    expect(baseSubject('[Fwd: Re: Plans (fwd)]')).toBe('Plans');
    expect(baseSubject('Re: [fwd: [fwd: Plans]]')).toBe('Plans');
    expect(baseSubject('[fwd: Plans')).toBe('[fwd: Plans');
  });
});

describe('splitAddress', () => {
  it('splits the summary form of an address', () => {
    expect(splitAddress('Jürgen Müller <jurgen@example.de>')).toEqual({ name: 'Jürgen Müller', address: 'jurgen@example.de' });
    expect(splitAddress('bob@example.com')).toEqual({ name: '', address: 'bob@example.com' });
    expect(splitAddress('<x@example.com>')).toEqual({ name: '', address: 'x@example.com' });
  });
});

/** A message with the given summary fields; seq = uid - 100. */
function msg(seq: number, fields: { size?: number; arrival?: string; summary?: Record<string, AttrValue> }): SearchMessage {
  return {
    seq,
    uid: seq + 100,
    flags: [],
    internalDate: new Date(fields.arrival ?? '2024-01-01T00:00:00Z'),
    size: fields.size ?? 100,
    modseq: seq,
    summary: { subject: '', from: '', fromAddress: '', to: [], cc: [], date: '', ...fields.summary },
  };
}

const FOLDER = [
  msg(1, {
    size: 300,
    arrival: '2024-03-01T00:00:00Z',
    summary: {
      subject: 'Re: beta',
      from: 'Zed <a@x.org>',
      fromAddress: 'a@x.org',
      to: ['Yan <m@x.org>'],
      cc: ['c@x.org'],
      date: '2024-02-03T00:00:00.000Z',
    },
  }),
  msg(2, {
    size: 100,
    arrival: '2024-01-01T00:00:00Z',
    summary: { subject: 'alpha', from: 'bob@x.org', fromAddress: 'bob@x.org', to: ['b@x.org'], cc: [], date: 'garbage' },
  }),
  msg(3, {
    size: 200,
    arrival: '2024-02-01T00:00:00Z',
    summary: { subject: '[list] Alpha', from: 'Anna <z@x.org>', fromAddress: 'z@x.org', to: ['zed@x.org'], cc: ['a@x.org'], date: '2024-02-02T00:00:00.000Z' },
  }),
  msg(4, {
    size: 200,
    arrival: '2024-02-01T00:00:00Z',
    summary: { subject: 'Fwd: BETA', from: 'carl@x.org', fromAddress: 'carl@x.org', to: ['Ann <n@x.org>'], date: '2024-01-15T00:00:00.000Z' },
  }),
];

const order = (criteria: SortCriterion[]): number[] => sortMessages(FOLDER, criteria).map((m) => m.seq);
const by = (key: SortCriterion['key'], reverse = false): SortCriterion => ({ key, reverse });

describe('sortMessages', () => {
  it.each<[string, SortCriterion[], number[]]>([
    ['ARRIVAL, ties by sequence number', [by('ARRIVAL')], [2, 3, 4, 1]],
    ['REVERSE ARRIVAL keeps ties in sequence order', [by('ARRIVAL', true)], [1, 3, 4, 2]],
    ['SIZE', [by('SIZE')], [2, 3, 4, 1]],
    ['SIZE then REVERSE SUBJECT', [by('SIZE'), by('SUBJECT', true)], [2, 4, 3, 1]],
    // Message 2's Date did not parse: its INTERNALDATE (1 Jan) is its sent date.
    ['DATE, the INTERNALDATE when the Date did not parse', [by('DATE')], [2, 4, 3, 1]],
    ['SUBJECT by base subject, case-insensitive', [by('SUBJECT')], [2, 3, 1, 4]],
    ['FROM by the mailbox of the first address', [by('FROM')], [1, 2, 4, 3]],
    ['TO by the mailbox of the first address', [by('TO')], [2, 1, 4, 3]],
    ['CC, an empty one first', [by('CC')], [2, 4, 3, 1]],
    ['DISPLAYFROM by display name, else the address', [by('DISPLAYFROM')], [3, 2, 4, 1]],
    ['DISPLAYTO', [by('DISPLAYTO')], [4, 2, 1, 3]],
  ])('%s', (_name, criteria, expected) => {
    expect(order(criteria)).toEqual(expected);
  });

  it('compares by i;ascii-casemap: ASCII letters fold, other characters by their UTF-8 octets', () => {
    const folder = [
      msg(1, { summary: { subject: 'éclair' } }),
      msg(2, { summary: { subject: 'Zebra' } }),
      msg(3, { summary: { subject: 'apple' } }),
      msg(4, { summary: { subject: 'Éclair' } }),
    ];
    // "É" (C3 89) sorts before "é" (C3 A9), and both after every ASCII letter.
    expect(sortMessages(folder, [by('SUBJECT')]).map((m) => m.seq)).toEqual([3, 2, 4, 1]);
  });
});

describe('parseSort', () => {
  it('reads criteria, the charset and the search keys', () => {
    const p = parseSort([[a('REVERSE'), a('date'), a('SUBJECT')], a('UTF-8'), a('UNSEEN')], { utf8: false });
    expect(p).toEqual({
      criteria: [by('DATE', true), by('SUBJECT')],
      charset: 'UTF-8',
      program: { k: 'flag', flag: '\\SEEN', present: false },
    });
  });

  it.each<[string, ImapValue[], { error: string; badCharset?: boolean }]>([
    ['no criteria', [[], a('UTF-8'), a('ALL')], { error: 'SORT needs a list of sort criteria, such as (REVERSE DATE)' }],
    ['an unknown criterion', [[a('COLOR')], a('UTF-8'), a('ALL')], { error: 'unknown sort criterion COLOR' }],
    ['REVERSE at the end', [[a('DATE'), a('REVERSE')], a('UTF-8'), a('ALL')], { error: 'REVERSE must be followed by a sort key' }],
    ['no charset', [[a('DATE')]], { error: 'SORT needs a charset after the criteria' }],
    ['no search key', [[a('DATE')], a('UTF-8')], { error: 'a search key is missing' }],
    ['a bad search key', [[a('DATE')], a('UTF-8'), a('NOPE')], { error: 'unknown search key NOPE' }],
    ['an unknown charset', [[a('DATE')], a('KOI8-R'), a('ALL')], { error: 'charset KOI8-R is not supported', badCharset: true }],
  ])('gives an error for %s', (_name, args, expected) => {
    expect(parseSort(args, { utf8: false })).toEqual(expected);
  });

  it('after UTF8=ACCEPT takes UTF-8 only (RFC 6855 erratum 4029)', () => {
    expect(parseSort([[a('DATE')], a('US-ASCII'), a('ALL')], { utf8: true })).toEqual({ error: 'CHARSET US-ASCII conflicts with UTF8=ACCEPT' });
    expect(parseSort([[a('DATE')], a('utf-8'), a('ALL')], { utf8: true })).toMatchObject({ charset: 'UTF-8' });
  });
});

describe('formatSort', () => {
  it('writes numbers in sorted order, UIDs for UID SORT, MODSEQ when asked', () => {
    const sorted = sortMessages(FOLDER, [by('SIZE')]);
    expect(formatSort(false, sorted)).toBe('* SORT 2 3 4 1');
    expect(formatSort(true, sorted, { modseq: true })).toBe('* SORT 102 103 104 101 (MODSEQ 4)');
    expect(formatSort(true, [], { modseq: true })).toBe('* SORT');
  });
});
