/**
 * rspamd beside the SMTP listener on AWS (issue 24): a sidecar container in the SMTP Fargate task,
 * reached over the task's own localhost, with its Bayes data in one ElastiCache (Valkey) node that
 * every SMTP task shares, and the controller password in Secrets Manager.
 *
 * - Image: rspamd's official image by a pinned tag (`spam.rspamdImage`), taken from its registry
 *   by reference (ContainerImage.fromRegistry): `cdk synth` needs no Docker, and a deploy changes
 *   rspamd only when the tag in infra/config.ts does.
 * - Settings: the image reads /etc/rspamd as its local configuration. An init container (our own
 *   image, so no other image is pulled) writes the shipped containers/smtp/rspamd/local.d and the
 *   AWS overrides in containers/rspamd/override.d into a task volume mounted there; their text is
 *   in the task definition, so a change to them deploys new tasks by itself.
 * - Secrets: one generated password (Secrets Manager) reaches rspamd as RSPAMD_CONTROLLER_PASSWORD
 *   and the SMTP container as TOMLINSON_SPAM_CONTROLLER_PASSWORD, through ECS `secrets`: never in
 *   the template, the repository or the logs.
 * - Not essential: rspamd failing leaves the SMTP container running and mail flowing unscanned
 *   (`spam.enabled=on`: each scan is skipped and counted; the monitoring stack alarms on that).
 * - Learning: the inbound Lambda runs outside the VPC and cannot reach the task's localhost, so the
 *   SMTP process teaches the lessons waiting in the table itself (spam.learnPollSeconds,
 *   core/mail/spam-learn.ts startLessonPoller); the Lambda is told there is no controller.
 * - Bayes store: one cache.t4g.micro Valkey node (docs/deploy.md has the cost and why not
 *   ElastiCache Serverless): rspamd releases without Redis TLS cannot use Serverless, which is TLS
 *   only. At-rest encryption on, daily snapshots kept a week, reachable only from the tasks that
 *   run rspamd.
 * - The web task (JMAP, webmail) gets an rspamd of its own too (scanIn), to scan what users send
 *   from there, reading the same Bayes store; it teaches nothing.
 */
import { Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elasticache from 'aws-cdk-lib/aws-elasticache';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TcpService } from './tcp-service.js';

/** The Valkey port: not the well-known 6379 (cdk-nag AwsSolutions-AEC5). */
export const BAYES_STORE_PORT = 6380;
/** rspamd's normal worker (/checkv2) and controller (/learnspam, /learnham) in the sidecar. */
export const RSPAMD_PORTS = { normal: 11333, controller: 11334 } as const;

/** Props of RspamdSidecar. */
export interface RspamdSidecarProps {
  /** The SMTP service whose task gets the sidecar. */
  readonly service: TcpService;
  /** Our image, for the init container that writes rspamd's settings. */
  readonly image: ecs.ContainerImage;
  /** rspamd's official image with a pinned tag, e.g. 'rspamd/rspamd:3.12.1'. */
  readonly rspamdImage: string;
  readonly vpc: ec2.IVpc;
  /** Where the Valkey node lives (the tasks' subnets). */
  readonly subnets: ec2.SubnetSelection;
  /** @default 'cache.t4g.micro' */
  readonly nodeType?: string;
  /** How often the SMTP process teaches waiting lessons (TOMLINSON_SPAM_LEARN_POLL_SECONDS). */
  readonly learnPollSeconds: number;
  /** The repository root, where rspamd's settings are read from at synth time. */
  readonly projectRoot: string;
}

/** The settings files the sidecar gets, by path under /etc/rspamd: the shipped local.d, then the
 * AWS overrides (override.d wins over local.d in rspamd's include order). */
export function rspamdSettings(projectRoot: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const [dir, under] of [
    ['containers/smtp/rspamd/local.d', 'local.d'],
    ['containers/rspamd/override.d', 'override.d'],
  ] as const) {
    for (const f of readdirSync(join(projectRoot, dir)).sort()) files[`${under}/${f}`] = readFileSync(join(projectRoot, dir, f), 'utf8');
  }
  return files;
}

/** Writes RSPAMD_SETTINGS (JSON: path -> text) under the folder given as its argument; run by
 * `node -e` in our image (no file of ours needs to be in it). */
export const WRITE_SETTINGS =
  "const fs=require('fs'),p=require('path'),d=process.argv[1];for(const[n,t]of Object.entries(JSON.parse(process.env.RSPAMD_SETTINGS))){const f=p.join(d,p.normalize(n).replace(/^([.][.][/])+/,''));fs.mkdirSync(p.dirname(f),{recursive:true});fs.writeFileSync(f,t,{mode:0o644})}";

/** The sidecar, its settings, its secret and its Bayes store. */
export class RspamdSidecar extends Construct {
  readonly container: ecs.ContainerDefinition;
  readonly configWriter: ecs.ContainerDefinition;
  readonly password: secretsmanager.Secret;
  readonly bayesStore: elasticache.CfnReplicationGroup;
  readonly storeSecurityGroup: ec2.SecurityGroup;
  private readonly redisServers: string;

  constructor(
    scope: Construct,
    id: string,
    private readonly props: RspamdSidecarProps,
  ) {
    super(scope, id);
    const { service } = props;

    // The controller password: generated by Secrets Manager, shared by the two containers.
    this.password = new secretsmanager.Secret(this, 'ControllerPassword', {
      description: 'Tomlinson: password of the rspamd controller in the SMTP task (learn_spam / learn_ham)',
      generateSecretString: { passwordLength: 32, excludePunctuation: true },
    });
    Validations.of(this.password).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason:
        'Shared only by two containers of one task over localhost; changing it is `put-secret-value` then a new deployment of the SMTP service (docs/deploy.md), no rotation Lambda needed.',
    });

    // The Bayes store: one Valkey node in the tasks' subnets, admitting only the SMTP tasks.
    this.storeSecurityGroup = new ec2.SecurityGroup(this, 'BayesStoreSecurityGroup', {
      vpc: props.vpc,
      description: 'Tomlinson rspamd Bayes store (Valkey)',
      allowAllOutbound: false,
    });
    this.storeSecurityGroup.addIngressRule(service.securityGroup, ec2.Port.tcp(BAYES_STORE_PORT), 'rspamd in the SMTP tasks');
    const subnets = new elasticache.CfnSubnetGroup(this, 'BayesStoreSubnets', {
      description: 'Tomlinson rspamd Bayes store',
      subnetIds: props.vpc.selectSubnets(props.subnets).subnetIds,
    });
    this.bayesStore = new elasticache.CfnReplicationGroup(this, 'BayesStore', {
      replicationGroupDescription: 'Tomlinson rspamd Bayes statistics, shared by the SMTP tasks',
      engine: 'valkey',
      engineVersion: '8.0',
      cacheNodeType: props.nodeType ?? 'cache.t4g.micro',
      numCacheClusters: 1,
      automaticFailoverEnabled: false,
      port: BAYES_STORE_PORT,
      cacheSubnetGroupName: subnets.ref,
      securityGroupIds: [this.storeSecurityGroup.securityGroupId],
      atRestEncryptionEnabled: true,
      // rspamd speaks plain Redis (TLS only in its newest releases); the node is reachable from the
      // security groups of the tasks that run rspamd alone, inside the VPC.
      transitEncryptionEnabled: false,
      // What users taught survives the loss of the node: a daily snapshot, kept a week (free up to
      // the node's size).
      snapshotRetentionLimit: 7,
    });
    this.bayesStore.addResourceDependency(subnets);
    const ack = (rule: string, reason: string) => Validations.of(this.bayesStore).acknowledge({ id: rule, reason });
    ack(
      'AwsSolutions-AEC3',
      'At-rest encryption is on; in-transit encryption is off because rspamd (before its newest releases) cannot speak TLS to Redis. Only the tasks that run rspamd (SMTP, web) reach the node.',
    );
    ack(
      'AwsSolutions-AEC4',
      'One node: the Bayes statistics are rebuilt from daily snapshots or relearned; rspamd scans on without them while the node is replaced.',
    );
    ack(
      'AwsSolutions-AEC6',
      'Redis AUTH needs in-transit encryption, which rspamd cannot use here; the security group admits only the tasks that run rspamd (SMTP, web).',
    );

    this.redisServers = `${this.bayesStore.attrPrimaryEndPointAddress}:${this.bayesStore.attrPrimaryEndPointPort}`;
    const added = this.addTo(service);
    this.configWriter = added.configWriter;
    this.container = added.container;

    // The SMTP container: scans always (skipped while rspamd is not up yet), teaches from here.
    const app = service.container;
    app.addEnvironment('TOMLINSON_SPAM', 'on');
    app.addEnvironment('TOMLINSON_SPAM_URL', `http://127.0.0.1:${RSPAMD_PORTS.normal}`);
    app.addEnvironment('TOMLINSON_SPAM_CONTROLLER_URL', `http://127.0.0.1:${RSPAMD_PORTS.controller}`);
    app.addEnvironment('TOMLINSON_SPAM_LEARN_POLL_SECONDS', String(props.learnPollSeconds));
    app.addSecret('TOMLINSON_SPAM_CONTROLLER_PASSWORD', ecs.Secret.fromSecretsManager(this.password));
  }

  /**
   * The web task scans what JMAP and the webmail send (issue 24, Outbound) with an rspamd of its
   * own beside it, reading the same Bayes store: the SMTP task's rspamd is on that task's localhost,
   * out of the web task's reach. Scanning only: lessons are still taught from the SMTP task.
   */
  scanIn(service: TcpService): void {
    this.storeSecurityGroup.addIngressRule(service.securityGroup, ec2.Port.tcp(BAYES_STORE_PORT), `rspamd in the ${service.node.id} tasks`);
    this.addTo(service);
    service.container.addEnvironment('TOMLINSON_SPAM', 'on');
    service.container.addEnvironment('TOMLINSON_SPAM_URL', `http://127.0.0.1:${RSPAMD_PORTS.normal}`);
  }

  /** rspamd and its settings writer in a service's task. */
  private addTo(service: TcpService): { configWriter: ecs.ContainerDefinition; container: ecs.ContainerDefinition } {
    const task = service.taskDefinition;
    // Settings: written by an init container into a task volume that rspamd reads as /etc/rspamd.
    task.addVolume({ name: 'rspamd-settings' });
    const configWriter = task.addContainer('rspamd-settings', {
      image: this.props.image,
      essential: false,
      entryPoint: ['node', '-e', WRITE_SETTINGS, '/etc/rspamd'],
      command: [],
      // Root only for the copy: a fresh task volume belongs to root (Fargate bind mounts).
      user: '0:0',
      readonlyRootFilesystem: true,
      environment: { RSPAMD_SETTINGS: JSON.stringify(rspamdSettings(this.props.projectRoot)) },
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'rspamd-settings', logGroup: service.logGroup }),
    });
    configWriter.addMountPoints({ sourceVolume: 'rspamd-settings', containerPath: '/etc/rspamd', readOnly: false });

    const container = task.addContainer('rspamd', {
      image: ecs.ContainerImage.fromRegistry(this.props.rspamdImage),
      essential: false,
      environment: { RSPAMD_REDIS_SERVERS: this.redisServers },
      secrets: { RSPAMD_CONTROLLER_PASSWORD: ecs.Secret.fromSecretsManager(this.password) },
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'rspamd', logGroup: service.logGroup }),
    });
    container.addMountPoints({ sourceVolume: 'rspamd-settings', containerPath: '/etc/rspamd', readOnly: true });
    container.addContainerDependencies({ container: configWriter, condition: ecs.ContainerDependencyCondition.SUCCESS });

    return { configWriter, container };
  }
}
