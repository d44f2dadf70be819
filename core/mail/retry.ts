/**
 * The outbound retry policy: when to try a deferred recipient again and when to give up. Pure,
 * with an injectable clock and a versioned serialisation (STYLE.md example 7), so the worker, the
 * CLI and the tests compute the same answers from the same stored state.
 */

/** Options of a RetrySchedule. */
export interface RetryOptions {
  /** Seconds to wait after attempt 1, 2, 3, ...; the last entry repeats. @default [300, 600, 1200, 1800] */
  schedule?: number[];
  /** A temporary failure older than this becomes permanent. @default 432000 (5 days) */
  maxAgeSeconds?: number;
  /** Send a delay notice (RFC 3464 action=delayed) once the message is this old; 0: never. @default 14400 */
  delayNoticeSeconds?: number;
  /** Injectable clock. @default () => new Date() */
  now?: () => Date;
}

/** What to do with a recipient after a temporary failure. */
export type RetryDecision = { kind: 'retry'; at: Date; afterSeconds: number } | { kind: 'expire'; reason: string };

/** The serialised form, versioned so that stored state can change shape later. */
export interface RetryScheduleObject {
  v: 1;
  schedule: number[];
  maxAgeSeconds: number;
  delayNoticeSeconds: number;
}

/** Default waits: about 5, 10, 20 minutes, then every 30 minutes (issue 7). */
export const DEFAULT_RETRY_SCHEDULE = [300, 600, 1200, 1800];
/** Default maximum age: 5 days, then a temporary failure becomes permanent. */
export const DEFAULT_MAX_AGE_SECONDS = 5 * 86400;
/** Default age of a message at which one delay notice goes out: 4 hours. */
export const DEFAULT_DELAY_NOTICE_SECONDS = 4 * 3600;

/** The retry schedule of outbound delivery. */
export class RetrySchedule {
  readonly schedule: number[];
  readonly maxAgeSeconds: number;
  readonly delayNoticeSeconds: number;
  private readonly clock: () => Date;

  constructor(options: RetryOptions = {}) {
    const schedule = options.schedule ?? DEFAULT_RETRY_SCHEDULE;
    if (schedule.length === 0 || schedule.some((s) => !Number.isFinite(s) || s < 1)) {
      throw new RangeError(`retry schedule needs positive seconds, got ${JSON.stringify(schedule)}`);
    }
    this.schedule = [...schedule];
    this.maxAgeSeconds = options.maxAgeSeconds ?? DEFAULT_MAX_AGE_SECONDS;
    this.delayNoticeSeconds = options.delayNoticeSeconds ?? DEFAULT_DELAY_NOTICE_SECONDS;
    this.clock = options.now ?? (() => new Date());
  }

  /** The current time of this schedule's clock. */
  now(): Date {
    return this.clock();
  }

  /** Seconds to wait after the given attempt number (1-based); the last entry repeats. */
  waitAfter(attempt: number): number {
    const i = Math.max(0, Math.min(attempt - 1, this.schedule.length - 1));
    return this.schedule[i];
  }

  /** Seconds since the message was accepted. */
  ageSeconds(receivedAt: Date): number {
    return Math.max(0, (this.clock().getTime() - receivedAt.getTime()) / 1000);
  }

  /**
   * After a temporary failure on attempt `attempts` (1-based) of a message accepted at
   * `receivedAt`: retry later, or give up because the message is too old. The next attempt is
   * never placed after the expiry time, so the last try happens at the maximum age.
   */
  afterTemporaryFailure(attempts: number, receivedAt: Date): RetryDecision {
    const now = this.clock().getTime();
    const expiresAt = receivedAt.getTime() + this.maxAgeSeconds * 1000;
    if (now >= expiresAt) {
      return { kind: 'expire', reason: `gave up after ${Math.round(this.ageSeconds(receivedAt))} seconds (maximum age ${this.maxAgeSeconds})` };
    }
    const at = Math.min(now + this.waitAfter(attempts) * 1000, expiresAt);
    return { kind: 'retry', at: new Date(at), afterSeconds: Math.max(1, Math.ceil((at - now) / 1000)) };
  }

  /** True when a delay notice is due for a message of this age that has not had one. */
  delayNoticeDue(receivedAt: Date): boolean {
    return this.delayNoticeSeconds > 0 && this.ageSeconds(receivedAt) >= this.delayNoticeSeconds;
  }

  /** The versioned serialisation. */
  toObject(): RetryScheduleObject {
    return { v: 1, schedule: [...this.schedule], maxAgeSeconds: this.maxAgeSeconds, delayNoticeSeconds: this.delayNoticeSeconds };
  }

  /** Rebuilds a schedule from toObject(); throws on an unknown version. */
  static fromObject(o: RetryScheduleObject, now?: () => Date): RetrySchedule {
    if (!o || o.v !== 1) throw new TypeError(`unknown retry schedule version ${JSON.stringify((o as { v?: unknown })?.v)}`);
    return new RetrySchedule({ schedule: o.schedule, maxAgeSeconds: o.maxAgeSeconds, delayNoticeSeconds: o.delayNoticeSeconds, now });
  }
}
