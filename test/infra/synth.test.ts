/**
 * `npx cdk synth` as a user runs it: offline, without AWS credentials and without a Docker engine.
 * The Lambda handlers are really bundled by the local esbuild and the bundle loads in Node; the
 * container image is only declared (built by `cdk deploy`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from './support.js';

const out = mkdtempSync(join(tmpdir(), 'tomlinson-synth-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe('cdk synth', () => {
  it('synthesizes every stack offline with no credentials and no Docker', { timeout: 240_000 }, async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AWS_') && !k.startsWith('CDK_')) env[k] = v;
    Object.assign(env, {
      AWS_CONFIG_FILE: join(out, 'no-aws-config'),
      AWS_SHARED_CREDENTIALS_FILE: join(out, 'no-aws-credentials'),
      AWS_EC2_METADATA_DISABLED: 'true',
      // No docker on PATH, whatever the machine has.
      CDK_DOCKER: join(out, 'no-docker'),
    });
    const r = spawnSync('npx', ['cdk', 'synth', '--quiet', '--no-notices', '--no-version-reporting', '-o', join(out, 'cdk.out')], {
      cwd: ROOT,
      env,
      encoding: 'utf8',
      timeout: 220_000,
    });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);

    const dir = join(out, 'cdk.out');
    const stacks = ['State', 'Processing', 'Listeners', 'Monitoring'].map((s) => `Tomlinson-dev-${s}`);
    for (const s of stacks) expect(existsSync(join(dir, `${s}.template.json`)), s).toBe(true);

    // Every Lambda asset (inbound, outbound, sweep) holds a real esbuild bundle that Node can load.
    const processing = JSON.parse(readFileSync(join(dir, 'Tomlinson-dev-Processing.template.json'), 'utf8')) as {
      Resources: Record<string, { Type: string; Metadata?: Record<string, string> }>;
    };
    const fns = Object.values(processing.Resources).filter((x) => x.Type === 'AWS::Lambda::Function');
    expect(fns).toHaveLength(3);
    for (const fn of fns) {
      const assetDir = join(dir, fn.Metadata!['aws:asset:path']!);
      const files = readdirSync(assetDir);
      expect(files).toContain('index.mjs');
      expect(statSync(join(assetDir, 'index.mjs')).size).toBeGreaterThan(50_000);
      const mod = (await import(pathToFileURL(join(assetDir, 'index.mjs')).href)) as { handler?: unknown };
      expect(typeof mod.handler).toBe('function');
    }

    // The image is declared from containers/Dockerfile for arm64, not built.
    const assets = JSON.parse(readFileSync(join(dir, 'Tomlinson-dev-Listeners.assets.json'), 'utf8')) as {
      dockerImages: Record<string, { source: { dockerFile: string; platform?: string } }>;
    };
    const images = Object.values(assets.dockerImages);
    expect(images).toHaveLength(1);
    expect(images[0]!.source).toMatchObject({ dockerFile: 'containers/Dockerfile', platform: 'linux/arm64' });
  });
});
