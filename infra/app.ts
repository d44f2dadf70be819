/**
 * The CDK app: the one infra file that reads CDK context or the environment. `cdk synth` works
 * offline (no credentials, no Docker): the stacks are environment-agnostic unless `account` and
 * `region` are given, and the container image is only built by `cdk deploy`.
 *
 * Context: `stage` (default dev), `account`/`region` (optional), `listeners=false` (state and
 * processing only, e.g. for LocalStack), `monitoring=false`, `nag=false` (skip cdk-nag),
 * `proxyPublicClients=<cidr>,<cidr>` (public client ranges of the proxy; default none, no public
 * proxy listener).
 */
import { App, Validations } from 'aws-cdk-lib';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stageConfig, type StageConfig } from './config.js';
import { buildTomlinson } from './tomlinson.js';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const app = new App();
const ctx = (key: string): string | undefined => {
  const v: unknown = app.node.tryGetContext(key);
  return v === undefined || v === null || v === '' ? undefined : String(v);
};
const flag = (key: string, dflt: boolean): boolean => {
  const v = ctx(key);
  return v === undefined ? dflt : !['false', '0', 'no', 'off'].includes(v.toLowerCase());
};

const account = ctx('account') ?? process.env.CDK_DEPLOY_ACCOUNT;
const region = ctx('region') ?? process.env.CDK_DEPLOY_REGION;
const overrides: Partial<StageConfig> = account || region ? { env: { account, region } } : {};
const publicClients = ctx('proxyPublicClients');
if (publicClients !== undefined)
  overrides.proxyPublicClients = publicClients
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
const config = stageConfig(ctx('stage') ?? 'dev', overrides);
const listeners = flag('listeners', true);

buildTomlinson(app, config, {
  projectRoot,
  listeners,
  monitoring: flag('monitoring', true),
  image: listeners ? ecs.ContainerImage.fromAsset(projectRoot, { file: 'containers/Dockerfile', platform: Platform.LINUX_ARM64 }) : undefined,
});
if (flag('nag', true)) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
app.synth();
