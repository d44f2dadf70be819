/**
 * Requests to origins: bodiless GET and HEAD to http origins through the plain GET client,
 * everything else (https origins included) through an undici Agent with keep-alive pools; the
 * mapping of origin failures to the client's status; 1xx responses passed on to the client.
 *
 * https origins (absolute-form `https://` targets, proxy.httpsOrigin) take undici rather than the
 * plain GET client: undici already opens TLS through node:tls with the certificate checked against
 * the trusted roots and the host name (RFC 9110 §4.3.4), SNI for names only (RFC 6066 §3: never an
 * address), session resumption and a keep-alive pool per origin. Doing the same in our own client
 * would add a security-sensitive path for a saving (its lower CPU per revalidation) that the TLS
 * record work of each exchange mostly eats.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { LookupFunction } from 'node:net';
import type { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { Agent, type Dispatcher } from 'undici';
import type { FlowTarget } from '../../core/cache/flow.js';
import { OriginRefused } from './access.js';
import { addVia, endToEnd } from './http.js';
import { OriginExchange, type HeadListener } from './origin.js';
import { PlainGetClient } from './plain-get-client.js';

/** How long an idle connection to an origin is kept for reuse (both origin clients). */
const ORIGIN_KEEPALIVE_MS = 4000;

/** Request fields never forwarded beyond those RFC 9110 calls hop-by-hop: Host is rewritten from
 * the target (RFC 9112 §3.2.2), Expect is answered by Node itself. */
export const NOT_FORWARDED: readonly string[] = ['host', 'expect'];

/** A request target seen before: its normalised URL (the primary cache key) and what an origin
 * request needs, parsed once per URL rather than once per request. */
export interface Target extends FlowTarget {
  /** The normalised absolute URL. */
  readonly url: string;
  /** `host[:port]` of the URL: the Host field of origin requests and of the cache policy's request. */
  readonly host: string;
  /** `http(s)://host[:port]`, the undici origin. */
  readonly origin: string;
  /** An https origin: TLS from the proxy to it (undici), never the plain GET client. */
  readonly https: boolean;
  /** The host name or address (IPv6 without brackets) and the port, for the plain GET client. */
  readonly hostname: string;
  readonly port: number;
  /** Path and query. */
  readonly path: string;
  /** When the host is an IP address the origin guard refuses: the 403's text. */
  readonly refused: string | undefined;
}

/** An origin failure mapped to the status and short text the client gets. */
export class OriginFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The client's status and text for an error of an origin request. */
export function originFailure(e: unknown): OriginFailure {
  if (e instanceof OriginFailure) return e;
  const err = e as { code?: string; cause?: { code?: string }; message?: string };
  const code = err?.code ?? err?.cause?.code ?? '';
  switch (code) {
    case 'EORIGINFORBIDDEN':
      return new OriginFailure(
        403,
        (e instanceof OriginRefused ? e : err.cause instanceof OriginRefused ? err.cause : undefined)?.message ?? 'origin address refused by the proxy',
      );
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
    case 'ETIMEDOUT':
      return new OriginFailure(504, 'origin did not answer in time');
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return new OriginFailure(502, 'origin host not found');
    case 'ECONNREFUSED':
      return new OriginFailure(502, 'origin refused the connection');
    default:
      if (TLS_CERT_CODE.test(code)) return new OriginFailure(502, `origin TLS certificate not accepted (${code}${err.message ? `: ${err.message}` : ''})`);
      if (code.startsWith('ERR_SSL_')) return new OriginFailure(502, `origin TLS handshake failed (${code})`);
      return new OriginFailure(502, `origin error${code ? ` (${code})` : ''}`);
  }
}

/** OpenSSL's and Node's codes for a certificate that failed verification (X509_V_ERR_* without the
 * prefix, ERR_TLS_CERT_ALTNAME_INVALID for a name mismatch). */
const TLS_CERT_CODE = /CERT|^ERR_TLS_CERT_ALTNAME_INVALID$|^UNABLE_TO_VERIFY_LEAF_SIGNATURE$|^UNABLE_TO_GET_ISSUER/;

/** The head of an origin response as a promise, for the paths that await it (a class, not a named closure per request). */
class PendingHead implements HeadListener {
  readonly promise: Promise<OriginExchange>;
  private resolve!: (x: OriginExchange) => void;
  private reject!: (e: OriginFailure) => void;

  /** `req` and `res`: the request being answered, to which interim responses go. */
  constructor(
    private readonly origins: OriginRequests,
    private readonly req?: IncomingMessage,
    private readonly res?: ServerResponse,
  ) {
    this.promise = new Promise<OriginExchange>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  head(x: OriginExchange): void {
    this.resolve(x);
  }

  failed(err: Error): void {
    this.reject(originFailure(err));
  }

  interim(status: number, headers: Record<string, string | string[]>): void {
    if (this.res) this.origins.forwardInterim(this.req!, this.res, status, headers);
  }
}

/** Options of OriginRequests. */
export interface OriginRequestsOptions {
  /** Connect timeout and the longest wait for an origin's next bytes. */
  timeoutMs: number;
  /** Resolves origin names; the origin guard refuses forbidden addresses here. */
  lookup: LookupFunction;
  /** Our Via entry (RFC 9110 §7.6.3). */
  via: string;
  /** PEM certificates trusted for https origins on top of Node's roots (tests; operators use NODE_EXTRA_CA_CERTS). */
  originCa?: string;
}

/** The proxy's origin clients and what every origin request needs. */
export class OriginRequests {
  private readonly agent: Agent;
  private readonly plain: PlainGetClient;
  private readonly via: string;

  constructor(options: OriginRequestsOptions) {
    this.via = options.via;
    this.agent = new Agent({
      connections: 512,
      keepAliveTimeout: ORIGIN_KEEPALIVE_MS,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      // The guard's lookup applies to https origins as to http ones; `ca`, when given, replaces
      // Node's default list, so the roots go with it.
      connect: {
        timeout: options.timeoutMs,
        lookup: options.lookup,
        ...(options.originCa ? { ca: [...rootCertificates, options.originCa] } : {}),
      } as Agent.Options['connect'],
    });
    this.plain = new PlainGetClient({
      timeoutMs: options.timeoutMs,
      keepAliveMs: ORIGIN_KEEPALIVE_MS,
      // Origin heads as large as undici accepts by default.
      maxHeaderBytes: 16 * 1024,
      lookup: options.lookup,
      maxSockets: 512,
    });
  }

  /** The client's request fields for the origin: end-to-end ones, Host from the target, our Via. */
  forwardHeaders(req: IncomingMessage, target: Target): Record<string, string | string[]> {
    const h = endToEnd(req.headers, NOT_FORWARDED);
    h.host = target.host;
    addVia(h, this.via);
    return h;
  }

  /** The request body to forward, if the request has one. */
  requestBody(req: IncomingMessage): Readable | undefined {
    const cl = req.headers['content-length'];
    if (req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0')) return req;
    return undefined;
  }

  /** An origin request; resolves once the response head has arrived, rejects with an OriginFailure
   * before it; interim responses go to `res` when given. */
  request(
    target: Target,
    method: string,
    headers: Record<string, string | string[]>,
    body?: Readable,
    req?: IncomingMessage,
    res?: ServerResponse,
  ): Promise<OriginExchange> {
    const head = new PendingHead(this, req, res);
    this.dispatch(target, method, headers, body, new OriginExchange(head));
    return head.promise;
  }

  /** Sends an origin request whose head goes to `x`'s listener (a refused origin address fails it at once). */
  dispatch(target: Target, method: string, headers: Record<string, string | string[]>, body: Readable | undefined, x: OriginExchange): void {
    if (target.refused) return x.onError(new OriginFailure(403, target.refused));
    // Bodiless GET and HEAD (revalidations, misses) to http origins take the plain GET client.
    if (body === undefined && (method === 'GET' || method === 'HEAD') && !target.https)
      return this.plain.request(target.hostname, target.port, method, target.path, headers, x);
    this.agent.dispatch({ origin: target.origin, path: target.path, method: method as Dispatcher.HttpMethod, headers, body }, x);
  }

  /**
   * RFC 9110 §15.2: "A proxy MUST forward 1xx responses unless the proxy itself requested the
   * generation of the 1xx response" (101 excepted: the proxy never asks to upgrade), and "A server
   * MUST NOT send a 1xx response to an HTTP/1.0 client". A 100 is not sent twice: Node answers a
   * client's Expect: 100-continue itself (Expect is not forwarded, and undici refuses it).
   * Written with `_writeRaw`, as Node's own writeEarlyHints and writeProcessing do:
   * writeEarlyHints would refuse Link values it does not parse and drop other 1xx codes.
   */
  forwardInterim(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string | string[]>): void {
    const r = res as ServerResponse & { _sent100?: boolean; _writeRaw?: (data: string, encoding: BufferEncoding) => boolean };
    if (status === 101 || (status === 100 && r._sent100) || req.httpVersionMajor !== 1 || req.httpVersionMinor < 1) return;
    if (res.headersSent || res.destroyed || typeof r._writeRaw !== 'function') return;
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Informational'}\r\n`;
    for (const name in headers) {
      const v = headers[name];
      if (name === 'via') continue;
      if (Array.isArray(v)) for (const one of v) head += `${name}: ${one}\r\n`;
      else head += `${name}: ${v}\r\n`;
    }
    const via = Array.isArray(headers.via) ? headers.via.join(', ') : headers.via;
    head += `via: ${via ? `${via}, ${this.via}` : this.via}\r\n\r\n`;
    if (status === 100) r._sent100 = true;
    r._writeRaw.call(res, head, 'latin1');
  }

  async close(): Promise<void> {
    this.plain.close();
    await this.agent.close().catch(() => undefined);
  }
}
