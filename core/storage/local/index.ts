/**
 * The local adapter family (the embedded default): everything under `config.dataDir`:
 * `blobs/mail/`, `blobs/cache/` (files) and `tomlinson.db` (SQLite: tables and queues), all
 * readable by the owner only (private.ts).
 */
import { join } from 'node:path';
import type { Config } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Storage } from '../ports.js';
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
  /** Another thread of this process opens the same data folder (containers/worker-host.ts). @default none */
  sharing?: SqliteSharing;
}

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
  const store = new SqliteStore(dbPath, slog, options.sqliteDurability, {}, options.sharing);
  const tables = new SqliteTables(store, now);
  const queues = new SqliteQueues(store, { maxReceives: config.storage.queueMaxReceives, now, channel: options.sharing ? `tomlinson-queues:${dbPath}` : undefined });

  let closed = false;
  const purgeMs = options.purgeIntervalMs ?? 60_000;
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
    family: 'local',
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
