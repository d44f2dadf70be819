/**
 * Carrying out revalidations (RFC 9111 §4.3): the conditional request for a stale stored response,
 * the answer (a 304 refreshes it, an error may be covered by stale-if-error, anything else replaces
 * it), collapsed revalidation, and stale-while-revalidate's background request (RFC 5861 §3).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { CachedObject } from '../../core/cache/entry.js';
import { CONDITIONALS, decideBackgroundStorage, decideRevalidated, staleIfError, type RevalidateDecision, type Revalidation } from '../../core/cache/flow.js';
import type { CacheRequests, CacheRequestsParts } from './cache-requests.js';
import { Flight, NO_FLIGHT, waitFor, type Settle } from './flights.js';
import { addVia, endToEnd } from './http.js';
import { OriginExchange, type HeadListener } from './origin.js';
import { NOT_FORWARDED, type Target } from './origin-requests.js';
import { HIT, NAME } from './replies.js';

/** Request fields left off our own conditional request: the client's conditionals are answered by
 * us from the refreshed entry (RFC 9111 §4.3.2); the origin gets our validators. */
const NOT_REVALIDATED = [...NOT_FORWARDED, ...CONDITIONALS];
const REVALIDATED = `${NAME}; fwd=stale; fwd-status=304`;

/** One conditional request for a stale entry: what its answer is needed for (one object, not a closure per request). */
class PendingRevalidation implements HeadListener {
  constructor(
    private readonly owner: Revalidations,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly obj: CachedObject,
    readonly d: RevalidateDecision,
    readonly target: Target,
    readonly flight: Settle,
  ) {}

  head(x: OriginExchange): void {
    this.owner.answered(this, x);
  }

  failed(err: Error): void {
    this.owner.failed(this, err);
  }

  interim(status: number, headers: Record<string, string | string[]>): void {
    this.owner.p.origins.forwardInterim(this.req, this.res, status, headers);
  }
}

/** The revalidations under way and how their answers are used. */
export class Revalidations {
  /** Synchronous revalidations under way, by stored response; resolve true when a 304 refreshed it. */
  private readonly pending = new Map<CachedObject, Flight<CachedObject>>();
  /** Stored responses with a background revalidation under way. */
  private readonly inBackground = new Set<CachedObject>();

  constructor(
    readonly p: CacheRequestsParts,
    private readonly requests: CacheRequests,
  ) {}

  /**
   * RFC 9111 §4.3: a stale entry is validated with the origin before use. Requests for the same
   * stored response that arrive while its conditional request is outstanding wait for it (bounded
   * by collapseWaitMs) and, when it ends in a 304, are answered from the freshened entry: the
   * response was validated with the origin after they arrived, which is what RFC 9111 §4.2.4 asks
   * before reuse. This is Squid's collapsed revalidation ("concurrent" meaning received after the
   * first request's headers and before the origin's response headers) and RFC 9211 §2.6 names it
   * `collapsed` in Cache-Status. A client that sends its own Cache-Control/Pragma or credentials
   * gets a revalidation of its own (the decision is not `collapsible`).
   */
  revalidate(req: IncomingMessage, res: ServerResponse, obj: CachedObject, d: RevalidateDecision, target: Target): void | Promise<void> {
    if (this.p.cfg.collapseWaitMs <= 0 || !d.collapsible) return this.once(req, res, obj, d, target, NO_FLIGHT);
    const pending = this.pending.get(obj);
    if (pending) return this.after(req, res, obj, d, target, pending);
    // Requests arriving after the origin answered start a revalidation of their own.
    this.once(req, res, obj, d, target, new Flight(this.pending, obj));
  }

  private async after(
    req: IncomingMessage,
    res: ServerResponse,
    obj: CachedObject,
    d: RevalidateDecision,
    target: Target,
    pending: Flight<CachedObject>,
  ): Promise<void> {
    const refreshed = await waitFor(pending, this.p.cfg.collapseWaitMs);
    if (refreshed) return this.requests.stored.serve(req, res, obj, target, d.part, `${REVALIDATED}; collapsed`, 'revalidated');
    return this.once(req, res, obj, d, target, NO_FLIGHT);
  }

  /**
   * One conditional request to the origin, answered through callbacks (see answered); the flight
   * settles true as soon as a 304 has refreshed the entry, false on any other outcome.
   */
  private once(req: IncomingMessage, res: ServerResponse, obj: CachedObject, d: RevalidateDecision, target: Target, flight: Settle): void {
    // The client's end-to-end fields without its conditionals, and the flow's validators.
    const h = endToEnd(req.headers, NOT_REVALIDATED);
    h.host = target.host;
    const v = d.validators;
    if (v['if-none-match'] !== undefined) h['if-none-match'] = v['if-none-match'];
    if (v['if-modified-since'] !== undefined) h['if-modified-since'] = v['if-modified-since'];
    addVia(h, this.p.replies.via);
    const x = new OriginExchange(new PendingRevalidation(this, req, res, obj, d, target, flight));
    this.p.origins.dispatch(target, 'GET', h, undefined, x);
  }

  /** The origin's answer to a revalidation (called from the origin's parser callback: nothing may throw out of here). */
  answered(v: PendingRevalidation, x: OriginExchange): void {
    const { req, res, obj, d, target, flight } = v;
    const { replies, store } = this.p;
    try {
      const status = x.statusCode;
      const next = decideRevalidated(obj, d.request, status, x.headers, this.p.now());
      switch (next.kind) {
        case 'refresh':
          x.discard();
          store.refresh(obj, next.policy);
          flight.settle(true);
          return replies.settled(res, this.requests.stored.serve(req, res, obj, target, d.part, REVALIDATED, 'revalidated'));
        case 'fetch':
          x.discard();
          flight.settle(false);
          return replies.settled(res, this.requests.fetch(req, res, target, false));
        case 'stale-if-error':
          flight.settle(false);
          x.discard();
          return replies.settled(
            res,
            this.requests.stored.serve(req, res, obj, target, d.part, `${HIT}; detail=stale-if-error; fwd-status=${status}`, 'stale'),
          );
        case 'replace':
          flight.settle(false);
          return replies.settled(res, this.requests.deliver(req, res, target, x, 'stale', 'miss', NO_FLIGHT));
      }
    } catch (e) {
      flight.settle(false);
      x.abort();
      replies.requestFailed(res, e);
    }
  }

  /** A revalidation that failed before the origin answered: stale-if-error (RFC 5861 §4), else 502/504. */
  failed(v: PendingRevalidation, err: Error): void {
    const { req, res, obj, d, target, flight } = v;
    const { replies } = this.p;
    flight.settle(false);
    try {
      if (staleIfError(obj, d.request, undefined, this.p.now())) {
        return replies.settled(res, this.requests.stored.serve(req, res, obj, target, d.part, `${HIT}; detail=stale-if-error`, 'stale'));
      }
      replies.failed(res, err);
    } catch (e) {
      replies.requestFailed(res, e);
    }
  }

  /** RFC 5861 §3: one background request per stored response revalidates it while it is served stale. */
  background(obj: CachedObject, rv: Revalidation, target: Target): void {
    if (this.inBackground.has(obj)) return;
    this.inBackground.add(obj);
    const headers: Record<string, string | string[]> = { ...(rv.validators as Record<string, string>) };
    headers.host = target.host;
    addVia(headers, this.p.replies.via);
    void this.runBackground(obj, rv, target, headers);
  }

  private async runBackground(obj: CachedObject, rv: Revalidation, target: Target, headers: Record<string, string | string[]>): Promise<void> {
    const { store, cfg } = this.p;
    try {
      const resp = await this.p.origins.request(target, 'GET', headers);
      const status = resp.statusCode;
      if (status === 304) {
        resp.discard();
        const next = decideRevalidated(obj, rv.request, status, resp.headers, this.p.now());
        if (next.kind === 'refresh') store.refresh(obj, next.policy);
        return;
      }
      const s = decideBackgroundStorage(target, status, resp.headers, cfg.maxObjectBytes, this.requests.newPolicy);
      const writer = s ? store.writer(obj.url, s.variant, s.names, s.policy, s.length) : undefined;
      if (await resp.absorb(writer)) await writer?.end();
      else writer?.abort();
    } catch (e) {
      this.p.log.debug({ err: e, url: obj.url }, 'background revalidation failed');
    } finally {
      this.inBackground.delete(obj);
    }
  }
}
