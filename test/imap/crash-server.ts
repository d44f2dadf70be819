/**
 * The IMAP server process of the crash test (crash.test.ts): `serve imap` as containers/app.ts
 * starts it, on the data folder and ports of the environment, with one addition: once listening it
 * counts the storage writes (table transactions, blob put/delete) and SIGKILLs itself
 * at write number CRASH_AT_WRITE, just before the write (CRASH_WHEN=before) or just after it
 * returned (CRASH_WHEN=after). That puts the kill inside a MOVE, COPY, APPEND or EXPUNGE at a
 * point a timer would rarely hit: between a blob put and its commit, between two batches, between
 * a commit and the blob delete, between a commit and the OK. CRASH_AT_WRITE=0 never kills.
 * Prints READY on stdout once it accepts connections.
 */
import { loadConfig } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import type { Storage } from '../../core/storage/ports.js';
import { startApp } from '../../containers/app.js';

const killAt = Number(process.env.CRASH_AT_WRITE ?? 0);
const after = process.env.CRASH_WHEN === 'after';
let armed = false;
let writes = 0;

const die = (): never => {
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
};

/** The same object with `methods` counted as writes. */
function counting<T extends object>(target: T, methods: string[]): T {
  return new Proxy(target, {
    get(obj, prop, receiver) {
      const v = Reflect.get(obj, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(obj);
      if (typeof prop !== 'string' || !methods.includes(prop)) return fn;
      return async (...args: unknown[]) => {
        const n = armed ? ++writes : 0;
        if (n === killAt && !after) die();
        try {
          return await fn(...args);
        } finally {
          // Also after a write that failed (a lost condition race, say): it still happened.
          if (n === killAt && after) die();
        }
      };
    },
  });
}

function wrap(storage: Storage): Storage {
  // Only the writes that make up the operations: a single-item put or update is a counter, a
  // lazily made field or the change log's watermark, which reads (SELECT, FETCH) write too.
  const tables = counting(storage.tables, ['transact']);
  const mail = counting(storage.mail, ['put', 'delete']);
  return new Proxy(storage, {
    get(obj, prop, receiver) {
      if (prop === 'tables') return tables;
      if (prop === 'mail') return mail;
      const v = Reflect.get(obj, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(obj) : v;
    },
  });
}

const config = loadConfig(process.env);
await startApp(config, ['imap'], createLogger({ level: config.log.level, pretty: false }), { wrapStorage: wrap });
armed = true;
process.stdout.write('READY\n');
