/**
 * `dlq list|redrive|drop` through the real binary, on both storage families: the local adapters,
 * and the aws adapters against moto's SQS (a real SQS wire protocol with redrive policies). Jobs
 * are dead-lettered the way a failing worker does it: received until their receive count passes
 * the queue's maxReceives.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import type { QueueName, Storage } from '../../core/storage/ports.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { startCli, type CliHarness } from './support.js';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

interface Row {
  queue: string;
  messageId: string;
  jobId?: string;
  from?: string;
  rcpts?: string[];
  size?: number;
  receiveCount: number;
  unreadable?: string;
}

function job(id: string): string {
  return JSON.stringify({
    v: 1,
    id,
    blobKey: `in/20261126/${id}.eml`,
    size: 1234,
    from: `sender-${id}@example.org`,
    rcpts: [{ address: 'alice@example.com' }, { address: 'bob@example.com', notify: ['NEVER'] }],
    receivedAt: '2026-11-26T10:00:00.000Z',
    client: { address: '192.0.2.1', helo: 'mx.example.org' },
    listener: 'mx',
  });
}

/** Receives without deleting until every message of `queue` has moved to its dead-letter queue. */
async function deadLetter(storage: Storage, queue: QueueName, dlq: QueueName, count: number): Promise<void> {
  for (let round = 0; round < 30; round++) {
    if ((await storage.queues.stats(dlq)).visible >= count) return;
    await storage.queues.receive(queue, { max: 10, visibilitySeconds: 0 });
  }
  throw new Error(`${count} messages did not reach ${dlq}`);
}

describe.each(['local', 'aws'] as const)('tomlinson dlq (%s)', (family) => {
  let cli: CliHarness;
  let moto: AwsTestBackend | undefined;
  let storage: Storage;
  let env: Record<string, string>;

  beforeAll(async () => {
    cli = await startCli();
    if (family === 'aws') {
      moto = await startMoto({ maxReceives: 1 });
      env = { ...moto.env, TOMLINSON_LOG_LEVEL: 'silent' };
    } else {
      env = { TOMLINSON_QUEUE_MAX_RECEIVES: '1', TOMLINSON_LOG_LEVEL: 'silent' };
    }
    storage = await openStorage(loadConfig({ ...cli.env, ...env }), silentLogger);
    for (const id of ['j1', 'j2', 'j3']) await storage.queues.send('inbound', job(id));
    await storage.queues.send('outbound', 'not a job at all');
    await deadLetter(storage, 'inbound', 'inbound-dlq', 3);
    await deadLetter(storage, 'outbound', 'outbound-dlq', 1);
  });

  afterAll(async () => {
    await storage?.close();
    await moto?.stop();
    await cli?.cleanup();
  });

  const run = (args: string[]) => cli.run(args, { env });
  const list = async (queue?: string): Promise<Row[]> => {
    const r = await run(['--json', 'dlq', 'list', ...(queue ? [queue] : [])]);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Row[];
  };

  it('lists the dead letters of both queues with their envelopes, and listing leaves them there', async () => {
    const rows = await list();
    const inbound = rows.filter((r) => r.queue === 'inbound');
    expect(inbound.map((r) => r.jobId).sort()).toEqual(['j1', 'j2', 'j3']);
    expect(inbound.find((r) => r.jobId === 'j2')).toMatchObject({ from: 'sender-j2@example.org', rcpts: ['alice@example.com', 'bob@example.com'], size: 1234 });
    const outbound = rows.filter((r) => r.queue === 'outbound');
    expect(outbound).toHaveLength(1);
    expect(outbound[0].unreadable).toBe('not JSON');
    expect((await list('inbound')).map((r) => r.jobId).sort()).toEqual(['j1', 'j2', 'j3']);

    const human = await run(['dlq', 'list', 'inbound']);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^QUEUE\s+ID\s+RECEIVED\s+FROM/m);
    expect(human.stdout).toMatch(/inbound\s+j1\s+2026-11-26T10:00:00.000Z\s+<sender-j1@example.org>/);
  });

  it('re-drives one job by its id onto its queue, unchanged', async () => {
    const r = await run(['--json', 'dlq', 'redrive', 'inbound', 'j2']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ queue: 'inbound', redriven: ['j2'], missing: [] });
    const back = await storage.queues.receive('inbound', { max: 10, visibilitySeconds: 30, waitSeconds: 1 });
    expect(back.map((m) => m.body)).toEqual([job('j2')]);
    await storage.queues.delete('inbound', back[0].receipt);
    expect((await list('inbound')).map((r) => r.jobId).sort()).toEqual(['j1', 'j3']);
  });

  it('refuses ids that are not there, a bad queue name, and a re-drive without ids', async () => {
    const missing = await run(['dlq', 'redrive', 'inbound', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('not in the inbound dead-letter queue: nope');
    const bad = await run(['dlq', 'list', 'sideways']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('unknown queue "sideways"');
    const none = await run(['dlq', 'redrive', 'inbound']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('--all');
    expect((await list('inbound')).map((r) => r.jobId).sort()).toEqual(['j1', 'j3']);
  });

  it('drops a job for good, and re-drives the rest with --all (an unreadable one by its message id)', async () => {
    const dropped = await run(['dlq', 'drop', 'inbound', 'j1']);
    expect(dropped.code, dropped.stderr).toBe(0);
    expect(dropped.stdout).toContain('dropped 1 job(s)');
    expect((await list('inbound')).map((r) => r.jobId)).toEqual(['j3']);

    const all = await run(['--json', 'dlq', 'redrive', 'inbound', '--all']);
    expect(all.code, all.stderr).toBe(0);
    expect(JSON.parse(all.stdout).redriven).toEqual(['j3']);
    expect(await list('inbound')).toEqual([]);

    const [odd] = await list('outbound');
    const r = await run(['dlq', 'redrive', 'outbound', odd.messageId]);
    expect(r.code, r.stderr).toBe(0);
    expect(await list('outbound')).toEqual([]);
    const queued = await storage.queues.receive('outbound', { max: 10, visibilitySeconds: 30, waitSeconds: 1 });
    expect(queued.map((m) => m.body)).toEqual(['not a job at all']);
    const inbound = await storage.queues.receive('inbound', { max: 10, visibilitySeconds: 30, waitSeconds: 1 });
    expect(inbound.map((m) => m.body)).toEqual([job('j3')]);
  });
});
