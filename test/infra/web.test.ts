/**
 * The web listener's AWS form (issue 22): a `serve web` Fargate service behind the public NLB on
 * 443 (TCP pass-through, TLS at the task), health-checked on /health like the other services,
 * autoscaled on its own CPU and memory, alarmed on unhealthy and missing tasks, with the mailbox
 * service's environment plus its own switch, port and connection cap; and the DNS records that
 * let a JMAP client find it (RFC 8620 §2.2). IAM scope is in access.test.ts, cdk-nag over the
 * whole default stage in stacks.test.ts and nag.test.ts.
 */
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HEALTH_PORT, LISTENERS, StageConfigError, stageConfig } from '../../infra/config.js';
import { dnsRecords, jmapSrv } from '../../infra/stacks/dns.js';
import { cleanOutdirs, nagFindings, testApp } from './support.js';

type Res = { Type: string; Properties?: Record<string, unknown> };
type Env = Record<string, unknown>;

const resources = (t: Template, type: string) => t.findResources(type) as Record<string, Res>;

/** The container environment of the task running `command`. */
function taskEnv(t: Template, command: string): Env {
  const c = Object.values(resources(t, 'AWS::ECS::TaskDefinition'))
    .map((d) => (d.Properties!.ContainerDefinitions as { Command: string[]; Environment: { Name: string; Value: unknown }[] }[])[0]!)
    .find((x) => x.Command.join(' ') === command);
  expect(c, command).toBeDefined();
  return Object.fromEntries(c!.Environment.map((e) => [e.Name, e.Value]));
}

/** Listener ports of the template, in order. */
const ports = (t: Template) =>
  Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::Listener'))
    .map((l) => Number(l.Properties!.Port))
    .sort((a, b) => a - b);

let main: ReturnType<typeof testApp>;
let t: Template;
beforeAll(() => {
  main = testApp();
  t = Template.fromStack(main.stacks.listeners!);
}, 120_000);
afterAll(cleanOutdirs);

describe('web service', () => {
  it('listens on 443 of the internet-facing NLB as TCP, passing TLS through to the task on 2443', () => {
    expect(LISTENERS.web).toMatchObject({ publicPort: 443, containerPort: 2443, group: 'web', component: 'web', env: 'TOMLINSON_WEB_PORT' });
    const listeners = Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::Listener')).filter((l) => l.Properties!.Port === 443);
    expect(listeners).toHaveLength(1);
    const l = listeners[0]!.Properties!;
    // TCP, not TLS: the certificate lives in the task, as for POP3S and IMAPS.
    expect(l.Protocol).toBe('TCP');
    expect(l.Certificates).toBeUndefined();
    // On the public load balancer (the one with the Elastic IPs), not the proxy's internal one.
    const lbs = resources(t, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    const publicId = Object.keys(lbs).find((id) => lbs[id]!.Properties!.Scheme === 'internet-facing')!;
    expect(JSON.stringify(l.LoadBalancerArn)).toContain(publicId);
    // A quiet push stream (EventSource without ping) outlives the AWS default of 350 s.
    const attrs = (l.ListenerAttributes as { Key: string; Value: string }[]) ?? [];
    expect(attrs.find((a) => a.Key === 'tcp.idle_timeout.seconds')?.Value).toBe('1860');
    // Everyone may connect to 443; the task port admits only the NLB's security group.
    const ingress = [
      ...Object.values(resources(t, 'AWS::EC2::SecurityGroup')).flatMap((g) => (g.Properties!.SecurityGroupIngress as Env[] | undefined) ?? []),
      ...Object.values(resources(t, 'AWS::EC2::SecurityGroupIngress')).map((r) => r.Properties!),
    ];
    expect(ingress.filter((r) => r.FromPort === 443 && r.CidrIp === '0.0.0.0/0')).toHaveLength(1);
    const task = ingress.filter((r) => r.FromPort === 2443);
    expect(task.length).toBeGreaterThan(0);
    for (const r of task) {
      expect(r.CidrIp).toBeUndefined();
      expect(r.SourceSecurityGroupId).toBeDefined();
    }
  });

  it('health-checks the task on the /health endpoint the other services use, preserving client IPs and draining', () => {
    const tg = Object.values(resources(t, 'AWS::ElasticLoadBalancingV2::TargetGroup')).find((x) => x.Properties!.Port === 2443);
    expect(tg).toBeDefined();
    expect(tg!.Properties).toMatchObject({
      Protocol: 'TCP',
      TargetType: 'ip',
      HealthCheckProtocol: 'HTTP',
      HealthCheckPort: String(HEALTH_PORT),
      HealthCheckPath: '/health',
      Matcher: { HttpCode: '200' },
    });
    const attrs = Object.fromEntries((tg!.Properties!.TargetGroupAttributes as { Key: string; Value: string }[]).map((a) => [a.Key, a.Value]));
    // The JMAP server sees the client's address (failed-login delay per client, logs).
    expect(attrs['preserve_client_ip.enabled']).toBe('true');
    expect(attrs['deregistration_delay.timeout_seconds']).toBe('120');
    // The container's own check probes the same endpoint.
    const def = Object.values(resources(t, 'AWS::ECS::TaskDefinition')).find((d) => JSON.stringify(d.Properties).includes('"serve","web"'))!;
    const c = (def.Properties!.ContainerDefinitions as Env[])[0]!;
    expect(JSON.stringify(c.HealthCheck)).toContain(`127.0.0.1:${HEALTH_PORT}/health`);
    expect(c.User).toBe('1000:1000');
    expect(c.ReadonlyRootFilesystem).toBe(true);
  });

  it("runs `serve web` with the mailbox service's storage settings, its own switch, port and connection cap, and every other component off", () => {
    const web = taskEnv(t, 'serve web');
    const mailbox = taskEnv(t, 'serve pop3,imap');
    expect(web).toMatchObject({
      TOMLINSON_WEB_ENABLED: 'true',
      TOMLINSON_WEB_PORT: '2443',
      TOMLINSON_WEB_MAX_CONNECTIONS: String(main.config.webConnectionsPerTask),
      TOMLINSON_SMTP_ENABLED: 'false',
      TOMLINSON_POP3_ENABLED: 'false',
      TOMLINSON_IMAP_ENABLED: 'false',
      TOMLINSON_PROXY_ENABLED: 'false',
      TOMLINSON_WORKERS_ENABLED: 'false',
    });
    // Everything the mailbox task gets that is not about its own components, the web task gets too.
    const own = /^TOMLINSON_(POP3S?|IMAPS?)_|^TOMLINSON_(SMTP|SUBMISSIONS?|PROXY|WEB|WORKERS)_(ENABLED|PORT)$/;
    for (const [name, value] of Object.entries(mailbox)) if (!own.test(name)) expect(web[name], name).toEqual(value);
    // The other services must switch the web listener off: its default is on (`serve all` locally).
    for (const cmd of ['serve smtp', 'serve pop3,imap', 'serve proxy']) {
      expect(taskEnv(t, cmd).TOMLINSON_WEB_ENABLED, cmd).toBe('false');
      expect(taskEnv(t, cmd).TOMLINSON_WEB_PORT, cmd).toBeUndefined();
    }
    expect(() => stageConfig('dev', { webConnectionsPerTask: 0 })).toThrow(/webConnectionsPerTask/);
  });

  it("fetches the webmail's remote images through the proxy's internal load balancer, or not at all without the proxy", () => {
    const lbs = resources(t, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    const internalId = Object.keys(lbs).find((id) => lbs[id]!.Properties!.Scheme === 'internal')!;
    expect(internalId).toBeDefined();
    const value = JSON.stringify(taskEnv(t, 'serve web').TOMLINSON_WEB_IMAGE_PROXY);
    expect(value).toContain(internalId);
    expect(value).toContain('DNSName');
    expect(value).toContain(`:${LISTENERS.proxy.publicPort}`);
    const noProxy = testApp({ listeners: { ...stageConfig('dev').listeners, proxy: false } });
    expect(taskEnv(Template.fromStack(noProxy.stacks.listeners!), 'serve web').TOMLINSON_WEB_IMAGE_PROXY).toBe('off');
  });

  it('scales on its own CPU and memory between the configured bounds, two tasks at least in prod', () => {
    const svc = main.stacks.listeners!.services.web!;
    expect(svc).toBeDefined();
    const targets = Object.entries(resources(t, 'AWS::ApplicationAutoScaling::ScalableTarget')).filter(([id]) => id.startsWith('Web'));
    expect(targets).toHaveLength(1);
    const [targetId, target] = targets[0]!;
    const { minTasks, maxTasks } = main.config.services.web;
    expect(target.Properties).toMatchObject({ MinCapacity: minTasks, MaxCapacity: maxTasks });
    const policies = Object.values(resources(t, 'AWS::ApplicationAutoScaling::ScalingPolicy')).filter((p) =>
      JSON.stringify(p.Properties!.ScalingTargetId).includes(targetId),
    );
    expect(policies.map((p) => JSON.stringify(p.Properties)).map((j) => /ECSServiceAverage(CPU|Memory)Utilization/.exec(j)?.[1])).toEqual(
      expect.arrayContaining(['CPU', 'Memory']),
    );
    expect(stageConfig('prod').services.web.minTasks).toBeGreaterThanOrEqual(2);
  });

  it('alarms when a web task fails its health check and when none is healthy', () => {
    const mon = Template.fromStack(main.stacks.monitoring!);
    const alarms = Object.entries(resources(mon, 'AWS::CloudWatch::Alarm'));
    const unhealthy = alarms.filter(([id]) => id.startsWith('webUnhealthy'));
    const none = alarms.filter(([id]) => id.startsWith('webNoHealthyTask'));
    expect(unhealthy).toHaveLength(1);
    expect(none).toHaveLength(1);
    expect(unhealthy[0]![1].Properties).toMatchObject({ MetricName: 'UnHealthyHostCount', Namespace: 'AWS/NetworkELB', Threshold: 1 });
    expect(none[0]![1].Properties).toMatchObject({
      MetricName: 'HealthyHostCount',
      ComparisonOperator: 'LessThanThreshold',
      Threshold: 1,
      TreatMissingData: 'breaching',
    });
    // Both watch the 443 target group (its full name comes from the listeners stack's export).
    const tgDim = (a: Res) => JSON.stringify((a.Properties!.Dimensions as { Name: string; Value: unknown }[]).find((d) => d.Name === 'TargetGroup')!.Value);
    expect(tgDim(unhealthy[0]![1])).toMatch(/Listener443webTargets/);
    expect(tgDim(unhealthy[0]![1])).toBe(tgDim(none[0]![1]));
    for (const [, a] of [...unhealthy, ...none]) expect((a.Properties!.AlarmActions as unknown[]).length).toBe(1);
  });

  it('goes away with its listener: no 443, no web service, no SRV record', () => {
    const off = testApp({ listeners: { ...stageConfig('dev').listeners, web: false } });
    const tpl = Template.fromStack(off.stacks.listeners!);
    expect(ports(tpl)).not.toContain(443);
    expect(off.stacks.listeners!.services.web).toBeUndefined();
    expect(JSON.stringify(resources(tpl, 'AWS::ECS::TaskDefinition'))).not.toContain('"serve","web"');
    for (const cmd of ['serve smtp', 'serve pop3,imap']) expect(taskEnv(tpl, cmd).TOMLINSON_WEB_ENABLED).toBe('false');
    expect(dnsRecords(off.config, ['192.0.2.1'], []).filter((r) => r.type === 'SRV')).toEqual([]);
  });
});

describe('web DNS', () => {
  it('lists the JMAP SRV record of each domain beside its MX, pointing at the mail host on 443 by default', () => {
    const c = stageConfig('dev', { domains: ['example.com', 'example.net'] });
    const records = dnsRecords(c, ['192.0.2.1', '192.0.2.2'], []);
    // RFC 8620 §2.2: _jmap._tcp.<domain>, then the client asks https://<target>/.well-known/jmap.
    expect(records.filter((r) => r.type === 'SRV')).toEqual([
      { name: '_jmap._tcp.example.com', type: 'SRV', value: '0 1 443 mail.example.com' },
      { name: '_jmap._tcp.example.net', type: 'SRV', value: '0 1 443 mail.example.com' },
    ]);
    // No extra A record when the web endpoint shares the mail host's name.
    expect(records.filter((r) => r.type === 'A').map((r) => r.name)).toEqual(['mail.example.com', 'mail.example.com']);
    const out = JSON.stringify(Template.fromStack(main.stacks.listeners!).toJSON().Outputs);
    expect(out).toContain('_jmap._tcp.example.com');
    expect(out).toContain('SRV');
  });

  it('gives a separate web host name its own A records on the same addresses, and points the SRV records at it', () => {
    const c = stageConfig('dev', { webHostname: 'jmap.example.com' });
    const records = dnsRecords(c, ['192.0.2.1'], []);
    expect(records.filter((r) => r.type === 'A')).toEqual([
      { name: 'mail.example.com', type: 'A', value: '192.0.2.1' },
      { name: 'jmap.example.com', type: 'A', value: '192.0.2.1' },
    ]);
    expect(jmapSrv(c, 'example.com').value).toBe('0 1 443 jmap.example.com');
    expect(() => stageConfig('dev', { webHostname: 'not a host' })).toThrow(StageConfigError);
  });

  it('writes the SRV record (and the web A record) into a given hosted zone', () => {
    const zone = { zoneId: 'Z123EXAMPLE', zoneName: 'example.com' };
    const same = Template.fromStack(testApp({ hostedZone: zone }).stacks.dns!);
    same.hasResourceProperties('AWS::Route53::RecordSet', {
      Type: 'SRV',
      Name: '_jmap._tcp.example.com.',
      ResourceRecords: ['0 1 443 mail.example.com'],
      HostedZoneId: 'Z123EXAMPLE',
    });
    expect(Object.values(resources(same, 'AWS::Route53::RecordSet')).filter((r) => r.Properties!.Type === 'A')).toHaveLength(1);

    const own = Template.fromStack(testApp({ hostedZone: zone, webHostname: 'jmap.example.com' }).stacks.dns!);
    own.hasResourceProperties('AWS::Route53::RecordSet', { Type: 'A', Name: 'jmap.example.com.' });
    own.hasResourceProperties('AWS::Route53::RecordSet', { Type: 'SRV', ResourceRecords: ['0 1 443 jmap.example.com'] });
  });
});

describe('web service with a real certificate', () => {
  it('reads the TLS secret like POP3 and IMAP, and cdk-nag finds nothing unacknowledged with a separate web host name', { timeout: 120_000 }, () => {
    const { app, stacks } = testApp(
      { tlsFromSecret: true, webHostname: 'jmap.example.com', hostedZone: { zoneId: 'Z1', zoneName: 'example.com' } },
      { nag: true },
    );
    const tpl = Template.fromStack(stacks.listeners!);
    expect(taskEnv(tpl, 'serve web').TOMLINSON_TLS_SECRET_ID).toHaveProperty(['Fn::ImportValue']);
    const webPolicies = Object.values(resources(tpl, 'AWS::IAM::Policy')).filter((p) => JSON.stringify(p.Properties!.Roles).includes('"WebTaskTaskRole'));
    expect(JSON.stringify(webPolicies)).toContain('secretsmanager:GetSecretValue');
    expect(nagFindings(app)).toEqual([]);
  });
});
