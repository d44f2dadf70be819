/**
 * The local adapter family (the embedded default): everything under `config.dataDir`:
 * `blobs/mail/`, `blobs/cache/` (files) and `tomlinson.db` (SQLite: tables and queues), all
 * readable by the owner only (private.ts).
 */
import { join } from 'node:path';
import type { Config } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Storage, StorageCapabilities, ThreadHandover } from '../ports.js';
import { FsBlobs } from './fs-blobs.js';
import { securePrivateFolder } from './private.js';
import { SqliteStore, type SqliteSharing } from './sqlite.js';
import { SqliteQueues } from './sqlite-queues.js';
import { SqliteTables } from './sqlite-tables.js';

export { FsBlobs } from './fs-blobs.js';
export { SqliteQueues } from './sqlite-queues.js';
export { SqliteTables } from './sqlite-tables.js';

/** Options for tests and tools; production passes none. */
export interface LocalStorageOptions {
  /** Clock for expiry, visibility and delays, in ms since the epoch. @default Date.now */
  now?: () => number;
  /** How often expired table items are deleted (reads ignore them anyway); 0 turns it off. @default 60000 */
  purgeIntervalMs?: number;
  /** How SQLite commits are made durable; see sqlite.ts. @default 'wal-fsync' */
  sqliteDurability?: 'full' | 'wal-fsync';
  /** Open the store another thread handed over (`forWorkerThread`); set by open.ts. @default none */
  thread?: ThreadHandover;
}

/** What the local family's ThreadHandover holds: the database's shared counters (sqlite.ts). */
type LocalHandover = Pick<SqliteSharing, 'commits' | 'releases'> & { family: 'local' };

/** One process owns the data folder; reads are local; a receive sees every visible message. */
const LOCAL_CAPABILITIES: StorageCapabilities = { sharedBetweenProcesses: false, costlyReads: false, listingWaitSeconds: 0 };

/** Opens the local storage family in `config.dataDir`, creating what is missing. */
export async function openLocalStorage(config: Config, log: Logger, options: LocalStorageOptions = {}): Promise<Storage> {
  const slog = log.child({ c: 'storage', family: 'local' });
  const now = options.now ?? Date.now;
  await securePrivateFolder(config.dataDir, slog);
  const [mail, cache] = await Promise.all([
    FsBlobs.open({ root: join(config.dataDir, 'blobs', 'mail'), log: slog, name: 'mail' }),
    FsBlobs.open({ root: join(config.dataDir, 'blobs', 'cache'), log: slog, name: 'cache' }),
  ]);
  const dbPath = join(config.dataDir, 'tomlinson.db');
  const channel = `tomlinson-queues:${dbPath}`;
  // A store opened from a handover leaves checkpoints and the purge to the store that made it.
  const handed = options.thread as unknown as LocalHandover | undefined;
  if (handed && handed.family !== 'local') throw new Error('a storage thread handover of another family');
  const store = new SqliteStore(
    dbPath,
    slog,
    options.sqliteDurability,
    {},
    handed ? { commits: handed.commits, releases: handed.releases, checkpoints: false } : undefined,
  );
  const tables = new SqliteTables(store, now);
  const queues = new SqliteQueues(store, { maxReceives: config.storage.queueMaxReceives, now, channel: handed ? channel : undefined });

  let closed = false;
  const purgeMs = handed ? 0 : (options.purgeIntervalMs ?? 60_000);
  let purging = false;
  const timer =
    purgeMs > 0
      ? setInterval(() => {
          if (purging || closed) return;
          purging = true;
          // Up to 20 rounds of 1000 per tick, so a backlog drains without one long transaction.
          const purge = async () => {
            let total = 0;
            for (let round = 0; round < 20 && !closed; round++) {
              const n = await tables.purgeExpired();
              total += n;
              if (n < 1000) break;
            }
            return total;
          };
          purge()
            .then((n) => n && slog.debug({ purged: n }, 'purged expired items'))
            .catch((e: unknown) => slog.warn({ err: (e as Error).message }, 'purging expired items failed'))
            .finally(() => (purging = false));
        }, purgeMs)
      : undefined;
  timer?.unref();
  slog.info({ dataDir: config.dataDir }, 'local storage open');

  return {
    capabilities: LOCAL_CAPABILITIES,
    forWorkerThread() {
      // Both threads hold a connection to the one SQLite file (WAL; SQLite serialises their
      // commits). This store keeps the checkpoints and counts the other's commits; a send on one
      // thread wakes a long poll on the other through the queues' BroadcastChannel.
      const counters = store.shareWithThread();
      queues.shareAcrossThreads(channel);
      const handover: LocalHandover = { family: 'local', ...counters };
      return handover as unknown as ThreadHandover;
    },
    mail,
    cache,
    tables,
    queues,
    async check() {
      const [m, c] = await Promise.all([mail.check(), cache.check()]);
      const db = store.check();
      return { mail: m, cache: c, tables: db, queues: db };
    },
    async close() {
      if (closed) return;
      closed = true;
      if (timer) clearInterval(timer);
      await queues.close();
      await store.close();
      await Promise.all([mail.close(), cache.close()]);
      slog.info('local storage closed');
    },
  };
}
