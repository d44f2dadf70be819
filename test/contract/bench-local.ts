/**
 * A quick micro-benchmark of the local storage family (not a test): 10 KB blob puts with fsync,
 * queue send+receive+delete, and table puts, each with a given number of concurrent callers, as
 * an SMTP listener and its workers would issue them. Run: `npx tsx test/contract/bench-local.ts [seconds] [concurrency] [full|wal-fsync]`.
 */
import { randomBytes } from 'node:crypto';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import { tempDir } from '../support/tmp.js';

const seconds = Number(process.argv[2] ?? 3);
const concurrency = Number(process.argv[3] ?? 32);
const durability = (process.argv[4] ?? 'wal-fsync') as 'full' | 'wal-fsync';

async function measure(name: string, op: (i: number) => Promise<unknown>): Promise<void> {
  let n = 0;
  const end = Date.now() + seconds * 1000;
  const started = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) await op(n++);
    }),
  );
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  console.log(`${name.padEnd(40)} ${(n / secs).toFixed(0).padStart(7)} ops/s   cpu ${(((cpu.user + cpu.system) / 1e6 / secs) * 100).toFixed(0)}%`);
}

const dir = await tempDir('tomlinson-bench-');
try {
  const storage = await openLocalStorage(loadConfig({ TOMLINSON_DATA_DIR: dir.path }), silentLogger, { sqliteDurability: durability });
  const body = randomBytes(10 * 1024);
  console.log(`local storage, ${concurrency} concurrent callers, ${seconds} s each, sqlite durability ${durability}`);
  await measure('blob put 10 KB (fsync file + dir)', (i) => storage.mail.put(`bench/${i}.eml`, body, { maxBytes: 1 << 20 }));
  await measure('blob put 10 KB + queue send (= one SMTP accept)', async (i) => {
    await storage.mail.put(`bench2/${i}.eml`, body);
    await storage.queues.send('inbound', JSON.stringify({ v: 1, id: String(i), blobKey: `bench2/${i}.eml` }));
  });
  await measure('queue send + receive + delete (per message)', async (i) => {
    await storage.queues.send('outbound', `job ${i}`);
    const [m] = await storage.queues.receive('outbound', { max: 1, visibilitySeconds: 60 });
    if (m) await storage.queues.delete('outbound', m.receipt);
  });
  await measure('table put (conditional, exists: false)', (i) =>
    storage.tables.put({ pk: `MBX#u${i % 100}`, sk: `UID#${i}`, size: 1000 }, { condition: { exists: false } }),
  );
  await measure('table update (counter)', (i) => storage.tables.update({ pk: `MBX#u${i % 100}`, sk: 'META' }, { add: { count: 1, bytes: 1000 } }));
  await measure('table get', (i) => storage.tables.get({ pk: `MBX#u${i % 100}`, sk: 'META' }));
  await storage.close();
} finally {
  await dir.remove();
}
