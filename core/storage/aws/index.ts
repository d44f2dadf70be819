/**
 * The aws adapter family: S3 (mail and cache buckets), DynamoDB (one table) and SQS (four
 * queues). Endpoints, region and credentials come from the SDK's standard sources
 * (AWS_REGION, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 / _DYNAMODB / _SQS, roles), so the same
 * code runs against AWS, LocalStack or moto; resource names come from Config.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import type { Config } from '../../config.js';
import type { Logger } from '../../log.js';
import type { Storage, StorageCapabilities, ThreadHandover } from '../ports.js';
import { DynamoTables } from './dynamo-tables.js';
import { guard } from './errors.js';
import { watchClient } from './requests.js';
import { S3Blobs, type S3BlobsOptions } from './s3-blobs.js';
import { SqsQueues } from './sqs-queues.js';

export { DynamoTables } from './dynamo-tables.js';
export { S3Blobs } from './s3-blobs.js';
export { SqsQueues } from './sqs-queues.js';

/** Sockets per client (S3, DynamoDB, SQS each). */
const MAX_SOCKETS = 1024;

/** Options for tests and tuning; production passes none. */
export interface AwsStorageOptions {
  /** Milliseconds since the epoch, deciding item expiry. @default Date.now */
  now?: () => number;
  /** Multipart tuning of both buckets. @default 5 MiB parts, 2 at once */
  blobs?: S3BlobsOptions;
}

/**
 * The backends the health probe checks: those the process's enabled services use, which on AWS
 * is all their task role may reach (infra/access.ts); a process with every service on (or none,
 * e.g. the CLI) checks all.
 */
export function backendsUsed(config: Config): { mail: boolean; cache: boolean; queues: ('inbound' | 'outbound')[] } {
  const { smtp, pop3, imap, proxy, workers } = {
    smtp: config.smtp.enabled,
    pop3: config.pop3.enabled,
    imap: config.imap.enabled,
    proxy: config.proxy.enabled,
    workers: config.workers.enabled,
  };
  // The web listener (JMAP) reads and writes mailboxes and hands EmailSubmissions to the inbound
  // queue as the submission listener does.
  const web = config.web.enabled;
  if (!smtp && !pop3 && !imap && !proxy && !workers && !web) return { mail: true, cache: true, queues: ['inbound', 'outbound'] };
  const queues: ('inbound' | 'outbound')[] = workers ? ['inbound', 'outbound'] : smtp || web ? ['inbound'] : [];
  return { mail: smtp || pop3 || imap || web || workers, cache: proxy, queues };
}

/** Opens S3, DynamoDB and SQS clients once and returns the three ports over them. */
export async function openAwsStorage(config: Config, log: Logger, options: AwsStorageOptions = {}): Promise<Storage> {
  const aws = config.storage.aws;
  const slog = log.child({ c: 'storage', family: 'aws' });
  // Socket idle timeout above SQS's 20 s long poll; connection timeout short so an unreachable
  // endpoint shows as Unavailable quickly. Every blob a client is reading (a POP3 RETR, a proxy
  // hit) holds a socket until it is read, so allow many more than the SDK's 50.
  const agent = { keepAlive: true, maxSockets: MAX_SOCKETS };
  const requestHandler = { connectionTimeout: 5_000, requestTimeout: 60_000, httpAgent: agent, httpsAgent: agent };
  const common = { ...(aws.region ? { region: aws.region } : {}), requestHandler };
  const s3 = new S3Client({ ...common, forcePathStyle: aws.forcePathStyle });
  const ddb = new DynamoDBClient(common);
  const sqs = new SQSClient(common);
  watchClient(s3, 's3');
  watchClient(ddb, 'dynamodb');
  watchClient(sqs, 'sqs');

  const mail = new S3Blobs(s3, aws.mailBucket, slog, options.blobs);
  const cache = new S3Blobs(s3, aws.cacheBucket, slog, options.blobs);
  const tables = new DynamoTables(ddb, aws.table, slog, { now: options.now });
  const queues = new SqsQueues(
    sqs,
    { inbound: aws.inboundQueueUrl, outbound: aws.outboundQueueUrl, 'inbound-dlq': aws.inboundDlqUrl, 'outbound-dlq': aws.outboundDlqUrl },
    slog,
  );
  slog.info(
    {
      region: await s3.config.region().catch(() => '?'),
      mailBucket: aws.mailBucket,
      cacheBucket: aws.cacheBucket,
      table: aws.table,
      pathStyle: aws.forcePathStyle,
    },
    'aws storage opened',
  );

  const up = async (probe: () => Promise<unknown>, what: string): Promise<boolean> => {
    try {
      await probe();
      return true;
    } catch (e) {
      slog.warn({ err: e, what }, 'storage probe failed');
      return false;
    }
  };
  // Every task and function reads the same buckets, table and queues; each read is a billed
  // request; SQS samples its servers, so a listing long-polls a second to see each message.
  const capabilities: StorageCapabilities = { sharedBetweenProcesses: true, costlyReads: true, listingWaitSeconds: 1, monitoredAs: aws.table || undefined };
  let closed = false;
  return {
    capabilities,
    // Nothing to share: the other thread builds its own clients from the same configuration.
    forWorkerThread: () => ({ family: 'aws' }) as unknown as ThreadHandover,
    mail,
    cache,
    tables,
    queues,
    async check() {
      const uses = backendsUsed(config);
      const report: Record<string, boolean> = {};
      await Promise.all([
        uses.mail && up(() => guard(aws.mailBucket, () => s3.send(new HeadBucketCommand({ Bucket: aws.mailBucket }))), 'mail').then((v) => (report.mail = v)),
        uses.cache &&
          up(() => guard(aws.cacheBucket, () => s3.send(new HeadBucketCommand({ Bucket: aws.cacheBucket }))), 'cache').then((v) => (report.cache = v)),
        up(() => tables.probe(), 'tables').then((v) => (report.tables = v)),
        uses.queues.length > 0 && up(() => queues.probe(uses.queues), 'queues').then((v) => (report.queues = v)),
      ]);
      return report;
    },
    async close() {
      if (closed) return;
      closed = true;
      s3.destroy();
      ddb.destroy();
      sqs.destroy();
    },
  };
}
