/**
 * Deploys the state and processing stacks to moto's CloudFormation with aws-cdk-local (bootstrap
 * included), the way docs/deploy.md deploys them to LocalStack, and checks through the AWS SDK that
 * what was synthesized exists: buckets, the table, the queues with their redrive policies, the
 * secrets, both functions with the generated names in their environment, and the event source
 * mappings with partial batch responses.
 *
 * moto specifics (see issue 8): path-style template URLs resolve only when the endpoint host is
 * `localhost`; aws-cdk-local needs AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 and
 * AWS_S3_FORCE_PATH_STYLE=1; moto's change sets never publish stack outputs (so no exports for the
 * processing stack), hence `--method=direct`; moto's account is 123456789012; and moto's
 * CloudFormation ignores bucket versioning and lifecycle, TTL, PITR and Lambda architecture, which
 * stacks.test.ts asserts on the template instead. test/infra/moto-cfn-server.py adds the secret
 * resource type moto's CloudFormation lacks.
 *
 * The listeners stack itself (VPC, ECS, NLB) is not deployed: moto has no Fargate or NLB data
 * plane. What its tasks depend on is checked instead: each listener task's environment, taken
 * from the synthesized listeners stack (the mailbox task with POP3 and IMAP switched on included),
 * resolves against the exports the deployed state stack publishes, passes the runtime's settings
 * check, and its health probe (the NLB's health check) finds its bucket and table.
 */
import { CloudFormationClient, DescribeStacksCommand, ListExportsCommand } from '@aws-sdk/client-cloudformation';
import { Template } from 'aws-cdk-lib/assertions';
import { DescribeTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetFunctionConfigurationCommand, LambdaClient, ListEventSourceMappingsCommand } from '@aws-sdk/client-lambda';
import { GetBucketEncryptionCommand, HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { GetSecretValueCommand, ListSecretsCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { GetQueueAttributesCommand, GetQueueUrlCommand, SQSClient } from '@aws-sdk/client-sqs';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openAwsStorage } from '../../core/storage/aws/index.js';
import { cleanOutdirs, ROOT, testApp } from './support.js';
import { freePorts } from '../support/ports.js';

const ACCOUNT = '123456789012';
const REGION = 'us-east-1';
let moto: ChildProcess | undefined;
let motoLog = '';
let endpoint = '';
const work = mkdtempSync(join(tmpdir(), 'tomlinson-moto-cfn-'));
const creds = { accessKeyId: 'test', secretAccessKey: 'test' };

async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

/** Runs a command to its end; rejects with its output when it fails. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.slice(0, 2).join(' ')} exited ${code}:\n${out.slice(-4000)}`))));
  });
}

/** The environment aws-cdk-local runs in: the machine's, minus any real AWS settings. */
function cdklocalEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AWS_') && !k.startsWith('CDK_')) env[k] = v;
  return {
    ...env,
    AWS_ENDPOINT_URL: endpoint,
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_S3_FORCE_PATH_STYLE: '1',
    AWS_ACCESS_KEY_ID: creds.accessKeyId,
    AWS_SECRET_ACCESS_KEY: creds.secretAccessKey,
    AWS_REGION: REGION,
    AWS_DEFAULT_REGION: REGION,
    AWS_ENVAR_ALLOWLIST: 'AWS_REGION,AWS_DEFAULT_REGION,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_S3_FORCE_PATH_STYLE',
    AWS_CONFIG_FILE: join(work, 'no-aws-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(work, 'no-aws-credentials'),
  };
}

const cdklocal = join(ROOT, 'node_modules/aws-cdk-local/bin/cdklocal');
let outputs: Record<string, string> = {};
let deployLog = '';

beforeAll(async () => {
  const port = await freePort();
  moto = spawn('python3', [join(ROOT, 'test/infra/moto-cfn-server.py'), '-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  moto.stdout!.on('data', (b: Buffer) => (motoLog += b.toString()));
  moto.stderr!.on('data', (b: Buffer) => (motoLog = (motoLog + b.toString()).slice(-20_000)));
  endpoint = `http://localhost:${port}`;
  // moto imports every service at start: a few seconds on an idle machine, far more on a busy one.
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (moto.exitCode !== null) throw new Error(`moto exited:\n${motoLog}`);
    try {
      await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) });
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`moto did not start:\n${motoLog}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const env = cdklocalEnv();
  // Bootstrap from a folder without cdk.json (nothing to synthesize), while this process
  // synthesizes the two stacks (esbuild bundling included) as `-c listeners=false` would.
  const bootstrap = run(process.execPath, [cdklocal, 'bootstrap', `aws://${ACCOUNT}/${REGION}`, '--no-notices'], env, work);
  const { app } = testApp({}, { listeners: false, monitoring: false, bundling: true });
  const assembly = app.synth();
  await bootstrap;
  deployLog = await run(
    process.execPath,
    [cdklocal, 'deploy', '--all', '--app', assembly.directory, '--require-approval', 'never', '--method=direct', '--no-notices', '--progress', 'events'],
    env,
    work,
  );
  const cfn = new CloudFormationClient({ endpoint, region: REGION, credentials: creds });
  const stack = (await cfn.send(new DescribeStacksCommand({ StackName: 'Tomlinson-dev-State' }))).Stacks![0]!;
  outputs = Object.fromEntries((stack.Outputs ?? []).map((o) => [o.OutputKey!, o.OutputValue!]));
}, 600_000);

afterAll(async () => {
  if (moto && moto.exitCode === null) {
    const exited = new Promise((r) => moto!.once('exit', r));
    moto.kill('SIGTERM');
    await exited;
  }
  cleanOutdirs();
  rmSync(work, { recursive: true, force: true });
});

describe('state and processing stacks on moto CloudFormation', () => {
  it('deploys both stacks to CREATE_COMPLETE', async () => {
    const cfn = new CloudFormationClient({ endpoint, region: REGION, credentials: creds });
    for (const name of ['Tomlinson-dev-State', 'Tomlinson-dev-Processing']) {
      const s = (await cfn.send(new DescribeStacksCommand({ StackName: name }))).Stacks![0]!;
      expect(s.StackStatus, `${name}\n${deployLog.slice(-3000)}`).toBe('CREATE_COMPLETE');
    }
    for (const key of ['MailBucketName', 'CacheBucketName', 'TableName', 'InboundQueueUrl', 'OutboundQueueUrl', 'InboundDlqUrl', 'OutboundDlqUrl'])
      expect(outputs[key], key).toBeTruthy();
  });

  it('creates the buckets, the mail bucket encrypted with the stack key', async () => {
    const s3 = new S3Client({ endpoint, region: REGION, credentials: creds, forcePathStyle: true });
    for (const b of [outputs.MailBucketName!, outputs.CacheBucketName!]) await s3.send(new HeadBucketCommand({ Bucket: b }));
    const enc = await s3.send(new GetBucketEncryptionCommand({ Bucket: outputs.MailBucketName! }));
    const rule = enc.ServerSideEncryptionConfiguration!.Rules![0]!.ApplyServerSideEncryptionByDefault!;
    expect(rule.SSEAlgorithm).toBe('aws:kms');
    expect(rule.KMSMasterKeyID).toMatch(/^arn:aws:kms:/);
  });

  it('creates the on-demand pk/sk table', async () => {
    const ddb = new DynamoDBClient({ endpoint, region: REGION, credentials: creds });
    const t = (await ddb.send(new DescribeTableCommand({ TableName: outputs.TableName! }))).Table!;
    expect(t.KeySchema).toEqual([
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ]);
    expect(t.BillingModeSummary?.BillingMode).toBe('PAY_PER_REQUEST');
  });

  it('creates the work queues with redrive to their dead-letter queues', async () => {
    const sqs = new SQSClient({ endpoint, region: REGION, credentials: creds });
    const attrs = async (url: string) => {
      const name = url.split('/').at(-1)!;
      const local = (await sqs.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl!;
      return (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: local, AttributeNames: ['All'] }))).Attributes!;
    };
    const [inbound, outbound, inDlq, outDlq] = await Promise.all(
      [outputs.InboundQueueUrl!, outputs.OutboundQueueUrl!, outputs.InboundDlqUrl!, outputs.OutboundDlqUrl!].map(attrs),
    );
    expect(JSON.parse(inbound!.RedrivePolicy!)).toEqual({ deadLetterTargetArn: inDlq!.QueueArn, maxReceiveCount: 5 });
    expect(JSON.parse(outbound!.RedrivePolicy!)).toEqual({ deadLetterTargetArn: outDlq!.QueueArn, maxReceiveCount: 300 });
    expect(inbound!.VisibilityTimeout).toBe('720');
    expect(inDlq!.RedrivePolicy).toBeUndefined();
  });

  it('creates the secrets with generated placeholders', async () => {
    const sm = new SecretsManagerClient({ endpoint, region: REGION, credentials: creds });
    const list = (await sm.send(new ListSecretsCommand({}))).SecretList!.map((s) => s.Name!);
    expect(list.filter((n) => n.startsWith('Tomlinson-dev-State-'))).toHaveLength(2);
    // The DKIM secret has the name the outbound worker and the admin CLI look up.
    expect(list).toContain('tomlinson/dev/dkim/example.com');
    const dkim = (await sm.send(new GetSecretValueCommand({ SecretId: 'tomlinson/dev/dkim/example.com' }))).SecretString!;
    expect(JSON.parse(dkim)).toMatchObject({ selector: 'tomlinson', privateKey: '' });
    const tls = (await sm.send(new GetSecretValueCommand({ SecretId: outputs.TlsSecretArn! }))).SecretString!;
    expect(JSON.parse(tls)).toMatchObject({ cert: '', key: '' });
  });

  it('creates both functions with the generated names and their SQS event source mappings', async () => {
    const lambda = new LambdaClient({ endpoint, region: REGION, credentials: creds });
    const sqs = new SQSClient({ endpoint, region: REGION, credentials: creds });
    const arnOf = async (url: string) => {
      const local = (await sqs.send(new GetQueueUrlCommand({ QueueName: url.split('/').at(-1)! }))).QueueUrl!;
      return (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: local, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
    };
    const mappings = (await lambda.send(new ListEventSourceMappingsCommand({}))).EventSourceMappings!;
    expect(mappings).toHaveLength(2);
    for (const [queueUrl, fnPrefix] of [
      [outputs.InboundQueueUrl!, 'Tomlinson-dev-Processing-InboundFunction'],
      [outputs.OutboundQueueUrl!, 'Tomlinson-dev-Processing-OutboundFunction'],
    ] as const) {
      const m = mappings.find((x) => x.FunctionArn?.includes(fnPrefix))!;
      expect(m, fnPrefix).toBeDefined();
      expect(m.EventSourceArn).toBe(await arnOf(queueUrl));
      expect(m.FunctionResponseTypes).toEqual(['ReportBatchItemFailures']);
      const fn = await lambda.send(new GetFunctionConfigurationCommand({ FunctionName: m.FunctionArn! }));
      expect(fn.Runtime).toBe('nodejs22.x');
      expect(fn.Handler).toBe('index.handler');
      const vars = fn.Environment!.Variables!;
      expect(vars.TOMLINSON_STORAGE).toBe('aws');
      expect(vars.TOMLINSON_TABLE).toBe(outputs.TableName);
      expect(vars.TOMLINSON_MAIL_BUCKET).toBe(outputs.MailBucketName);
      expect(vars.TOMLINSON_INBOUND_QUEUE_URL).toBe(outputs.InboundQueueUrl);
      expect(vars.TOMLINSON_OUTBOUND_QUEUE_URL).toBe(outputs.OutboundQueueUrl);
    }
  });
});

describe('listener tasks against the deployed state stack', () => {
  /** Each listener task's environment, from the synthesized listeners stack, by `serve` command. */
  function taskEnvironments(): Map<string, { Name: string; Value: unknown }[]> {
    const defs = Template.fromStack(testApp({}, { monitoring: false }).stacks.listeners!).findResources('AWS::ECS::TaskDefinition');
    const out = new Map<string, { Name: string; Value: unknown }[]>();
    for (const d of Object.values(defs) as {
      Properties: { ContainerDefinitions: { Command: string[]; Environment: { Name: string; Value: unknown }[] }[] };
    }[]) {
      const c = d.Properties.ContainerDefinitions[0]!;
      out.set(c.Command.join(' '), c.Environment);
    }
    return out;
  }

  /**
   * The environment with every Fn::ImportValue replaced by the deployed export's value. A value
   * joined from an attribute of the listeners stack itself (the proxy's internal load balancer
   * name in the web task's image proxy URL; that stack is not deployed on moto) gets a stand-in
   * host name, so the configuration it makes can still be checked.
   */
  function resolve(env: { Name: string; Value: unknown }[], exports: Map<string, string>): Record<string, string> {
    return Object.fromEntries(
      env.map(({ Name, Value }) => {
        if (typeof Value === 'string') return [Name, Value];
        const join = (Value as { 'Fn::Join'?: [string, unknown[]] })['Fn::Join'];
        if (join) {
          const parts = join[1].map((p) => {
            if (typeof p === 'string') return p;
            const att = (p as { 'Fn::GetAtt'?: [string, string] })['Fn::GetAtt'];
            expect(att, `${Name}: ${JSON.stringify(p)}`).toBeDefined();
            return `${att![0].toLowerCase()}-${att![1].toLowerCase()}.listeners.test`;
          });
          return [Name, parts.join(join[0])];
        }
        const name = (Value as { 'Fn::ImportValue'?: unknown })['Fn::ImportValue'];
        expect(typeof name, `${Name}: ${JSON.stringify(Value)}`).toBe('string');
        const v = exports.get(name as string);
        expect(v, `${Name}: export ${String(name)} of the deployed state stack`).toBeDefined();
        return [Name, v!];
      }),
    );
  }

  it('resolves every listener task environment and passes the mailbox task (POP3 and IMAP) health probe', { timeout: 120_000 }, async () => {
    const cfn = new CloudFormationClient({ endpoint, region: REGION, credentials: creds });
    const exports = new Map(((await cfn.send(new ListExportsCommand({}))).Exports ?? []).map((e) => [e.Name!, e.Value!]));
    const tasks = taskEnvironments();
    expect([...tasks.keys()].sort()).toEqual(['serve pop3,imap', 'serve proxy', 'serve smtp', 'serve web']);
    const resolved = new Map([...tasks].map(([cmd, env]) => [cmd, resolve(env, exports)]));
    for (const [cmd, env] of resolved) expect(() => loadConfig(env), cmd).not.toThrow();

    const mailbox = resolved.get('serve pop3,imap')!;
    const config = loadConfig({ ...mailbox, AWS_REGION: REGION, AWS_S3_FORCE_PATH_STYLE: '1' });
    expect(config.imap).toMatchObject({ enabled: true, port: 2143, tlsPort: 2993 });
    expect(config.pop3).toMatchObject({ enabled: true, port: 2110, tlsPort: 2995 });
    expect(config.storage.aws.mailBucket).toBe(outputs.MailBucketName);
    const web = loadConfig(resolved.get('serve web')!);
    expect(web.web).toMatchObject({ enabled: true, port: 2443 });
    expect(web.storage.aws.mailBucket).toBe(outputs.MailBucketName);
    // The SDK takes its endpoint and credentials from the environment, as in the task.
    const aws = { AWS_ENDPOINT_URL: endpoint, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, AWS_REGION: REGION };
    const saved = Object.fromEntries(Object.keys(aws).map((k) => [k, process.env[k]]));
    Object.assign(process.env, aws);
    try {
      const storage = await openAwsStorage(config, silentLogger);
      try {
        expect(await storage.check()).toEqual({ mail: true, tables: true });
      } finally {
        await storage.close();
      }
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
