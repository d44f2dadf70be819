/**
 * The webmail's files (dist/webmail, made by scripts/build-webmail.mjs), served by the web
 * listener's `static` hook. They are few and small, so they are read once at start into memory with
 * their gzip and brotli forms made then, and each answer is one write.
 *
 * - GET /                       → 302 /webmail/
 * - GET /webmail/assets/<file>  → the file; its name carries a hash of its content, so it may be
 *                                 kept a year (`immutable`, RFC 8246)
 * - GET /webmail/ and any other /webmail/<path> (client routes) → index.html, `no-cache` so a new
 *   build is picked up at the next load, with the contract's CSP and framing headers
 *
 * The folder is `web.webmailDir`, or else the `dist/webmail` found walking up from this module:
 * that is the repository's under tsx (containers/web/webmail/ → the root) and the image's from the
 * bundle (/app/dist/containers/main.mjs → /app). When it is missing the listener still serves JMAP
 * and answers the webmail's paths 503 with what to run.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, extname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants as zlibConstants, gzipSync } from 'node:zlib';
import type { Config } from '../../../core/config.js';
import type { Logger } from '../../../core/log.js';
import type { StaticHandler } from '../server.js';

/** The HTML's headers (the webmail contract): the app's own scripts only, no framing by others. */
export const HTML_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
};

const ASSET_CACHE = 'public, max-age=31536000, immutable';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.webp': 'image/webp',
  '.woff2': 'font/woff2',
};
/** Types worth compressing (images and fonts are compressed already). */
const COMPRESSIBLE = new Set(['.html', '.js', '.mjs', '.css', '.map', '.json', '.txt', '.svg']);
/** A built webmail is far below this; a bigger folder is a misconfigured path, not the app. */
const MAX_TOTAL_BYTES = 64 * 1024 * 1024;

interface StaticFile {
  type: string;
  etag: string;
  identity: Buffer;
  gzip?: Buffer;
  br?: Buffer;
}

/** The built webmail folder next to this module's app: the first `dist/webmail` walking up. */
export function defaultWebmailDir(from = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'dist', 'webmail');
    if (existsSync(join(candidate, 'index.html'))) return candidate;
    if (dirname(dir) === dir) break;
  }
  // Not built yet: name where `npm run build` puts it (the repository's dist/webmail).
  return resolve(from, '../../../dist/webmail');
}

async function filesUnder(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

async function load(root: string): Promise<Map<string, StaticFile>> {
  const files = new Map<string, StaticFile>();
  let total = 0;
  for (const path of await filesUnder(root)) {
    total += (await stat(path)).size;
    if (total > MAX_TOTAL_BYTES) throw new Error(`${root} holds more than ${MAX_TOTAL_BYTES} bytes; is web.webmailDir the built webmail?`);
    const body = await readFile(path);
    const ext = extname(path).toLowerCase();
    const file: StaticFile = {
      type: TYPES[ext] ?? 'application/octet-stream',
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
      identity: body,
    };
    if (COMPRESSIBLE.has(ext) && body.length > 256) {
      file.gzip = gzipSync(body, { level: 9 });
      file.br = brotliCompressSync(body, { params: { [zlibConstants.BROTLI_PARAM_QUALITY]: 11, [zlibConstants.BROTLI_PARAM_SIZE_HINT]: body.length } });
    }
    files.set(relative(root, path).split(sep).join('/'), file);
  }
  return files;
}

/** The codings an Accept-Encoding allows (RFC 9110 §12.5.3), q=0 meaning "not this one". */
function accepted(header: string | undefined): Set<string> {
  const out = new Set<string>();
  for (const part of (header ?? '').split(',')) {
    const [name, ...params] = part.trim().toLowerCase().split(';');
    const q = params.map((p) => /^\s*q=([0-9.]+)\s*$/.exec(p)).find(Boolean);
    if (name && !(q && Number(q[1]) === 0)) out.add(name.trim());
  }
  return out;
}

function send(req: IncomingMessage, res: ServerResponse, file: StaticFile, headers: Record<string, string>): void {
  const base: Record<string, string> = { 'content-type': file.type, etag: file.etag, vary: 'Accept-Encoding', 'x-content-type-options': 'nosniff', ...headers };
  // RFC 9110 §13.1.2: a weak comparison; any of the listed tags (or *) matches.
  const inm = req.headers['if-none-match'];
  if (inm && (inm.trim() === '*' || inm.split(',').some((t) => t.trim().replace(/^W\//, '') === file.etag))) {
    res.writeHead(304, base);
    return void res.end();
  }
  const ok = accepted(req.headers['accept-encoding']);
  let body = file.identity;
  if (file.br && ok.has('br')) {
    body = file.br;
    base['content-encoding'] = 'br';
  } else if (file.gzip && (ok.has('gzip') || ok.has('x-gzip'))) {
    body = file.gzip;
    base['content-encoding'] = 'gzip';
  }
  base['content-length'] = String(body.length);
  res.writeHead(200, base);
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Options beyond the configuration, for tests. */
export interface WebmailStaticOptions {
  /** @default web.webmailDir, else defaultWebmailDir() */
  dir?: string;
}

/**
 * Reads the built webmail and returns the listener's `static` hook. A missing folder is not an
 * error: the hook then answers the webmail's paths 503 (and logs a warning once now).
 */
export async function createWebmailStatic(config: Config, log: Logger, options: WebmailStaticOptions = {}): Promise<StaticHandler> {
  const dir = resolve(options.dir ?? (config.web.webmailDir || defaultWebmailDir()));
  let files: Map<string, StaticFile> | undefined;
  if (existsSync(join(dir, 'index.html'))) {
    files = await load(dir);
    log.info({ dir, files: files.size }, 'webmail files loaded');
  } else {
    log.warn({ dir }, 'webmail not built: its pages answer 503 until `npm run build` (or `npm start`) builds it');
  }

  return async (req, res) => {
    const path = new URL(req.url ?? '/', 'https://x').pathname;
    const method = req.method ?? 'GET';
    if (path !== '/' && path !== '/webmail' && !path.startsWith('/webmail/')) return false;
    if (method !== 'GET' && method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' });
      res.end('Method Not Allowed\n');
      return true;
    }
    if (path === '/' || path === '/webmail') {
      res.writeHead(302, { location: '/webmail/', 'cache-control': 'no-cache', 'content-length': '0' });
      res.end();
      return true;
    }
    if (!files) {
      res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'retry-after': '60' });
      res.end('The webmail is not built. Run `npm run build` (or `npm start`, which builds it) and restart.\n');
      return true;
    }
    if (path.startsWith('/webmail/assets/')) {
      let name: string;
      try {
        name = decodeURIComponent(path.slice('/webmail/'.length));
      } catch {
        name = '';
      }
      const file = files.get(name);
      if (!file) {
        // A missing asset is a 404, never index.html (a stale page would run HTML as script).
        res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-cache' });
        res.end('Not Found\n');
        return true;
      }
      send(req, res, file, { 'cache-control': ASSET_CACHE });
      return true;
    }
    // index.html for /webmail/, /webmail/index.html and the app's own routes.
    send(req, res, files.get('index.html')!, { 'cache-control': 'no-cache', ...HTML_HEADERS });
    return true;
  };
}
