/**
 * WAL checkpoints of the local SQLite database, run on a worker thread so that they never stall
 * the event loop (issue 4: p99 accept latency).
 *
 * Why: with SQLite's automatic checkpoint (`wal_autocheckpoint = 1000`) the COMMIT that pushes
 * the WAL past 1000 pages also copies the WAL's pages into the database file and fsyncs the WAL
 * and then the database, on whatever thread committed: here the event loop, so every socket of
 * the process waited for it (see docs/performance.md, Local storage).
 *
 * What instead: the writing connection has `wal_autocheckpoint = 0`, and this worker, with a
 * connection of its own to the same file, runs the checkpoints:
 * - Every `intervalMs` in which this process committed something, a PASSIVE checkpoint. It takes
 *   no write lock: commits go on beside it while it copies the WAL and syncs the database.
 * - When it caught up (nothing was committed while it ran), SQLite's next commit starts the WAL
 *   over from its beginning and fsyncs the new WAL header, on the event loop: one small fsync
 *   of a file rewritten in place, where the checkpoint in the commit had been a copy and two
 *   fsyncs. Under a load that never lets it
 *   catch up, the WAL would grow without end; so once it holds `restartFrames` frames, the store
 *   holds back its own commits for a moment (writes wait in memory; the event loop runs on) while
 *   the worker runs a RESTART checkpoint (what was committed during the PASSIVE one; the next
 *   frames then overwrite the WAL from its beginning) and commits one row of its own, so that
 *   the new header's fsync happens on the worker too. That pause costs about three fsyncs and
 *   every message in flight waits for it, so it is rare: the default is 65536 frames (256 MB of
 *   WAL under a sustained load; the figures that chose it are in docs/performance.md).
 * - When this process stops committing for `idleMs`, the same under a TRUNCATE checkpoint
 *   (nobody waits for it then) cuts the WAL file back to nothing.
 * - If the worker dies, the writing connection goes back to automatic checkpoints (logged). If
 *   the WAL still passes `hardCapBytes` (the worker stuck for `stuckMs`, or dead), the event
 *   loop runs a TRUNCATE checkpoint itself, logged: a stall, as the last resort against a WAL
 *   that grows without bound.
 * - close() runs a last PASSIVE checkpoint and stops the worker; closing the last connection
 *   then checkpoints the rest and deletes the WAL (SQLite's own close).
 *
 * Durability is SQLite's own: a checkpoint (PASSIVE or TRUNCATE, synchronous=NORMAL or FULL)
 * syncs the WAL before it copies a page into the database, and syncs the database before it
 * marks the WAL as checkpointed or truncates it, so a crash at any point leaves every committed
 * transaction either in a synced WAL that recovery replays or in a synced database. A commit
 * whose WAL frames the store has not yet fsynced (sqlite.ts) is either still in the WAL, where
 * the store's fsync makes it durable, or already copied, by a checkpoint that synced it first.
 *
 * The worker is plain JavaScript evaluated from a string (not a file) that loads better-sqlite3
 * by its resolved path: one source that runs the same under tsx, vitest and the esbuild bundles.
 */
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../log.js';

/** How the checkpointer paces itself; production uses the defaults. */
export interface CheckpointOptions {
  /** How often to checkpoint (PASSIVE) while this process commits: each copies the hot pages once, so fewer cost less CPU (docs/performance.md, Local storage). @default 2000 */
  intervalMs?: number;
  /** After this long without a commit, a WAL with anything in it is checkpointed and truncated. @default 1000 */
  idleMs?: number;
  /** WAL frames (pages) after which the WAL is truncated and restarted under a short pause of commits (0: after every checkpoint). @default 65536 */
  restartFrames?: number;
  /** WAL file size past which the event loop checkpoints itself if the worker cannot. @default 1073741824 (1 GiB) */
  hardCapBytes?: number;
  /** A worker checkpoint running this long counts as stuck for the hard cap. @default 30000 */
  stuckMs?: number;
  /** Longest wait of the TRUNCATE checkpoint for other connections' readers and writers. @default 250 */
  truncateBusyMs?: number;
}

/** What the checkpointer needs from the store that owns the writing connection. */
export interface CheckpointHost {
  /** Commits this process made so far (monotonic). */
  commits(): number;
  /** The database's page size in bytes. */
  pageSize: number;
  /** Holds back this process's commits until the returned function is called. */
  pauseWrites(): () => void;
  /** Runs a checkpoint on the writing connection (on the event loop). */
  inlineCheckpoint(mode: 'PASSIVE' | 'TRUNCATE'): CheckpointResult;
  /** Sets the writing connection's automatic checkpoint threshold (0: off). */
  setAutocheckpoint(pages: number): void;
}

/** One row of `PRAGMA wal_checkpoint`: busy flag, frames in the WAL, frames checkpointed. */
export interface CheckpointResult {
  busy: number;
  log: number;
  checkpointed: number;
}

/** What the checkpointer did so far (for tests and the log). */
export interface CheckpointStats {
  passive: number;
  /** WAL restarts under a pause (RESTART under load, TRUNCATE when idle). */
  truncates: number;
  /** Checkpoints the event loop ran (hard cap). */
  inline: number;
  /** Longest pause of commits for a TRUNCATE, in ms. */
  maxPauseMs: number;
  /** Worker is gone; the writing connection checkpoints automatically. */
  fallback: boolean;
}

/** The worker's source: one connection, one checkpoint per message. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { timeout: 5000 });
// NORMAL and FULL both sync the WAL before a checkpoint and the database after it.
db.pragma('synchronous = NORMAL');
db.pragma('wal_autocheckpoint = 0');
const mark = db.prepare('INSERT OR REPLACE INTO wal_restarts (id, at) VALUES (1, ?)');
parentPort.on('message', (m) => {
  if (m.op === 'close') {
    db.close();
    parentPort.close();
    return;
  }
  try {
    db.pragma('busy_timeout = ' + m.busyMs);
    const row = db.pragma('wal_checkpoint(' + m.mode + ')')[0];
    // A one-row commit into the fresh WAL: the header's fsync happens here, not on the event loop.
    if (m.mark && row.busy === 0) mark.run(Date.now());
    parentPort.postMessage({ id: m.id, row });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String((e && e.message) || e) });
  }
});
`;

/** The table the worker's restart commit writes (created with the schema in sqlite.ts). */
export const WAL_RESTARTS_SCHEMA = 'CREATE TABLE IF NOT EXISTS wal_restarts (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);';

interface Call {
  resolve: (r: CheckpointResult) => void;
  reject: (e: Error) => void;
}

/** Runs WAL checkpoints of one database file on a worker thread (see the file comment). */
export class Checkpointer {
  private readonly worker: Worker;
  private readonly calls = new Map<number, Call>();
  private nextId = 1;
  private readonly timer: NodeJS.Timeout;
  private cycling: Promise<void> | undefined;
  private cycleStarted = 0;
  /** Commits made before the last PASSIVE checkpoint began (all copied by it). */
  private passiveCommits = 0;
  /** Commits made before the last TRUNCATE checkpoint. */
  private truncatedCommits = 0;
  private lastCommits = 0;
  private lastCommitSeen = 0;
  private dead = false;
  private closing = false;
  private readonly opts: Required<CheckpointOptions>;
  private readonly walPath: string;
  private readonly counts: CheckpointStats = { passive: 0, truncates: 0, inline: 0, maxPauseMs: 0, fallback: false };

  constructor(
    dbPath: string,
    private readonly host: CheckpointHost,
    private readonly log: Logger,
    options: CheckpointOptions = {},
  ) {
    this.opts = {
      intervalMs: options.intervalMs ?? 2000,
      idleMs: options.idleMs ?? 1000,
      restartFrames: options.restartFrames ?? 65536,
      hardCapBytes: options.hardCapBytes ?? 1024 * 1024 * 1024,
      stuckMs: options.stuckMs ?? 30_000,
      truncateBusyMs: options.truncateBusyMs ?? 250,
    };
    this.walPath = `${dbPath}-wal`;
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { driver, path: dbPath } });
    this.worker.unref();
    this.worker.on('message', (m: { id: number; row?: CheckpointResult; error?: string }) => {
      const call = this.calls.get(m.id);
      if (!call) return;
      this.calls.delete(m.id);
      if (this.calls.size === 0 && !this.closing) this.worker.unref();
      if (m.row) call.resolve(m.row);
      else call.reject(new Error(m.error ?? 'checkpoint failed'));
    });
    this.worker.on('error', (e) => this.died(e));
    this.worker.on('exit', (code) => this.died(new Error(`checkpoint worker exited with code ${code}`)));
    this.timer = setInterval(() => this.tick(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** What the checkpointer did so far. */
  stats(): CheckpointStats {
    return { ...this.counts };
  }

  private died(e: Error): void {
    if (this.dead) return;
    this.dead = true;
    for (const c of this.calls.values()) c.reject(e);
    this.calls.clear();
    if (this.closing) return;
    this.counts.fallback = true;
    this.log.error({ err: e.message }, 'SQLite checkpoint worker died; checkpoints run in commits again');
    try {
      this.host.setAutocheckpoint(1000);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'turning automatic checkpoints back on failed');
    }
  }

  private call(mode: 'PASSIVE' | 'RESTART' | 'TRUNCATE', mark: boolean, busyMs: number): Promise<CheckpointResult> {
    if (this.dead) return Promise.reject(new Error('checkpoint worker is gone'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      // Referenced while a call is out: a pause of commits may be all a process waits for, and
      // an unreferenced worker would let it exit with that await unsettled (exit code 13).
      if (this.calls.size === 0) this.worker.ref();
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ id, mode, mark, busyMs });
    });
  }

  private tick(): void {
    if (this.closing) return;
    const size = this.walSize();
    if (this.dead) return this.hardCap(size);
    if (this.cycling) {
      if (Date.now() - this.cycleStarted > this.opts.stuckMs) this.hardCap(size);
      return;
    }
    const commits = this.host.commits();
    if (commits !== this.lastCommits) {
      this.lastCommits = commits;
      this.lastCommitSeen = Date.now();
    }
    let truncate: boolean;
    if (commits !== this.passiveCommits) truncate = false;
    else if (commits !== this.truncatedCommits && size > 0 && Date.now() - this.lastCommitSeen >= this.opts.idleMs) truncate = true;
    else return;
    this.cycleStarted = Date.now();
    this.cycling = this.cycle(truncate).finally(() => (this.cycling = undefined));
  }

  private walSize(): number {
    try {
      return statSync(this.walPath).size;
    } catch {
      return 0;
    }
  }

  /** A PASSIVE checkpoint; then, if the WAL is past `restartFrames` or `truncate` asks, a TRUNCATE one under a pause of commits. */
  private async cycle(truncate: boolean): Promise<void> {
    const commits = this.host.commits();
    try {
      const r = await this.call('PASSIVE', false, 0);
      this.counts.passive++;
      this.passiveCommits = commits;
      if (!truncate && r.log < this.opts.restartFrames) return;
      const started = performance.now();
      const resume = this.host.pauseWrites();
      let t: CheckpointResult;
      try {
        // RESTART under load: the next frames overwrite the file in place; freeing and then
        // reallocating 64 MB (TRUNCATE) made the pause longer. TRUNCATE when idle, to give the
        // space back.
        t = await this.call(truncate ? 'TRUNCATE' : 'RESTART', true, this.opts.truncateBusyMs);
      } finally {
        resume();
      }
      const pause = performance.now() - started;
      this.counts.truncates++;
      this.counts.maxPauseMs = Math.max(this.counts.maxPauseMs, pause);
      // Commits made during the PASSIVE checkpoint were copied by this one. A TRUNCATE that found
      // the WAL busy did not cut it: leave truncatedCommits behind so that the next idle tick
      // tries again (setting it would wait for a commit that may never come).
      this.passiveCommits = this.host.commits();
      if (t.busy) {
        this.log.warn({ frames: r.log }, 'WAL not truncated: another connection kept it busy; retrying next cycle');
      } else {
        this.truncatedCommits = this.passiveCommits;
        this.log.debug({ frames: r.log, pauseMs: Math.round(pause) }, 'WAL truncated');
      }
    } catch (e) {
      if (!this.dead) this.log.warn({ err: (e as Error).message }, 'WAL checkpoint failed');
    }
  }

  /** The last resort: the WAL is past the hard cap and the worker cannot help. */
  private hardCap(size: number): void {
    if (size <= this.opts.hardCapBytes) return;
    const started = performance.now();
    try {
      const r = this.host.inlineCheckpoint('TRUNCATE');
      this.counts.inline++;
      this.log.warn({ walBytes: size, busy: r.busy, ms: Math.round(performance.now() - started) }, 'WAL past its hard cap: checkpointed on the event loop');
    } catch (e) {
      this.log.error({ err: (e as Error).message, walBytes: size }, 'WAL past its hard cap and the checkpoint failed');
    }
  }

  /** Finishes the running cycle, runs a last PASSIVE checkpoint and stops the worker. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.timer);
    // The worker is unref'd so that it never keeps a process alive on its own; while closing, its
    // answers are what the caller waits for, so hold the process open until it has exited (else a
    // CLI whose last work is this close ends with an unsettled top-level await, exit code 13).
    if (!this.dead) this.worker.ref();
    await this.cycling;
    if (this.dead) return;
    try {
      await this.call('PASSIVE', false, 0);
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'last WAL checkpoint failed');
    }
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ op: 'close' });
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 5000).unref());
    if ((await Promise.race([exited, timeout])) === 'timeout') await this.worker.terminate();
  }
}
