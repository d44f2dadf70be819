/**
 * Crash safety of the outbound worker: a worker process killed (SIGKILL) between the remote's 250
 * and the recording of the delivery sends at most one extra copy and never loses the message; one
 * killed after recording but before the queue delete sends no extra copy.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOutboundJob, LOCK_SECONDS } from '../../core/mail/outbound.js';
import { OutboundStore, QUEUE_LIST_PK } from '../../core/mail/outbound-store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, TestClock, type RemoteMx } from './harness.js';

const here = new URL('.', import.meta.url).pathname;
let dns: TestDnsServer;
let remote: RemoteMx;

beforeAll(async () => {
  dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx1.remote.test' }] }, 'mx1.remote.test': { A: ['127.0.0.1'] } });
  remote = await startRemote();
});
afterAll(async () => {
  await remote?.close();
  await dns?.close();
});

/** Runs kill-worker.ts in its own process and resolves with how it ended. */
function runChild(env: Record<string, string>): Promise<{ signal: NodeJS.Signals | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'kill-worker.ts')], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), 40_000);
    child.on('error', reject);
    child.on('exit', (_code, signal) => {
      clearTimeout(t);
      resolve({ signal, stdout });
    });
  });
}

describe('a worker killed mid-delivery', () => {
  for (const killAt of ['after-250', 'before-queue-delete'] as const) {
    it(`killed ${killAt}: the message is delivered, with ${killAt === 'after-250' ? 'exactly one extra copy' : 'no extra copy'}, and leaves the queue`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'tomlinson-kill-'));
      const clock = new TestClock();
      const settings = { TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_OUTBOUND_MX_PORT: String(remote.port) };
      const env = await openEnv(settings, clock, dir);
      try {
        const id = `kill-${killAt}`;
        await queueMessage(
          env,
          { id, from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] },
          sampleMessage('alice@local.test', 'bob@remote.test', `Kill ${killAt}`),
        );
        const before = remote.events.length;
        /** Copies the remote accepted (250 after DATA) since this test began. */
        const copies = () => remote.events.slice(before).filter((e) => e.event === 'message' && e.file).length;

        const child = await runChild({
          KILL_AT: killAt,
          KILL_DATA_DIR: dir,
          KILL_DNS: dns.address,
          KILL_MX_PORT: String(remote.port),
          KILL_CLOCK_MS: String(clock.ms),
        });
        expect(child.signal).toBe('SIGKILL');
        expect(child.stdout).not.toContain('NOT KILLED');
        await new Promise((r) => setTimeout(r, 100)); // let the remote's event line arrive
        expect(copies()).toBe(1);

        const store = new OutboundStore(env.storage.tables);
        const [before1] = await store.getRecipients(id);
        expect(before1.state).toBe(killAt === 'after-250' ? 'queued' : 'delivered');

        // Nothing happens while the dead worker's queue visibility (and lock) last...
        const handler = createOutboundJob();
        await drain(env, 'outbound', handler);
        expect(copies()).toBe(1);

        // ...then the message comes back and the survivor finishes the job.
        clock.advance(LOCK_SECONDS + 1);
        await drain(env, 'outbound', handler);
        await new Promise((r) => setTimeout(r, 100));
        const [after] = await store.getRecipients(id);
        expect(after.state).toBe('delivered');
        expect(copies()).toBe(killAt === 'after-250' ? 2 : 1);
        const stats = await env.storage.queues.stats('outbound');
        expect(stats.visible + stats.inFlight + stats.delayed).toBe(0);
        expect((await env.storage.tables.query(QUEUE_LIST_PK)).items).toHaveLength(0);
      } finally {
        await env.close();
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
