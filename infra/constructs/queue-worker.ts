/**
 * A queue worker on Lambda (STYLE.md example 13): an SQS queue with its dead-letter queue feeding a
 * NodejsFunction with partial batch responses. The function is bundled by the locally installed
 * esbuild, never in Docker, for nodejs22.x on arm64.
 */
import { Duration, Validations } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

/** Props of QueueWorker. */
export interface QueueWorkerProps {
  /** The handler's TypeScript file (exports `handler`). */
  readonly entry: string;
  /** Folder with package.json and package-lock.json; esbuild resolves modules from here. */
  readonly projectRoot: string;
  /** The queue the function works; its redrive policy sends poison messages to the DLQ. */
  readonly queue: sqs.IQueue;
  /** Environment variables (core/config.ts SETTINGS names). */
  readonly environment: Record<string, string>;
  /** @default Duration.seconds(120) */
  readonly timeout?: Duration;
  /** @default 512 */
  readonly memoryMiB?: number;
  /** Most concurrent invocations this event source starts (2..1000). @default 10 */
  readonly maxConcurrency?: number;
  /** Records per invocation. @default 10 */
  readonly batchSize?: number;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
}

/** The esbuild options shared by every function: one ESM file for Node 22 with a `require` shim
 * for the CommonJS dependencies, the AWS SDK bundled at the lockfile's version. */
export const BUNDLING: nodejs.BundlingOptions = {
  forceDockerBundling: false,
  format: nodejs.OutputFormat.ESM,
  target: 'node22',
  mainFields: ['module', 'main'],
  bundleAwsSDK: true,
  minify: true,
  sourceMap: true,
  // The local SQLite adapter and the pretty log printer never run in Lambda.
  externalModules: ['better-sqlite3', 'pino-pretty'],
  banner: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
};

/** A Lambda function subscribed to a queue with ReportBatchItemFailures. */
export class QueueWorker extends Construct {
  readonly function: nodejs.NodejsFunction;
  readonly logGroup: logs.LogGroup;
  readonly eventSource: SqsEventSource;

  constructor(scope: Construct, id: string, props: QueueWorkerProps) {
    super(scope, id);
    this.logGroup = new logs.LogGroup(this, 'Logs', { retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH });
    this.function = new nodejs.NodejsFunction(this, 'Function', {
      entry: props.entry,
      handler: 'handler',
      projectRoot: props.projectRoot,
      depsLockFilePath: `${props.projectRoot}/package-lock.json`,
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: lambda.Architecture.ARM_64,
      memorySize: props.memoryMiB ?? 512,
      timeout: props.timeout ?? Duration.seconds(120),
      logGroup: this.logGroup,
      environment: { ...props.environment, NODE_OPTIONS: '--enable-source-maps' },
      bundling: BUNDLING,
    });
    this.eventSource = new SqsEventSource(props.queue, {
      batchSize: props.batchSize ?? 10,
      reportBatchItemFailures: true,
      maxConcurrency: props.maxConcurrency ?? 10,
    });
    this.function.addEventSource(this.eventSource);

    Validations.of(this.function).acknowledge({
      id: 'AwsSolutions-L1',
      reason: 'nodejs22.x is the runtime the bundle targets and is supported; moving to a newer one is a deliberate change with its own tests.',
    });
    Validations.of(this.function).acknowledge({
      id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      reason: 'AWSLambdaBasicExecutionRole only lets the function write its own CloudWatch logs.',
    });
  }
}
