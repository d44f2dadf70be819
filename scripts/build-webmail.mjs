#!/usr/bin/env node
/**
 * Builds the webmail (containers/web/webmail/ui, Preact + TypeScript) into dist/webmail:
 * index.html plus assets/ whose names carry a hash of their content, so the web listener can serve
 * them with a year of caching and the HTML with none (containers/web/webmail/static.ts). Run by
 * `prepare` (so `npm ci` leaves a built app), `prestart` and `npm run build`; without esbuild (a
 * production install) it does nothing. Plain JavaScript, so that it needs no TypeScript loader.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Builds the webmail into `outdir` (replaced whole, so the listener never reads half a build).
 * @param {{ outdir?: string, root?: string, minify?: boolean }} [options]
 * @returns {Promise<{ outdir: string, files: string[] } | undefined>} undefined without esbuild
 */
export async function buildWebmail(options = {}) {
  const root = options.root ?? ROOT;
  const outdir = options.outdir ?? join(root, 'dist/webmail');
  let esbuild;
  try {
    esbuild = await import('esbuild');
  } catch {
    return undefined;
  }
  const ui = join(root, 'containers/web/webmail/ui');
  const tmp = `${outdir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const result = await esbuild.build({
    entryPoints: { app: join(ui, 'main.tsx') },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome120', 'firefox120', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    minify: options.minify ?? true,
    sourcemap: 'linked',
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    outdir: join(tmp, 'assets'),
    metafile: true,
    legalComments: 'linked',
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
  const js = outputs.find((f) => /^app-.*\.js$/.test(f));
  const css = outputs.find((f) => /^app-.*\.css$/.test(f));
  if (!js) throw new Error('webmail build made no app bundle');
  const template = await readFile(join(ui, 'index.html'), 'utf8');
  const html = template
    .replace('<!--styles-->', css ? `<link rel="stylesheet" href="/webmail/assets/${css}">` : '')
    .replace('<!--script-->', `<script type="module" src="/webmail/assets/${js}"></script>`);
  await writeFile(join(tmp, 'index.html'), html);
  await rm(outdir, { recursive: true, force: true });
  await mkdir(join(outdir, '..'), { recursive: true });
  await rename(tmp, outdir);
  return { outdir, files: ['index.html', ...outputs.map((f) => `assets/${f}`)] };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  if (!existsSync(join(ROOT, 'containers/web/webmail/ui/main.tsx'))) process.exit(0);
  const built = await buildWebmail();
  if (built) console.log(`webmail built into ${built.outdir} (${built.files.length} files)`);
}
