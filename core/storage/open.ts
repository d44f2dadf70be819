/**
 * The one place that picks a storage adapter family from configuration (STYLE.md example 9).
 */
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { LocalStorageOptions } from './local/index.js';
import type { Storage } from './ports.js';

/** Opens the adapters that `config.storage.driver` names; `local` options apply to the local family only. */
export async function openStorage(config: Config, log: Logger, options: { local?: LocalStorageOptions } = {}): Promise<Storage> {
  if (config.storage.driver === 'aws') {
    const { openAwsStorage } = await import('./aws/index.js');
    return openAwsStorage(config, log);
  }
  const { openLocalStorage } = await import('./local/index.js');
  return openLocalStorage(config, log, options.local);
}
