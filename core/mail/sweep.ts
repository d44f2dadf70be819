/**
 * The cleanup of orphaned raw messages: mail-store blobs that no queued job, mailbox entry, hold
 * or outbound record will ever reference, so that nothing else would ever delete them. They are
 * left by a kill or a storage failure between storing a blob and sending its job (the SMTP accept
 * path, the spool copy of a large message, DSNs), or between a commit and its blob delete (a
 * mailbox removal, a hold release). Works only through the storage ports, the same on both
 * families. The rules that make a deletion safe are on OrphanSweep; docs/architecture.md
 * (Invariants) says what the sweep keeps, docs/performance.md (Mail workers) what it reads.
 *
 * Idempotent (deletes are), memory-bounded (one listing page at a time), and safe to run from
 * several places at once (the worst case is duplicated reads). The periodic in-process run never
 * overlaps itself.
 */
import { resendLessons } from './spam-learn.js';
import { Counter } from 'prom-client';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { MailboxStore, mailboxKeys } from '../mailbox/store.js';
import { isStorageError, type BlobInfo, type Item, type Key, type QueueName, type Storage } from '../storage/ports.js';

/** How a swept prefix is judged: see OrphanSweep. */
type SweepKind = 'message' | 'spool' | 'upload';

/** The mail-store prefixes the sweep looks at, and how each is judged. */
export const SWEEP_PREFIXES: readonly { prefix: string; kind: SweepKind }[] = [
  { prefix: 'in/', kind: 'message' },
  { prefix: 'dsn/', kind: 'message' },
  { prefix: 'outbound-dsn/', kind: 'message' },
  { prefix: 'import/', kind: 'message' },
  // IMAP APPEND's blobs (containers/imap/server.ts): one stored for an APPEND that then failed.
  { prefix: 'append/', kind: 'message' },
  { prefix: 'spool/', kind: 'spool' },
  // JMAP uploads (RFC 8620 §6.1) and the blobs JMAP handlers store the same way (Email/set create):
  // usable for their TTL, kept for good once an Email refers to them, deleted after it otherwise.
  { prefix: 'upload/', kind: 'upload' },
];

/** How long an upload stays usable when the configuration says nothing (web.uploadTtlSeconds). */
export const DEFAULT_UPLOAD_TTL_SECONDS = 86400;

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
  /** An unreferenced upload (`upload/`) older than this is an orphan, whatever the queues hold: the
   * web listener no longer accepts its blobId (RFC 8620 §6.1 "MUST NOT be deleted for at least 1
   * hour", web.uploadTtlSeconds). @default 86400 */
  uploadTtlSeconds?: number;
  /** Send again the jobs of spam lessons whose job was lost (spam-learn.ts resendLessons). Off
   * where the inbound worker has no rspamd controller (`spam.controllerUrl` empty: on AWS the SMTP
   * task's learner reads lessons from the table, and the sweep Lambda may not send jobs).
   * @default true */
  resendLessons?: boolean;
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
  /** The queues were empty when the sweep began (so unreferenced blobs younger than the grace could go too). */
  quiescent: boolean;
  /** Blobs listed under the swept prefixes. */
  scanned: number;
  /** Blobs deleted (with dryRun: that would have been deleted). */
  deleted: number;
  /** Kept: a `BLOBREF#` item or an active outbound record names them. */
  keptReferenced: number;
  /** Stale holds released (see OrphanSweep.holdIsLive); a blob whose last reference that was is in `deleted`. */
  releasedHolds: number;
  /** Kept: too young for the grace rule while the queues are busy, or not yet settled. */
  keptYoung: number;
  /** Unreferenced blobs seen for the first time (a mark was written, or would be with dryRun). */
  marked: number;
  /** The keys of `deleted`, at most 1000. */
  deletedKeys: string[];
  /** Spam lessons whose job was lost or never sent, sent again (core/mail/spam-learn.ts). */
  resentLessons: number;
  /** False when stopped by the signal before the end. */
  complete: boolean;
  ms: number;
}

/** The sweep's metric, registered once per Metrics registry. */
function sweepCounter(metrics: Metrics): Counter<'outcome'> {
  const name = 'tomlinson_orphan_sweep_blobs_total';
  const existing = metrics.registry.getSingleMetric(name);
  if (existing) return existing as Counter<'outcome'>;
  return new Counter({
    name,
    help: 'Mail blobs judged by the orphan sweep, by outcome (deleted, referenced, young)',
    labelNames: ['outcome'],
    registers: [metrics.registry],
  });
}

const markKey = (blobKey: string): Key => ({ pk: `SWEEP#${blobKey}`, sk: 'SEEN' });

/** The outbound message id a blob key belongs to, when the key has one. */
function outboundId(key: string): string | undefined {
  const m = /^(?:in\/\d{8}\/|dsn\/|outbound-dsn\/)(.+)\.eml$/.exec(key);
  return m?.[1];
}

/** The sweep options a Config gives (the settings `mail.orphanGraceHours`, `mail.orphanSettleMinutes`
 * and `web.uploadTtlSeconds`). */
export function sweepOptionsFrom(config: Config): Pick<SweepOptions, 'graceSeconds' | 'settleSeconds' | 'uploadTtlSeconds' | 'resendLessons'> {
  // The sweep must never outrun the listener's own TTL.
  const uploadTtl = config.web.uploadTtlSeconds;
  return {
    graceSeconds: config.mail.orphanGraceHours * 3600,
    settleSeconds: config.mail.orphanSettleMinutes * 60,
    uploadTtlSeconds: uploadTtl ?? DEFAULT_UPLOAD_TTL_SECONDS,
    resendLessons: config.spam.controllerUrl !== '',
  };
}

/** Deletes orphaned message blobs; see OrphanSweep for the rules and why they are safe. */
export function sweepOrphanBlobs(storage: Storage, options: SweepOptions = {}): Promise<SweepReport> {
  return new OrphanSweep(storage, options).run();
}

/** A blob a sweep would delete, and whether only quiescence (not the grace) allows it. */
interface Candidate {
  key: string;
  needsQuiet: boolean;
}

/** What refers to a blob: `live` (keep it), `none` (an orphan candidate), or `stale` with the
 * holders whose holds are the only references left. */
type References = { kind: 'live' | 'none' } | { kind: 'stale'; holders: string[] };

const HOLD = 'HOLD#';

/**
 * One sweep over the mail store, one method per step: list the candidates a page at a time
 * (`sweepPrefix`, `judge`), check what refers to each (`references`, `holdIsLive`), the settle
 * time (`settled`), whether the queues are empty (`queuesEmpty`), delete (`deleteBatch`,
 * `releaseStale`) and report (`finish`). Used once.
 *
 * A blob is kept while anything may still refer to it:
 * - a `BLOBREF#<key>` item: the mailbox reference count (`META`, written in the same transaction
 *   as the mailbox entries, core/mailbox/store.ts) or a hold of a job still working on it;
 * - an active `OUT#<id>` record naming it (it implies a hold; checked only without `BLOBREF#`);
 * - a queued job. The Queues port cannot be searched, so this is covered by time: an
 *   unreferenced blob past `graceSeconds` (15 days: SQS keeps a message at most 14) can have no
 *   live job, and a younger one may go only while every queue, dead-letter queues included, is
 *   empty (quiescence: read at the start and again before every batch of deletions).
 * Either way a blob goes only once a sweep has seen it complete and unreferenced `settleSeconds`
 * earlier (see `settled`), which closes the race with the SMTP accept path.
 *
 * Uploads (`upload/`) are judged by their own clock: one younger than `uploadTtlSeconds` is kept
 * even when the queues are empty (a JMAP client may still import it), one older that nothing
 * refers to goes whatever the queues hold. That is safe because no job names an upload without a
 * reference: an Email made from it holds a `BLOBREF#` count from the transaction that files it,
 * and a submission of that Email holds the blob as the outbound worker does for any message.
 */
class OrphanSweep {
  private readonly now: () => Date;
  private readonly graceMs: number;
  private readonly settleMs: number;
  private readonly uploadTtlMs: number;
  private readonly dryRun: boolean;
  private readonly resendLessons: boolean;
  private readonly pageSize: number;
  private readonly started: Date;
  private readonly t0 = performance.now();
  /** `in/<yyyymmdd>/` day folders after this one are younger than the grace. */
  private readonly cutoffDay: string;
  private readonly store: MailboxStore;
  /** The queues were empty at the last look: unreferenced blobs younger than the grace may go. */
  private quiescent = false;
  private readonly report: SweepReport;

  constructor(
    private readonly storage: Storage,
    private readonly options: SweepOptions,
  ) {
    this.now = options.now ?? (() => new Date());
    this.graceMs = (options.graceSeconds ?? 360 * 3600) * 1000;
    this.settleMs = (options.settleSeconds ?? 900) * 1000;
    this.uploadTtlMs = (options.uploadTtlSeconds ?? DEFAULT_UPLOAD_TTL_SECONDS) * 1000;
    this.dryRun = options.dryRun ?? false;
    this.resendLessons = options.resendLessons ?? true;
    this.pageSize = options.pageSize ?? 1000;
    this.started = this.now();
    this.cutoffDay = new Date(this.started.getTime() - this.graceMs).toISOString().slice(0, 10).replace(/-/g, '');
    this.store = new MailboxStore(storage.tables, storage.mail, { now: this.now });
    this.report = {
      startedAt: this.started.toISOString(),
      dryRun: this.dryRun,
      quiescent: false,
      scanned: 0,
      deleted: 0,
      keptReferenced: 0,
      releasedHolds: 0,
      keptYoung: 0,
      marked: 0,
      deletedKeys: [],
      resentLessons: 0,
      complete: true,
      ms: 0,
    };
  }

  async run(): Promise<SweepReport> {
    // Lessons first: a blob they name is not referenced by them (only by its folders).
    if (!this.dryRun && this.resendLessons) this.report.resentLessons = await resendLessons(this.storage.tables, this.storage.queues, this.now());
    this.quiescent = this.report.quiescent = await this.queuesEmpty();
    try {
      for (const { prefix, kind } of SWEEP_PREFIXES) if (!(await this.sweepPrefix(prefix, kind))) break;
    } finally {
      this.finish();
    }
    const { deletedKeys: _keys, ...summary } = this.report;
    this.options.log?.info(summary, this.dryRun ? 'orphan sweep (dry run)' : 'orphan sweep');
    return this.report;
  }

  /** No queue has a message visible, in flight or delayed, so no job exists at all. SQS's counts
   * are approximate and may lag by about a minute; the settle time covers that lag too. */
  private async queuesEmpty(): Promise<boolean> {
    const stats = await Promise.all(QUEUES.map((q) => this.storage.queues.stats(q)));
    return stats.every((s) => s.visible === 0 && s.inFlight === 0 && s.delayed === 0);
  }

  /**
   * Lists one prefix a page at a time (memory bounded), judging each blob and deleting a page's
   * candidates together. False when stopped by the signal: the page's candidates are marked, the
   * next sweep takes them.
   */
  private async sweepPrefix(prefix: string, kind: SweepKind): Promise<boolean> {
    let cursor: string | undefined;
    do {
      const page = await this.storage.mail.list(prefix, { limit: this.pageSize, cursor });
      cursor = page.cursor;
      const batch: Candidate[] = [];
      for (const blob of page.items) {
        if (this.options.signal?.aborted) {
          this.report.complete = false;
          return false;
        }
        if (!this.quiescent && this.tooYoungDay(blob.key)) {
          // What is skipped is only kept: the rest of the prefix is younger still.
          await this.deleteBatch(batch);
          return true;
        }
        const c = await this.judge(blob, kind);
        if (c) batch.push(c);
      }
      await this.deleteBatch(batch);
    } while (cursor);
    return true;
  }

  /** `in/<yyyymmdd>/` keys list oldest day first and a key's day is its DATA's start, never after
   * its blob's LastModified: while the queues have work, the first day past the grace cut-off ends the
   * prefix, so a busy system's sweep reads only the old tail. */
  private tooYoungDay(key: string): boolean {
    const m = /^in\/(\d{8})\//.exec(key);
    return m !== null && m[1] > this.cutoffDay;
  }

  /** Counts one listed blob and returns it as a candidate when it may be deleted. */
  private async judge(blob: BlobInfo, kind: SweepKind): Promise<Candidate | undefined> {
    const report = this.report;
    report.scanned++;
    const modified = blob.lastModified?.getTime();
    // Written (or rewritten) since the sweep began, or of unknown age: not ours to judge.
    if (modified === undefined || modified > this.started.getTime()) {
      report.keptYoung++;
      return undefined;
    }
    if (kind === 'spool') {
      // No job, record or mailbox ever names a spool key (the SMTP transaction that wrote it
      // copies it to its `in/` key and deletes it), so only the settle time applies.
      if (await this.settled(blob)) return { key: blob.key, needsQuiet: false };
      report.keptYoung++;
      return undefined;
    }
    const age = this.started.getTime() - modified;
    const pastGrace = kind === 'upload' ? age >= this.uploadTtlMs : age >= this.graceMs;
    // An upload within its TTL is kept even in a quiet moment: a client may still use its blobId.
    if (!pastGrace && (!this.quiescent || kind === 'upload')) {
      report.keptYoung++;
      return undefined;
    }
    const refs = await this.references(blob.key);
    if (refs.kind === 'stale') {
      await this.releaseStale(blob.key, refs.holders);
      return undefined;
    }
    if (refs.kind === 'live') {
      report.keptReferenced++;
      return undefined;
    }
    if (await this.settled(blob)) return { key: blob.key, needsQuiet: !pastGrace };
    report.keptYoung++;
    return undefined;
  }

  /** What refers to a blob (see the class comment). */
  private async references(key: string): Promise<References> {
    const { tables } = this.storage;
    const page = await tables.query(mailboxKeys.blobRef(key).pk, { limit: 50 });
    if (page.items.length > 0) {
      const meta = page.items.find((i) => i.sk === 'META');
      const holds = page.items.filter((i) => i.sk.startsWith(HOLD));
      // Mailbox entries (refs beyond the holds), a partition too big for one page, or counts that
      // do not add up: kept, never guessed at.
      if (page.cursor || !meta || Number(meta.refs ?? 0) !== holds.length || holds.length === 0) return { kind: 'live' };
      for (const h of holds) if (await this.holdIsLive(h)) return { kind: 'live' };
      return { kind: 'stale', holders: holds.map((h) => h.sk.slice(HOLD.length)) };
    }
    const id = outboundId(key);
    if (id === undefined) return { kind: 'none' };
    const out = await tables.get({ pk: `OUT#${id}`, sk: 'META' });
    if (out && out.status === 'active' && out.blobKey === key) {
      this.options.log?.warn({ key, id }, 'an active outbound message has no hold on its blob; kept');
      return { kind: 'live' };
    }
    return { kind: 'none' };
  }

  /**
   * Whether a hold's holder can still release it itself. A hold whose holder cannot keeps its blob
   * for ever: the outbound worker (and `queue delete`) marks its record finished and then releases
   * its hold, and a crash in between is not redone; an inbound job that ended in a dead-letter
   * queue, or a killed import, keeps its hold too. So `outbound:<id>` is stale when its record is
   * finished and the hold older than the settle time, or the record is gone and the hold older
   * than the grace; `inbound:` and `import:` holds when older than the grace; others never.
   */
  private async holdIsLive(hold: Item): Promise<boolean> {
    const holder = hold.sk.slice(HOLD.length);
    const at = typeof hold.at === 'string' ? Date.parse(hold.at) : NaN;
    if (Number.isNaN(at)) return true;
    const age = this.started.getTime() - at;
    if (holder.startsWith('outbound:')) {
      const out = await this.storage.tables.get({ pk: `OUT#${holder.slice('outbound:'.length)}`, sk: 'META' });
      if (!out) return age < this.graceMs;
      return !((out.status === 'done' || out.status === 'deleted') && age >= this.settleMs);
    }
    if (holder.startsWith('inbound:') || holder.startsWith('import:')) return age < this.graceMs;
    return true;
  }

  /** Releases stale holds (only when no mailbox refers to the blob); MailboxStore.releaseBlob
   * deletes the blob with the last of them. */
  private async releaseStale(key: string, holders: string[]): Promise<void> {
    this.report.releasedHolds += holders.length;
    if (!this.dryRun) for (const h of holders) await this.store.releaseBlob(key, h);
    this.options.log?.info({ key, holders, dryRun: this.dryRun }, 'stale holds released');
    this.countDeleted(key);
  }

  /**
   * True when a sweep saw this very blob unreferenced at least the settle time ago; marks it
   * otherwise (`SWEEP#<key>` / `SEEN`, with the blob's LastModified so that a re-created key
   * starts over). Why: between `mail.put` resolving and `queues.send` resolving a fresh blob is
   * unreferenced and the queues may be empty, and its age does not protect it (on S3 a multipart
   * upload's LastModified is its start). A sighting comes after the put completed and the job is
   * sent one queue call later, so after the settle time the job is queued or done. With
   * `settleSeconds: 0` (the soak, `--settle-minutes 0`) a blob goes on first sight: only safe
   * when no listener or worker runs, which the operator asserts.
   */
  private async settled(blob: BlobInfo): Promise<boolean> {
    const { tables } = this.storage;
    const startedMs = this.started.getTime();
    const modified = blob.lastModified?.getTime() ?? 0;
    const mark: Item | undefined = await tables.get(markKey(blob.key));
    if (mark && mark.blobModified === modified && typeof mark.at === 'number') return startedMs - mark.at >= this.settleMs;
    this.report.marked++;
    if (!this.dryRun) {
      await tables.put({
        ...markKey(blob.key),
        at: startedMs,
        blobModified: modified,
        ttl: Math.floor(startedMs / 1000) + MARK_TTL_SECONDS + Math.ceil(this.settleMs / 1000),
      });
    }
    return this.settleMs === 0;
  }

  /** Deletes one page's candidates, each re-checked right before its delete (a reference
   * written since the scan wins). */
  private async deleteBatch(batch: Candidate[]): Promise<void> {
    // Read at every page, so a sweep that began in a quiet moment stops querying every blob soon
    // after work arrives, and right before deletions that only quiescence allows.
    if (this.quiescent && !(await this.queuesEmpty())) {
      this.quiescent = false;
      this.options.log?.info('the queues have work now; the sweep continues with the grace rule only');
    }
    for (const c of batch) {
      if (c.needsQuiet && !this.quiescent) {
        this.report.keptYoung++;
        continue;
      }
      if ((await this.references(c.key)).kind !== 'none') {
        this.report.keptReferenced++;
        continue;
      }
      if (!this.dryRun) {
        await this.storage.mail.delete(c.key);
        await this.storage.tables.delete(markKey(c.key));
      }
      this.countDeleted(c.key);
    }
  }

  private countDeleted(key: string): void {
    this.report.deleted++;
    if (this.report.deletedKeys.length < MAX_LISTED_KEYS) this.report.deletedKeys.push(key);
  }

  /** Completes the report's time and counts the outcomes on the metric. */
  private finish(): void {
    const report = this.report;
    report.ms = Math.round(performance.now() - this.t0);
    if (this.options.metrics) {
      const c = sweepCounter(this.options.metrics);
      c.inc({ outcome: this.dryRun ? 'would-delete' : 'deleted' }, report.deleted);
      c.inc({ outcome: 'referenced' }, report.keptReferenced);
      c.inc({ outcome: 'young' }, report.keptYoung);
    }
  }
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
