/**
 * The storage contract against the local family (files + SQLite in a temp data folder). What only
 * the local family promises is tested in local-only.test.ts.
 */
import { tempDir } from '../support/tmp.js';
import { describeStorageContract } from './suite.js';

describeStorageContract('local', async () => {
  const dir = await tempDir('tomlinson-contract-');
  return {
    env: { TOMLINSON_DATA_DIR: dir.path, TOMLINSON_STORAGE: 'local', TOMLINSON_QUEUE_MAX_RECEIVES: '2', TOMLINSON_LOG_LEVEL: 'silent' },
    cleanup: dir.remove,
  };
});
