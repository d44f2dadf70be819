/**
 * The two ways RETR gets a stored message: small messages read whole at once (FsBlobs.readSmallSync,
 * one write per response) and larger ones streamed. Both must send the same bytes, announce the
 * same sizes, and keep memory bounded when a client pipelines RETRs without reading.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { FsBlobs } from '../../core/storage/local/fs-blobs.js';
import { NotFound } from '../../core/storage/ports.js';
import { StoreMaildrops, type StoreMaildrop } from '../../containers/pop3/maildrop.js';
import { addUsers, makeMessage, passwordOf, RawClient, startHarness, type Harness } from './harness.js';

let h: Harness;
const USER = 'reader@example.com';
const PIPE = 'piper@example.com';

beforeAll(async () => {
  h = await startHarness();
  await addUsers(h, USER, PIPE);
});
afterAll(async () => {
  await h?.close();
});

async function retrCount(): Promise<number> {
  const m = await h.metrics.commands.get();
  return m.values.filter((v) => v.labels.command === 'RETR').reduce((a, v) => a + v.value, 0);
}

async function streamed(drop: StoreMaildrop, i: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of await drop.open(i)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('FsBlobs.readSmallSync', () => {
  it('reads the body whole whatever the size hint, refuses what is over the limit, NotFound when absent', async () => {
    const blobs = h.storage.mail as unknown as FsBlobs;
    const body = Buffer.from(makeMessage(7, 5000));
    const key = `test/${randomUUID()}.eml`;
    await h.storage.mail.put(key, body, { metadata: { note: 'x'.repeat(500) } });
    // A right hint, a hint far too small (the file is then sized by fstat), no hint at all.
    for (const sizeHint of [body.length, 10, undefined]) {
      expect(blobs.readSmallSync(key, { maxBytes: 64 * 1024, sizeHint })?.equals(body), `hint ${sizeHint}`).toBe(true);
    }
    expect(blobs.readSmallSync(key, { maxBytes: body.length - 1, sizeHint: body.length })).toBeUndefined();
    expect(blobs.readSmallSync(key, { maxBytes: body.length, sizeHint: 1 })?.length).toBe(body.length);
    expect(() => blobs.readSmallSync(`test/${randomUUID()}.eml`)).toThrow(NotFound);
    // Segments that need escaping on disk (a leading dot, a '%') are found where put stored them.
    for (const odd of [`.dot/%25/${randomUUID()}`, `a%2F/b/.c%`, `top-${randomUUID()}`]) {
      await h.storage.mail.put(odd, body);
      expect(blobs.readSmallSync(odd)?.equals(body), odd).toBe(true);
      expect(blobs.smallReader().readSmallSync(odd)?.equals(body), odd).toBe(true);
    }
    const empty = `test/${randomUUID()}.eml`;
    await h.storage.mail.put(empty, Buffer.alloc(0));
    expect(blobs.readSmallSync(empty)?.length).toBe(0);
  });
});

describe('StoreMaildrop: whole reads and streams agree', () => {
  it('read() returns what open() streams for small messages and leaves big ones to open()', async () => {
    const raws = [makeMessage(1, 300), 'Subject: bare\n\nline\rend\n', makeMessage(3, 3000), makeMessage(4, 9000)];
    for (const r of raws) await h.deliver(USER, r);
    // A low threshold so that both paths run on small test messages.
    const drops = new StoreMaildrops(h.store, h.storage.tables, h.storage.mail, { log: silentLogger, wholeReadBytes: 4000 });
    const drop = await drops.open(USER);
    if (typeof drop === 'string') throw new Error(drop);
    try {
      for (let i = 0; i < raws.length; i++) {
        const whole = drop.read(i);
        const want = await streamed(drop, i);
        expect(want.toString()).toBe(raws[i]);
        if (raws[i]!.length <= 4000) expect(whole?.equals(want), `message ${i + 1}`).toBe(true);
        else expect(whole, `message ${i + 1}`).toBeUndefined();
      }
    } finally {
      await drop.release();
    }
  });
});

describe('StoreMaildrop.readAhead', () => {
  it('hands out the bytes read() then returns, keeps the previous read intact, and is dropped by any other read', async () => {
    const user = 'ahead@example.com';
    await addUsers(h, user);
    const raws = [makeMessage(1, 3000), makeMessage(2, 5000), makeMessage(3, 2000), makeMessage(4, 9000)];
    for (const r of raws) await h.deliver(user, r);
    const drops = new StoreMaildrops(h.store, h.storage.tables, h.storage.mail, { log: silentLogger, wholeReadBytes: 8000 });
    const drop = await drops.open(user);
    if (typeof drop === 'string') throw new Error(drop);
    try {
      const first = drop.read(0)!;
      const ahead = drop.readAhead(1)!;
      // The bytes of the last read stay valid while the next message is read ahead.
      expect(first.toString()).toBe(raws[0]);
      expect(ahead.toString()).toBe(raws[1]);
      expect(drop.readAhead(1)).toBe(ahead);
      expect(drop.read(1)).toBe(ahead);
      // The next read ahead goes to the other buffer: what read(1) returned is untouched.
      expect(drop.readAhead(2)!.toString()).toBe(raws[2]);
      expect(ahead.toString()).toBe(raws[1]);
      // A read of another message drops what was read ahead; that message is then read again.
      expect(drop.read(0)!.toString()).toBe(raws[0]);
      const again = drop.read(2)!;
      expect(again.toString()).toBe(raws[2]);
      // Messages streamed rather than read whole, and numbers past the end, are not read ahead.
      expect(drop.readAhead(3)).toBeUndefined();
      expect(drop.readAhead(4)).toBeUndefined();
      expect(again.toString()).toBe(raws[2]);
    } finally {
      await drop.release();
    }
    expect(drop.readAhead(0)).toBeUndefined();
  });
});

describe('RETR one at a time: the next response is built ahead', () => {
  it('sends the right message whatever comes between: DELE, TOP, out-of-order RETR, bare LF', async () => {
    const user = 'stepper@example.com';
    await addUsers(h, user);
    const raws = [
      makeMessage(1, 4000),
      makeMessage(2, 300),
      'Subject: s\r\n\r\n.dot\r\nno final line end',
      makeMessage(4, 9000),
      makeMessage(5, 700),
      'Subject: bare\n\n.lf\nonly\n',
      makeMessage(7, 100),
      makeMessage(8, 2000),
      makeMessage(9, 1200),
    ];
    for (const r of raws) await h.deliver(user, r);
    const crlf = (t: string) => t.replace(/\r?\n/g, '\r\n').replace(/([^\n])$/, '$1\r\n');
    const { client } = await RawClient.connect(h.port);
    expect(await client.login(user, passwordOf(user))).toMatch(/^\+OK/);
    const retr = async (n: number) => {
      expect(await client.cmd(`RETR ${n}`), `RETR ${n}`).toMatch(/^\+OK \d+ octets$/);
      expect((await client.multilineRaw()).toString(), `RETR ${n}`).toBe(crlf(raws[n - 1]!));
    };
    for (const n of [1, 2, 3]) await retr(n);
    // Message 4 was built ahead; deleted, it must not be sent.
    expect(await client.cmd('DELE 4')).toMatch(/^\+OK/);
    expect(await client.cmd('RETR 4')).toMatch(/^-ERR/);
    await retr(5);
    // TOP of the message built ahead sends the top, not the RETR response.
    expect(await client.cmd('TOP 6 0')).toMatch(/^\+OK/);
    expect((await client.multilineRaw()).toString()).toBe('Subject: bare\r\n\r\n');
    await retr(6);
    await retr(7);
    // Out of order: message 8 was built ahead, 2 is asked for.
    await retr(2);
    await retr(8);
    await retr(9);
    await retr(8);
    expect(await client.cmd('RSET')).toMatch(/^\+OK/);
    await retr(4);
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });

  it('message 1, built ahead at login, is sent right after LIST, UIDL, NOOP, STAT, TOP, DELE or another RETR', async () => {
    const user = 'starter@example.com';
    await addUsers(h, user);
    const raws = [makeMessage(1, 2000), 'Subject: s\r\n\r\n.dot\r\nx\r\n', makeMessage(3, 500)];
    for (const r of raws) await h.deliver(user, r);
    type Client = Awaited<ReturnType<typeof RawClient.connect>>['client'];
    const session = async (steps: (retr: (n: number) => Promise<void>, client: Client) => Promise<void>) => {
      const { client } = await RawClient.connect(h.port);
      expect(await client.login(user, passwordOf(user))).toMatch(/^\+OK/);
      const retr = async (n: number) => {
        expect(await client.cmd(`RETR ${n}`), `RETR ${n}`).toBe(`+OK ${raws[n - 1]!.length} octets`);
        expect((await client.multilineRaw()).toString(), `RETR ${n}`).toBe(raws[n - 1]);
      };
      await steps(retr, client);
      expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
      await client.waitClosed();
    };
    await session(async (retr, c) => {
      expect(await c.cmd('LIST')).toMatch(/^\+OK/);
      expect(await c.multiline()).toHaveLength(3);
      expect(await c.cmd('UIDL')).toMatch(/^\+OK/);
      expect(await c.multiline()).toHaveLength(3);
      await retr(1);
      await retr(2);
    });
    // Each command in between, alone, before RETR 1.
    for (const between of ['NOOP', 'STAT', 'LIST 1', 'UIDL 2']) {
      await session(async (retr, c) => {
        expect(await c.cmd(between), between).toMatch(/^\+OK/);
        await retr(1);
      });
    }
    // TOP of another message reads it through the buffers RETR 1's bytes came from.
    await session(async (retr, c) => {
      expect(await c.cmd('TOP 2 0')).toMatch(/^\+OK/);
      expect((await c.multilineRaw()).toString()).toBe('Subject: s\r\n\r\n');
      await retr(1);
      await retr(3);
      await retr(1);
    });
    // Out of order first, then message 1; and message 1 marked deleted is refused.
    await session(async (retr, c) => {
      await retr(3);
      await retr(1);
      expect(await c.cmd('DELE 2')).toMatch(/^\+OK/);
      expect(await c.cmd('RETR 2')).toMatch(/^-ERR/);
      // Unmarked again, so that QUIT deletes nothing and the next session sees the same maildrop.
      expect(await c.cmd('RSET')).toMatch(/^\+OK/);
    });
    await session(async (retr, c) => {
      expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
      expect(await c.cmd('RETR 1')).toMatch(/^-ERR/);
      await retr(2);
      expect(await c.cmd('RSET')).toMatch(/^\+OK/);
      await retr(1);
    });
  });
});

describe('RETR of small messages, pipelined', () => {
  it('responses built in a reused buffer stay intact: varied sizes, dots, no final CRLF, bare LF', async () => {
    const user = 'mixer@example.com';
    await addUsers(h, user);
    const raws = [
      makeMessage(1, 9000),
      'Subject: s\r\n\r\n.dot\r\nno final line end',
      makeMessage(3, 300),
      'Subject: bare\n\n.lf\nonly\n',
      makeMessage(5, 40_000),
      'Subject: t\r\n\r\n.\r\n..\r\n',
      makeMessage(7, 100),
    ];
    for (const r of raws) await h.deliver(user, r);
    const crlf = (t: string) => t.replace(/\r?\n/g, '\r\n').replace(/([^\n])$/, '$1\r\n');
    const { client } = await RawClient.connect(h.port);
    expect(await client.login(user, passwordOf(user))).toMatch(/^\+OK/);
    for (let round = 0; round < 3; round++) {
      client.send(raws.map((_, i) => `RETR ${i + 1}\r\n`).join(''));
      for (const r of raws) {
        expect(await client.reply()).toMatch(/^\+OK/);
        expect((await client.multilineRaw()).toString()).toBe(crlf(r));
      }
    }
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });

  it('a response the socket has not fully sent is never overwritten by the next one', async () => {
    // Small responses (under the socket's 16 KB high-water mark) to a client that stops reading:
    // when the kernel is full, one is left half-sent without backpressure being signalled, and
    // the next RETR must build its response elsewhere.
    const user = 'tiny@example.com';
    await addUsers(h, user);
    const n = 700;
    // A few different messages in turn, so that an overwritten response would show.
    const raws = [1000, 3000, 5000, 7000, 8000, 9000, 12000].map((size, k) => Buffer.from(makeMessage(k, size).replace(/line 1 /g, '.line 1 ')));
    const keys = raws.map(() => `test/${randomUUID()}.eml`);
    await Promise.all(raws.map((r, k) => h.storage.mail.put(keys[k]!, r)));
    // Message numbers follow uids; remember which text each uid got.
    const byUid: [number, Buffer][] = [];
    for (let i = 0; i < n; i += 100) {
      const batch = Array.from({ length: Math.min(100, n - i) }, (_, j) => (i + j) % raws.length);
      const uids = await Promise.all(
        batch.map((k) =>
          h.store.deliver(user, { jobId: randomUUID(), blobKey: keys[k]!, size: raws[k]!.length, receivedAt: new Date().toISOString(), summary: {} }),
        ),
      );
      uids.forEach((u, j) => byUid.push([u.uid, raws[batch[j]!]!]));
    }
    const expected = byUid.sort((a, b) => a[0] - b[0]).map(([, r]) => r);
    const { client } = await RawClient.connect(h.port);
    expect(await client.login(user, passwordOf(user))).toMatch(/^\+OK/);
    client.socket.pause();
    client.send(Array.from({ length: n }, (_, i) => `RETR ${i + 1}\r\n`).join(''));
    await new Promise((r) => setTimeout(r, 300));
    client.socket.resume();
    for (let i = 0; i < n; i++) {
      const raw = expected[i]!;
      expect(await client.reply()).toBe(`+OK ${raw.length} octets`);
      const got = await client.multilineRaw();
      if (!got.equals(raw)) expect(got.toString(), `message ${i + 1}`).toBe(raw.toString());
    }
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });

  it('sends every message byte-identical and does not buffer responses the client is not reading', async () => {
    const n = 120;
    const size = 60 * 1024;
    const raws = Array.from({ length: n }, (_, i) => makeMessage(i, size));
    for (const r of raws) await h.deliver(PIPE, r);
    const { client } = await RawClient.connect(h.port);
    expect(await client.login(PIPE, passwordOf(PIPE))).toMatch(/^\+OK/);
    // The client stops reading, then asks for ~7 MB in one write.
    client.socket.pause();
    const before = await retrCount();
    client.send(Array.from({ length: n }, (_, i) => `RETR ${i + 1}\r\n`).join(''));
    await new Promise((r) => setTimeout(r, 500));
    // The kernel takes about 4 MB (tcp_wmem's limit of 4 MiB plus the receiver's window): with
    // backpressure the server then stops answering; without it, it would read all 120 messages
    // into its socket buffer at once.
    const answered = (await retrCount()) - before;
    expect(answered).toBeGreaterThan(0);
    expect(answered).toBeLessThan(100);
    client.socket.resume();
    for (let i = 0; i < n; i++) {
      expect(await client.reply()).toMatch(new RegExp(`^\\+OK ${raws[i]!.length} octets$`));
      expect((await client.multilineRaw()).toString()).toBe(raws[i]);
    }
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });
});
