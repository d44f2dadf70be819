/**
 * The processing stack: the inbound and outbound Lambda workers with their SQS event sources and
 * least-privilege grants on the state stack's resources. In the 'direct' outbound mode there is no
 * outbound Lambda (Lambda may not send on port 25); the listeners stack runs a Fargate worker.
 */
import { Duration, Stack, Validations, type StackProps } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { join } from 'node:path';
import type { StageConfig } from '../config.js';
import { BUNDLING, QueueWorker } from '../constructs/queue-worker.js';
import { acknowledgeGrantWildcards } from '../nag.js';
import { dkimSecretPrefix, type StateStack } from './state.js';

/** Props of ProcessingStack. */
export interface ProcessingStackProps extends StackProps {
  config: StageConfig;
  state: StateStack;
  /** The repository root (package.json, functions/, core/). */
  projectRoot: string;
}

/** The environment every worker (Lambda or Fargate) gets, beside the storage names. */
export function workerEnvironment(c: StageConfig, state: StateStack): Record<string, string> {
  return {
    ...state.storageEnvironment(),
    TOMLINSON_HOSTNAME: c.mailHostname,
    TOMLINSON_LOG_PRETTY: 'false',
    TOMLINSON_QUEUE_MAX_RECEIVES: String(c.queueMaxReceives),
    TOMLINSON_SMARTHOST: c.outbound === 'smarthost' ? c.smarthost : '',
    TOMLINSON_SMARTHOST_SECRET_ID: c.outbound === 'smarthost' && c.smarthost ? state.smarthostSecret.secretArn : '',
    TOMLINSON_DKIM_SECRET_PREFIX: dkimSecretPrefix(c.stage),
    // rspamd runs only as a sidecar of the SMTP task (and, for scanning what JMAP sends, of the web
    // task), out of every other process's reach: no process but the SMTP task's learner has a
    // controller (infra/constructs/rspamd-sidecar.ts), and with spam filtering off lessons are dropped.
    TOMLINSON_SPAM: c.spam.enabled ? 'on' : 'off',
    TOMLINSON_SPAM_CONTROLLER_URL: '',
  };
}

/** Lambda workers of one stage. */
export class ProcessingStack extends Stack {
  readonly inbound: QueueWorker;
  readonly outbound?: QueueWorker;
  /** The scheduled orphaned-blob sweep (absent when `orphanSweepHours` is 0). */
  readonly sweep?: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: ProcessingStackProps) {
    super(scope, id, props);
    const { config: c, state } = props;
    const env = workerEnvironment(c, state);
    const mail = state.bucketFor(this, 'Mail');
    const common = {
      projectRoot: props.projectRoot,
      timeout: Duration.seconds(c.lambda.timeoutSeconds),
      memoryMiB: c.lambda.memoryMiB,
      maxConcurrency: c.lambda.maxConcurrency,
      logRetention: c.logRetentionDays as logs.RetentionDays,
    };

    // Inbound: reads the raw message, indexes it into mailboxes, hands remote recipients (and
    // DSNs) to the outbound queue.
    this.inbound = new QueueWorker(this, 'Inbound', {
      ...common,
      entry: join(props.projectRoot, 'functions/inbound/handler.ts'),
      queue: state.inboundQueue,
      environment: env,
    });
    mail.grantReadWrite(this.inbound.function);
    acknowledgeGrantWildcards(this.inbound, [state.bucketArnExport('Mail')]);
    state.table.grantReadWriteData(this.inbound.function);
    state.outboundQueue.grantSendMessages(this.inbound.function);

    if (c.outbound === 'smarthost') {
      // Outbound: relays through the smarthost; bounces go back in as new inbound jobs.
      this.outbound = new QueueWorker(this, 'Outbound', {
        ...common,
        entry: join(props.projectRoot, 'functions/outbound/handler.ts'),
        timeout: Duration.seconds(c.lambda.outboundTimeoutSeconds),
        queue: state.outboundQueue,
        environment: env,
      });
      mail.grantReadWrite(this.outbound.function);
      acknowledgeGrantWildcards(this.outbound, [state.bucketArnExport('Mail')]);
      state.table.grantReadWriteData(this.outbound.function);
      state.inboundQueue.grantSendMessages(this.outbound.function);
      state.outboundQueue.grantSendMessages(this.outbound.function);
      if (c.smarthost) state.smarthostSecret.grantRead(this.outbound.function);
      state.grantDkimRead(this.outbound.function);
    }

    if (c.orphanSweepHours > 0) {
      // The orphaned-blob sweep (core/mail/sweep.ts): deletes raw messages that no job, mailbox
      // or outbound record can reach any more. Idempotent, so an overlapping or repeated run only
      // costs reads; it stops itself a minute before the timeout and the next run carries on.
      const logGroup = new logs.LogGroup(this, 'SweepLogs', { retention: c.logRetentionDays as logs.RetentionDays });
      const fn = new nodejs.NodejsFunction(this, 'SweepFunction', {
        entry: join(props.projectRoot, 'functions/sweep/handler.ts'),
        handler: 'handler',
        projectRoot: props.projectRoot,
        depsLockFilePath: join(props.projectRoot, 'package-lock.json'),
        runtime: lambda.Runtime.NODEJS_22_X,
        architecture: lambda.Architecture.ARM_64,
        memorySize: c.lambda.memoryMiB,
        timeout: Duration.minutes(15),
        logGroup,
        environment: { ...env, NODE_OPTIONS: '--enable-source-maps' },
        bundling: BUNDLING,
      });
      // List and read the mail blobs, delete orphans; reference, hold and mark items in the table;
      // the four queues' depths decide whether the fast path is on.
      mail.grantRead(fn);
      mail.grantDelete(fn);
      acknowledgeGrantWildcards(fn, [state.bucketArnExport('Mail')]);
      state.table.grantReadWriteData(fn);
      for (const q of [state.inboundQueue, state.inboundDlq, state.outboundQueue, state.outboundDlq]) q.grant(fn, 'sqs:GetQueueAttributes');
      new events.Rule(this, 'SweepSchedule', {
        description: 'Runs the orphaned mail blob sweep',
        schedule: events.Schedule.rate(Duration.hours(c.orphanSweepHours)),
        targets: [new targets.LambdaFunction(fn, { retryAttempts: 0 })],
      });
      Validations.of(fn).acknowledge({
        id: 'AwsSolutions-L1',
        reason: 'nodejs22.x is the runtime the bundle targets and is supported; moving to a newer one is a deliberate change with its own tests.',
      });
      Validations.of(fn).acknowledge({
        id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
        reason: 'AWSLambdaBasicExecutionRole only lets the function write its own CloudWatch logs.',
      });
      this.sweep = fn;
    }
  }
}
