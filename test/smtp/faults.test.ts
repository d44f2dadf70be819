/**
 * The 250 rule under faults: the real local adapters wrapped so that the mail Blobs or the Queues
 * fail on demand (during DATA, mid-stream for large messages). The client must get 451 4.3.0,
 * nothing may be queued, no blob may be left behind, and a retry after recovery is accepted once.
 */
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Unavailable, type BlobBody, type BlobPutOptions, type Storage } from '../../core/storage/ports.js';
import { ALICE, drainInbound, startHarness, TestClient, type Harness } from './harness.js';

const faults = { put: false, putMidStream: false, send: false };

/** The real storage with mail.put and queues.send able to fail (this wraps a real adapter). */
function faulty(real: Storage): Storage {
  const mail = Object.create(real.mail) as Storage['mail'];
  mail.put = async (key: string, body: BlobBody, options?: BlobPutOptions) => {
    if (faults.put) throw new Unavailable('injected: blobs down');
    if (faults.putMidStream && typeof (body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
      // Read some of the stream, then fail as a disk or network would.
      let seen = 0;
      for await (const c of body as AsyncIterable<Uint8Array>) {
        seen += c.length;
        if (seen > 64 * 1024) throw new Unavailable('injected: write failed mid-stream');
      }
    }
    return real.mail.put(key, body, options);
  };
  const queues = Object.create(real.queues) as Storage['queues'];
  queues.send = async (...args: Parameters<Storage['queues']['send']>) => {
    if (faults.send) throw new Unavailable('injected: queue down');
    return real.queues.send(...args);
  };
  return { ...real, mail, queues, cache: real.cache, tables: real.tables, check: () => real.check(), close: () => real.close() };
}

async function send(h: Harness, body: string): Promise<{ code: number; enhanced?: string }> {
  const c = await TestClient.connect(h.server.ports.mx!);
  try {
    await c.reply();
    await c.cmd('EHLO client.example');
    expect((await c.cmd('MAIL FROM:<a@remote.example>')).code).toBe(250);
    expect((await c.cmd(`RCPT TO:<${ALICE}>`)).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    c.send(body + '.\r\n');
    const r = await c.reply(20_000);
    // The session goes on after a 451: the client may retry on the same connection.
    expect((await c.cmd('NOOP')).code).toBe(250);
    return r;
  } finally {
    c.close();
  }
}

async function blobKeys(h: Harness): Promise<string[]> {
  const keys: string[] = [];
  for (const prefix of ['in/', 'spool/']) {
    let cursor: string | undefined;
    do {
      const page = await h.storage.mail.list(prefix, { cursor });
      keys.push(...page.items.map((i) => i.key));
      cursor = page.cursor;
    } while (cursor);
  }
  return keys;
}

const SMALL = 'Subject: small\r\n\r\nhello\r\n'; // travels inside its job (smtp.queueInlineBytes)
const MEDIUM = 'Subject: medium\r\n\r\n' + ('m'.repeat(78) + '\r\n').repeat(1250); // 100 KB: one put
const LARGE = 'Subject: large\r\n\r\n' + ('y'.repeat(78) + '\r\n').repeat(8000); // 640 KB: streamed

describe('storage faults during DATA (the 250 rule)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({}, { wrapStorage: faulty });
  });
  afterAll(async () => h?.close());
  beforeEach(async () => {
    faults.put = faults.putMidStream = faults.send = false;
    await drainInbound(h.storage);
  });

  const cases: [string, keyof typeof faults, string][] = [
    ['blobs down, medium message', 'put', MEDIUM],
    ['blobs down, large streamed message', 'put', LARGE],
    ['blob write failing mid-stream', 'putMidStream', LARGE],
    ['queue down, small message', 'send', SMALL],
    ['queue down, medium message', 'send', MEDIUM],
    ['queue down, large streamed message', 'send', LARGE],
  ];
  for (const [name, fault, body] of cases) {
    it(`${name}: 451 4.3.0, nothing queued, no blob left; a retry is accepted once`, async () => {
      faults[fault] = true;
      const r = await send(h, body);
      expect(r.code).toBe(451);
      expect(r.enhanced).toBe('4.3.0');
      await new Promise((res) => setTimeout(res, 100)); // let an aborted put settle
      expect(await drainInbound(h.storage)).toHaveLength(0);
      expect(await blobKeys(h)).toEqual([]);
      faults[fault] = false;
      expect((await send(h, body)).code).toBe(250);
      const jobs = await drainInbound(h.storage);
      expect(jobs).toHaveLength(1);
      // A small message is carried in its job: no blob until the worker writes it.
      expect(await blobKeys(h)).toEqual(body === SMALL ? [] : [jobs[0].blobKey]);
      expect(jobs[0].raw !== undefined).toBe(body === SMALL);
      await h.storage.mail.delete(jobs[0].blobKey);
    });
  }

  it('blobs down, small message: 250 (the job carries it); the worker retries until the blobs are back, then delivers it once, byte for byte', async () => {
    faults.put = true;
    expect((await send(h, SMALL)).code).toBe(250);
    const [job] = await drainInbound(h.storage);
    expect(await blobKeys(h)).toEqual([]);
    const raw = Buffer.from(job.raw!, 'base64');
    expect(raw.length).toBe(job.size);
    expect(raw.toString('latin1')).toMatch(/^Return-Path: <a@remote\.example>\r\nReceived: from client\.example [^]*\r\n\r\nhello\r\n$/);
    const ctx = { config: h.config, storage: h.storage, log: silentLogger, now: () => new Date() };
    const meta = { queue: 'inbound' as const, id: 'm1', receiveCount: 1, sentAt: new Date() };
    const body = JSON.stringify(job);
    // The worker cannot store it: the job fails (the queue brings it back), nothing is delivered.
    await expect(inboundJob(body, meta, ctx)).rejects.toThrow(/blobs down/);
    const store = new MailboxStore(h.storage.tables, h.storage.mail);
    expect(await store.delivered(job.id, ALICE)).toBeUndefined();
    faults.put = false;
    expect(await inboundJob(body, { ...meta, receiveCount: 2 }, ctx)).toEqual({ kind: 'done' });
    expect(await store.delivered(job.id, ALICE)).toBeDefined();
    expect((await buffer((await h.storage.mail.get(job.blobKey)).body)).equals(raw)).toBe(true);
    // A redelivery of a finished job neither delivers again nor needs the blobs.
    faults.put = true;
    expect(await inboundJob(body, { ...meta, receiveCount: 3 }, ctx)).toEqual({ kind: 'done' });
    expect((await store.list(ALICE)).filter((m) => m.blobKey === job.blobKey)).toHaveLength(1);
  });
});
