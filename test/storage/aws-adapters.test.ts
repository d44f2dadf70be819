/**
 * The aws adapters against moto's server, for what is particular to S3, DynamoDB and SQS and
 * not covered by the shared contract suite: multipart uploads (abort on TooLarge, If-None-Match
 * on completion, no leftover parts), expired items that DynamoDB still holds, filtered query
 * pages, dead-letter URLs found from the redrive policy, and SDK failures as StorageErrors.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { ListMultipartUploadsCommand, S3Client } from '@aws-sdk/client-s3';
import { DynamoDBClient, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { DynamoTables, openAwsStorage, S3Blobs } from '../../core/storage/aws/index.js';
import { isStorageError, type Storage } from '../../core/storage/ports.js';
import { deleteAwsResources, ensureAwsResources } from '../../scripts/aws-resources.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';

const MB = 1024 * 1024;

let backend: AwsTestBackend;
let config: Config;
let storage: Storage;
let s3: S3Client;
let clock = Date.now();

/** A body of `size` pseudo-random bytes in `chunk`-sized pieces, never held whole. */
function bytes(size: number, chunk = 64 * 1024, seed = 'x'): { stream: Readable; sha256: Promise<string> } {
  const hash = createHash('sha256');
  let left = size;
  let i = 0;
  let resolve!: (s: string) => void;
  const sha256 = new Promise<string>((r) => (resolve = r));
  const stream = new Readable({
    read() {
      if (left === 0) {
        resolve(hash.digest('hex'));
        this.push(null);
        return;
      }
      const n = Math.min(chunk, left);
      const b = createHash('sha256').update(`${seed}${i++}`).digest();
      const out = Buffer.alloc(n);
      for (let o = 0; o < n; o += b.length) b.copy(out, o);
      hash.update(out);
      left -= n;
      this.push(out);
    },
  });
  return { stream, sha256 };
}

async function drain(body: Readable): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const c of body) {
    hash.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { size, sha256: hash.digest('hex') };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (isStorageError(e)) return e.code;
    throw e;
  }
}

beforeAll(async () => {
  backend = await startMoto({ maxReceives: 2 });
  config = loadConfig(backend.env);
  // Multipart from 5 MiB (the default, stated here because the tests depend on it).
  storage = await openAwsStorage(config, silentLogger, { now: () => clock, blobs: { partSize: 5 * MB, queueSize: 2 } });
  s3 = new S3Client({ forcePathStyle: true });
}, 120_000);

afterAll(async () => {
  s3?.destroy();
  await storage?.close();
  await backend?.stop();
});

describe('S3 blobs', () => {
  it('stores the SHA-256 of a single-part object and hides its metadata key', async () => {
    const info = await storage.mail.put('a/one', 'hello', { contentType: 'text/plain', metadata: { Origin: 'test' } });
    expect(info.sha256).toBe(createHash('sha256').update('hello').digest('hex'));
    const head = await storage.mail.head('a/one');
    expect(head).toMatchObject({ key: 'a/one', size: 5, sha256: info.sha256, contentType: 'text/plain', metadata: { origin: 'test' } });
    expect(Object.keys(head.metadata!)).toEqual(['origin']);
  });

  it('streams a multipart body of unknown length and returns its size and SHA-256', async () => {
    // Three parts: two of 5 MiB and a last one of 123 bytes.
    const size = 10 * MB + 123;
    const { stream, sha256 } = bytes(size);
    const info = await storage.mail.put('big/one', stream, { maxBytes: 11 * MB });
    expect(info.size).toBe(size);
    expect(info.sha256).toBe(await sha256);
    const got = await storage.mail.get('big/one');
    expect(got.info.size).toBe(size);
    expect(await drain(got.body)).toEqual({ size, sha256: await sha256 });
    const part = await storage.mail.get('big/one', { range: { start: 6 * MB, end: 6 * MB + 9 } });
    expect(part.info.size).toBe(size);
    expect((await drain(part.body)).size).toBe(10);
  });

  it('aborts a multipart upload past maxBytes: TooLarge, no object, no parts left behind', async () => {
    const { stream } = bytes(11 * MB);
    expect(await code(storage.mail.put('big/too-large', stream, { maxBytes: 10 * MB }))).toBe('TooLarge');
    expect(stream.destroyed).toBe(true);
    expect(await code(storage.mail.head('big/too-large'))).toBe('NotFound');
    const uploads = await s3.send(new ListMultipartUploadsCommand({ Bucket: config.storage.aws.mailBucket }));
    expect((uploads.Uploads ?? []).filter((u) => u.Key === 'big/too-large')).toEqual([]);
  });

  it('refuses a multipart put-if-absent over an existing key and keeps the first object', async () => {
    await storage.mail.put('big/once', 'first', { ifAbsent: true });
    const { stream } = bytes(6 * MB);
    expect(await code(storage.mail.put('big/once', stream, { ifAbsent: true }))).toBe('ConditionFailed');
    expect((await storage.mail.head('big/once')).size).toBe(5);
  });

  it('lets exactly one of two racing multipart put-if-absent calls win', async () => {
    const a = bytes(6 * MB, 64 * 1024, 'a');
    const b = bytes(6 * MB, 64 * 1024, 'b');
    const results = await Promise.all([
      code(storage.mail.put('big/race', a.stream, { ifAbsent: true })),
      code(storage.mail.put('big/race', b.stream, { ifAbsent: true })),
    ]);
    const winner = results[0] === 'ok' ? await a.sha256 : await b.sha256;
    expect([...results].sort()).toEqual(['ConditionFailed', 'ok']);
    expect((await drain((await storage.mail.get('big/race')).body)).sha256).toBe(winner);
  });

  it("passes the caller's stream error through and leaves nothing visible", async () => {
    let sent = 0;
    const failing = new Readable({
      read() {
        if (sent >= 7 * MB) {
          this.destroy(new Error('client went away'));
          return;
        }
        sent += MB;
        this.push(Buffer.alloc(MB, 1));
      },
    });
    await expect(storage.mail.put('big/crash', failing)).rejects.toThrow('client went away');
    expect(await code(storage.mail.head('big/crash'))).toBe('NotFound');
  });

  it("serves more than the SDK's default 50 sockets of unread bodies at once", async () => {
    await storage.mail.put('many/readers', Buffer.alloc(256 * 1024, 7));
    // Like 60 slow POP3 clients in the middle of a RETR: each body holds its connection.
    const open = await Promise.all(Array.from({ length: 60 }, () => storage.mail.get('many/readers')));
    try {
      const head = await Promise.race([storage.mail.head('many/readers'), new Promise((r) => setTimeout(() => r('stuck'), 10_000))]);
      expect(head).toMatchObject({ size: 256 * 1024 });
    } finally {
      for (const o of open) o.body.destroy();
    }
  });

  it('keeps the two buckets apart and answers InvalidRequest for a range past the end', async () => {
    await storage.cache.put('shared-key', 'cache');
    expect(await code(storage.mail.head('shared-key'))).toBe('NotFound');
    expect(await code(storage.cache.get('shared-key', { range: { start: 100 } }))).toBe('Invalid');
  });
});

describe('DynamoDB tables', () => {
  const ddb = () => new DynamoDBClient({});

  it('hides an expired item that DynamoDB still holds, and an update does not merge into it', async () => {
    const past = Math.floor(clock / 1000) - 10;
    await storage.tables.put({ pk: 'exp', sk: 'a', ttl: past, old: 'stale', n: 7 });
    expect(await storage.tables.get({ pk: 'exp', sk: 'a' })).toBeUndefined();
    const after = await storage.tables.update({ pk: 'exp', sk: 'a' }, { add: { n: 1 } }, { condition: { exists: false } });
    expect(after).toEqual({ pk: 'exp', sk: 'a', n: 1 });
    expect(await storage.tables.get({ pk: 'exp', sk: 'a' })).toEqual({ pk: 'exp', sk: 'a', n: 1 });
  });

  it('expires by the injected clock: live before, absent after, for reads and conditions', async () => {
    const ttl = Math.floor(clock / 1000) + 60;
    await storage.tables.put({ pk: 'clock', sk: 'x', ttl, v: 1 });
    expect(await code(storage.tables.put({ pk: 'clock', sk: 'x', v: 2 }, { condition: { exists: false } }))).toBe('ConditionFailed');
    clock += 61_000;
    try {
      expect(await storage.tables.get({ pk: 'clock', sk: 'x' })).toBeUndefined();
      expect(await code(storage.tables.delete({ pk: 'clock', sk: 'x' }, { condition: { exists: true } }))).toBe('ConditionFailed');
      expect(await code(storage.tables.put({ pk: 'clock', sk: 'x', v: 3 }, { condition: { exists: false } }))).toBe('ok');
      expect(await storage.tables.get({ pk: 'clock', sk: 'x' })).toEqual({ pk: 'clock', sk: 'x', v: 3 });
    } finally {
      clock -= 61_000;
    }
  });

  it('fills a query page past expired items, with a cursor only when more live items follow', async () => {
    const past = Math.floor(clock / 1000) - 1;
    const client = ddb();
    try {
      // 30 expired items written around 5 live ones, straight through the SDK.
      const writes = Array.from({ length: 35 }, (_, i) => {
        const live = i % 7 === 3;
        return client.send(
          new PutItemCommand({
            TableName: config.storage.aws.table,
            Item: { pk: { S: 'page' }, sk: { S: `k${String(i).padStart(2, '0')}` }, ...(live ? {} : { ttl: { N: String(past) } }) },
          }),
        );
      });
      await Promise.all(writes);
    } finally {
      client.destroy();
    }
    const first = await storage.tables.query('page', { limit: 3 });
    expect(first.items.map((i) => i.sk)).toEqual(['k03', 'k10', 'k17']);
    expect(first.cursor).toBeDefined();
    const second = await storage.tables.query('page', { limit: 3, cursor: first.cursor });
    expect(second.items.map((i) => i.sk)).toEqual(['k24', 'k31']);
    expect(second.cursor).toBeUndefined();
    const back = await storage.tables.query('page', { limit: 2, reverse: true, range: { gt: 'k03', lt: 'k31' } });
    expect(back.items.map((i) => i.sk)).toEqual(['k24', 'k17']);
    expect(await code(storage.tables.query('other', { cursor: first.cursor }))).toBe('Invalid');
  });

  it('purges an expired item inside a transaction update and names the op that failed', async () => {
    const past = Math.floor(clock / 1000) - 1;
    await storage.tables.put({ pk: 'tx', sk: 'old', ttl: past, stale: true });
    await storage.tables.transact([
      { update: { pk: 'tx', sk: 'old' }, changes: { set: { fresh: true } } },
      { put: { pk: 'tx', sk: 'new', v: 1 }, condition: { exists: false } },
    ]);
    expect(await storage.tables.get({ pk: 'tx', sk: 'old' })).toEqual({ pk: 'tx', sk: 'old', fresh: true });
    const err = await storage.tables
      .transact([{ put: { pk: 'tx', sk: 'a', v: 1 } }, { check: { pk: 'tx', sk: 'new' }, condition: { equals: { v: 2 } } }])
      .catch((e: unknown) => e);
    expect(isStorageError(err, 'ConditionFailed')).toBe(true);
    expect((err as Error).message).toMatch(/op 1\b/);
    expect(await storage.tables.get({ pk: 'tx', sk: 'a' })).toBeUndefined();
  });

  it('treats equals null as absent-or-null and compares maps and lists by value', async () => {
    await storage.tables.put({ pk: 'eq', sk: '1', doc: { a: [1, 'two', { b: null }] }, nothing: null });
    const holds = (condition: object) => code(storage.tables.put({ pk: 'eq', sk: '1', doc: { a: [1, 'two', { b: null }] }, nothing: null }, { condition }));
    expect(await holds({ equals: { nothing: null, missing: null } })).toBe('ok');
    expect(await holds({ equals: { doc: { a: [1, 'two', { b: null }] } } })).toBe('ok');
    expect(await holds({ equals: { doc: { a: [1, 'two'] } } })).toBe('ConditionFailed');
    expect(await holds({ lessThan: { missing: 1 } })).toBe('ConditionFailed');
  });
});

describe('SQS queues', () => {
  it('finds the dead-letter queue from the redrive policy when its URL is not configured', async () => {
    const env = { ...backend.env, TOMLINSON_INBOUND_DLQ_URL: '', TOMLINSON_OUTBOUND_DLQ_URL: '' };
    const s = await openAwsStorage(loadConfig(env), silentLogger);
    try {
      await s.queues.send('outbound', 'to-dlq');
      for (let i = 0; i < 2; i++) {
        const [m] = await s.queues.receive('outbound', { visibilitySeconds: 1, waitSeconds: 2 });
        expect(m?.body).toBe('to-dlq');
        expect(m?.receiveCount).toBe(i + 1);
      }
      await new Promise((r) => setTimeout(r, 1100));
      expect(await s.queues.receive('outbound', { waitSeconds: 1 })).toEqual([]);
      const [dead] = await s.queues.receive('outbound-dlq', { waitSeconds: 2 });
      expect(dead?.body).toBe('to-dlq');
      await s.queues.delete('outbound-dlq', dead!.receipt);
    } finally {
      await s.close();
    }
  });

  it('returns an empty batch, without throwing, when the signal aborts a long poll', async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(), 300);
    expect(await storage.queues.receive('inbound', { waitSeconds: 10, signal: ac.signal })).toEqual([]);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  it('accepts a bare SQS receipt handle, as a Lambda event carries it', async () => {
    // outbound: the aborted poll of the test before may still be polling inbound on the server.
    const body = `bare-${randomBytes(4).toString('hex')}`;
    await storage.queues.send('outbound', body);
    const [m] = await storage.queues.receive('outbound', { visibilitySeconds: 30, waitSeconds: 2 });
    expect(m?.body).toBe(body);
    const bare = m!.receipt.replace(/^tmln1:\d+:\d+:/, '');
    expect(bare).not.toBe(m!.receipt);
    await storage.queues.changeVisibility('outbound', bare, 0);
    const [again] = await storage.queues.receive('outbound', { visibilitySeconds: 30, waitSeconds: 2 });
    expect(again?.id).toBe(m!.id);
    expect(again?.receiveCount).toBe(2);
    await storage.queues.delete('outbound', again!.receipt.replace(/^tmln1:\d+:\d+:/, ''));
    expect((await storage.queues.stats('outbound')).inFlight).toBe(0);
  });

  it('refuses out-of-range arguments before calling SQS', async () => {
    expect(await code(storage.queues.send('inbound', 'x', { delaySeconds: 901 }))).toBe('Invalid');
    expect(await code(storage.queues.receive('inbound', { max: 11 }))).toBe('Invalid');
    expect(await code(storage.queues.receive('inbound', { waitSeconds: 21 }))).toBe('Invalid');
  });
});

describe('scripts/aws-resources.ts', () => {
  it('creates idempotently, with the redrive policy at maxReceives, and deletes everything', async () => {
    const options = { prefix: `tomlinson-res-${randomBytes(3).toString('hex')}`, maxReceives: 4 };
    const first = await ensureAwsResources(options);
    expect(await ensureAwsResources(options)).toEqual(first);
    const sqs = new SQSClient({});
    try {
      const attrs = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: first.TOMLINSON_OUTBOUND_QUEUE_URL, AttributeNames: ['RedrivePolicy'] }));
      const policy = JSON.parse(attrs.Attributes!.RedrivePolicy!) as { maxReceiveCount: number | string; deadLetterTargetArn: string };
      expect(Number(policy.maxReceiveCount)).toBe(4);
      expect(policy.deadLetterTargetArn).toMatch(/:tomlinson-res-[0-9a-f]+-outbound-dlq$/);
      const s = await openAwsStorage(loadConfig({ ...backend.env, ...first }), silentLogger);
      expect(await s.check()).toEqual({ mail: true, cache: true, tables: true, queues: true });
      await s.mail.put('left/behind', 'x');
      await deleteAwsResources(options);
      expect(await s.check()).toEqual({ mail: false, cache: false, tables: false, queues: false });
      await s.close();
    } finally {
      sqs.destroy();
    }
  });
});

describe('failures as StorageErrors', () => {
  it('reports a missing bucket, table and queue as down in check() and as Unavailable on use', async () => {
    const env = {
      ...backend.env,
      TOMLINSON_MAIL_BUCKET: `nope-${randomBytes(3).toString('hex')}`,
      TOMLINSON_TABLE: 'nope',
    };
    const s = await openAwsStorage(loadConfig(env), silentLogger);
    try {
      expect(await s.check()).toEqual({ mail: false, cache: true, tables: false, queues: true });
      expect(await code(s.mail.put('k', 'v'))).toBe('Unavailable');
      expect(await code(s.tables.get({ pk: 'a', sk: 'b' }))).toBe('Unavailable');
    } finally {
      await s.close();
    }
    expect(await storage.check()).toEqual({ mail: true, cache: true, tables: true, queues: true });
  });

  it('turns a connection cut in the middle of a get body into Unavailable on the stream', async () => {
    // An HTTP server that promises 1000 bytes of object and hangs up after 100.
    const server = createServer((req, res) => {
      res.writeHead(200, { 'content-length': '1000', 'content-type': 'application/octet-stream', etag: '"x"' });
      res.write(Buffer.alloc(100, 1), () => setTimeout(() => res.socket?.destroy(), 50));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = new S3Client({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, forcePathStyle: true, maxAttempts: 1 });
    try {
      const blobs = new S3Blobs(client, 'bucket', silentLogger);
      const { body } = await blobs.get('cut/object');
      const err = await drain(body).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isStorageError(err, 'Unavailable')).toBe(true);
    } finally {
      client.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  it('turns throttling answers (S3 SlowDown, DynamoDB ProvisionedThroughputExceeded) into Unavailable', async () => {
    const server = createServer((req, res) => {
      req.resume();
      if (req.headers['x-amz-target']) {
        // The DynamoDB JSON protocol: HTTP 400 with the exception type in the body.
        res.writeHead(400, { 'content-type': 'application/x-amz-json-1.0' });
        res.end(JSON.stringify({ __type: 'com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException', message: 'slow down' }));
      } else {
        res.writeHead(503, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>');
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const s3c = new S3Client({ endpoint, forcePathStyle: true, maxAttempts: 1 });
    const ddbc = new DynamoDBClient({ endpoint, maxAttempts: 1 });
    try {
      const blobs = new S3Blobs(s3c, 'bucket', silentLogger);
      const tables = new DynamoTables(ddbc, 'table', silentLogger);
      // Thunks, so that each call starts only when it is awaited (no rejection left unhandled).
      const calls = [
        () => blobs.put('k', 'v'),
        () => blobs.head('k'),
        () => tables.get({ pk: 'a', sk: 'b' }),
        () => tables.put({ pk: 'a', sk: 'b' }, { condition: { exists: false } }),
      ];
      for (const call of calls) {
        const err = await (call() as Promise<unknown>).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(isStorageError(err, 'Unavailable'), String(err)).toBe(true);
        expect((err as { retryable: boolean }).retryable).toBe(true);
      }
    } finally {
      s3c.destroy();
      ddbc.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  it('answers Unavailable, quickly, when nothing listens at the endpoint', async () => {
    const saved = process.env.AWS_ENDPOINT_URL;
    // Port 9 (discard) has no listener here: connections are refused. SQS sends to the queue
    // URL's host, so the queue URL moves there too.
    const dead = 'http://127.0.0.1:9';
    process.env.AWS_ENDPOINT_URL = dead;
    const s = await openAwsStorage(loadConfig({ ...backend.env, AWS_ENDPOINT_URL: dead, TOMLINSON_INBOUND_QUEUE_URL: `${dead}/123456789012/q` }), silentLogger);
    try {
      const t0 = Date.now();
      expect(await code(s.tables.get({ pk: 'a', sk: 'b' }))).toBe('Unavailable');
      expect(await code(s.queues.send('inbound', 'x'))).toBe('Unavailable');
      expect(await code(s.mail.head('k'))).toBe('Unavailable');
      expect(Date.now() - t0).toBeLessThan(20_000);
    } finally {
      process.env.AWS_ENDPOINT_URL = saved;
      await s.close();
    }
  });
});
