/**
 * A response body on its way into the cache while it streams to the client (CacheStore.writer):
 * kept in memory up to the memory tier's object limit, then streamed into a blob of the object tier.
 */
import { PassThrough } from 'node:stream';
import type CachePolicy from 'http-cache-semantics';
import { CachedObject } from './entry.js';
import type { CacheStore } from './store.js';

/** Where a body goes while it streams to the client: memory, then a blob once it grows large. */
export class BodyWriter {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private pass: PassThrough | undefined;
  private put: Promise<{ size: number } | undefined> | undefined;
  private state: 'open' | 'done' | 'dropped' = 'open';
  /** Chosen when the body first goes to the object tier (most bodies stay in memory until persisted). */
  private blobKey = '';

  constructor(
    private readonly store: CacheStore,
    private readonly url: string,
    private readonly variant: string,
    private readonly vary: string[],
    private readonly policy: CachePolicy,
    private readonly expectedLength: number | undefined,
  ) {
    if (expectedLength !== undefined && expectedLength > store.maxObjectBytes) this.state = 'dropped';
    else store.writerOpened(this);
  }

  /** False when the caller should wait for `drain()` before writing more. */
  write(chunk: Buffer): boolean {
    if (this.state !== 'open') return true;
    this.bytes += chunk.length;
    if (this.bytes > this.store.maxObjectBytes) {
      this.abort();
      this.state = 'dropped';
      return true;
    }
    if (this.pass) return this.pass.write(chunk);
    this.chunks.push(chunk);
    if (this.bytes > this.store.memoryObjectBytes) {
      // Too big for memory: stream the rest straight into the object tier.
      this.pass = new PassThrough({ highWaterMark: 256 * 1024 });
      this.blobKey = this.store.newBlobKey(this.url, this.variant);
      this.put = this.store.blobs.put(this.blobKey, this.pass, { maxBytes: this.store.maxObjectBytes, durable: false }).then(
        (info) => ({ size: info.size }),
        (e: unknown) => {
          this.store.log.debug({ err: e, url: this.url }, 'cache body not stored');
          return undefined;
        },
      );
      let ok = true;
      for (const c of this.chunks) ok = this.pass.write(c);
      this.chunks = [];
      return ok;
    }
    return true;
  }

  /** Resolves when the blob stream can take more. */
  drain(): Promise<void> {
    const p = this.pass;
    if (!p || !p.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        p.off('drain', done);
        p.off('close', done);
        resolve();
      };
      p.once('drain', done);
      p.once('close', done);
    });
  }

  /** The body ended normally: store it if it is complete; resolves to the stored entry. */
  async end(): Promise<CachedObject | undefined> {
    try {
      return await this.finish();
    } finally {
      this.store.writerClosed(this);
    }
  }

  private async finish(): Promise<CachedObject | undefined> {
    if (this.state !== 'open') return undefined;
    this.state = 'done';
    // RFC 9111 §3.1: a response whose body was cut short is incomplete and is not stored as complete.
    if (this.expectedLength !== undefined && this.expectedLength !== this.bytes) {
      this.abort();
      return undefined;
    }
    const storedAt = this.store.now();
    if (!this.pass) {
      const body = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.bytes);
      this.chunks = [];
      const obj = new CachedObject(this.url, this.variant, this.vary, this.policy, body.length, storedAt, body);
      this.store.adopt(obj);
      return obj;
    }
    this.pass.end();
    const info = await this.put;
    if (!info || info.size !== this.bytes) return undefined;
    const obj = new CachedObject(this.url, this.variant, this.vary, this.policy, info.size, storedAt, undefined, this.blobKey);
    await this.store.writeRecord(obj);
    return obj;
  }

  /** The body was cut short (client or origin): nothing is stored. */
  abort(): void {
    this.store.writerClosed(this);
    if (this.state === 'dropped') return;
    this.state = 'dropped';
    this.chunks = [];
    if (this.pass) this.pass.destroy(new Error('body aborted'));
  }
}
