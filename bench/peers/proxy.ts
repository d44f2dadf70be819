/**
 * Proxy side by side (issue 6, "Speed"; issue 9): our proxy (`containers/main.ts serve proxy` on
 * local storage, in a process of its own), Squid and nginx proxy_cache, all started cold for each
 * run on high ports of 127.0.0.1 with their configs from bench/peers/; each scenario's measured
 * time is cut into 2 s slices that take turns between the servers (see SLICE_SECONDS). wrk with
 * 50 keep-alive connections sends absolute-form requests (Lua scripts from `wrkLua`): 1 KB and
 * 100 KB memory hits, 1 KB misses (unique URLs) and 1 KB revalidations (origin answers 304).
 * The origin alone is measured too, as this machine's yardstick.
 */
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../core/config.js';
import { originCounts, startOrigin, type OriginCounts } from './origin.js';
import { OURS, summarize, type MemorySample, type ProtocolReport, type Sample } from './report.js';
import {
  cpuMicros,
  fillTemplate,
  freePort,
  median,
  onCleanup,
  parseWrk,
  PROXY_SCENARIOS,
  run,
  stopChild,
  turnOrder,
  waitListening,
  watchPeakMemory,
  wrkLua,
  type ProxyScenario,
} from './util.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '..', '..');

/** Options of the proxy comparison. */
export interface ProxyPeersOptions {
  /** Runs of every scenario on every server. @default 3 */
  runs?: number;
  /** Seconds measured per server and scenario in each run, in slices of SLICE_SECONDS. @default 10 */
  duration?: number;
  /** Seconds of the unmeasured wrk run before each measured one (fills the cache, warms the JIT). @default 2 */
  warmup?: number;
  /** wrk connections. @default 50 */
  connections?: number;
  /** Scenarios to run. @default ['hit1k', 'hit100k', 'miss', 'reval'] */
  scenarios?: ProxyScenario[];
  /** Servers to run. @default ['tomlinson', 'squid', 'nginx'] */
  servers?: string[];
  /** Progress lines. */
  say?: (s: string) => void;
}

/**
 * Seconds of one slice of a measured run. On this kind of shared virtual machine the same server
 * runs at one of two speeds for tens of seconds at a time (CPU per request of every process,
 * user and system time alike, about 1.5 times higher in the slow spells): run one after the
 * other, whole 10 s runs landed on different spells. Slices of 2 s taking turns put every server
 * through the same spells.
 */
const SLICE_SECONDS = 2;

interface Server {
  pid: () => number | undefined;
  port: number;
  stop: () => Promise<void>;
}

async function startOurs(dir: string): Promise<Server> {
  const port = await freePort();
  const env = {
    ...process.env,
    UV_THREADPOOL_SIZE: '16', // as `npm start` sets it
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_PROXY_PORT: String(port),
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_LOG_LEVEL: 'warn',
    TOMLINSON_LOG_PRETTY: 'false',
  };
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'containers', 'main.ts'), 'serve', 'proxy'], {
    env,
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const stop = onCleanup(() => stopChild(child));
  await waitListening(child, port, 'tomlinson proxy').catch(async (e: Error) => {
    await stop();
    throw e;
  });
  return { pid: () => child.pid, port, stop };
}

async function startSquid(dir: string): Promise<Server> {
  const port = await freePort();
  await chmod(dir, 0o777); // Squid drops to the proxy user and writes its log here.
  await writeFile(join(dir, 'squid.conf'), fillTemplate(await readFile(join(HERE, 'squid.conf'), 'utf8'), { DIR: dir, PORT: port }));
  // -N: no daemon, one process we can watch and stop; -d1: startup errors to stderr.
  // -N: no daemon, one process we can watch and stop.
  const child = spawn('/usr/sbin/squid', ['-N', '-f', join(dir, 'squid.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  const stop = onCleanup(() => stopChild(child, 3000));
  await waitListening(child, port, 'squid').catch(async (e: Error) => {
    await stop();
    throw new Error(`${e.message}\n${await readFile(join(dir, 'cache.log'), 'utf8').catch(() => '')}`);
  });
  return { pid: () => child.pid, port, stop };
}

async function startNginx(dir: string, originPort: number): Promise<Server> {
  const port = await freePort();
  await chmod(dir, 0o755);
  await mkdir(join(dir, 'cache'), { recursive: true });
  const conf = join(dir, 'nginx.conf');
  await writeFile(
    conf,
    fillTemplate(await readFile(join(HERE, 'nginx.conf'), 'utf8'), {
      DIR: dir,
      PORT: port,
      ORIGIN: `127.0.0.1:${originPort}`,
      USER: process.getuid?.() === 0 ? 'www-data' : 'nobody',
    }),
  );
  const child = spawn('/usr/sbin/nginx', ['-c', conf, '-p', dir, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  // nginx's master stops its workers on SIGTERM.
  const stop = onCleanup(() => stopChild(child, 3000));
  await waitListening(child, port, 'nginx', 30_000).catch(async (e: Error) => {
    await stop();
    throw e;
  });
  return { pid: () => child.pid, port, stop };
}

async function wrk(target: string, connections: number, seconds: number, script?: string) {
  const args = ['-t2', `-c${connections}`, `-d${seconds}s`, '--latency', ...(script ? ['-s', script] : []), target];
  return parseWrk(await run('wrk', args, { timeoutMs: (seconds + 30) * 1000 }));
}

/**
 * What the origin saw during a measured run, against what the scenario means: hits must not reach
 * it (under 1% of the client's requests), misses must all reach it, revalidations must reach it
 * as conditional requests answered 304. `bad` marks a server that did not do what the row claims.
 */
export function originCheck(scenario: ProxyScenario, before: OriginCounts, after: OriginCounts, requests: number): { text: string; bad: boolean } {
  const d = (k: keyof OriginCounts) => after[k] - before[k];
  const pct = (x: number) => `${requests ? ((100 * x) / requests).toFixed(1) : '0'}%`;
  if (scenario === 'hit1k' || scenario === 'hit100k') {
    const n = d(scenario);
    return { text: `${n} fetches for ${requests} requests (${pct(n)})`, bad: n > requests * 0.01 };
  }
  if (scenario === 'miss') {
    const n = d('miss');
    return { text: `${n} fetches for ${requests} requests (${pct(n)})`, bad: n < requests * 0.99 };
  }
  const [c304, c200] = [d('reval304'), d('reval200')];
  const counts = `${c304} conditional requests answered 304 and ${c200} full fetches for ${requests} client requests`;
  if (c200 > requests * 0.01) return { text: `${counts}: full fetches, not revalidations`, bad: true };
  // Requests that arrive while a revalidation of the same URL is in flight may share its 304
  // (Squid's collapsed_forwarding, nginx's proxy_cache_lock): fewer origin trips, stated here.
  if (c304 < requests * 0.5) return { text: `${counts}: concurrent revalidations collapsed into one`, bad: true };
  return { text: counts, bad: false };
}

/** Runs the comparison and returns its report. */
export async function runProxyPeers(options: ProxyPeersOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 3;
  const duration = options.duration ?? 10;
  const warmup = options.warmup ?? 2;
  const connections = options.connections ?? 50;
  const scenarios = options.scenarios ?? [...PROXY_SCENARIOS];
  const servers = options.servers ?? [OURS, 'squid', 'nginx'];
  const say = options.say ?? (() => undefined);
  const samples: Sample[] = [];
  const memory: MemorySample[] = [];
  const base = await mkdtemp(join(tmpdir(), 'tomlinson-peers-proxy-'));
  // Removed at the end, or on Ctrl-C after the servers have stopped (cleanups run newest first).
  const removeTemp = onCleanup(() => rm(base, { recursive: true, force: true }));
  await chmod(base, 0o755); // nginx's workers and Squid run as other users and must enter it.
  const origin = await startOrigin();
  const originBase = `http://127.0.0.1:${origin.port}`;
  try {
    const scripts: Record<string, string> = {};
    for (const s of scenarios) {
      scripts[s] = join(base, `${s}.lua`);
      await writeFile(scripts[s], wrkLua(s, originBase));
    }
    for (let r = 1; r <= runs; r++) {
      // The origin alone, wrk straight at it: how fast this machine serves these bodies right now.
      for (const [name, path] of [
        ['hit1k', '/hit1k'],
        ['hit100k', '/hit100k'],
      ] as const) {
        if (!scenarios.includes(name)) continue;
        await wrk(`${originBase}${path}`, connections, warmup);
        const w = await wrk(`${originBase}${path}`, connections, duration);
        samples.push({
          scenario: name,
          server: 'origin alone',
          run: r,
          value: w.requestsPerSecond,
          p50Ms: w.p50Ms,
          p99Ms: w.p99Ms,
          note: w.errors ? `${w.errors} errors` : undefined,
        });
      }
      // Every server of the run is up at once (idle ones cost nothing), and each scenario's
      // measured time is cut into slices that take turns between them, so a slow spell of the
      // machine falls on every server alike (see SLICE_SECONDS).
      const running: { name: string; server: Server; mem: ReturnType<typeof watchPeakMemory> }[] = [];
      try {
        for (const name of servers) {
          const dir = join(base, `${name}-${r}`);
          await mkdir(dir, { recursive: true });
          const server = name === OURS ? await startOurs(dir) : name === 'squid' ? await startSquid(dir) : await startNginx(dir, origin.port);
          running.push({ name, server, mem: watchPeakMemory(server.pid) });
        }
        // wrk takes whole seconds.
        const slices = Math.max(1, Math.round(duration / SLICE_SECONDS));
        const sliceSeconds = Math.max(1, Math.round(duration / slices));
        for (const s of scenarios) {
          for (const { server } of running) await wrk(`http://127.0.0.1:${server.port}/`, connections, warmup, scripts[s]);
          const zero: OriginCounts = { hit1k: 0, hit100k: 0, miss: 0, reval200: 0, reval304: 0 };
          const totals = running.map(() => ({
            requests: 0,
            seconds: 0,
            errors: 0,
            cpuUs: 0,
            cpuKnown: true,
            p50: [] as number[],
            p99: [] as number[],
            origin: { ...zero },
          }));
          for (let k = 0; k < slices; k++) {
            // The order turns with each slice and each run: no server always follows the same one.
            for (const i of turnOrder([...running.keys()], k + r - 1)) {
              const { server } = running[i]!;
              const t = totals[i]!;
              const before = await originCounts(origin.port);
              const pid = server.pid();
              const cpuBefore = pid ? await cpuMicros(pid) : undefined;
              const w = await wrk(`http://127.0.0.1:${server.port}/`, connections, sliceSeconds, scripts[s]);
              if (pid && cpuBefore !== undefined) t.cpuUs += (await cpuMicros(pid)) - cpuBefore;
              else t.cpuKnown = false;
              const after = await originCounts(origin.port);
              for (const key of Object.keys(zero) as (keyof OriginCounts)[]) t.origin[key] += after[key] - before[key];
              t.requests += w.requests;
              t.seconds += w.requests / w.requestsPerSecond || sliceSeconds;
              t.errors += w.errors;
              t.p50.push(w.p50Ms);
              t.p99.push(w.p99Ms);
            }
          }
          running.forEach(({ name }, i) => {
            const t = totals[i]!;
            const rps = t.seconds > 0 ? t.requests / t.seconds : 0;
            const cpuUs = t.cpuKnown && t.requests > 0 ? t.cpuUs / t.requests : undefined;
            const [p50Ms, p99Ms] = [median(t.p50), median(t.p99)];
            // What reached the origin during this server's slices (the others' slices excluded).
            const check = originCheck(s, zero, t.origin, t.requests);
            say(
              `proxy run ${r} ${name} ${s}: ${Math.round(rps)} req/s over ${slices} slices, p99 ${p99Ms} ms${cpuUs === undefined ? '' : `, ${Math.round(cpuUs)} µs CPU per request`}${t.errors ? `, ${t.errors} errors` : ''}; origin: ${check.text}`,
            );
            const note = [t.errors ? `${t.errors} errors` : '', check.bad ? `origin ${check.text}` : ''].filter(Boolean).join('; ');
            samples.push({ scenario: s, server: name, run: r, value: rps, p50Ms, p99Ms, cpuUs, note: note ? `${note} (run ${r})` : undefined });
          });
        }
      } finally {
        // Memory after the run: every server's, once all are idle, before any stops.
        for (const { name, mem } of running) {
          const m = await mem.stop();
          memory.push({ server: name, run: r, peakPss: m.pss, afterPss: m.afterPss, peakRss: m.rss, afterRss: m.afterRss });
        }
        for (const { server } of running) await server.stop();
        for (const { name } of running) await rm(join(base, `${name}-${r}`), { recursive: true, force: true });
      }
    }
  } finally {
    await origin.stop();
    await removeTemp();
  }
  // The memory tier `serve proxy` ran with: its setting from this environment, as startOurs passes it on.
  const tierMiB = Math.round(loadConfig(process.env).proxy.memoryBytes / 2 ** 20);
  // What `serve proxy` ran with: TOMLINSON_PROXY_WORKERS from this environment, else one per core.
  const ourWorkers = Number(process.env.TOMLINSON_PROXY_WORKERS || 0) || availableParallelism();
  // The origin's rows go last in each scenario: it is a yardstick, not a peer.
  const rep = summarize(
    'Proxy',
    'req/s',
    samples,
    [
      `wrk -t2 -c${connections}, ${duration} s per run after ${warmup} s of warm-up, absolute-form GETs with the origin in Host; every server started cold for each run, and each run's measured time cut into ${SLICE_SECONDS} s slices taking turns between the servers (the order turning with each slice), so that the machine's slow and fast spells fall on all of them. req/s: the run's requests over its slices' time; p50/p99: the median over the slices.`,
      `Squid: memory cache only (256 MB cache_mem, no cache_dir, as Debian ships it), 1 worker. nginx: proxy_cache on files (page cache), worker_processes auto, keep-alive upstream, proxy_cache_revalidate on, sendfile on, tcp_nopush off (its default). Ours: memory tier 256 MB over the blob tier on disk, ${ourWorkers === 1 ? 'one process' : `shared out over ${ourWorkers} proxy worker processes (proxy.workers) beside the main process`}.`,
      '"origin alone" is wrk straight at the origin: the yardstick for this machine, not a peer.',
      "CPU µs/op: user + system CPU time of the server's processes (every thread) during the measured run, per request. On a shared 2-core machine req/s swings from run to run with what the neighbours do (ours and the peers alike); CPU per request is the steadier figure.",
      'The origin counts what reaches it: hit rows must not reach it, miss rows must, reval rows must arrive as If-None-Match answered 304; a server that does otherwise gets a note. nginx does not store a response with max-age=0, so its reval row is a full fetch each time.',
      'Memory: ours is the main process and its proxy workers, Squid its one process, nginx its master and workers; all of them up through every scenario of the run.',
    ],
    { samples: memory, tier: { mib: tierMiB, what: `proxy.memoryBytes = ${tierMiB} MiB, shared out over the workers` } },
  );
  const order = (server: string) => (server === 'origin alone' ? 1 : 0);
  const scenarioIndex = (s: string) => scenarios.indexOf(s as ProxyScenario);
  rep.rows.sort((a, b) => scenarioIndex(a.scenario) - scenarioIndex(b.scenario) || order(a.server) - order(b.server));
  for (const row of rep.rows) if (row.server === 'origin alone') row.oursOverPeer = undefined;
  return rep;
}
