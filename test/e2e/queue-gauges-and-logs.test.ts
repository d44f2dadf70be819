/**
 * A whole `serve all` process with the CLI beside it: a message for an unreachable smarthost is
 * held, released and retried through `tomlinson queue`, and /metrics must then count what
 * `queue list` lists (each retry leaves a stale generation of the queue message delayed in the
 * transport queue, which the gauges used to count, so an age alert fired with nothing queued).
 * The process's own JSON log lines must carry one value per key (a worker's child logger used to
 * write `"c":"worker",…,"c":"outbound"`).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startCli, type CliHarness } from '../cli/support.js';
import { freePorts } from '../support/ports.js';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 180_000 });

const root = new URL('../..', import.meta.url).pathname;
const USER = 'bob@example.test';
const PASSWORD = 'a long enough password';

let cli: CliHarness;
let server: ChildProcess | undefined;
let dead: Server | undefined;
let output = '';
let ports: { submission: number; health: number };

interface Listed {
  id: string;
  held: boolean;
}
interface Shown {
  message: { id: string; lockUntil: number };
  recipients: { attempts: number; lastReply?: string }[];
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    if (server?.exitCode !== null && server?.exitCode !== undefined)
      throw new Error(`server exited ${server.exitCode} while waiting for ${what}:\n${output.slice(-3000)}`);
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** Runs a queue command, again while the worker holds the message's delivery lock. */
async function queueCommand(...args: string[]): Promise<void> {
  await waitFor(`queue ${args.join(' ')}`, async () => {
    const r = await cli.run(['queue', ...args]);
    if (r.code === 0) return true;
    if (r.stderr.includes('being delivered right now')) return undefined;
    throw new Error(`tomlinson queue ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  });
}

/** Waits until the worker has made attempt number `n` and let go of the message. */
async function attempted(id: string, n: number): Promise<void> {
  await waitFor(`attempt ${n}`, async () => {
    const s = await cli.json<Shown>(['queue', 'show', id]);
    return s.recipients[0].attempts >= n && s.message.lockUntil < Date.now() ? true : undefined;
  });
}

/** The outbound gauges of /metrics. */
async function outboundGauges(): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${ports.health}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^tomlinson_queue_depth\{queue="outbound",state="(\w+)"\} (\S+)$/gm)) out[m[1]] = Number(m[2]);
  const age = /^tomlinson_queue_oldest_age_seconds\{queue="outbound"\} (\S+)$/m.exec(text);
  out.age = age ? Number(age[1]) : NaN;
  return out;
}

const live = (g: Record<string, number>) => (g.visible ?? 0) + (g.in_flight ?? 0) + (g.delayed ?? 0) + (g.held ?? 0);

beforeAll(async () => {
  cli = await startCli();
  await cli.ok(['domain', 'add', 'example.test']);
  await cli.ok(['user', 'add', USER, '--password-stdin'], { input: `${PASSWORD}\n` });
  // The smarthost: a port that accepts and closes at once, so every attempt fails temporarily.
  dead = createServer((s) => s.destroy());
  await new Promise<void>((r) => dead!.listen(0, '127.0.0.1', r));
  const deadPort = (dead.address() as { port: number }).port;
  const [smtp, submission, submissions, pop3, pop3s, proxy, health] = await freePorts(7);
  ports = { submission, health };
  server = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'all'], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      TOMLINSON_DATA_DIR: cli.dataDir,
      TOMLINSON_SMTP_PORT: String(smtp),
      TOMLINSON_SUBMISSION_PORT: String(submission),
      TOMLINSON_SUBMISSIONS_PORT: String(submissions),
      TOMLINSON_POP3_PORT: String(pop3),
      TOMLINSON_POP3S_PORT: String(pop3s),
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_WEB_PORT: '0',
      TOMLINSON_PROXY_PORT: String(proxy),
      TOMLINSON_HEALTH_PORT: String(health),
      TOMLINSON_SMARTHOST: `smtp://127.0.0.1:${deadPort}`,
      TOMLINSON_LOG_LEVEL: 'debug',
      TOMLINSON_LOG_PRETTY: 'false',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  server.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  await waitFor('/health', async () => ((await fetch(`http://127.0.0.1:${health}/health`)).status === 200 ? true : undefined), 120_000);
});

afterAll(async () => {
  if (server && server.exitCode === null) {
    server.kill('SIGKILL');
    await new Promise((r) => server!.once('close', r));
  }
  await new Promise((r) => (dead ? dead.close(r) : r(undefined)));
  await cli?.cleanup();
});

describe('outbound queue gauges after hold, release and retry', () => {
  it('count the messages `queue list` lists, and nothing once the queue is empty', async () => {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.submission,
      secure: false,
      requireTLS: true,
      auth: { user: USER, pass: PASSWORD },
      tls: { rejectUnauthorized: false },
    });
    await transport.sendMail({ from: USER, to: 'friend@remote.example', subject: 'gauges', text: 'hello' });
    transport.close();

    const [listed] = await waitFor('the queued message', async () => {
      const l = await cli.json<Listed[]>(['queue', 'list']);
      return l.length ? l : undefined;
    });
    await attempted(listed.id, 1);
    await queueCommand('hold', listed.id);
    await queueCommand('release', listed.id);
    await attempted(listed.id, 2);
    await queueCommand('retry', listed.id);
    await attempted(listed.id, 3);

    const list = await cli.json<Listed[]>(['queue', 'list']);
    expect(list).toHaveLength(1);
    const g = await outboundGauges();
    // One deferred message, waiting for its next attempt: one delayed, not one per generation.
    expect(live(g)).toBe(list.length);
    expect(g.delayed).toBe(1);
    expect(g.age).toBeGreaterThanOrEqual(0);

    await queueCommand('hold', listed.id);
    const held = await outboundGauges();
    expect(held.held).toBe(1);
    expect(live(held)).toBe(1);

    await queueCommand('delete', listed.id);
    expect(await cli.json<Listed[]>(['queue', 'list'])).toEqual([]);
    const empty = await outboundGauges();
    expect(live(empty)).toBe(0);
    expect(empty.age).toBe(0);
  });
});

describe('JSON log lines of the running process', () => {
  it('carry one value per key, and worker components are named worker.<job>', async () => {
    server!.kill('SIGTERM');
    await new Promise((r) => (server!.exitCode !== null ? r(undefined) : server!.once('close', r)));
    const lines = output.split('\n').filter((l) => l.startsWith('{'));
    expect(lines.length).toBeGreaterThan(5);
    // Python's json module reports every key of every object (JSON.parse keeps only the last).
    const check = spawnSync(
      'python3',
      [
        '-c',
        'import json,sys\nfor n,l in enumerate(sys.stdin):\n  def hook(p):\n    ks=[k for k,_ in p]\n    d=sorted({k for k in ks if ks.count(k)>1})\n    if d: print(n, d, l.strip()[:300])\n    return dict(p)\n  json.loads(l, object_pairs_hook=hook)',
      ],
      { input: lines.join('\n') + '\n', encoding: 'utf8' },
    );
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toBe('');
    const components = new Set(lines.map((l) => (JSON.parse(l) as { c?: string }).c));
    expect(components).toContain('worker.outbound');
  });
});
