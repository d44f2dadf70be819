/**
 * The one place that picks a storage adapter family from configuration (STYLE.md example 9).
 */
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { LocalStorageOptions } from './local/index.js';
import type { Storage, ThreadHandover } from './ports.js';

/** Options of openStorage. */
export interface OpenStorageOptions {
  /** Open on a worker thread the store another thread's `forWorkerThread()` handed over. @default none */
  thread?: ThreadHandover;
  /** Options of the local family only (tests and tools). */
  local?: LocalStorageOptions;
}

/** Opens the adapters that `config.storage.driver` names. */
export async function openStorage(config: Config, log: Logger, options: OpenStorageOptions = {}): Promise<Storage> {
  if (config.storage.driver === 'aws') {
    const { openAwsStorage } = await import('./aws/index.js');
    return openAwsStorage(config, log);
  }
  const { openLocalStorage } = await import('./local/index.js');
  return openLocalStorage(config, log, { ...options.local, ...(options.thread ? { thread: options.thread } : {}) });
}
