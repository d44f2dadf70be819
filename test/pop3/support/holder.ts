/**
 * A POP3 listener in a process of its own, over the data folder given as argv[2], for the tests
 * that kill a lease holder outright (SIGKILL: no QUIT, no release). Prints `PORT <n>` when ready.
 */
import { loadConfig } from '../../../core/config.js';
import { silentLogger } from '../../../core/log.js';
import { Metrics } from '../../../core/metrics.js';
import { openStorage } from '../../../core/storage/open.js';
import { startPop3 } from '../../../containers/pop3/server.js';

const dir = process.argv[2];
if (!dir) throw new Error('usage: holder.ts DATA_DIR');
const config = loadConfig({
  TOMLINSON_DATA_DIR: dir,
  TOMLINSON_POP3_PORT: '0',
  TOMLINSON_POP3S_PORT: '0',
  TOMLINSON_IMAP_PORT: '0',
  TOMLINSON_IMAPS_PORT: '0',
  TOMLINSON_WEB_PORT: '0',
  TOMLINSON_POP3_LEASE_SECONDS: process.env.LEASE_SECONDS ?? '5',
  TOMLINSON_LOG_LEVEL: 'silent',
});
const storage = await openStorage(config, silentLogger);
const listener = await startPop3({ config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }) });
const plain = listener.addresses.find((a) => a.startsWith('pop3 '))!;
process.stdout.write(`PORT ${plain.slice(plain.lastIndexOf(':') + 1)}\n`);
