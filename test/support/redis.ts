/**
 * A private Redis for a test: Debian's `redis-server`, started in the foreground on a free
 * 127.0.0.1 port with no persistence (no RDB snapshots, no append-only file) and its working
 * folder under a temp folder, stopped and removed by `stop()`. rspamd 3.x keeps its Bayes
 * statistics in Redis (test/support/rspamd.ts `redis`); the package's system service, if any, is
 * neither needed nor touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access } from 'node:fs/promises';
import { connect } from 'node:net';
import { freePorts } from './ports.js';
import { tempDir } from './tmp.js';

export const REDIS_BIN = process.env.TOMLINSON_REDIS ?? '/usr/bin/redis-server';

/** A running Redis. */
export interface Redis {
  /** host:port, the form rspamd's `servers` option takes. */
  address: string;
  port: number;
  stop(): Promise<void>;
  output(): string;
}

export async function startRedis(o: { startTimeoutMs?: number } = {}): Promise<Redis> {
  try {
    await access(REDIS_BIN);
  } catch {
    throw new Error(
      `redis-server not found at ${REDIS_BIN}: install Debian's package (apt-get install redis-server); the Bayes tests start their own Redis from it`,
    );
  }
  const dir = await tempDir('tomlinson-redis-');
  const [port] = await freePorts(1);
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir.path,
    '--daemonize',
    'no',
    '--loglevel',
    'warning',
  ];
  const child: ChildProcess = spawn(REDIS_BIN, args, { cwd: dir.path, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString('utf8')).slice(-10_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    await dir.remove();
  };
  const deadline = Date.now() + (o.startTimeoutMs ?? 20_000);
  for (;;) {
    if (await ping(port!)) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`redis-server did not answer PING on 127.0.0.1:${port}:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { address: `127.0.0.1:${port}`, port: port!, stop, output: () => out };
}

/** One inline `PING` (RESP accepts inline commands), answered `+PONG`; no client library needed. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = '';
    const end = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => end(false));
    s.once('error', () => end(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n')) end(got.startsWith('+PONG'));
    });
  });
}
