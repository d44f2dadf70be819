/**
 * What threading reads from a message: In-Reply-To and References as lists of Message-IDs in the
 * summary (RFC 5322 §3.6.4), folded or not, with comments and obsolete phrases between the ids
 * skipped, and References capped to its nearest ancestors.
 */
import { Readable } from 'node:stream';
import { expect, it } from 'vitest';
import { messageIds, summarizeMessage } from '../../core/mail/mime.js';

const summary = (head: string) => summarizeMessage(Readable.from([Buffer.from(`${head}\r\n\r\nbody\r\n`)]));

it('keeps In-Reply-To and References as Message-IDs without brackets', async () => {
  const s = await summary(
    ['Subject: Re: x', 'Message-ID: <c@x>', "In-Reply-To: Ann's message of Sunday <b@x> (comment)", 'References: <a@x>\r\n\t<b@x>'].join('\r\n'),
  );
  expect(s.inReplyTo).toEqual(['b@x']);
  expect(s.references).toEqual(['a@x', 'b@x']);
});

it('leaves both out when the headers are absent or hold no id', async () => {
  const s = await summary(['Subject: x', 'In-Reply-To: your mail of Monday'].join('\r\n'));
  expect('inReplyTo' in s).toBe(false);
  expect('references' in s).toBe(false);
});

it('keeps the last 20 References: the nearest ancestors', async () => {
  const ids = Array.from({ length: 30 }, (_, i) => `r${i}@x`);
  const s = await summary(`Subject: x\r\nReferences: ${ids.map((id) => `<${id}>`).join('\r\n ')}`);
  expect(s.references).toEqual(ids.slice(10));
});

it('finds ids between angle brackets only, refusing white space inside', () => {
  expect(messageIds('<a@x> junk <b c@x> <d@x>')).toEqual(['a@x', 'd@x']);
  expect(messageIds('')).toEqual([]);
});
