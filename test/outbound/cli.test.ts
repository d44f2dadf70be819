/**
 * The `queue` and `dkim` CLI commands (cli/main.ts `run`, what bin/tomlinson.mjs calls) on both
 * storage families: local (temporary folder) and aws (moto's S3/DynamoDB/SQS
 * server). A remote answering 451 then 250 leaves a deferred message to list, show, hold,
 * release, retry and delete.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { CreateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run as runCli } from '../../cli/main.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { storedDkimKeys } from '../../core/mail/dkim.js';
import { AwsSecrets } from '../../core/secrets/aws.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { OutboundStore, QUEUE_LIST_PK } from '../../core/mail/outbound-store.js';
import { openStorage } from '../../core/storage/open.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, TestClock, type RemoteMx, type TestEnv } from './harness.js';

const run = promisify(execFile);
const here = new URL('.', import.meta.url).pathname;
let dns: TestDnsServer;
let moto: AwsTestBackend | undefined;

beforeAll(async () => {
  dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx1.remote.test' }] }, 'mx1.remote.test': { A: ['127.0.0.1'] } });
});
afterAll(async () => {
  await dns?.close();
  await moto?.stop();
});

type Family = 'local' | 'aws';

async function openFamily(family: Family, remote: RemoteMx): Promise<{ env: TestEnv; cliEnv: Record<string, string> }> {
  const settings = {
    TOMLINSON_DNS_SERVERS: dns.address,
    TOMLINSON_OUTBOUND_MX_PORT: String(remote.port),
    TOMLINSON_LOG_LEVEL: 'silent',
    TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
  };
  // The CLI runs on the real clock, so the worker does too here.
  const clock = new TestClock(Date.now());
  if (family === 'local') {
    const env = await openEnv(settings, clock);
    return { env, cliEnv: { ...settings, TOMLINSON_DATA_DIR: env.config.dataDir } };
  }
  moto ??= await startMoto({ say: () => {} });
  const dataDir = await mkdtemp(join(tmpdir(), 'tomlinson-cli-aws-'));
  const all = { ...settings, ...moto.env, TOMLINSON_DATA_DIR: dataDir };
  const config = loadConfig(all);
  const storage = await openStorage(config, silentLogger);
  const env: TestEnv = {
    config,
    storage,
    clock,
    ctx: { config, storage, log: silentLogger, now: () => new Date() },
    async close() {
      await storage.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return { env, cliEnv: all };
}

/** Runs the CLI in this process (the same `run` bin/tomlinson.mjs calls; spawning a process per
 * command costs seconds on a loaded CI machine) and collects its output. */
async function cli(env: Record<string, string>, ...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (d: Buffer) => (stdout += d.toString()));
  err.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await runCli(['node', 'tomlinson', ...args], {
    env: { ...process.env, ...env },
    stdout: out as unknown as NodeJS.WriteStream,
    stderr: err as unknown as NodeJS.WriteStream,
  });
  return { stdout, stderr, code };
}

for (const family of ['local', 'aws'] as Family[]) {
  describe(`queue commands on the ${family} family`, () => {
    let env: TestEnv;
    let cliEnv: Record<string, string>;
    let remote: RemoteMx;
    beforeAll(async () => {
      remote = await startRemote({ dataReplies: [451, 250], reject: { 'dan@remote.test': 450 } });
      ({ env, cliEnv } = await openFamily(family, remote));
    });
    afterAll(async () => {
      await env?.close();
      await remote?.close();
    });
    /** The CLI stamps queue messages and due times with the real clock; catch up with it. */
    const sync = () => (env.clock.ms = Math.max(env.clock.ms, Date.now()));

    it('list, show, hold, release (retry now), then delete', async () => {
      const handler = createOutboundJob();
      const id = `cli-${family}`;
      await queueMessage(
        env,
        { id, from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }, { address: 'zed@remote.test' }] },
        sampleMessage('alice@local.test', 'bob@remote.test', `CLI ${family}`),
      );
      await queueMessage(
        env,
        { id: `${id}-2`, from: 'alice@local.test', rcpts: [{ address: 'carl@remote.test' }] },
        sampleMessage('alice@local.test', 'carl@remote.test', `CLI2 ${family}`),
      );
      const before = remote.events.length;
      await drain(env, 'outbound', handler);
      // One of the two messages met the 451, the other the 250 (the remote answers in turn).
      const store = new OutboundStore(env.storage.tables);
      const states = [...(await store.getRecipients(id)), ...(await store.getRecipients(`${id}-2`))].map((r) => r.state).sort();
      expect(states).toContain('deferred');

      const list = await cli(cliEnv, '--json', 'queue', 'list');
      expect(list.code).toBe(0);
      const rows = JSON.parse(list.stdout) as { id: string; pending: number; lastReply?: string; held: boolean }[];
      const deferred = rows.find((r) => r.pending > 0)!;
      expect(deferred).toBeDefined();
      expect(deferred.lastReply).toBe('451 4.3.0 Temporary local problem, try again');
      const target = deferred.id;

      const human = await cli(cliEnv, 'queue', 'show', target);
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/deferred\s+1/);
      expect(human.stdout).toContain('451 4.3.0');

      expect((await cli(cliEnv, 'queue', 'hold', target)).code).toBe(0);
      expect((await store.getMessage(target))?.held).toBe(true);
      sync();
      // While held, a woken worker does not deliver it.
      const n = remote.events.length;
      await drain(env, 'outbound', handler);
      expect(remote.events.length).toBe(n);

      expect((await cli(cliEnv, 'queue', 'release', target)).code).toBe(0);
      sync();
      await drain(env, 'outbound', handler);
      const shown = JSON.parse((await cli(cliEnv, '--json', 'queue', 'show', target)).stdout) as {
        message: { status: string };
        recipients: { state: string; attempts: number }[];
      };
      expect(shown.message.status).toBe('done');
      expect(shown.recipients.every((r) => r.state === 'delivered' && r.attempts === 2)).toBe(true);
      expect(remote.events.slice(before).filter((e) => e.event === 'message' && e.file)).toHaveLength(2);

      // Retrying a finished message is refused.
      const refused = await cli(cliEnv, 'queue', 'retry', target);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`no queued message ${target}`);

      // delete: a fresh deferred message leaves the queue without a DSN.
      await queueMessage(
        env,
        { id: `${id}-3`, from: 'alice@local.test', rcpts: [{ address: 'dan@remote.test' }] },
        sampleMessage('alice@local.test', 'dan@remote.test', `CLI3 ${family}`),
      );
      await drain(env, 'outbound', handler);
      expect((await store.getRecipients(`${id}-3`))[0]).toMatchObject({ state: 'deferred', lastReply: '450 rejected' });
      const del = await cli(cliEnv, '--json', 'queue', 'delete', `${id}-3`);
      expect(del.code).toBe(0);
      expect(JSON.parse(del.stdout)).toMatchObject({ deleted: ['dan@remote.test'] });
      sync();
      await drain(env, 'outbound', handler);
      expect((await store.getRecipients(`${id}-3`))[0].state).toBe('deleted');
      expect((await env.storage.queues.stats('inbound')).visible).toBe(0);
      expect((await env.storage.tables.query(QUEUE_LIST_PK)).items).toEqual([]);
    });
  });
}

describe('DKIM keys in Secrets Manager (aws family, moto)', () => {
  let env: TestEnv;
  let cliEnv: Record<string, string>;
  let remote: RemoteMx;
  beforeAll(async () => {
    remote = await startRemote();
    ({ env, cliEnv } = await openFamily('aws', remote));
  });
  afterAll(async () => {
    await env?.close();
    await remote?.close();
  });

  it('dkim generate stores keys in <prefix><domain>; the worker signs with them; dkimpy verifies', async () => {
    const prefix = 'tomlinson-test/dkim/';
    const withPrefix = { ...cliEnv, TOMLINSON_DKIM_SECRET_PREFIX: prefix };
    // A secret created empty by the CDK stack ({selector, privateKey: ''}) means no key yet.
    const sm = new SecretsManagerClient({ region: env.config.storage.aws.region });
    await sm.send(new CreateSecretCommand({ Name: `${prefix}local.test`, SecretString: JSON.stringify({ selector: 'tomlinson', privateKey: '' }) }));
    sm.destroy();
    expect(await storedDkimKeys(new AwsSecrets({ dkimSecretPrefix: prefix, region: env.config.storage.aws.region })).keys('local.test')).toEqual([]);
    expect((await cli(withPrefix, 'domain', 'add', 'local.test')).code).toBe(0);
    const a = await cli(withPrefix, '--json', 'dkim', 'generate', 'local.test', '--selector', 'aws1');
    expect(a.code).toBe(0);
    const b = await cli(withPrefix, '--json', 'dkim', 'generate', 'local.test', '--selector', 'aws2', '--algorithm', 'ed25519-sha256');
    expect(b.code).toBe(0);
    const ka = JSON.parse(a.stdout) as { name: string; txt: string; stored: string };
    const kb = JSON.parse(b.stdout) as { name: string; txt: string };
    expect(ka.stored).toBe(`secret ${prefix}local.test`);
    const keys = await storedDkimKeys(new AwsSecrets({ dkimSecretPrefix: prefix, region: env.config.storage.aws.region })).keys('local.test');
    expect(keys.map((k) => [k.selector, k.algorithm])).toEqual([
      ['aws1', 'rsa-sha256'],
      ['aws2', 'ed25519-sha256'],
    ]);
    expect((await cli(withPrefix, 'dkim', 'generate', 'local.test', '--selector', 'aws1')).code).toBe(1);

    const handler = createOutboundJob({ dkim: storedDkimKeys(new AwsSecrets({ dkimSecretPrefix: prefix, region: env.config.storage.aws.region })) });
    await queueMessage(
      env,
      { id: 'aws-dkim-1', from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] },
      sampleMessage('alice@local.test', 'bob@remote.test', 'AWS DKIM'),
    );
    await drain(env, 'outbound', handler);
    const file = remote.events.find((e) => e.event === 'message' && e.file)?.file;
    expect(file).toBeTruthy();
    const { stdout } = await run('/usr/bin/python3', [join(here, 'dkim_verify.py'), file!, `${ka.name}=${ka.txt}`, `${kb.name}=${kb.txt}`]);
    expect(JSON.parse(stdout)).toMatchObject({ results: [true, true], domains: ['local.test', 'local.test'] });
  });
});

describe('dkim generate', () => {
  it('stores a key the worker reads and prints the TXT record', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tomlinson-dkim-'));
    try {
      expect((await cli({ TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' }, 'domain', 'add', 'example.test')).code).toBe(0);
      const r = await cli(
        { TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' },
        'dkim',
        'generate',
        'Example.test',
        '--selector',
        's2026',
        '--algorithm',
        'ed25519-sha256',
      );
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^s2026\._domainkey\.example\.test\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="$/m);
      const pem = await readFile(join(dir, 'dkim', 'example.test', 's2026.pem'), 'utf8');
      expect(pem).toContain('BEGIN PRIVATE KEY');
      const again = await cli({ TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' }, 'dkim', 'generate', 'example.test', '--selector', 's2026');
      expect(again.code).toBe(1);
      expect(again.stderr).toContain('exists');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a domain that is not local unless --force', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tomlinson-dkim-'));
    const env = { TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' };
    try {
      const refused = await cli(env, 'dkim', 'generate', 'typo.test');
      expect(refused.code).toBe(1);
      expect(refused.stderr).toBe('error: typo.test is not a local domain (see `tomlinson domain list`); pass --force to make a key for it anyway\n');
      expect(existsSync(join(dir, 'dkim', 'typo.test'))).toBe(false);
      const forced = await cli(env, 'dkim', 'generate', 'typo.test', '--force');
      expect(forced.code).toBe(0);
      expect(existsSync(join(dir, 'dkim', 'typo.test', 'tomlinson.pem'))).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
