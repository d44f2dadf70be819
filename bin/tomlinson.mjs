#!/usr/bin/env node
// The `tomlinson` admin command. It runs the esbuild bundle dist/cli/main.mjs, which `npm ci` and
// `npm install` build (the `prepare` script, scripts/build-cli.mjs). In a checkout the bundle is
// run only while no source it was built from (dist/cli/inputs.json) is newer; a stale or missing
// one is rebuilt first (about a second), and without esbuild the sources run through tsx.
// TOMLINSON_CLI_BUNDLE=1 runs the bundle as it is, =0 the sources through tsx, and any other
// value is the path of a bundle to run (tests build one from the current sources).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const source = `${root}cli/main.ts`;
const forced = process.env.TOMLINSON_CLI_BUNDLE ?? '';
const bundle = forced && forced !== '1' && forced !== '0' ? forced : `${root}dist/cli/main.mjs`;

/** True when the bundle exists and none of the files it was built from changed since. */
function fresh() {
  try {
    if (!existsSync(bundle)) return false;
    const { started, inputs } = JSON.parse(readFileSync(`${root}dist/cli/inputs.json`, 'utf8'));
    return inputs.every((f) => {
      try {
        return statSync(`${root}${f}`).mtimeMs <= started;
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

async function viaTsx() {
  const { register } = await import('tsx/esm/api');
  register();
  return import(pathToFileURL(source).href);
}

async function load() {
  if (forced === '0') return viaTsx();
  if (forced || !existsSync(source) || fresh()) {
    if (existsSync(bundle)) return import(pathToFileURL(bundle).href);
    if (forced) {
      process.stderr.write(`tomlinson: no CLI bundle at ${bundle}; run \`npm run build\`\n`);
      process.exit(70);
    }
  }
  // A checkout whose bundle is missing or older than its sources.
  try {
    const { buildCli } = await import(pathToFileURL(`${root}scripts/build-cli.mjs`).href);
    if (await buildCli()) return import(pathToFileURL(bundle).href);
  } catch {
    // fall through to the sources
  }
  try {
    return await viaTsx();
  } catch (e) {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    process.stderr.write('tomlinson: neither a CLI bundle (dist/cli/main.mjs) nor tsx is available; run `npm ci`\n');
    process.exit(70);
  }
}

await (await load()).main();
