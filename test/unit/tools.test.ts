/**
 * The check before the tests (test/support/tools.ts, vitest's globalSetup) run as its own process:
 * on a PATH without the programs the tests drive, one message that names each and gives the
 * install command, and exit 1; with everything installed, silence and exit 0.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { checkTools } from '../support/tools.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function check(path: string) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'test/support/tools.ts'], {
    cwd: ROOT,
    env: { HOME: process.env.HOME, PATH: path },
    encoding: 'utf8',
    timeout: 60_000,
  });
}

describe('the test tools check', () => {
  it('names every missing program and the install command, and exits 1', () => {
    const r = check('/nonexistent');
    expect(r.status).toBe(1);
    for (const tool of ['swaks', 'curl', 'fetchmail', 'chromium', 'openssl', 'script', 'python3', 'rspamd', 'redis-server'])
      expect(r.stderr).toMatch(new RegExp(`^  - ${tool} \\(`, 'm'));
    expect(r.stderr).toContain("moto's server");
    expect(r.stderr).toContain('test/support/moto.ts');
    expect(r.stderr).toMatch(/^ {2}apt-get update && apt-get install -y --no-install-recommends swaks .*fetchmail .*chromium .*bsdutils rspamd redis-server$/m);
    expect(r.stderr).toContain('pip install "moto[server]>=5.2"');
    expect(r.stdout).toBe('');
  });

  it('is silent and exits 0 when everything is installed', () => {
    const r = check(process.env.PATH ?? '');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('takes well under a second once moto was found (it runs before every test run)', async () => {
    expect(await checkTools()).toBeUndefined();
    const t = performance.now();
    expect(await checkTools()).toBeUndefined();
    expect(performance.now() - t).toBeLessThan(1000);
  });
});
