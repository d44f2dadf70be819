/**
 * The listeners stack: VPC, ECS cluster, one Fargate service per listener group and the Network
 * Load Balancer in front of them, with one Elastic IP per availability zone so that the MX and A
 * records never change. In the 'direct' outbound mode it also runs the queue workers on Fargate,
 * whose mail leaves through the NAT gateways (their Elastic IPs need PTR records).
 */
import { CfnOutput, Duration, Fn, RemovalPolicy, Stack, Validations, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { acknowledgeObjectPrefixes, grantObjects, grantTableItems, listenerAccess } from '../access.js';
import {
  HEALTH_PORT,
  LISTENERS,
  enabledComponents,
  enabledGroups,
  enabledListeners,
  isProtectedStage,
  type ListenerComponent,
  type ListenerGroup,
  type ListenerName,
  type StageConfig,
} from '../config.js';
import { RspamdSidecar } from '../constructs/rspamd-sidecar.js';
import { TcpService, type TcpPort } from '../constructs/tcp-service.js';
import { acknowledgeGrantWildcards } from '../nag.js';
import { workerEnvironment } from './processing.js';
import type { StateStack } from './state.js';

/** Props of ListenersStack. */
export interface ListenersStackProps extends StackProps {
  config: StageConfig;
  state: StateStack;
  /** The container image (ContainerImage.fromAsset of containers/Dockerfile in app.ts). */
  image: ecs.ContainerImage;
  /** The repository root (rspamd's settings for the SMTP task's sidecar). */
  projectRoot: string;
}

/** The component switches of the container (core/config.ts `<component>.enabled`). */
const COMPONENT_SWITCHES: Record<ListenerComponent | 'workers', string> = {
  smtp: 'TOMLINSON_SMTP_ENABLED',
  pop3: 'TOMLINSON_POP3_ENABLED',
  imap: 'TOMLINSON_IMAP_ENABLED',
  web: 'TOMLINSON_WEB_ENABLED',
  proxy: 'TOMLINSON_PROXY_ENABLED',
  workers: 'TOMLINSON_WORKERS_ENABLED',
};

/** Which `TOMLINSON_*_ENABLED` switches a group's container gets, so each runs only its own
 * components: every switch is written (a component's default is on), and a component is on only
 * when one of its listeners in this group is. */
export function groupSwitches(c: StageConfig, group: ListenerGroup | 'workers'): Record<string, string> {
  const on = new Set<string>(group === 'workers' ? ['workers'] : enabledComponents(c, group));
  const env: Record<string, string> = {};
  for (const [component, name] of Object.entries(COMPONENT_SWITCHES)) env[name] = String(on.has(component));
  // A switched-off listener inside an enabled group gets port 0 (off) where the setting allows.
  for (const [name, l] of Object.entries(LISTENERS)) {
    if (l.group === group) env[l.env] = c.listeners[name as ListenerName] ? String(l.containerPort) : '0';
  }
  return env;
}

/** The `serve` arguments of a group's task: its components, e.g. `serve pop3,imap`. */
export function serveCommand(c: StageConfig, group: ListenerGroup | 'workers'): string[] {
  return ['serve', group === 'workers' ? 'workers' : enabledComponents(c, group).join(',')];
}

/** Network, cluster, services and load balancer of one stage. */
export class ListenersStack extends Stack {
  readonly vpc: ec2.Vpc;
  readonly cluster: ecs.Cluster;
  readonly nlb: elbv2.NetworkLoadBalancer;
  readonly nlbSecurityGroup: ec2.SecurityGroup;
  /** The proxy's internal load balancer and its security group (when the proxy is on). */
  readonly proxyNlb?: elbv2.NetworkLoadBalancer;
  readonly proxySecurityGroup?: ec2.SecurityGroup;
  /** One per availability zone, in subnet order. */
  readonly addresses: ec2.CfnEIP[] = [];
  readonly services: Partial<Record<ListenerGroup | 'workers', TcpService>> = {};
  /** rspamd beside the SMTP listener (with spam.enabled and the SMTP group). */
  rspamd?: RspamdSidecar;

  constructor(scope: Construct, id: string, props: ListenersStackProps) {
    super(scope, id, props);
    const { config: c, state } = props;
    const retention = c.logRetentionDays as logs.RetentionDays;

    // Without NAT gateways (the cheaper option, docs/deploy.md) tasks run in the public subnets
    // with public IPs; their security groups still admit only the NLB.
    const useNat = c.natGateways > 0;
    this.vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: c.maxAzs,
      natGateways: c.natGateways,
      subnetConfiguration: useNat
        ? [
            { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
            { name: 'tasks', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 22 },
          ]
        : [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
      // Gateway endpoints cost nothing and keep the tasks' S3 and DynamoDB traffic (every POP3
      // download, every proxy object) off the NAT gateways, which charge per GB.
      gatewayEndpoints: {
        S3: { service: ec2.GatewayVpcEndpointAwsService.S3 },
        DynamoDB: { service: ec2.GatewayVpcEndpointAwsService.DYNAMODB },
      },
    });
    this.vpc.addFlowLog('RejectedFlows', {
      trafficType: ec2.FlowLogTrafficType.REJECT,
      destination: ec2.FlowLogDestination.toCloudWatchLogs(new logs.LogGroup(this, 'FlowLogs', { retention })),
    });
    const taskSubnets: ec2.SubnetSelection = { subnetType: useNat ? ec2.SubnetType.PRIVATE_WITH_EGRESS : ec2.SubnetType.PUBLIC };

    this.cluster = new ecs.Cluster(this, 'Cluster', { vpc: this.vpc, containerInsightsV2: ecs.ContainerInsights.ENABLED });

    // Stable public addresses: one Elastic IP per AZ, retained even if the stack goes, so that the
    // A/MX records and PTR requests made for them stay valid.
    const publicSubnets = this.vpc.publicSubnets;
    publicSubnets.forEach((_, i) => {
      const eip = new ec2.CfnEIP(this, `NlbAddress${i}`, { domain: 'vpc', tags: [{ key: 'Name', value: `tomlinson-${c.stage}-mx-${i}` }] });
      eip.overrideLogicalId(`NlbAddress${i}`);
      eip.applyRemovalPolicy(RemovalPolicy.RETAIN);
      this.addresses.push(eip);
    });
    this.nlbSecurityGroup = new ec2.SecurityGroup(this, 'NlbSecurityGroup', {
      vpc: this.vpc,
      description: 'Tomlinson public listeners',
      allowAllOutbound: true,
    });
    this.nlb = new elbv2.NetworkLoadBalancer(this, 'Nlb', {
      vpc: this.vpc,
      internetFacing: true,
      crossZoneEnabled: true,
      // Deleting it would free nothing but break every MX and PTR record; dev may come and go.
      deletionProtection: isProtectedStage(c),
      securityGroups: [this.nlbSecurityGroup],
      subnetMappings: publicSubnets.map((subnet, i) => ({ subnet, allocationId: this.addresses[i]!.attrAllocationId })),
    });
    Validations.of(this.nlb).acknowledge({
      id: 'AwsSolutions-ELB2',
      reason: 'NLB access logs are written for TLS listeners only; every listener here is TCP (TLS ends in the containers), so there is nothing to log.',
    });
    Validations.of(this.nlbSecurityGroup).acknowledge({
      id: 'AwsSolutions-EC23',
      reason:
        'SMTP (25), submission (465, 587), POP3 (110, 995), IMAP (143, 993) and HTTPS for JMAP (443) are public Internet services; the proxy port admits only the configured client ranges.',
    });

    // The proxy's own internal load balancer: clients in the VPC reach the internet-facing one
    // from a NAT address, which no private range admits, and clients in peered networks should not
    // leave them at all. Its group admits proxyAllowedClients; the public NLB carries 3128 only
    // for proxyPublicClients (none by default).
    if (c.listeners.proxy) {
      this.proxySecurityGroup = new ec2.SecurityGroup(this, 'ProxyNlbSecurityGroup', {
        vpc: this.vpc,
        description: 'Tomlinson proxy, internal clients',
        allowAllOutbound: true,
      });
      this.proxyNlb = new elbv2.NetworkLoadBalancer(this, 'ProxyNlb', {
        vpc: this.vpc,
        internetFacing: false,
        crossZoneEnabled: true,
        deletionProtection: isProtectedStage(c),
        securityGroups: [this.proxySecurityGroup],
        vpcSubnets: taskSubnets,
      });
      Validations.of(this.proxyNlb).acknowledge({
        id: 'AwsSolutions-ELB2',
        reason: 'NLB access logs are written for TLS listeners only; the proxy listener is TCP, so there is nothing to log.',
      });
    }

    const image = props.image;
    const everyone = [ec2.Peer.anyIpv4()];
    const internalProxy = this.proxyNlb && this.proxySecurityGroup ? { loadBalancer: this.proxyNlb, securityGroup: this.proxySecurityGroup } : undefined;
    const env = workerEnvironment(c, state);
    const tlsEnv: Record<string, string> = c.tlsFromSecret ? { TOMLINSON_TLS_SECRET_ID: state.tlsSecret.secretArn } : {};
    const mail = state.bucketFor(this, 'Mail');

    const access = listenerAccess(c);
    // The web task's rspamd reads the Bayes store the SMTP task's sidecar brings.
    const smtpEnabled = enabledGroups(c).includes('smtp');
    for (const group of enabledGroups(c)) {
      // rspamd beside the SMTP listener (and beside the web listener, to scan what JMAP and the
      // webmail send) needs room of its own: at least 0.5 vCPU and 1 GiB a task.
      const withRspamd = (group === 'smtp' || (group === 'web' && smtpEnabled)) && c.spam.enabled;
      const size = withRspamd
        ? { ...c.services[group], cpu: Math.max(c.services[group].cpu, 512), memoryMiB: Math.max(c.services[group].memoryMiB, 1024) }
        : c.services[group];
      const ports: TcpPort[] = enabledListeners(c)
        .filter((l) => LISTENERS[l].group === group)
        .flatMap((l): TcpPort[] => {
          const { publicPort, containerPort, nlbIdleSeconds } = LISTENERS[l];
          const at = { publicPort, containerPort, ...(nlbIdleSeconds ? { idleTimeout: Duration.seconds(nlbIdleSeconds) } : {}) };
          if (l !== 'proxy') return [{ name: l, ...at, allowFrom: everyone }];
          const internal: TcpPort = { name: l, ...at, nlb: internalProxy, allowFrom: c.proxyAllowedClients.map((r) => ec2.Peer.ipv4(r)) };
          if (!c.proxyPublicClients.length) return [internal];
          return [internal, { name: 'proxypublic', ...at, allowFrom: c.proxyPublicClients.map((r) => ec2.Peer.ipv4(r)) }];
        });
      const svc = new TcpService(this, group.charAt(0).toUpperCase() + group.slice(1), {
        cluster: this.cluster,
        image,
        command: serveCommand(c, group),
        environment: {
          ...env,
          ...groupSwitches(c, group),
          ...(group === 'proxy'
            ? {
                TOMLINSON_PROXY_ALLOWED_CLIENTS: [...c.proxyAllowedClients, ...c.proxyPublicClients].join(','),
                TOMLINSON_PROXY_REQUIRE_AUTH: String(c.proxyRequireAuth),
              }
            : tlsEnv),
          ...(group === 'mailbox' ? { TOMLINSON_IMAP_MAX_CONNECTIONS: String(c.imapConnectionsPerTask) } : {}),
          ...(group === 'web'
            ? {
                TOMLINSON_WEB_MAX_CONNECTIONS: String(c.webConnectionsPerTask),
                // The webmail fetches a message's remote images through the proxy service's
                // internal load balancer (its SSRF rules and cache); without the proxy, none.
                TOMLINSON_WEB_IMAGE_PROXY: this.proxyNlb ? `http://${this.proxyNlb.loadBalancerDnsName}:${LISTENERS.proxy.publicPort}` : 'off',
              }
            : {}),
        },
        nlb: { loadBalancer: this.nlb, securityGroup: this.nlbSecurityGroup },
        ports,
        healthPort: HEALTH_PORT,
        subnets: taskSubnets,
        assignPublicIp: !useNat,
        cpu: size.cpu,
        memoryMiB: size.memoryMiB,
        minTasks: size.minTasks,
        maxTasks: size.maxTasks,
        logRetention: retention,
      });
      this.services[group] = svc;
      if (group === 'smtp') {
        if (withRspamd)
          this.rspamd = new RspamdSidecar(this, 'Rspamd', {
            service: svc,
            image,
            rspamdImage: c.spam.rspamdImage,
            vpc: this.vpc,
            subnets: taskSubnets,
            nodeType: c.spam.bayesNodeType,
            learnPollSeconds: c.spam.learnPollSeconds,
            projectRoot: props.projectRoot,
          });
        else svc.container.addEnvironment('TOMLINSON_SPAM', 'off');
      }
      // Least privilege per service (infra/access.ts): item prefixes, object prefixes, one queue.
      const role = svc.taskDefinition.taskRole;
      const a = access[group];
      grantTableItems(role, state.table.tableArn, a.table.read, a.table.write);
      const exportName = state.bucketArnExport(a.bucket.name);
      grantObjects(role, Fn.importValue(exportName), a.bucket);
      acknowledgeObjectPrefixes(svc, exportName, a.bucket);
      if (a.bucket.name === 'Mail') {
        // Mail objects are encrypted with the stack key; a service that only reads them only decrypts.
        const keyActions = a.bucket.write.length ? ['kms:Decrypt', 'kms:GenerateDataKey'] : ['kms:Decrypt'];
        role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: keyActions, resources: [state.mailKey.keyArn] }));
      }
      if (a.sendsTo) {
        const queue = a.sendsTo === 'inbound' ? state.inboundQueue : state.outboundQueue;
        queue.grantSendMessages(role);
        for (const action of ['kms:ReEncrypt*', 'kms:GenerateDataKey*']) {
          Validations.of(svc).acknowledge({
            id: `AwsSolutions-IAM5[Action::${action}]`,
            reason: `From grantSendMessages on the encrypted ${a.sendsTo} queue: data-key actions on the one key of the queue, nothing else.`,
          });
        }
      }
      if (group !== 'proxy' && c.tlsFromSecret) state.tlsSecret.grantRead(role);
    }
    // What JMAP and the webmail send is scanned as submissions are (issue 24, Outbound), by an
    // rspamd beside the web listener sharing the SMTP sidecar's Bayes store.
    if (this.rspamd && this.services.web) this.rspamd.scanIn(this.services.web);
    else this.services.web?.container.addEnvironment('TOMLINSON_SPAM', 'off');

    if (c.outbound === 'direct') {
      // Direct MX delivery needs port 25 out, which Lambda never has: the workers run here and
      // leave through the NAT gateways.
      const size = c.services.workers;
      const svc = new TcpService(this, 'Workers', {
        cluster: this.cluster,
        image,
        command: serveCommand(c, 'workers'),
        environment: { ...env, ...groupSwitches(c, 'workers'), TOMLINSON_WORKER_CONCURRENCY: '8' },
        healthPort: HEALTH_PORT,
        subnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
        cpu: size.cpu,
        memoryMiB: size.memoryMiB,
        minTasks: size.minTasks,
        maxTasks: size.maxTasks,
        logRetention: retention,
      });
      this.services.workers = svc;
      acknowledgeGrantWildcards(svc, [state.bucketArnExport('Mail')]);
      const role = svc.taskDefinition.taskRole;
      mail.grantReadWrite(role);
      state.table.grantReadWriteData(role);
      state.outboundQueue.grantConsumeMessages(role);
      state.outboundQueue.grantSendMessages(role);
      state.inboundQueue.grantSendMessages(role);
      state.inboundQueue.grantConsumeMessages(role);
      state.grantDkimRead(role);
    }

    new CfnOutput(this, 'PublicAddresses', {
      value: Fn.join(
        ',',
        this.addresses.map((a) => a.ref),
      ),
      description: 'Elastic IPs of the load balancer: A record of the mail host, and where PTR records point back',
    });
    new CfnOutput(this, 'LoadBalancerDns', { value: this.nlb.loadBalancerDnsName, description: 'NLB DNS name' });
    if (this.proxyNlb)
      new CfnOutput(this, 'ProxyDns', {
        value: this.proxyNlb.loadBalancerDnsName,
        description: 'Internal NLB DNS name of the proxy (port 3128), for clients in the VPC and peered networks',
      });
  }
}
