/**
 * Creates (if absent) or deletes the S3 buckets, DynamoDB table and SQS queues that the aws
 * storage adapters use, against whatever the standard AWS variables point at: moto (the test
 * harness), LocalStack or a real account. Production resources come from the CDK state stack;
 * this is for tests and development.
 *
 *   npx tsx scripts/aws-resources.ts create --prefix tomlinson-dev [--max-receives 5]   # prints env lines
 *   npx tsx scripts/aws-resources.ts delete --prefix tomlinson-dev
 */
import { pathToFileURL } from 'node:url';
import {
  CreateTableCommand,
  DeleteTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  UpdateTimeToLiveCommand,
  waitUntilTableExists,
} from '@aws-sdk/client-dynamodb';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListMultipartUploadsCommand,
  AbortMultipartUploadCommand,
  ListObjectsV2Command,
  S3Client,
  type BucketLocationConstraint,
} from '@aws-sdk/client-s3';
import { CreateQueueCommand, DeleteQueueCommand, GetQueueAttributesCommand, GetQueueUrlCommand, SQSClient } from '@aws-sdk/client-sqs';
import { Command } from 'commander';

/** Where and what to create. */
export interface AwsResourceOptions {
  /** Prefix of every resource name (lower-case letters, digits, dashes). */
  prefix: string;
  /** Receives before a message moves to its dead-letter queue (the redrive maxReceiveCount). @default 5 */
  maxReceives?: number;
  /** AWS region. @default the SDK's (AWS_REGION) */
  region?: string;
  /** One endpoint for all three services (moto, LocalStack). @default the SDK's (AWS_ENDPOINT_URL*) */
  endpoint?: string;
  /** Path-style S3 addressing. @default true when `endpoint` is given */
  forcePathStyle?: boolean;
  /** Static credentials (emulators). @default the SDK's credential chain */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** The resource names derived from a prefix. */
export function resourceNames(prefix: string) {
  if (!/^[a-z0-9][a-z0-9-]{1,40}$/.test(prefix)) throw new Error(`prefix ${JSON.stringify(prefix)}: use 2-41 lower-case letters, digits and dashes`);
  return {
    mailBucket: `${prefix}-mail`,
    cacheBucket: `${prefix}-cache`,
    table: `${prefix}-table`,
    inbound: `${prefix}-inbound`,
    outbound: `${prefix}-outbound`,
    inboundDlq: `${prefix}-inbound-dlq`,
    outboundDlq: `${prefix}-outbound-dlq`,
  };
}

function clients(o: AwsResourceOptions) {
  const common = {
    ...(o.region ? { region: o.region } : {}),
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
  };
  return {
    s3: new S3Client({ ...common, forcePathStyle: o.forcePathStyle ?? !!o.endpoint }),
    ddb: new DynamoDBClient(common),
    sqs: new SQSClient(common),
  };
}

function isName(e: unknown, ...names: string[]): boolean {
  return names.includes((e as { name?: string })?.name ?? '');
}

/**
 * Creates whatever of the resources is missing and returns the TOMLINSON_* variables (plus
 * TOMLINSON_STORAGE=aws and TOMLINSON_QUEUE_MAX_RECEIVES) that make `loadConfig` open them.
 */
export async function ensureAwsResources(o: AwsResourceOptions): Promise<Record<string, string>> {
  const n = resourceNames(o.prefix);
  const maxReceives = o.maxReceives ?? 5;
  const { s3, ddb, sqs } = clients(o);
  try {
    const region = await s3.config.region();
    for (const bucket of [n.mailBucket, n.cacheBucket]) {
      try {
        await s3.send(
          new CreateBucketCommand({
            Bucket: bucket,
            // us-east-1 is the one region that refuses an explicit location constraint.
            ...(region && region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } } : {}),
          }),
        );
      } catch (e) {
        if (!isName(e, 'BucketAlreadyOwnedByYou')) throw e;
      }
    }

    try {
      await ddb.send(
        new CreateTableCommand({
          TableName: n.table,
          BillingMode: 'PAY_PER_REQUEST',
          AttributeDefinitions: [
            { AttributeName: 'pk', AttributeType: 'S' },
            { AttributeName: 'sk', AttributeType: 'S' },
          ],
          KeySchema: [
            { AttributeName: 'pk', KeyType: 'HASH' },
            { AttributeName: 'sk', KeyType: 'RANGE' },
          ],
        }),
      );
    } catch (e) {
      if (!isName(e, 'ResourceInUseException')) throw e;
    }
    await waitUntilTableExists({ client: ddb, maxWaitTime: 120, minDelay: 1, maxDelay: 5 }, { TableName: n.table });
    const desc = await ddb.send(new DescribeTableCommand({ TableName: n.table }));
    if (desc.Table?.TableStatus !== 'ACTIVE') throw new Error(`table ${n.table} is ${desc.Table?.TableStatus}`);
    try {
      await ddb.send(new UpdateTimeToLiveCommand({ TableName: n.table, TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true } }));
    } catch (e) {
      // "TimeToLive is already enabled" on a second run.
      if (!isName(e, 'ValidationException')) throw e;
    }

    const queue = async (name: string, attributes: Record<string, string> = {}): Promise<{ url: string; arn: string }> => {
      const created = await sqs.send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
      const url = created.QueueUrl!;
      const attrs = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }));
      return { url, arn: attrs.Attributes!.QueueArn! };
    };
    // A DLQ keeps messages for the longest SQS allows (14 days), so an operator has time to look.
    const keep = { MessageRetentionPeriod: String(14 * 86400) };
    const inboundDlq = await queue(n.inboundDlq, keep);
    const outboundDlq = await queue(n.outboundDlq, keep);
    const redrive = (arn: string) => ({ RedrivePolicy: JSON.stringify({ deadLetterTargetArn: arn, maxReceiveCount: maxReceives }) });
    const inbound = await queue(n.inbound, redrive(inboundDlq.arn));
    const outbound = await queue(n.outbound, redrive(outboundDlq.arn));

    return {
      TOMLINSON_STORAGE: 'aws',
      TOMLINSON_QUEUE_MAX_RECEIVES: String(maxReceives),
      TOMLINSON_MAIL_BUCKET: n.mailBucket,
      TOMLINSON_CACHE_BUCKET: n.cacheBucket,
      TOMLINSON_TABLE: n.table,
      TOMLINSON_INBOUND_QUEUE_URL: inbound.url,
      TOMLINSON_OUTBOUND_QUEUE_URL: outbound.url,
      TOMLINSON_INBOUND_DLQ_URL: inboundDlq.url,
      TOMLINSON_OUTBOUND_DLQ_URL: outboundDlq.url,
    };
  } finally {
    s3.destroy();
    ddb.destroy();
    sqs.destroy();
  }
}

/** Deletes the resources of a prefix (emptying the buckets first); absent ones are skipped. */
export async function deleteAwsResources(o: AwsResourceOptions): Promise<void> {
  const n = resourceNames(o.prefix);
  const { s3, ddb, sqs } = clients(o);
  try {
    for (const bucket of [n.mailBucket, n.cacheBucket]) {
      try {
        for (;;) {
          const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
          const keys = (page.Contents ?? []).map((c) => ({ Key: c.Key! }));
          if (keys.length === 0) break;
          await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
        }
        const uploads = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
        for (const u of uploads.Uploads ?? []) await s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! }));
        await s3.send(new DeleteBucketCommand({ Bucket: bucket }));
      } catch (e) {
        if (!isName(e, 'NoSuchBucket')) throw e;
      }
    }
    try {
      await ddb.send(new DeleteTableCommand({ TableName: n.table }));
    } catch (e) {
      if (!isName(e, 'ResourceNotFoundException')) throw e;
    }
    for (const q of [n.inbound, n.outbound, n.inboundDlq, n.outboundDlq]) {
      try {
        const { QueueUrl } = await sqs.send(new GetQueueUrlCommand({ QueueName: q }));
        await sqs.send(new DeleteQueueCommand({ QueueUrl }));
      } catch (e) {
        if (!isName(e, 'QueueDoesNotExist', 'AWS.SimpleQueueService.NonExistentQueue')) throw e;
      }
    }
  } finally {
    s3.destroy();
    ddb.destroy();
    sqs.destroy();
  }
}

async function main(argv: string[]): Promise<void> {
  const forcePathStyle = ['1', 'true', 'yes', 'on'].includes((process.env.AWS_S3_FORCE_PATH_STYLE ?? '').toLowerCase());
  const program = new Command()
    .name('aws-resources')
    .description('Create or delete the buckets, table and queues of the aws storage adapters (tests, LocalStack, development).');
  program
    .command('create')
    .requiredOption('--prefix <prefix>', 'resource name prefix')
    .option('--max-receives <n>', 'redrive maxReceiveCount', '5')
    .action(async (opts: { prefix: string; maxReceives: string }) => {
      const env = await ensureAwsResources({ prefix: opts.prefix, maxReceives: Number(opts.maxReceives), forcePathStyle });
      for (const [k, v] of Object.entries(env)) process.stdout.write(`${k}=${v}\n`);
    });
  program
    .command('delete')
    .requiredOption('--prefix <prefix>', 'resource name prefix')
    .action(async (opts: { prefix: string }) => {
      await deleteAwsResources({ prefix: opts.prefix, forcePathStyle });
    });
  await program.parseAsync(argv);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv).catch((e: unknown) => {
    process.stderr.write(`aws-resources: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
