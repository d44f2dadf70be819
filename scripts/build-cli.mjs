#!/usr/bin/env node
/**
 * Builds the admin CLI bundle: dist/cli/main.mjs with its chunks (esbuild code splitting, so a
 * command loads only the modules it uses) and dist/cli/inputs.json, the project files it was
 * built from and when, which bin/tomlinson.mjs compares with their times to tell a stale bundle.
 * It is the `prepare` script (run by `npm ci` and `npm install`); without esbuild (a production
 * install) it does nothing. Plain JavaScript, so that it needs no TypeScript loader.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Files outside the bundle's own inputs whose change makes it stale (a dependency update). */
const ALSO = ['package-lock.json', 'node_modules/.package-lock.json'];

/**
 * Builds the CLI into `outdir` (replaced whole, so a reader never sees half a build).
 * better-sqlite3 (native) and pino-pretty (a worker-thread transport) stay external.
 * @param {{ outdir?: string, root?: string }} [options]
 * @returns {Promise<{ outdir: string, inputs: string[] } | undefined>} undefined without esbuild
 */
export async function buildCli(options = {}) {
  const root = options.root ?? ROOT;
  const outdir = options.outdir ?? join(root, 'dist/cli');
  let esbuild;
  try {
    esbuild = await import('esbuild');
  } catch {
    return undefined;
  }
  // A source saved while the build runs is newer than this, so the bundle counts as stale.
  const started = Date.now();
  const tmp = `${outdir}.tmp-${process.pid}-${started}`;
  await mkdir(dirname(outdir), { recursive: true });
  try {
    const result = await esbuild.build({
      absWorkingDir: root,
      entryPoints: { main: join(root, 'cli/main.ts') },
      bundle: true,
      splitting: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outdir: tmp,
      outExtension: { '.js': '.mjs' },
      chunkNames: 'chunks/[name]-[hash]',
      metafile: true,
      logLevel: 'warning',
      external: ['better-sqlite3', 'pino-pretty'],
      // CommonJS dependencies call require(); give the ESM bundle one.
      banner: { js: "import { createRequire as __tomlinsonCreateRequire } from 'node:module'; const require = __tomlinsonCreateRequire(import.meta.url);" },
    });
    const inputs = Object.keys(result.metafile.inputs).filter((f) => !f.includes('node_modules/') && !f.startsWith('..'));
    inputs.push(...ALSO.filter((f) => existsSync(join(root, f))));
    await writeFile(join(tmp, 'inputs.json'), `${JSON.stringify({ started, inputs }, null, 1)}\n`);
    const old = `${outdir}.old-${process.pid}-${Date.now()}`;
    await rename(outdir, old).catch(() => undefined);
    // Another build may have put its own in place meanwhile: then that one stays.
    await rename(tmp, outdir).catch(() => undefined);
    await rm(old, { recursive: true, force: true });
    return { outdir, inputs };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const started = Date.now();
  buildCli().then(
    (r) => {
      if (r) process.stdout.write(`built ${r.outdir.slice(ROOT.length)} in ${Date.now() - started} ms\n`);
    },
    (e) => {
      process.stderr.write(`CLI build failed: ${e.message}\n`);
      process.exit(1);
    },
  );
}
