/**
 * WAL checkpoints of the local SQLite store run on a worker thread (core/storage/local/
 * sqlite-checkpointer.ts), never inside a commit on the event loop: the writing connection has
 * automatic checkpoints off, the worker keeps the WAL bounded and truncates it when writes stop,
 * writes held back while the WAL restarts all land, a dead worker hands checkpoints back to the
 * writing connection (and the hard cap still bounds the WAL), another connection's write lock
 * delays writes without blocking the event loop, close() stops the worker, and a
 * process killed at any moment of this loses no acknowledged write.
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { SqliteStore } from '../../core/storage/local/sqlite.js';
import type { CheckpointOptions } from '../../core/storage/local/sqlite-checkpointer.js';
import { tempDir } from '../support/tmp.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

const PAGE = 4096 + 24;
const walSize = (db: string) => (existsSync(`${db}-wal`) ? statSync(`${db}-wal`).size : 0);

async function openStore(options: CheckpointOptions) {
  const dir = await tempDir('sqlite-ckpt-');
  const path = join(dir.path, 't.db');
  const store = new SqliteStore(path, silentLogger, 'wal-fsync', options);
  store.db.exec('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad TEXT NOT NULL)');
  const insert = store.db.prepare('INSERT INTO t (id, pad) VALUES (?, ?)');
  let closed = false;
  const close = async () => {
    if (!closed) await store.close();
    closed = true;
  };
  cleanup.push(async () => {
    await close();
    await dir.remove();
  });
  return {
    store,
    path,
    insert,
    close,
    worker: () => (store as unknown as { checkpointer: { worker: import('node:worker_threads').Worker } }).checkpointer.worker,
  };
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function rowsIn(path: string): { n: number; ok: string } {
  const db = new Database(path);
  try {
    return { n: (db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, ok: db.pragma('integrity_check', { simple: true }) as string };
  } finally {
    db.close();
  }
}

describe('SqliteStore checkpoints on a worker thread', () => {
  it('commits never checkpoint themselves; the worker keeps the WAL bounded and truncates it when idle', async () => {
    const s = await openStore({ intervalMs: 5, restartFrames: 64, idleMs: 100 });
    expect(s.store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(0);
    const pad = 'p'.repeat(900);
    let maxWal = 0;
    let id = 0;
    // 100 rounds of 100 concurrent writes: every page of the database passes through the WAL.
    for (let round = 0; round < 100; round++) {
      await Promise.all(Array.from({ length: 100 }, () => s.store.write(() => s.insert.run(++id, pad))));
      maxWal = Math.max(maxWal, walSize(s.path));
      await new Promise((r) => setTimeout(r, 5));
    }
    const stats = s.store.checkpointStats()!;
    expect(stats.passive).toBeGreaterThan(2);
    expect(stats.inline).toBe(0);
    expect(stats.fallback).toBe(false);
    // 64 frames plus what the rounds add while a cycle runs (more on a loaded machine); without
    // checkpoints the WAL would end larger than the whole database (about 10 MB).
    expect(maxWal).toBeLessThan(0.6 * statSync(s.path).size);
    // Idle: the WAL ends truncated, holding at most the worker's one-row restart commit.
    // The worker's idle tick may be starved for seconds when the whole suite loads both cores.
    await until('the idle WAL to be truncated', () => walSize(s.path) <= 32 + 4 * PAGE, 40_000);
    expect(s.store.checkpointStats()!.truncates).toBeGreaterThan(0);
    await s.close();
    expect(rowsIn(s.path)).toEqual({ n: 10_000, ok: 'ok' });
  });

  it('writes held back while the WAL restarts all land, in order of their promises', async () => {
    const s = await openStore({ intervalMs: 2, restartFrames: 0, idleMs: 50 });
    const pad = 'q'.repeat(2000);
    const done: number[] = [];
    // A steady stream of single writes, one turn apart, so that cycles begin between them.
    const writes: Promise<unknown>[] = [];
    let n = 0;
    while (n < 3000 && (n < 300 || s.store.checkpointStats()!.truncates < 3)) {
      const i = ++n;
      writes.push(s.store.write(() => s.insert.run(i, pad)).then(() => done.push(i)));
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(writes);
    expect(s.store.checkpointStats()!.truncates).toBeGreaterThanOrEqual(3);
    expect(done).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    await s.close();
    expect(rowsIn(s.path)).toEqual({ n, ok: 'ok' });
  });

  it('a dead worker hands checkpoints back to the writing connection; the hard cap still bounds the WAL', async () => {
    const s = await openStore({ intervalMs: 5, restartFrames: 1_000_000, hardCapBytes: 64 * PAGE });
    await s.store.write(() => s.insert.run(0, 'warm-up'));
    await s.worker().terminate();
    await until('the fallback', () => s.store.checkpointStats()!.fallback);
    expect(s.store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    const pad = 'r'.repeat(3000);
    for (let i = 1; i <= 300; i++) await s.store.write(() => s.insert.run(i, pad));
    // 300 rows of 3 KB: about 300 pages, past the cap (64) and under automatic checkpoints' 1000.
    await until('the WAL to be cut back under the cap', () => s.store.checkpointStats()!.inline > 0 && walSize(s.path) < 64 * PAGE);
    await s.close();
    expect(rowsIn(s.path)).toEqual({ n: 301, ok: 'ok' });
  });

  it("another connection's write lock makes writes wait, never the event loop", async () => {
    const s = await openStore({});
    await s.store.write(() => s.insert.run(0, 'warm-up'));
    const other = new Database(s.path);
    other.exec('BEGIN IMMEDIATE');
    other.prepare('INSERT INTO t (id, pad) VALUES (?, ?)').run(-1, 'other');
    let maxGap = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
    }, 5);
    const written = Promise.all([1, 2, 3].map((i) => s.store.write(() => s.insert.run(i, 'mine'))));
    const settled = await Promise.race([written.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 400))]);
    other.exec('COMMIT');
    other.close();
    await written;
    clearInterval(ticker);
    // While the lock was held (400 ms) the writes waited and timers kept running; the busy
    // handler would have slept on this thread for its whole timeout (5 s), since the lock's
    // holder is on this thread too. (The bound leaves room for a loaded machine.)
    expect(settled).toBe(false);
    expect(maxGap).toBeLessThan(1500);
    await s.close();
    expect(rowsIn(s.path)).toEqual({ n: 5, ok: 'ok' });
  });

  it('close() stops the worker, so the last close checkpoints and deletes the WAL', async () => {
    const s = await openStore({});
    for (let i = 1; i <= 50; i++) await s.store.write(() => s.insert.run(i, 'x'));
    expect(walSize(s.path)).toBeGreaterThan(0);
    const exited = new Promise<number>((r) => s.worker().once('exit', r));
    await s.close();
    await exited;
    expect(existsSync(`${s.path}-wal`)).toBe(false);
    expect(rowsIn(s.path)).toEqual({ n: 50, ok: 'ok' });
  });

  it('a process whose only pending work is a write held back by a WAL restart stays alive for it', async () => {
    const dir = await tempDir('sqlite-ckpt-alive-');
    cleanup.push(() => dir.remove());
    const child = fileURLToPath(new URL('./sqlite-checkpoint-child.ts', import.meta.url));
    const p = spawn(process.execPath, ['--import', 'tsx', child, join(dir.path, 'alive.db'), '0', 'sequential', '600'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((r) => p.once('exit', r));
    const m = /DONE (\d+) (\d+)/.exec(out);
    expect(code).toBe(0);
    expect(m?.[1]).toBe('600');
    expect(Number(m?.[2])).toBeGreaterThan(0);
  }, 30_000);

  it('a process killed while checkpoints and WAL restarts run loses no acknowledged write', async () => {
    const dir = await tempDir('sqlite-ckpt-crash-');
    cleanup.push(() => dir.remove());
    const path = join(dir.path, 'crash.db');
    const child = fileURLToPath(new URL('./sqlite-checkpoint-child.ts', import.meta.url));
    const acked = new Set<number>();
    for (const [round, killAfterMs] of [300, 700, 1100].entries()) {
      const p = spawn(process.execPath, ['--import', 'tsx', child, path, String(round * 1_000_000)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      const ready = new Promise<void>((resolve, reject) => {
        p.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('READY\n')) resolve();
        });
        p.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
      });
      await ready;
      await new Promise((r) => setTimeout(r, killAfterMs));
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
      const lines = out.split('\n');
      lines.pop(); // a line cut by the kill is not an acknowledgement
      for (const l of lines) if (/^\d+$/.test(l)) acked.add(Number(l));
    }
    const db = new Database(path);
    try {
      expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
      const have = new Set(db.prepare('SELECT id FROM acked').pluck().all() as number[]);
      const missing = [...acked].filter((id) => !have.has(id));
      expect(acked.size).toBeGreaterThan(50);
      expect(missing).toEqual([]);
    } finally {
      db.close();
    }
  }, 30_000);
});
