/**
 * Fine-grained assertions on the synthesized templates (STYLE.md example 14): resources and their
 * safety settings, listener ports and switches, grants, the environment passed to the code, and
 * the pinned logical IDs of every stateful resource.
 */
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SETTINGS } from '../../core/config.js';
import { LISTENERS, StageConfigError, stageConfig, type ListenerName } from '../../infra/config.js';
import { dnsRecords } from '../../infra/stacks/dns.js';
import { PINNED_IDS, dkimSecretId } from '../../infra/stacks/state.js';
import { OUTBOUND_AGE_METRIC } from '../../core/mail/outbound-age.js';
import { cleanOutdirs, nagFindings, testApp } from './support.js';

type Res = { Type: string; Properties?: Record<string, unknown>; DeletionPolicy?: string; UpdateReplacePolicy?: string };

function resources(t: Template, type: string): Record<string, Res> {
  return t.findResources(type) as Record<string, Res>;
}

/** Every IAM statement of the policies attached to roles whose logical ID starts with `prefix`. */
function statementsOf(t: Template, rolePrefix: string): { Action: string | string[]; Resource: unknown }[] {
  const out: { Action: string | string[]; Resource: unknown }[] = [];
  for (const p of Object.values(resources(t, 'AWS::IAM::Policy'))) {
    const roles = JSON.stringify(p.Properties!.Roles);
    if (!roles.includes(`"${rolePrefix}`)) continue;
    out.push(...(p.Properties!.PolicyDocument as { Statement: { Action: string | string[]; Resource: unknown }[] }).Statement);
  }
  return out;
}

/** The container environment of the task running `command` (e.g. 'serve smtp'); tokens stay objects. */
function taskEnv(t: Template, command: string): Record<string, unknown> {
  const defs = Object.values(resources(t, 'AWS::ECS::TaskDefinition'));
  const c = defs
    .map((d) => (d.Properties!.ContainerDefinitions as { Command: string[]; Environment: { Name: string; Value: unknown }[] }[])[0]!)
    .find((x) => x.Command.join(' ') === command);
  expect(c, command).toBeDefined();
  return Object.fromEntries(c!.Environment.map((e) => [e.Name, e.Value]));
}

/** The setting names a task may be given: core/config.ts SETTINGS. */
const KNOWN_SETTINGS = new Set(SETTINGS.map((s) => s.env));

/** The mailbox service's task environment (POP3 and IMAP by default). */
const mailboxEnv = (t: Template, command = 'serve pop3,imap') => taskEnv(t, command);

function actions(stmts: { Action: string | string[] }[]): string[] {
  return stmts.flatMap((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]));
}

/** The default dev stage, synthesized once and shared by the tests that do not change it. */
let main: ReturnType<typeof testApp>;
beforeAll(() => {
  main = testApp({}, { nag: true });
  // Synthesizing the whole app (and running cdk-nag over it) is the slow part; the templates
  // below come from this one assembly. Generous bound: CI shares two cores between test files.
  main.app.synth();
}, 150_000);
afterAll(cleanOutdirs);

describe('state stack', () => {
  let t: Template;
  beforeAll(() => {
    t = Template.fromStack(main.stacks.state);
  });

  it('pins the logical ID of every stateful resource and retains it on delete and replacement', () => {
    const json = t.toJSON() as { Resources: Record<string, Res> };
    const pinned = [...Object.values(PINNED_IDS), dkimSecretId('example.com')];
    expect(dkimSecretId('example.com')).toBe('DkimSecretExampleCom');
    for (const id of pinned) {
      const r = json.Resources[id];
      expect(r, `resource ${id}`).toBeDefined();
      expect(r!.DeletionPolicy, id).toBe('Retain');
      expect(r!.UpdateReplacePolicy, id).toBe('Retain');
    }
    expect(json.Resources[PINNED_IDS.mailBucket]!.Type).toBe('AWS::S3::Bucket');
    expect(json.Resources[PINNED_IDS.table]!.Type).toBe('AWS::DynamoDB::Table');
    expect(json.Resources[PINNED_IDS.inboundQueue]!.Type).toBe('AWS::SQS::Queue');
    // Every bucket, queue, table, key and secret in the stack is one of the pinned ones.
    for (const type of ['AWS::S3::Bucket', 'AWS::SQS::Queue', 'AWS::DynamoDB::Table', 'AWS::KMS::Key', 'AWS::SecretsManager::Secret']) {
      for (const id of Object.keys(resources(t, type))) expect(pinned, `${type} ${id}`).toContain(id);
    }
  });

  it('encrypts the mail bucket with the stack key, versions it and aborts incomplete uploads', () => {
    t.hasResource('AWS::S3::Bucket', {
      Properties: Match.objectLike({
        BucketEncryption: {
          ServerSideEncryptionConfiguration: [
            Match.objectLike({ ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: { 'Fn::GetAtt': [PINNED_IDS.mailKey, 'Arn'] } } }),
          ],
        },
        VersioningConfiguration: { Status: 'Enabled' },
        PublicAccessBlockConfiguration: Match.objectLike({ BlockPublicAcls: true, RestrictPublicBuckets: true }),
        LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } })]) },
      }),
    });
    t.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
  });

  it('expires proxy cache objects by lifecycle', () => {
    const cache = resources(t, 'AWS::S3::Bucket')[PINNED_IDS.cacheBucket]!;
    const rules = (cache.Properties!.LifecycleConfiguration as { Rules: { ExpirationInDays?: number }[] }).Rules;
    expect(rules.some((r) => r.ExpirationInDays === 30)).toBe(true);
  });

  it('has one on-demand table keyed pk/sk with TTL on ttl and point-in-time recovery', () => {
    t.resourceCountIs('AWS::DynamoDB::Table', 1);
    t.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
    });
  });

  it('gives the inbound and outbound queues dead-letter queues and a visibility of 6x the Lambda timeout', () => {
    const qs = resources(t, 'AWS::SQS::Queue');
    const redrive = (id: string) => qs[id]!.Properties!.RedrivePolicy as { deadLetterTargetArn: unknown; maxReceiveCount: number };
    expect(redrive(PINNED_IDS.inboundQueue)).toEqual({ deadLetterTargetArn: { 'Fn::GetAtt': [PINNED_IDS.inboundDlq, 'Arn'] }, maxReceiveCount: 5 });
    expect(redrive(PINNED_IDS.outboundQueue)).toEqual({ deadLetterTargetArn: { 'Fn::GetAtt': [PINNED_IDS.outboundDlq, 'Arn'] }, maxReceiveCount: 300 });
    expect(qs[PINNED_IDS.inboundDlq]!.Properties!.RedrivePolicy).toBeUndefined();
    expect(qs[PINNED_IDS.inboundQueue]!.Properties!.VisibilityTimeout).toBe(6 * 120);
    expect(qs[PINNED_IDS.outboundQueue]!.Properties!.VisibilityTimeout).toBe(6 * 900);
    for (const q of Object.values(qs)) expect(q.Properties!.KmsMasterKeyId).toEqual({ 'Fn::GetAtt': [PINNED_IDS.mailKey, 'Arn'] });
  });

  it('keeps dead letters longer than their source queues keep messages (a dead letter keeps its first enqueue time)', () => {
    const qs = resources(t, 'AWS::SQS::Queue');
    const days = (id: string) => Number(qs[id]!.Properties!.MessageRetentionPeriod) / 86400;
    expect(days(PINNED_IDS.inboundDlq)).toBe(14);
    expect(days(PINNED_IDS.outboundDlq)).toBe(14);
    expect(days(PINNED_IDS.inboundQueue)).toBe(4);
    // Outbound mail is bounced after 5 days (TOMLINSON_OUTBOUND_MAX_AGE default): 7 covers it.
    const maxAgeDays = Number(SETTINGS.find((s) => s.env === 'TOMLINSON_OUTBOUND_MAX_AGE')!.default) / 86400;
    expect(days(PINNED_IDS.outboundQueue)).toBe(7);
    expect(days(PINNED_IDS.outboundQueue)).toBeGreaterThan(maxAgeDays);
    // What is left in a DLQ after the longest life in its source: a week at least.
    expect(days(PINNED_IDS.outboundDlq) - days(PINNED_IDS.outboundQueue)).toBeGreaterThanOrEqual(7);
    expect(days(PINNED_IDS.inboundDlq) - days(PINNED_IDS.inboundQueue)).toBeGreaterThanOrEqual(7);
  });

  it('creates the secrets with generated placeholders, never a value from the template', () => {
    const secrets = resources(t, 'AWS::SecretsManager::Secret');
    expect(Object.keys(secrets).sort()).toEqual([dkimSecretId('example.com'), PINNED_IDS.smarthostSecret, PINNED_IDS.tlsSecret].sort());
    // DKIM secrets carry the name the outbound worker and the admin CLI look up.
    expect(secrets[dkimSecretId('example.com')]!.Properties!.Name).toBe('tomlinson/dev/dkim/example.com');
    for (const s of Object.values(secrets)) {
      expect(s.Properties!.SecretString).toBeUndefined();
      expect(s.Properties!.GenerateSecretString).toBeDefined();
    }
    expect(JSON.stringify(t.toJSON())).not.toMatch(/BEGIN [A-Z ]*PRIVATE KEY/);
  });
});

describe('processing stack', () => {
  let t: Template;
  beforeAll(() => {
    t = Template.fromStack(main.stacks.processing);
  });

  it('gives the outbound worker the Lambda maximum for slow SMTP transactions', () => {
    const timeouts = Object.values(resources(t, 'AWS::Lambda::Function'))
      .map((f) => f.Properties!.Timeout)
      .sort((a, b) => Number(a) - Number(b));
    expect(timeouts).toEqual([120, 900, 900]);
  });

  it('runs both workers and the sweep on nodejs22.x arm64, the workers with SQS partial batch responses', () => {
    t.resourceCountIs('AWS::Lambda::Function', 3);
    t.allResourcesProperties('AWS::Lambda::Function', { Runtime: 'nodejs22.x', Architectures: ['arm64'], Handler: 'index.handler' });
    t.resourceCountIs('AWS::Lambda::EventSourceMapping', 2);
    t.allResourcesProperties('AWS::Lambda::EventSourceMapping', {
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      ScalingConfig: { MaximumConcurrency: 10 },
    });
    const sources = Object.values(resources(t, 'AWS::Lambda::EventSourceMapping')).map((m) => JSON.stringify(m.Properties!.EventSourceArn));
    expect(sources.some((s) => s.includes('InboundQueueArn'))).toBe(true);
    expect(sources.some((s) => s.includes('OutboundQueueArn'))).toBe(true);
  });

  it('passes the generated resource names through the SETTINGS variables, never a fixed name', () => {
    const known = new Set([...SETTINGS.map((s) => s.env), 'NODE_OPTIONS']);
    for (const fn of Object.values(resources(t, 'AWS::Lambda::Function'))) {
      const vars = (fn.Properties!.Environment as { Variables: Record<string, unknown> }).Variables;
      for (const name of Object.keys(vars)) expect(known, `unknown variable ${name}`).toContain(name);
      expect(vars.TOMLINSON_STORAGE).toBe('aws');
      for (const name of [
        'TOMLINSON_TABLE',
        'TOMLINSON_MAIL_BUCKET',
        'TOMLINSON_CACHE_BUCKET',
        'TOMLINSON_INBOUND_QUEUE_URL',
        'TOMLINSON_OUTBOUND_QUEUE_URL',
        'TOMLINSON_INBOUND_DLQ_URL',
        'TOMLINSON_OUTBOUND_DLQ_URL',
      ]) {
        expect(vars[name], name).toHaveProperty(['Fn::ImportValue']);
      }
    }
  });

  it('grants least privilege: inbound reads the mail bucket and sends to outbound, never touches the cache bucket', () => {
    const inbound = statementsOf(t, 'InboundFunctionServiceRole');
    const acts = actions(inbound);
    expect(acts).toEqual(
      expect.arrayContaining([
        'sqs:SendMessage',
        'sqs:ReceiveMessage',
        'sqs:DeleteMessage',
        'sqs:ChangeMessageVisibility',
        's3:GetObject*',
        's3:PutObject',
        'dynamodb:PutItem',
        'kms:Decrypt',
      ]),
    );
    expect(acts).not.toContain('secretsmanager:GetSecretValue');
    expect(acts.some((a) => a === '*' || a.endsWith(':*'))).toBe(false);
    const text = JSON.stringify(inbound);
    expect(text).toContain('Tomlinson-dev-State-MailBucketArn');
    expect(text).not.toContain('CacheBucket');
    const send = inbound.filter((s) => actions([s]).includes('sqs:SendMessage'));
    expect(JSON.stringify(send)).toContain('OutboundQueueArn');

    const outbound = statementsOf(t, 'OutboundFunctionServiceRole');
    const dkim = outbound.filter((s) => actions([s]).includes('secretsmanager:GetSecretValue'));
    expect(JSON.stringify(dkim)).toContain(':secret:tomlinson/dev/dkim/*');
    // No smarthost configured in dev: its secret is not readable.
    expect(JSON.stringify(outbound)).not.toContain('SmarthostSecret');
  });

  it('has no outbound Lambda when delivery is direct (Lambda may not use port 25)', () => {
    const direct = Template.fromStack(testApp({ outbound: 'direct' }).stacks.processing);
    direct.resourceCountIs('AWS::Lambda::Function', 2);
  });

  it('runs the orphaned-blob sweep on a schedule with only list, read and delete on mail and queue depths', () => {
    const rules = Object.values(resources(t, 'AWS::Events::Rule'));
    expect(rules.map((r) => r.Properties!.ScheduleExpression)).toEqual(['rate(1 day)']);
    const sweep = statementsOf(t, 'SweepFunctionServiceRole');
    const acts = actions(sweep);
    expect(acts).toEqual(
      expect.arrayContaining([
        's3:GetObject*',
        's3:List*',
        's3:DeleteObject*',
        'dynamodb:Query',
        'dynamodb:PutItem',
        'dynamodb:DeleteItem',
        'sqs:GetQueueAttributes',
      ]),
    );
    expect(acts).not.toContain('s3:PutObject');
    expect(acts).not.toContain('sqs:SendMessage');
    expect(acts).not.toContain('sqs:DeleteMessage');
    const text = JSON.stringify(sweep);
    for (const q of ['InboundQueueArn', 'OutboundQueueArn', 'InboundDeadLetterQueueArn', 'OutboundDeadLetterQueueArn']) expect(text).toContain(q);
    expect(text).not.toContain('CacheBucket');
    const off = Template.fromStack(testApp({ orphanSweepHours: 0 }).stacks.processing);
    off.resourceCountIs('AWS::Events::Rule', 0);
    off.resourceCountIs('AWS::Lambda::Function', 2);
  });
});

describe('listeners stack', () => {
  let t: Template;
  beforeAll(() => {
    t = Template.fromStack(main.stacks.listeners!);
  });

  it('has a TCP listener for each of 25, 465, 587, 110, 995, 143, 993, 443 and 3128', () => {
    const ports = Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::Listener')).map((l) => [l.Properties!.Port, l.Properties!.Protocol]);
    expect(ports.sort((a, b) => Number(a[0]) - Number(b[0]))).toEqual([25, 110, 143, 443, 465, 587, 993, 995, 3128].map((p) => [p, 'TCP']));
  });

  it("keeps POP3, IMAP and JMAP push flows open past their servers' own inactivity timers, and leaves the rest at the AWS default", () => {
    const idle = Object.fromEntries(
      Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::Listener')).map((l) => {
        const attrs = (l.Properties!.ListenerAttributes as { Key: string; Value: string }[] | undefined) ?? [];
        return [l.Properties!.Port, attrs.find((a) => a.Key === 'tcp.idle_timeout.seconds')?.Value];
      }),
    );
    expect(idle).toEqual({ 25: undefined, 465: undefined, 587: undefined, 110: '660', 995: '660', 143: '1860', 993: '1860', 443: '1860', 3128: undefined });
    const setting = (env: string) => Number(SETTINGS.find((x) => x.env === env)!.default);
    // The server says goodbye first: RFC 1939 §3 (10 minutes) and RFC 9051 §5.4 (30 minutes).
    expect(Number(idle[110])).toBeGreaterThan(setting('TOMLINSON_POP3_IDLE_TIMEOUT'));
    expect(Number(idle[143])).toBeGreaterThan(setting('TOMLINSON_IMAP_IDLE_TIMEOUT'));
    // SMTP's own timer ends a quiet session inside the NLB's default 350 s.
    expect(setting('TOMLINSON_SMTP_IDLE_TIMEOUT')).toBeLessThan(350);
  });

  it('preserves the client IP, drains on deploy and health-checks the /health endpoint', () => {
    const tgs = Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::TargetGroup'));
    expect(tgs).toHaveLength(9);
    for (const tg of tgs) {
      const p = tg.Properties!;
      expect(p).toMatchObject({ Protocol: 'TCP', TargetType: 'ip', HealthCheckProtocol: 'HTTP', HealthCheckPort: '8025', HealthCheckPath: '/health' });
      const attrs = Object.fromEntries((p.TargetGroupAttributes as { Key: string; Value: string }[]).map((a) => [a.Key, a.Value]));
      expect(attrs['preserve_client_ip.enabled']).toBe('true');
      expect(attrs['deregistration_delay.timeout_seconds']).toBe('120');
    }
    const targetPorts = tgs.map((tg) => tg.Properties!.Port).sort();
    expect(targetPorts).toEqual(
      Object.values(LISTENERS)
        .map((l) => l.containerPort)
        .sort(),
    );
  });

  it('puts one retained Elastic IP per AZ on the internet-facing NLB', () => {
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', {
      Type: 'network',
      Scheme: 'internet-facing',
      SubnetMappings: [
        { AllocationId: { 'Fn::GetAtt': ['NlbAddress0', 'AllocationId'] }, SubnetId: Match.anyValue() },
        { AllocationId: { 'Fn::GetAtt': ['NlbAddress1', 'AllocationId'] }, SubnetId: Match.anyValue() },
      ],
    });
    const eips = resources(t, 'AWS::EC2::EIP');
    for (const id of ['NlbAddress0', 'NlbAddress1']) expect(eips[id]!.DeletionPolicy).toBe('Retain');
  });

  it('runs non-root arm64 tasks with a read-only root, a health check and one service per group', () => {
    t.resourceCountIs('AWS::ECS::Service', 4);
    const defs = Object.values(resources(t, 'AWS::ECS::TaskDefinition'));
    const commands = defs.map((d) => (d.Properties!.ContainerDefinitions as { Command: string[] }[])[0]!.Command.join(' ')).sort();
    // POP3 and IMAP share the mailbox service; JMAP has its own (infra/config.ts ListenerGroup says why).
    expect(commands).toEqual(['serve pop3,imap', 'serve proxy', 'serve smtp', 'serve web']);
    for (const d of defs) {
      expect(d.Properties!.RuntimePlatform).toEqual({ CpuArchitecture: 'ARM64', OperatingSystemFamily: 'LINUX' });
      const c = (d.Properties!.ContainerDefinitions as Record<string, unknown>[])[0]!;
      expect(c.User).toBe('1000:1000');
      expect(c.ReadonlyRootFilesystem).toBe(true);
      expect(JSON.stringify(c.HealthCheck)).toContain('/health');
      const env = Object.fromEntries((c.Environment as { Name: string; Value: unknown }[]).map((e) => [e.Name, e.Value]));
      expect(env.TOMLINSON_LISTEN_HOST).toBe('0.0.0.0');
      expect(env.TOMLINSON_HEALTH_PORT).toBe('8025');
      for (const name of Object.keys(env)) expect(KNOWN_SETTINGS.has(name), name).toBe(true);
    }
    t.allResourcesProperties('AWS::ECS::Service', {
      DeploymentConfiguration: Match.objectLike({ MinimumHealthyPercent: 100, DeploymentCircuitBreaker: { Enable: true, Rollback: true } }),
    });
  });

  it('reads the certificate from the TLS secret only once that is switched on', () => {
    const envOf = (tpl: Template, group: string) => {
      const d = Object.values(resources(tpl, 'AWS::ECS::TaskDefinition')).find((x) => JSON.stringify(x.Properties).includes(`"serve","${group}"`))!;
      return Object.fromEntries(
        (d.Properties!.ContainerDefinitions as { Environment: { Name: string; Value: unknown }[] }[])[0]!.Environment.map((e) => [e.Name, e.Value]),
      );
    };
    expect(envOf(t, 'smtp').TOMLINSON_TLS_SECRET_ID).toBeUndefined();
    const on = Template.fromStack(testApp({ tlsFromSecret: true }).stacks.listeners!);
    expect(envOf(on, 'smtp').TOMLINSON_TLS_SECRET_ID).toHaveProperty(['Fn::ImportValue']);
    expect(envOf(on, 'pop3,imap').TOMLINSON_TLS_SECRET_ID).toHaveProperty(['Fn::ImportValue']);
    expect(envOf(on, 'proxy').TOMLINSON_TLS_SECRET_ID).toBeUndefined();
  });

  it('scales each service on its own CPU and memory, never on the load balancer total', () => {
    const policies = Object.values(resources(t, 'AWS::ApplicationAutoScaling::ScalingPolicy'));
    const byMetric = (m: string) => policies.filter((p) => JSON.stringify(p.Properties).includes(m));
    expect(byMetric('ECSServiceAverageCPUUtilization')).toHaveLength(4);
    expect(byMetric('ECSServiceAverageMemoryUtilization')).toHaveLength(4);
    expect(policies.filter((p) => p.Properties!.PolicyType === 'StepScaling')).toHaveLength(0);
    // AWS/NetworkELB flow counts have no target group dimension: one total for every service.
    const alarms = Object.values(resources(t, 'AWS::CloudWatch::Alarm'));
    expect(alarms.filter((a) => JSON.stringify(a.Properties).includes('FlowCount'))).toHaveLength(0);
    // Each service's two policies point at its own scalable target, one target per service.
    const targets = Object.keys(resources(t, 'AWS::ApplicationAutoScaling::ScalableTarget'));
    expect(targets).toHaveLength(4);
    for (const target of targets) expect(policies.filter((p) => JSON.stringify(p.Properties!.ScalingTargetId).includes(target))).toHaveLength(2);
  });

  it('leaves the task count of autoscaled services to the scaler (no DesiredCount a deploy would reset)', () => {
    for (const [id, svc] of Object.entries(resources(t, 'AWS::ECS::Service'))) expect(svc.Properties!.DesiredCount, id).toBeUndefined();
    const prod = Template.fromStack(testApp({}, { stage: 'prod' }).stacks.listeners!);
    for (const svc of Object.values(resources(prod, 'AWS::ECS::Service'))) expect(svc.Properties!.DesiredCount).toBeUndefined();
    // The minimum lives on the scalable target, which raises a new service's count to it.
    const mins = Object.values(resources(prod, 'AWS::ApplicationAutoScaling::ScalableTarget')).map((x) => x.Properties!.MinCapacity);
    expect(mins).toEqual([2, 2, 2, 2]);
  });

  it('runs two proxy tasks at least and protects both load balancers from deletion outside dev', () => {
    const protection = (tpl: Template) =>
      Object.values(resources(tpl, 'AWS::ElasticLoadBalancingV2::LoadBalancer')).map((lb) => {
        const attrs = (lb.Properties!.LoadBalancerAttributes as { Key: string; Value: string }[] | undefined) ?? [];
        return attrs.find((a) => a.Key === 'deletion_protection.enabled')?.Value ?? 'false';
      });
    expect(protection(t)).toEqual(['false', 'false']);
    const prod = testApp({}, { stage: 'prod' });
    expect(prod.config.services.proxy.minTasks).toBeGreaterThanOrEqual(2);
    const p = Template.fromStack(prod.stacks.listeners!);
    expect(protection(p)).toEqual(['true', 'true']);
  });

  it('routes the tasks to S3 and DynamoDB through free gateway endpoints, not the NAT gateway', () => {
    const endpoints = Object.values(resources(t, 'AWS::EC2::VPCEndpoint')).map((e) => e.Properties!);
    expect(endpoints).toHaveLength(2);
    for (const e of endpoints) expect(e.VpcEndpointType).toBe('Gateway');
    const services = endpoints.map((e) => JSON.stringify(e.ServiceName));
    expect(services.some((x) => x.includes('.s3'))).toBe(true);
    expect(services.some((x) => x.includes('.dynamodb'))).toBe(true);
    // Every route table of the task subnets has both.
    const privateTables = Object.keys(resources(t, 'AWS::EC2::RouteTable')).filter((id) => id.includes('tasks'));
    expect(privateTables.length).toBe(2);
    for (const e of endpoints) for (const id of privateTables) expect(JSON.stringify(e.RouteTableIds)).toContain(id);
  });

  it('serves the proxy on an internal load balancer, and publicly only to listed client ranges', () => {
    const lbs = resources(t, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    const internal = Object.entries(lbs).filter(([, lb]) => lb.Properties!.Scheme === 'internal');
    expect(internal).toHaveLength(1);
    const listenersOf = (tpl: Template, lbId: string) =>
      Object.values(resources(tpl, 'AWS::ElasticLoadBalancingV2::Listener'))
        .filter((l) => JSON.stringify(l.Properties!.LoadBalancerArn).includes(lbId))
        .map((l) => l.Properties!.Port);
    const [internalId] = internal[0]!;
    const publicId = Object.keys(lbs).find((id) => id !== internalId)!;
    expect(listenersOf(t, internalId)).toEqual([3128]);
    // By default nothing public listens on 3128.
    expect(listenersOf(t, publicId)).not.toContain(3128);
    const proxyEnv = (tpl: Template) => {
      const d = Object.values(resources(tpl, 'AWS::ECS::TaskDefinition')).find((x) => JSON.stringify(x.Properties).includes('"serve","proxy"'))!;
      return Object.fromEntries(
        (d.Properties!.ContainerDefinitions as { Environment: { Name: string; Value: unknown }[] }[])[0]!.Environment.map((e) => [e.Name, e.Value]),
      );
    };
    expect(proxyEnv(t).TOMLINSON_PROXY_ALLOWED_CLIENTS).toBe('10.0.0.0/8');

    const open = Template.fromStack(testApp({ proxyPublicClients: ['203.0.113.0/24'] }).stacks.listeners!);
    const openLbs = resources(open, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    const openPublic = Object.keys(openLbs).find((id) => openLbs[id]!.Properties!.Scheme === 'internet-facing')!;
    expect(listenersOf(open, openPublic)).toContain(3128);
    const ingress = [
      ...Object.values(resources(open, 'AWS::EC2::SecurityGroup')).flatMap(
        (g) => (g.Properties!.SecurityGroupIngress as Record<string, unknown>[] | undefined) ?? [],
      ),
      ...Object.values(resources(open, 'AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties!),
    ];
    expect(
      ingress
        .filter((r) => r.FromPort === 3128 && 'CidrIp' in r)
        .map((r) => r.CidrIp)
        .sort(),
    ).toEqual(['10.0.0.0/8', '203.0.113.0/24']);
    // The proxy admits what its load balancers admit (client IPs are preserved).
    expect(proxyEnv(open).TOMLINSON_PROXY_ALLOWED_CLIENTS).toBe('10.0.0.0/8,203.0.113.0/24');
    expect(() => stageConfig('dev', { proxyPublicClients: ['0.0.0.0/0'] })).toThrow(/open to everyone/);
  });

  it('opens the mail ports to everyone but the proxy only to the configured client ranges', () => {
    const ingress = [
      ...Object.values(resources(t, 'AWS::EC2::SecurityGroup')).flatMap(
        (g) => (g.Properties!.SecurityGroupIngress as Record<string, unknown>[] | undefined) ?? [],
      ),
      ...Object.values(resources(t, 'AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties!),
    ];
    const open = (port: number) => ingress.filter((r) => r.FromPort === port && r.CidrIp === '0.0.0.0/0');
    for (const port of [25, 465, 587, 110, 995, 143, 993, 443]) expect(open(port), `port ${port}`).toHaveLength(1);
    expect(open(3128)).toHaveLength(0);
    expect(ingress.filter((r) => r.FromPort === 3128 && r.CidrIp === '10.0.0.0/8')).toHaveLength(1);
    // Task ports admit the NLB's security group only.
    for (const port of [2525, 2110, 2143, 2993, 2443, 3128, 8025]) {
      for (const r of ingress.filter((x) => x.FromPort === port && x.ToPort === port && !('CidrIp' in x))) expect(r.SourceSecurityGroupId).toBeDefined();
    }
    expect(ingress.filter((r) => r.FromPort !== undefined && Number(r.FromPort) >= 2000 && r.CidrIp === '0.0.0.0/0')).toHaveLength(0);
  });

  it('switches single listeners and whole groups off', () => {
    const listeners = { ...stageConfig('dev').listeners, pop3s: false, proxy: false } as Record<ListenerName, boolean>;
    const off = Template.fromStack(testApp({ listeners }).stacks.listeners!);
    const ports = Object.values(resources(off, 'AWS::ElasticLoadBalancingV2::Listener'))
      .map((l) => l.Properties!.Port)
      .sort((a, b) => Number(a) - Number(b));
    expect(ports).toEqual([25, 110, 143, 443, 465, 587, 993]);
    off.resourceCountIs('AWS::ECS::Service', 3);
    const env = mailboxEnv(off);
    expect(env.TOMLINSON_POP3S_PORT).toBe('0');
    expect(env.TOMLINSON_POP3_PORT).toBe('2110');
    expect(env.TOMLINSON_POP3_ENABLED).toBe('true');
    expect(env.TOMLINSON_IMAP_ENABLED).toBe('true');
    expect(env.TOMLINSON_SMTP_ENABLED).toBe('false');
    expect(env.TOMLINSON_PROXY_ENABLED).toBe('false');
  });

  it('switches IMAP and POP3 off independently inside the mailbox service', () => {
    const base = stageConfig('dev').listeners;
    const noImap = Template.fromStack(testApp({ listeners: { ...base, imap: false, imaps: false } }).stacks.listeners!);
    const ports = (tpl: Template) =>
      Object.values(resources(tpl, 'AWS::ElasticLoadBalancingV2::Listener'))
        .map((l) => l.Properties!.Port)
        .sort((a, b) => Number(a) - Number(b));
    expect(ports(noImap)).toEqual([25, 110, 443, 465, 587, 995, 3128]);
    expect(mailboxEnv(noImap, 'serve pop3')).toMatchObject({ TOMLINSON_POP3_ENABLED: 'true', TOMLINSON_IMAP_ENABLED: 'false' });

    const imapOnly = Template.fromStack(testApp({ listeners: { ...base, pop3: false, pop3s: false, imap: false } }).stacks.listeners!);
    expect(ports(imapOnly)).toEqual([25, 443, 465, 587, 993, 3128]);
    expect(mailboxEnv(imapOnly, 'serve imap')).toMatchObject({
      TOMLINSON_POP3_ENABLED: 'false',
      TOMLINSON_IMAP_ENABLED: 'true',
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '2993',
    });

    const none = Template.fromStack(testApp({ listeners: { ...base, pop3: false, pop3s: false, imap: false, imaps: false } }).stacks.listeners!);
    none.resourceCountIs('AWS::ECS::Service', 3);
    expect(JSON.stringify(resources(none, 'AWS::ECS::TaskDefinition'))).not.toMatch(/pop3|imap/);
  });

  it('gives the mailbox tasks both IMAP ports, the per-task connection cap and every other switch off', () => {
    const env = mailboxEnv(t);
    expect(env).toMatchObject({
      TOMLINSON_IMAP_PORT: String(LISTENERS.imap.containerPort),
      TOMLINSON_IMAPS_PORT: String(LISTENERS.imaps.containerPort),
      TOMLINSON_IMAP_ENABLED: 'true',
      TOMLINSON_IMAP_MAX_CONNECTIONS: String(main.config.imapConnectionsPerTask),
      TOMLINSON_SMTP_ENABLED: 'false',
      TOMLINSON_PROXY_ENABLED: 'false',
      TOMLINSON_WORKERS_ENABLED: 'false',
    });
    expect(LISTENERS.imap.containerPort).toBe(2143);
    expect(LISTENERS.imaps.containerPort).toBe(2993);
    // The IMAP default is on in core/config.ts: the other services must switch it off explicitly.
    for (const cmd of ['serve smtp', 'serve proxy', 'serve web']) expect(taskEnv(t, cmd).TOMLINSON_IMAP_ENABLED, cmd).toBe('false');
    expect(() => stageConfig('dev', { imapConnectionsPerTask: 0 })).toThrow(/imapConnectionsPerTask/);
  });

  it('runs the queue workers on Fargate behind NAT for direct delivery', () => {
    const direct = Template.fromStack(testApp({ outbound: 'direct' }).stacks.listeners!);
    direct.resourceCountIs('AWS::ECS::Service', 5);
    const workers = Object.values(resources(direct, 'AWS::ECS::TaskDefinition')).find((d) => JSON.stringify(d.Properties).includes('"serve","workers"'));
    expect(workers).toBeDefined();
    expect(() => stageConfig('dev', { outbound: 'direct', natGateways: 0 })).toThrow(StageConfigError);
  });
});

describe('dns and monitoring stacks', () => {
  it('writes A, MX, SPF and DMARC records into a given hosted zone', () => {
    const t = Template.fromStack(testApp({ hostedZone: { zoneId: 'Z123EXAMPLE', zoneName: 'example.com' } }).stacks.dns!);
    t.hasResourceProperties('AWS::Route53::RecordSet', {
      Type: 'MX',
      Name: 'example.com.',
      ResourceRecords: ['10 mail.example.com'],
      HostedZoneId: 'Z123EXAMPLE',
    });
    t.hasResourceProperties('AWS::Route53::RecordSet', { Type: 'A', Name: 'mail.example.com.' });
    t.hasResourceProperties('AWS::Route53::RecordSet', { Type: 'TXT', Name: 'example.com.', ResourceRecords: ['"v=spf1 mx -all"'] });
    t.hasResourceProperties('AWS::Route53::RecordSet', { Type: 'TXT', Name: '_dmarc.example.com.' });
  });

  it('lists the records as an output when there is no hosted zone', () => {
    expect(main.stacks.dns).toBeUndefined();
    const t = Template.fromStack(main.stacks.listeners!);
    t.resourceCountIs('AWS::Route53::RecordSet', 0);
    expect(JSON.stringify(t.toJSON().Outputs)).toContain('MX 10 mail.example.com');
    const records = dnsRecords(stageConfig('dev', { outbound: 'direct' }), ['192.0.2.1'], ['198.51.100.7']);
    expect(records.find((r) => r.type === 'TXT' && r.name === 'example.com')!.value).toBe('v=spf1 mx ip4:198.51.100.7 -all');
  });

  it('alarms on dead letters, queue age, Lambda errors, unhealthy tasks, delivery failures, hit ratio and bucket size', () => {
    const t = Template.fromStack(main.stacks.monitoring!);
    const alarms = Object.values(resources(t, 'AWS::CloudWatch::Alarm')).map((a) => a.Properties!);
    const byMetric = (name: string) => alarms.filter((a) => a.MetricName === name || JSON.stringify(a.Metrics ?? []).includes(`"MetricName":"${name}"`));
    expect(byMetric('ApproximateNumberOfMessagesVisible')).toHaveLength(2);
    // Inbound only: SQS leaves messages received three times or more out of this metric.
    expect(byMetric('ApproximateAgeOfOldestMessage')).toHaveLength(1);
    expect(byMetric('Errors')).toHaveLength(3);
    expect(byMetric('UnHealthyHostCount')).toHaveLength(9);
    expect(byMetric('HealthyHostCount')).toHaveLength(9);
    expect(byMetric('ActiveFlowCount')).toHaveLength(1);
    expect(byMetric('BucketSizeBytes')).toHaveLength(1);
    const math = JSON.stringify(alarms.filter((a) => a.Metrics));
    expect(math).toContain('delivery-bounced');
    // The delivery filter matches the outbound worker's per-recipient log line.
    const filters = Object.values(resources(t, 'AWS::Logs::MetricFilter')).map((f) => f.Properties!.FilterPattern as string);
    expect(filters).toContain('{ ($.rcpt = "*") && ($.state = "bounced") }');
    expect(math).toContain('cache-hit');
    for (const a of alarms) expect((a.AlarmActions as unknown[]).length).toBe(1);
    t.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
    t.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: Match.anyValue() });
  });
});

describe('alarms that matter when things are worst', () => {
  let alarms: Record<string, unknown>[];
  beforeAll(() => {
    alarms = Object.values(resources(Template.fromStack(main.stacks.monitoring!), 'AWS::CloudWatch::Alarm')).map((a) => a.Properties!);
  });

  it('fires when a target group has no healthy task at all, missing data included', () => {
    const healthy = alarms.filter((a) => a.MetricName === 'HealthyHostCount');
    // One per target group: 25, 465, 587, 110, 995, 143, 993, 443 and the proxy's internal 3128.
    expect(healthy).toHaveLength(9);
    const groups = new Set(
      healthy.map((a) => JSON.stringify((a.Dimensions as { Name: string; Value: unknown }[]).find((d) => d.Name === 'TargetGroup')!.Value)),
    );
    expect(groups.size).toBe(9);
    for (const a of healthy) {
      expect(a).toMatchObject({ Namespace: 'AWS/NetworkELB', ComparisonOperator: 'LessThanThreshold', Threshold: 1, TreatMissingData: 'breaching' });
      expect((a.Dimensions as { Name: string }[]).map((d) => d.Name).sort()).toEqual(['LoadBalancer', 'TargetGroup']);
    }
  });

  it('warns when the public listeners approach the IMAP connections the mailbox service admits at its largest', () => {
    const conn = alarms.filter((a) => a.MetricName === 'ActiveFlowCount');
    expect(conn).toHaveLength(1);
    const { maxTasks } = main.config.services.mailbox;
    expect(conn[0]).toMatchObject({
      Namespace: 'AWS/NetworkELB',
      Statistic: 'Maximum',
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      Threshold: Math.floor(0.8 * maxTasks * main.config.imapConnectionsPerTask),
    });
    expect(conn[0]!.Threshold).toBe(12_800);
    // Without IMAP there are no long-lived connections to size for.
    const base = main.config.listeners;
    const noImap = testApp({ listeners: { ...base, imap: false, imaps: false } }).stacks.monitoring!;
    expect(
      Object.values(resources(Template.fromStack(noImap), 'AWS::CloudWatch::Alarm')).filter((a) => a.Properties!.MetricName === 'ActiveFlowCount'),
    ).toEqual([]);
  });

  it('watches the oldest undelivered outbound message from the metric the worker publishes', () => {
    const age = alarms.find((a) => a.MetricName === OUTBOUND_AGE_METRIC.name);
    expect(age).toBeDefined();
    expect(age).toMatchObject({
      Namespace: OUTBOUND_AGE_METRIC.namespace,
      Statistic: 'Maximum',
      Threshold: 6 * 3600,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
    });
    const dims = age!.Dimensions as { Name: string; Value: unknown }[];
    expect(dims.map((d) => d.Name)).toEqual([OUTBOUND_AGE_METRIC.dimension]);
    // The dimension is the table name the outbound worker reports with (its TOMLINSON_TABLE).
    const outboundFn = Object.values(resources(Template.fromStack(main.stacks.processing), 'AWS::Lambda::Function')).find((f) =>
      JSON.stringify(f.Properties!.Role).includes('OutboundFunction'),
    )!;
    const fnTable = (outboundFn.Properties!.Environment as { Variables: Record<string, unknown> }).Variables.TOMLINSON_TABLE;
    expect(dims[0]!.Value).toEqual(fnTable);
    expect(JSON.stringify(dims[0]!.Value)).toContain('Table');
    expect(alarms.filter((a) => a.MetricName === 'ApproximateAgeOfOldestMessage' && JSON.stringify(a.Dimensions).includes('OutboundQueue'))).toHaveLength(0);
  });
});

describe('cdk-nag', () => {
  it('finds nothing unacknowledged in the default stage', () => {
    expect(nagFindings(main.app)).toEqual([]);
  });
});

describe('stage config', () => {
  it('refuses an open proxy and unknown stages', () => {
    expect(() => stageConfig('dev', { proxyAllowedClients: ['0.0.0.0/0'] })).toThrow(/open to everyone/);
    expect(() => stageConfig('nope')).toThrow(/unknown stage/);
    expect(() => stageConfig('dev', { lambda: { memoryMiB: 512, timeoutSeconds: 60, outboundTimeoutSeconds: 900, maxConcurrency: 1 } })).toThrow(
      /maxConcurrency/,
    );
  });
});
