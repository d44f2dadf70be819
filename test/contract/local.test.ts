/**
 * The storage contract against the local family (files + SQLite in a temp data folder), plus
 * what only the local family promises: key validation, stale receipts, orphan cleanup, the
 * on-disk layout and an injected clock.
 */
import { describeStorageContract } from './suite.js';
import { tempDir } from '../support/tmp.js';

describeStorageContract('local', async () => {
  const dir = await tempDir('tomlinson-contract-');
  return {
    env: { TOMLINSON_DATA_DIR: dir.path, TOMLINSON_STORAGE: 'local', TOMLINSON_QUEUE_MAX_RECEIVES: '2', TOMLINSON_LOG_LEVEL: 'silent' },
    cleanup: dir.remove,
  };
});
