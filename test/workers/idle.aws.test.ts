/**
 * An idle in-process worker (the `direct` outbound mode's Fargate task, or `serve all` on the aws
 * family) against moto: over 22 s with empty queues it may send only a few long polls (SQS's
 * 20 s wait, one per queue at a time) and no table reads, and a graceful stop still ends the polls
 * under way at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp } from '../../containers/app.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { observeAwsRequests, type AwsRequest } from '../../core/storage/aws/requests.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';

let backend: AwsTestBackend;

beforeAll(async () => {
  backend = await startMoto();
}, 60_000);

afterAll(async () => {
  await backend?.stop();
});

describe('idle queue workers on the aws family', () => {
  it('long-poll SQS (about one receive per queue per 20 s), read nothing else, and stop promptly', async () => {
    const config = loadConfig({
      ...backend.env,
      TOMLINSON_WORKERS_THREAD: 'false',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_SMTP_ENABLED: 'false',
      TOMLINSON_POP3_ENABLED: 'false',
      TOMLINSON_PROXY_ENABLED: 'false',
    });
    const seen: AwsRequest[] = [];
    const unobserve = observeAwsRequests((r) => seen.push(r));
    const app = await startApp(config, ['workers'], silentLogger);
    try {
      expect(app.workers.map((w) => w.queue).sort()).toEqual(['inbound', 'outbound']);
      const windowSeconds = 22;
      await new Promise((r) => setTimeout(r, windowSeconds * 1000));
      const count = (op: string) => seen.filter((r) => r.op === op).length;
      const tally = new Map<string, number>();
      for (const r of seen) tally.set(`${r.service}:${r.op}`, (tally.get(`${r.service}:${r.op}`) ?? 0) + 1);
      const summary = [...tally].map(([k, v]) => `${k}=${v}`);
      // Two queues, each one 20 s long poll at a time: at most 2 x ceil(22 / 20) = 4 receives.
      // Short polls (the old 2 s slices) made about 22 here.
      expect(count('ReceiveMessage'), summary.join(' ')).toBeLessThanOrEqual(4);
      expect(count('ReceiveMessage')).toBeGreaterThanOrEqual(2);
      expect(
        seen.filter((r) => r.op !== 'ReceiveMessage'),
        summary.join(' '),
      ).toEqual([]);
      for (const r of seen) expect(r.input.WaitTimeSeconds).toBe(20);
    } finally {
      const started = Date.now();
      await app.close(5_000);
      // Both queues are in the middle of a 20 s poll: stop aborts them instead of waiting.
      expect(Date.now() - started).toBeLessThan(3_000);
      unobserve();
    }
  }, 60_000);
});
