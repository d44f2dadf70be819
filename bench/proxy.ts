/**
 * Proxy benchmark (issue 6, "Speed"): a local origin in a child process, the proxy in this process
 * on local storage, and wrk with 50 keep-alive connections sending absolute-form requests.
 * Scenarios: 1 KB and 100 KB memory hits, 1 KB misses (unique URLs) and 1 KB revalidations (the
 * origin answers 304). Prints requests/s, p50/p99 latency and the proxy's memory after each run.
 *
 * Usage: npx tsx bench/proxy.ts [--duration 10] [--connections 50] [--only hit1k,miss]
 * Needs `wrk` (Debian package wrk).
 */
import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { Metrics } from '../core/metrics.js';
import { openLocalStorage } from '../core/storage/local/index.js';
import { startProxy } from '../containers/proxy/server.js';
import { tempDir } from '../test/support/tmp.js';
import { ORIGIN_SCRIPT } from './peers/origin.js';
import { wrkLua, type ProxyScenario } from './peers/util.js';

const run = promisify(execFile);

interface Result {
  scenario: string;
  rps: number;
  p50: string;
  p99: string;
  errors: string;
  rssMiB: number;
  /** Proxy process CPU time per request (user + system), a yardstick that load elsewhere does not move much. */
  cpuUs: number;
  /** Longest event-loop stall of the proxy process during the run. */
  loopMaxMs: number;
}

/** The issue's figures for this kind of machine (issue 6, "Speed"), printed beside ours. */
const REFERENCE: Record<string, string> = {
  origin: 'origin alone 46,000',
  origin100k: 'origin alone 28,000',
  hit1k: 'Squid 39,000, nginx 47,000',
  hit100k: 'Squid 3,800, nginx 33,000',
  miss: 'Squid 8,600',
  reval: 'Squid 9,200',
};

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

/** TOMLINSON_* variables of this process, so a run can try a setting
 * (e.g. `TOMLINSON_PROXY_COLLAPSE_WAIT_MS=0` for revalidations without collapsing). */
function pickTomlinsonEnv(): Record<string, string> {
  return Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[0].startsWith('TOMLINSON_') && e[1] !== undefined));
}

async function main(): Promise<void> {
  const duration = Number(arg('duration', '10'));
  const connections = Number(arg('connections', '50'));
  const only = arg('only', 'origin,origin100k,hit1k,hit100k,miss,reval').split(',');
  const dir = await tempDir('tomlinson-bench-');
  const origin = spawn(process.execPath, ['-e', ORIGIN_SCRIPT], { stdio: ['ignore', 'pipe', 'inherit'] });
  const originPort = await new Promise<number>((resolve) => origin.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
  const config = loadConfig({
    ...pickTomlinsonEnv(),
    TOMLINSON_DATA_DIR: dir.path,
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
    TOMLINSON_LOG_LEVEL: 'silent',
  });
  const storage = await openLocalStorage(config, silentLogger, { purgeIntervalMs: 0 });
  const proxy = await startProxy({ config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }) }, { port: 0 });
  const base = `http://127.0.0.1:${originPort}`;
  const results: Result[] = [];
  try {
    for (const scenario of only) {
      const script = join(dir.path, `${scenario}.lua`);
      // Absolute-form requests with the origin in Host (bench/peers/util.ts); 'origin*' scenarios
      // go straight to the origin and use no script.
      const lua = scenario.startsWith('origin') ? '' : wrkLua(scenario as ProxyScenario, base);
      await writeFile(script, lua);
      // 'origin' / 'origin100k': the origin alone, without the proxy, as the yardstick for this
      // machine and moment (the issue's figures were taken on another machine).
      const direct = scenario.startsWith('origin');
      const target = direct ? `${base}/${scenario === 'origin' ? 'hit1k' : 'hit100k'}` : `http://127.0.0.1:${proxy.port}/`;
      const args = direct ? [] : ['-s', script];
      // Warm the cache, the origin pool and the JIT before measuring (the first seconds of a fresh
      // process are several times slower).
      await run('wrk', ['-t2', `-c${connections}`, '-d3s', ...args, target]);
      const cpu0 = process.cpuUsage();
      const loop = monitorEventLoopDelay({ resolution: 10 });
      loop.enable();
      const { stdout } = await run('wrk', ['-t2', `-c${connections}`, `-d${duration}s`, '--latency', ...args, target], {
        timeout: (duration + 30) * 1000,
      });
      const cpu = process.cpuUsage(cpu0);
      loop.disable();
      const loopMaxMs = Math.round(loop.max / 1e6);
      const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0);
      const total = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
      const p50 = /\s50%\s+(\S+)/.exec(stdout)?.[1] ?? '?';
      const p99 = /\s99%\s+(\S+)/.exec(stdout)?.[1] ?? '?';
      const errors = /Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)/.exec(stdout)?.[0] ?? 'none';
      results.push({
        loopMaxMs,
        scenario,
        rps: Math.round(rps),
        p50,
        p99,
        errors,
        cpuUs: scenario.startsWith('origin') || !total ? 0 : Math.round((cpu.user + cpu.system) / total),
        rssMiB: Math.round(process.memoryUsage().rss / 1048576),
      });
      await proxy.store.flush();
    }
  } finally {
    await proxy.close(100);
    origin.kill();
    await storage.close();
    await dir.remove();
  }
  process.stdout.write(`proxy benchmark: ${connections} connections, ${duration}s each, wrk -t2\n`);
  for (const r of results) {
    const ref = REFERENCE[r.scenario];
    process.stdout.write(
      `${r.scenario.padEnd(9)} ${String(r.rps).padStart(7)} req/s${ref ? `  (issue: ${ref})` : ''}  p50 ${r.p50.padStart(8)}  p99 ${r.p99.padStart(8)}  proxy cpu ${String(r.cpuUs).padStart(4)} us/req  loop max ${r.loopMaxMs} ms  rss ${r.rssMiB} MiB  errors: ${r.errors}\n`,
    );
  }
}

await main();
