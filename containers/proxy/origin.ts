/**
 * One request to an origin, through the client for plain GET and HEAD requests (plain-get-client.ts) or
 * through undici's `dispatch()` (the rest), with a handler of our own for both. undici's `request()`
 * wraps every response body in a Readable stream and parses the header list into an object that
 * the proxy then copied twice more (end-to-end fields, policy). Here the header list becomes the
 * end-to-end object in one pass and body chunks go straight to the client response (and the cache
 * writer), with backpressure through the client's pause/resume (`onData` returning false).
 */
import type { ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { BodyWriter } from '../../core/cache/body-writer.js';
import { HOP_BY_HOP } from './http.js';
import type { PlainGetHandler } from './plain-get-client.js';

/** Where body chunks go once the consumer has chosen; `data` returns false to pause the origin. */
interface BodySink {
  data(chunk: Buffer): boolean;
  end(): void;
  error(err: Error): void;
}

/**
 * Response fields from undici's raw list: names lower-cased, repeated fields joined with ", "
 * (RFC 9110 §5.3), Set-Cookie kept as a list (§5.3 names it as the exception), and the hop-by-hop
 * fields plus those that Connection names removed (RFC 9110 §7.6.1). Values are read as latin1,
 * byte for byte, as undici and Node's own parser do.
 */
export function originHeaders(raw: Buffer[]): Record<string, string | string[]> {
  const list: string[] = new Array<string>(raw.length);
  for (let i = 0; i < raw.length; i += 2) {
    list[i] = raw[i].toString('latin1').toLowerCase();
    list[i + 1] = raw[i + 1].toString('latin1');
  }
  return originHeaderList(list);
}

/** The same from a flat [name, value, ...] list with names already lower-cased (the plain GET client's). */
export function originHeaderList(list: string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  let connection: string | undefined;
  for (let i = 0; i < list.length; i += 2) {
    const name = list[i];
    const value = list[i + 1];
    if (HOP_BY_HOP.has(name)) {
      if (name === 'connection') connection = connection === undefined ? value : `${connection}, ${value}`;
      continue;
    }
    // Own values are strings or string arrays; anything else is inherited from Object.prototype
    // (a field named "constructor"), which the field then shadows. ("__proto__" is dropped.)
    const cur: unknown = out[name];
    if (typeof cur === 'string') out[name] = name === 'set-cookie' ? [cur, value] : `${cur}, ${value}`;
    else if (Array.isArray(cur)) cur.push(value);
    else out[name] = value;
  }
  if (connection !== undefined) {
    for (const n of connection.toLowerCase().split(',')) {
      const name = n.trim();
      // Only fields present: `Connection: keep-alive` names one already dropped above.
      if (Object.hasOwn(out, name)) delete out[name];
    }
  }
  return out;
}

/** Who hears about the response head: `head` once the final head has arrived, `failed` on an error before it. */
export interface HeadListener {
  head(x: OriginExchange): void;
  failed(err: Error): void;
  /** An interim (1xx) response before the final one, its fields as originHeaders gives them. */
  interim?(statusCode: number, headers: Record<string, string | string[]>): void;
}

/**
 * The exchange: the status and fields once the head has arrived, then the body as it comes. The
 * listener is called from undici's parser callback, synchronously; a revalidation answered 304
 * is served from there without a promise.
 */
export class OriginExchange implements Dispatcher.DispatchHandler, PlainGetHandler {
  statusCode = 0;
  /** End-to-end response fields (see originHeaders). */
  headers: Record<string, string | string[]> = {};
  private abortFn: ((err?: Error) => void) | undefined;
  private resumeFn: (() => void) | undefined;
  private sink: BodySink | undefined;
  /** Chunks that arrived (in the head's socket read) before the consumer attached. */
  private early: Buffer[] | undefined;
  private state: 'head' | 'body' | 'ended' | 'failed' = 'head';
  private failure: Error | undefined;

  constructor(private readonly listener: HeadListener) {}

  onConnect(abort: (err?: Error) => void): void {
    this.abortFn = abort;
  }

  onHeaders(statusCode: number, raw: Buffer[], resume: () => void): boolean {
    // 1xx interim responses (RFC 9110 §15.2) go to the listener; the final response follows.
    if (statusCode < 200) {
      this.listener.interim?.(statusCode, originHeaders(raw));
      return true;
    }
    return this.onFinalHead(statusCode, originHeaders(raw), resume);
  }

  /** The plain GET client's interim head (plain-get-client.ts). */
  onInterim(statusCode: number, list: string[]): void {
    this.listener.interim?.(statusCode, originHeaderList(list));
  }

  /** The plain GET client's head (plain-get-client.ts): names already lower-cased. */
  onHeaderList(statusCode: number, list: string[], resume: () => void): boolean {
    return this.onFinalHead(statusCode, originHeaderList(list), resume);
  }

  private onFinalHead(statusCode: number, headers: Record<string, string | string[]>, resume: () => void): boolean {
    this.statusCode = statusCode;
    this.headers = headers;
    this.resumeFn = resume;
    this.state = 'body';
    this.listener.head(this);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.sink) return this.sink.data(chunk);
    (this.early ??= []).push(chunk);
    return true;
  }

  onComplete(): void {
    this.state = 'ended';
    this.sink?.end();
  }

  onError(err: Error): void {
    const before = this.state === 'head';
    this.state = 'failed';
    this.failure = err;
    if (before) this.listener.failed(err);
    else this.sink?.error(err);
  }

  /** Starts delivering the body to `sink` (chunks that came early first). */
  attach(sink: BodySink): void {
    this.sink = sink;
    const early = this.early;
    this.early = undefined;
    if (early) for (const c of early) sink.data(c);
    if (this.state === 'ended') sink.end();
    else if (this.state === 'failed') sink.error(this.failure!);
  }

  /** Lets the origin send more after `data` returned false. */
  resume(): void {
    if (this.state === 'body') this.resumeFn?.();
  }

  /** Stops an exchange whose body is no longer wanted (the connection to the origin is closed). */
  abort(): void {
    if (this.state !== 'body') return;
    this.state = 'failed';
    // Detached first: undici reports the abort through onError, which must not reach the sink.
    this.sink = undefined;
    this.abortFn?.(new Error('response no longer wanted'));
  }

  /** Reads and discards the body (a 304 has none; the connection goes back to the pool when it ends). */
  discard(): void {
    if (this.state === 'body') this.attach(DISCARD);
  }

  /** Reads the body into the cache only (background revalidation); true when it ended normally. */
  absorb(writer: BodyWriter | undefined): Promise<boolean> {
    return new Promise((resolve) =>
      this.attach({
        data: (chunk) => {
          if (!writer || writer.write(chunk)) return true;
          void writer.drain().then(() => this.resume());
          return false;
        },
        end: () => resolve(true),
        error: () => resolve(false),
      }),
    );
  }

  /** Streams the body to the client (and into the cache), with backpressure on both. */
  relay(res: ServerResponse, writer?: BodyWriter): Promise<{ bytes: number; complete: boolean }> {
    return new Promise((resolve) => new Relay(this, res, writer, resolve).start());
  }
}

const DISCARD: BodySink = { data: () => true, end: () => undefined, error: () => undefined };

const RELAY = Symbol('relay');
type RelayedResponse = ServerResponse & { [RELAY]?: Relay };

/** The response's 'close' listener, shared by all responses (no closure per request). */
function onRelayClose(this: RelayedResponse): void {
  this[RELAY]?.closed();
}

/** The sink of `relay`: one object per response rather than a closure per event. */
class Relay implements BodySink {
  private bytes = 0;
  private done = false;

  constructor(
    private readonly x: OriginExchange,
    private readonly res: ServerResponse,
    private readonly writer: BodyWriter | undefined,
    private readonly resolve: (r: { bytes: number; complete: boolean }) => void,
  ) {}

  start(): void {
    (this.res as RelayedResponse)[RELAY] = this;
    this.res.on('close', onRelayClose);
    this.x.attach(this);
  }

  /** The client connection closed: an unfinished response stops the origin exchange. */
  closed(): void {
    if (this.done || this.res.writableFinished) return;
    this.x.abort();
    this.finish(false);
  }

  data(chunk: Buffer): boolean {
    if (this.done) return true;
    this.bytes += chunk.length;
    const a = this.res.write(chunk);
    const b = this.writer ? this.writer.write(chunk) : true;
    if (a && b) return true;
    void Promise.all([a ? undefined : waitDrain(this.res), b ? undefined : this.writer!.drain()]).then(() => {
      if (!this.done) this.x.resume();
    });
    return false;
  }

  end(): void {
    if (this.done) return;
    this.res.end();
    this.finish(true);
  }

  error(): void {
    if (this.done) return;
    this.finish(false);
    // The client must see the response cut short, not a well-formed shorter body.
    this.res.destroy();
  }

  private finish(complete: boolean): void {
    this.done = true;
    this.res.off('close', onRelayClose);
    (this.res as RelayedResponse)[RELAY] = undefined;
    this.resolve({ bytes: this.bytes, complete });
  }
}

/** Resolves when the response can take more (or has closed). */
export function waitDrain(res: ServerResponse): Promise<void> {
  if (!res.writableNeedDrain || res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
