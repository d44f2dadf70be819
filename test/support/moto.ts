/**
 * Test harness for the aws storage family: starts moto's server (a real S3 / DynamoDB / SQS
 * wire-protocol server, Python) on 127.0.0.1 and a free port, creates the buckets, table and
 * queues with scripts/aws-resources.ts, and hands back the environment that `loadConfig` opens.
 *
 * The AWS SDK reads endpoint and credentials from process.env itself, so by default the AWS_*
 * part of the environment is also set on process.env until stop() (vitest runs each test file
 * in its own process, so this does not leak between files).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { ensureAwsResources } from '../../scripts/aws-resources.js';
import { freePorts } from './ports.js';

/** What to start. */
export interface MotoOptions {
  /** Redrive maxReceiveCount of the inbound/outbound queues. @default 5 */
  maxReceives?: number;
  /** Also set the AWS_* variables on process.env (restored by stop). @default true */
  applyToProcessEnv?: boolean;
  /** Where to say which emulator runs. @default a line on stderr */
  say?: (line: string) => void;
}

/** A running emulator with its resources. */
export interface AwsTestBackend {
  /** AWS_* and TOMLINSON_* variables: pass to loadConfig. */
  env: Record<string, string>;
  /** The emulator's base URL. */
  endpoint: string;
  /** Which emulator this is, e.g. "moto 5.2.1". */
  emulator: string;
  /** Stops the emulator (its data is in memory and goes with it). */
  stop(): Promise<void>;
}

const MISSING =
  "The aws storage tests need moto's server (moto >= 5, with flask and flask-cors) importable by python3 on PATH. " +
  "It ships in this project's machine image; Debian 12 does not package moto, so elsewhere install it with pip " +
  '(pip install "moto[server]>=5.2"), or run the suite against LocalStack or an account with ' +
  'TOMLINSON_CONTRACT_AWS=external (see README.md).';

/** moto.server with its check-then-write races closed (see the file's docstring). */
const MOTO_MAIN = fileURLToPath(new URL('./aws-moto-server.py', import.meta.url));

async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

/** How long moto may take to start: about a second on an idle machine, far more on a loaded CI box. */
const READY_TIMEOUT_MS = 45_000;

/** Waits until the server answers HTTP, or fails with its output when it exits or time is up. */
async function waitReady(child: ChildProcess, url: string, output: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null)
      throw new Error(`moto server exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`moto server did not answer ${url} within ${READY_TIMEOUT_MS / 1000} s:\n${output()}`);
}

async function stopChild(child: ChildProcess): Promise<void> {
  // pid is undefined when spawning failed (no python3): nothing runs, no 'exit' will come.
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts moto's server (`python3 -m moto.server -H 127.0.0.1 -p PORT`, through aws-moto-server.py)
 * and creates the resources. Throws with what to install when python3 or moto is missing.
 */
export async function startMoto(options: MotoOptions = {}): Promise<AwsTestBackend> {
  const say = options.say ?? ((line: string) => process.stderr.write(`${line}\n`));
  let child: ChildProcess | undefined;
  let port = 0;
  let output = '';
  for (let attempt = 0; attempt < 3 && !child; attempt++) {
    port = await freePort();
    output = '';
    const c = spawn('python3', [MOTO_MAIN, '-H', '127.0.0.1', '-p', String(port)], {
      // moto exits when this pipe closes, so a test process that dies never leaves it behind.
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONUNBUFFERED: '1', TOMLINSON_MOTO_EXIT_WITH_STDIN: '1' },
    });
    const keep = (b: Buffer) => {
      // Keep only the tail: moto logs one line per request.
      output = (output + b.toString()).slice(-4000);
    };
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    c.once('error', (e) => keep(Buffer.from(`${e.message}\n`)));
    try {
      await waitReady(c, `http://127.0.0.1:${port}/moto-api/`, () => output);
      child = c;
    } catch (e) {
      await stopChild(c);
      if (/No module named|ENOENT/.test(output)) throw new Error(MISSING + `\n${output}`, { cause: e });
      // Someone took the port between our probe and moto's bind: try another one.
      if (attempt === 2 || !/in use/i.test(output)) throw e;
    }
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const emulator = /^moto [\d.]+\S*/m.exec(output)?.[0] ?? 'moto';
  say(`[aws-harness] using ${emulator} server at ${endpoint} (pid ${child!.pid})`);
  const killOnExit = () => child?.kill('SIGKILL');
  process.once('exit', killOnExit);

  const awsEnv = {
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_ENDPOINT_URL: endpoint,
    AWS_S3_FORCE_PATH_STYLE: '1',
  };
  const previous: Record<string, string | undefined> = {};
  const apply = options.applyToProcessEnv ?? true;
  const restore = () => {
    for (const [k, v] of Object.entries(previous)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  try {
    if (apply) {
      for (const [k, v] of Object.entries(awsEnv)) {
        previous[k] = process.env[k];
        process.env[k] = v;
      }
      // Per-service endpoints would win over AWS_ENDPOINT_URL; the emulator serves all three.
      for (const k of ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL_DYNAMODB', 'AWS_ENDPOINT_URL_SQS', 'AWS_PROFILE', 'AWS_SESSION_TOKEN']) {
        previous[k] = process.env[k];
        delete process.env[k];
      }
    }
    const resources = await ensureAwsResources({
      prefix: `tomlinson-test-${randomBytes(4).toString('hex')}`,
      maxReceives: options.maxReceives ?? 5,
      region: awsEnv.AWS_REGION,
      endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    });
    return {
      env: { ...awsEnv, ...resources },
      endpoint,
      emulator,
      async stop() {
        process.removeListener('exit', killOnExit);
        restore();
        await stopChild(child!);
      },
    };
  } catch (e) {
    restore();
    process.removeListener('exit', killOnExit);
    await stopChild(child!);
    throw e;
  }
}
