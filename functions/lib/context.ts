/**
 * The JobContext of a Lambda container, built from its environment (which the processing stack
 * fills with the generated resource names, core/config.ts SETTINGS).
 */
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { JobContext } from '../../core/workers/job.js';

/** Reads the configuration from `env`, opens storage and returns the context every record of the
 * container shares. Logs are JSON lines (CloudWatch), never pretty. */
export async function contextFromEnv(env: NodeJS.ProcessEnv): Promise<JobContext> {
  const config = loadConfig(env);
  const log = createLogger({ level: config.log.level, pretty: false });
  const storage = await openStorage(config, log);
  // A warm container resolves the same few recipients again and again: keep them briefly.
  Accounts.cacheLookups(storage.tables, storage.capabilities.costlyReads ? config.mail.accountCacheSeconds : 0);
  // Lambda has no /metrics scrape; the counters still feed logs and tests. No default metrics:
  // they would start timers in a frozen container.
  return { config, storage, log, metrics: new Metrics({ defaults: false }), now: () => new Date() };
}
