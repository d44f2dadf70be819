/**
 * Child process for the "worker killed mid-job" test: receives one inbound job and works it, but
 * SIGKILLs itself right after the first mailbox delivery commits (a real crash, not a throw):
 * the worker's first transaction holds the blob, the second is the first delivery.
 * argv: dataDir
 */
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import { runOne } from '../../core/workers/runner.js';

const config = loadConfig({ TOMLINSON_DATA_DIR: process.argv[2], TOMLINSON_HOSTNAME: 'mx.tomlinson.test' });
const storage = await openLocalStorage(config, silentLogger, { purgeIntervalMs: 0 });
const transact = storage.tables.transact.bind(storage.tables);
let calls = 0;
storage.tables.transact = async (ops) => {
  await transact(ops);
  if (++calls === 2) process.kill(process.pid, 'SIGKILL');
};
const [m] = await storage.queues.receive('inbound', { max: 1, visibilitySeconds: 30, waitSeconds: 0 });
if (!m) {
  console.error('no job');
  process.exit(2);
}
await runOne('inbound', m, inboundJob, { config, storage, log: silentLogger, now: () => new Date() });
console.error('not killed');
process.exit(3);
