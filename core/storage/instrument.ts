/**
 * Wraps the storage ports once, at dispatch, so that every call is timed into the
 * `tomlinson_storage_seconds` histogram by port, operation and outcome (STYLE.md example 9).
 */
import type { Metrics } from '../metrics.js';
import { isStorageError, type Storage } from './ports.js';

function wrap<T extends object>(target: T, port: string, metrics: Metrics): T {
  return new Proxy(target, {
    get(obj, prop, receiver) {
      const value = Reflect.get(obj, prop, receiver) as unknown;
      if (typeof value !== 'function' || typeof prop !== 'string' || prop === 'close') return value;
      return (...args: unknown[]) => {
        const end = metrics.storageLatency.startTimer({ port, op: prop });
        let result: unknown;
        try {
          result = (value as (...a: unknown[]) => unknown).apply(obj, args);
        } catch (e) {
          end({ outcome: isStorageError(e) ? e.code : 'error' });
          throw e;
        }
        if (result instanceof Promise) {
          return result.then(
            (v) => {
              end({ outcome: 'ok' });
              return v;
            },
            (e: unknown) => {
              end({ outcome: isStorageError(e) ? e.code : 'error' });
              throw e;
            },
          );
        }
        end({ outcome: 'ok' });
        return result;
      };
    },
  });
}

/** The same Storage, with every port call timed. */
export function instrumentStorage(storage: Storage, metrics: Metrics): Storage {
  return {
    capabilities: storage.capabilities,
    forWorkerThread: () => storage.forWorkerThread(),
    mail: wrap(storage.mail, 'mail', metrics),
    cache: wrap(storage.cache, 'cache', metrics),
    tables: wrap(storage.tables, 'tables', metrics),
    queues: wrap(storage.queues, 'queues', metrics),
    check: () => storage.check(),
    close: () => storage.close(),
  };
}
