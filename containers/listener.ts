/**
 * What every long-lived listener (smtp, pop3, proxy) gives the entry point: its addresses for the
 * start-up message, a health bit for the health endpoint, and a graceful close.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { Storage } from '../core/storage/ports.js';

/** A started listener group. */
export interface RunningListener {
  /** e.g. 'smtp', 'pop3', 'proxy'. */
  name: string;
  /** What it listens on, e.g. ['smtp 127.0.0.1:2525', 'submission 127.0.0.1:2587']. */
  addresses: string[];
  healthy(): boolean;
  /** Stop accepting, let in-flight sessions finish for up to `graceMs`, then close the rest. */
  close(graceMs?: number): Promise<void>;
}

/** What the entry point hands a listener's start function. */
export interface ListenerContext {
  config: Config;
  storage: Storage;
  log: Logger;
  metrics: Metrics;
}
