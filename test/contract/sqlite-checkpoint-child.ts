/**
 * A child for the checkpoint crash test (sqlite-checkpoint.test.ts): opens a SqliteStore at
 * argv[2] with a checkpointer that truncates the WAL every few frames, then commits durable rows
 * as fast as it can, several at a time, printing each row's id once its write resolved. The
 * parent SIGKILLs it at some point. With `sequential N` it writes N rows one at a time, closes
 * and prints `DONE N <truncates>`.
 */
import { silentLogger } from '../../core/log.js';
import { SqliteStore } from '../../core/storage/local/sqlite.js';

// Sequential: a WAL restart (and its pause) after every checkpoint; else also restarts by commits.
const store = new SqliteStore(process.argv[2], silentLogger, 'wal-fsync', {
  intervalMs: 5,
  restartFrames: process.argv[4] === 'sequential' ? 0 : 32,
  idleMs: 20,
});
store.db.exec('CREATE TABLE IF NOT EXISTS acked (id INTEGER PRIMARY KEY, pad TEXT NOT NULL)');
const insert = store.db.prepare('INSERT INTO acked (id, pad) VALUES (?, ?)');
const start = Number(process.argv[3]);
const pad = 'x'.repeat(600);
if (process.argv[4] === 'sequential') {
  // One write at a time, nothing else alive: during a pause of commits the only thing this
  // process waits for is the checkpoint worker's answer.
  const n = Number(process.argv[5]);
  for (let id = start; id < start + n; id++) await store.write(() => insert.run(id, pad));
  await store.close();
  process.stdout.write(`DONE ${n} ${store.checkpointStats()!.truncates}\n`);
  process.exit(0);
}
let next = start;
process.stdout.write('READY\n');
for (;;) {
  const ids = [next++, next++, next++, next++];
  await Promise.all(ids.map((id) => store.write(() => insert.run(id, pad)).then(() => process.stdout.write(`${id}\n`))));
}
