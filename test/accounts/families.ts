/**
 * Opens the storage of each adapter family for the account and mailbox model tests: local (temp
 * folder) and aws (moto's server, started by test/support/moto.ts).
 */
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { startMoto } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';

/** An opened storage and how to get rid of it. */
export interface FamilyTarget {
  storage: Storage;
  cleanup(): Promise<void>;
}

/** Each family by name, with its setup. */
export const FAMILIES: { name: 'local' | 'aws'; open: () => Promise<FamilyTarget> }[] = [
  {
    name: 'local',
    async open() {
      const dir = await tempDir('tomlinson-accounts-');
      const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: dir.path }), silentLogger);
      return {
        storage,
        async cleanup() {
          await storage.close();
          await dir.remove();
        },
      };
    },
  },
  {
    name: 'aws',
    async open() {
      const moto = await startMoto({ say: () => undefined });
      const storage = await openStorage(loadConfig(moto.env), silentLogger);
      return {
        storage,
        async cleanup() {
          await storage.close();
          await moto.stop();
        },
      };
    },
  },
];
