/**
 * POP3 side by side (issue 5, "Speed"; issue 9): ours (`containers/main.ts serve pop3` on the
 * embedded default) and Dovecot (Debian's dovecot-pop3d, config bench/peers/dovecot.conf), each
 * started cold for each run, each row run on both back to back (interleaveRows), over the same
 * 1,000 x 10 KB messages in each of 10 mailboxes. Load: our client (bench/pop3.ts) logs in, LISTs, RETRs every message one command at
 * a time and QUITs; 1 client on one mailbox, then 10 clients on 10 mailboxes in parallel. Latency
 * is per RETR (command sent to the end of the multi-line reply).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dovecotUser, seedDovecot, seedOurs, session, startDovecotOn, warmClient } from '../pop3.js';

/** Unmeasured downloads of a whole mailbox every server serves before the measured runs. */
const WARM_DOWNLOADS = 5;
import { OURS, summarize, type MemorySample, type ProtocolReport, type Sample } from './report.js';
import { cpuMicros, freePort, interleaveRows, onCleanup, quantile, stopChild, waitListening, watchPeakMemory } from './util.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Options of the POP3 comparison. */
export interface Pop3PeersOptions {
  /** Runs per server. @default 3 */
  runs?: number;
  /** Messages per mailbox. @default 1000 */
  messages?: number;
  /** Octets per message. @default 10240 */
  size?: number;
  /** Clients (and mailboxes) of the parallel scenario. @default 10 */
  clients?: number;
  /** Servers to run. @default ['tomlinson', 'dovecot'] */
  servers?: string[];
  /** Progress lines. */
  say?: (s: string) => void;
}

interface Pop3Server {
  port: number;
  pid: () => number | undefined;
  login: (user: string) => string;
  stop: () => Promise<void>;
}

/** Runs the comparison and returns its report. */
export async function runPop3Peers(options: Pop3PeersOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 3;
  const n = options.messages ?? 1000;
  const size = options.size ?? 10240;
  const clients = options.clients ?? 10;
  const servers = options.servers ?? [OURS, 'dovecot'];
  const say = options.say ?? (() => undefined);
  const password = 'bench-password';
  const users = Array.from({ length: clients }, (_, i) => `user${i}@bench.example`);
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-peers-pop3-'));
  // Removed at the end, or on Ctrl-C after the servers have stopped (cleanups run newest first).
  const removeTemp = onCleanup(() => rm(dir, { recursive: true, force: true }));
  const samples: Sample[] = [];
  const memory: MemorySample[] = [];
  try {
    const env = {
      TOMLINSON_DATA_DIR: join(dir, 'ours'),
      TOMLINSON_POP3S_PORT: '0',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_LOG_LEVEL: 'warn',
      TOMLINSON_LOG_PRETTY: 'false',
    };
    const t0 = performance.now();
    if (servers.includes(OURS)) await seedOurs(env, users, password, n, size);
    const dovecotBase = servers.includes('dovecot') ? await seedDovecot(dir, users, password, n, size) : '';
    say(`pop3: seeded ${clients} mailboxes x ${n} messages in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    const start = async (name: string): Promise<Pop3Server> => {
      if (name === 'dovecot') {
        const d = await startDovecotOn(dovecotBase, users, password);
        const stop = onCleanup(() => d.stop());
        await warmUp(d.port, dovecotUser(users[0]!));
        return { port: d.port, pid: () => d.pid, login: dovecotUser, stop };
      }
      const port = await freePort();
      const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'containers', 'main.ts'), 'serve', 'pop3'], {
        env: { ...process.env, UV_THREADPOOL_SIZE: '16', ...env, TOMLINSON_POP3_PORT: String(port) },
        cwd: ROOT,
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      const stop = onCleanup(() => stopChild(child));
      await waitListening(child, port, 'tomlinson pop3').catch(async (e: Error) => {
        await stop();
        throw e;
      });
      // The same first login per user as Dovecot gets (it builds its index then).
      for (const u of users) await session(port, u, password, 1);
      await warmUp(port, users[0]!);
      return { port, pid: () => child.pid, login: (u) => u, stop };
    };
    // Every server, ours and Dovecot alike, serves unmeasured downloads of a whole mailbox before
    // the measured runs: steady state is what a running server shows (both find the messages in
    // the page cache; ours has its hot code compiled, which V8 does only after 2,000 to 5,000
    // RETRs: after one download of 1,000 the measured session still paid for that), as the proxy
    // bench gives every server seconds of load before measuring.
    const warmUp = async (port: number, login: string) => {
      for (let i = 0; i < WARM_DOWNLOADS; i++) await session(port, login, password, n);
    };

    // The load client runs in this process: compile its code before the first measured run, or
    // that run (always the same server's) pays for it.
    await warmClient(size);
    for (let r = 1; r <= runs; r++) {
      // Every server of the run up at once; each row runs on them back to back, the order
      // turning with each row and each run (interleaveRows).
      const up: { name: string; server: Pop3Server; mem: ReturnType<typeof watchPeakMemory> }[] = [];
      try {
        for (const name of servers) {
          const server = await start(name);
          up.push({ name, server, mem: watchPeakMemory(server.pid) });
        }
        const rows = [1, clients];
        await interleaveRows(up, rows.length, r, async ({ name, server }, i) => {
          const k = rows[i]!;
          const gaps: number[] = [];
          const pid = server.pid();
          const cpuBefore = pid ? await cpuMicros(pid) : undefined;
          const t = performance.now();
          await Promise.all(
            users.slice(0, k).map((u) => {
              // The first callback comes after connect, login, LIST and RETR 1: not a RETR alone.
              let last = NaN;
              return session(server.port, server.login(u), password, n, () => {
                const now = performance.now();
                if (!Number.isNaN(last)) gaps.push(now - last);
                last = now;
              });
            }),
          );
          const seconds = (performance.now() - t) / 1000;
          const cpuUs = pid && cpuBefore !== undefined ? ((await cpuMicros(pid)) - cpuBefore) / (n * k) : undefined;
          const value = (n * k) / seconds;
          say(`pop3 run ${r} ${name} ${k} client${k === 1 ? '' : 's'}: ${Math.round(value)} msg/s`);
          samples.push({
            scenario: `${k} client${k === 1 ? '' : 's'}, LIST + RETR all + QUIT`,
            server: name,
            run: r,
            value,
            p50Ms: quantile(gaps, 0.5),
            p99Ms: quantile(gaps, 0.99),
            cpuUs,
          });
        });
      } finally {
        // Memory after the run: every server's, once all are idle, before any stops.
        for (const { name, mem } of up) {
          const m = await mem.stop();
          memory.push({ server: name, run: r, peakPss: m.pss, afterPss: m.afterPss, peakRss: m.rss, afterRss: m.afterRss });
        }
        for (const { server } of up) await server.stop();
      }
    }
  } finally {
    await removeTemp();
  }
  return summarize(
    'POP3',
    'msg/s',
    samples,
    [
      `${clients} mailboxes of ${n} messages of ${size} octets (every 20th line starts with a dot, so byte-stuffing is measured); p50/p99: one RETR, command to end of reply.`,
      'Each server started fresh for each run (same data), then one login per user (Dovecot builds its index then) and five unmeasured downloads of a whole mailbox before measuring (steady state: V8 compiles our hot code only after 2,000-5,000 RETRs), for every server alike; both servers up at once, each row run on them back to back, the order turning with each row and swapped each run. CPU µs/op: the CPU of the server (every process and thread) per message during the row. The load client itself is warmed up once before the first run (3,000 RETRs from an in-process responder), so no server is measured with a cold client.',
      'Memory: Dovecot is its master, pop3-login, auth and a pop3 process per session.',
    ],
    { samples: memory, tier: { mib: 0, what: 'none (`serve pop3` runs no proxy, the only part with a memory tier)' } },
  );
}
