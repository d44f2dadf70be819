/**
 * The proxy's HTTP/1.1 client for origin requests without a body (GET and HEAD: revalidations,
 * misses). Requests with a body, and every other method, go through undici. It exists because it
 * costs less CPU per revalidation than undici's dispatch (see docs/performance.md, Proxy). This
 * file has to get HTTP/1.1 framing right, so it does only what the proxy needs:
 * - one request at a time per connection (no pipelining), a pool of idle keep-alive connections
 *   per origin, at most `maxSockets` per origin (further requests wait in order);
 * - a connection that comes back idle is reused only from the next turn of the event loop on, so
 *   that bytes, a FIN or a reset the origin sent after the response are seen first (as undici
 *   does since GHSA-35p6-xmwp-9g52); anything arriving on an idle connection closes it;
 * - a request on a reused connection that fails before any byte of a response is sent once more
 *   on a new connection (GET and HEAD are idempotent, RFC 9110 §9.2.2);
 * - responses are parsed strictly (RFC 9112): the status line, field names as tokens, no obs-fold
 *   (§5.2), no NUL, CR or LF in values, a head no larger than `maxHeaderBytes`; the body length
 *   by §6.3: none for HEAD, 1xx, 204 and 304, else chunked when it is the final transfer coding,
 *   else until the connection closes when Transfer-Encoding is present; Transfer-Encoding with
 *   Content-Length, or Content-Length values that differ or are not digits, fail the exchange
 *   (502) rather than guess (§6.3 items 3 and 5);
 * - interim 1xx responses are passed on with onInterim (101 fails: the proxy never asks to upgrade);
 * - `timeoutMs` bounds connecting and each wait for the origin's next bytes (504).
 */
import { connect, type LookupFunction, type Socket } from 'node:net';

/** What an exchange tells its consumer (OriginExchange implements it). */
export interface PlainGetHandler {
  onConnect(abort: (err?: Error) => void): void;
  /** An interim (1xx) response head, in the same form as onHeaderList's. */
  onInterim?(statusCode: number, list: string[]): void;
  /** The final response head: status and a flat [name, value, ...] list, names lower-cased. */
  onHeaderList(statusCode: number, list: string[], resume: () => void): boolean;
  /** A body chunk; false asks the origin to pause until `resume`. */
  onData(chunk: Buffer): boolean;
  onComplete(): void;
  onError(err: Error): void;
}

export interface PlainGetOptions {
  /** Connect timeout and the longest wait for the origin's next bytes. */
  timeoutMs: number;
  /** How long an idle connection is kept. */
  keepAliveMs: number;
  /** Largest response head accepted. */
  maxHeaderBytes: number;
  /** Resolves origin names (the proxy's guard refuses forbidden addresses here). */
  lookup?: LookupFunction;
  /** Connections per origin, busy and idle. @default 512 */
  maxSockets?: number;
}

/** An origin's answer the proxy will not parse (the exchange fails with 502). */
export class OriginProtocolError extends Error {
  readonly code = 'EORIGINPROTOCOL';
}

class OriginTimeoutError extends Error {
  readonly code = 'ETIMEDOUT';
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: [^\r\n]*)?$/;
const BAD_VALUE = /[\0\r\n]/;
const CRLF2 = Buffer.from('\r\n\r\n', 'latin1');
/** Longest chunk-size line, extensions included. */
const MAX_CHUNK_LINE = 4096;

const CURRENT = Symbol('exchange');
/** A pooled connection. Its socket timeout stays at `timeoutMs` (set once: Node makes a new timer
 * on every setTimeout call); idle ones are closed by age when taken and by a sweep (see sweep). */
type PooledSocket = Socket & { [CURRENT]?: Exchange; poolKey?: string; idleSince?: number };

interface Waiting {
  host: string;
  port: number;
  head: string;
  headOnly: boolean;
  handler: PlainGetHandler;
}

/** The client: pools of connections by origin `host:port`. */
export class PlainGetClient {
  private readonly idle = new Map<string, PooledSocket[]>();
  /** Connections released in this turn of the event loop, usable from the next. */
  private cooling: PooledSocket[] = [];
  private readonly count = new Map<string, number>();
  private readonly sockets = new Set<PooledSocket>();
  private readonly queue = new Map<string, Waiting[]>();
  private readonly maxSockets: number;
  private closed = false;

  private readonly sweeper: NodeJS.Timeout;

  constructor(readonly opts: PlainGetOptions) {
    this.maxSockets = opts.maxSockets ?? 512;
    this.sweeper = setInterval(() => this.sweep(), Math.max(100, opts.keepAliveMs / 2));
    this.sweeper.unref();
  }

  /** Closes connections idle for longer than keepAliveMs. */
  private sweep(): void {
    const now = Date.now();
    for (const list of this.idle.values()) {
      // Oldest first: connections are pushed as they come back and popped from the end.
      while (list.length > 0 && now - list[0]!.idleSince! > this.opts.keepAliveMs) list.shift()!.destroy();
    }
  }

  /** Sends a bodiless GET or HEAD for `path` to `host:port`; `headers` must include Host. */
  request(host: string, port: number, method: 'GET' | 'HEAD', path: string, headers: Record<string, string | string[]>, handler: PlainGetHandler): void {
    let head: string;
    try {
      head = requestHead(method, path, headers);
    } catch (e) {
      handler.onError(e as Error);
      return;
    }
    this.start({ host, port, head, headOnly: method === 'HEAD', handler });
  }

  /** Closes every connection; exchanges under way and waiting requests fail. */
  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const s of this.sockets) s.destroy();
    this.idle.clear();
    this.cooling = [];
    for (const [, waiting] of this.queue) for (const w of waiting) w.handler.onError(new Error('proxy closing'));
    this.queue.clear();
  }

  private start(w: Waiting): void {
    if (this.closed) return w.handler.onError(new Error('proxy closing'));
    const key = `${w.host}:${w.port}`;
    const idle = this.idle.get(key);
    let reused = idle?.pop();
    // Connections idle past keepAliveMs are closed rather than reused (the origin may be closing them).
    while (reused && Date.now() - reused.idleSince! > this.opts.keepAliveMs) {
      reused.destroy();
      reused = idle!.pop();
    }
    if (reused) return new Exchange(this, reused, w, true).send();
    if ((this.count.get(key) ?? 0) >= this.maxSockets) {
      let q = this.queue.get(key);
      if (!q) this.queue.set(key, (q = []));
      q.push(w);
      return;
    }
    new Exchange(this, this.open(key, w.host, w.port), w, false).send();
  }

  private open(key: string, host: string, port: number): PooledSocket {
    const s: PooledSocket = connect({ host, port, lookup: this.opts.lookup, noDelay: true });
    s.poolKey = key;
    this.sockets.add(s);
    this.count.set(key, (this.count.get(key) ?? 0) + 1);
    s.setTimeout(this.opts.timeoutMs);
    s.on('data', onSocketData);
    s.on('end', onSocketEnd);
    s.on('error', onSocketError);
    s.on('timeout', onSocketTimeout);
    s.on('close', () => this.gone(s));
    return s;
  }

  /** An exchange on `s` has ended cleanly and left it reusable. */
  release(s: PooledSocket): void {
    s[CURRENT] = undefined;
    if (this.closed) return void s.destroy();
    s.idleSince = Date.now();
    this.cooling.push(s);
    if (this.cooling.length === 1) setImmediate(this.warm);
  }

  private readonly warm = (): void => {
    const list = this.cooling;
    this.cooling = [];
    for (const s of list) {
      if (s.destroyed || s[CURRENT]) continue;
      const key = s.poolKey!;
      const q = this.queue.get(key);
      const next = q?.shift();
      if (q && q.length === 0) this.queue.delete(key);
      if (next) {
        new Exchange(this, s, next, true).send();
        continue;
      }
      let idle = this.idle.get(key);
      if (!idle) this.idle.set(key, (idle = []));
      idle.push(s);
    }
  };

  private gone(s: PooledSocket): void {
    this.sockets.delete(s);
    const key = s.poolKey!;
    const n = (this.count.get(key) ?? 1) - 1;
    if (n > 0) this.count.set(key, n);
    else this.count.delete(key);
    const idle = this.idle.get(key);
    const i = idle ? idle.indexOf(s) : -1;
    if (i >= 0) idle!.splice(i, 1);
    if (idle && idle.length === 0) this.idle.delete(key);
    s[CURRENT]?.closed();
    // A slot is free: the oldest waiting request gets a new connection.
    const q = this.queue.get(key);
    const next = q?.shift();
    if (q && q.length === 0) this.queue.delete(key);
    if (next) this.start(next);
  }

  /** A request that failed on a reused connection before any response byte: once more, on a new one. */
  retry(w: Waiting): void {
    const key = `${w.host}:${w.port}`;
    if (this.closed) return w.handler.onError(new Error('proxy closing'));
    new Exchange(this, this.open(key, w.host, w.port), w, false).send();
  }
}

function onSocketData(this: PooledSocket, chunk: Buffer): void {
  const x = this[CURRENT];
  // Bytes nobody asked for: the connection cannot be trusted with another request.
  if (!x) return void this.destroy();
  x.feed(chunk);
}

function onSocketEnd(this: PooledSocket): void {
  const x = this[CURRENT];
  if (!x) return void this.destroy();
  x.ended();
}

function onSocketError(this: PooledSocket, err: Error): void {
  this[CURRENT]?.fail(err);
}

function onSocketTimeout(this: PooledSocket): void {
  const x = this[CURRENT];
  if (x) x.fail(new OriginTimeoutError('origin did not answer in time'));
  else this.destroy();
}

/** The request head; refuses a field that could split it. */
export function requestHead(method: string, path: string, headers: Record<string, string | string[]>): string {
  if (!path.startsWith('/') || /[\s\0]/.test(path)) throw new OriginProtocolError('invalid request target');
  let head = `${method} ${path} HTTP/1.1\r\n`;
  for (const name in headers) {
    const v = headers[name];
    if (!TOKEN.test(name)) throw new OriginProtocolError(`invalid field name ${JSON.stringify(name)}`);
    if (typeof v === 'string') {
      if (BAD_VALUE.test(v)) throw new OriginProtocolError(`invalid value of ${name}`);
      head += `${name}: ${v}\r\n`;
    } else {
      for (const one of v) {
        if (BAD_VALUE.test(one)) throw new OriginProtocolError(`invalid value of ${name}`);
        head += `${name}: ${one}\r\n`;
      }
    }
  }
  return `${head}\r\n`;
}

type State = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailer' | 'close' | 'done';

/** One request and its response on one connection. */
class Exchange {
  private state: State = 'head';
  private pending: Buffer | undefined;
  /** Body bytes left ('length', 'chunk-data'). */
  private left = 0;
  private keepAlive = false;
  private gotBytes = false;
  private finished = false;
  private paused = false;

  constructor(
    private readonly client: PlainGetClient,
    private readonly socket: PooledSocket,
    private readonly w: Waiting,
    private readonly reused: boolean,
  ) {}

  send(): void {
    const s = this.socket;
    s[CURRENT] = this;
    this.w.handler.onConnect(this.abort);
    if (this.finished) return;
    s.write(this.w.head, 'latin1');
  }

  private readonly abort = (err?: Error): void => {
    if (this.finished) return;
    this.finish();
    this.socket.destroy();
    this.w.handler.onError(err ?? new Error('aborted'));
  };

  private readonly resume = (): void => {
    if (this.finished || !this.paused) return;
    this.paused = false;
    this.socket.setTimeout(this.client.opts.timeoutMs);
    this.socket.resume();
  };

  /** The consumer cannot take more: stop reading, and do not count its wait against the origin. */
  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.setTimeout(0);
    this.socket.pause();
  }

  feed(chunk: Buffer): void {
    this.gotBytes = true;
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    try {
      while (buf.length > 0 && !this.finished) buf = this.step(buf);
    } catch (e) {
      this.fail(e as Error);
    }
  }

  /** Consumes what it can of `buf` in the current state; returns the rest (empty when it must wait). */
  private step(buf: Buffer): Buffer {
    switch (this.state) {
      case 'head': {
        const end = buf.indexOf(CRLF2);
        if (end < 0) {
          if (buf.length > this.client.opts.maxHeaderBytes) throw new OriginProtocolError('origin response head too large');
          this.pending = buf;
          return EMPTY;
        }
        if (end > this.client.opts.maxHeaderBytes) throw new OriginProtocolError('origin response head too large');
        this.head(buf.toString('latin1', 0, end));
        const rest = buf.subarray(end + 4);
        // A response without a body is complete with its head; bytes after it are not ours.
        if (!this.finished && (this.state as State) === 'length' && this.left === 0) this.complete(rest.length === 0);
        return this.finished ? EMPTY : rest;
      }
      case 'length': {
        const n = Math.min(this.left, buf.length);
        this.left -= n;
        const rest = buf.subarray(n);
        if (n > 0 && !this.w.handler.onData(n === buf.length ? buf : buf.subarray(0, n))) this.pause();
        if (this.left === 0) this.complete(rest.length === 0);
        return this.finished ? EMPTY : rest;
      }
      case 'chunk-size': {
        const nl = buf.indexOf('\r\n', 0, 'latin1');
        if (nl < 0) {
          if (buf.length > MAX_CHUNK_LINE) throw new OriginProtocolError('origin chunk size line too long');
          this.pending = buf;
          return EMPTY;
        }
        const line = buf.toString('latin1', 0, nl);
        const semi = line.indexOf(';');
        const hex = (semi < 0 ? line : line.slice(0, semi)).replace(/[ \t]+$/, '');
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex) || BAD_VALUE.test(line)) throw new OriginProtocolError('invalid chunk size from origin');
        this.left = parseInt(hex, 16);
        this.state = this.left === 0 ? 'trailer' : 'chunk-data';
        return buf.subarray(nl + 2);
      }
      case 'chunk-data': {
        const n = Math.min(this.left, buf.length);
        this.left -= n;
        if (!this.w.handler.onData(n === buf.length ? buf : buf.subarray(0, n))) this.pause();
        if (this.left === 0) this.state = 'chunk-crlf';
        return buf.subarray(n);
      }
      case 'chunk-crlf': {
        if (buf.length < 2) {
          this.pending = buf;
          return EMPTY;
        }
        if (buf[0] !== 13 || buf[1] !== 10) throw new OriginProtocolError('invalid chunk end from origin');
        this.state = 'chunk-size';
        return buf.subarray(2);
      }
      case 'trailer': {
        // Trailer fields are not forwarded (RFC 9110 §6.5.1 lets a recipient discard them).
        const nl = buf.indexOf('\r\n', 0, 'latin1');
        if (nl < 0) {
          if (buf.length > this.client.opts.maxHeaderBytes) throw new OriginProtocolError('origin trailer too large');
          this.pending = buf;
          return EMPTY;
        }
        if (nl === 0) {
          const rest = buf.subarray(2);
          this.complete(rest.length === 0);
          return EMPTY;
        }
        return buf.subarray(nl + 2);
      }
      case 'close':
        if (!this.w.handler.onData(buf)) this.pause();
        return EMPTY;
      default:
        // Bytes after a complete response: the connection is not reused (see complete()).
        return EMPTY;
    }
  }

  private head(text: string): void {
    const lines = text.split('\r\n');
    const m = STATUS_LINE.exec(lines[0]!);
    if (!m) throw new OriginProtocolError('invalid status line from origin');
    const minor = m[1];
    const status = Number(m[2]);
    const list: string[] = [];
    let te: string | undefined;
    let cl: string | undefined;
    let connection = '';
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const c = line.indexOf(':');
      // obs-fold (a line starting with SP or HTAB) has no valid name before a colon.
      if (c <= 0) throw new OriginProtocolError('invalid header line from origin');
      const name = line.slice(0, c);
      if (!TOKEN.test(name)) throw new OriginProtocolError('invalid header name from origin');
      const value = trimOws(line, c + 1);
      if (BAD_VALUE.test(value)) throw new OriginProtocolError('invalid header value from origin');
      const lname = name.toLowerCase();
      if (lname === 'transfer-encoding') te = te === undefined ? value : `${te}, ${value}`;
      else if (lname === 'content-length') cl = cl === undefined ? value : `${cl}, ${value}`;
      else if (lname === 'connection') connection = `${connection},${value.toLowerCase()}`;
      list.push(lname, value);
    }
    if (status < 200) {
      if (status === 101) throw new OriginProtocolError('origin switched protocols unasked');
      this.w.handler.onInterim?.(status, list);
      return; // the final response follows
    }
    const close = connection !== '' && connection.split(',').some((t) => t.trim() === 'close');
    this.keepAlive = minor === '1' && !close;
    let length: number | 'chunked' | 'close';
    if (this.w.headOnly || status === 204 || status === 304) length = 0;
    else if (te !== undefined) {
      if (cl !== undefined) throw new OriginProtocolError('origin sent both Transfer-Encoding and Content-Length');
      const codings = te.split(',').map((t) => t.trim().toLowerCase());
      length = codings[codings.length - 1] === 'chunked' ? 'chunked' : 'close';
    } else if (cl !== undefined) {
      const values = cl.split(',').map((v) => v.trim());
      if (!values.every((v) => /^\d{1,15}$/.test(v) && v === values[0])) throw new OriginProtocolError('invalid Content-Length from origin');
      length = Number(values[0]);
    } else length = 'close';
    if (length === 'close') this.keepAlive = false;
    this.state = length === 'chunked' ? 'chunk-size' : length === 'close' ? 'close' : 'length';
    this.left = typeof length === 'number' ? length : 0;
    this.w.handler.onHeaderList(status, list, this.resume);
  }

  /** The response is complete; `clean` when no byte followed it in the same read. */
  private complete(clean: boolean): void {
    if (this.finished) return;
    this.finish();
    if (this.keepAlive && clean && !this.socket.destroyed) {
      this.socket.resume();
      this.client.release(this.socket);
    } else this.socket.destroy();
    this.w.handler.onComplete();
  }

  /** The origin closed its side. */
  ended(): void {
    if (this.finished) return;
    if (this.state === 'close') {
      this.keepAlive = false;
      return this.complete(false);
    }
    this.fail(new OriginProtocolError(this.state === 'head' ? 'origin closed the connection without a response' : 'origin closed the connection mid-body'));
  }

  /** The connection closed under the exchange. */
  closed(): void {
    if (!this.finished) this.fail(new OriginProtocolError('origin connection closed'));
  }

  fail(err: Error): void {
    if (this.finished) return;
    this.finish();
    this.socket.destroy();
    if (this.reused && !this.gotBytes && !(err instanceof OriginTimeoutError)) return this.client.retry(this.w);
    this.w.handler.onError(err);
  }

  private finish(): void {
    this.finished = true;
    // A pause switched the socket's timeout off; the connection's next exchange needs it back.
    if (this.paused) {
      this.paused = false;
      this.socket.setTimeout(this.client.opts.timeoutMs);
    }
    this.state = 'done';
    if (this.socket[CURRENT] === this) this.socket[CURRENT] = undefined;
  }
}

const EMPTY = Buffer.alloc(0);

/** `line` from `start` without leading and trailing spaces and tabs (RFC 9110 §5.5 OWS). */
function trimOws(line: string, start: number): string {
  let a = start;
  let b = line.length;
  while (a < b && (line.charCodeAt(a) === 32 || line.charCodeAt(a) === 9)) a++;
  while (b > a && (line.charCodeAt(b - 1) === 32 || line.charCodeAt(b - 1) === 9)) b--;
  return line.slice(a, b);
}
