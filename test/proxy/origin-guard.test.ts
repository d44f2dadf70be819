/**
 * Issue 18: the proxy refuses every non-public origin address (private, shared, loopback,
 * link-local, unique-local, metadata, ...) in every spelling of a request-target, and names that
 * resolve to one, at once and without a connection; proxy.allowedOrigins opens internal ranges.
 * The proxy runs in a network namespace with only a loopback interface (origin-guard-child.ts):
 * the addresses it is asked for exist there, on loopback, behind a listener that counts every
 * connection by the address it reached, so a connection attempt would be seen and no packet can
 * leave the machine.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const here = dirname(fileURLToPath(import.meta.url));
const canUnshare = spawnSync('unshare', ['--net', 'true']).status === 0;

interface Outcome {
  refused: string[];
  allowed: string[];
  hostOnly: string;
  results: Record<string, { status: number; body: string; ms: number }>;
  refusedConnections: Record<string, number>;
  connections: Record<string, number>;
}

describe.skipIf(!canUnshare)('origin guard in a network namespace (needs unshare --net)', () => {
  it('refuses non-public origins in every spelling, before any connection; allows public and allow-listed ones', () => {
    const run = spawnSync('unshare', ['--net', process.execPath, '--import', 'tsx', join(here, 'origin-guard-child.ts')], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.status, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as Outcome;
    for (const name of out.refused) {
      const r = out.results[name];
      expect(r.status, `${name}: ${r.body}`).toBe(403);
      // The 403 says why and which setting would allow it (metadata: that nothing does).
      expect(r.body, name).toMatch(/refused: .*(proxy\.allowedOrigins|never contacts)/);
      // At once: no connect attempt and no timeout behind it (the origin timeout is 5 s).
      expect(r.ms, name).toBeLessThan(2000);
    }
    expect(out.results[out.hostOnly].status).toBe(400);
    // Not one connection reached any address while the refused requests were made.
    expect(out.refusedConnections).toEqual({});
    for (const name of out.allowed) expect(out.results[name].status, `${name}: ${out.results[name].body}`).toBe(200);
    // The listener does see connections: the public address and the allow-listed internal one.
    expect(out.connections).toEqual({ '93.184.216.34': 4, '10.9.0.1': 2 });
  }, 90_000);
});
