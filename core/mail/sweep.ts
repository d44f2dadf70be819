/**
 * The documented cleanup of orphaned raw messages: blobs in the mail store that no queued job,
 * mailbox entry, hold or outbound record will ever reference, so that nothing else would ever
 * delete them. Works only through the storage ports, so it runs the same on both adapter families.
 *
 * ## How orphans happen
 * The SMTP listener stores the raw message (`in/<date>/<id>.eml`) and then sends its job; a SIGKILL
 * or an adapter failure between the two (or a 451 whose best-effort delete failed) leaves a blob
 * that no job names. A large MX message is first spooled to `spool/<id>` and copied once; a kill
 * between put and copy leaves the spool key. DSNs (`dsn/<id>.eml` from core/mail/dsn.ts,
 * `outbound-dsn/<id>.eml` from the outbound worker) have the same put-then-send shape, and a
 * mailbox removal or hold release killed between its commit and its blob delete leaves one too.
 * `import/<sha256>` blobs are held before they are written, so they become orphans only by the
 * rare paths below (stale holds).
 *
 * ## What counts as a reference (checked per blob, and again just before the delete)
 * - Any item in the blob's `BLOBREF#<key>` partition: the `META` reference count or a `HOLD#...`.
 *   MailboxStore.deliver adds to `META` in the same transaction that writes the mailbox entry, and
 *   removal drops `META` in the same transaction that deletes the last entry naming the blob (both
 *   in core/mailbox/store.ts; no other code writes `UID#` items), so "no `BLOBREF#` item" implies
 *   "no mailbox entry". Holds cover the jobs that still need the blob: an inbound job with more
 *   than one reader, an import, and the outbound worker, which holds `outbound:<id>` from before
 *   its `OUT#<id>` record exists until the message is finished (core/mail/outbound.ts).
 * - An active `OUT#<id>` record naming the blob (belt and braces: it implies a hold; one point read,
 *   done only for blobs that have no `BLOBREF#` item).
 * - A queued job. Jobs cannot be searched through the Queues port, so this is covered by time:
 *   1. Grace: a job is sent right after its blob is stored and no queue keeps a message longer than
 *      14 days (SQS retention, which a dead-letter queue counts from the first enqueue; inbound
 *      retries use the visibility timeout of the same message, and the outbound worker's later
 *      generations are new messages but come after its hold). A blob older than `graceSeconds`
 *      (default 15 days; the day beyond 14 covers an upload whose S3 LastModified is its start)
 *      can have no live job. The local queue keeps messages forever; this rule then treats a
 *      dead-lettered job older than the grace like SQS would, as expired.
 *   2. Quiescence (the fast path): when the inbound and outbound queues and both dead-letter
 *      queues show nothing visible, in flight or delayed, no job exists at all, so any unreferenced
 *      blob is an orphan — except one whose job is about to be sent. Queue stats are read before
 *      the scan and again before every batch of deletions; once they show work, the fast path ends.
 *      SQS's counts are approximate and may lag by about a minute; the settle time below covers
 *      that lag as well.
 *
 * ## The race with the accept path, and the settle time
 * Between `mail.put` resolving and `queues.send` resolving, a fresh blob is unreferenced and the
 * queues may be empty: a sweep there would delete a message that is about to get its 250. Blob
 * age does not protect it: on S3 `LastModified` of a multipart upload is when the upload started,
 * which for a slow 50 MB message is long before the blob appears. So a blob is only deleted once
 * a sweep has *seen* it complete and unreferenced at least `settleSeconds` earlier: the first
 * sighting writes a mark (`SWEEP#<key>` / `SEEN`, with the blob's LastModified so that a re-created
 * key starts over, and a TTL), and a later sweep deletes it. A sighting happens after the put
 * completed, and the job is sent one queue call after that (bounded by the SDK's request timeout
 * and retries, well under the 15-minute default), so by the time the settle time has passed the
 * job is in the queue (and the fast path is off) or done (and the blob is referenced). Blobs
 * modified after the sweep began are never touched. With `settleSeconds: 0` (the CLI's
 * `--settle-minutes 0`, the soak) a blob is deleted on first sight: only safe when no listener or
 * worker is running, which the operator asserts.
 *
 * ## Stale holds
 * A hold whose holder can no longer release it keeps its blob for ever: the outbound worker (and
 * `queue delete`) marks its record finished and then releases its hold, and a crash in between is
 * not redone (a redelivered job sees the finished record and stops); an inbound job that ended in
 * a dead-letter queue, or an import that was killed, keeps its hold too. When a blob has no
 * mailbox reference (its `META` count equals its holds) the sweep releases the holds that are
 * stale, through MailboxStore.releaseBlob, which deletes the blob with its last reference:
 * - `outbound:<id>`: the `OUT#<id>` record is finished (`done` or `deleted`) and the hold is older
 *   than the settle time, or the record is gone and the hold is older than the grace;
 * - `inbound:<job id>`, `import:<run id>`: the hold is older than the grace (no job or import lives
 *   that long); holders of any other name are never released.
 *
 * Spool keys are never named by a job, a record or a mailbox (the message is copied to its `in/`
 * key and the spool key deleted in the same SMTP transaction), so only the settle time applies to
 * them: their one reader is the transaction that wrote them, which ends minutes after the put.
 *
 * Idempotent (deletes are), memory-bounded (one listing page at a time), and safe to run from
 * several places at once (the worst case is duplicated reads). The periodic in-process run never
 * overlaps itself.
 */
import { Counter } from 'prom-client';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { MailboxStore, mailboxKeys } from '../mailbox/store.js';
import { isStorageError, type BlobInfo, type Item, type Key, type QueueName, type Storage } from '../storage/ports.js';

/** The mail-store prefixes the sweep looks at, and how each is judged. */
export const SWEEP_PREFIXES: readonly { prefix: string; kind: 'message' | 'spool' }[] = [
  { prefix: 'in/', kind: 'message' },
  { prefix: 'dsn/', kind: 'message' },
  { prefix: 'outbound-dsn/', kind: 'message' },
  { prefix: 'import/', kind: 'message' },
  { prefix: 'spool/', kind: 'spool' },
];

const QUEUES: readonly QueueName[] = ['inbound', 'outbound', 'inbound-dlq', 'outbound-dlq'];
/** Marks outlive any sensible interval between sweeps; an expired mark only delays a deletion. */
const MARK_TTL_SECONDS = 7 * 86400;
/** Deleted keys kept in the report (for --dry-run and --json); the counts are always complete. */
const MAX_LISTED_KEYS = 1000;

/** Options of one sweep. */
export interface SweepOptions {
  /** An unreferenced blob older than this is an orphan whatever the queues hold. @default 360 hours */
  graceSeconds?: number;
  /** How long before a deletion a sweep must have seen the blob unreferenced. @default 900 */
  settleSeconds?: number;
  /** Count and list what would go, write and delete nothing. @default false */
  dryRun?: boolean;
  /** Listing page size (1..1000). @default 1000 */
  pageSize?: number;
  /** @default () => new Date() */
  now?: () => Date;
  log?: Logger;
  metrics?: Metrics;
  /** Stops the sweep between blobs; the report then has `complete: false`. */
  signal?: AbortSignal;
}

/** What one sweep did. */
export interface SweepReport {
  startedAt: string;
  dryRun: boolean;
  /** The queues were empty when the sweep began (the fast path was on). */
  quiescent: boolean;
  /** Blobs listed under the swept prefixes. */
  scanned: number;
  /** Blobs deleted (with dryRun: that would have been deleted). */
  deleted: number;
  /** Kept: a `BLOBREF#` item or an active outbound record names them. */
  keptReferenced: number;
  /** Stale holds released (see the file comment); a blob whose last reference that was is in `deleted`. */
  releasedHolds: number;
  /** Kept: too young for the grace rule while the queues are busy, or not yet settled. */
  keptYoung: number;
  /** Unreferenced blobs seen for the first time (a mark was written, or would be with dryRun). */
  marked: number;
  /** The keys of `deleted`, at most 1000. */
  deletedKeys: string[];
  /** False when stopped by the signal before the end. */
  complete: boolean;
  ms: number;
}

/** The sweep's metric, registered once per Metrics registry. */
function sweepCounter(metrics: Metrics): Counter<'outcome'> {
  const name = 'tomlinson_orphan_sweep_blobs_total';
  const existing = metrics.registry.getSingleMetric(name);
  if (existing) return existing as Counter<'outcome'>;
  return new Counter({ name, help: 'Mail blobs judged by the orphan sweep, by outcome (deleted, referenced, young)', labelNames: ['outcome'], registers: [metrics.registry] });
}

const markKey = (blobKey: string): Key => ({ pk: `SWEEP#${blobKey}`, sk: 'SEEN' });

/** The outbound message id a blob key belongs to, when the key has one. */
function outboundId(key: string): string | undefined {
  const m = /^(?:in\/\d{8}\/|dsn\/|outbound-dsn\/)(.+)\.eml$/.exec(key);
  return m?.[1];
}

/** The sweep options a Config gives (the settings `mail.orphanGraceHours` and `mail.orphanSettleMinutes`). */
export function sweepOptionsFrom(config: Config): Pick<SweepOptions, 'graceSeconds' | 'settleSeconds'> {
  return { graceSeconds: config.mail.orphanGraceHours * 3600, settleSeconds: config.mail.orphanSettleMinutes * 60 };
}

/** Deletes orphaned message blobs; see the file comment for the rules and why they are safe. */
export async function sweepOrphanBlobs(storage: Storage, options: SweepOptions = {}): Promise<SweepReport> {
  const now = options.now ?? (() => new Date());
  const graceMs = (options.graceSeconds ?? 360 * 3600) * 1000;
  const settleMs = (options.settleSeconds ?? 900) * 1000;
  const dryRun = options.dryRun ?? false;
  const pageSize = options.pageSize ?? 1000;
  const started = now();
  const t0 = performance.now();
  const { tables, mail } = storage;

  const quiet = async (): Promise<boolean> => {
    const stats = await Promise.all(QUEUES.map((q) => storage.queues.stats(q)));
    return stats.every((s) => s.visible === 0 && s.inFlight === 0 && s.delayed === 0);
  };
  const quiescentAtStart = await quiet();
  let fastPath = quiescentAtStart;

  const report: SweepReport = {
    startedAt: started.toISOString(),
    dryRun,
    quiescent: quiescentAtStart,
    scanned: 0,
    deleted: 0,
    keptReferenced: 0,
    releasedHolds: 0,
    keptYoung: 0,
    marked: 0,
    deletedKeys: [],
    complete: true,
    ms: 0,
  };

  const store = new MailboxStore(tables, mail, { now });
  const HOLD = 'HOLD#';

  /** Whether a hold's holder can still release it itself (see "Stale holds"). */
  const holdIsLive = async (hold: Item): Promise<boolean> => {
    const holder = hold.sk.slice(HOLD.length);
    const at = typeof hold.at === 'string' ? Date.parse(hold.at) : NaN;
    if (Number.isNaN(at)) return true;
    const age = started.getTime() - at;
    if (holder.startsWith('outbound:')) {
      const out = await tables.get({ pk: `OUT#${holder.slice('outbound:'.length)}`, sk: 'META' });
      if (!out) return age < graceMs;
      return !((out.status === 'done' || out.status === 'deleted') && age >= settleMs);
    }
    if (holder.startsWith('inbound:') || holder.startsWith('import:')) return age < graceMs;
    return true;
  };

  /**
   * What refers to a blob: `live` (keep it), `none` (an orphan candidate), or `stale` with the
   * holders whose holds are the only references left.
   */
  const references = async (key: string): Promise<{ kind: 'live' | 'none' } | { kind: 'stale'; holders: string[] }> => {
    const page = await tables.query(mailboxKeys.blobRef(key).pk, { limit: 50 });
    if (page.items.length > 0) {
      const meta = page.items.find((i) => i.sk === 'META');
      const holds = page.items.filter((i) => i.sk.startsWith(HOLD));
      // Mailbox entries (refs beyond the holds), a partition too big for one page, or counts that
      // do not add up: kept, never guessed at.
      if (page.cursor || !meta || Number(meta.refs ?? 0) !== holds.length || holds.length === 0) return { kind: 'live' };
      for (const h of holds) if (await holdIsLive(h)) return { kind: 'live' };
      return { kind: 'stale', holders: holds.map((h) => h.sk.slice(HOLD.length)) };
    }
    const id = outboundId(key);
    if (id === undefined) return { kind: 'none' };
    const out = await tables.get({ pk: `OUT#${id}`, sk: 'META' });
    if (out && out.status === 'active' && out.blobKey === key) {
      options.log?.warn({ key, id }, 'an active outbound message has no hold on its blob; kept');
      return { kind: 'live' };
    }
    return { kind: 'none' };
  };
  const referenced = async (key: string): Promise<boolean> => (await references(key)).kind !== 'none';

  /** Releases stale holds; MailboxStore.releaseBlob deletes the blob with the last of them. */
  const releaseStale = async (key: string, holders: string[]): Promise<void> => {
    report.releasedHolds += holders.length;
    if (!dryRun) for (const h of holders) await store.releaseBlob(key, h);
    options.log?.info({ key, holders, dryRun }, 'stale holds released');
    report.deleted++;
    if (report.deletedKeys.length < MAX_LISTED_KEYS) report.deletedKeys.push(key);
  };

  /** True when a sweep saw this very blob unreferenced at least the settle time ago; marks it otherwise. */
  const settled = async (blob: BlobInfo): Promise<boolean> => {
    const modified = blob.lastModified?.getTime() ?? 0;
    const mark: Item | undefined = await tables.get(markKey(blob.key));
    if (mark && mark.blobModified === modified && typeof mark.at === 'number') return started.getTime() - mark.at >= settleMs;
    report.marked++;
    if (!dryRun) {
      await tables.put({ ...markKey(blob.key), at: started.getTime(), blobModified: modified, ttl: Math.floor(started.getTime() / 1000) + MARK_TTL_SECONDS + Math.ceil(settleMs / 1000) });
    }
    return settleMs === 0;
  };

  /** Candidates of one page: the key, and whether only quiescence (not the grace) allows it. */
  type Candidate = { key: string; needsQuiet: boolean };
  const flush = async (batch: Candidate[]): Promise<void> => {
    // Read at every page, so a sweep that began in a quiet moment stops querying every blob soon
    // after work arrives, and right before deletions that only quiescence allows.
    if (fastPath && !(await quiet())) {
      fastPath = false;
      options.log?.info('the queues have work now; the sweep continues with the grace rule only');
    }
    for (const c of batch) {
      if (c.needsQuiet && !fastPath) {
        report.keptYoung++;
        continue;
      }
      // Re-checked right before the delete: a reference written since the scan wins.
      if (await referenced(c.key)) {
        report.keptReferenced++;
        continue;
      }
      if (!dryRun) {
        await mail.delete(c.key);
        await tables.delete(markKey(c.key));
      }
      report.deleted++;
      if (report.deletedKeys.length < MAX_LISTED_KEYS) report.deletedKeys.push(c.key);
    }
  };

  try {
    // `in/<yyyymmdd>/` keys list oldest day first and a key's day is its DATA's start, never after
    // its blob's LastModified: without the fast path, the first day past the grace cut-off ends
    // the prefix (what is skipped is only kept), so a busy system's sweep reads the old tail only.
    const cutoffDay = new Date(started.getTime() - graceMs).toISOString().slice(0, 10).replace(/-/g, '');
    const tooYoungDay = (key: string) => {
      const m = /^in\/(\d{8})\//.exec(key);
      return m !== null && m[1] > cutoffDay;
    };
    outer: for (const { prefix, kind } of SWEEP_PREFIXES) {
      let cursor: string | undefined;
      let rest = false;
      do {
        const page = await mail.list(prefix, { limit: pageSize, cursor });
        cursor = page.cursor;
        const batch: Candidate[] = [];
        for (const blob of page.items) {
          if (options.signal?.aborted) {
            // The page's candidates are marked; the next sweep takes them.
            report.complete = false;
            break outer;
          }
          if (!fastPath && tooYoungDay(blob.key)) {
            rest = true;
            break;
          }
          report.scanned++;
          const modified = blob.lastModified?.getTime();
          // Written (or rewritten) since the sweep began, or of unknown age: not ours to judge.
          if (modified === undefined || modified > started.getTime()) {
            report.keptYoung++;
            continue;
          }
          if (kind === 'spool') {
            if (await settled(blob)) batch.push({ key: blob.key, needsQuiet: false });
            else report.keptYoung++;
            continue;
          }
          const pastGrace = started.getTime() - modified >= graceMs;
          if (!pastGrace && !fastPath) {
            report.keptYoung++;
            continue;
          }
          const refs = await references(blob.key);
          if (refs.kind === 'stale') {
            await releaseStale(blob.key, refs.holders);
            continue;
          }
          if (refs.kind === 'live') {
            report.keptReferenced++;
            continue;
          }
          if (await settled(blob)) batch.push({ key: blob.key, needsQuiet: !pastGrace });
          else report.keptYoung++;
        }
        await flush(batch);
      } while (cursor && !rest);
    }
  } finally {
    report.ms = Math.round(performance.now() - t0);
    if (options.metrics) {
      const c = sweepCounter(options.metrics);
      c.inc({ outcome: dryRun ? 'would-delete' : 'deleted' }, report.deleted);
      c.inc({ outcome: 'referenced' }, report.keptReferenced);
      c.inc({ outcome: 'young' }, report.keptYoung);
    }
  }
  const { deletedKeys: _keys, ...summary } = report;
  options.log?.info(summary, dryRun ? 'orphan sweep (dry run)' : 'orphan sweep');
  return report;
}

/** A running periodic sweep (the embedded default's workers). */
export interface PeriodicSweep {
  /** Stops the timer and waits for a sweep under way to end (it stops at the next blob). */
  stop(): Promise<void>;
}

/** Options of the periodic sweep. */
export interface PeriodicSweepOptions {
  storage: Storage;
  config: Config;
  log: Logger;
  metrics?: Metrics;
  /** Delay of the first run. @default min(5 minutes, the interval) */
  firstDelayMs?: number;
}

/** Runs sweepOrphanBlobs every `mail.sweepIntervalMinutes`, one run at a time; a failed run is
 * logged and the next one comes at its time. Returns undefined when the interval is 0. */
export function startPeriodicSweep(o: PeriodicSweepOptions): PeriodicSweep | undefined {
  const intervalMs = o.config.mail.sweepIntervalMinutes * 60_000;
  if (intervalMs <= 0) return undefined;
  if (o.metrics) sweepCounter(o.metrics); // on /metrics from the start, at 0
  const abort = new AbortController();
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const schedule = (ms: number) => {
    if (abort.signal.aborted) return;
    timer = setTimeout(run, ms);
    timer.unref();
  };
  const run = () => {
    running = sweepOrphanBlobs(o.storage, { ...sweepOptionsFrom(o.config), log: o.log, metrics: o.metrics, signal: abort.signal })
      .then(
        () => undefined,
        (e: unknown) => {
          if (isStorageError(e)) o.log.warn({ err: (e as Error).message }, 'orphan sweep failed; next run at its time');
          else o.log.error({ err: e }, 'orphan sweep failed; next run at its time');
        },
      )
      .finally(() => {
        running = undefined;
        schedule(intervalMs);
      });
  };
  schedule(o.firstDelayMs ?? Math.min(5 * 60_000, intervalMs));
  return {
    async stop() {
      abort.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
