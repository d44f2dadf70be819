/**
 * mbox reading and writing (RFC 4155, mboxrd quoting) at every chunk size, line splitting with
 * long lines, and Maildir/mbox import plus mbox export through the ports on the local family.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { exportMailbox } from '../../core/mailbox/export.js';
import { importMailbox } from '../../core/mailbox/import.js';
import { linePieces } from '../../core/mailbox/lines.js';
import { readMbox, writeMboxMessage } from '../../core/mailbox/mbox.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';
import { tempDir } from '../support/tmp.js';

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

async function parse(buf: Buffer, size: number): Promise<{ sep: string; body: string }[]> {
  const out: { sep: string; body: string }[] = [];
  await readMbox(chunked(buf, size), async (m) => {
    const parts: Buffer[] = [];
    out.push({ sep: m.separator, body: '' });
    return { write: (d) => void parts.push(Buffer.from(d)), end: () => void (out[out.length - 1].body = Buffer.concat(parts).toString('utf8')) };
  });
  return out;
}

const MBOX = [
  'From alice@example.org Tue Nov 25 10:00:00 2025',
  'From: Alice <alice@example.org>',
  'Subject: one',
  '',
  'Hello',
  '>From the start of a line, quoted once',
  '>>From quoted twice',
  'From-not-a-separator: x',
  '',
  'From bob@example.org Wed Nov 26 11:30:00 2025',
  'Subject: two',
  '',
  'Ünïcödé body',
  '',
  '',
  '',
].join('\n');

describe('mbox', () => {
  it('splits messages and undoes quoting at every chunk size from 1 to 64 bytes', async () => {
    const expected = [
      {
        sep: 'alice@example.org Tue Nov 25 10:00:00 2025',
        body: 'From: Alice <alice@example.org>\r\nSubject: one\r\n\r\nHello\r\nFrom the start of a line, quoted once\r\n>From quoted twice\r\nFrom-not-a-separator: x\r\n',
      },
      // a message ending in blank lines keeps them; only the separator's blank line goes
      { sep: 'bob@example.org Wed Nov 26 11:30:00 2025', body: 'Subject: two\r\n\r\nÜnïcödé body\r\n\r\n' },
    ];
    for (let size = 1; size <= 64; size++) expect(await parse(Buffer.from(MBOX), size)).toEqual(expected);
    // CRLF files read the same
    expect(await parse(Buffer.from(MBOX.replace(/\n/g, '\r\n')), 7)).toEqual(expected);
  });

  it('refuses a file that does not start with a From line', async () => {
    await expect(parse(Buffer.from('Subject: hi\n\nbody\n'), 10)).rejects.toThrow('not an mbox file');
  });

  it('round-trips messages through write and read, including From lines in bodies', async () => {
    const messages = ['Subject: a\r\n\r\nFrom me\r\n>From you\r\nbye\r\n', 'Subject: b\r\n\r\nno final newline'];
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (c) => chunks.push(c));
    for (const m of messages) await writeMboxMessage(out, Readable.from([Buffer.from(m)]), { from: 'a@example.org', date: new Date('2025-11-25T10:00:00Z') });
    out.end();
    const text = Buffer.concat(chunks).toString();
    expect(text.split('\n')[0]).toBe('From a@example.org Tue Nov 25 10:00:00 2025');
    expect(text).toContain('\n>From me\n>>From you\n');
    const back = await parse(Buffer.concat(chunks), 5);
    expect(back.map((b) => b.body)).toEqual([messages[0], `${messages[1]}\r\n`]);
  });

  it('splits lines into bounded pieces and keeps a CR split across chunks', async () => {
    const long = Buffer.concat([Buffer.alloc(200_000, 0x61), Buffer.from('\r\nshort\r\n')]);
    const pieces = [];
    for await (const p of linePieces(chunked(long, 70_000), 64 * 1024)) pieces.push(p);
    expect(Math.max(...pieces.map((p) => p.data.length))).toBeLessThanOrEqual(64 * 1024 + 70_000);
    expect(pieces.filter((p) => p.start).length).toBe(2);
    expect(Buffer.concat(pieces.filter((p) => !p.eol || p.start).map((p) => p.data)).length).toBeGreaterThan(0);
    const joined = pieces.map((p) => Buffer.concat([p.data, p.eol ? Buffer.from('\n') : Buffer.alloc(0)]));
    expect(Buffer.concat(joined).equals(long)).toBe(true);
  });
});

describe('import and export on the local family', () => {
  let target: FamilyTarget;
  let store: MailboxStore;
  let dir: { path: string; remove: () => Promise<void> };

  beforeAll(async () => {
    target = await FAMILIES[0].open();
    dir = await tempDir('tomlinson-mbox-');
    const accounts = new Accounts(target.storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
    await accounts.addDomain('example.com');
    await accounts.addUser('bob@example.com', 'password-123');
    await accounts.addUser('small@example.com', 'password-123', { quotaBytes: 150 });
    store = new MailboxStore(target.storage.tables, target.storage.mail);
  });
  afterAll(async () => {
    await target?.cleanup();
    await dir?.remove();
  });

  it('imports an mbox file, skips everything on a second run, and refuses what it must', async () => {
    const file = join(dir.path, 'in.mbox');
    const big = `Subject: big\n\n${'x'.repeat(2000)}\n`;
    await writeFile(file, `${MBOX}From c@example.org Thu Nov 27 09:00:00 2025\nnot a header line\n\nFrom d@example.org Thu Nov 27 09:00:00 2025\n${big}\n`);
    const first = await importMailbox({ user: 'bob@example.com', path: file, store, blobs: target.storage.mail, maxBytes: 1000 });
    expect(first).toMatchObject({ format: 'mbox', found: 4, imported: 2, skipped: 0 });
    expect(first.refused).toEqual([
      { source: 'message 3', reason: 'does not start with a header field' },
      { source: 'message 4', reason: 'larger than the 1000-byte message limit' },
    ]);
    const list = await store.list('bob@example.com');
    expect(list.map((e) => e.summary.subject)).toEqual(['one', 'two']);
    expect(list[0].receivedAt).toBe('2025-11-25T10:00:00.000Z');
    const raw = await target.storage.mail.get(list[0].blobKey);
    const chunks: Buffer[] = [];
    for await (const c of raw.body) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toContain('\r\nFrom the start of a line, quoted once\r\n');
    const second = await importMailbox({ user: 'bob@example.com', path: file, store, blobs: target.storage.mail, maxBytes: 1000 });
    expect(second).toMatchObject({ found: 4, imported: 0, skipped: 2 });
    expect((await store.meta('bob@example.com')).count).toBe(2);
  });

  it('imports a Maildir with flags and dates, sharing blobs with other mailboxes, and refuses over quota', async () => {
    const md = join(dir.path, 'Maildir');
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(md, d), { recursive: true });
    const shared = 'Subject: two\n\nÜnïcödé body\n\n'; // the same message bob imported from the mbox
    const seen = 'Subject: seen\n\nhello\n';
    await writeFile(join(md, 'new', '1700000100.M2P2.host'), shared);
    await writeFile(join(md, 'cur', '1700000000.M1P1.host:2,FS'), seen);
    await writeFile(join(md, 'cur', '1700000200.M3P3.host:2,'), 'Subject: too much\n\nthis one passes the quota\n');
    const crlfSize = (t: string) => Buffer.byteLength(t.replace(/\n/g, '\r\n'));
    await new Accounts(target.storage.tables).setQuota('small@example.com', crlfSize(shared) + crlfSize(seen));
    const r = await importMailbox({ user: 'small@example.com', path: md, store, blobs: target.storage.mail, maxBytes: 10_000 });
    expect(r).toMatchObject({ format: 'maildir', found: 3, imported: 2, bytes: crlfSize(shared) + crlfSize(seen) });
    expect(r.refused).toEqual([{ source: 'cur/1700000200.M3P3.host:2,', reason: expect.stringContaining('mailbox full') }]);
    const list = await store.list('small@example.com');
    const seenEntry = list.find((e) => e.summary.subject === 'seen');
    expect(seenEntry?.flags.sort()).toEqual(['\\Flagged', '\\Seen']);
    expect(seenEntry?.receivedAt).toBe(new Date(1700000000 * 1000).toISOString());
    // bob's "two" and small's copy share one blob; the refused message left none behind
    const bobTwo = (await store.list('bob@example.com')).find((e) => e.summary.subject === 'two');
    expect(list.find((e) => e.summary.subject === 'two')?.blobKey).toBe(bobTwo?.blobKey);
    expect((await target.storage.mail.list('import/')).items.length).toBe(3);
  });

  it('refuses a folder that is not a Maildir', async () => {
    await expect(importMailbox({ user: 'bob@example.com', path: dir.path, store, blobs: target.storage.mail, maxBytes: 1000 })).rejects.toThrow(
      'not a Maildir',
    );
  });

  it('exports a mailbox as mbox that imports back to the same messages', async () => {
    const out = join(dir.path, 'out.mbox');
    const { createWriteStream } = await import('node:fs');
    const ws = createWriteStream(out);
    const report = await exportMailbox({ user: 'bob@example.com', store, blobs: target.storage.mail, out: ws });
    ws.end();
    await new Promise<void>((r) => ws.on('close', () => r()));
    expect(report).toMatchObject({ exported: 2, missing: [] });
    const text = await readFile(out, 'utf8');
    expect(text.startsWith('From alice@example.org ')).toBe(true);
    expect(text).toContain('\n>From the start of a line, quoted once\n');
    const back = await parse(await readFile(out), 4096);
    const originals = [];
    for (const e of await store.list('bob@example.com')) {
      const chunks: Buffer[] = [];
      for await (const c of (await target.storage.mail.get(e.blobKey)).body) chunks.push(c as Buffer);
      originals.push(Buffer.concat(chunks).toString());
    }
    expect(back.map((b) => b.body)).toEqual(originals);
  });
});
