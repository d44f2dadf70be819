/**
 * Group commit for fsync: many writers waiting for the same file or folder share one fsync.
 */
import * as fsp from 'node:fs/promises';

interface DirHandle {
  fh: Promise<fsp.FileHandle>;
  /** Syncs in progress on it; it is closed only when evicted and unused. */
  users: number;
  evicted: boolean;
}

function closeHandle(h: DirHandle): void {
  h.fh.then((fh) => fh.close()).catch(() => undefined);
}

/**
 * Coalesces fsyncs of one path (a folder, or SQLite's WAL file): callers that arrive while a sync runs share the next one (group
 * commit), so N concurrent puts into one folder cost about two directory fsyncs, not N.
 */
export class GroupSync {
  private readonly state = new Map<string, { running?: Promise<void>; queued?: Promise<void> }>();
  /** Open handles of recently synced folders (a sync is then one call, not open+fsync+close). */
  private readonly handles = new Map<string, DirHandle>();
  private static readonly MAX_HANDLES = 32;

  /** Resolves once everything written to `path` before this call is on disk. */
  sync(path: string): Promise<void> {
    let st = this.state.get(path);
    if (!st) this.state.set(path, (st = {}));
    const s = st;
    if (s.queued) return s.queued;
    if (!s.running) return (s.running = this.start(path, s));
    const noop = () => undefined;
    s.queued = s.running.then(noop, noop).then(() => {
      s.queued = undefined;
      return (s.running = this.start(path, s));
    });
    return s.queued;
  }

  private start(path: string, s: { running?: Promise<void>; queued?: Promise<void> }): Promise<void> {
    const p: Promise<void> = this.fsync(path).finally(() => {
      if (s.running === p) {
        s.running = undefined;
        if (!s.queued) this.state.delete(path);
      }
    });
    return p;
  }

  private async fsync(path: string): Promise<void> {
    let h = this.handles.get(path);
    if (h) {
      // Most recently used last, so the first entry is the one to evict.
      this.handles.delete(path);
      this.handles.set(path, h);
    } else {
      h = { fh: fsp.open(path, 'r'), users: 0, evicted: false };
      this.handles.set(path, h);
      if (this.handles.size > GroupSync.MAX_HANDLES) {
        const [oldest, old] = this.handles.entries().next().value as [string, DirHandle];
        this.handles.delete(oldest);
        old.evicted = true;
        if (old.users === 0) closeHandle(old);
      }
    }
    const entry = h;
    entry.users++;
    try {
      await (await entry.fh).sync();
    } catch (e) {
      if (this.handles.get(path) === entry) this.handles.delete(path);
      entry.evicted = true;
      throw e;
    } finally {
      entry.users--;
      if (entry.evicted && entry.users === 0) closeHandle(entry);
    }
  }

  /** Closes the cached folder handles. */
  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    for (const h of all) h.evicted = true;
    await Promise.all(all.filter((h) => h.users === 0).map((h) => h.fh.then((fh) => fh.close()).catch(() => undefined)));
  }
}
