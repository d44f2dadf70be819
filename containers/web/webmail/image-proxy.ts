/**
 * GET /webmail/image?url=<http(s) URL>: a remote image of a message, fetched for a signed-in user
 * through OUR caching forward proxy (containers/proxy), so that:
 * - the sender's server sees the proxy's address, not the reader's, and no cookie, Referer or
 *   browser header of the reader (a fixed User-Agent, nothing else of the request is passed on);
 * - the proxy's SSRF rules decide which addresses may be reached (no private or metadata
 *   addresses unless the operator allowed them), in one place for both uses;
 * - an image many messages show (a newsletter logo) is fetched once and then served from the
 *   proxy's cache, within what the origin's caching headers allow (RFC 9111). Plain-http images
 *   are sent to the proxy in absolute form and may be cached; https ones go through a CONNECT
 *   tunnel, so the proxy can check the address but not cache.
 * Only answers whose type is image/* pass (others 415), at most `web.imageMaxBytes`, within
 * `web.imageTimeoutMs`. The answer is served with `sandbox` CSP and nosniff, so even an SVG with
 * script in it cannot run as our origin if opened directly.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { interceptors, ProxyAgent, type Dispatcher } from 'undici';
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
  let agent: ProxyAgent | undefined;
  let dispatcher: Dispatcher | undefined;
  if (proxyUrl) {
    try {
      // proxyTunnel false: plain-http URLs go to the proxy in absolute form, so it can cache them.
      agent = new ProxyAgent({ uri: proxyUrl, proxyTunnel: false, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
      dispatcher = agent.compose(interceptors.redirect({ maxRedirections: MAX_REDIRECTS }));
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
