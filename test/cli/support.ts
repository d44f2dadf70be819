/**
 * Runs the real `tomlinson` binary (bin/tomlinson.mjs) in a child process against a temporary
 * data folder. The binary is pointed (TOMLINSON_CLI_BUNDLE) at a bundle of the current sources,
 * built once per test file the way `npm ci` builds dist/cli, so tests never share or race on it.
 */
import { spawn } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCli } from '../../scripts/build-cli.mjs';
import { tempDir } from '../support/tmp.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'bin/tomlinson.mjs');

/** The outcome of one run. */
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A test's CLI: a bundle, a data folder, and `run`. */
export interface CliHarness {
  dataDir: string;
  env: Record<string, string>;
  run(args: string[], options?: { input?: string; env?: Record<string, string>; timeoutMs?: number }): Promise<RunResult>;
  /** `run` that throws unless the exit code is 0, returning stdout. */
  ok(args: string[], options?: { input?: string }): Promise<string>;
  /** `run` with --json, parsing stdout. */
  json<T = unknown>(args: string[], options?: { input?: string }): Promise<T>;
  cleanup(): Promise<void>;
}

/** Spawns `node bin/tomlinson.mjs args...` with the given environment and standard input. */
export function spawnCli(args: string[], env: Record<string, string>, input?: string, timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input ?? '');
  });
}

/** Builds the bundle and a fresh data folder. */
export async function startCli(): Promise<CliHarness> {
  const dir = await tempDir('tomlinson-cli-');
  const out = join(ROOT, 'node_modules/.cache', `tomlinson-cli-test-${process.pid}-${Date.now()}`);
  await mkdir(join(ROOT, 'node_modules/.cache'), { recursive: true });
  // The same build as `npm ci` makes (scripts/build-cli.mjs), from the current sources.
  if (!(await buildCli({ outdir: out }))) throw new Error('esbuild is not installed');
  const bundle = join(out, 'main.mjs');
  const env = { TOMLINSON_DATA_DIR: join(dir.path, 'data'), TOMLINSON_CLI_BUNDLE: bundle };
  const h: CliHarness = {
    dataDir: env.TOMLINSON_DATA_DIR,
    env,
    run: (args, o = {}) => spawnCli(args, { ...env, ...o.env }, o.input, o.timeoutMs),
    async ok(args, o = {}) {
      const r = await h.run(args, o);
      if (r.code !== 0) throw new Error(`tomlinson ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
      return r.stdout;
    },
    async json(args, o = {}) {
      return JSON.parse(await h.ok(['--json', ...args], o));
    },
    async cleanup() {
      await dir.remove();
      await rm(out, { recursive: true, force: true });
    },
  };
  return h;
}
