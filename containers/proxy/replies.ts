/**
 * Answers the proxy writes itself (refusals, origin failures, errors) and the fields it adds to
 * an origin's response, each counted in the cache statistics.
 */
import type { ServerResponse } from 'node:http';
import type { CacheStats } from '../../core/cache/stats.js';
import type { Logger } from '../../core/log.js';
import { REASON, type ReasonedResponse } from './access-log.js';
import { originFailure } from './origin-requests.js';

/** Our name in Cache-Status (RFC 9211). */
export const NAME = 'Tomlinson';
/** Cache-Status of a hit. */
export const HIT = `${NAME}; hit`;

/** The proxy's own answers. */
export class Replies {
  constructor(
    private readonly stats: CacheStats,
    private readonly log: Logger,
    /** Our Via entry (RFC 9110 §7.6.3). */
    readonly via: string,
  ) {}

  /** A short plain-text answer from the proxy itself; the text is the access log line's reason. */
  short(res: ServerResponse, status: number, text: string, extra?: Record<string, string>): void {
    if (res.headersSent || res.destroyed) return;
    (res as ReasonedResponse)[REASON] = text;
    const body = `${text}\n`;
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': String(Buffer.byteLength(body)),
      'cache-control': 'no-store',
      via: this.via,
      ...extra,
    });
    res.end(body);
  }

  /** A refusal by the proxy itself (client, loop, request-target), counted as such. */
  refused(res: ServerResponse, status: number, text: string, extra?: Record<string, string>): void {
    this.stats.record('refused', 0, 0);
    this.short(res, status, text, extra);
  }

  /** The origin could not be reached or did not answer (502, 504), or its address is refused (403); counted apart from misses. */
  failed(res: ServerResponse, e: unknown): void {
    const f = originFailure(e);
    this.stats.record(f.status === 403 ? 'refused' : 'failed', 0, 0);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    this.short(res, f.status, f.message);
  }

  /** The end of a request whose handling threw: 500 if nothing was sent yet, else a cut response. */
  requestFailed(res: ServerResponse, e: unknown): void {
    this.log.warn({ err: e }, 'proxy request failed');
    if (!res.headersSent) {
      this.stats.record('failed', 0, 0);
      this.short(res, 500, 'proxy error');
    } else res.destroy();
  }

  /** Waits on the rest of a request's handling when it continues asynchronously. */
  settled(res: ServerResponse, p: void | Promise<void>): void {
    if (p) p.catch((e: unknown) => this.requestFailed(res, e));
  }

  /** An origin response's fields for the client as a flat name/value list (what writeHead takes
   * fastest), with our Via (RFC 9110 §7.6.3) and Cache-Status (RFC 9211) added; `rh` is unchanged. */
  clientFields(rh: Record<string, string | string[]>, cacheStatus: string): (string | string[])[] {
    const out: (string | string[])[] = [];
    let via = this.via;
    for (const k in rh) {
      const v = rh[k];
      if (k === 'via') via = `${Array.isArray(v) ? v.join(', ') : v}, ${this.via}`;
      else out.push(k, v);
    }
    out.push('via', via, 'cache-status', cacheStatus);
    return out;
  }
}
