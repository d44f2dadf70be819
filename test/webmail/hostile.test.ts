/**
 * The message reader against hostile HTML (test/webmail/hostile/*.html), in Debian's Chromium.
 * A harness page, served from 127.0.0.1 with the webmail's page CSP and two cookies (one
 * HttpOnly), renders each corpus file through prepareMessageHtml + MessageFrame (bundled here
 * with esbuild, as scripts/build-webmail.mjs does). A "tracker" server on another port stands for
 * the sender's server and counts every request. For each file, in both modes (remote content
 * blocked, and allowed through /webmail/image, which the harness serves itself in place of the
 * server's proxy):
 *   - no canary: window.__canary, a postMessage, a dialog, a console 'pwned', a popup, a
 *     navigation of the page or of the frame;
 *   - no request to the tracker (given a second after load) and, from Playwright's view of the
 *     network, no request to any origin but the harness's;
 *   - the frame's DOM holds nothing that could run or fetch (no script, handler, form, frame,
 *     plug-in, SVG; only http(s)/mailto links, only same-origin or data:image sources) and never
 *     the cookie.
 * First, each file marked `<!-- live -->` is loaded raw as a page of its own, without CSP, and
 * must trip a detector: that shows the detectors work and the corpus is really hostile.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser } from './harness.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CORPUS = join(ROOT, 'test/webmail/hostile');
const FILES = readdirSync(CORPUS)
  .filter((f) => f.endsWith('.html'))
  .sort();

/** The page policy from the contract (WEBMAIL-CONTRACT.md, "Static"). */
const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; " +
  "frame-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const HTTPONLY_SECRET = 'httponly-secret-4f1c';
const READABLE_SECRET = 'readable-secret-9a7e';

// A 1x1 transparent PNG, the answer of the stand-in image proxy and download endpoint.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');

/** A 10x600 grey PNG (stored, not compressed). */
const TALL_PNG = png(10, 600);

function png(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 0, 0, 0, 0], 8); // 8-bit greyscale
  const rows = Buffer.alloc((width + 1) * height, 0x80);
  for (let y = 0; y < height; y++) rows[y * (width + 1)] = 0; // filter byte: none
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/**
 * The harness script: renders MessageFrame into #root, exposes prepareMessageHtml, and lists what
 * in the rendered frame's DOM could run, fetch elsewhere or leak (`violations`), all under
 * (globalThis as unknown as HarnessGlobal).harness. Bundled from this text, not a file: test/ is type-checked without the DOM
 * library, and esbuild only strips types.
 */
const HARNESS_ENTRY = String.raw`
import { render } from 'preact';
import { MessageFrame } from './containers/web/webmail/ui/message-frame.tsx';
import { prepareMessageHtml } from './containers/web/webmail/ui/message-html.ts';
window.harness = {
  prepare: (html, allowRemote, cids) => prepareMessageHtml(html, { allowRemote, cidUrl: (c) => cids[c] }),
  show: (html, allowRemote, cids) =>
    new Promise((resolve) => {
      const root = document.getElementById('root');
      render(null, root);
      let blocked;
      render(<MessageFrame html={html} allowRemote={allowRemote} cidUrl={(c) => cids[c]} onRemoteBlocked={(n) => (blocked = n)} />, root);
      const frame = root.querySelector('iframe');
      frame.addEventListener('load', () => setTimeout(() => resolve(blocked), 0), { once: true });
    }),
  // One frame kept across messages, as the reader keeps it: each call swaps the body of the frame
  // the last call left (rendering it first if there is none), and resolves with that body's markup.
  swap: (html, allowRemote, cids) =>
    new Promise((resolve) => {
      const root = document.getElementById('root');
      const frame = () => root.querySelector('iframe');
      const done = () => setTimeout(() => resolve(frame().contentDocument.body.innerHTML), 0);
      const fresh = !frame() || frame().contentWindow.location.href !== 'about:srcdoc';
      if (!frame()) render(null, root);
      window.swaps = (window.swaps ?? 0) + 1;
      render(<MessageFrame html={html} source={String(window.swaps)} allowRemote={allowRemote} cidUrl={(c) => cids[c]} />, root);
      if (fresh) frame().addEventListener('load', done, { once: true });
      else done();
    }),
  // The negative control of violations(): the message as it came, in our frame document.
  showRaw: (html) =>
    new Promise((resolve) => {
      const root = document.getElementById('root');
      const shell = prepareMessageHtml('', { allowRemote: false, cidUrl: () => undefined }).document;
      render(null, root);
      render(<iframe title="Message body" sandbox="allow-same-origin" srcdoc={shell.replace('<body></body>', () => '<body>' + html + '</body>')} />, root);
      root.querySelector('iframe').addEventListener('load', () => resolve(), { once: true });
    }),
  violations: (secrets) => {
    const bad = [];
    const iframe = document.querySelector('iframe[title="Message body"]');
    if (!iframe) return ['no frame'];
    if (/allow-scripts/.test(iframe.getAttribute('sandbox') ?? '')) bad.push('sandbox allows scripts');
    const d = iframe.contentDocument;
    if (!d) return ['frame document unreachable'];
    if (iframe.contentWindow.location.href !== 'about:srcdoc') bad.push('frame navigated to ' + iframe.contentWindow.location.href);
    const html = d.documentElement.outerHTML;
    for (const s of secrets) if (html.includes(s)) bad.push('cookie in the frame');
    const banned = new Set(
      'script iframe frame frameset object embed applet form input button textarea select link svg math noscript template audio source track portal fencedframe isindex title listing xmp plaintext noembed noframes'.split(' '),
    );
    // Our own endpoints (resolved against the app's origin) and inline raster images only.
    const SRC = /^(\/webmail\/image\?url=|\/jmap\/download\/|data:image\/(png|gif|jpeg|webp)[;,])/;
    const CSS_URL = /url\(\s*["']?([^"')]*)/gi;
    const cssOk = (css, where) => {
      if (/@import|@font-face|image-set\(|var\(|expression\(|behavior/i.test(css)) bad.push(where + ': ' + css.slice(0, 80));
      for (const m of css.matchAll(CSS_URL)) if (!SRC.test(m[1])) bad.push(where + ' url ' + m[1]);
    };
    const metas = d.querySelectorAll('meta');
    if (metas.length !== 3 || d.querySelector('meta[http-equiv="refresh" i]')) bad.push(metas.length + ' meta elements');
    const bases = d.querySelectorAll('base');
    if (bases.length !== 1 || bases[0].hasAttribute('href')) bad.push('a base from the message');
    for (const el of d.querySelectorAll('*')) {
      const tag = el.localName;
      if (banned.has(tag)) bad.push('<' + tag + '>');
      if (tag === 'style') cssOk(el.textContent ?? '', 'style element');
      // Markup inside a style element is what mutation XSS hides in; ours escapes every '<'.
      if (tag === 'style' && (el.textContent ?? '').includes('<')) bad.push('< in a style element');
      for (const { name, value } of Array.from(el.attributes)) {
        if (name.startsWith('on')) bad.push(tag + ' ' + name);
        else if (['ping', 'action', 'formaction', 'srcset', 'xlink:href', 'download'].includes(name)) bad.push(tag + ' ' + name);
        else if (name === 'href' && !/^(https?:|mailto:)/i.test(value)) bad.push(tag + ' href=' + value);
        else if (['src', 'poster', 'background', 'data', 'code', 'codebase'].includes(name) && !SRC.test(value)) bad.push(tag + ' ' + name + '=' + value);
        else if (name === 'style') cssOk(value, tag + ' style');
      }
      if (tag === 'a' && (el.getAttribute('target') !== '_blank' || el.getAttribute('rel') !== 'noopener noreferrer')) bad.push('link without target/rel');
    }
    return bad;
  },
};
`;

/** What the harness script puts on the page's global object. */
interface HarnessGlobal {
  harness: {
    prepare: (html: string, allowRemote: boolean, cids: Record<string, string>) => { document: string; remoteBlocked: number };
    show: (html: string, allowRemote: boolean, cids: Record<string, string>) => Promise<number>;
    swap: (html: string, allowRemote: boolean, cids: Record<string, string>) => Promise<string>;
    showRaw: (html: string) => Promise<void>;
    violations: (secrets: string[]) => string[];
  };
}

/** What the detectors put on the page's global object. */
interface DetectorGlobal {
  __canary?: unknown;
  __messages?: unknown[];
  document: { body?: { innerHTML: string } };
}

let browser: Browser;
let app: Server;
let tracker: Server;
let appOrigin: string;
let trackerOrigin: string;
let bundle: string;
/** Every request the tracker saw, and every request for the app's image proxy and downloads. */
const trackerHits: string[] = [];
const proxied: string[] = [];

function listen(server: Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

/** The first line of a corpus file: `<!-- live -->`, `<!-- live, lines -->` or markup. */
function marks(file: string): { live: boolean; lines: boolean } {
  const first = readFileSync(join(CORPUS, file), 'utf8').split('\n', 1)[0];
  const m = /^<!-- (.*) -->$/.exec(first);
  const words = m ? m[1].split(/,\s*/) : [];
  return { live: words.includes('live'), lines: words.includes('lines') };
}

/**
 * The messages a corpus file holds: the whole file, or with `lines` one message per line (each
 * mutation-XSS classic must meet the sanitiser on its own: one left open would swallow the rest).
 */
function messages(file: string): string[] {
  const text = corpus(file);
  if (!marks(file).lines) return [text];
  return text
    .split('\n')
    .slice(1)
    .filter((l) => l.trim() !== '');
}

function corpus(file: string): string {
  return readFileSync(join(CORPUS, file), 'utf8').replaceAll('{{tracker}}', trackerOrigin).replaceAll('{{trackerhost}}', new URL(trackerOrigin).host);
}

function appHandler(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', appOrigin);
  if (url.pathname === '/') {
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8',
      'content-security-policy': PAGE_CSP,
      'referrer-policy': 'no-referrer',
      'x-content-type-options': 'nosniff',
      'set-cookie': [`sid=${HTTPONLY_SECRET}; HttpOnly; SameSite=Strict; Path=/`, `readable=${READABLE_SECRET}; SameSite=Strict; Path=/`],
    });
    res.end(
      '<!doctype html><html><head><meta charset="utf-8"><title>harness</title></head><body><div id="root"></div><script src="/harness.js"></script></body></html>',
    );
  } else if (url.pathname === '/harness.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
  } else if (url.pathname.startsWith('/raw/')) {
    // The control: a corpus file as a page of its own, no CSP, no sanitiser.
    const file = url.pathname.slice(5);
    if (!FILES.includes(file)) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(corpus(file));
  } else if (url.pathname === '/jmap/download/tall.png') {
    // Late and without declared size: the frame must grow when it arrives.
    setTimeout(() => res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'no-store' }).end(TALL_PNG), 300);
  } else if (url.pathname === '/webmail/image' || url.pathname.startsWith('/jmap/download/')) {
    proxied.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'no-store' }).end(PNG);
  } else {
    res.writeHead(404).end();
  }
}

beforeAll(async () => {
  tracker = createServer((req, res) => {
    trackerHits.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'image/png', 'access-control-allow-origin': '*' }).end(PNG);
  });
  trackerOrigin = await listen(tracker);
  app = createServer(appHandler);
  appOrigin = await listen(app);
  const built = await build({
    stdin: { contents: HARNESS_ENTRY, resolveDir: ROOT, loader: 'tsx', sourcefile: 'harness.tsx' },
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: ['chrome120'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    write: false,
    logLevel: 'warning',
  });
  bundle = built.outputFiles[0].text;
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => (app ? app.close(r) : r(undefined)));
  await new Promise((r) => (tracker ? tracker.close(r) : r(undefined)));
});

/** What a page did that it must not: detectors installed before any script of the page runs. */
interface Watch {
  context: BrowserContext;
  page: Page;
  alarms: string[];
  requests: string[];
}

async function open(): Promise<Watch> {
  const context = await browser.newContext();
  const page = await context.newPage();
  const alarms: string[] = [];
  const requests: string[] = [];
  page.on('dialog', (d) => {
    alarms.push(`dialog ${d.message()}`);
    void d.dismiss();
  });
  page.on('console', (m) => {
    if (m.text().includes('pwned')) alarms.push(`console ${m.text()}`);
  });
  page.on('popup', (p) => alarms.push(`popup ${p.url()}`));
  page.on('request', (r) => requests.push(r.url()));
  // Only in the top page (an init script runs in every frame that may run script).
  await page.addInitScript({
    content: "if (window === window.top) { window.__messages = []; addEventListener('message', (e) => window.__messages.push(String(e.data))); }",
  });
  return { context, page, alarms, requests };
}

/** Everything the detectors caught on the page, as readable strings (empty when clean). */
async function tripped(w: Watch, expectedUrl: string): Promise<string[]> {
  const found = [...w.alarms];
  if (w.page.url() !== expectedUrl) found.push(`top navigated to ${w.page.url()}`);
  else {
    const state = await w.page.evaluate(() => {
      const g = globalThis as unknown as DetectorGlobal;
      return { canary: g.__canary, messages: g.__messages ?? [], pwnedBody: g.document.body?.innerHTML === 'pwned' };
    });
    if (state.canary !== undefined) found.push(`canary ${String(state.canary)}`);
    for (const m of state.messages) found.push(`postMessage ${String(m)}`);
    if (state.pwnedBody) found.push('parent body rewritten');
  }
  return found;
}

/** Violations in the rendered frame's DOM (see the harness's `violations`). */
function frameViolations(page: Page): Promise<string[]> {
  return page.evaluate((secrets) => (globalThis as unknown as HarnessGlobal).harness.violations(secrets), [HTTPONLY_SECRET, READABLE_SECRET]);
}

const settle = () => new Promise((r) => setTimeout(r, 1000));

describe('the corpus is hostile, and the detectors see it', () => {
  const live = FILES.filter((f) => marks(f).live);
  it('marks most files live', () => {
    expect(live.length).toBeGreaterThanOrEqual(15);
  });
  // As a page of its own (no CSP, no sanitiser, scripts on), each live file trips a detector.
  it.each(live)('%s trips a detector as a raw page', async (file) => {
    const w = await open();
    try {
      const before = trackerHits.length;
      const url = `${appOrigin}/raw/${file}`;
      await w.page.goto(url, { waitUntil: 'load', timeout: 15_000 }).catch(() => undefined);
      await settle();
      const found = [...(await tripped(w, url).catch((e) => [`page gone: ${String(e)}`])), ...trackerHits.slice(before)];
      expect(found.length, `${file} tripped nothing`).toBeGreaterThan(0);
    } finally {
      await w.context.close();
    }
  });
  // Unsanitised in a frame like ours, every message of every file shows a DOM violation.
  it('every message of every file breaks a DOM rule when not sanitised', async () => {
    const w = await open();
    try {
      await w.page.goto(`${appOrigin}/`, { waitUntil: 'load' });
      const clean: string[] = [];
      for (const file of FILES)
        for (const [i, html] of messages(file).entries()) {
          await w.page.evaluate((h) => (globalThis as unknown as HarnessGlobal).harness.showRaw(h), html);
          const found = await w.page.evaluate((s) => (globalThis as unknown as HarnessGlobal).harness.violations(s), []);
          if (found.length === 0) clean.push(`${file}#${i + 1}`);
        }
      expect(clean).toEqual([]);
    } finally {
      await w.context.close();
    }
  });
});

describe('hostile messages in MessageFrame', () => {
  for (const allowRemote of [false, true]) {
    it.each(FILES)(`%s is inert (allowRemote=${allowRemote})`, async (file) => {
      const w = await open();
      try {
        const url = `${appOrigin}/`;
        await w.page.goto(url, { waitUntil: 'load' });
        const trackerBefore = trackerHits.length;
        const violations: string[] = [];
        for (const [i, html] of messages(file).entries()) {
          await w.page.evaluate(([h, remote]) => (globalThis as unknown as HarnessGlobal).harness.show(h, remote, {}), [html, allowRemote] as const);
          for (const v of await frameViolations(w.page)) violations.push(`#${i + 1}: ${v}`);
        }
        expect(violations).toEqual([]);
        await settle();
        expect(await tripped(w, url)).toEqual([]);
        expect(trackerHits.slice(trackerBefore)).toEqual([]);
        const foreign = w.requests.filter((r) => !r.startsWith(`${appOrigin}/`) && !/^(data|about|blob):/.test(r));
        expect(foreign).toEqual([]);
        if (!allowRemote) expect(w.requests.filter((r) => r.includes('/webmail/image'))).toEqual([]);
      } finally {
        await w.context.close();
      }
    });
  }
});

describe('hostile messages swapped into one MessageFrame', () => {
  // The reader keeps one frame and replaces its body at each open: every message of the corpus,
  // one after another in the same frame, must leave it as inert as a fresh one, with exactly the
  // sanitised body (the string form of the same nodes) in it.
  for (const allowRemote of [false, true]) {
    it(`keeps the frame inert across the whole corpus (allowRemote=${allowRemote})`, async () => {
      const w = await open();
      try {
        const url = `${appOrigin}/`;
        await w.page.goto(url, { waitUntil: 'load' });
        const trackerBefore = trackerHits.length;
        const problems: string[] = [];
        const all = FILES.flatMap((file) => messages(file).map((html, i) => ({ where: `${file}#${i + 1}`, html })));
        for (const { where, html } of [...all, { where: 'plain', html: '<p>plain words</p>' }]) {
          const body = await w.page.evaluate(([h, remote]) => (globalThis as unknown as HarnessGlobal).harness.swap(h, remote, {}), [
            html,
            allowRemote,
          ] as const);
          const expected = (
            await w.page.evaluate(([h, remote]) => (globalThis as unknown as HarnessGlobal).harness.prepare(h, remote, {}), [html, allowRemote] as const)
          ).document;
          if (`${expected.slice(0, expected.indexOf('<body>'))}<body>${body}</body></html>` !== expected)
            problems.push(`${where}: the frame's body is not the sanitised one`);
          for (const v of await frameViolations(w.page)) problems.push(`${where}: ${v}`);
        }
        expect(problems).toEqual([]);
        expect(
          await w.page.evaluate(
            () =>
              (
                globalThis as unknown as { document: { querySelector(s: string): { contentDocument: { body: { textContent: string } } } } }
              ).document.querySelector('iframe').contentDocument.body.textContent,
          ),
        ).toBe('plain words');
        await settle();
        expect(await tripped(w, url)).toEqual([]);
        expect(trackerHits.slice(trackerBefore)).toEqual([]);
        const foreign = w.requests.filter((r) => !r.startsWith(`${appOrigin}/`) && !/^(data|about|blob):/.test(r));
        expect(foreign).toEqual([]);
        if (!allowRemote) expect(w.requests.filter((r) => r.includes('/webmail/image'))).toEqual([]);
      } finally {
        await w.context.close();
      }
    });
  }
});

describe('remote images and the proxy', () => {
  it('blocks and counts the tracking pixel, then loads it only through /webmail/image', async () => {
    const w = await open();
    try {
      await w.page.goto(`${appOrigin}/`, { waitUntil: 'load' });
      const html = corpus('tracking-pixel.html');
      const blocked = await w.page.evaluate((h) => (globalThis as unknown as HarnessGlobal).harness.show(h, false, {}), html);
      expect(blocked).toBe(2);
      await settle();
      expect(w.requests.filter((r) => r.includes('/webmail/image'))).toEqual([]);

      const before = proxied.length;
      const trackerBefore = trackerHits.length;
      const shown = await w.page.evaluate((h) => (globalThis as unknown as HarnessGlobal).harness.show(h, true, {}), html);
      expect(shown).toBe(0);
      await settle();
      const pixel = `${trackerOrigin}/pixel.gif?id=12345`;
      expect(proxied.slice(before)).toContain(`/webmail/image?url=${encodeURIComponent(pixel)}`);
      expect(proxied.slice(before)).toContain(`/webmail/image?url=${encodeURIComponent(`${trackerOrigin}/logo.png`)}`);
      expect(trackerHits.slice(trackerBefore)).toEqual([]);
      // The proxy request carries the session cookie (allow-same-origin) and no Referer.
      const req = w.requests.find((r) => r.includes(encodeURIComponent(pixel)));
      expect(req).toBeDefined();
      expect(await frameViolations(w.page)).toEqual([]);
    } finally {
      await w.context.close();
    }
  });

  it('sends the cookie and no Referer with the proxy request', async () => {
    const w = await open();
    try {
      await w.page.goto(`${appOrigin}/`, { waitUntil: 'load' });
      const seen = w.page.waitForRequest((r) => r.url().includes('/webmail/image'));
      await w.page.evaluate((h) => (globalThis as unknown as HarnessGlobal).harness.show(h, true, {}), corpus('tracking-pixel.html'));
      const req = await seen;
      const headers = await req.allHeaders();
      expect(headers.cookie ?? '').toContain(`sid=${HTTPONLY_SECRET}`);
      expect(headers.referer).toBeUndefined();
    } finally {
      await w.context.close();
    }
  });
});

describe('MessageFrame', () => {
  it('is as tall as its content: grows for a late image, shrinks for a shorter message', async () => {
    const w = await open();
    try {
      await w.page.goto(`${appOrigin}/`, { waitUntil: 'load' });
      const height = () =>
        w.page.evaluate(() => {
          const g = globalThis as unknown as { document: { querySelector(s: string): { getBoundingClientRect(): { height: number } } } };
          return g.document.querySelector('iframe[title="Message body"]').getBoundingClientRect().height;
        });
      // One frame for the three, its body swapped each time, as in the reader.
      const show = (html: string) =>
        w.page.evaluate(([h]) => (globalThis as unknown as HarnessGlobal).harness.swap(h, false, { tall: '/jmap/download/tall.png' }), [html]);
      await show('<div style="height:900px">tall</div><p>end</p>');
      expect(await height()).toBeGreaterThan(900);
      expect(await height()).toBeLessThan(1100);
      // An image of unknown size that comes 300 ms late: 600 px high once it is there (the swap
      // itself does not wait for it: the text shows first and the frame grows when it lands).
      await show('<p>before</p><img src="cid:tall"><p>after</p>');
      await expect.poll(height, { timeout: 5000 }).toBeGreaterThan(600);
      expect(await height()).toBeLessThan(800);
      await show('<p>short</p>');
      expect(await height()).toBeLessThan(100);
    } finally {
      await w.context.close();
    }
  });
});

describe('prepareMessageHtml', () => {
  let w: Watch;
  beforeAll(async () => {
    w = await open();
    await w.page.goto(`${appOrigin}/`, { waitUntil: 'load' });
  });
  afterAll(async () => {
    await w?.context.close();
  });
  const prepare = (html: string, allowRemote: boolean, cids: Record<string, string> = {}) =>
    w.page.evaluate(([h, a, c]) => (globalThis as unknown as HarnessGlobal).harness.prepare(h, a, c), [html, allowRemote, cids] as const);

  it('rewrites cid: images to the download URL, and removes unknown ones', async () => {
    const cids = { 'logo@example.com': '/jmap/download/A/Gm1P2/logo.png?accept=image/png' };
    const { document, remoteBlocked } = await prepare(
      '<img src="cid:logo@example.com" alt="a"><img src="cid:nope@example.com" alt="b"><div style="background-image:url(cid:logo@example.com)">x</div>',
      false,
      cids,
    );
    expect(document).toContain('<img src="/jmap/download/A/Gm1P2/logo.png?accept=image/png" alt="a">');
    expect(document).toContain('<img alt="b">');
    expect(document).toContain('background-image: url(&quot;/jmap/download/A/Gm1P2/logo.png?accept=image/png&quot;)');
    expect(remoteBlocked).toBe(0);
  });

  it('decodes %-escapes in cid: URLs (RFC 2392)', async () => {
    const { document } = await prepare('<img src="cid:part1%40example.com">', false, { 'part1@example.com': '/jmap/download/x' });
    expect(document).toContain('src="/jmap/download/x"');
  });

  it('gives links target=_blank and rel=noopener noreferrer, and keeps only http(s) and mailto', async () => {
    const { document } = await prepare(
      '<a href="https://example.com/a">a</a><a href="https://example.com/b" target="_self" rel="opener">b</a><a href="mailto:x@example.com">m</a><a href="javascript:alert(1)">j</a><a href="/rel">r</a>',
      false,
    );
    expect(document).toContain('<a href="https://example.com/a" target="_blank" rel="noopener noreferrer">a</a>');
    // The message's own target and rel are replaced (DOMPurify drops target, so ours comes last).
    expect(document).toContain('<a href="https://example.com/b" rel="noopener noreferrer" target="_blank">b</a>');
    expect(document).toContain('<a href="mailto:x@example.com" target="_blank" rel="noopener noreferrer">m</a>');
    expect(document).toContain('<a target="_blank" rel="noopener noreferrer">j</a>');
    expect(document).toContain('<a target="_blank" rel="noopener noreferrer">r</a>');
  });

  it('counts remote images blocked: img src, srcset-only img, background attribute, CSS images, poster', async () => {
    const html =
      '<img src="http://t.example/1.png"><img srcset="https://t.example/2.png 1x"><table><tr><td background="http://t.example/3.png"></td></tr></table>' +
      '<div style="background:url(http://t.example/4.png)">x</div><style>p{list-style-image:url(https://t.example/5.png)}</style>' +
      '<video poster="//t.example/6.png"></video><img src="data:image/png;base64,iVBORw0KGgo=">';
    const blocked = await prepare(html, false);
    expect(blocked.remoteBlocked).toBe(6);
    expect(blocked.document).not.toContain('t.example');
    const allowed = await prepare(html, true);
    expect(allowed.remoteBlocked).toBe(0);
    for (const n of [1, 2, 3, 4, 5])
      expect(allowed.document).toContain(`/webmail/image?url=${encodeURIComponent(`http${n === 2 || n === 5 ? 's' : ''}://t.example/${n}.png`)}`);
    expect(allowed.document).toContain(`/webmail/image?url=${encodeURIComponent('https://t.example/6.png')}`);
    expect(allowed.document).toContain('data:image/png;base64,iVBORw0KGgo=');
  });

  it('drops remote CSS that is not an image even when remote content is allowed', async () => {
    const { document } = await prepare(
      '<style>@import url(https://t.example/a.css);@font-face{font-family:x;src:url(https://t.example/f.woff)}p{cursor:url(https://t.example/c.cur),auto;color:red}</style><p style="mask-image:url(https://t.example/m.png);color:blue">p</p>',
      true,
    );
    expect(document).not.toContain('t.example');
    expect(document).toContain('color: red');
    expect(document).toContain('color: blue');
  });

  it('frames the body in a document with the CSP, referrer policy and our own base', async () => {
    const { document } = await prepare('<p>hi</p>', false);
    expect(document).toContain(
      `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; font-src 'none'; form-action 'none'">`,
    );
    expect(document).toContain('<meta name="referrer" content="no-referrer">');
    expect(document).toContain('<base target="_blank">');
    expect(document).toContain('<body><p>hi</p></body>');
  });

  it("keeps a message's head styles and escapes '<' in them", async () => {
    const { document } = await prepare('<html><head><style>p{color:green;content:"</sty" "le>"}</style></head><body><p>x</p></body></html>', false);
    expect(document).toMatch(/<style>p \{ color: green; content: "\\3c \/sty" "le>"; \}<\/style><p>x<\/p>/);
  });
});
