/**
 * Carrying out the cache flow's decisions (core/cache/flow.ts) for one request: find what is
 * stored (memory tier, then object tier), ask the flow, then serve, revalidate, fetch, pass or
 * refuse. The decision is computed once per request; a fresh hit in memory is decided and served
 * synchronously, without a promise.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { CachedObject } from '../../core/cache/entry.js';
import { decideRequest, decideStorage, type PolicyFactory, type RequestDecision } from '../../core/cache/flow.js';
import { normalizeUrl } from '../../core/cache/keys.js';
import type { CacheOutcome, CacheStats } from '../../core/cache/stats.js';
import type { CacheStore } from '../../core/cache/store.js';
import type { ListenerContext } from '../listener.js';
import { Flight, NO_FLIGHT, waitFor, type Settle } from './flights.js';
import type { OriginExchange } from './origin.js';
import type { OriginRequests, Target } from './origin-requests.js';
import { HIT, NAME, type Replies } from './replies.js';
import { Revalidations } from './revalidation.js';
import { StoredResponses } from './stored-responses.js';

/** What the carrying out needs of the proxy. */
export interface CacheRequestsParts {
  cfg: ListenerContext['config']['proxy'];
  log: ListenerContext['log'];
  store: CacheStore;
  stats: CacheStats;
  origins: OriginRequests;
  replies: Replies;
  /** Clock, epoch ms, for the cache's freshness decisions. */
  now: () => number;
  /** Told of each URL invalidated here (the sibling workers drop it from memory, workers.ts). */
  purged?: (url: string) => void;
}

/** Answers GET and HEAD from the cache where the flow allows it, and forwards the rest. */
export class CacheRequests {
  readonly stored: StoredResponses;
  private readonly revalidations: Revalidations;
  /** Misses under way, by URL, that later requests for it may wait for. */
  private readonly inflight = new Map<string, Flight<string>>();
  /** Builds the policy of a received response (the store's CachePolicy class, shared cache). */
  readonly newPolicy: PolicyFactory;

  constructor(private readonly p: CacheRequestsParts) {
    this.stored = new StoredResponses(p.store, p.stats, p.replies, p.log, (req, res, target) => this.fetch(req, res, target, false));
    this.revalidations = new Revalidations(p, this);
    this.newPolicy = (q, r) => p.store.policy(q, r);
  }

  /** Handles a request for `target`: synchronous for a hit in memory, a promise when anything waits for I/O. */
  handle(req: IncomingMessage, res: ServerResponse, target: Target): void | Promise<void> {
    const method = req.method ?? 'GET';
    let stored: CachedObject | undefined;
    if (method === 'GET' || method === 'HEAD') {
      stored = this.p.store.memoryGet(target.url, req.headers);
      if (stored === undefined) return this.handleAfterLookup(req, res, target, method);
    }
    const now = this.p.now();
    return this.carryOut(req, res, target, stored, decideRequest(method, target, req.headers, stored, now), now);
  }

  /** handle for a request the memory tier has nothing for: the object tier is asked first. */
  private async handleAfterLookup(req: IncomingMessage, res: ServerResponse, target: Target, method: string): Promise<void> {
    const stored = await this.p.store.lookup(target.url, req.headers);
    const now = this.p.now();
    return this.carryOut(req, res, target, stored, decideRequest(method, target, req.headers, stored, now), now);
  }

  private carryOut(
    req: IncomingMessage,
    res: ServerResponse,
    target: Target,
    obj: CachedObject | undefined,
    d: RequestDecision,
    now: number,
  ): void | Promise<void> {
    switch (d.kind) {
      case 'hit':
        if (d.background) {
          // RFC 5861 §3: serve stale while one background request revalidates.
          this.revalidations.background(obj!, d.background, target);
          return this.stored.serve(req, res, obj!, target, d.part, `${HIT}; detail=stale-while-revalidate`, 'stale');
        }
        if (d.whole && obj!.body !== undefined && obj!.status !== 206) return this.stored.whole(req, res, obj!, now);
        return this.stored.serve(req, res, obj!, target, d.part, HIT, 'hit');
      case 'revalidate':
        return this.revalidations.revalidate(req, res, obj!, d, target);
      case 'fetch':
        return this.fetch(req, res, target, d.collapsible);
      case 'pass':
        if (d.invalidates) return this.unsafe(req, res, target);
        return this.pass(req, res, target, `${NAME}; fwd=${d.reason}`, d.reason === 'uri-miss' ? 'miss' : 'bypass');
      case 'refuse':
        this.p.stats.record('miss', 0, 0);
        return this.p.replies.short(res, d.status, d.reason);
    }
  }

  /** A GET with nothing usable stored: one origin request per URL at a time when `collapsible`, the others wait for it (bounded) and reuse it. */
  fetch(req: IncomingMessage, res: ServerResponse, target: Target, collapsible: boolean): void | Promise<void> {
    if (collapsible && this.p.cfg.collapseWaitMs > 0) {
      const pending = this.inflight.get(target.url);
      if (pending) return this.fetchAfter(req, res, target, pending);
      const flight = new Flight(this.inflight, target.url);
      return this.fetchAndDeliver(req, res, target, flight).finally(() => flight.settle());
    }
    return this.fetchAndDeliver(req, res, target, NO_FLIGHT);
  }

  /** A miss that waited for another request's fetch of the URL: served from what it stored if the flow allows, else fetched alone. */
  private async fetchAfter(req: IncomingMessage, res: ServerResponse, target: Target, pending: Flight<string>): Promise<void> {
    await waitFor(pending, this.p.cfg.collapseWaitMs);
    const obj = await this.p.store.lookup(target.url, req.headers);
    const d = decideRequest('GET', target, req.headers, obj, this.p.now());
    if (d.kind === 'hit' && !d.background) return this.stored.serve(req, res, obj!, target, d.part, `${HIT}; detail=collapsed`, 'hit');
    return this.fetch(req, res, target, false);
  }

  private async fetchAndDeliver(req: IncomingMessage, res: ServerResponse, target: Target, flight: Settle): Promise<void> {
    const o = this.p.origins;
    let resp: OriginExchange;
    try {
      resp = await o.request(target, 'GET', o.forwardHeaders(req, target), o.requestBody(req), req, res);
    } catch (e) {
      flight.settle();
      return this.p.replies.failed(res, e);
    }
    return this.deliver(req, res, target, resp, 'uri-miss', 'miss', flight);
  }

  /** Sends a full origin response to the client, storing it when the flow allows (RFC 9111 §3). */
  async deliver(
    req: IncomingMessage,
    res: ServerResponse,
    target: Target,
    resp: OriginExchange,
    fwd: string,
    outcome: CacheOutcome,
    flight: Settle,
  ): Promise<void> {
    const { store, cfg } = this.p;
    const status = resp.statusCode;
    const rh = resp.headers;
    // The policy keeps `rh` itself: nothing changes it afterwards (clientFields copies).
    const s = decideStorage(req.method ?? 'GET', target, req.headers, status, rh, cfg.maxObjectBytes, this.newPolicy);
    if (!s) flight.settle();
    res.writeHead(status, this.p.replies.clientFields(rh, `${NAME}; fwd=${fwd}; fwd-status=${status}${s ? '; stored' : ''}`));
    const writer = s ? store.writer(target.url, s.variant, s.names, s.policy, s.length) : undefined;
    const { bytes, complete } = await resp.relay(res, writer);
    this.p.stats.record(outcome, 0, bytes);
    if (writer) {
      if (complete) await writer.end().catch((e: unknown) => this.p.log.warn({ err: e }, 'cache store failed'));
      else writer.abort();
    }
    flight.settle();
  }

  /** RFC 9111 §4.4: after a non-error (2xx, 3xx) response to an unsafe method, invalidate the
   * target URI and the Location and Content-Location URIs when they share its origin. */
  private async unsafe(req: IncomingMessage, res: ServerResponse, target: Target): Promise<void> {
    const resp = await this.forward(req, res, target);
    if (!resp) return;
    if (resp.statusCode < 400) {
      const urls = new Set([target.url]);
      for (const name of ['location', 'content-location']) {
        const v = resp.headers[name];
        const text = Array.isArray(v) ? v.join(', ') : v;
        if (!text) continue;
        try {
          const u = new URL(text, target.url);
          // RFC 9111 §4.4: only URIs of the same origin (scheme, host and port) are invalidated.
          if (u.origin === target.origin) urls.add(normalizeUrl(u.href));
        } catch {
          // not a URL: nothing to invalidate
        }
      }
      for (const u of urls) {
        await this.p.store.purge(u).catch((e: unknown) => this.p.log.warn({ err: e, url: u }, 'invalidation failed'));
        this.p.purged?.(u);
      }
    }
    return this.deliver(req, res, target, resp, 'method', 'bypass', NO_FLIGHT);
  }

  /** Sends the client's request on to the origin as it is; on failure the client has had its
   * error reply and the result is undefined. */
  private async forward(req: IncomingMessage, res: ServerResponse, target: Target): Promise<OriginExchange | undefined> {
    const o = this.p.origins;
    try {
      return await o.request(target, req.method!, o.forwardHeaders(req, target), o.requestBody(req), req, res);
    } catch (e) {
      this.p.replies.failed(res, e);
      return undefined;
    }
  }

  /** Forwards a request without caching (OPTIONS, HEAD misses, ...). */
  private async pass(req: IncomingMessage, res: ServerResponse, target: Target, cacheStatus: string, outcome: CacheOutcome): Promise<void> {
    const resp = await this.forward(req, res, target);
    if (!resp) return;
    res.writeHead(resp.statusCode, this.p.replies.clientFields(resp.headers, `${cacheStatus}; fwd-status=${resp.statusCode}`));
    const { bytes } = await resp.relay(res);
    this.p.stats.record(outcome, 0, bytes);
  }
}
