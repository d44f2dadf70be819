/**
 * GET /webmail/image?url=<http(s) URL>: a remote image of a message, fetched for a signed-in user
 * through OUR caching forward proxy (containers/proxy), so that:
 * - the sender's server sees the proxy's address, not the reader's, and no cookie, Referer or
 *   browser header of the reader (a fixed User-Agent, nothing else of the request is passed on);
 * - the proxy's SSRF rules decide which addresses may be reached (no private or metadata
 *   addresses unless the operator allowed them), in one place for both uses;
 * - an image many messages show (a newsletter logo) is fetched once and then served from the
 *   proxy's cache, within what the origin's caching headers allow (RFC 9111). http and https
 *   images alike are sent to the proxy in absolute form (`GET https://host/logo.png`, RFC 9112
 *   §3.2.2), never through a CONNECT tunnel: the proxy opens TLS to the origin itself, checking its
 *   certificate, and caches the answer (proxy.httpsOrigin).
 * Only answers whose type is image/* pass (others 415), at most `web.imageMaxBytes`, within
 * `web.imageTimeoutMs`. The answer is served with `sandbox` CSP and nosniff, so even an SVG with
 * script in it cannot run as our origin if opened directly.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Agent, interceptors, type Dispatcher } from 'undici';
import type { Config } from '../../../core/config.js';
import type { Logger } from '../../../core/log.js';
import { sendProblem, type SignedInHandler } from './sessions.js';

/** What the sender's server sees as the client. */
export const IMAGE_USER_AGENT = 'Tomlinson-Webmail-Image-Proxy/1';
/** Redirects followed (each through the proxy) before giving up. */
const MAX_REDIRECTS = 3;
/** The longest URL taken (browsers cap far higher; an image URL this long is abuse). */
const MAX_URL = 4096;

/** The forward proxy remote images go through per `web.imageProxy`, or undefined when turned off. */
export function imageProxyUrl(config: Config): string | undefined {
  const v = config.web.imageProxy.trim();
  if (v === 'off' || v === '') return undefined;
  if (v === 'auto') {
    if (!config.proxy.enabled) return undefined;
    // The proxy listens on listenHost; a wildcard address is reached on loopback.
    const h = config.listenHost;
    const host = h === '' || h === '0.0.0.0' || h === '::' ? '127.0.0.1' : h.includes(':') ? `[${h}]` : h;
    return `http://${host}:${config.proxy.port}`;
  }
  return v;
}

/**
 * An interceptor that sends every request to the forward proxy at `proxy` in absolute form, https
 * URLs included. undici's ProxyAgent does that for http URLs only and tunnels https through
 * CONNECT, which a proxy can neither see into nor cache; this is its Http1ProxyWrapper without the
 * scheme test. Credentials in the proxy URL become Proxy-Authorization (RFC 9110 §11.7.1), as
 * ProxyAgent does.
 */
export function absoluteForm(proxy: URL): Dispatcher.DispatcherComposeInterceptor {
  const auth = proxy.username
    ? `Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString('base64')}`
    : undefined;
  return (dispatch) => (opts, handler) => {
    const target = new URL(String(opts.origin));
    const headers = headerRecord(opts.headers);
    headers.host = target.host;
    if (auth) headers['proxy-authorization'] = auth;
    return dispatch({ ...opts, origin: proxy.origin, path: `${target.origin}${opts.path}`, headers }, handler);
  };
}

/** Request headers in any of undici's shapes (a record, a flat name/value list, pairs) as a record with lower-case names. */
function headerRecord(h: Dispatcher.DispatchOptions['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  const put = (k: unknown, v: unknown): void => {
    if (v !== undefined && v !== null) out[String(k).toLowerCase()] = Array.isArray(v) ? v.join(', ') : String(v);
  };
  if (Array.isArray(h)) {
    if (h.length > 0 && Array.isArray(h[0])) for (const [k, v] of h as unknown as [string, string][]) put(k, v);
    else for (let i = 0; i + 1 < h.length; i += 2) put(h[i], h[i + 1]);
  } else if (typeof (h as Iterable<unknown>)[Symbol.iterator] === 'function') {
    for (const [k, v] of h as Iterable<[string, string]>) put(k, v);
  } else {
    for (const [k, v] of Object.entries(h)) put(k, v);
  }
  return out;
}

/** The image endpoint and what it holds open. */
export interface ImageProxy {
  handler: SignedInHandler;
  close(): Promise<void>;
}

/** Counts bytes through and fails past the limit (the answer then stops short). */
class Limit extends Transform {
  private seen = 0;
  constructor(private readonly max: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.max) return done(new Error(`image larger than ${this.max} bytes`));
    done(null, chunk);
  }
}

/** Options beyond the configuration, for tests. */
export interface ImageProxyOptions {
  /** @default imageProxyUrl(config) */
  proxyUrl?: string;
}

/** Makes the /webmail/image handler. */
export function createImageProxy(config: Config, log: Logger, options: ImageProxyOptions = {}): ImageProxy {
  const proxyUrl = options.proxyUrl ?? imageProxyUrl(config);
  const { imageMaxBytes: maxBytes, imageTimeoutMs: timeoutMs } = config.web;
  let agent: Agent | undefined;
  let dispatcher: Dispatcher | undefined;
  if (proxyUrl) {
    try {
      const proxy = new URL(proxyUrl);
      if (proxy.protocol !== 'http:' && proxy.protocol !== 'https:') throw new Error(`not an http(s) URL: ${proxyUrl}`);
      // Every request, http or https, goes to the proxy in absolute form so that it can cache it;
      // each redirect is a new request through the proxy (the redirect step wraps the rewrite).
      agent = new Agent({ headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
      dispatcher = agent.compose(absoluteForm(proxy), interceptors.redirect({ maxRedirections: MAX_REDIRECTS }));
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'web.imageProxy is not a usable proxy URL: remote images are refused');
    }
  } else {
    log.info('web.imageProxy is off: the webmail refuses remote images');
  }

  const handler: SignedInHandler = async (req: IncomingMessage, res: ServerResponse, url: URL, user: string) => {
    if (!dispatcher) return sendProblem(res, 503, 'Remote images are turned off on this server (web.imageProxy)');
    const raw = url.searchParams.get('url') ?? '';
    let target: URL;
    try {
      target = new URL(raw);
    } catch {
      return sendProblem(res, 400, 'url must be an absolute http or https URL');
    }
    if ((target.protocol !== 'http:' && target.protocol !== 'https:') || raw.length > MAX_URL || target.username || target.password) {
      return sendProblem(res, 400, 'url must be an absolute http or https URL');
    }
    target.hash = '';
    const signal = AbortSignal.timeout(timeoutMs);
    let answer: Dispatcher.ResponseData;
    try {
      answer = await dispatcher.request({
        origin: target.origin,
        path: `${target.pathname}${target.search}`,
        method: 'GET',
        // Built here, never copied from the reader's request: no Cookie, no Referer, no client hints.
        headers: { 'user-agent': IMAGE_USER_AGENT, accept: 'image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8' },
        signal,
      });
    } catch (e) {
      const timedOut = signal.aborted || /timeout/i.test((e as Error).name + (e as Error).message);
      log.info({ user, host: target.host, err: (e as Error).message }, 'webmail image fetch failed');
      return sendProblem(res, timedOut ? 504 : 502, timedOut ? 'The image took too long' : 'The image could not be fetched');
    }
    const { statusCode, headers, body } = answer;
    const type = String(headers['content-type'] ?? '')
      .split(';')[0]
      .trim()
      .toLowerCase();
    const declared = Number(headers['content-length']);
    // undici's body emits an AbortError when destroyed unread; nobody waits for it here.
    const discard = () => body.on('error', () => undefined).destroy();
    const refuse = (status: number, title: string) => {
      discard();
      sendProblem(res, status, title);
    };
    if (statusCode !== 200) return refuse(502, `The image's server answered ${statusCode}`);
    if (!/^image\/[a-z0-9.+-]+$/.test(type)) return refuse(415, 'That URL is not an image');
    if (Number.isFinite(declared) && declared > maxBytes) return refuse(413, `The image is larger than ${maxBytes} bytes`);
    res.writeHead(200, {
      'content-type': type,
      ...(Number.isFinite(declared) ? { 'content-length': String(declared) } : {}),
      'cache-control': 'private, max-age=86400',
      'content-security-policy': "default-src 'none'; sandbox",
      'x-content-type-options': 'nosniff',
      'cross-origin-resource-policy': 'same-origin',
    });
    if (req.method === 'HEAD') {
      discard();
      return void res.end();
    }
    try {
      await pipeline(body, new Limit(maxBytes), res, { signal });
    } catch (e) {
      // Headers are out: the only way to say "incomplete" is to cut the connection.
      log.info({ user, host: target.host, err: (e as Error).message }, 'webmail image cut short');
      res.destroy();
    }
  };

  return {
    handler,
    async close() {
      await agent?.close();
    },
  };
}
