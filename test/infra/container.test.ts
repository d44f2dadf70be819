/**
 * The container image without Docker: the Dockerfile's rules (slim Node 22 base, non-root USER,
 * HEALTHCHECK, EXPOSEd unprivileged ports) and its command line run against the esbuild bundle the
 * way the image runs it — ENTRYPOINT + CMD with the image's ENV — until the HEALTHCHECK command
 * passes, then a graceful SIGTERM stop.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HEALTH_PORT, LISTENERS } from '../../infra/config.js';
import { tempDir } from '../support/tmp.js';
import { ROOT } from './support.js';
import { freePorts } from '../support/ports.js';

interface Dockerfile {
  from: string[];
  env: Record<string, string>;
  workdir: string;
  user?: string;
  expose: number[];
  healthcheck?: string[];
  entrypoint: string[];
  cmd: string[];
  copies: string[];
}

/** Reads the instructions this test needs (continuation lines joined, comments dropped). */
function parseDockerfile(text: string): Dockerfile {
  const lines = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const d: Dockerfile = { from: [], env: {}, workdir: '/', expose: [], entrypoint: [], cmd: [], copies: [] };
  let finalStage: boolean;
  for (const line of lines) {
    const [, op, rest] = /^(\w+)\s+(.*)$/.exec(line) ?? [];
    switch (op?.toUpperCase()) {
      case 'FROM':
        d.from.push(rest!);
        finalStage = !/\sAS\s/i.test(rest!);
        if (finalStage) {
          d.env = {};
          d.copies = [];
        }
        break;
      case 'ENV':
        for (const m of rest!.matchAll(/(\w+)=("[^"]*"|\S+)/g)) d.env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
        break;
      case 'WORKDIR':
        d.workdir = rest!;
        break;
      case 'USER':
        d.user = rest!;
        break;
      case 'EXPOSE':
        d.expose.push(...rest!.split(/\s+/).map(Number));
        break;
      case 'HEALTHCHECK':
        d.healthcheck = JSON.parse(rest!.slice(rest!.indexOf('CMD') + 3).trim()) as string[];
        break;
      case 'ENTRYPOINT':
        d.entrypoint = JSON.parse(rest!) as string[];
        break;
      case 'CMD':
        d.cmd = JSON.parse(rest!) as string[];
        break;
      case 'COPY':
        if (!rest!.startsWith('--from')) d.copies.push(rest!);
        break;
    }
  }
  return d;
}

const dockerfile = parseDockerfile(readFileSync(join(ROOT, 'containers/Dockerfile'), 'utf8'));

async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

describe('containers/Dockerfile', () => {
  it('builds from the bundle on a slim Node 22 base as a non-root user with a health check', () => {
    expect(dockerfile.from.at(-1)).toMatch(/^node:22[\w.-]*-slim$/);
    expect(dockerfile.user).toBeDefined();
    expect(['root', '0', '0:0']).not.toContain(dockerfile.user);
    expect(dockerfile.healthcheck?.join(' ')).toContain('/health');
    expect(dockerfile.copies.every((c) => c.startsWith('dist/'))).toBe(true);
    const ports = [...Object.values(LISTENERS).map((l) => l.containerPort), HEALTH_PORT];
    expect([...dockerfile.expose].sort()).toEqual([...new Set(ports)].sort());
    for (const p of dockerfile.expose) expect(p).toBeGreaterThanOrEqual(1024);
    expect(dockerfile.entrypoint).toEqual(['node', 'dist/containers/main.mjs']);
  });

  it('keeps everything but the bundle and the lockfile out of the build context', () => {
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
    expect(ignore).toMatch(/^\*$/m);
    expect(ignore).toContain('!dist/containers/**');
    expect(ignore).not.toMatch(/^!node_modules/m);
  });

  it('lets into the build context every folder the Dockerfile copies from it', () => {
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
    const allowed = ignore
      .split('\n')
      .filter((l) => l.startsWith('!'))
      .map((l) => l.slice(1).replace(/\/?\*\*$/, ''));
    const sources = dockerfile.copies.map((c) => c.split(/\s+/)[0]!.replace(/\/$/, ''));
    expect(sources).toContain('dist/webmail');
    for (const c of sources) expect(allowed, `COPY ${c}`).toContain(c);
  });
});

describe('the image command line on the bundle', () => {
  let image: { path: string; remove: () => Promise<void> };
  let child: ChildProcess | undefined;
  let output = '';

  beforeAll(async () => {
    // `npm run build`, as the Dockerfile expects it to have run.
    const r = spawnSync(process.execPath, [join(ROOT, 'node_modules/tsx/dist/cli.mjs'), join(ROOT, 'scripts/build.ts')], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 170_000,
    });
    expect(r.status, r.stderr).toBe(0);
    // Lay out the image's /app: the bundle where COPY puts it, and the native module beside it.
    image = await tempDir('tomlinson-image-');
    cpSync(join(ROOT, 'dist/containers'), join(image.path, 'dist/containers'), { recursive: true });
    mkdirSync(join(image.path, 'node_modules'));
    for (const m of ['better-sqlite3', 'bindings', 'file-uri-to-path']) {
      if (existsSync(join(ROOT, 'node_modules', m))) symlinkSync(join(ROOT, 'node_modules', m), join(image.path, 'node_modules', m));
    }
  }, 180_000);

  afterAll(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await image?.remove();
  });

  it('starts `serve all`, passes its HEALTHCHECK and stops on SIGTERM', { timeout: 90_000 }, async () => {
    const data = join(image.path, 'scratch');
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: image.path, ...dockerfile.env };
    // Loopback only and free ports on a shared test machine; everything else as in the image.
    Object.assign(env, {
      TOMLINSON_LISTEN_HOST: '127.0.0.1',
      TOMLINSON_HEALTH_HOST: '127.0.0.1',
      TOMLINSON_DATA_DIR: data,
      TOMLINSON_HEALTH_PORT: String(await freePort()),
    });
    for (const l of Object.values(LISTENERS)) env[l.env] = String(await freePort());
    const [cmd, ...args] = [...dockerfile.entrypoint, ...dockerfile.cmd];
    expect(dockerfile.cmd).toEqual(['serve', 'all']);
    child = spawn(cmd === 'node' ? process.execPath : cmd!, args, { cwd: image.path, env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (output += b.toString()));

    const [hcCmd, ...hcArgs] = dockerfile.healthcheck!;
    const deadline = Date.now() + 60_000;
    let healthy = false;
    while (!healthy && Date.now() < deadline) {
      expect(child.exitCode, output).toBeNull();
      const hc = spawnSync(hcCmd === 'node' ? process.execPath : hcCmd!, hcArgs, { env, timeout: 10_000 });
      healthy = hc.status === 0;
      if (!healthy) await new Promise((r) => setTimeout(r, 250));
    }
    expect(healthy, output).toBe(true);
    const res = await fetch(`http://127.0.0.1:${env.TOMLINSON_HEALTH_PORT}/health`);
    expect(res.status).toBe(200);
    const smtp = await fetch(`http://127.0.0.1:${env.TOMLINSON_HEALTH_PORT}/metrics`);
    expect(await smtp.text()).toContain('tomlinson_');

    const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited, output).toBe(0);
    // Every log line is JSON (TOMLINSON_LOG_PRETTY=false in the image).
    const lines = output.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(() => JSON.parse(l) as unknown, l).not.toThrow();
  });
});
