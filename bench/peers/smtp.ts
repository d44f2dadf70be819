/**
 * SMTP side by side (issue 4, "Speed"; issue 9): ours (`containers/main.ts serve smtp,workers` on
 * the embedded default, durable: fsync before 250) and Postfix delivering to Maildir (a private
 * instance from bench/peers/postfix/, fsync before 250 as shipped), both started cold for each
 * run and each row run on them back to back (interleaveRows). Load: Postfix's smtp-source at 1,
 * 10 and 50 sessions, 10 KB messages, a fresh connection per message; then our own client at 10
 * sessions for the accept latency (end of data -> 250). After the load, the delivered count is checked (files in the Maildir for
 * Postfix; the worker's delivered counter for ours) and the time to drain is reported if it lags.
 * Then one 50 MB message to ours (resident memory growth).
 *
 * With `spam` (`--smtp-spam`, issue 24 "Speed"), every run also measures each server scanning with
 * one private rspamd (test/support/rspamd.ts: the shipped local.d settings), started once for the
 * whole comparison: ours with spam scanning on (the MX listener asks rspamd's normal worker at end
 * of DATA, before the 250), Postfix through smtpd_milters to rspamd's proxy worker in milter mode,
 * which hands each message to that same normal worker. Rows "+ rspamd, N sessions" at 10 and 50
 * sessions and the latency run; rspamd's scanned counter (controller /stat) shows both scanned.
 */
import { spawn } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRspamd } from '../../test/support/rspamd.js';
import { bigMessage, latencyRun, smtpSource } from '../smtp.js';
import { OURS, summarize, type MemorySample, type ProtocolReport, type Sample } from './report.js';
import { cpuMicros, fillTemplate, freePort, interleaveRows, onCleanup, run, stopChild, waitListening, waitPort, watchPeakMemory } from './util.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, '..', '..');
const USER = 'user@bench.test';

/** Options of the SMTP comparison. */
export interface SmtpPeersOptions {
  /** Runs per server. @default 3 */
  runs?: number;
  /** Session counts for smtp-source. @default [1, 10, 50] */
  sessions?: number[];
  /** Messages per measured smtp-source run, at every number of sessions. @default 1500 */
  messages?: number;
  /** Octets per message. @default 10240 */
  size?: number;
  /**
   * Unmeasured messages every server (Postfix alike) accepts before each smtp-source run, with
   * the same number of sessions, so that what is measured is the steady state of that load and not
   * a cold start. Ours is JavaScript that V8 compiles to optimised code only after many calls:
   * on a fresh server fed one session, the CPU per message of the listeners' thread fell from
   * 2.7 to 1.8, 1.7 and 1.6 ms over four runs of 500 messages, and the workers' thread's from 2.9
   * to 1.7, 1.5 and 1.6 ms (the run's msg/s rose from 171 to 221, 273, 283). With 300 messages of
   * warm-up, the measured run still paid for much of that. Postfix is compiled ahead of time and
   * forks its smtpd and cleanup processes on first use. Warm-up messages count in the delivery
   * check. @default 1500
   */
  warmupMessages?: number;
  /** Messages of the latency run (own client, 10 sessions). @default 500 */
  latencyMessages?: number;
  /** Bytes of the big message sent to ours (0 skips it). @default 50000000 */
  bigBytes?: number;
  /** Seconds to wait for delivery to catch up after the load. @default 120 */
  drainTimeout?: number;
  /** Servers to run. @default ['tomlinson', 'postfix'] */
  servers?: string[];
  /** Also measure each server with rspamd scanning every message (10 and 50 sessions, latency). */
  spam?: boolean;
  /** Progress lines. */
  say?: (s: string) => void;
}

/** Where a server sends mail for scanning: rspamd's normal worker (ours), its milter port (Postfix). */
interface SpamTarget {
  url: string;
  milterPort: number;
}

interface SmtpServer {
  port: number;
  pid: () => number | undefined;
  /** Messages delivered to the mailbox so far. */
  delivered: () => Promise<number>;
  stop: () => Promise<void>;
}

async function startOurs(dir: string, spam?: SpamTarget): Promise<SmtpServer> {
  const [port, health] = [await freePort(), await freePort()];
  const env: Record<string, string> = {
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_HOSTNAME: 'bench.tomlinson.test',
    TOMLINSON_SMTP_PORT: String(port),
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_HEALTH_PORT: String(health),
    // SPF/DKIM/DMARC need DNS, which a bench machine may not have; the Postfix peer checks none either.
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '1000',
    TOMLINSON_LOG_LEVEL: 'warn',
    TOMLINSON_LOG_PRETTY: 'false',
    // Not `auto`, so that an rspamd of the machine on the default port never joins the plain rows.
    ...(spam ? { TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: spam.url } : { TOMLINSON_SPAM: 'off' }),
  };
  // The domain and the user exist before the server starts (as an operator's CLI would add them).
  const { loadConfig } = await import('../../core/config.js');
  const { silentLogger } = await import('../../core/log.js');
  const { openStorage } = await import('../../core/storage/open.js');
  const { Accounts } = await import('../../core/accounts/accounts.js');
  const storage = await openStorage(loadConfig(env), silentLogger);
  try {
    const accounts = new Accounts(storage.tables);
    await accounts.addDomain('bench.test');
    await accounts.addUser(USER, 'bench-password-1');
  } finally {
    await storage.close();
  }
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'containers', 'main.ts'), 'serve', 'smtp,workers'], {
    env: { ...process.env, UV_THREADPOOL_SIZE: '16', ...env }, // UV_THREADPOOL_SIZE as `npm start` sets it
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const stop = onCleanup(() => stopChild(child, 15_000));
  await waitListening(child, port, 'tomlinson smtp').catch(async (e: Error) => {
    await stop();
    throw e;
  });
  await waitPort(health, 10_000, 'tomlinson health');
  return {
    port,
    pid: () => child.pid,
    stop,
    // The inbound worker's counter (core/mail/inbound.ts), read from /metrics.
    delivered: async () => {
      const text = await fetch(`http://127.0.0.1:${health}/metrics`).then((r) => r.text());
      const m =
        /^tomlinson_messages_total\{[^}]*stage="inbound"[^}]*outcome="delivered"[^}]*\}\s+(\d+)/m.exec(text) ??
        /^tomlinson_messages_total\{[^}]*outcome="delivered"[^}]*stage="inbound"[^}]*\}\s+(\d+)/m.exec(text);
      return m ? Number(m[1]) : 0;
    },
  };
}

async function idOf(flag: '-u' | '-g', name: string): Promise<number> {
  return Number((await run('id', [flag, name])).trim());
}

async function startPostfix(dir: string, spam?: SpamTarget): Promise<SmtpServer> {
  const port = await freePort();
  const etc = join(dir, 'etc');
  for (const d of ['etc', 'queue', 'data', 'mail']) await mkdir(join(dir, d), { recursive: true });
  await chmod(dir, 0o755);
  const [uid, gid] = [await idOf('-u', 'nobody'), await idOf('-g', 'nobody')];
  const values = { DIR: dir, PORT: port, UID: uid, GID: gid };
  for (const f of ['main.cf', 'master.cf']) await writeFile(join(etc, f), fillTemplate(await readFile(join(HERE, 'postfix', f), 'utf8'), values));
  if (spam) {
    // Milter protocol 6 (Postfix's default since 2.6, stated), and a milter that fails lets the
    // mail in as ours does with a scan that fails; the scanned counter shows none failed.
    await writeFile(
      join(etc, 'main.cf'),
      `${await readFile(join(etc, 'main.cf'), 'utf8')}\nsmtpd_milters = inet:127.0.0.1:${spam.milterPort}\nmilter_protocol = 6\nmilter_default_action = accept\n`,
    );
  }
  await writeFile(join(etc, 'vmailbox'), `${USER} bench.test/user/\n`);
  await chown(join(dir, 'mail'), uid, gid);
  await chown(join(dir, 'data'), await idOf('-u', 'postfix'), await idOf('-g', 'postfix'));
  let masterPid: number | undefined;
  const stopPostfix = async () => {
    await run('postfix', ['-c', etc, 'stop'], { timeoutMs: 30_000 }).catch(() =>
      run('postfix', ['-c', etc, 'abort'], { timeoutMs: 30_000 }).catch(() => undefined),
    );
    // `postfix stop` signals the master; wait until it has gone, so the next run starts cold.
    for (let i = 0; i < 100 && masterPid !== undefined; i++) {
      if (!(await readFile(`/proc/${masterPid}/stat`).catch(() => undefined))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const stop = onCleanup(stopPostfix);
  try {
    await run('postfix', ['-c', etc, 'start'], { timeoutMs: 60_000 });
    masterPid = Number((await readFile(join(dir, 'queue', 'pid', 'master.pid'), 'utf8')).trim());
    await waitPort(port, 30_000, 'postfix smtpd');
  } catch (e) {
    await stop();
    throw new Error(`${(e as Error).message}\n${await readFile(join(dir, 'maillog'), 'utf8').catch(() => '')}`, { cause: e });
  }
  const maildirNew = join(dir, 'mail', 'bench.test', 'user', 'new');
  return {
    port,
    pid: () => masterPid,
    stop,
    delivered: async () => (await readdir(maildirNew).catch(() => [])).length,
  };
}

/** Runs the comparison and returns its report. */
export async function runSmtpPeers(options: SmtpPeersOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 3;
  const sessionsList = options.sessions ?? [1, 10, 50];
  const messages = options.messages ?? 1500;
  const size = options.size ?? 10240;
  const latencyMessages = options.latencyMessages ?? 500;
  const warmupMessages = options.warmupMessages ?? 1500;
  const drainTimeout = options.drainTimeout ?? 120;
  const servers = options.servers ?? [OURS, 'postfix'];
  const say = options.say ?? (() => undefined);
  const samples: Sample[] = [];
  const notes: string[] = [];
  /** Per server and run: messages accepted, delivered, and seconds from the last accept until all were. */
  const deliveries: Record<string, { delivered: number; sent: number; drain: number }[]> = {};
  const base = await mkdtemp(join(tmpdir(), 'tomlinson-peers-smtp-'));
  // Removed at the end, or on Ctrl-C after the servers have stopped (cleanups run newest first).
  const removeTemp = onCleanup(() => rm(base, { recursive: true, force: true }));
  await chmod(base, 0o755); // Postfix's processes run as postfix and nobody.
  /** Per server and run with scanning: messages sent, and scans rspamd counted meanwhile. */
  const scans: Record<string, { scanned: number; sent: number }[]> = {};
  /** Scans rspamd counted so far in the current run, per server label. */
  const scanned: Record<string, { scanned: number }> = {};
  const memory: MemorySample[] = [];
  let stopRspamd: (() => Promise<void>) | undefined;
  try {
    let target: SpamTarget | undefined;
    let scannedSoFar = async (): Promise<number> => 0;
    if (options.spam) {
      say('starting rspamd (its first start compiles its expressions, up to a minute or two)');
      const rspamd = await startRspamd({ controller: true, milter: true });
      stopRspamd = onCleanup(() => rspamd.stop());
      target = { url: rspamd.url, milterPort: rspamd.milterPort! };
      // The controller's /stat: messages scanned since rspamd started, over all its workers.
      scannedSoFar = async () => ((await fetch(`${rspamd.controllerUrl!}/stat`).then((res) => res.json())) as { scanned: number }).scanned;
    }
    const variants = target ? [undefined, target] : [undefined];
    for (let r = 1; r <= runs; r++) {
      for (const spam of variants) {
        // Every server of the run is up at once (an idle one costs next to nothing), and each row
        // runs on them back to back, the order turning with each row and each run
        // (interleaveRows), so a slow spell of the machine falls on ours and Postfix alike.
        const prefix = spam ? '+ rspamd, ' : '';
        const up: { name: string; label: string; dir: string; server: SmtpServer; mem: ReturnType<typeof watchPeakMemory>; sent: number }[] = [];
        const mine: Sample[] = [];
        try {
          for (const name of servers) {
            const dir = join(base, `${name}-${r}${spam ? '-rspamd' : ''}`);
            await mkdir(dir, { recursive: true });
            const server = name === OURS ? await startOurs(dir, spam) : await startPostfix(dir, spam);
            up.push({ name, label: spam ? `${name} + rspamd` : name, dir, server, mem: watchPeakMemory(server.pid), sent: 0 });
          }
          // Each measured run starts with every earlier message delivered, on every server, so
          // that it pays neither for the delivery of the run before nor for the other server's
          // (ours accepts faster than it delivers at 10 and 50 sessions; Postfix delivers as fast
          // as it accepts).
          const caughtUp = async (): Promise<void> => {
            const t0 = performance.now();
            for (const u of up)
              while ((await u.server.delivered()) < u.sent && performance.now() - t0 < drainTimeout * 1000) await new Promise((res) => setTimeout(res, 100));
          };
          /** Sends through `fn`, counting what was sent and what rspamd scanned meanwhile (one server sends at a time). */
          const sending = async <T>(u: (typeof up)[number], count: number, fn: () => Promise<T>): Promise<T> => {
            const before = spam ? await scannedSoFar() : 0;
            try {
              return await fn();
            } finally {
              u.sent += count;
              if (spam) {
                const s = (scanned[u.label] ??= { scanned: 0 });
                s.scanned += (await scannedSoFar()) - before;
              }
            }
          };
          // Scanning rows at 10 and 50 sessions, as issue 24 asks (one session says little here).
          const sessionRows = spam ? sessionsList.filter((n) => n > 1) : sessionsList;
          await interleaveRows(up, sessionRows.length + 1, r, async (u, i) => {
            const sessions = sessionRows[i];
            if (sessions !== undefined) {
              if (warmupMessages > 0) await sending(u, warmupMessages, () => smtpSource(u.server.port, sessions, warmupMessages, size));
              await caughtUp();
              const pid = u.server.pid();
              const cpuBefore = pid ? await cpuMicros(pid) : undefined;
              const seconds = await sending(u, messages, () => smtpSource(u.server.port, sessions, messages, size));
              const cpuUs = pid && cpuBefore !== undefined ? ((await cpuMicros(pid)) - cpuBefore) / messages : undefined;
              say(
                `smtp run ${r} ${u.label} ${sessions} sessions: ${Math.round(messages / seconds)} msg/s${cpuUs === undefined ? '' : `, ${(cpuUs / 1000).toFixed(2)} ms CPU per message`}`,
              );
              mine.push({
                scenario: `${prefix}${sessions} session${sessions === 1 ? '' : 's'} (smtp-source)`,
                server: u.name,
                run: r,
                value: messages / seconds,
                cpuUs,
              });
              return;
            }
            await caughtUp();
            const lat = await sending(u, latencyMessages, () => latencyRun(u.server.port, 10, latencyMessages, size));
            say(`smtp run ${r} ${u.label} latency at 10 sessions: p50 ${lat.p50Ms} ms, p99 ${lat.p99Ms} ms`);
            mine.push({
              scenario: `${prefix}10 sessions (own client, latency)`,
              server: u.name,
              run: r,
              value: lat.messagesPerSecond,
              p50Ms: lat.p50Ms,
              p99Ms: lat.p99Ms,
            });
            // Every accepted message must reach the mailbox; time how long delivery lags the
            // accepts (before the other server's turn, which would otherwise wait for it).
            const loadDone = performance.now();
            let delivered = await u.server.delivered();
            while (delivered < u.sent && performance.now() - loadDone < drainTimeout * 1000) {
              await new Promise((res) => setTimeout(res, 100));
              delivered = await u.server.delivered();
            }
            const drain = (performance.now() - loadDone) / 1000;
            (deliveries[u.label] ??= []).push({ delivered, sent: u.sent, drain });
            say(`smtp run ${r} ${u.label}: ${delivered}/${u.sent} delivered, drain ${drain.toFixed(1)} s`);
            if (spam) {
              (scans[u.label] ??= []).push({ scanned: scanned[u.label]?.scanned ?? 0, sent: u.sent });
              say(`smtp run ${r} ${u.label}: rspamd scanned ${scanned[u.label]?.scanned ?? 0} of ${u.sent}`);
            }
          });
        } finally {
          // Memory after the run: every server's, once all are idle, before any stops.
          for (const u of up) {
            const m = await u.mem.stop();
            if (!spam) memory.push({ server: u.name, run: r, peakPss: m.pss, afterPss: m.afterPss, peakRss: m.rss, afterRss: m.afterRss });
          }
          for (const u of up) await u.server.stop();
          samples.push(...mine);
          for (const k of Object.keys(scanned)) delete scanned[k];
        }
        for (const u of up) await rm(u.dir, { recursive: true, force: true });
      }
    }
    for (const [name, ds] of Object.entries(deliveries)) {
      const all = ds.every((d) => d.delivered === d.sent);
      notes.push(
        `Delivery check, ${name}: ${ds.map((d) => `${d.delivered}/${d.sent}`).join(', ')} accepted messages in the mailbox${all ? '' : ` (MISSING MAIL after waiting ${drainTimeout} s)`}; mailbox complete ${ds.map((d) => d.drain.toFixed(1)).join(' / ')} s after the last accept.`,
      );
    }
    for (const [label, ss] of Object.entries(scans)) {
      notes.push(
        `Scan check, ${label}: rspamd counted ${ss.map((x) => `${x.scanned}/${x.sent}`).join(', ')} scans of the messages sent${ss.every((x) => x.scanned >= x.sent) ? '' : ' (SOME MAIL UNSCANNED)'}.`,
      );
    }
    if (target) notes.push(extraP99(samples, servers));
    if ((options.bigBytes ?? 50_000_000) > 0 && servers.includes(OURS)) {
      const big = await bigMessage(join(base, 'big'), options.bigBytes ?? 50_000_000, false);
      say(`smtp ${OURS} ${big.bytes} octets: +${big.growthMb} MB`);
      notes.push(
        `One ${Math.round(big.bytes / 1e6)} MB message to ${OURS} (fresh server): ${big.seconds} s, resident memory ${big.rssBeforeMb} MB before, peak ${big.rssPeakMb} MB (+${big.growthMb} MB; the issue's limit is +64 MB).`,
      );
    }
  } finally {
    await stopRspamd?.();
    await removeTemp();
  }
  const problems = [
    ...Object.entries(deliveries).flatMap(([name, ds]) =>
      ds.filter((d) => d.delivered !== d.sent).map((d) => `${name}: ${d.sent - d.delivered} accepted messages not delivered`),
    ),
    ...Object.entries(scans).flatMap(([label, ss]) =>
      ss.filter((x) => x.scanned < x.sent).map((x) => `${label}: rspamd scanned ${x.scanned} of ${x.sent} messages`),
    ),
  ];
  const report = summarize(
    'SMTP',
    'msg/s',
    samples,
    [
      `10 KB messages (${size} octets), a fresh connection per message; before each measured run every server accepts ${warmupMessages} unmeasured messages with the same number of sessions (the steady state of that load, not a cold start), and the measured run starts once every earlier message is in the mailbox (it does not pay for the delivery of the one before); smtp-source sends ${messages} messages per measured run; the latency run sends ${latencyMessages} from our own client at 10 sessions (p50/p99: end of data to the 250).`,
      `Each server started cold for each run (new data folder), both up at once; each row runs on them back to back, the order turning with each row and swapped each run (ours first in run 1's first row). Ours: smtp + the queue workers (on their own thread unless TOMLINSON_WORKERS_THREAD=false), local storage, fsync before 250. Postfix: private instance, virtual(8) to Maildir, fsync before 250 as shipped, no chroot.`,
      ...(options.spam
        ? [
            "'+ rspamd' rows: one private rspamd 3.4 for the whole comparison (shipped local.d settings, one normal worker, DNS to nowhere), each server started afresh with scanning; ours asks the normal worker (/checkv2) at end of DATA before the 250; Postfix uses smtpd_milters (protocol 6, milter_default_action = accept) to rspamd's proxy worker in milter mode, which hands the message to that same normal worker. Both give rspamd the client 127.0.0.1. rspamd's CPU is not in the servers' CPU µs/op or memory.",
          ]
        : []),
      'Memory: the rows without rspamd (with --smtp-spam, the scanning servers are started afresh and not in the memory row). Postfix: master and every smtpd, cleanup, qmgr, virtual... it forks.',
      "CPU µs/op: user + system CPU time of the server's processes (every thread; Postfix: master and every process it forked, the exited ones through master's child times) during the smtp-source run, per message. Delivery that lags past the end of the run is not in it (the drain time below is the last run's).",
      ...notes,
    ],
    { samples: memory, tier: { mib: 0, what: 'none (`serve smtp,workers` runs no proxy, the only part with a memory tier)' } },
  );
  return problems.length ? { ...report, problems } : report;
}

/** The note that states what scanning adds to the accept latency: median p99 of the own-client
 * run with and without rspamd, per server. */
function extraP99(samples: readonly Sample[], servers: readonly string[]): string {
  const p99 = (server: string, scenario: string): number | undefined => {
    const v = samples
      .filter((x) => x.server === server && x.scenario === scenario && x.p99Ms !== undefined)
      .map((x) => x.p99Ms!)
      .sort((a, b) => a - b);
    return v.length ? v[Math.floor((v.length - 1) / 2)] : undefined;
  };
  const parts = servers.map((server) => {
    const plain = p99(server, '10 sessions (own client, latency)');
    const scanned = p99(server, '+ rspamd, 10 sessions (own client, latency)');
    return plain === undefined || scanned === undefined
      ? `${server}: not measured`
      : `${server} ${plain} -> ${scanned} ms (+${Math.round((scanned - plain) * 10) / 10} ms)`;
  });
  return `Accept latency p99 at 10 sessions (own client), median over runs, without -> with rspamd: ${parts.join('; ')}.`;
}
