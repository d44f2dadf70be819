/**
 * IMAP side by side (issue 21, "Speed"): ours (`containers/main.ts serve imap` on the embedded
 * default, its own fresh data folder) and Dovecot (Debian's dovecot-imapd, config
 * bench/peers/dovecot-imap.conf, Maildir on the same disk, fsync as shipped), each started cold
 * for each run over the same messages, each row run on both back to back (interleaveRows). Load:
 * the client in bench/imap.ts over plain sockets on 127.0.0.1. Every row counts messages handled
 * per second (a SELECT of 10,000 in 0.1 s is 100,000 msg/s); rows of one command give its time
 * as p50.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImapLoadClient, needle, quote, SENDERS, seedDovecotImap, seedOursImap, type ImapPlan } from '../imap.js';
import { dovecotUser, makeMessage } from '../pop3.js';
import { OURS, summarize, type MemorySample, type ProtocolReport, type Sample } from './report.js';
import { cpuMicros, fillTemplate, freePort, interleaveRows, onCleanup, quantile, stopChild, waitListening, watchPeakMemory } from './util.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Options of the IMAP comparison. */
export interface ImapPeersOptions {
  /** Runs per server. @default 3 */
  runs?: number;
  /** Messages in each fetch user's INBOX (UID FETCH BODY.PEEK[], STORE). @default 1000 */
  messages?: number;
  /** Octets per message of those INBOXes and of APPEND. @default 10240 */
  size?: number;
  /** Clients (and mailboxes) of the parallel FETCH. @default 10 */
  clients?: number;
  /** Messages of the sync folder (first sync, SEARCH). @default 10000 */
  syncMessages?: number;
  /** Messages of the big folder; 0 leaves its rows out. @default 0 */
  bigMessages?: number;
  /** APPENDs per run. @default 300 */
  appends?: number;
  /** IDLE notifications per run. @default 50 */
  idleRounds?: number;
  /** Servers to run. @default ['tomlinson', 'dovecot'] */
  servers?: string[];
  say?: (s: string) => void;
}

interface ImapServer {
  port: number;
  pid: () => number | undefined;
  login: (user: string) => string;
  stop: () => Promise<void>;
}

/** A measured scenario's raw outcome, before the memory figures are added. */
interface Measure {
  scenario: string;
  messages: number;
  seconds: number;
  cpuUs: number;
  latenciesMs?: number[];
  note?: string;
}

/** Runs the comparison and returns its report. */
export async function runImapPeers(options: ImapPeersOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 3;
  const clients = options.clients ?? 10;
  const plan: ImapPlan = {
    fetchUsers: Array.from({ length: clients }, (_, i) => `user${i}@bench.example`),
    messages: options.messages ?? 1000,
    size: options.size ?? 10240,
    syncUser: 'sync@bench.example',
    syncMessages: options.syncMessages ?? 10_000,
    syncSize: 4096,
    writeUser: 'writer@bench.example',
    bigUser: 'big@bench.example',
    bigMessages: options.bigMessages ?? 0,
    bigSize: 2048,
    password: 'bench-password',
  };
  const appends = options.appends ?? 300;
  const idleRounds = options.idleRounds ?? 50;
  const servers = options.servers ?? [OURS, 'dovecot'];
  const say = options.say ?? (() => undefined);
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-peers-imap-'));
  const removeTemp = onCleanup(() => rm(dir, { recursive: true, force: true }));
  const samples: Sample[] = [];
  const memory: MemorySample[] = [];
  const problems: string[] = [];
  try {
    const dataDir = join(dir, 'ours');
    const t0 = performance.now();
    if (servers.includes(OURS)) await seedOursImap(dataDir, plan, say);
    say(`imap: seeded ours in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const t1 = performance.now();
    const dovecotBase = servers.includes('dovecot') ? await seedDovecotImap(dir, plan) : '';
    say(`imap: seeded dovecot in ${((performance.now() - t1) / 1000).toFixed(1)} s`);

    const start = async (name: string): Promise<ImapServer> => {
      const port = await freePort();
      if (name === 'dovecot') {
        const template = await readFile(new URL('./dovecot-imap.conf', import.meta.url), 'utf8');
        await writeFile(join(dovecotBase, 'dovecot-imap.conf'), fillTemplate(template, { DIR: dovecotBase, PORT: port }));
        const child = spawn('/usr/sbin/dovecot', ['-F', '-c', join(dovecotBase, 'dovecot-imap.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
        const stop = onCleanup(() => stopChild(child));
        await waitListening(child, port, 'dovecot imap').catch(async (e: Error) => {
          await stop();
          throw new Error(`${e.message} (see ${dovecotBase}/dovecot.log)`, { cause: e });
        });
        return { port, pid: () => child.pid, login: dovecotUser, stop };
      }
      // BENCH_CPU_PROF=<folder>: a V8 CPU profile of our server per start (where the time goes).
      const prof = process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
      const child = spawn(process.execPath, [...prof, '--import', 'tsx', join(ROOT, 'containers', 'main.ts'), 'serve', 'imap'], {
        env: {
          ...process.env,
          UV_THREADPOOL_SIZE: '16',
          TOMLINSON_DATA_DIR: dataDir,
          TOMLINSON_IMAP_PORT: String(port),
          TOMLINSON_IMAPS_PORT: '0',
          TOMLINSON_HEALTH_PORT: '0',
          TOMLINSON_LOG_LEVEL: 'warn',
          TOMLINSON_LOG_PRETTY: 'false',
        },
        cwd: ROOT,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr.on('data', (d: Buffer) => process.stderr.write(d));
      const stop = onCleanup(() => stopChild(child));
      await waitListening(child, port, 'tomlinson imap').catch(async (e: Error) => {
        await stop();
        throw e;
      });
      return { port, pid: () => child.pid, login: (u) => u, stop };
    };

    /** Times `fn` and the server's CPU over it. */
    const measure = async (server: ImapServer, scenario: string, messages: number, fn: () => Promise<Partial<Measure> | void>): Promise<Measure> => {
      const cpu0 = await cpuMicros(server.pid()!);
      const t = performance.now();
      const extra = (await fn()) ?? {};
      const seconds = (performance.now() - t) / 1000;
      const cpuUs = ((await cpuMicros(server.pid()!)) - cpu0) / messages;
      return { scenario, messages, seconds, cpuUs, ...extra };
    };
    const expectFetches = (what: string, got: number, want: number) => {
      if (got !== want) throw new Error(`${what}: ${got} FETCH responses, expected ${want}`);
    };

    /** Every server alike: one login per user (Dovecot builds its indexes then, ours its views) and a whole download. */
    const warmUp = async (s: ImapServer) => {
      for (const u of [...plan.fetchUsers, plan.syncUser, plan.writeUser]) {
        const c = await ImapLoadClient.session(s.port, s.login(u), plan.password);
        await c.logout();
      }
      const c = await ImapLoadClient.session(s.port, s.login(plan.fetchUsers[0]!), plan.password);
      for (let i = 0; i < 3; i++) await c.must('UID FETCH 1:* BODY.PEEK[]');
      await c.logout();
      const sync = await ImapLoadClient.session(s.port, s.login(plan.syncUser), plan.password);
      await sync.must('FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)');
      await sync.logout();
    };

    /**
     * The main rows of one server, in table order: each a step that measures one row, to be run
     * in turn with the other server's (interleaveRows). The sync session lives across the first
     * sync and the two SEARCH rows, as a client's would.
     */
    const mainRows = (s: ImapServer): (() => Promise<Measure>)[] => {
      const n = plan.messages;
      const body = 'UID FETCH 1:* BODY.PEEK[]';
      let syncSession: ImapLoadClient | undefined;
      const sync = () => syncSession!;
      return [
        async () => {
          const c = await ImapLoadClient.session(s.port, s.login(plan.fetchUsers[0]!), plan.password);
          const m = await measure(s, `UID FETCH 1:* BODY.PEEK[], ${n} x ${plan.size / 1024} KB, 1 client`, n, async () => {
            const r = await c.must(body);
            expectFetches(body, r.fetches, n);
            if (r.literalBytes < n * plan.size) throw new Error(`${body}: ${r.literalBytes} octets of bodies, expected ${n * plan.size}`);
          });
          await c.logout();
          return m;
        },
        async () => {
          const cs = await Promise.all(plan.fetchUsers.map((u) => ImapLoadClient.session(s.port, s.login(u), plan.password)));
          const m = await measure(s, `UID FETCH 1:* BODY.PEEK[], ${clients} clients on ${clients} mailboxes`, n * clients, async () => {
            const rs = await Promise.all(cs.map((c) => c.must(body)));
            for (const r of rs) expectFetches(body, r.fetches, n);
          });
          await Promise.all(cs.map((c) => c.logout()));
          return m;
        },
        async () => {
          // First sync: a client that knows nothing of the folder.
          const m = plan.syncMessages;
          syncSession = await ImapLoadClient.session(s.port, s.login(plan.syncUser), plan.password, null);
          const attrs = 'FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)';
          return measure(s, `SELECT + ${attrs}, ${m.toLocaleString('en')} messages`, m, async () => {
            const t = performance.now();
            await sync().must('SELECT INBOX');
            const selectMs = performance.now() - t;
            const r = await sync().must(attrs);
            expectFetches(attrs, r.fetches, m);
            return { note: `SELECT alone ${selectMs.toFixed(0)} ms` };
          });
        },
        // SEARCH by header (FROM: SENDERS senders, so m / SENDERS hits) and by TEXT (one hit), in
        // the sync session; the second logs it out.
        ...(
          [
            [`FROM ${quote('sender7@')}`, 10, Math.ceil((plan.syncMessages - 7) / SENDERS)],
            [`TEXT ${quote(needle(plan.syncMessages))}`, 3, 1],
          ] as const
        ).map(([key, reps, hits], k) => async () => {
          const m = plan.syncMessages;
          const lat: number[] = [];
          const out = await measure(s, `UID SEARCH ${key.split(' ')[0]} over ${m.toLocaleString('en')}`, m * reps, async () => {
            for (let i = 0; i < reps; i++) {
              const t = performance.now();
              const r = await sync().must(`UID SEARCH ${key}`);
              lat.push(performance.now() - t);
              const line = r.untagged.find((l) => l.startsWith('* SEARCH'));
              const found = line ? line.split(' ').length - 2 : -1;
              if (found !== hits) throw new Error(`UID SEARCH ${key}: ${found} hits, expected ${hits}`);
            }
            return { latenciesMs: lat };
          });
          if (k === 1) await sync().logout();
          return out;
        }),
        async () => {
          const c = await ImapLoadClient.session(s.port, s.login(plan.fetchUsers[1]!), plan.password);
          const t = performance.now();
          const m = await measure(s, `UID STORE 1:* +FLAGS (\\Seen), ${n} messages`, n, async () => {
            const r = await c.must('UID STORE 1:* +FLAGS (\\Seen)');
            expectFetches('UID STORE', r.fetches, n);
            return { latenciesMs: [performance.now() - t] };
          });
          // Unmeasured: back to unseen, so the next run changes every flag again.
          await c.must('UID STORE 1:* -FLAGS.SILENT (\\Seen)');
          await c.logout();
          return m;
        },
        async () => {
          // APPEND one at a time (as Thunderbird and imaplib do), each answered once durable.
          const c = await ImapLoadClient.session(s.port, s.login(plan.writeUser), plan.password, null);
          const folder = `append-${Date.now()}`;
          await c.must(`CREATE ${folder}`);
          const raw = makeMessage(0, plan.size);
          const lat: number[] = [];
          const m = await measure(s, `APPEND ${plan.size / 1024} KB, 1 client, one at a time`, appends, async () => {
            for (let i = 0; i < appends; i++) {
              const t = performance.now();
              await c.must(`APPEND ${folder} ()`, raw);
              lat.push(performance.now() - t);
            }
            return { latenciesMs: lat };
          });
          const st = await c.must(`STATUS ${folder} (MESSAGES)`);
          const count = Number(/MESSAGES (\d+)/.exec(st.untagged.join(' '))?.[1]);
          if (count !== appends) throw new Error(`APPEND: ${count} messages in the folder, expected ${appends}`);
          await c.must(`DELETE ${folder}`);
          await c.logout();
          return m;
        },
        async () => {
          // IDLE: one session idles on INBOX, another APPENDs to it; the delay runs from the
          // APPEND's OK (the message is durable) to the idler's EXISTS.
          const idler = await ImapLoadClient.session(s.port, s.login(plan.writeUser), plan.password);
          const writer = await ImapLoadClient.session(s.port, s.login(plan.writeUser), plan.password, null);
          const raw = makeMessage(1, 1024);
          let onExists: (() => void) | undefined;
          idler.onUntagged = (l) => {
            if (/^\* \d+ EXISTS/.test(l)) onExists?.();
          };
          const idle = await idler.idle();
          const lat: number[] = [];
          let early = 0;
          const m = await measure(s, `IDLE: APPEND from another session to EXISTS`, idleRounds, async () => {
            for (let i = 0; i < idleRounds; i++) {
              let seen = NaN;
              const exists = new Promise<void>((resolve) => {
                onExists = () => {
                  seen = performance.now();
                  resolve();
                };
              });
              await writer.must('APPEND INBOX ()', raw);
              const ok = performance.now();
              await Promise.race([
                exists,
                new Promise((_, reject) => setTimeout(() => reject(new Error('IDLE: no EXISTS within 60 s of the APPEND')), 60_000).unref()),
              ]);
              if (seen < ok) early++;
              lat.push(Math.max(0, seen - ok));
              await new Promise((r) => setTimeout(r, 20));
            }
            return { latenciesMs: lat, note: `${early} of ${idleRounds} EXISTS came before the APPEND's OK (delay 0)` };
          });
          await idle.done();
          await Promise.all([idler.logout(), writer.logout()]);
          return m;
        },
      ];
    };

    /** The big folder's rows of one server (on servers started for them alone, so the peak memory is this folder's). */
    const bigRows = (s: ImapServer): (() => Promise<Measure>)[] => {
      const m = plan.bigMessages;
      let session: ImapLoadClient | undefined;
      const c = () => session!;
      const from = Math.floor(m / 2);
      const range = `FETCH ${from}:${from + 999} (UID FLAGS RFC822.SIZE ENVELOPE)`;
      const flags = 'FETCH 1:* (UID FLAGS)';
      return [
        async () => {
          session = await ImapLoadClient.session(s.port, s.login(plan.bigUser), plan.password, null);
          const t = performance.now();
          return measure(s, `SELECT of a ${m.toLocaleString('en')}-message folder`, m, async () => {
            await c().must('SELECT INBOX');
            return { latenciesMs: [performance.now() - t] };
          });
        },
        async () => {
          const t = performance.now();
          return measure(s, `${range} in it`, 1000, async () => {
            const r = await c().must(range);
            expectFetches(range, r.fetches, 1000);
            return { latenciesMs: [performance.now() - t] };
          });
        },
        async () => {
          const t = performance.now();
          const out = await measure(s, `${flags} of it`, m, async () => {
            const r = await c().must(flags);
            expectFetches(flags, r.fetches, m);
            return { latenciesMs: [performance.now() - t] };
          });
          await c().logout();
          return out;
        },
      ];
    };

    const record = (name: string, run: number, x: Measure, note?: string) => {
      const value = x.messages / x.seconds;
      say(`imap run ${run} ${name} ${x.scenario}: ${Math.round(value)} msg/s`);
      samples.push({
        scenario: x.scenario,
        server: name,
        run,
        value,
        p50Ms: x.latenciesMs ? quantile(x.latenciesMs, 0.5) : undefined,
        p99Ms: x.latenciesMs && x.latenciesMs.length > 1 ? quantile(x.latenciesMs, 0.99) : undefined,
        cpuUs: x.cpuUs,
        note: [x.note, note].filter(Boolean).join('; ') || undefined,
      });
    };

    for (let r = 1; r <= runs; r++) {
      for (const part of plan.bigMessages > 0 ? (['main', 'big'] as const) : (['main'] as const)) {
        // Every server of the part up at once; each row runs on them back to back, the order
        // turning with each row and each run (interleaveRows). A server whose row failed skips
        // the rest of its rows in this run (its sessions may be out of step).
        const up: {
          name: string;
          server: ImapServer;
          mem: ReturnType<typeof watchPeakMemory>;
          rows: (() => Promise<Measure>)[];
          measures: Measure[];
          failed: boolean;
        }[] = [];
        try {
          for (const name of servers) {
            const server = await start(name);
            up.push({
              name,
              server,
              mem: watchPeakMemory(server.pid),
              rows: part === 'main' ? mainRows(server) : bigRows(server),
              measures: [],
              failed: false,
            });
          }
          for (const { server } of up) {
            if (part === 'main') await warmUp(server);
            else {
              // One unmeasured SELECT first on every server: Dovecot builds the folder's index then
              // (ours has its counters from the seeding).
              const w = await ImapLoadClient.session(server.port, server.login(plan.bigUser), plan.password);
              await w.logout();
            }
          }
          await interleaveRows(up, up[0]?.rows.length ?? 0, r, async (u, i) => {
            if (u.failed) return;
            try {
              u.measures.push(await u.rows[i]!());
            } catch (e) {
              u.failed = true;
              problems.push(`${u.name} run ${r}: ${(e as Error).message}`);
              say(`imap run ${r} ${u.name}: ${(e as Error).message}`);
            }
          });
        } finally {
          // Memory after the run: every server's, once all are idle, before any stops. The big
          // folder's servers go in their rows' notes, not in the memory row (a different load).
          for (const u of up) {
            const m = await u.mem.stop();
            if (part === 'main') memory.push({ server: u.name, run: r, peakPss: m.pss, afterPss: m.afterPss, peakRss: m.rss, afterRss: m.afterRss });
            for (const x of u.measures) record(u.name, r, x, part === 'big' ? `run ${r}: peak PSS ${Math.round(m.pss)} MiB` : undefined);
          }
          for (const { server } of up) await server.stop();
        }
      }
    }
  } finally {
    await removeTemp();
  }
  const rep = summarize(
    'IMAP',
    'msg/s',
    samples,
    [
      `${plan.fetchUsers.length} INBOXes of ${plan.messages} messages of ${plan.size} octets (FETCH BODY.PEEK[], STORE); a sync folder of ${plan.syncMessages} messages of about ${plan.syncSize} octets, every third multipart/alternative, ${SENDERS} senders (first sync, SEARCH)${plan.bigMessages ? `; a folder of ${plan.bigMessages} messages of about ${plan.bigSize} octets (SELECT, FETCH of a range)` : ''}. Every row counts messages handled per second (for SEARCH: messages searched; for IDLE: notifications); p50/p99 per command (APPEND, SEARCH) or per notification (IDLE); a row of one command gives its time as p50.`,
      'Each server started fresh for each run over the same data (ours: a data folder seeded through the mailbox store with the stored summary; Dovecot: Maildir files, unseen, its indexes built by the warm-up), then every user logs in once and three whole downloads of one INBOX and one first sync go unmeasured, for every server alike; both servers up at once, each row run on them back to back, the order turning with each row and swapped each run. The big folder rows run on servers started for them alone (their peak PSS in their notes), after one unmeasured login and SELECT.',
      "Memory: Dovecot is its master, imap-login, auth and one imap process per session. CPU µs/op: the server's CPU per message handled.",
    ],
    { samples: memory, tier: { mib: 0, what: 'none (`serve imap` runs no proxy, the only part with a memory tier)' } },
  );
  return problems.length ? { ...rep, problems } : rep;
}
