/**
 * The proxy's access log (issue 18): one pino line per request, as Squid's operators expect, with
 * the method, URL, status, Cache-Status (RFC 9211), bytes sent to the client (head included, as
 * Squid counts them), the time taken and, on the proxy's own refusals and errors, the reason.
 * It rides on the response object (http.createServer's ServerResponse option): the request's start
 * and the Cache-Status are picked up where the response is made, and one shared 'close' listener
 * writes the line, so no call site has to remember it and no closure is made per request.
 */
import { ServerResponse, type IncomingMessage, type OutgoingHttpHeader, type OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '../../core/log.js';

/** The reason of a response the proxy made itself (a refusal or an error), for the log line. */
export const REASON = Symbol('reason');

/** A response that can carry a REASON. */
export type ReasonedResponse = ServerResponse & { [REASON]?: string };

/**
 * The access log's logger: a child of the proxy's without the root's redaction paths, which cost
 * about as much as the rest of the line (the line's fields are fixed and carry no secret; userinfo
 * is cut from URLs by loggedUrl).
 */
export function accessLogger(log: Logger): Logger {
  return log.child({ c: 'access' }, { redact: { paths: [] } });
}

/** The request-target as logged: userinfo (RFC 9110 §4.2.4, deprecated, often a password) removed. */
export function loggedUrl(url: string | undefined): string | undefined {
  return url !== undefined && url.includes('@') ? url.replace(/^([a-z][a-z0-9+.-]*:\/\/)?[^/?#@]*@/i, '$1') : url;
}

function cacheStatusOf(h: OutgoingHttpHeaders | OutgoingHttpHeader[]): string | undefined {
  if (!Array.isArray(h)) return h['cache-status'] as string | undefined;
  // A flat name/value list; the proxy puts Cache-Status near the end.
  for (let i = h.length - 2; i >= 0; i -= 2) if (h[i] === 'cache-status') return h[i + 1] as string;
  return undefined;
}

/**
 * The ServerResponse class for the proxy's server: every response logs one line to `log` at info
 * when `everyRequest`, else only the proxy's own refusals and errors (those are always logged).
 */
export function accessLoggedResponse(log: Logger, everyRequest: boolean): typeof ServerResponse {
  class AccessLoggedResponse extends ServerResponse {
    readonly start = performance.now();
    /** The client connection, kept here: Node may clear `req.socket` before 'close' (a request body left unread). */
    readonly client: Socket;
    readonly sentBefore: number;
    cacheStatus: string | undefined = undefined;
    [REASON]: string | undefined = undefined;

    // Node passes (req, { highWaterMark, rejectNonStandardBodyWrites }); both go on to ServerResponse.
    constructor(req: IncomingMessage, options?: object) {
      // @ts-expect-error: @types/node declares the constructor with `req` only.
      super(req, options);
      this.client = req.socket;
      this.sentBefore = req.socket.bytesWritten;
      this.on('close', onClose);
    }

    override writeHead(statusCode: number, a?: string | OutgoingHttpHeaders | OutgoingHttpHeader[], b?: OutgoingHttpHeaders | OutgoingHttpHeader[]): this {
      const h = typeof a === 'string' ? b : a;
      if (h !== undefined) this.cacheStatus = cacheStatusOf(h);
      return super.writeHead(statusCode, a as string, b);
    }
  }

  function onClose(this: AccessLoggedResponse): void {
    const reason = this[REASON];
    if (!everyRequest && reason === undefined) return;
    const req = this.req;
    const socket = this.client;
    log.info({
      client: socket.remoteAddress,
      method: req.method,
      url: loggedUrl(req.url),
      // 0: the client went away before a response head was sent (Squid logs 000).
      status: this.headersSent ? this.statusCode : 0,
      cache: this.cacheStatus,
      bytes: socket.bytesWritten - this.sentBefore,
      ms: Math.round((performance.now() - this.start) * 1000) / 1000,
      reason,
    });
  }

  return AccessLoggedResponse as unknown as typeof ServerResponse;
}
