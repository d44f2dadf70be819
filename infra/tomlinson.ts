/**
 * Builds the stacks of one stage into an App. infra/app.ts (the only file that reads the
 * environment or CDK context) calls it; the infra tests call it with their own options.
 */
import { Duration, Tags, type App, type Environment } from 'aws-cdk-lib';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import type { StageConfig } from './config.js';
import { DnsStack, addDnsOutputs } from './stacks/dns.js';
import { ListenersStack } from './stacks/listeners.js';
import { MonitoringStack } from './stacks/monitoring.js';
import { ProcessingStack } from './stacks/processing.js';
import { StateStack } from './stacks/state.js';

/** Options of buildTomlinson. */
export interface BuildOptions {
  /** The repository root (package.json, functions/, containers/). */
  projectRoot: string;
  /** The listeners' container image; required unless `listeners` is false. */
  image?: ecs.ContainerImage;
  /** Deploy VPC, ECS and NLB. False for LocalStack/moto, which have no ECS or NLB. @default true */
  listeners?: boolean;
  /** @default true */
  monitoring?: boolean;
}

/** The stacks of one stage, by role. */
export interface TomlinsonStacks {
  state: StateStack;
  processing: ProcessingStack;
  listeners?: ListenersStack;
  dns?: DnsStack;
  monitoring?: MonitoringStack;
}

/** Adds the stacks `Tomlinson-<stage>-{State,Processing,Listeners,Dns,Monitoring}` to `app` (Dns only
 * with a hosted zone). */
export function buildTomlinson(app: App, c: StageConfig, options: BuildOptions): TomlinsonStacks {
  const env: Environment | undefined = c.env;
  const name = (role: string): string => `Tomlinson-${c.stage}-${role}`;
  const base = { env, description: `Tomlinson mail system and caching proxy (${c.stage})` };

  // AWS requires the event source queue's visibility timeout to be at least the function
  // timeout, and recommends six times it so that retries of a throttled batch do not redeliver.
  const queueVisibility = { inbound: Duration.seconds(c.lambda.timeoutSeconds * 6), outbound: Duration.seconds(c.lambda.outboundTimeoutSeconds * 6) };
  const state = new StateStack(app, name('State'), { ...base, stackName: name('State'), config: c, queueVisibility, terminationProtection: c.stage !== 'dev' });
  const processing = new ProcessingStack(app, name('Processing'), {
    ...base,
    stackName: name('Processing'),
    config: c,
    state,
    projectRoot: options.projectRoot,
  });
  const out: TomlinsonStacks = { state, processing };

  if (options.listeners ?? true) {
    if (!options.image) throw new Error('buildTomlinson: listeners need a container image');
    out.listeners = new ListenersStack(app, name('Listeners'), {
      ...base,
      stackName: name('Listeners'),
      config: c,
      state,
      image: options.image,
      projectRoot: options.projectRoot,
    });
    const natAddresses = out.listeners.vpc.publicSubnets
      .map((s) => s.node.tryFindChild('EIP') as ec2.CfnEIP | undefined)
      .filter((e): e is ec2.CfnEIP => e !== undefined)
      .map((e) => e.ref);
    const publicAddresses = out.listeners.addresses.map((a) => a.ref);
    addDnsOutputs(out.listeners, c, publicAddresses, natAddresses);
    if (c.hostedZone) {
      out.dns = new DnsStack(app, name('Dns'), { ...base, stackName: name('Dns'), config: c, publicAddresses, outboundAddresses: natAddresses });
    }
  }
  if (options.monitoring ?? true) {
    out.monitoring = new MonitoringStack(app, name('Monitoring'), {
      ...base,
      stackName: name('Monitoring'),
      config: c,
      state,
      processing,
      listeners: out.listeners,
    });
  }
  // KMS keys are left untagged: moto's CloudFormation (the offline deploy test) fails on KMS tags.
  const tagOptions = { excludeResourceTypes: ['AWS::KMS::Key'] };
  for (const s of Object.values(out)) {
    Tags.of(s).add('project', 'tomlinson', tagOptions);
    Tags.of(s).add('stage', c.stage, tagOptions);
  }
  return out;
}
