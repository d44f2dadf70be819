/**
 * One listener group as a Fargate service behind the shared Network Load Balancer: a task running
 * `serve <group>` as a non-root user on unprivileged ports, one NLB TCP listener per public port
 * with the client IP preserved, health checks against the container's health endpoint, graceful
 * draining on deploy and autoscaling on the service's own CPU and memory. With no ports it is a
 * plain worker service (the direct-delivery outbound worker).
 */
import { Duration, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

/** One public port of the service. */
export interface TcpPort {
  /** Used in construct IDs, e.g. 'smtp'. */
  readonly name: string;
  /** The NLB listener port, e.g. 25. */
  readonly publicPort: number;
  /** The container port, e.g. 2525 (unprivileged: the task runs as non-root). */
  readonly containerPort: number;
  /** Who may connect, as NLB security group peers. */
  readonly allowFrom: ec2.IPeer[];
  /** The load balancer of this port, when not the service's (e.g. the proxy's internal one).
   * @default TcpServiceProps.nlb */
  readonly nlb?: TcpLoadBalancer;
  /** The NLB's TCP idle timeout for this port (60 s to 6000 s): longer than the protocol's own
   * inactivity timer, so that the server, not a silent reset, ends a quiet session.
   * @default Duration.seconds(350), AWS's default */
  readonly idleTimeout?: Duration;
}

/** A Network Load Balancer with the security group that decides who may connect to it. */
export interface TcpLoadBalancer {
  readonly loadBalancer: elbv2.NetworkLoadBalancer;
  readonly securityGroup: ec2.ISecurityGroup;
}

/** Props of TcpService. */
export interface TcpServiceProps {
  readonly cluster: ecs.ICluster;
  readonly image: ecs.ContainerImage;
  /** Arguments after the image's entry point, e.g. ['serve', 'smtp']. */
  readonly command: string[];
  readonly environment: Record<string, string>;
  /** The NLB and its security group; absent for a worker service without listeners. */
  readonly nlb?: TcpLoadBalancer;
  /** @default [] */
  readonly ports?: TcpPort[];
  /** The container's health endpoint port. */
  readonly healthPort: number;
  /** Where the tasks run. */
  readonly subnets: ec2.SubnetSelection;
  /** Public IPs for tasks (only when they run in public subnets without NAT). @default false */
  readonly assignPublicIp?: boolean;
  /** @default 256 */
  readonly cpu?: number;
  /** @default 512 */
  readonly memoryMiB?: number;
  /** Tasks at least; the autoscaler keeps the count at or above it. @default 1 */
  readonly minTasks?: number;
  /** @default 4 */
  readonly maxTasks?: number;
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /** Time a task gets after SIGTERM (and the NLB keeps draining it) before it is killed: SMTP and
   * POP3 sessions finish their transaction; IMAP sessions at rest (IDLE included) are told BYE
   * at once and their clients reconnect to another task. @default Duration.seconds(120) */
  readonly drainTime?: Duration;
}

/** The uid:gid of the `node` user in the official Node images (containers/Dockerfile USER). */
export const CONTAINER_USER = '1000:1000';

/** A Fargate service, optionally behind NLB listeners. */
export class TcpService extends Construct {
  readonly service: ecs.FargateService;
  readonly taskDefinition: ecs.FargateTaskDefinition;
  readonly container: ecs.ContainerDefinition;
  readonly securityGroup: ec2.SecurityGroup;
  readonly logGroup: logs.LogGroup;
  readonly targetGroups: elbv2.NetworkTargetGroup[] = [];
  readonly listeners: elbv2.NetworkListener[] = [];

  constructor(scope: Construct, id: string, props: TcpServiceProps) {
    super(scope, id);
    const ports = props.ports ?? [];
    const drain = props.drainTime ?? Duration.seconds(120);
    this.logGroup = new logs.LogGroup(this, 'Logs', { retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH });

    this.taskDefinition = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: props.cpu ?? 256,
      memoryLimitMiB: props.memoryMiB ?? 512,
      runtimePlatform: { cpuArchitecture: ecs.CpuArchitecture.ARM64, operatingSystemFamily: ecs.OperatingSystemFamily.LINUX },
    });
    // A read-only root file system with one scratch volume for what the process writes (a
    // self-signed certificate, temporary files).
    this.taskDefinition.addVolume({ name: 'scratch' });
    this.container = this.taskDefinition.addContainer('app', {
      image: props.image,
      command: props.command,
      user: CONTAINER_USER,
      readonlyRootFilesystem: true,
      environment: {
        ...props.environment,
        TOMLINSON_LISTEN_HOST: '0.0.0.0',
        TOMLINSON_HEALTH_HOST: '0.0.0.0',
        TOMLINSON_HEALTH_PORT: String(props.healthPort),
        TOMLINSON_DATA_DIR: '/scratch/data',
      },
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: id.toLowerCase(), logGroup: this.logGroup }),
      stopTimeout: drain,
      healthCheck: {
        // The same endpoint the NLB probes; the image has no curl, Node 22's fetch does the job.
        command: ['CMD', 'node', '-e', `fetch('http://127.0.0.1:${props.healthPort}/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))`],
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        retries: 3,
        startPeriod: Duration.seconds(30),
      },
      portMappings: [...ports.map((p) => ({ containerPort: p.containerPort, name: p.name })), { containerPort: props.healthPort, name: 'health' }],
    });
    this.container.addMountPoints({ sourceVolume: 'scratch', containerPath: '/scratch', readOnly: false });

    this.securityGroup = new ec2.SecurityGroup(this, 'Tasks', {
      vpc: props.cluster.vpc,
      description: `Tomlinson ${id} tasks`,
      allowAllOutbound: true,
    });
    this.service = new ecs.FargateService(this, 'Service', {
      cluster: props.cluster,
      taskDefinition: this.taskDefinition,
      // No DesiredCount: the service is created with one task, registering the scalable target
      // raises it to minTasks, and later deploys leave the count the scaler chose (a DesiredCount
      // in the template would reset a scaled-out service to it on every `cdk deploy`).
      vpcSubnets: props.subnets,
      assignPublicIp: props.assignPublicIp ?? false,
      securityGroups: [this.securityGroup],
      // Graceful deploys: new tasks are healthy before old ones drain; a failing deploy rolls back.
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      healthCheckGracePeriod: ports.length ? Duration.seconds(60) : undefined,
    });

    const healthFrom = new Set<ec2.ISecurityGroup>();
    for (const p of ports) {
      const lb = p.nlb ?? props.nlb;
      if (!lb) throw new Error(`TcpService ${id}: port ${p.name} has no load balancer`);
      const { loadBalancer, securityGroup: nlbSg } = lb;
      healthFrom.add(nlbSg);
      // An NLB with a security group lets targets admit its traffic by that group, with the
      // client IP preserved too (ELB user guide, "Target security groups"); who may connect at
      // all is decided on the NLB's group.
      this.securityGroup.addIngressRule(nlbSg, ec2.Port.tcp(p.containerPort), `${p.name} from the NLB`);
      for (const peer of p.allowFrom) nlbSg.addIngressRule(peer, ec2.Port.tcp(p.publicPort), `${p.name} (${p.publicPort})`);
      const listener = loadBalancer.addListener(`Listener${p.publicPort}`, {
        port: p.publicPort,
        protocol: elbv2.Protocol.TCP,
        ...(p.idleTimeout ? { tcpIdleTimeout: p.idleTimeout } : {}),
      });
      const tg = listener.addTargets(`${p.name}Targets`, {
        port: p.containerPort,
        protocol: elbv2.Protocol.TCP,
        preserveClientIp: true,
        deregistrationDelay: drain,
        targets: [this.service.loadBalancerTarget({ containerName: 'app', containerPort: p.containerPort })],
        healthCheck: {
          protocol: elbv2.Protocol.HTTP,
          port: String(props.healthPort),
          path: '/health',
          healthyHttpCodes: '200',
          interval: Duration.seconds(10),
          healthyThresholdCount: 2,
          unhealthyThresholdCount: 2,
        },
      });
      this.listeners.push(listener);
      this.targetGroups.push(tg);
    }
    for (const sg of healthFrom) this.securityGroup.addIngressRule(sg, ec2.Port.tcp(props.healthPort), 'health checks from the NLB');

    // Each service scales on its own tasks' CPU and memory (AWS/ECS, ClusterName + ServiceName).
    // NLB flow counts exist per load balancer and per zone only, never per target group, so they
    // would scale SMTP on proxy traffic and the other way round. Open sessions hold buffers and TLS
    // state, so memory follows the connection count of an otherwise idle service.
    const scaling = this.service.autoScaleTaskCount({ minCapacity: props.minTasks ?? 1, maxCapacity: props.maxTasks ?? 4 });
    const cooldowns = { scaleInCooldown: Duration.minutes(5), scaleOutCooldown: Duration.minutes(1) };
    scaling.scaleOnCpuUtilization('Cpu', { targetUtilizationPercent: 60, ...cooldowns });
    scaling.scaleOnMemoryUtilization('Memory', { targetUtilizationPercent: 70, ...cooldowns });

    Validations.of(this.taskDefinition).acknowledge({
      id: 'AwsSolutions-ECS2',
      reason: 'Environment variables hold generated resource names and ports only; secrets are read from Secrets Manager by ARN at run time.',
    });
    Validations.of(this.taskDefinition.obtainExecutionRole()).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'The execution role pulls the image: ecr:GetAuthorizationToken has no resource-level permissions, so AWS requires Resource "*" for it.',
    });
  }
}
