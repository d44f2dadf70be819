#!/usr/bin/env node
// The `tomlinson` admin command. In a checkout (cli/main.ts and the tsx dev dependency present)
// it runs the TypeScript sources through tsx, so it never runs a stale build; elsewhere it runs
// the esbuild bundle dist/cli/main.mjs. TOMLINSON_CLI_BUNDLE=1 forces that bundle; any other
// value is taken as the path of a bundle to run (tests build one from the current sources).
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const source = `${root}cli/main.ts`;
const forced = process.env.TOMLINSON_CLI_BUNDLE ?? '';
const bundle = forced && forced !== '1' ? forced : `${root}dist/cli/main.mjs`;

async function load() {
  if (!forced && existsSync(source)) {
    try {
      const { register } = await import('tsx/esm/api');
      register();
      return await import(pathToFileURL(source).href);
    } catch (e) {
      if (e?.code !== 'ERR_MODULE_NOT_FOUND' || !existsSync(bundle)) throw e;
    }
  }
  if (!existsSync(bundle)) {
    process.stderr.write('tomlinson: neither cli/main.ts with tsx nor dist/cli/main.mjs is available; run `npm run build`\n');
    process.exit(70);
  }
  return import(pathToFileURL(bundle).href);
}

const cli = await load();
process.exitCode = await cli.run(process.argv);
