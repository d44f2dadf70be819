/** withoutBcc: the sent copy of a draft loses its Bcc fields, folded lines included, and nothing else. */
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { expect, it } from 'vitest';
import { withoutBcc } from '../../core/mail/bcc.js';

const send = async (raw: string, chunk = 7) => {
  const parts: Buffer[] = [];
  for (let i = 0; i < raw.length; i += chunk) parts.push(Buffer.from(raw.slice(i, i + chunk), 'latin1'));
  return (await buffer(withoutBcc(Readable.from(parts)))).toString('latin1');
};

it('drops every Bcc field of the header section, folded lines included, and keeps the rest byte for byte', async () => {
  const raw =
    'From: a@example.test\r\nBcc: x@example.test,\r\n y@example.test\r\nTo: b@example.test\r\nBCC :z@example.test\r\nSubject: s\r\n\r\nBcc: stays in the body\r\n';
  expect(await send(raw)).toBe('From: a@example.test\r\nTo: b@example.test\r\nSubject: s\r\n\r\nBcc: stays in the body\r\n');
  expect(await send(raw, 1)).toBe(await send(raw, 4096));
});

it('passes a message without Bcc, or without a body, unchanged', async () => {
  const plain = 'From: a@example.test\r\nSubject: s\r\n\r\nhello\r\n';
  expect(await send(plain)).toBe(plain);
  expect(await send('Subject: only\r\nBcc: q@example.test\r\n')).toBe('Subject: only\r\n');
});
