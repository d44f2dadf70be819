/**
 * bin/tomlinson.mjs in a checkout of its own (a copy of bin/, scripts/, cli/ and core/ beside the
 * real node_modules): it runs a prebuilt bundle instead of compiling the TypeScript on every call
 * (2 to 9 s each through tsx), builds that bundle when it is missing, rebuilds it when a source
 * changed, and a `user list` costs well under a second of CPU.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { tempDir } from '../support/tmp.js';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 60_000 });

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
let checkout: { path: string; remove: () => Promise<void> };
let env: Record<string, string>;

/** Runs the checkout's binary through bash, whose `times` reports the CPU the child used. */
function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; cpuSeconds: number }> {
  return new Promise((resolve, reject) => {
    const quoted = args.map((a) => `'${a}'`).join(' ');
    const script = `"${process.execPath}" "${join(checkout.path, 'bin/tomlinson.mjs')}" ${quoted} 2>"$ERRFILE"; rc=$?; times >&2; exit $rc`;
    const errFile = join(checkout.path, 'stderr.txt');
    const child = spawn('bash', ['-c', script], { env: { ...env, ERRFILE: errFile }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let times = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (times += d));
    child.on('error', reject);
    child.on('close', (code) => {
      // `times`: the shell's user and system time, then its children's: "0m0.310s 0m0.090s".
      const children = times
        .trim()
        .split('\n')
        .pop()!
        .match(/(\d+)m([\d.]+)s/g)!;
      const cpuSeconds = children.reduce((sum, t) => {
        const [, m, s] = /(\d+)m([\d.]+)s/.exec(t)!;
        return sum + Number(m) * 60 + Number(s);
      }, 0);
      resolve({ code, stdout, stderr: readFileSync(errFile, 'utf8'), cpuSeconds });
    });
  });
}

beforeAll(async () => {
  checkout = await tempDir('tomlinson-checkout-');
  for (const d of ['bin', 'scripts', 'cli', 'core']) cpSync(join(ROOT, d), join(checkout.path, d), { recursive: true });
  for (const f of ['package.json', 'package-lock.json', 'tsconfig.json']) cpSync(join(ROOT, f), join(checkout.path, f));
  symlinkSync(join(ROOT, 'node_modules'), join(checkout.path, 'node_modules'));
  env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', TOMLINSON_DATA_DIR: join(checkout.path, 'data') };
});
afterAll(async () => checkout?.remove());

describe('bin/tomlinson.mjs in a checkout', () => {
  it('builds the bundle once, runs it while it is fresh, and rebuilds it after a source changes', async () => {
    const bundle = join(checkout.path, 'dist/cli/main.mjs');
    expect(existsSync(bundle)).toBe(false);
    const first = await run(['--json', 'domain', 'list']);
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout)).toEqual([]);
    expect(existsSync(bundle)).toBe(true);
    const built = statSync(join(checkout.path, 'dist/cli/inputs.json')).mtimeMs;

    // Fresh: run as it is, cheaply (through tsx the same command took over a second of CPU).
    const again = await run(['user', 'list']);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe('(none)\n');
    expect(statSync(join(checkout.path, 'dist/cli/inputs.json')).mtimeMs).toBe(built);
    expect(again.cpuSeconds).toBeLessThan(1);

    // A source edited after the build: the next run sees the edit.
    const file = join(checkout.path, 'cli/commands/domain.ts');
    writeFileSync(file, readFileSync(file, 'utf8').replace("description('list the local domains')", "description('list the local domains, edited')"));
    const edited = await run(['domain', '--help']);
    expect(edited.code).toBe(0);
    expect(edited.stdout).toContain('list the local domains, edited');
    expect(statSync(join(checkout.path, 'dist/cli/inputs.json')).mtimeMs).toBeGreaterThan(built);
  });
});
