/**
 * Serving stored responses: a whole hit from memory in one write, or a stored response with the
 * client's conditionals and Range answered from it (RFC 9111 §4.3.2, RFC 9110 §14), its body from
 * memory or streamed from the object tier.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { CachedObject } from '../../core/cache/entry.js';
import type { PartRange } from '../../core/cache/flow.js';
import type { CacheOutcome, CacheStats } from '../../core/cache/stats.js';
import type { CacheStore } from '../../core/cache/store.js';
import type { Logger } from '../../core/log.js';
import { ifRangeMatches, notModified, parseRange } from './http.js';
import { waitDrain } from './origin.js';
import type { Target } from './origin-requests.js';
import { HIT, type Replies } from './replies.js';

/** What to do when a stored body turns out to be unreadable: fetch the response again. */
export type Refetch = (req: IncomingMessage, res: ServerResponse, target: Target) => void | Promise<void>;

/** Serves what the cache holds. */
export class StoredResponses {
  constructor(
    private readonly store: CacheStore,
    private readonly stats: CacheStats,
    private readonly replies: Replies,
    private readonly log: Logger,
    private readonly refetch: Refetch,
  ) {}

  /**
   * A full 200-style hit with its body in memory and nothing of the client's to answer: the
   * header list is made once per second per entry (only Age and Date change), one write.
   */
  whole(req: IncomingMessage, res: ServerResponse, obj: CachedObject, now: number): void {
    const second = Math.floor(now / 1000);
    let lines = obj.hitLines;
    if (lines === undefined || obj.hitSecond !== second) {
      lines = [];
      obj.servedFields(lines);
      lines.push('via', this.replies.via, 'cache-status', HIT, 'content-length', String(obj.size));
      obj.hitLines = lines;
      obj.hitSecond = second;
    }
    res.writeHead(obj.status, lines);
    if (now - obj.touchedAt >= 60_000) this.store.touch(obj);
    if (!obj.persisted) this.store.used(obj);
    if (req.method === 'HEAD') {
      res.end();
      this.stats.record('hit', 0, 0);
    } else {
      res.end(obj.body);
      this.stats.record('hit', obj.size, 0);
    }
  }

  /**
   * Serves a stored response, answering the client's conditionals and Range from it (`part`: the
   * range of a stored 206 that answers the request); synchronous when the body is in memory, a
   * promise when it streams from the object tier.
   */
  serve(
    req: IncomingMessage,
    res: ServerResponse,
    obj: CachedObject,
    target: Target,
    part: PartRange | undefined,
    cacheStatus: string,
    outcome: CacheOutcome,
  ): void | Promise<void> {
    const h = req.headers;
    this.store.used(obj);
    // A flat name/value list (writeHead's fastest form).
    const out: string[] = [];
    obj.servedFields(out);
    out.push('via', this.replies.via, 'cache-status', cacheStatus);
    if (obj.status === 206) return this.servePart(req, res, obj, target, part, out, outcome);
    if ((h['if-none-match'] !== undefined || h['if-modified-since'] !== undefined) && obj.status === 200) {
      if (notModified(h, obj.etag, obj.header('last-modified'), obj.header('date'))) {
        res.writeHead(304, out);
        res.end();
        this.stats.record(outcome, 0, 0);
        return;
      }
    }
    let range: { start: number; end: number } | undefined;
    if (h.range !== undefined && obj.status === 200 && ifRangeMatches(headerString(h['if-range']), obj.etag, obj.header('last-modified'))) {
      const r = parseRange(headerString(h.range), obj.size);
      if (r.kind === 'unsatisfiable') {
        this.stats.record(outcome, 0, 0);
        return this.replies.short(res, 416, 'range not satisfiable', { 'content-range': `bytes */${obj.size}`, 'cache-status': cacheStatus });
      }
      if (r.kind === 'range') {
        range = { start: r.start, end: r.end };
        out.push('content-range', `bytes ${r.start}-${r.end}/${obj.size}`);
      }
    }
    out.push('content-length', String(range ? range.end - range.start + 1 : obj.size));
    const status = range ? 206 : obj.status;
    if (req.method === 'HEAD') {
      res.writeHead(status, out);
      res.end();
      this.stats.record(outcome, 0, 0);
      return;
    }
    const mem = obj.body;
    if (mem) {
      const body = range ? mem.subarray(range.start, range.end + 1) : mem;
      res.writeHead(status, out);
      res.end(body);
      this.stats.record(outcome, body.length, 0);
      return;
    }
    return this.serveBlob(req, res, obj, target, status, out, range, outcome);
  }

  /** serve for a stored part (206): the requested range of it. */
  private servePart(
    req: IncomingMessage,
    res: ServerResponse,
    obj: CachedObject,
    target: Target,
    r: PartRange | undefined,
    out: string[],
    outcome: CacheOutcome,
  ): void | Promise<void> {
    const part = obj.part;
    // The flow chooses a part only for a request it covers (decideRequest); anything else is fetched.
    if (!r || !part) return this.refetch(req, res, target);
    const n = r.end - r.start + 1;
    out.push('content-range', `bytes ${r.start}-${r.end}/${r.length < 0 ? '*' : r.length}`, 'content-length', String(n));
    const offset = { start: r.start - part.start, end: r.end - part.start };
    const mem = obj.body;
    if (mem) {
      res.writeHead(206, out);
      res.end(mem.subarray(offset.start, offset.end + 1));
      this.stats.record(outcome, n, 0);
      return;
    }
    return this.serveBlob(req, res, obj, target, 206, out, offset, outcome);
  }

  /** The rest of serve for a body in the object tier: streamed from its blob. */
  private async serveBlob(
    req: IncomingMessage,
    res: ServerResponse,
    obj: CachedObject,
    target: Target,
    status: number,
    out: string[],
    range: { start: number; end: number } | undefined,
    outcome: CacheOutcome,
  ): Promise<void> {
    let body: Buffer | Readable;
    try {
      body = await this.store.openBody(obj, range);
    } catch (e) {
      // The object tier lost the body: forget the entry and fetch it again.
      this.log.warn({ err: e, url: obj.url }, 'stored body unreadable');
      this.store.memory.delete(obj);
      return this.refetch(req, res, target);
    }
    res.writeHead(status, out);
    if (Buffer.isBuffer(body)) {
      res.end(body);
      this.stats.record(outcome, body.length, 0);
      return;
    }
    const { bytes } = await relayBlob(body, res);
    this.stats.record(outcome, bytes, 0);
  }
}

function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/** Streams a stored body from the object tier to the client, with backpressure. */
function relayBlob(src: Readable, res: ServerResponse): Promise<{ bytes: number; complete: boolean }> {
  return new Promise((resolve) => {
    let bytes = 0;
    let done = false;
    const finish = (complete: boolean): void => {
      if (done) return;
      done = true;
      res.off('close', onClose);
      resolve({ bytes, complete });
    };
    const onClose = (): void => {
      if (!res.writableFinished) {
        src.destroy();
        finish(false);
      }
    };
    src.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (!res.write(chunk)) {
        src.pause();
        void waitDrain(res).then(() => {
          if (!done) src.resume();
        });
      }
    });
    src.once('end', () => {
      res.end();
      finish(true);
    });
    src.once('error', () => {
      finish(false);
      // The client must see the response cut short, not a well-formed shorter body.
      res.destroy();
    });
    res.on('close', onClose);
  });
}
