/**
 * The container as Fargate runs it, without a Docker engine: the image's bundle (built with
 * scripts/build.ts's own esbuild options into a temporary /app), started with the synthesised
 * task definition's command and environment (the listeners stack's SMTP task: aws family), as
 * uid/gid 1000 with no supplementary groups (setpriv), in a mount namespace (unshare) where every
 * file system is remounted read-only and only the scratch folder is a writable tmpfs, as with
 * `readonlyRootFilesystem` and the scratch volume. It must answer GET /health with 200 against
 * moto, and a write outside the scratch folder must fail.
 *
 * What differs from Fargate, and why: the host's root file system stands in for the image's (its
 * Node 20 for the image's 22; better-sqlite3 linked from the checkout as the image installs it); the scratch volume is mounted at a
 * temporary path, so the task's `/scratch/...` values are rewritten to it; listen addresses are
 * 127.0.0.1 and ports free ones (a shared test machine); AWS_* point at moto instead of the task
 * role. Needs root (for unshare and mount), as the test machine and CI are.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from 'aws-cdk-lib/assertions';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { containerBuildOptions } from '../../scripts/build.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { cleanOutdirs, ROOT, testApp } from './support.js';

const isRoot = process.getuid?.() === 0;
const hasTools = ['unshare', 'setpriv', 'mount', 'findmnt'].every((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);

interface ContainerDef {
  Command: string[];
  User: string;
  ReadonlyRootFilesystem: boolean;
  MountPoints: { ContainerPath: string; ReadOnly: boolean; SourceVolume: string }[];
  Environment: { Name: string; Value: unknown }[];
}

/** The SMTP task's container definition from the synthesised listeners stack. */
function smtpContainer(): ContainerDef {
  const { stacks } = testApp();
  const defs = Template.fromStack(stacks.listeners!).findResources('AWS::ECS::TaskDefinition');
  const containers = Object.values(defs).map((r) => (r as { Properties: { ContainerDefinitions: ContainerDef[] } }).Properties.ContainerDefinitions[0]!);
  const smtp = containers.find((c) => c.Command.join(' ') === 'serve smtp');
  if (!smtp) throw new Error(`no "serve smtp" task in the listeners stack (${containers.map((c) => c.Command.join(' ')).join(', ')})`);
  return smtp;
}

/** ENV of the Dockerfile's final stage (NODE_ENV, NODE_OPTIONS, ...), which the task inherits. */
function dockerfileEnv(): Record<string, string> {
  const text = readFileSync(join(ROOT, 'containers/Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const last = text.slice(text.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const line of last.split('\n').filter((l) => /^ENV\s/.test(l)))
    for (const m of line.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
  return env;
}

/** Writes attempted by uid 1000 inside the namespace before the server starts: path -> error code or 'ok'. */
const PROBE = `
import { writeFileSync } from 'node:fs';
const out = {};
for (const p of process.argv.slice(2)) {
  try { writeFileSync(p, 'x'); out[p] = 'ok'; } catch (e) { out[p] = e.code; }
}
process.stdout.write('PROBE ' + JSON.stringify(out) + '\\n');
`;

describe.skipIf(!isRoot || !hasTools)('the container as Fargate runs it (read-only root, uid 1000, scratch volume)', () => {
  let backend: AwsTestBackend;
  let dir: { path: string; remove: () => Promise<void> };
  let child: ChildProcess | undefined;
  let output = '';

  beforeAll(async () => {
    backend = await startMoto({ applyToProcessEnv: false });
    dir = await tempDir('tomlinson-fargate-');
    // The image's /app: the bundle where the Dockerfile's COPY puts it, readable by uid 1000.
    await build(containerBuildOptions(join(dir.path, 'app', 'dist')));
    // ...and the one native module the Dockerfile installs beside it.
    mkdirSync(join(dir.path, 'app', 'node_modules'));
    for (const m of ['better-sqlite3', 'bindings', 'file-uri-to-path']) {
      if (existsSync(join(ROOT, 'node_modules', m))) symlinkSync(join(ROOT, 'node_modules', m), join(dir.path, 'app', 'node_modules', m));
    }
    mkdirSync(join(dir.path, 'scratch'));
    writeFileSync(join(dir.path, 'probe.mjs'), PROBE);
    chmodSync(dir.path, 0o755);
  }, 180_000);

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
    await backend?.stop();
    await dir?.remove();
    cleanOutdirs();
  });

  it('answers /health with 200 as uid 1000 and cannot write outside its scratch volume', { timeout: 120_000 }, async () => {
    const task = smtpContainer();
    // What the task definition promises, which this test then runs under.
    expect(task.User).toBe('1000:1000');
    expect(task.ReadonlyRootFilesystem).toBe(true);
    expect(task.MountPoints).toEqual([{ ContainerPath: '/scratch', ReadOnly: false, SourceVolume: 'scratch' }]);

    const scratch = join(dir.path, 'scratch');
    const env: Record<string, string> = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: scratch, ...dockerfileEnv() };
    const ports = await freePorts(8);
    for (const { Name, Value } of task.Environment) {
      if (typeof Value === 'string') {
        // The scratch volume sits at a temporary path here; listen on loopback, on free ports.
        if (Value === '/scratch' || Value.startsWith('/scratch/')) env[Name] = scratch + Value.slice('/scratch'.length);
        else if (Value === '0.0.0.0') env[Name] = '127.0.0.1';
        else if (/_PORT$/.test(Name)) env[Name] = String(ports.pop());
        else env[Name] = Value;
      } else {
        // A resource of the state stack (Fn::ImportValue): moto's resource of the same setting.
        const local = backend.env[Name];
        expect(local, `${Name} (${JSON.stringify(Value)}) has no moto counterpart`).toBeDefined();
        env[Name] = local!;
      }
    }
    for (const k of ['AWS_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL', 'AWS_S3_FORCE_PATH_STYLE']) env[k] = backend.env[k]!;
    expect(env.TOMLINSON_STORAGE).toBe('aws');
    expect(env.TOMLINSON_DATA_DIR).toBe(join(scratch, 'data'));

    const app = join(dir.path, 'app');
    const outside = [join(app, 'written-by-task'), join(dir.path, 'written-by-task'), '/tmp/tomlinson-written-by-task', '/written-by-task'];
    const inside = join(scratch, 'written-by-task');
    const asNode = 'setpriv --reuid=1000 --regid=1000 --clear-groups';
    const script = [
      'set -e',
      // Every mount read-only in this namespace (its own copies: the host's stay as they are).
      'findmnt -rn -o TARGET | while read -r m; do case "$m" in /proc*|/sys*|/dev*) continue;; esac; mount -o remount,ro,bind "$m"; done',
      `mount -t tmpfs -o size=64m,mode=0755,uid=1000,gid=1000 scratch ${scratch}`,
      `${asNode} node ${join(dir.path, 'probe.mjs')} ${[...outside, inside].join(' ')}`,
      `cd ${app}`,
      `exec ${asNode} node dist/containers/main.mjs ${task.Command.join(' ')}`,
    ].join('\n');
    child = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-20_000)));
    child.stderr!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-20_000)));

    const url = `http://127.0.0.1:${env.TOMLINSON_HEALTH_PORT}/health`;
    const deadline = Date.now() + 60_000;
    let status = 0;
    while (status !== 200 && Date.now() < deadline) {
      expect(child.exitCode, output).toBeNull();
      status = await fetch(url, { signal: AbortSignal.timeout(2000) }).then(
        (r) => r.arrayBuffer().then(() => r.status),
        () => 0,
      );
      if (status !== 200) await new Promise((r) => setTimeout(r, 250));
    }
    expect(status, output).toBe(200);

    const probe = JSON.parse(/^PROBE (.*)$/m.exec(output)?.[1] ?? 'null') as Record<string, string> | null;
    expect(probe, output).not.toBeNull();
    for (const p of outside) expect(['EROFS', 'EACCES']).toContain(probe![p]);
    expect(probe![inside]).toBe('ok');
    // unshare, sh and setpriv exec one another: the process is the server, running as 1000:1000.
    const ids = spawnSync('ps', ['-o', 'uid=,gid=,comm=', '-p', String(child.pid)], { encoding: 'utf8' })
      .stdout.trim()
      .split(/\s+/);
    expect(ids).toEqual(['1000', '1000', 'node']);

    const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited, output).toBe(0);
  });
});
