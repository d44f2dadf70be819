/**
 * The accept path and the inbound worker on the aws storage family: our SMTP listener over S3,
 * DynamoDB and SQS (moto's server, a real AWS wire protocol), swaks as the sender, and the inbound
 * Lambda's batch handler fed the SQS event the event source mapping would build. A small message
 * travels inside its SQS job and reaches S3 only through the worker; a larger one is in S3 before
 * its 250. Both end in the mailbox, byte-identical, once however often the event is redelivered.
 */
import { execFile } from 'node:child_process';
import { buffer } from 'node:stream/consumers';
import { promisify } from 'node:util';
import type { SQSEvent } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob, parseInboundJob } from '../../core/mail/inbound.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { ReceivedMessage, Storage } from '../../core/storage/ports.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { sqsBatchHandler } from '../../functions/lib/sqs-batch.js';
import { startSmtpServer, type RunningSmtp } from '../../containers/smtp/server.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { blobExists } from '../support/blobs.js';
import { tempDir } from '../support/tmp.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });
const run = promisify(execFile);

const ALICE = 'alice@example.test';

let moto: AwsTestBackend;
let dir: { path: string; remove: () => Promise<void> };
let config: Config;
let storage: Storage;
let tls: TlsProvider;
let server: RunningSmtp;

beforeAll(async () => {
  moto = await startMoto({ say: () => undefined });
  dir = await tempDir('tomlinson-smtp-aws-');
  config = loadConfig({
    ...moto.env,
    TOMLINSON_DATA_DIR: dir.path,
    TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_LOG_LEVEL: 'silent',
  });
  storage = await openStorage(config, silentLogger);
  const accounts = new Accounts(storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser(ALICE, 'pw-alice-1234');
  tls = await createTlsProvider(config, silentLogger);
  server = await startSmtpServer(
    { config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }) },
    { ports: { mx: 0, submission: null, submissions: null }, tls },
  );
});

afterAll(async () => {
  await server?.close(1000);
  tls?.close();
  await storage?.close();
  await dir?.remove();
  await moto?.stop();
});

async function swaks(subject: string, body: string): Promise<string> {
  const { stdout } = await run('swaks', [
    '--server',
    '127.0.0.1',
    '--port',
    String(server.ports.mx),
    '--helo',
    'client.test',
    '--from',
    'sender@remote.example',
    '--to',
    ALICE,
    '--header',
    `Subject: ${subject}`,
    '--body',
    body,
    '--timeout',
    '20',
  ]);
  const m = /<[-~] +250 2\.0\.0 (\S+)/.exec(stdout);
  expect(m, stdout).not.toBeNull();
  return m![1];
}

/** Everything on the inbound queue, received as the event source mapping would. */
async function receiveAll(): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  for (let i = 0; i < 10; i++) {
    const batch = await storage.queues.receive('inbound', { max: 10, visibilitySeconds: 60, waitSeconds: 1 });
    if (!batch.length) break;
    out.push(...batch);
  }
  return out;
}

function eventOf(messages: ReceivedMessage[]): SQSEvent {
  return {
    Records: messages.map((m) => ({
      messageId: m.id,
      receiptHandle: m.receipt,
      body: m.body,
      attributes: {
        ApproximateReceiveCount: String(m.receiveCount),
        SentTimestamp: String(m.sentAt.getTime()),
        SenderId: 'x',
        ApproximateFirstReceiveTimestamp: '0',
      },
      messageAttributes: {},
      md5OfBody: '',
      eventSource: 'aws:sqs',
      eventSourceARN: 'arn:aws:sqs:us-east-1:000000000000:inbound',
      awsRegion: 'us-east-1',
    })),
  };
}

async function blobBytes(key: string): Promise<Buffer> {
  return buffer((await storage.mail.get(key)).body);
}

describe('SMTP and the inbound Lambda on S3, DynamoDB and SQS (moto)', () => {
  it('a small message rides in its SQS job, a larger one is in S3 first; both are delivered once, byte for byte', async () => {
    const smallId = await swaks('small on aws', 'hello from swaks');
    const large = ('0123456789abcdef'.repeat(6) + '\r\n').repeat(1200); // ~118 KB: over smtp.queueInlineBytes
    const largeId = await swaks('large on aws', large);

    const messages = await receiveAll();
    const jobs = messages.map((m) => parseInboundJob(m.body));
    expect(jobs.map((j) => j.id).sort()).toEqual([smallId, largeId].sort());
    const small = jobs.find((j) => j.id === smallId)!;
    const big = jobs.find((j) => j.id === largeId)!;
    expect(small.raw).toBeDefined();
    expect(await blobExists(storage.mail, small.blobKey)).toBe(false);
    expect(big.raw).toBeUndefined();
    expect((await storage.mail.head(big.blobKey)).size).toBe(big.size);

    const handler = sqsBatchHandler({
      queue: 'inbound',
      job: inboundJob,
      context: async () => ({ config, storage, log: silentLogger, now: () => new Date() }),
    });
    const event = eventOf(messages);
    expect(await handler(event)).toEqual({ batchItemFailures: [] });
    // At least once: the same event again changes nothing.
    expect(await handler(event)).toEqual({ batchItemFailures: [] });
    for (const m of messages) await storage.queues.delete('inbound', m.receipt);

    const entries = await new MailboxStore(storage.tables, storage.mail).list(ALICE);
    expect(entries.map((e) => e.blobKey).sort()).toEqual([small.blobKey, big.blobKey].sort());
    const carried = Buffer.from(small.raw!, 'base64');
    expect((await blobBytes(small.blobKey)).equals(carried)).toBe(true);
    expect(carried.toString()).toMatch(/^Return-Path: <sender@remote\.example>\r\nReceived: from client\.test /);
    expect(carried.toString()).toContain('Subject: small on aws');
    const stored = (await blobBytes(big.blobKey)).toString();
    expect(stored.length).toBe(big.size);
    expect(stored).toContain(large);
  });
});
