/**
 * The storage contract: one suite of tests every adapter family must pass (ports.ts is the
 * specification). A family's test file calls `describeStorageContract` with a setup that returns
 * the environment variables opening its storage; the suite opens it in this process through
 * `loadConfig` + `openStorage`, and in child processes (test/contract/child.ts) for the
 * cross-process race, the 100 MB memory bound and the crash in the middle of a put.
 *
 * Every test works under fresh keys (a run id plus the test's own prefix) and tells its queue
 * messages apart by a unique tag, so the suite can run against a shared real account.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer as readAll, text as readText } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import {
  MAX_DELAY_SECONDS,
  MAX_RECEIVE_BATCH,
  MAX_TRANSACTION_OPS,
  MAX_VISIBILITY_SECONDS,
  isStorageError,
  type Item,
  type QueueName,
  type ReceivedMessage,
  type TransactOp,
  type Storage,
  type StorageErrorCode,
} from '../../core/storage/ports.js';

/** What a family's setup hands the suite: the environment that opens its storage, and a cleanup. */
export interface ContractTarget {
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const CHILD = join(HERE, 'child.ts');
const MB = 1024 * 1024;

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const byUtf8 = (a: string, b: string) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));

/** Resolves to the StorageError code the promise rejected with; fails the test if it resolved. */
async function errorCode(p: Promise<unknown>): Promise<StorageErrorCode | string> {
  try {
    await p;
  } catch (e) {
    return isStorageError(e) ? e.code : `not a StorageError: ${String(e)}`;
  }
  return 'resolved';
}

/** Polls `check` until it holds or `ms` pass: SQS's queue counts are approximate and may lag. */
async function eventually(check: () => Promise<boolean>, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(250);
  }
}

/** A child process running test/contract/child.ts with the target's environment. */
export class ContractChild {
  readonly proc: ChildProcess;
  private buf = '';
  readonly lines: string[] = [];
  private waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;
  stderr = '';

  constructor(env: Record<string, string>, args: string[]) {
    this.proc = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', CHILD, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env, TOMLINSON_LOG_LEVEL: 'silent' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    this.proc.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.exited = new Promise((resolve) => this.proc.on('exit', (code) => resolve(code)));
    this.exited.then(() => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Waits for a line matching `test`; throws with the child's stderr on exit or timeout. */
  async waitLine(test: (l: string) => boolean, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => (exited = true));
    for (;;) {
      const found = this.lines.find(test);
      if (found !== undefined) return found;
      if (exited || Date.now() > deadline)
        throw new Error(`child gave no expected line (exited: ${exited}); stdout: ${this.lines.join(' | ')}; stderr: ${this.stderr}`);
      const timer = new AbortController();
      await Promise.race([
        new Promise<void>((r) => this.waiters.push(r)),
        sleep(Math.max(1, deadline - Date.now()), undefined, { signal: timer.signal }).catch(() => undefined),
      ]);
      timer.abort();
    }
  }

  /** The child's JSON result line. */
  async result<T>(timeoutMs: number): Promise<T> {
    const line = await this.waitLine((l) => l.startsWith('{'), timeoutMs);
    const r = JSON.parse(line) as T & { error?: string };
    if (r.error) throw new Error(`child failed: ${r.error}`);
    return r;
  }

  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}

/** Registers the storage contract tests for one adapter family. */
export function describeStorageContract(family: string, setup: () => Promise<ContractTarget>): void {
  describe(`storage contract: ${family}`, () => {
    let target: ContractTarget;
    let config: Config;
    let s: Storage;
    const children: ContractChild[] = [];
    /** Unique per run, so runs against one shared account never meet. */
    const run = `contract-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
    const spawnChild = (...args: string[]) => {
      const c = new ContractChild(target.env, args);
      children.push(c);
      return c;
    };

    /** Partition keys the table tests wrote, for the cleanup. */
    const usedPks = new Set<string>();
    const pkOf = (name: string) => {
      const v = `${run}#${name}`;
      usedPks.add(v);
      return v;
    };

    /** Best effort: leave nothing of this run in a shared account (expired items go by TTL). */
    async function removeTestData(): Promise<void> {
      try {
        for (const blobs of [s.mail, s.cache]) {
          let cursor: string | undefined;
          do {
            const page = await blobs.list(`${run}/`, { cursor });
            await Promise.all(page.items.map((i) => blobs.delete(i.key)));
            cursor = page.cursor;
          } while (cursor);
        }
        for (const pk of usedPks) {
          let cursor: string | undefined;
          do {
            const page = await s.tables.query(pk, { cursor });
            await Promise.all(page.items.map((i) => s.tables.delete({ pk: i.pk, sk: i.sk })));
            cursor = page.cursor;
          } while (cursor);
        }
      } catch (e) {
        console.warn(`[${family}] cleanup of ${run} failed: ${String(e)}`);
      }
    }

    beforeAll(async () => {
      target = await setup();
      config = loadConfig(target.env);
      s = await openStorage(config, silentLogger);
    });

    afterAll(async () => {
      for (const c of children) c.kill();
      await Promise.all(children.map((c) => c.exited));
      if (s) await removeTestData();
      await s?.close();
      await target?.cleanup();
    });

    it('opens the named family and reports every backend healthy', async () => {
      // The engine behind the ports is the named one (its declared capabilities are checked below).
      expect(s.capabilities.sharedBetweenProcesses).toBe(family !== 'local');
      const health = await s.check();
      expect(Object.keys(health).length).toBeGreaterThan(0);
      expect(Object.values(health).every((v) => v === true)).toBe(true);
    });

    // -----------------------------------------------------------------------------------------
    // What each family declares beyond the contract (ports.ts, StorageCapabilities), and that each
    // declared capability does what it says.
    describe('capabilities', () => {
      const k = (name: string) => `${run}/capabilities/${name}`;

      it('declares what its engine can do', () => {
        const expected =
          family === 'local'
            ? { sharedBetweenProcesses: false, costlyReads: false, listingWaitSeconds: 0 }
            : { sharedBetweenProcesses: true, costlyReads: true, listingWaitSeconds: 1, monitoredAs: config.storage.aws.table };
        expect(s.capabilities).toEqual(expected);
      });

      it('a small-object reader reads an object whole at once, or the family refuses one', async () => {
        const body = 'Subject: small\r\n\r\n' + 'x'.repeat(3000);
        await s.mail.put(k('small.eml'), body);
        const reader = s.mail.smallReader?.();
        if (family !== 'local') {
          // Every S3 read is a network request: no synchronous reader.
          expect(reader).toBeUndefined();
          return;
        }
        expect(reader).toBeDefined();
        expect(reader!.readSmallSync(k('small.eml'), { maxBytes: 64 * 1024, sizeHint: body.length })?.toString()).toBe(body);
        // Larger than maxBytes: not read (the caller streams it with get).
        expect(reader!.readSmallSync(k('small.eml'), { maxBytes: body.length - 1 })).toBeUndefined();
        // Into a caller's buffer, reused from one read to the next.
        const into = Buffer.alloc(8192);
        const got = reader!.readSmallSync(k('small.eml'), { maxBytes: 64 * 1024, sizeHint: body.length, into });
        expect(got?.toString()).toBe(body);
        expect(got?.buffer).toBe(into.buffer);
        expect(() => reader!.readSmallSync(k('absent.eml'))).toThrow(expect.objectContaining({ code: 'NotFound' }));
      });

      it('a non-durable table write (durable: false, a POP3 lease) is read back and conditions see it', async () => {
        const key = { pk: pkOf('lazy-lease'), sk: 'LEASE' };
        await s.tables.put({ ...key, holder: 'a' }, { condition: { exists: false }, durable: false });
        expect(await s.tables.get(key)).toMatchObject({ holder: 'a' });
        expect(await errorCode(s.tables.put({ ...key, holder: 'b' }, { condition: { exists: false }, durable: false }))).toBe('ConditionFailed');
        await s.tables.update(key, { set: { holder: 'c' } }, { condition: { equals: { holder: 'a' } }, durable: false });
        await s.tables.delete(key, { condition: { equals: { holder: 'c' } }, durable: false });
        expect(await s.tables.get(key)).toBeUndefined();
      });

      it('a store opened from a worker-thread handover (structured-cloned) sees the same data, and its sends wake a long poll here', async () => {
        const handover = structuredClone(s.forWorkerThread());
        const other = await openStorage(config, silentLogger, { thread: handover });
        try {
          const key = { pk: pkOf('handover'), sk: 'ITEM' };
          await other.tables.put({ ...key, from: 'thread' });
          expect(await s.tables.get(key)).toMatchObject({ from: 'thread' });
          await other.mail.put(k('from-thread'), 'hello');
          expect(await readText((await s.mail.get(k('from-thread'))).body)).toBe('hello');
          const tag = `${run}:handover:${randomUUID()}`;
          const polled = s.queues.receive('inbound', { waitSeconds: 10, visibilitySeconds: 30 });
          await sleep(200);
          const sentAt = Date.now();
          await other.queues.send('inbound', tag);
          let got = await polled;
          // A leftover of a shared account may answer the poll first: keep polling for the tag.
          while (!got.some((m) => m.body === tag) && Date.now() - sentAt < 10_000)
            got = await s.queues.receive('inbound', { waitSeconds: 2, visibilitySeconds: 30 });
          expect(got.map((m) => m.body)).toContain(tag);
          // Locally the send wakes the waiting poll at once (the handover's channel), well before
          // the poll's own 1 s re-check.
          if (family === 'local') expect(Date.now() - sentAt).toBeLessThan(600);
          await Promise.all(got.filter((m) => m.body === tag).map((m) => s.queues.delete('inbound', m.receipt)));
        } finally {
          await other.close();
        }
        // This store still works after the other one closed.
        const key = { pk: pkOf('handover'), sk: 'AFTER' };
        await s.tables.put(key);
        expect(await s.tables.get(key)).toBeDefined();
      });
    });

    // -----------------------------------------------------------------------------------------
    describe('blobs', () => {
      const k = (name: string) => `${run}/blobs/${name}`;

      it('put returns size and sha256; head and get return the bytes, type and metadata', async () => {
        const body = 'Subject: hi\r\n\r\nhello, world\r\n';
        const info = await s.mail.put(k('a.eml'), body, { contentType: 'message/rfc822', metadata: { origin: 'test' } });
        expect(info).toMatchObject({ key: k('a.eml'), size: Buffer.byteLength(body), sha256: sha256(body) });
        const head = await s.mail.head(k('a.eml'));
        expect(head.size).toBe(Buffer.byteLength(body));
        expect(head.contentType).toBe('message/rfc822');
        expect(head.metadata).toEqual({ origin: 'test' });
        if (head.sha256 !== undefined) expect(head.sha256).toBe(sha256(body));
        const got = await s.mail.get(k('a.eml'));
        expect(got.info.size).toBe(Buffer.byteLength(body));
        expect(await readText(got.body)).toBe(body);
      });

      it('accepts every body form: Readable, async iterable, Uint8Array, string, empty', async () => {
        const parts = [Buffer.from('one '), Buffer.from('two '), Buffer.from('three')];
        const whole = Buffer.concat(parts);
        async function* gen() {
          for (const p of parts) yield p;
        }
        const forms: [string, () => Parameters<Storage['mail']['put']>[1]][] = [
          ['readable', () => Readable.from(parts, { objectMode: false })],
          ['iterable', () => gen()],
          ['bytes', () => new Uint8Array(whole)],
          ['string', () => whole.toString()],
        ];
        for (const [name, body] of forms) {
          const info = await s.mail.put(k(`form-${name}`), body());
          expect(info.size, name).toBe(whole.length);
          expect(info.sha256, name).toBe(sha256(whole));
          expect(await readAll((await s.mail.get(k(`form-${name}`))).body), name).toEqual(whole);
        }
        const empty = await s.mail.put(k('empty'), '');
        expect(empty).toMatchObject({ size: 0, sha256: sha256('') });
        expect((await s.mail.head(k('empty'))).size).toBe(0);
        expect((await readAll((await s.mail.get(k('empty'))).body)).length).toBe(0);
      });

      it('a non-durable put (durable: false, for cache objects) is read back whole, replacing the old version', async () => {
        await s.cache.put(k('lazy'), 'old body');
        const body = 'cached body '.repeat(500);
        const info = await s.cache.put(k('lazy'), body, { durable: false });
        expect(info).toMatchObject({ size: body.length, sha256: sha256(body) });
        expect(await readText((await s.cache.get(k('lazy'))).body)).toBe(body);
        expect((await s.cache.head(k('lazy'))).size).toBe(body.length);
      });

      it('a second put replaces the object whole', async () => {
        await s.mail.put(k('replace'), 'first version, longer');
        await s.mail.put(k('replace'), 'second');
        expect(await readText((await s.mail.get(k('replace'))).body)).toBe('second');
        expect((await s.mail.head(k('replace'))).size).toBe(6);
      });

      it('get streams inclusive byte ranges; an end past the object is clamped', async () => {
        const body = '0123456789abcdefghij';
        await s.mail.put(k('range'), body);
        const r = async (start: number, end?: number) => readText((await s.mail.get(k('range'), { range: { start, end } })).body);
        expect(await r(0, 0)).toBe('0');
        expect(await r(3, 7)).toBe('34567');
        expect(await r(15)).toBe('fghij');
        expect(await r(18, 1000)).toBe('ij');
        expect((await s.mail.get(k('range'), { range: { start: 5, end: 6 } })).info.size).toBe(20);
      });

      it('head and get of an absent key fail NotFound; delete is idempotent', async () => {
        expect(await errorCode(s.mail.head(k('absent')))).toBe('NotFound');
        expect(await errorCode(s.mail.get(k('absent')))).toBe('NotFound');
        await s.mail.put(k('gone'), 'x');
        await s.mail.delete(k('gone'));
        await s.mail.delete(k('gone'));
        await s.mail.delete(k('never-was'));
        expect(await errorCode(s.mail.head(k('gone')))).toBe('NotFound');
      });

      it('a body over maxBytes fails TooLarge and stores nothing (an old version stays)', async () => {
        expect(await errorCode(s.mail.put(k('big'), Buffer.alloc(2048, 1), { maxBytes: 2047 }))).toBe('TooLarge');
        expect(await errorCode(s.mail.head(k('big')))).toBe('NotFound');
        async function* slow() {
          for (let i = 0; i < 64; i++) yield Buffer.alloc(1024, i);
        }
        expect(await errorCode(s.mail.put(k('big'), Readable.from(slow(), { objectMode: false }), { maxBytes: 10_000 }))).toBe('TooLarge');
        expect(await errorCode(s.mail.head(k('big')))).toBe('NotFound');
        expect((await s.mail.put(k('big'), Buffer.alloc(2048, 1), { maxBytes: 2048 })).size).toBe(2048);
        expect(await errorCode(s.mail.put(k('big'), Buffer.alloc(4096, 2), { maxBytes: 4095 }))).toBe('TooLarge');
        expect(await readAll((await s.mail.get(k('big'))).body)).toEqual(Buffer.alloc(2048, 1));
        const page = await s.mail.list(k('big'));
        expect(page.items.map((i) => i.key)).toEqual([k('big')]);
      });

      it('a put whose body stream fails rejects and stores nothing', async () => {
        async function* failing() {
          yield Buffer.alloc(100_000, 1);
          throw new Error('client went away');
        }
        await expect(s.mail.put(k('failed-body'), Readable.from(failing(), { objectMode: false }))).rejects.toThrow();
        expect(await errorCode(s.mail.head(k('failed-body')))).toBe('NotFound');
        expect((await s.mail.list(k('failed-body'))).items).toEqual([]);
      });

      it('lists by prefix in UTF-8 byte order, page by page', async () => {
        const names = ['a', 'a/b', 'a-b', 'a/c/d', 'b', 'Z', 'z', 'é', 'ü/x', '日本', '😀', '\uffee', 'm0', 'm1', 'm10', 'm2'];
        await Promise.all(names.map((n) => s.mail.put(k(`list/${n}`), n)));
        await s.mail.put(k('listed-not'), 'outside the prefix');
        const want = names.map((n) => k(`list/${n}`)).sort(byUtf8);
        const all = await s.mail.list(k('list/'));
        expect(all.items.map((i) => i.key)).toEqual(want);
        expect(all.cursor).toBeUndefined();
        expect(all.items.find((i) => i.key === k('list/é'))?.size).toBe(Buffer.byteLength('é'));
        const paged: string[] = [];
        let cursor: string | undefined;
        let pages = 0;
        do {
          const page = await s.mail.list(k('list/'), { limit: 3, cursor });
          expect(page.items.length).toBeLessThanOrEqual(3);
          paged.push(...page.items.map((i) => i.key));
          cursor = page.cursor;
          pages++;
        } while (cursor && pages < 20);
        expect(paged).toEqual(want);
        expect((await s.mail.list(k('list/a'))).items.map((i) => i.key)).toEqual(want.filter((x) => x.startsWith(k('list/a'))));
        expect((await s.mail.list(k('list/a/'))).items.map((i) => i.key)).toEqual([k('list/a/b'), k('list/a/c/d')]);
        expect((await s.mail.list(k('list/none'))).items).toEqual([]);
      });

      it('mail and cache are separate namespaces', async () => {
        await s.mail.put(k('ns'), 'mail');
        expect(await errorCode(s.cache.head(k('ns')))).toBe('NotFound');
        await s.cache.put(k('ns'), 'cache!');
        expect(await readText((await s.cache.get(k('ns'))).body)).toBe('cache!');
        expect(await readText((await s.mail.get(k('ns'))).body)).toBe('mail');
        await s.cache.delete(k('ns'));
      });

      it('put-if-absent: the second put fails ConditionFailed and leaves the first', async () => {
        await s.mail.put(k('once'), 'first', { ifAbsent: true });
        expect(await errorCode(s.mail.put(k('once'), 'second', { ifAbsent: true }))).toBe('ConditionFailed');
        expect(await readText((await s.mail.get(k('once'))).body)).toBe('first');
      });

      it('put-if-absent race in one process: exactly one of 12 racers wins', async () => {
        const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => s.mail.put(k('race1'), `racer ${i}`, { ifAbsent: true })));
        const wins = results.map((r, i) => (r.status === 'fulfilled' ? i : -1)).filter((i) => i >= 0);
        expect(wins).toHaveLength(1);
        for (const r of results) if (r.status === 'rejected') expect(isStorageError(r.reason, 'ConditionFailed')).toBe(true);
        expect(await readText((await s.mail.get(k('race1'))).body)).toBe(`racer ${wins[0]}`);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe('tables', () => {
      const pk = pkOf;
      const past = () => Math.floor(Date.now() / 1000) - 3600;
      const future = () => Math.floor(Date.now() / 1000) + 3600;

      it('put, get and delete whole items with JSON attributes', async () => {
        const item: Item = {
          pk: pk('basic'),
          sk: 'META',
          n: 1,
          s: 'é',
          b: true,
          z: null,
          list: [1, 'two', { three: 3 }],
          map: { a: { b: [] } },
          ttl: future(),
        };
        await s.tables.put(item);
        expect(await s.tables.get({ pk: pk('basic'), sk: 'META' })).toEqual(item);
        await s.tables.put({ pk: pk('basic'), sk: 'META', only: 'this' });
        expect(await s.tables.get({ pk: pk('basic'), sk: 'META' })).toEqual({ pk: pk('basic'), sk: 'META', only: 'this' });
        await s.tables.delete({ pk: pk('basic'), sk: 'META' });
        await s.tables.delete({ pk: pk('basic'), sk: 'META' });
        expect(await s.tables.get({ pk: pk('basic'), sk: 'META' })).toBeUndefined();
        expect(await s.tables.get({ pk: pk('never'), sk: 'x' })).toBeUndefined();
      });

      it('conditions: exists, equals (null = absent), lessThan, greaterThan', async () => {
        const key = { pk: pk('cond'), sk: 'x' };
        expect(await errorCode(s.tables.put({ ...key, v: 0 }, { condition: { exists: true } }))).toBe('ConditionFailed');
        await s.tables.put({ ...key, v: 1, state: 'new' }, { condition: { exists: false } });
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { exists: false } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { equals: { state: 'old' } } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { equals: { state: 'new', v: 2 } } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { equals: { state: null } } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { lessThan: { v: 1 } } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { greaterThan: { v: 1 } } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.put({ ...key, v: 2 }, { condition: { lessThan: { missing: 5 } } }))).toBe('ConditionFailed');
        expect(await s.tables.get(key)).toEqual({ ...key, v: 1, state: 'new' });
        await s.tables.put(
          { ...key, v: 2, state: 'next' },
          { condition: { exists: true, equals: { state: 'new', other: null }, lessThan: { v: 2 }, greaterThan: { v: 0 } } },
        );
        expect(await s.tables.get(key)).toEqual({ ...key, v: 2, state: 'next' });
        expect(await errorCode(s.tables.delete(key, { condition: { equals: { state: 'new' } } }))).toBe('ConditionFailed');
        expect(await s.tables.get(key)).toBeDefined();
        await s.tables.delete(key, { condition: { equals: { state: 'next' } } });
        expect(await s.tables.get(key)).toBeUndefined();
        expect(await errorCode(s.tables.delete(key, { condition: { exists: true } }))).toBe('ConditionFailed');
      });

      it('update creates when absent, sets, adds, removes, changes ttl and returns the new item', async () => {
        const key = { pk: pk('upd'), sk: 'MBX' };
        const created = await s.tables.update(key, { set: { name: 'box' }, add: { count: 2 } });
        expect(created).toEqual({ ...key, name: 'box', count: 2 });
        const t = future();
        const next = await s.tables.update(key, { add: { count: 3, bytes: 100 }, set: { flag: true }, remove: ['name'], ttl: t });
        expect(next).toEqual({ ...key, count: 5, bytes: 100, flag: true, ttl: t });
        expect(await s.tables.get(key)).toEqual(next);
        const cleared = await s.tables.update(key, { add: { count: -5 }, ttl: null });
        expect(cleared).toEqual({ ...key, count: 0, bytes: 100, flag: true });
        expect(await errorCode(s.tables.update(key, { set: { x: 1 } }, { condition: { greaterThan: { count: 0 } } }))).toBe('ConditionFailed');
        expect(await s.tables.get(key)).toEqual(cleared);
        expect(await errorCode(s.tables.update({ pk: pk('upd'), sk: 'absent' }, { add: { n: 1 } }, { condition: { exists: true } }))).toBe('ConditionFailed');
        expect(await s.tables.get({ pk: pk('upd'), sk: 'absent' })).toBeUndefined();
      });

      it('atomic counters: 25 concurrent adds all count', async () => {
        const key = { pk: pk('counter'), sk: 'C' };
        const results = await Promise.all(Array.from({ length: 25 }, () => s.tables.update(key, { add: { n: 1 } })));
        expect((await s.tables.get(key))?.n).toBe(25);
        expect(results.map((r) => r.n).sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
      });

      it('concurrent conditional writes in one process: exactly one of 12 racers wins', async () => {
        const key = { pk: pk('race'), sk: 'LEASE' };
        const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => s.tables.put({ ...key, holder: i }, { condition: { exists: false } })));
        const wins = results.map((r, i) => (r.status === 'fulfilled' ? i : -1)).filter((i) => i >= 0);
        expect(wins).toHaveLength(1);
        for (const r of results) if (r.status === 'rejected') expect(isStorageError(r.reason, 'ConditionFailed')).toBe(true);
        expect((await s.tables.get(key))?.holder).toBe(wins[0]);
        // Compare-and-set on a version: of 12 updates expecting version 0, one wins.
        await s.tables.put({ pk: pk('race'), sk: 'CAS', version: 0 });
        const cas = await Promise.allSettled(
          Array.from({ length: 12 }, (_, i) =>
            s.tables.update({ pk: pk('race'), sk: 'CAS' }, { add: { version: 1 }, set: { by: i } }, { condition: { equals: { version: 0 } } }),
          ),
        );
        expect(cas.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect((await s.tables.get({ pk: pk('race'), sk: 'CAS' }))?.version).toBe(1);
      });

      it('an expired item is absent for get, query and every condition, even before it is removed', async () => {
        const key = { pk: pk('ttl'), sk: 'old' };
        await s.tables.put({ ...key, secret: 'stale', ttl: past() });
        await s.tables.put({ pk: pk('ttl'), sk: 'live', ttl: future() });
        await s.tables.put({ pk: pk('ttl'), sk: 'forever' });
        expect(await s.tables.get(key)).toBeUndefined();
        expect((await s.tables.query(pk('ttl'))).items.map((i) => i.sk)).toEqual(['forever', 'live']);
        expect(await errorCode(s.tables.delete(key, { condition: { exists: true } }))).toBe('ConditionFailed');
        expect(await errorCode(s.tables.update(key, { set: { a: 1 } }, { condition: { equals: { secret: 'stale' } } }))).toBe('ConditionFailed');
        // An update of an expired item starts from nothing: the old attributes and ttl are gone,
        // so a counter that expired starts again at 0.
        await s.tables.put({ ...key, n: 41, secret: 'stale', ttl: past() });
        const fresh = await s.tables.update(key, { add: { n: 1 } }, { condition: { exists: false } });
        expect(fresh).toEqual({ ...key, n: 1 });
        expect(await s.tables.get(key)).toEqual({ ...key, n: 1 });
        await s.tables.put({ ...key, secret: 'expired again', ttl: past() });
        await s.tables.put({ ...key, v: 'new' }, { condition: { exists: false } });
        expect(await s.tables.get(key)).toEqual({ ...key, v: 'new' });
        await s.tables.transact([{ put: { pk: pk('ttl'), sk: 'tx', ttl: past() } }]);
        await s.tables.transact([{ put: { pk: pk('ttl'), sk: 'tx', ok: true }, condition: { exists: false } }]);
        expect(await s.tables.get({ pk: pk('ttl'), sk: 'tx' })).toEqual({ pk: pk('ttl'), sk: 'tx', ok: true });
      });

      it('query: UTF-8 byte order, ranges, beginsWith, reverse, limit and cursor', async () => {
        const p = pk('query');
        const sks = ['UID#0001', 'UID#0002', 'UID#0010', 'UID#0100', 'UIDX', 'META', 'a', 'z', 'é', 'ü', '日本', '😀', '\uffee', 'UID#é'];
        await Promise.all(sks.map((sk, i) => s.tables.put({ pk: p, sk, i })));
        await s.tables.put({ pk: pk('query-other'), sk: 'UID#0001' });
        const sorted = [...sks].sort(byUtf8);
        const q = async (opts: Parameters<Storage['tables']['query']>[1]) => (await s.tables.query(p, opts)).items.map((i) => i.sk);
        expect(await q({})).toEqual(sorted);
        expect(await q({ reverse: true })).toEqual([...sorted].reverse());
        expect(await q({ range: { beginsWith: 'UID#' } })).toEqual(['UID#0001', 'UID#0002', 'UID#0010', 'UID#0100', 'UID#é']);
        expect(await q({ range: { beginsWith: 'UID#' }, reverse: true })).toEqual(['UID#é', 'UID#0100', 'UID#0010', 'UID#0002', 'UID#0001']);
        expect(await q({ range: { gte: 'UID#0002', lte: 'UID#0100' } })).toEqual(['UID#0002', 'UID#0010', 'UID#0100']);
        expect(await q({ range: { gt: 'UID#0100' } })).toEqual(sorted.filter((x) => byUtf8(x, 'UID#0100') > 0));
        expect(await q({ range: { lt: 'UID#0001' } })).toEqual(sorted.filter((x) => byUtf8(x, 'UID#0001') < 0));
        expect(await q({ range: { gte: 'é' } })).toEqual(['é', 'ü', '日本', '\uffee', '😀']);
        expect(await q({ range: { lte: 'a' }, reverse: true, limit: 2 })).toEqual(['a', 'UIDX']);
        for (const reverse of [false, true]) {
          const seen: string[] = [];
          let cursor: string | undefined;
          let pages = 0;
          do {
            const page = await s.tables.query(p, { limit: 4, reverse, cursor });
            expect(page.items.length).toBeLessThanOrEqual(4);
            seen.push(...page.items.map((i) => i.sk));
            cursor = page.cursor;
            pages++;
          } while (cursor && pages < 20);
          expect(seen).toEqual(reverse ? [...sorted].reverse() : sorted);
        }
        const page = await s.tables.query(p, { range: { beginsWith: 'UID#' }, limit: 2 });
        expect(page.items.map((i) => i.sk)).toEqual(['UID#0001', 'UID#0002']);
        const rest = await s.tables.query(p, { range: { beginsWith: 'UID#' }, limit: 10, cursor: page.cursor });
        expect(rest.items.map((i) => i.sk)).toEqual(['UID#0010', 'UID#0100', 'UID#é']);
        expect(rest.cursor).toBeUndefined();
        expect((await s.tables.query(pk('query-empty'))).items).toEqual([]);
        // Several bounds on one side: the tightest holds, in UTF-8 byte order (U+FFEE sorts
        // before an astral character here, though not in JavaScript's UTF-16 order).
        expect(await q({ range: { gte: 'UID#0002', gt: 'UID#0010', lte: 'UID#é' } })).toEqual(['UID#0100', 'UID#é']);
        expect(await q({ range: { gte: 'UID#0010', gt: 'UID#0010' } })).toEqual(sorted.filter((x) => byUtf8(x, 'UID#0010') > 0));
        expect(await q({ range: { lte: 'UID#0010', lt: 'UID#0010', gte: 'UID#0001' } })).toEqual(['UID#0001', 'UID#0002']);
        expect(await q({ range: { gte: '\uffee', lt: '😀' } })).toEqual(['\uffee']);
        expect(await q({ range: { beginsWith: 'UID#', gt: 'UID#0002', lt: 'UID#é' } })).toEqual(['UID#0010', 'UID#0100']);
        // A range with a cursor, page by page both ways: every item of the range once, in order.
        for (const reverse of [false, true]) {
          const want = ['UID#0002', 'UID#0010', 'UID#0100', 'UID#é'];
          const seen: string[] = [];
          let cursor: string | undefined;
          for (let pages = 0; pages < 10; pages++) {
            const pg = await s.tables.query(p, { range: { gte: 'UID#0002', lte: 'UID#é' }, limit: 1, reverse, cursor });
            seen.push(...pg.items.map((i) => i.sk));
            cursor = pg.cursor;
            if (!cursor) break;
          }
          expect(seen).toEqual(reverse ? [...want].reverse() : want);
        }
      });

      it('query with attributes: only those (and pk, sk, ttl), JSON types kept, absent ones left out; ranges and cursors unchanged', async () => {
        const p = pk('project');
        const t = future();
        await s.tables.put({
          pk: p,
          sk: 'UID#1',
          flags: ['\\Seen', 'x'],
          modseq: 7,
          big: { summary: 'x'.repeat(2000) },
          yes: true,
          no: false,
          z: null,
          ttl: t,
        });
        await s.tables.put({ pk: p, sk: 'UID#2', flags: [], modseq: 0, name: 'two' });
        await s.tables.put({ pk: p, sk: 'UID#3', other: 1 });
        await s.tables.put({ pk: p, sk: 'UID#4', flags: ['old'], ttl: past() });
        const page = await s.tables.query(p, { attributes: ['flags', 'modseq', 'yes', 'no', 'z', 'missing'] });
        expect(page.items).toEqual([
          { pk: p, sk: 'UID#1', flags: ['\\Seen', 'x'], modseq: 7, yes: true, no: false, z: null, ttl: t },
          { pk: p, sk: 'UID#2', flags: [], modseq: 0 },
          { pk: p, sk: 'UID#3' },
        ]);
        expect((await s.tables.query(p, { attributes: [] })).items).toEqual([
          { pk: p, sk: 'UID#1', ttl: t },
          { pk: p, sk: 'UID#2' },
          { pk: p, sk: 'UID#3' },
        ]);
        const first = await s.tables.query(p, { attributes: ['name'], range: { gte: 'UID#2' }, limit: 1 });
        expect(first.items).toEqual([{ pk: p, sk: 'UID#2', name: 'two' }]);
        const rest = await s.tables.query(p, { attributes: ['name'], range: { gte: 'UID#2' }, limit: 5, cursor: first.cursor });
        expect(rest.items).toEqual([{ pk: p, sk: 'UID#3' }]);
        expect(rest.cursor).toBeUndefined();
        expect((await s.tables.query(p, { attributes: ['modseq'], reverse: true, limit: 1 })).items).toEqual([{ pk: p, sk: 'UID#3' }]);
        // The whole item is still there for a query without a projection.
        expect((await s.tables.get({ pk: p, sk: 'UID#1' }))?.big).toEqual({ summary: 'x'.repeat(2000) });
      });

      it('transact: partial updates of many items, each conditional on its own attributes, keep the rest of each item or change none', async () => {
        const p = pk('tx-partial');
        const sk = (i: number) => `UID#${String(i).padStart(3, '0')}`;
        const n = Math.min(s.tables.maxTransactionOps - 1, 60);
        await s.tables.transact(
          Array.from({ length: n }, (_, i) => ({
            put: { pk: p, sk: sk(i), flags: [], modseq: i % 3 ? i : null, summary: { subject: `s${i}`, parts: [1, 2] } },
          })),
        );
        await s.tables.put({ pk: p, sk: 'META', highest: 10, unseen: 5, state: 'open', open: true });
        const flagOps = (modseq: number): TransactOp[] =>
          Array.from({ length: n }, (_, i) => ({
            update: { pk: p, sk: sk(i) },
            changes: { set: { flags: ['\\Seen', `k${i}`], modseq } },
            condition: { exists: true, equals: { modseq: i % 3 ? i : null } },
          }));
        await s.tables.transact([
          ...flagOps(11),
          {
            update: { pk: p, sk: 'META' },
            changes: { set: { highest: 11, note: { a: [true, null] }, state: 'open' } },
            condition: { lessThan: { highest: 11 }, equals: { state: 'open', open: true } },
          },
        ]);
        for (const i of [0, 1, n - 1])
          expect(await s.tables.get({ pk: p, sk: sk(i) })).toEqual({
            pk: p,
            sk: sk(i),
            flags: ['\\Seen', `k${i}`],
            modseq: 11,
            summary: { subject: `s${i}`, parts: [1, 2] },
          });
        expect(await s.tables.get({ pk: p, sk: 'META' })).toEqual({
          pk: p,
          sk: 'META',
          highest: 11,
          unseen: 5,
          state: 'open',
          open: true,
          note: { a: [true, null] },
        });
        // Every condition no longer holds (modseq is 11 now): the first op fails, nothing changes.
        let failure: unknown;
        try {
          await s.tables.transact(flagOps(12));
        } catch (e) {
          failure = e;
        }
        expect(isStorageError(failure, 'ConditionFailed')).toBe(true);
        expect((failure as Error).message).toMatch(/\bop 0\b/);
        // Only the last op fails (a number condition against a string, a comparison against a
        // value that is not below it): the updates before it are undone.
        await s.tables.put({ pk: p, sk: 'STR', v: '5' });
        const ok = (i: number): TransactOp => ({ update: { pk: p, sk: sk(i) }, changes: { set: { flags: [] } }, condition: { equals: { modseq: 11 } } });
        const lasts: TransactOp[] = [
          { update: { pk: p, sk: 'STR' }, changes: { set: { v: 6 } }, condition: { equals: { v: 5 } } },
          { update: { pk: p, sk: 'META' }, changes: { set: { highest: 12 } }, condition: { greaterThan: { highest: 11 } } },
          { update: { pk: p, sk: 'META' }, changes: { set: { highest: 12 } }, condition: { equals: { open: false } } },
          { update: { pk: p, sk: 'META' }, changes: { set: { highest: 12 } }, condition: { equals: { unseen: null } } },
          { update: { pk: p, sk: 'absent' }, changes: { set: { x: 1 } }, condition: { exists: true } },
        ];
        for (const last of lasts) {
          expect(await errorCode(s.tables.transact([ok(0), ok(1), last]))).toBe('ConditionFailed');
          expect((await s.tables.get({ pk: p, sk: sk(0) }))?.flags).toEqual(['\\Seen', 'k0']);
        }
        expect(await s.tables.get({ pk: p, sk: 'STR' })).toEqual({ pk: p, sk: 'STR', v: '5' });
        expect(await s.tables.get({ pk: p, sk: 'absent' })).toBeUndefined();
        // An expired item is absent: a conditional partial update of it fails.
        await s.tables.put({ pk: p, sk: 'OLD', modseq: 1, ttl: past() });
        expect(
          await errorCode(s.tables.transact([{ update: { pk: p, sk: 'OLD' }, changes: { set: { modseq: 2 } }, condition: { equals: { modseq: 1 } } }])),
        ).toBe('ConditionFailed');
      });

      it('transact applies every write or none, naming the failing op', async () => {
        const p = pk('tx');
        await s.tables.put({ pk: p, sk: 'box', count: 0 });
        await s.tables.put({ pk: p, sk: 'gone', x: 1 });
        await s.tables.transact([
          { put: { pk: p, sk: 'msg1', size: 10 }, condition: { exists: false } },
          { update: { pk: p, sk: 'box' }, changes: { add: { count: 1 } }, condition: { exists: true } },
          { delete: { pk: p, sk: 'gone' } },
          { check: { pk: p, sk: 'other' }, condition: { exists: false } },
        ]);
        expect(await s.tables.get({ pk: p, sk: 'msg1' })).toEqual({ pk: p, sk: 'msg1', size: 10 });
        expect((await s.tables.get({ pk: p, sk: 'box' }))?.count).toBe(1);
        expect(await s.tables.get({ pk: p, sk: 'gone' })).toBeUndefined();
        await s.tables.transact([
          { put: { pk: p, sk: 'msg2', size: 20 }, condition: { exists: false } },
          { check: { pk: p, sk: 'box' }, condition: { equals: { count: 1 } } },
        ]);
        expect(await s.tables.get({ pk: p, sk: 'msg2' })).toBeDefined();
        let failure: unknown;
        try {
          await s.tables.transact([
            { put: { pk: p, sk: 'msg3', size: 30 }, condition: { exists: false } },
            { update: { pk: p, sk: 'box' }, changes: { add: { count: 1 } } },
            { put: { pk: p, sk: 'msg1', size: 99 }, condition: { exists: false } },
          ]);
        } catch (e) {
          failure = e;
        }
        expect(isStorageError(failure, 'ConditionFailed')).toBe(true);
        expect((failure as Error).message).toMatch(/\bop 2\b/);
        expect(await s.tables.get({ pk: p, sk: 'msg3' })).toBeUndefined();
        expect((await s.tables.get({ pk: p, sk: 'box' }))?.count).toBe(1);
        expect((await s.tables.get({ pk: p, sk: 'msg1' }))?.size).toBe(10);
        expect(await errorCode(s.tables.transact([{ check: { pk: p, sk: 'nothing' }, condition: { exists: true } }, { put: { pk: p, sk: 'msg4' } }]))).toBe(
          'ConditionFailed',
        );
        expect(await s.tables.get({ pk: p, sk: 'msg4' })).toBeUndefined();
      });

      it(`transact holds up to the adapter's maxTransactionOps writes (at least ${MAX_TRANSACTION_OPS}); more is an invalid request`, async () => {
        const p = pk('tx-size');
        const max = s.tables.maxTransactionOps;
        expect(max).toBeGreaterThanOrEqual(MAX_TRANSACTION_OPS);
        await s.tables.transact(Array.from({ length: max }, (_, i) => ({ put: { pk: p, sk: `i${String(i).padStart(4, '0')}` } })));
        expect((await s.tables.query(p, { limit: max + 1 })).items).toHaveLength(max);
        const tooMany = Array.from({ length: max + 1 }, (_, i) => ({ put: { pk: p, sk: `j${i}` } }));
        expect(await errorCode(s.tables.transact(tooMany))).toBe('Invalid');
        expect((await s.tables.query(p, { range: { beginsWith: 'j' } })).items).toEqual([]);
      });
    });

    // -----------------------------------------------------------------------------------------
    describe('queues', () => {
      /** A unique tag per test: messages are told apart by it, so leftovers never confuse a test. */
      const tag = (name: string) => `${run}:${name}:${randomUUID().slice(0, 8)}:`;

      /** Receives until `n` messages with the tag arrived or the time is up. Others stay hidden for `visibilitySeconds`. */
      async function collect(
        queue: QueueName,
        t: string,
        n: number,
        opts: { visibilitySeconds?: number; timeoutMs?: number; max?: number } = {},
      ): Promise<ReceivedMessage[]> {
        const got: ReceivedMessage[] = [];
        const deadline = Date.now() + (opts.timeoutMs ?? 8000);
        while (got.length < n && Date.now() < deadline) {
          const wait = Math.max(0, Math.min(2, Math.floor((deadline - Date.now()) / 1000)));
          const batch = await s.queues.receive(queue, {
            max: opts.max ?? MAX_RECEIVE_BATCH,
            visibilitySeconds: opts.visibilitySeconds ?? 30,
            waitSeconds: wait,
          });
          expect(batch.length).toBeLessThanOrEqual(opts.max ?? MAX_RECEIVE_BATCH);
          got.push(...batch.filter((m) => m.body.startsWith(t)));
          if (wait === 0 && !batch.length) await sleep(100);
        }
        return got;
      }

      /** Receives (without waiting) and reports whether a tagged message came back. */
      async function comesBack(queue: QueueName, t: string, visibilitySeconds = 30): Promise<ReceivedMessage[]> {
        const out: ReceivedMessage[] = [];
        for (let i = 0; i < 3; i++) {
          const batch = await s.queues.receive(queue, { max: MAX_RECEIVE_BATCH, visibilitySeconds, waitSeconds: 0 });
          out.push(...batch.filter((m) => m.body.startsWith(t)));
        }
        return out;
      }

      it('send, receive and delete a batch; the ids, bodies, counts and sent times match', async () => {
        const t = tag('basic');
        const before = Date.now();
        const ids = await Promise.all([0, 1, 2, 3, 4].map((i) => s.queues.send('inbound', `${t}${i}`)));
        expect(new Set(ids).size).toBe(5);
        const got = await collect('inbound', t, 5, { max: 3 });
        expect(got.map((m) => m.body).sort()).toEqual([0, 1, 2, 3, 4].map((i) => `${t}${i}`));
        expect(got.map((m) => m.id).sort()).toEqual([...ids].sort());
        for (const m of got) {
          expect(m.receiveCount).toBe(1);
          expect(m.sentAt.getTime()).toBeGreaterThanOrEqual(before - 2000);
          expect(m.sentAt.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
        }
        expect(new Set(got.map((m) => m.receipt)).size).toBe(5);
        await Promise.all(got.map((m) => s.queues.delete('inbound', m.receipt)));
        await Promise.all(got.map((m) => s.queues.delete('inbound', m.receipt)));
      });

      it('a message not deleted comes back after its visibility timeout, with receiveCount 2 and a new receipt', async () => {
        const t = tag('redeliver');
        await s.queues.send('outbound', `${t}x`);
        const [first] = await collect('outbound', t, 1, { visibilitySeconds: 1 });
        expect(first.receiveCount).toBe(1);
        expect(await comesBack('outbound', t)).toEqual([]);
        const [second] = await collect('outbound', t, 1, { visibilitySeconds: 30, timeoutMs: 6000 });
        expect(second.id).toBe(first.id);
        expect(second.receiveCount).toBe(2);
        expect(second.receipt).not.toBe(first.receipt);
        await s.queues.delete('outbound', second.receipt);
      });

      it('a deleted message does not come back', async () => {
        const t = tag('deleted');
        await s.queues.send('inbound', `${t}x`);
        const [m] = await collect('inbound', t, 1, { visibilitySeconds: 1 });
        await s.queues.delete('inbound', m.receipt);
        await sleep(1300);
        expect(await comesBack('inbound', t)).toEqual([]);
      });

      it('changeVisibility: a longer timeout keeps a message hidden; 0 makes it receivable at once', async () => {
        const t = tag('vis');
        await s.queues.send('inbound', `${t}x`);
        const [m1] = await collect('inbound', t, 1, { visibilitySeconds: 1 });
        expect(m1.receiveCount).toBe(1);
        await s.queues.changeVisibility('inbound', m1.receipt, 300);
        await sleep(1400);
        expect(await comesBack('inbound', t)).toEqual([]);
        await s.queues.changeVisibility('inbound', m1.receipt, 0);
        const [m2] = await collect('inbound', t, 1, { visibilitySeconds: 30, timeoutMs: 4000 });
        expect(m2.id).toBe(m1.id);
        expect(m2.receiveCount).toBe(2);
        await s.queues.delete('inbound', m2.receipt);
      });

      it('a delayed message is hidden until its delay passes', async () => {
        const t = tag('delay');
        const sent = Date.now();
        await s.queues.send('outbound', `${t}x`, { delaySeconds: 2 });
        expect(await comesBack('outbound', t)).toEqual([]);
        expect(await eventually(async () => (await s.queues.stats('outbound')).delayed >= 1)).toBe(true);
        const [m] = await collect('outbound', t, 1, { timeoutMs: 8000 });
        expect(Date.now() - sent).toBeGreaterThanOrEqual(1500);
        expect(m.receiveCount).toBe(1);
        await s.queues.delete('outbound', m.receipt);
      });

      it('a long poll returns as soon as a message is sent', async () => {
        const t = tag('longpoll');
        // Drain what is visible now so the poll below really waits.
        for (let i = 0; i < 5; i++) if (!(await s.queues.receive('outbound', { max: 10, visibilitySeconds: 10, waitSeconds: 0 })).length) break;
        const started = Date.now();
        const poll = s.queues.receive('outbound', { max: 1, visibilitySeconds: 30, waitSeconds: 10 });
        await sleep(300);
        await s.queues.send('outbound', `${t}x`);
        const got = await poll;
        const elapsed = Date.now() - started;
        expect(elapsed).toBeLessThan(4000);
        const mine = got.filter((m) => m.body.startsWith(t));
        const rest = mine.length ? mine : await collect('outbound', t, 1);
        expect(rest).toHaveLength(1);
        await s.queues.delete('outbound', rest[0].receipt);
      });

      it('an aborted long poll settles promptly', async () => {
        const ac = new AbortController();
        const started = Date.now();
        const poll = s.queues.receive('outbound-dlq', { waitSeconds: 15, signal: ac.signal }).then(
          (r) => r,
          (e: unknown) => e,
        );
        setTimeout(() => ac.abort(), 200);
        const r = await poll;
        expect(Date.now() - started).toBeLessThan(3000);
        for (const m of Array.isArray(r) ? r : []) await s.queues.changeVisibility('outbound-dlq', m.receipt, 0);
        // SQS still holds the abandoned poll for its 15 s: a message sent now must not vanish into
        // it for a visibility timeout (30 s) but be received at once.
        const t = tag('abandoned');
        await s.queues.send('outbound-dlq', `${t}x`);
        await sleep(2000); // the abandoned poll, if any, takes it now
        const [m] = await collect('outbound-dlq', t, 1, { timeoutMs: 4000 });
        expect(m?.body).toBe(`${t}x`);
        await s.queues.delete('outbound-dlq', m.receipt);
      });

      it('after maxReceives receives a message moves to the dead-letter queue', async () => {
        const max = config.storage.queueMaxReceives;
        expect(max).toBeLessThanOrEqual(3); // the target must set a small TOMLINSON_QUEUE_MAX_RECEIVES
        const t = tag('dlq');
        const id = await s.queues.send('inbound', `${t}x`);
        for (let i = 1; i <= max; i++) {
          const [m] = await collect('inbound', t, 1, { visibilitySeconds: 1, timeoutMs: 6000 });
          expect(m?.receiveCount).toBe(i);
        }
        // Its next receive would make it maxReceives + 1: it goes to the DLQ instead.
        await sleep(1100);
        expect(await collect('inbound', t, 1, { visibilitySeconds: 1, timeoutMs: 1500 })).toEqual([]);
        const [dead] = await collect('inbound-dlq', t, 1, { timeoutMs: 8000 });
        expect(dead.id).toBe(id);
        expect(dead.body).toBe(`${t}x`);
        await s.queues.delete('inbound-dlq', dead.receipt);
      });

      it('stats count visible, in-flight and delayed messages', async () => {
        const t = tag('stats');
        await s.queues.send('outbound-dlq', `${t}a`);
        await s.queues.send('outbound-dlq', `${t}b`, { delaySeconds: 3 });
        expect(
          await eventually(async () => {
            const st = await s.queues.stats('outbound-dlq');
            return st.visible >= 1 && st.delayed >= 1;
          }),
        ).toBe(true);
        const [m] = await collect('outbound-dlq', t, 1);
        expect(await eventually(async () => (await s.queues.stats('outbound-dlq')).inFlight >= 1)).toBe(true);
        await s.queues.delete('outbound-dlq', m.receipt);
        // Leave nothing behind in a shared account: wait out the delayed one and delete it too.
        const rest = await collect('outbound-dlq', t, 1, { timeoutMs: 8000 });
        expect(rest.map((x) => x.body)).toEqual([`${t}b`]);
        await s.queues.delete('outbound-dlq', rest[0].receipt);
      });

      it('refuses out-of-range delays, batch sizes and visibility timeouts', async () => {
        expect(await errorCode(s.queues.send('inbound', 'x', { delaySeconds: MAX_DELAY_SECONDS + 1 }))).toBe('Invalid');
        expect(await errorCode(s.queues.send('inbound', 'x', { delaySeconds: -1 }))).toBe('Invalid');
        expect(await errorCode(s.queues.receive('inbound', { max: MAX_RECEIVE_BATCH + 1 }))).toBe('Invalid');
        expect(await errorCode(s.queues.receive('inbound', { max: 0 }))).toBe('Invalid');
        const t = tag('invalid');
        await s.queues.send('outbound-dlq', `${t}x`);
        const [m] = await collect('outbound-dlq', t, 1);
        expect(await errorCode(s.queues.changeVisibility('outbound-dlq', m.receipt, MAX_VISIBILITY_SECONDS + 1))).toBe('Invalid');
        await s.queues.changeVisibility('outbound-dlq', m.receipt, MAX_VISIBILITY_SECONDS);
        await s.queues.delete('outbound-dlq', m.receipt);
      });
    });

    // -----------------------------------------------------------------------------------------
    // These start child processes. They run one after another: run at once, a 100 MB upload
    // starves an emulator (moto is one Python process) and the other children time out. Their
    // timeouts are generous because a loaded CI machine boots a child slowly; a pass is quick.
    describe('across processes', () => {
      const k = (name: string) => `${run}/blobs/${name}`;

      it('streams 100 MB through put and get in a child whose RSS grows by less than 64 MB', async ({ expect }) => {
        const c = spawnChild('big', k('100mb'), String(100 * MB));
        const r = await c.result<{
          size: number;
          putSha: string;
          expectedSha: string;
          getSha: string;
          backBytes: number;
          headSize: number;
          baseline: number;
          peak: number;
          putMs: number;
          totalMs: number;
        }>(110_000);
        expect(r.size).toBe(100 * MB);
        expect(r.backBytes).toBe(100 * MB);
        expect(r.headSize).toBe(100 * MB);
        expect(r.putSha).toBe(r.expectedSha);
        expect(r.getSha).toBe(r.expectedSha);
        const growth = r.peak - r.baseline;
        console.info(`[${family}] 100 MB: put ${r.putMs} ms, put+get ${r.totalMs} ms, RSS growth ${(growth / MB).toFixed(1)} MB`);
        expect(growth).toBeLessThan(64 * MB);
        await s.mail.delete(k('100mb'));
      }, 120_000);

      it('a put killed mid-stream leaves no partial object, and a later put of the key works', async ({ expect }) => {
        const key = k('crash/victim');
        const c = spawnChild('crash', key);
        await c.waitLine((l) => l === 'STREAMING', 60_000);
        c.kill();
        await c.exited;
        expect(await errorCode(s.mail.head(key))).toBe('NotFound');
        expect(await errorCode(s.mail.get(key))).toBe('NotFound');
        expect((await s.mail.list(k('crash/'))).items).toEqual([]);
        await s.mail.put(key, 'after the crash', { ifAbsent: true });
        expect(await readText((await s.mail.get(key)).body)).toBe('after the crash');
      }, 90_000);

      it('conditional table puts and put-if-absent blobs race from three processes: one winner each', async ({ expect }) => {
        const pk = pkOf('xrace');
        const blobKey = `${run}/xrace/blob`;
        const racers = 6;
        const kids = [spawnChild('race', pk, 'LEASE', blobKey, String(racers), 'c1'), spawnChild('race', pk, 'LEASE', blobKey, String(racers), 'c2')];
        await Promise.all(kids.map((c) => c.waitLine((l) => l === 'READY', 60_000)));
        for (const c of kids) c.proc.stdin!.write('GO\n');
        const mine = async (): Promise<{ tableWins: string[]; blobWins: string[] }> => {
          const ok = (p: Promise<unknown>, name: string) =>
            p.then(
              () => name,
              (e: unknown) => {
                if (isStorageError(e, 'ConditionFailed')) return undefined;
                throw e;
              },
            );
          const t = await Promise.all(
            Array.from({ length: racers }, (_, i) => ok(s.tables.put({ pk, sk: 'LEASE', winner: `p-${i}` }, { condition: { exists: false } }), `p-${i}`)),
          );
          const b = await Promise.all(Array.from({ length: racers }, (_, i) => ok(s.mail.put(blobKey, `winner p-${i}`, { ifAbsent: true }), `p-${i}`)));
          return { tableWins: t.filter((x): x is string => !!x), blobWins: b.filter((x): x is string => !!x) };
        };
        const results = [await mine(), ...(await Promise.all(kids.map((c) => c.result<{ tableWins: string[]; blobWins: string[] }>(60_000))))];
        const tableWins = results.flatMap((r) => r.tableWins);
        const blobWins = results.flatMap((r) => r.blobWins);
        expect(tableWins).toHaveLength(1);
        expect(blobWins).toHaveLength(1);
        expect((await s.tables.get({ pk, sk: 'LEASE' }))?.winner).toBe(tableWins[0]);
        expect(await readText((await s.mail.get(blobKey)).body)).toBe(`winner ${blobWins[0]}`);
      }, 120_000);
    });
  });
}
