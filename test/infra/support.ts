/**
 * Builds the CDK app for the infra tests the way infra/app.ts does, with cdk.json's context, in a
 * temporary output folder, and by default without running esbuild (the bundling itself is covered
 * by the `cdk synth` test).
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stageConfig, type StageConfig } from '../../infra/config.js';
import { buildTomlinson, type BuildOptions, type TomlinsonStacks } from '../../infra/tomlinson.js';

/** The repository root. */
export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** The feature flags and defaults of cdk.json, so tests synthesize what `cdk synth` does. */
export function cdkJsonContext(): Record<string, unknown> {
  return (JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')) as { context: Record<string, unknown> }).context;
}

const outdirs: string[] = [];

/** Removes the output folders made by testApp. */
export function cleanOutdirs(): void {
  for (const d of outdirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** An App with the stacks of `stage` (plus overrides); `nag` adds cdk-nag's AwsSolutions checks,
 * which make synth throw on any unacknowledged finding. */
export function testApp(
  overrides: Partial<StageConfig> = {},
  options: { stage?: string; bundling?: boolean; nag?: boolean } & Partial<BuildOptions> = {},
): { app: App; stacks: TomlinsonStacks; config: StageConfig } {
  const outdir = mkdtempSync(join(tmpdir(), 'tomlinson-cdk-'));
  outdirs.push(outdir);
  const app = new App({ outdir, context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': options.bundling ? ['**'] : [] } });
  const config = stageConfig(options.stage ?? 'dev', overrides);
  const stacks = buildTomlinson(app, config, {
    projectRoot: ROOT,
    // A registry image keeps these tests free of asset staging; app.ts uses fromAsset.
    image: ecs.ContainerImage.fromRegistry('tomlinson:test'),
    ...options,
  });
  if (options.nag) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, stacks, config };
}

/** The cdk-nag entries of the app's validation report (empty when nothing was found). */
export function nagFindings(app: App): unknown[] {
  const assembly = app.synth();
  const report = JSON.parse(readFileSync(join(assembly.directory, 'validation-report.json'), 'utf8')) as { pluginReports?: unknown[] };
  // The report lists only plugins that found something.
  return (report.pluginReports ?? []).filter((r) => JSON.stringify(r).includes('AwsSolutions'));
}
