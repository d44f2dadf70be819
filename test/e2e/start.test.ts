/**
 * `npm start` is the user's door: it must boot every listener and worker on a fresh data folder,
 * answer the health endpoint, and stop cleanly on SIGTERM; bad configuration exits 2.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';

const root = new URL('../..', import.meta.url).pathname;
const started: ChildProcess[] = [];

afterAll(() => {
  for (const c of started) if (c.exitCode === null) c.kill('SIGKILL');
});

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    // 'close' waits for the output pipes too, i.e. for every process that holds them (npm's child).
    else child.once('close', (code, signal) => resolve({ code, signal }));
  });
}

async function waitForHealth(url: string, child: ChildProcess, ms: number): Promise<Response> {
  const until = Date.now() + ms;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`process exited with ${child.exitCode} before answering ${url}`);
    try {
      const r = await fetch(url);
      if (r.status === 200) return r;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`no healthy answer from ${url} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe('npm start (embedded default)', () => {
  it('boots every listener and worker, answers /health and /metrics, and stops cleanly on SIGTERM', async () => {
    const dir = await tempDir('tomlinson-start-');
    const [smtp, sub, subs, pop, pops, proxy, health] = await freePorts(7);
    const env = {
      ...process.env,
      TOMLINSON_DATA_DIR: join(dir.path, 'data'),
      TOMLINSON_SMTP_PORT: String(smtp),
      TOMLINSON_SUBMISSION_PORT: String(sub),
      TOMLINSON_SUBMISSIONS_PORT: String(subs),
      TOMLINSON_POP3_PORT: String(pop),
      TOMLINSON_POP3S_PORT: String(pops),
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_WEB_PORT: '0',
      TOMLINSON_PROXY_PORT: String(proxy),
      TOMLINSON_HEALTH_PORT: String(health),
      TOMLINSON_LOG_PRETTY: 'false',
    };
    // Exactly the README's command; `detached` gives it a process group we can signal whole.
    const child = spawn('npm', ['start'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    started.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));

    const res = await waitForHealth(`http://127.0.0.1:${health}/health`, child, 90_000);
    const body = (await res.json()) as { status: string; storage: Record<string, string>; components: Record<string, string> };
    expect(body.status).toBe('up');
    expect(body.storage.family).toBe('local');
    expect(body.components).toMatchObject({ smtp: 'up', pop3: 'up', proxy: 'up', 'worker:inbound': 'up', 'worker:outbound': 'up' });

    const metrics = await (await fetch(`http://127.0.0.1:${health}/metrics`)).text();
    expect(metrics).toMatch(/^tomlinson_queue_depth\{queue="inbound",state="visible"\} 0$/m);

    // The start-up message says where it listens and where the data lives.
    await new Promise((r) => setTimeout(r, 200));
    expect(out).toContain(`127.0.0.1:${smtp}`);
    expect(out).toContain(`127.0.0.1:${pop}`);
    expect(out).toContain(`127.0.0.1:${proxy}`);
    expect(out).toContain(join(dir.path, 'data'));
    expect(existsSync(join(dir.path, 'data'))).toBe(true);

    process.kill(-child.pid!, 'SIGTERM');
    const { code, signal } = await exitOf(child);
    // The whole group gets SIGTERM, as from a terminal or a service manager; npm may die of the
    // signal itself, so the 'stopped' line is main.ts's own word that it closed everything.
    expect(code === 0 || signal === 'SIGTERM').toBe(true);
    expect(out).toContain('"msg":"stopped"');
    expect(out).not.toContain('error while stopping');
    await dir.remove();
  }, 150_000);

  it('refuses a bad setting with a message naming it and exit code 2', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'all'], {
      cwd: root,
      env: { ...process.env, TOMLINSON_SMTP_PORT: 'twenty-five' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.push(child);
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const { code } = await exitOf(child);
    expect(code).toBe(2);
    expect(err).toContain('TOMLINSON_SMTP_PORT');
  }, 60_000);

  it('refuses a smarthost URL it cannot honour (tls=maybe) with exit code 2 before starting', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'all'], {
      cwd: root,
      env: { ...process.env, TOMLINSON_SMARTHOST: 'smtp://relay.example.test:587?tls=maybe' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.push(child);
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const { code } = await exitOf(child);
    expect(code).toBe(2);
    expect(err).toContain('TOMLINSON_SMARTHOST');
    expect(err).toContain('tls=maybe');
  }, 60_000);

  it('refuses an unknown component with exit code 2', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'jmap'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(child);
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const { code } = await exitOf(child);
    expect(code).toBe(2);
    expect(err).toContain('unknown component "jmap"');
  }, 60_000);
});
