/**
 * JMAP blobs (RFC 8620 §6) over real HTTPS: a 5 MB upload streamed in and out unchanged, an
 * upload over maxSizeUpload refused with nothing kept, no access to another account's blobs
 * (upload, download, Blob/copy), the blobId prefix dispatch to a module's resolver, and the
 * expiry of uploads.
 */
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { UploadStore, UPLOAD_PREFIX } from '../../containers/web/jmap/blobs.js';
import { coreModule } from '../../containers/web/jmap/core-methods.js';
import { JmapRegistry } from '../../containers/web/jmap/registry.js';
import { startWebHarness, type WebHarness } from './harness.js';

const CORE = 'urn:ietf:params:jmap:core';
const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
const MB = 1024 * 1024;
let h: WebHarness;

/** `n` pseudo-random bytes as a stream of 64 KiB chunks, and their sha256. */
function randomStream(n: number): { stream: Readable; sha: string } {
  const seed = randomBytes(64 * 1024);
  const hash = createHash('sha256');
  const chunks: Buffer[] = [];
  for (let left = n, i = 0; left > 0; left -= seed.length, i++) {
    const c = Buffer.from(seed.subarray(0, Math.min(seed.length, left)));
    c.writeUInt32BE(i, 0);
    hash.update(c);
    chunks.push(c);
  }
  return { stream: Readable.from(chunks), sha: hash.digest('hex') };
}

async function uploadCount(): Promise<number> {
  return (await h.storage.mail.list(UPLOAD_PREFIX)).items.length;
}

beforeAll(async () => {
  const text = Buffer.from('raw message of alice\r\n');
  h = await startWebHarness(
    { TOMLINSON_WEB_MAX_SIZE_UPLOAD: String(6 * MB), TOMLINSON_WEB_MAX_CONCURRENT_UPLOAD: '1', TOMLINSON_WEB_MAX_CONCURRENT_REQUESTS: '1' },
    {
      registry: new JmapRegistry([coreModule], {
        // A stand-in for the mail model's resolver: `Gm1` is alice's, nobody else's.
        G: async (blobId, owner) =>
          blobId === 'Gm1' && owner.user === ALICE ? { size: text.length, type: 'message/rfc822', open: async () => Readable.from([text]) } : undefined,
      }),
    },
    [ALICE, BOB],
  );
});
afterAll(async () => h?.close());

describe('upload and download (§6.1, §6.2)', () => {
  it('streams a 5 MB upload in and the same bytes out, with the name and type of the URL', async () => {
    const alice = accountIdOf(ALICE);
    const { stream, sha } = randomStream(5 * MB);
    const res = await h.fetch(`/jmap/upload/${alice}/`, {
      method: 'POST',
      user: ALICE,
      headers: { 'content-type': 'application/x-test' },
      body: stream,
      duplex: 'half',
    });
    expect(res.status).toBe(201);
    const up = (await res.json()) as { accountId: string; blobId: string; type: string; size: number };
    expect(up).toEqual({ accountId: alice, blobId: expect.stringMatching(/^U[0-9a-f]{24}$/), type: 'application/x-test', size: 5 * MB });

    const down = await h.fetch(`/jmap/download/${alice}/${up.blobId}/r%C3%A9sum%C3%A9%20final.bin?type=application/pdf`, { user: ALICE });
    expect(down.status).toBe(200);
    expect(down.headers.get('content-type')).toBe('application/pdf');
    expect(down.headers.get('content-length')).toBe(String(5 * MB));
    expect(down.headers.get('content-disposition')).toBe(`attachment; filename="r_sum_ final.bin"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.bin`);
    const hash = createHash('sha256');
    for await (const chunk of down.body!) hash.update(chunk);
    expect(hash.digest('hex')).toBe(sha);
  });

  it('refuses an upload over maxSizeUpload, declared or streamed, and keeps nothing of it', async () => {
    const alice = accountIdOf(ALICE);
    const before = await uploadCount();
    const streamed = await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, body: randomStream(7 * MB).stream, duplex: 'half' });
    expect(streamed.status).toBe(413);
    expect(await streamed.json()).toMatchObject({ type: 'urn:ietf:params:jmap:error:limit', limit: 'maxSizeUpload' });
    const declared = await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, body: Buffer.alloc(6 * MB + 1) });
    expect(declared.status).toBe(413);
    await declared.body?.cancel();
    expect(await uploadCount()).toBe(before);
  });

  it("gives no access to another account's blobs: upload, download and Blob/copy", async () => {
    const alice = accountIdOf(ALICE);
    const bob = accountIdOf(BOB);
    const up = (await (
      await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, headers: { 'content-type': 'text/plain' }, body: 'secret' })
    ).json()) as {
      blobId: string;
    };
    // Bob, into Alice's account.
    const into = await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: BOB, body: 'x' });
    expect(into.status).toBe(404);
    await into.body?.cancel();
    // Bob, Alice's blob under either account id.
    for (const acc of [alice, bob]) {
      const r = await h.fetch(`/jmap/download/${acc}/${up.blobId}/a.txt`, { user: BOB });
      expect(r.status).toBe(404);
      await r.body?.cancel();
    }
    const mine = await h.fetch(`/jmap/download/${alice}/${up.blobId}/a.txt`, { user: ALICE });
    expect(await mine.text()).toBe('secret');
    expect(mine.headers.get('content-type')).toBe('text/plain');

    const copyAsBob = await h.api({ using: [CORE], methodCalls: [['Blob/copy', { fromAccountId: alice, accountId: bob, blobIds: [up.blobId] }, 'c']] }, BOB);
    expect((copyAsBob.json.methodResponses as unknown[][])[0]).toEqual(['error', { type: 'fromAccountNotFound' }, 'c']);
    const copyFrom = await h.api({ using: [CORE], methodCalls: [['Blob/copy', { fromAccountId: bob, accountId: alice, blobIds: [] }, 'c']] }, BOB);
    expect((copyFrom.json.methodResponses as unknown[][])[0]).toEqual(['error', { type: 'accountNotFound' }, 'c']);
    const copyOwn = await h.api(
      { using: [CORE], methodCalls: [['Blob/copy', { fromAccountId: alice, accountId: alice, blobIds: [up.blobId, 'Unope'] }, 'c']] },
      ALICE,
    );
    expect((copyOwn.json.methodResponses as unknown[][])[0]).toEqual([
      'Blob/copy',
      { fromAccountId: alice, accountId: alice, copied: { [up.blobId]: up.blobId }, notCopied: { Unope: { type: 'notFound' } } },
      'c',
    ]);
  });

  it('hands other blobId prefixes to the registered resolver, for the owner only', async () => {
    const alice = accountIdOf(ALICE);
    const ok = await h.fetch(`/jmap/download/${alice}/Gm1/mail.eml`, { user: ALICE });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('content-type')).toBe('message/rfc822');
    expect(await ok.text()).toBe('raw message of alice\r\n');
    for (const [user, path] of [
      [BOB, `/jmap/download/${accountIdOf(BOB)}/Gm1/mail.eml`],
      [ALICE, `/jmap/download/${alice}/Xm1/mail.eml`],
      [ALICE, `/jmap/download/${alice}/G%2F..%2Fx/mail.eml`],
    ]) {
      const r = await h.fetch(path, { user });
      expect(r.status).toBe(404);
      await r.body?.cancel();
    }
  });
});

describe('concurrency limits', () => {
  it('refuses a second upload while maxConcurrentUpload (1) is in progress, then takes the first', async () => {
    const alice = accountIdOf(ALICE);
    const slow = new PassThrough();
    slow.write('first part ');
    const first = h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, body: slow, duplex: 'half' });
    await new Promise((r) => setTimeout(r, 500));
    const second = await h.fetch(`/jmap/upload/${alice}/`, { method: 'POST', user: ALICE, body: 'x' });
    expect(second.status).toBe(400);
    expect(await second.json()).toMatchObject({ type: 'urn:ietf:params:jmap:error:limit', limit: 'maxConcurrentUpload' });
    // Bob has slots of his own.
    const bobs = await h.fetch(`/jmap/upload/${accountIdOf(BOB)}/`, { method: 'POST', user: BOB, body: 'x' });
    expect(bobs.status).toBe(201);
    await bobs.body?.cancel();
    slow.end('and the end');
    const done = await first;
    expect(done.status).toBe(201);
    expect(((await done.json()) as { size: number }).size).toBe('first part and the end'.length);
  });

  it('refuses a second API request while maxConcurrentRequests (1) is in progress', async () => {
    const slow = new PassThrough();
    slow.write('{"using":["urn:ietf:params:jmap:core"],');
    const first = h.fetch('/jmap/api/', { method: 'POST', user: ALICE, headers: { 'content-type': 'application/json' }, body: slow, duplex: 'half' });
    await new Promise((r) => setTimeout(r, 500));
    const second = await h.api({ using: [CORE], methodCalls: [] }, ALICE);
    expect(second).toMatchObject({ status: 400, json: { type: 'urn:ietf:params:jmap:error:limit', limit: 'maxConcurrentRequests' } });
    slow.end('"methodCalls":[["Core/echo",{"a":1},"0"]]}');
    const done = await first;
    expect(((await done.json()) as { methodResponses: unknown }).methodResponses).toEqual([['Core/echo', { a: 1 }, '0']]);
    expect((await h.api({ using: [CORE], methodCalls: [] }, ALICE)).status).toBe(200);
  });
});

describe('upload expiry', () => {
  it('treats an upload older than the TTL as gone', async () => {
    let now = Date.now();
    const store = new UploadStore(h.storage.mail, 3600, () => now);
    const { blobId } = await store.put('Atest', Buffer.from('abc'), 'text/plain', 100);
    expect((await store.get('Atest', blobId))?.size).toBe(3);
    expect(await store.get('Aother', blobId)).toBeUndefined();
    now += 3601 * 1000;
    expect(await store.get('Atest', blobId)).toBeUndefined();
  });
});
