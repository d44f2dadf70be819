/**
 * `npm run build`: bundles every container entry point, every Lambda handler, the admin CLI
 * (scripts/build-cli.mjs, which `npm ci` also runs) and the webmail (scripts/build-webmail.mjs,
 * into dist/webmail, which the image copies beside the container bundle) with esbuild. Containers target Node 22 (the image's runtime), Lambdas the nodejs22.x runtime.
 * better-sqlite3 (native) and pino-pretty (terminal only) stay external: the AWS family never
 * loads the first, and containers log JSON.
 */
import { build, type BuildOptions } from 'esbuild';
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildCli } from './build-cli.mjs';
import { buildWebmail } from './build-webmail.mjs';

const root = new URL('..', import.meta.url).pathname;

const common: BuildOptions = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  sourcemap: true,
  logLevel: 'warning',
  external: ['better-sqlite3', 'pino-pretty'],
  // CommonJS dependencies call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __tomlinsonCreateRequire } from 'node:module'; const require = __tomlinsonCreateRequire(import.meta.url);" },
};

/** Every functions/<name>/handler.ts. */
function lambdaEntries(): Record<string, string> {
  const dir = join(root, 'functions');
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir)) {
    const entry = join(dir, name, 'handler.ts');
    if (existsSync(entry)) out[`functions/${name}/index`] = entry;
  }
  return out;
}

/** The container image's bundle (dist/containers; the CLI is scripts/build-cli.mjs's) into `outdir`; the Fargate runtime test builds it into a temporary folder. */
export function containerBuildOptions(outdir: string): BuildOptions {
  return {
    ...common,
    entryPoints: {
      'containers/main': join(root, 'containers/main.ts'),
      'containers/workers-thread': join(root, 'containers/workers-thread.ts'),
      // The proxy worker processes (containers/proxy/workers.ts forks the sibling of main.mjs).
      'containers/proxy-worker': join(root, 'containers/proxy/worker-main.ts'),
    },
    outdir,
    outExtension: { '.js': '.mjs' },
  };
}

async function main(): Promise<void> {
  const started = Date.now();
  await build(containerBuildOptions(join(root, 'dist')));
  await build({
    ...common,
    entryPoints: lambdaEntries(),
    outdir: join(root, 'dist'),
    outExtension: { '.js': '.mjs' },
    minify: true,
  });
  await buildCli();
  await buildWebmail();
  process.stdout.write(`built dist/ in ${Date.now() - started} ms\n`);
}

if (process.argv[1] && new URL(import.meta.url).pathname === resolve(process.argv[1])) {
  main().catch((e: Error) => {
    process.stderr.write(`build failed: ${e.message}\n`);
    process.exit(1);
  });
}
