/**
 * The state stack: everything that holds data. Mail and cache buckets, the one table, the inbound
 * and outbound queues with their dead-letter queues, the KMS key of the mail bucket and the
 * Secrets Manager entries for TLS, DKIM and the smarthost password. Every stateful resource is
 * retained when the stack is deleted and has a pinned logical ID, so that a refactor of the
 * construct tree can never replace (and so empty) a bucket, the table or a queue.
 */
import { ArnFormat, CfnOutput, Duration, Fn, RemovalPolicy, Stack, Validations, type CfnResource, type StackProps } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct, IConstruct } from 'constructs';
import type { StageConfig } from '../config.js';

/** Logical IDs that must never change (a change replaces the resource and loses its data). */
export const PINNED_IDS = {
  mailKey: 'MailKey',
  mailBucket: 'MailBucket',
  cacheBucket: 'CacheBucket',
  logsBucket: 'AccessLogsBucket',
  table: 'Table',
  inboundQueue: 'InboundQueue',
  inboundDlq: 'InboundDeadLetterQueue',
  outboundQueue: 'OutboundQueue',
  outboundDlq: 'OutboundDeadLetterQueue',
  tlsSecret: 'TlsSecret',
  smarthostSecret: 'SmarthostSecret',
} as const;

/** The pinned logical ID of a domain's DKIM secret, e.g. DkimSecretExampleCom. */
export function dkimSecretId(domain: string): string {
  return `DkimSecret${domain
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((p) => p.charAt(0).toUpperCase() + p.slice(1))
    .join('')}`;
}

/** The name prefix of the DKIM secrets (`<prefix><domain>`, TOMLINSON_DKIM_SECRET_PREFIX); the
 * admin CLI's `dkim generate` writes keys there, also for domains added after the deploy. */
export function dkimSecretPrefix(stage: string): string {
  return `tomlinson/${stage}/dkim/`;
}

/**
 * SQS retention per queue. SQS counts a dead letter's retention from its first enqueue into the
 * source queue (SQS developer guide, "Dead-letter queues"), so a DLQ needs longer than its source:
 * the DLQs keep the SQS maximum (14 days) and leave at least a week to look at a dead letter.
 * Outbound mail is given up after TOMLINSON_OUTBOUND_MAX_AGE (5 days by default) and bounced, so
 * 7 days covers it with two days' margin; inbound jobs finish in minutes (4 days, the SQS default).
 */
export const QUEUE_RETENTION = { inbound: Duration.days(4), outbound: Duration.days(7), deadLetter: Duration.days(14) } as const;

/** Props of StateStack. */
export interface StateStackProps extends StackProps {
  config: StageConfig;
  /** Visibility timeout of each work queue; must be at least its Lambda's timeout (AWS requires it
   * for an event source) and is set to 6x it, as AWS recommends. */
  queueVisibility: { inbound: Duration; outbound: Duration };
}

function pin(construct: IConstruct, id: string): void {
  (construct.node.defaultChild as CfnResource).overrideLogicalId(id);
}

/** Buckets, table, queues, key and secrets of one stage. */
export class StateStack extends Stack {
  readonly mailKey: kms.Key;
  readonly mailBucket: s3.Bucket;
  readonly cacheBucket: s3.Bucket;
  readonly logsBucket: s3.Bucket;
  readonly table: dynamodb.Table;
  readonly inboundQueue: sqs.Queue;
  readonly inboundDlq: sqs.Queue;
  readonly outboundQueue: sqs.Queue;
  readonly outboundDlq: sqs.Queue;
  readonly tlsSecret: secretsmanager.Secret;
  readonly stage: string;
  /** One per configured domain, named `<dkimSecretPrefix><domain>`. */
  readonly dkimSecrets: secretsmanager.Secret[];
  readonly smarthostSecret: secretsmanager.Secret;

  constructor(scope: Construct, id: string, props: StateStackProps) {
    super(scope, id, props);
    const c = props.config;
    this.stage = c.stage;
    const retain = RemovalPolicy.RETAIN;

    this.mailKey = new kms.Key(this, 'MailKey', {
      description: `Tomlinson ${c.stage}: mail bucket and queues`,
      enableKeyRotation: true,
      removalPolicy: retain,
    });
    pin(this.mailKey, PINNED_IDS.mailKey);

    // S3 server access logs of the two data buckets. It cannot log to itself.
    this.logsBucket = new s3.Bucket(this, 'AccessLogsBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
      lifecycleRules: [{ id: 'expire-logs', expiration: Duration.days(90), abortIncompleteMultipartUploadAfter: Duration.days(1) }],
      removalPolicy: retain,
    });
    pin(this.logsBucket, PINNED_IDS.logsBucket);
    Validations.of(this.logsBucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'This is the server access log bucket of the mail and cache buckets; logging it to itself would loop.',
    });

    this.mailBucket = new s3.Bucket(this, 'MailBucket', {
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: this.mailKey,
      bucketKeyEnabled: true,
      versioned: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      serverAccessLogsBucket: this.logsBucket,
      serverAccessLogsPrefix: 'mail/',
      lifecycleRules: [
        // A streamed put that died midway leaves parts nobody can see; do not pay for them.
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
        { id: 'expire-old-versions', noncurrentVersionExpiration: Duration.days(c.mailNoncurrentDays) },
      ],
      removalPolicy: retain,
    });
    pin(this.mailBucket, PINNED_IDS.mailBucket);

    this.cacheBucket = new s3.Bucket(this, 'CacheBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      serverAccessLogsBucket: this.logsBucket,
      serverAccessLogsPrefix: 'cache/',
      lifecycleRules: [{ id: 'expire-cache', expiration: Duration.days(c.cacheExpireDays), abortIncompleteMultipartUploadAfter: Duration.days(1) }],
      removalPolicy: retain,
    });
    pin(this.cacheBucket, PINNED_IDS.cacheBucket);

    // One table holds every item kind (DESIGN.md, "A data model sketch"). `Table`, not `TableV2`:
    // moto's CloudFormation (our offline deploy test) rejects AWS::DynamoDB::GlobalTable.
    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      timeToLiveAttribute: 'ttl',
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: true,
      removalPolicy: retain,
    });
    pin(this.table, PINNED_IDS.table);

    const queue = (qid: string, pinned: string, retention: Duration, dlq?: { queue: sqs.Queue; maxReceiveCount: number }, visibility?: Duration): sqs.Queue => {
      const q = new sqs.Queue(this, qid, {
        encryption: sqs.QueueEncryption.KMS,
        encryptionMasterKey: this.mailKey,
        dataKeyReuse: Duration.hours(1),
        enforceSSL: true,
        retentionPeriod: retention,
        visibilityTimeout: visibility ?? Duration.seconds(30),
        deadLetterQueue: dlq,
        removalPolicy: retain,
      });
      pin(q, pinned);
      return q;
    };
    // A message moved to a dead-letter queue keeps its first enqueue time, so the DLQ's retention
    // counts from then: the DLQs get the SQS maximum and the work queues less (QUEUE_RETENTION).
    this.inboundDlq = queue('InboundDeadLetterQueue', PINNED_IDS.inboundDlq, QUEUE_RETENTION.deadLetter);
    this.outboundDlq = queue('OutboundDeadLetterQueue', PINNED_IDS.outboundDlq, QUEUE_RETENTION.deadLetter);
    this.inboundQueue = queue(
      'InboundQueue',
      PINNED_IDS.inboundQueue,
      QUEUE_RETENTION.inbound,
      { queue: this.inboundDlq, maxReceiveCount: c.queueMaxReceives },
      props.queueVisibility.inbound,
    );
    // Every scheduled retry of an outbound message is one more receive, so its threshold is sized
    // for the whole retry schedule, not for crashes alone.
    this.outboundQueue = queue(
      'OutboundQueue',
      PINNED_IDS.outboundQueue,
      QUEUE_RETENTION.outbound,
      { queue: this.outboundDlq, maxReceiveCount: c.outboundMaxReceives },
      props.queueVisibility.outbound,
    );
    for (const dlq of [this.inboundDlq, this.outboundDlq]) {
      Validations.of(dlq).acknowledge({ id: 'AwsSolutions-SQS3', reason: 'This queue is itself the dead-letter queue of a work queue.' });
    }

    // Secrets are created with generated placeholder values, never with a value from the template
    // or the repository; docs/deploy.md shows `aws secretsmanager put-secret-value` for each.
    const secret = (sid: string, pinned: string, description: string, template?: string, secretName?: string): secretsmanager.Secret => {
      const s = new secretsmanager.Secret(this, sid, {
        secretName,
        description: `Tomlinson ${c.stage}: ${description}`,
        generateSecretString: template
          ? { secretStringTemplate: template, generateStringKey: 'placeholder', excludePunctuation: true }
          : { passwordLength: 32, excludePunctuation: true },
        removalPolicy: retain,
      });
      pin(s, pinned);
      Validations.of(s).acknowledge({
        id: 'AwsSolutions-SMG4',
        reason:
          'Holds a certificate, a DKIM key or a third-party smarthost password: rotated by the operator with its issuer, not by a Lambda rotation schedule.',
      });
      return s;
    };
    this.tlsSecret = secret(
      'TlsSecret',
      PINNED_IDS.tlsSecret,
      'TLS certificate chain and key as {"cert","key"} (PEM); empty until set, the listeners then use a self-signed certificate',
      '{"cert":"","key":""}',
    );
    // DKIM keys live in one secret per domain under a name prefix that the outbound worker and the
    // admin CLI share (core/mail/dkim.ts); an empty privateKey means "no key yet, do not sign".
    this.dkimSecrets = c.domains.map((d) =>
      secret(
        dkimSecretId(d),
        dkimSecretId(d),
        `DKIM signing keys of ${d} as {"keys":[{"selector","privateKey"}]}; empty until \`dkim generate\``,
        JSON.stringify({ selector: c.dkimSelector, privateKey: '' }),
        `${dkimSecretPrefix(c.stage)}${d}`,
      ),
    );
    this.smarthostSecret = secret('SmarthostSecret', PINNED_IDS.smarthostSecret, 'smarthost password (plain string)');

    const out = (oid: string, value: string, description: string): void => {
      new CfnOutput(this, oid, { value, description });
    };
    for (const [name, bucket] of [
      ['Mail', this.mailBucket],
      ['Cache', this.cacheBucket],
    ] as const) {
      new CfnOutput(this, `${name}BucketArnExport`, { value: bucket.bucketArn, exportName: this.bucketArnExport(name) });
    }
    out('MailBucketName', this.mailBucket.bucketName, 'TOMLINSON_MAIL_BUCKET');
    out('CacheBucketName', this.cacheBucket.bucketName, 'TOMLINSON_CACHE_BUCKET');
    out('TableName', this.table.tableName, 'TOMLINSON_TABLE');
    out('InboundQueueUrl', this.inboundQueue.queueUrl, 'TOMLINSON_INBOUND_QUEUE_URL');
    out('OutboundQueueUrl', this.outboundQueue.queueUrl, 'TOMLINSON_OUTBOUND_QUEUE_URL');
    out('InboundDlqUrl', this.inboundDlq.queueUrl, 'TOMLINSON_INBOUND_DLQ_URL');
    out('OutboundDlqUrl', this.outboundDlq.queueUrl, 'TOMLINSON_OUTBOUND_DLQ_URL');
    out('TlsSecretArn', this.tlsSecret.secretArn, 'TOMLINSON_TLS_SECRET_ID');
    out('DkimSecretPrefix', dkimSecretPrefix(c.stage), 'TOMLINSON_DKIM_SECRET_PREFIX');
    out('SmarthostSecretArn', this.smarthostSecret.secretArn, 'TOMLINSON_SMARTHOST_SECRET_ID');
  }

  /** The export name of a bucket's ARN: fixed and readable, so that the cdk-nag acknowledgement
   * of `<bucket ARN>/*` grants in other stacks can name it (see bucketFor). */
  bucketArnExport(which: 'Mail' | 'Cache'): string {
    return `${this.stackName}-${which}BucketArn`;
  }

  /** The mail or cache bucket as seen from another stack, through the fixed export above; grant on
   * this one there. */
  bucketFor(scope: Construct, which: 'Mail' | 'Cache'): s3.IBucket {
    const own = which === 'Mail' ? this.mailBucket : this.cacheBucket;
    return s3.Bucket.fromBucketAttributes(scope, `${which}BucketRef`, {
      bucketArn: Fn.importValue(this.bucketArnExport(which)),
      bucketName: own.bucketName,
      encryptionKey: which === 'Mail' ? this.mailKey : undefined,
    });
  }

  /** Lets `grantee` read every DKIM secret of the stage, including those the CLI adds later. */
  grantDkimRead(grantee: iam.IGrantable): void {
    const arn = Stack.of(this).formatArn({
      service: 'secretsmanager',
      resource: 'secret',
      resourceName: `${dkimSecretPrefix(this.stage)}*`,
      arnFormat: ArnFormat.COLON_RESOURCE_NAME,
    });
    iam.Grant.addToPrincipal({ grantee, actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'], resourceArns: [arn] });
    Validations.of(grantee.grantPrincipal as unknown as IConstruct).acknowledge({
      id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:${dkimSecretPrefix(this.stage)}*]`,
      reason: 'DKIM keys are one secret per domain under a fixed prefix; domains added later with the admin CLI must be readable without a redeploy.',
    });
  }

  /** The environment variables (core/config.ts SETTINGS) that point the aws adapters at this
   * stack's resources; generated names only. */
  storageEnvironment(): Record<string, string> {
    return {
      TOMLINSON_STORAGE: 'aws',
      TOMLINSON_MAIL_BUCKET: this.mailBucket.bucketName,
      TOMLINSON_CACHE_BUCKET: this.cacheBucket.bucketName,
      TOMLINSON_TABLE: this.table.tableName,
      TOMLINSON_INBOUND_QUEUE_URL: this.inboundQueue.queueUrl,
      TOMLINSON_OUTBOUND_QUEUE_URL: this.outboundQueue.queueUrl,
      TOMLINSON_INBOUND_DLQ_URL: this.inboundDlq.queueUrl,
      TOMLINSON_OUTBOUND_DLQ_URL: this.outboundDlq.queueUrl,
    };
  }
}
