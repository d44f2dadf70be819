/**
 * The one SQLite database (`<dataDir>/tomlinson.db`) behind the local Tables and Queues, and the
 * write path they share.
 *
 * Durability: a write has reached the disk when its promise resolves (an SMTP 250 depends on
 * it). Writes are gathered: every write issued during one turn of the event loop runs in one
 * transaction (each in its own savepoint, so one failed condition undoes only its own work) and
 * shares one commit and one fsync. Two ways to make that commit durable (`durability`):
 * - `full`: WAL with synchronous=FULL; SQLite fsyncs the WAL inside COMMIT. better-sqlite3 is
 *   synchronous, so that fsync blocks the event loop (every socket of the process) for its
 *   whole duration, once per batch.
 * - `wal-fsync` (default): WAL with synchronous=NORMAL, so COMMIT only write()s the WAL frames,
 *   and we then fsync the WAL file from libuv's thread pool before resolving the batch's
 *   promises. Once the WAL frames of a commit are on disk the commit survives a power loss
 *   (recovery replays every complete, checksummed commit in the WAL), so what a caller was told
 *   is durable is exactly as durable as with FULL; only the fsync moved off the event loop. (In
 *   NORMAL mode SQLite itself still syncs the WAL before each checkpoint and the database after
 *   it.) Other readers may see a commit a moment before its fsync ends; a crash in that moment
 *   loses a write nobody was told succeeded, which at-least-once callers tolerate.
 *
 * Writes that need no durability of their own (`{ durable: false }`: a queue receive, the delete
 * of a finished job, a visibility change) resolve as soon as their transaction commits and never
 * start an fsync. Losing them in a crash is safe because the WAL is replayed as a prefix: a later
 * durable write's fsync covers every earlier commit, and an earlier commit (the delivery a job
 * made) is on disk whenever a later one (the job's delete) is. A crash can only lose a suffix of
 * such writes: a receive (the message is received again) or a delete (the job runs again;
 * workers are idempotent).
 *
 * Checkpoints (copying the WAL into the database file, two fsyncs) never run in a commit here:
 * this connection has `wal_autocheckpoint = 0` and a worker thread runs them
 * (sqlite-checkpointer.ts), which can hold our commits back for a moment (`pauseWrites`) to
 * restart the WAL. A checkpoint syncs the WAL before copying it, so it never makes a commit
 * less durable than the fsync above would. Nor does a commit wait for the write lock on the
 * event loop: when another connection (another process, the checkpoint worker) holds it, BEGIN
 * fails at once and the batch is retried from a timer for up to the busy timeout (5 s).
 *
 * Two threads of one process (the listeners and the queue workers' thread) each open a store on
 * the file (`SqliteSharing`, handed over by `Storage.forWorkerThread`, local/index.ts): SQLite serialises their
 * commits with its write lock, as it does for two processes; only the listeners' store runs the
 * checkpoint worker, and it counts the other thread's commits through a shared counter so that
 * its pacing sees all the writes.
 */
import { closeSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from '../../log.js';
import { StorageError, Unavailable } from '../ports.js';
import { GroupSync } from './group-sync.js';
import { PRIVATE_FILE_MODE } from './private.js';
import { Checkpointer, WAL_RESTARTS_SCHEMA, type CheckpointOptions, type CheckpointResult, type CheckpointStats } from './sqlite-checkpointer.js';

type DB = Database.Database;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS items (
  pk   TEXT NOT NULL,
  sk   TEXT NOT NULL,
  ttl  INTEGER,
  data TEXT NOT NULL,
  PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_ttl ON items (ttl) WHERE ttl IS NOT NULL;

CREATE TABLE IF NOT EXISTS messages (
  seq           INTEGER PRIMARY KEY,
  id            TEXT NOT NULL UNIQUE,
  queue         TEXT NOT NULL,
  body          TEXT NOT NULL,
  sent_at       INTEGER NOT NULL,
  visible_at    INTEGER NOT NULL,
  receive_count INTEGER NOT NULL DEFAULT 0,
  receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at);
${WAL_RESTARTS_SCHEMA}
`;

/** Most writes gathered into one transaction; the rest wait for the next turn. */
const MAX_BATCH = 256;
/** Atomics.waitAsync (ES2024; in Node since 16), typed here because the project's lib is ES2023. */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      array: Int32Array,
      index: number,
      value: number,
      timeoutMs: number,
    ): { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
  }
).waitAsync;

/** How long a batch retries while another connection holds the write lock (the busy timeout). */
const BUSY_RETRY_MS = 5000;

interface Job {
  fn: () => unknown;
  /** Resolve after the commit, without waiting for (or starting) an fsync. */
  lazy: boolean;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** How a store shares its database file with a store on another thread of this process. */
export interface SqliteSharing {
  /** Commits made by the stores that do not checkpoint (an Int32Array on a SharedArrayBuffer). */
  commits: Int32Array;
  /** True for the one store that runs the checkpoint worker; the others count their commits into `commits`. */
  checkpoints: boolean;
  /**
   * Write transactions ended by the sharing stores (an Int32Array on a SharedArrayBuffer, one
   * slot), each followed by Atomics.notify. A store whose BEGIN finds the write lock held waits on
   * it (Atomics.waitAsync, which does not block the event loop) and retries as soon as the other
   * thread's transaction ends, a fraction of a millisecond later, instead of at its 2 ms timer
   * (see docs/performance.md, Local storage). The timer stays for holders that do not notify
   * (another process, the checkpoint worker).
   */
  releases?: Int32Array;
}

/** Turns a SQLite failure into a StorageError (busy, full, I/O: retry later). */
export function sqliteError(e: unknown, what: string): StorageError {
  if (e instanceof StorageError) return e;
  return new Unavailable(`${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

/** The shared SQLite handle with its group-commit writer. */
export class SqliteStore {
  readonly db: DB;
  private pending: Job[] = [];
  private scheduled = false;
  private closed = false;
  private readonly runBatch: (jobs: Job[], out: { ok: boolean; v: unknown }[]) => void;

  private readonly walPath: string;
  private readonly walSync: GroupSync | undefined;

  constructor(
    path: string,
    private readonly log: Logger,
    /** How commits are made durable (see the file comment). @default 'wal-fsync' */
    durability: 'full' | 'wal-fsync' = 'wal-fsync',
    /** Pacing of the checkpoint worker (tests); production uses its defaults. */
    checkpoint: CheckpointOptions = {},
    /** Another thread of this process has a store on the same file. @default none */
    private sharing?: SqliteSharing,
  ) {
    this.walPath = `${path}-wal`;
    this.walSync = durability === 'wal-fsync' ? new GroupSync() : undefined;
    try {
      // SQLite would make the file 0644; made 0600 here first, it gives its -wal and -shm files
      // the same mode (os_unix.c, findCreateFileMode).
      closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
      this.db = new Database(path, { timeout: BUSY_RETRY_MS });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma(durability === 'full' ? 'synchronous = FULL' : 'synchronous = NORMAL');
      this.db.pragma('foreign_keys = OFF');
      // Each write runs in a savepoint (runBatch), whose journal keeps the first version of every
      // page it changes; past 64 KiB SQLite spills that journal to a temporary file, so a
      // transaction changing many items (a flag change of 1,000 messages) also wrote a copy of
      // each page to disk (docs/performance.md, IMAP STORE). In memory it takes at most the pages
      // one batch of writes changes, freed at its commit.
      this.db.pragma('temp_store = MEMORY');
      // Checkpoints run on the checkpoint worker, never inside one of our commits.
      this.db.pragma('wal_autocheckpoint = 0');
      this.db.exec(SCHEMA);
    } catch (e) {
      throw sqliteError(e, `open ${path}`);
    }
    const changes = this.db.prepare('SELECT total_changes() AS n').pluck();
    this.busyTimeout = { zero: this.db.prepare('PRAGMA busy_timeout = 0'), restore: this.db.prepare(`PRAGMA busy_timeout = ${BUSY_RETRY_MS}`) };
    this.totalChanges = { get: () => changes.get() as number };
    const savepoint = this.db.transaction((fn: () => unknown) => fn());
    this.runBatch = this.db.transaction((jobs: Job[], out: { ok: boolean; v: unknown }[]) => {
      for (const job of jobs) {
        try {
          out.push({ ok: true, v: savepoint(job.fn) });
        } catch (e) {
          out.push({ ok: false, v: e });
        }
      }
    }).immediate as unknown as (jobs: Job[], out: { ok: boolean; v: unknown }[]) => void;
    if (sharing && !sharing.checkpoints) return;
    this.checkpointer = new Checkpointer(
      path,
      {
        // Read at each tick: `shareWithThread` may add the other thread's counter later.
        commits: () => (this.sharing ? this.commits + Atomics.load(this.sharing.commits, 0) : this.commits),
        pageSize: this.db.pragma('page_size', { simple: true }) as number,
        pauseWrites: () => this.pauseWrites(),
        inlineCheckpoint: (mode) => (this.db.pragma(`wal_checkpoint(${mode})`) as CheckpointResult[])[0],
        setAutocheckpoint: (pages) => this.db.pragma(`wal_autocheckpoint = ${pages}`),
      },
      log,
      checkpoint,
    );
  }

  /**
   * The counters a store on another thread of this process opens with (`checkpoints: false`); this
   * store keeps the checkpoints and counts that store's commits from now on. The same counters on
   * every call, so a restarted thread continues where the last one stopped.
   */
  shareWithThread(): Pick<SqliteSharing, 'commits' | 'releases'> {
    if (this.sharing && !this.sharing.checkpoints) throw new Error('a store that leaves checkpoints to another thread cannot share itself further');
    if (!this.sharing) {
      const counters = new SharedArrayBuffer(8);
      this.sharing = { commits: new Int32Array(counters, 0, 1), releases: new Int32Array(counters, 4, 1), checkpoints: true };
    }
    return { commits: this.sharing.commits, releases: this.sharing.releases };
  }

  /** Absent on a store that leaves checkpoints to another thread's store (`SqliteSharing`). */
  private readonly checkpointer: Checkpointer | undefined = undefined;
  /** Batches that changed something so far (the checkpointer skips a tick with none). */
  private commits = 0;
  /** Holds that keep flush() from committing (a WAL restart in progress). */
  private pauses = 0;

  /** Holds back commits (writes queue up in memory) until the returned function is called. */
  private pauseWrites(): () => void {
    this.pauses++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.pauses--;
      if (!this.pauses && this.pending.length && !this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    };
  }

  /** What the checkpoint worker did so far. */
  checkpointStats(): CheckpointStats | undefined {
    return this.checkpointer?.stats();
  }

  /**
   * Runs `fn` (synchronous, may throw) in a write transaction; resolves after the commit is
   * durable, or, with `durable: false`, as soon as it is committed (see the file comment).
   */
  write<T>(fn: () => T, options: { durable?: boolean } = {}): Promise<T> {
    if (this.closed) return Promise.reject(new Unavailable('storage is closed'));
    const lazy = options.durable === false;
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, lazy, resolve: resolve as (v: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    if (this.pauses) return; // resumed by pauseWrites()
    if (this.busyRetry) return; // another connection holds the write lock; the timer retries
    const jobs = this.pending.splice(0, MAX_BATCH);
    if (this.pending.length) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    if (!jobs.length) return;
    const out: { ok: boolean; v: unknown }[] = [];
    const changesBefore = this.totalChanges.get();
    // Read before BEGIN, so that a release between a failed BEGIN and the wait is not missed.
    const releases = this.sharing?.releases;
    const seen = releases ? Atomics.load(releases, 0) : 0;
    try {
      // BEGIN IMMEDIATE must not wait for the write lock here: SQLite's busy handler sleeps on the
      // calling thread, the event loop. Another connection (a CLI process, the checkpoint worker)
      // holding it makes BEGIN fail at once, and the batch is retried from a timer.
      this.busyTimeout.zero.get();
      try {
        this.runBatch(jobs, out);
      } finally {
        this.busyTimeout.restore.get();
      }
    } catch (e) {
      const lockHeld = out.length === 0 && /^SQLITE_BUSY/.test((e as { code?: string }).code ?? '');
      if (lockHeld && Date.now() - (this.busySince ?? Date.now()) < BUSY_RETRY_MS) {
        this.busySince ??= Date.now();
        this.pending.unshift(...jobs);
        this.busyRetry = true;
        this.lockWaits.busy++;
        this.retryWhenReleased(seen);
        return;
      }
      // Only a store that held the lock wakes the others (a BEGIN that found it taken did not).
      if (!lockHeld) this.released();
      this.busySince = undefined;
      // BEGIN or COMMIT failed (busy for BUSY_RETRY_MS, disk full, I/O): nothing was written.
      const err = sqliteError(e, 'sqlite commit');
      this.log.warn({ err: (e as Error).message, jobs: jobs.length }, 'sqlite batch failed');
      for (const j of jobs) j.reject(err);
      return;
    }
    this.released();
    this.busySince = undefined;
    const changed = this.totalChanges.get() !== changesBefore;
    if (changed) {
      this.commits++;
      if (this.sharing && !this.sharing.checkpoints) Atomics.add(this.sharing.commits, 0, 1);
    }
    const settle = (which: (j: Job) => boolean) =>
      jobs.forEach((j, i) => {
        if (!which(j)) return;
        const r = out[i];
        if (r.ok) j.resolve(r.v);
        else j.reject(r.v instanceof StorageError ? r.v : sqliteError(r.v, 'sqlite write'));
      });
    // A batch that changed nothing (an empty receive, a failed condition) has nothing to sync,
    // and neither has one whose writers all said they need no durability.
    if (!this.walSync || !changed || jobs.every((j) => j.lazy)) return settle(() => true);
    // The lazy ones need not wait for the fsync the others wait for.
    settle((j) => j.lazy);
    this.inFlightSyncs++;
    // The WAL file's own folder entry is made durable once (the file may have just been made):
    // every batch waits for that one sync, and all in the same way (Promise.all), so that batches
    // sharing one WAL fsync settle in the order they committed whichever of the two ends last.
    const synced = Promise.all([this.walSync.sync(this.walPath), this.walDirSync()]);
    synced
      .then(
        () => settle((j) => !j.lazy),
        (e: unknown) => {
          // The commit may or may not be on disk: tell every caller it failed (they retry).
          this.log.error({ err: (e as Error).message }, 'fsync of the SQLite WAL failed');
          const err = new Unavailable(`fsync of the SQLite WAL: ${(e as Error).message}`, { cause: e });
          for (const j of jobs) if (!j.lazy) j.reject(err);
        },
      )
      .finally(() => this.inFlightSyncs--);
  }

  /** Our write transaction has ended (committed or rolled back): wake a sharing store waiting for the lock. */
  private released(): void {
    const releases = this.sharing?.releases;
    if (!releases) return;
    Atomics.add(releases, 0, 1);
    Atomics.notify(releases, 0);
  }

  /**
   * Retries the batch that found the write lock held: when a sharing store ends its transaction
   * (`SqliteSharing.releases`), or after 2 ms, whichever comes first. Only a store that held the
   * lock notifies, so two waiters never wake each other in a loop.
   */
  private retryWhenReleased(seen: number): void {
    const retry = () => {
      this.busyRetry = false;
      this.flush();
    };
    const releases = this.sharing?.releases;
    if (!releases) {
      setTimeout(retry, 2);
      return;
    }
    // waitAsync's own timeout is the 2 ms fallback; it settles once, so the retry runs once.
    const w = waitAsync(releases, 0, seen, 2);
    // Not equal: the other thread already ended its transaction since we looked; try again now.
    if (!w.async) setImmediate(retry);
    else
      void w.value.then((how) => {
        if (how === 'ok') this.lockWaits.woken++;
        retry();
      });
  }

  /** Batches that found the write lock held, and how many of those a sharing store's release woke. */
  readonly lockWaits = { busy: 0, woken: 0 };

  private inFlightSyncs = 0;
  /** Set while a batch waits for another connection's write lock. */
  private busyRetry = false;
  /** When the waiting batch first found the lock taken. */
  private busySince: number | undefined;
  private readonly busyTimeout: { zero: Database.Statement; restore: Database.Statement };
  private walDirSyncing?: Promise<void>;
  /** The one fsync of the WAL's folder, shared by every batch (a failed one is tried again by the next batch). */
  private walDirSync(): Promise<void> {
    return (this.walDirSyncing ??= this.walSync!.sync(dirname(this.walPath)).catch((e: unknown) => {
      this.walDirSyncing = undefined;
      throw e;
    }));
  }
  private readonly totalChanges: { get(): number };

  /** Runs a read; maps SQLite failures. */
  read<T>(fn: () => T, what: string): T {
    if (this.closed) throw new Unavailable('storage is closed');
    try {
      return fn();
    } catch (e) {
      throw sqliteError(e, what);
    }
  }

  /** True when a trivial query answers. */
  check(): boolean {
    try {
      return !this.closed && this.db.prepare('SELECT 1 AS one').get() !== undefined;
    } catch {
      return false;
    }
  }

  /** Finishes queued writes, then closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    while (this.pending.length || this.scheduled || this.inFlightSyncs || this.busyRetry) await new Promise((r) => setImmediate(r));
    await this.checkpointer?.close();
    this.closed = true;
    await this.walSync?.close();
    this.db.close();
  }
}
