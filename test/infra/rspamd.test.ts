/**
 * rspamd on AWS (infra/constructs/rspamd-sidecar.ts): the sidecar in the SMTP task from the
 * official image by a pinned tag, its settings written by an init container, the controller
 * password from Secrets Manager (in `secrets`, never in the template), the Valkey Bayes store that
 * only the SMTP tasks reach, the learner's environment and grants, the alarm on skipped scans, and
 * nothing of it with spam filtering off. The settings the init container writes are then read by
 * Debian's rspamd (`rspamadm configdump`) with the task's variables: the Redis address and the
 * password land where rspamd looks for them.
 */
import { Match, Template } from 'aws-cdk-lib/assertions';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BAYES_STORE_PORT, WRITE_SETTINGS, rspamdSettings } from '../../infra/constructs/rspamd-sidecar.js';
import { DEFAULTS, StageConfigError, stageConfig } from '../../infra/config.js';
import { OUTBOUND_SPAM_SKIPPED_MSG, SPAM_SKIPPED_MSG } from '../../infra/stacks/monitoring.js';
import { RSPAMD_BIN } from '../support/rspamd.js';
import { tempDir } from '../support/tmp.js';
import { ROOT, cleanOutdirs, testApp } from './support.js';

type Container = {
  Name: string;
  Image: unknown;
  Essential?: boolean;
  EntryPoint?: string[];
  User?: string;
  Environment?: { Name: string; Value: unknown }[];
  Secrets?: { Name: string; ValueFrom: unknown }[];
  DependsOn?: { ContainerName: string; Condition: string }[];
  MountPoints?: { SourceVolume: string; ContainerPath: string; ReadOnly: boolean }[];
};
type TaskDef = { Properties: { Cpu: string; Memory: string; ContainerDefinitions: Container[] } };

let listeners: Template;
let processing: Template;
let monitoring: Template;

/** The task definition whose app container runs `serve <what>`. */
function taskServing(t: Template, what: string): TaskDef['Properties'] {
  const defs = Object.values(t.findResources('AWS::ECS::TaskDefinition')) as TaskDef[];
  const d = defs.find((x) => (x.Properties.ContainerDefinitions[0] as Container & { Command?: string[] }).Command?.join(' ') === `serve ${what}`);
  expect(d, `a task serving ${what}`).toBeDefined();
  return d!.Properties;
}
const smtpTask = (t: Template) => taskServing(t, 'smtp');
const env = (c: Container) => Object.fromEntries((c.Environment ?? []).map((e) => [e.Name, e.Value]));
/** The alarms on the skipped-scan metric. */
const skippedAlarms = (t: Template) =>
  Object.values(t.findResources('AWS::CloudWatch::Alarm'))
    .map((a) => (a as { Properties: Record<string, unknown> }).Properties)
    .filter((p) => JSON.stringify(p).includes('"spam-scans-skipped"'));
const byName = (p: TaskDef['Properties'], name: string) => p.ContainerDefinitions.find((c) => c.Name === name);

beforeAll(() => {
  const { stacks } = testApp();
  listeners = Template.fromStack(stacks.listeners!);
  processing = Template.fromStack(stacks.processing);
  monitoring = Template.fromStack(stacks.monitoring!);
}, 120_000);
afterAll(cleanOutdirs);

describe('the rspamd sidecar of the SMTP task', () => {
  it('runs the official image by its pinned tag, not essential, after its settings are written', () => {
    const task = smtpTask(listeners);
    const rspamd = byName(task, 'rspamd')!;
    expect(rspamd.Image).toBe(DEFAULTS.spam.rspamdImage);
    expect(DEFAULTS.spam.rspamdImage).toMatch(/^rspamd\/rspamd:\d+\.\d+\.\d+$/);
    // rspamd failing must not take the SMTP listener down with it: mail flows unscanned.
    expect(rspamd.Essential).toBe(false);
    expect(byName(task, 'app')!.Essential).toBe(true);
    expect(rspamd.DependsOn).toEqual([{ ContainerName: 'rspamd-settings', Condition: 'SUCCESS' }]);
    expect(rspamd.MountPoints).toEqual([{ SourceVolume: 'rspamd-settings', ContainerPath: '/etc/rspamd', ReadOnly: true }]);
    const writer = byName(task, 'rspamd-settings')!;
    expect(writer.Essential).toBe(false);
    expect(writer.EntryPoint).toEqual(['node', '-e', WRITE_SETTINGS, '/etc/rspamd']);
    expect(JSON.parse(String(env(writer).RSPAMD_SETTINGS))).toEqual(rspamdSettings(ROOT));
    // Room for rspamd beside Node.
    expect(Number(task.Cpu)).toBeGreaterThanOrEqual(512);
    expect(Number(task.Memory)).toBeGreaterThanOrEqual(1024);
  });

  it('points the SMTP container at it over localhost and gives both the controller password from Secrets Manager only', () => {
    const task = smtpTask(listeners);
    const app = byName(task, 'app')!;
    expect(env(app)).toMatchObject({
      TOMLINSON_SPAM: 'on',
      TOMLINSON_SPAM_URL: 'http://127.0.0.1:11333',
      TOMLINSON_SPAM_CONTROLLER_URL: 'http://127.0.0.1:11334',
      TOMLINSON_SPAM_LEARN_POLL_SECONDS: String(DEFAULTS.spam.learnPollSeconds),
    });
    expect(env(app)).not.toHaveProperty('TOMLINSON_SPAM_CONTROLLER_PASSWORD');
    const [secretId] = Object.keys(
      listeners.findResources('AWS::SecretsManager::Secret', { Properties: { Description: Match.stringLikeRegexp('rspamd controller') } }),
    );
    expect(secretId).toBeDefined();
    expect(app.Secrets).toContainEqual({ Name: 'TOMLINSON_SPAM_CONTROLLER_PASSWORD', ValueFrom: { Ref: secretId } });
    expect(byName(task, 'rspamd')!.Secrets).toEqual([{ Name: 'RSPAMD_CONTROLLER_PASSWORD', ValueFrom: { Ref: secretId } }]);
    // Generated by Secrets Manager: the template carries no value.
    const secret = listeners.toJSON().Resources[secretId!] as { Properties: Record<string, unknown> };
    expect(secret.Properties.GenerateSecretString).toMatchObject({ PasswordLength: 32 });
    expect(secret.Properties).not.toHaveProperty('SecretString');
  });

  it('keeps Bayes in one encrypted Valkey node that only the tasks running rspamd reach', () => {
    const groups = listeners.findResources('AWS::ElastiCache::ReplicationGroup');
    expect(Object.keys(groups)).toHaveLength(1);
    const [storeId, store] = Object.entries(groups)[0]! as [string, { Properties: Record<string, unknown> }];
    expect(store.Properties).toMatchObject({
      Engine: 'valkey',
      CacheNodeType: 'cache.t4g.micro',
      NumCacheClusters: 1,
      Port: BAYES_STORE_PORT,
      AtRestEncryptionEnabled: true,
      SnapshotRetentionLimit: 7,
    });
    const rspamd = byName(smtpTask(listeners), 'rspamd')!;
    expect(JSON.stringify(env(rspamd).RSPAMD_REDIS_SERVERS)).toContain(`"${storeId}","PrimaryEndPoint.Address"`);
    // The store's group admits the SMTP tasks' group on its port, and nothing else.
    const storeSg = (store.Properties.SecurityGroupIds as { 'Fn::GetAtt': string[] }[])[0]!['Fn::GetAtt'][0];
    const ingress = Object.values(listeners.findResources('AWS::EC2::SecurityGroupIngress')).filter((r) =>
      JSON.stringify((r as { Properties: { GroupId: unknown } }).Properties.GroupId).includes(`"${storeSg}"`),
    ) as { Properties: { FromPort: number; SourceSecurityGroupId: unknown } }[];
    // The SMTP tasks and the web tasks (whose rspamd scans what JMAP sends), nothing else.
    expect(ingress).toHaveLength(2);
    for (const i of ingress) expect(i.Properties.FromPort).toBe(BAYES_STORE_PORT);
    const sources = ingress.map((i) => /"(Smtp|Web)Tasks/.exec(JSON.stringify(i.Properties.SourceSecurityGroupId))?.[1]).sort();
    expect(sources).toEqual(['Smtp', 'Web']);
  });

  it('gives the web task an rspamd of its own that scans what JMAP and the webmail send, on the same Bayes store, teaching nothing', () => {
    const task = taskServing(listeners, 'web');
    const rspamd = byName(task, 'rspamd')!;
    expect(rspamd.Image).toBe(DEFAULTS.spam.rspamdImage);
    expect(rspamd.Essential).toBe(false);
    expect(rspamd.DependsOn).toEqual([{ ContainerName: 'rspamd-settings', Condition: 'SUCCESS' }]);
    expect(env(rspamd).RSPAMD_REDIS_SERVERS).toEqual(env(byName(smtpTask(listeners), 'rspamd')!).RSPAMD_REDIS_SERVERS);
    const app = env(byName(task, 'app')!);
    expect(app).toMatchObject({ TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: 'http://127.0.0.1:11333' });
    // No controller: lessons wait in the table for the SMTP task's learner.
    expect(app.TOMLINSON_SPAM_CONTROLLER_URL).toBe('');
    expect(app).not.toHaveProperty('TOMLINSON_SPAM_LEARN_POLL_SECONDS');
    expect(Number(task.Cpu)).toBeGreaterThanOrEqual(512);
    expect(Number(task.Memory)).toBeGreaterThanOrEqual(1024);
  });

  it('lets the SMTP task teach lessons and the mailbox and web tasks write them; the Lambda worker has no controller', () => {
    const inbound = Object.values(processing.findResources('AWS::Lambda::Function')).map(
      (f) => (f as { Properties: { Environment?: { Variables: Record<string, unknown> } } }).Properties.Environment?.Variables ?? {},
    );
    const workers = inbound.filter((v) => 'TOMLINSON_SPAM_CONTROLLER_URL' in v);
    expect(workers.length).toBeGreaterThan(0);
    for (const v of workers) expect(v).toMatchObject({ TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_CONTROLLER_URL: '' });
    const keysOf = (rolePrefix: string): string[] =>
      Object.values(listeners.findResources('AWS::IAM::Policy'))
        .filter((p) => JSON.stringify((p as { Properties: { Roles: unknown } }).Properties.Roles).includes(`"${rolePrefix}`))
        .flatMap(
          (p) =>
            (p as { Properties: { PolicyDocument: { Statement: { Action: unknown; Condition?: Record<string, Record<string, string[]>> }[] } } }).Properties
              .PolicyDocument.Statement,
        )
        .filter((s) => JSON.stringify(s.Action).includes('dynamodb:PutItem'))
        .flatMap((s) => s.Condition?.['ForAllValues:StringLike']?.['dynamodb:LeadingKeys'] ?? []);
    expect(keysOf('SmtpTaskTaskRole')).toEqual(expect.arrayContaining(['SPAMLEARN', 'SPAMSTATS', 'SPAMPREF']));
    expect(keysOf('MailboxTaskTaskRole')).toContain('SPAMLEARN');
    expect(keysOf('WebTaskTaskRole')).toContain('SPAMLEARN');
  });

  it('alarms on scans skipped (MX and outbound), counted from the SMTP and web logs', () => {
    const filters = Object.values(monitoring.findResources('AWS::Logs::MetricFilter')) as {
      Properties: { FilterPattern: string; MetricTransformations: { MetricName: string }[]; LogGroupName: unknown };
    }[];
    const skipped = filters.filter((f) => f.Properties.MetricTransformations[0]!.MetricName === 'spam-scans-skipped');
    expect(skipped).toHaveLength(2);
    for (const f of skipped) expect(f.Properties.FilterPattern).toBe(`{ ($.msg = "${SPAM_SKIPPED_MSG}*") || ($.msg = "${OUTBOUND_SPAM_SKIPPED_MSG}*") }`);
    expect(skipped.map((f) => /(Smtp|Web)Logs/.exec(JSON.stringify(f.Properties.LogGroupName))?.[1]).sort()).toEqual(['Smtp', 'Web']);
    const alarms = skippedAlarms(monitoring);
    expect(alarms).toHaveLength(1);
    expect(alarms[0]).toMatchObject({
      Threshold: 5,
      EvaluationPeriods: 1,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      AlarmActions: [expect.anything()],
      Metrics: [{ MetricStat: { Metric: { MetricName: 'spam-scans-skipped', Namespace: 'Tomlinson' }, Period: 900, Stat: 'Sum' } }],
    });
  });

  it('is absent with spam filtering off: no sidecar, no store, no alarm, scanning off', () => {
    const { stacks } = testApp({ spam: { ...DEFAULTS.spam, enabled: false } });
    const l = Template.fromStack(stacks.listeners!);
    const task = smtpTask(l);
    expect(task.ContainerDefinitions.map((c) => c.Name)).toEqual(['app']);
    expect(env(task.ContainerDefinitions[0]!)).toMatchObject({ TOMLINSON_SPAM: 'off' });
    const web = taskServing(l, 'web');
    expect(web.ContainerDefinitions.map((c) => c.Name)).toEqual(['app']);
    expect(env(web.ContainerDefinitions[0]!)).toMatchObject({ TOMLINSON_SPAM: 'off' });
    l.resourceCountIs('AWS::ElastiCache::ReplicationGroup', 0);
    expect(skippedAlarms(Template.fromStack(stacks.monitoring!))).toEqual([]);
    expect(skippedAlarms(monitoring)).toHaveLength(1);
  }, 120_000);

  it('refuses an rspamd image without a pinned version tag', () => {
    for (const rspamdImage of ['rspamd/rspamd', 'rspamd/rspamd:latest', 'rspamd/rspamd:nightly'])
      expect(() => stageConfig('dev', { spam: { ...DEFAULTS.spam, rspamdImage } })).toThrow(StageConfigError);
  });
});

describe("the sidecar's settings, read by rspamd", () => {
  it('put the task’s Redis address into the classifier and its password into the controller', async () => {
    if (!existsSync(RSPAMD_BIN)) throw new Error(`rspamd not found at ${RSPAMD_BIN}: apt-get install rspamd`);
    const dir = await tempDir('tomlinson-rspamd-settings-');
    try {
      // The init container's own command, on this machine's Node, into a folder of ours.
      const w = spawnSync(process.execPath, ['-e', WRITE_SETTINGS, dir.path], {
        env: { ...process.env, RSPAMD_SETTINGS: JSON.stringify(rspamdSettings(ROOT)) },
        encoding: 'utf8',
      });
      expect(w.status, w.stderr).toBe(0);
      expect(readFileSync(join(dir.path, 'local.d/actions.conf'), 'utf8')).toBe(
        readFileSync(join(ROOT, 'containers/smtp/rspamd/local.d/actions.conf'), 'utf8'),
      );
      const dump = spawnSync('rspamadm', [`--var=LOCAL_CONFDIR=${dir.path}`, 'configdump', '-c', '/etc/rspamd/rspamd.conf'], {
        env: { ...process.env, RSPAMD_REDIS_SERVERS: 'bayes.example.internal:6380', RSPAMD_CONTROLLER_PASSWORD: 'pw-from-secrets-manager' },
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(dump.status, dump.stderr).toBe(0);
      const classifier = dump.stdout.slice(dump.stdout.indexOf('classifier {'));
      expect(classifier).toMatch(/servers = "bayes\.example\.internal:6380";/);
      // The controller asks every client for it, 127.0.0.1 included (no secure_ip).
      expect(dump.stdout).toMatch(/\bpassword = "pw-from-secrets-manager";/);
      expect(dump.stdout).toMatch(/enable_password = "pw-from-secrets-manager";/);
      expect(dump.stdout).toMatch(/secure_ip \[\]/);
    } finally {
      await dir.remove();
    }
  }, 90_000);
});
