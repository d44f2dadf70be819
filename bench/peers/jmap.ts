/**
 * JMAP speed (issue 22, "Speed"). There is no JMAP server on Debian to run beside ours, so each
 * JMAP row has its IMAP counterpart on the same server, data and run: our own IMAP, whose figures
 * stand against Dovecot in the IMAP table. One server (`serve imap,web,smtp,workers` on the
 * embedded default) over the data bench/imap.ts seeds: a fetch user's INBOX of 1,000 × 10 KB
 * (downloads, keywords) and a sync user's INBOX of 10,000 (the newest 50 with previews).
 *
 * Rows (msg/s or requests/s, with p50/p99 where a row repeats one request):
 * - Email/query (inMailbox, receivedAt descending, limit 50) + Email/get of those 50 with preview
 *   and headers, one request; beside it IMAP FETCH of the newest 50 (UID FLAGS ENVELOPE).
 * - Email/changes after 100 deliveries over SMTP.
 * - Email/set of keyword $seen on 1,000 messages; beside it IMAP UID STORE +FLAGS (\Seen).
 * - Blob download of the 1,000 raw messages one after another; beside it IMAP UID FETCH BODY.PEEK[].
 * - Push: from the 250 of an SMTP delivery to the EventSource StateChange, p50/p99.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { ImapLoadClient, seedOursImap, type ImapPlan } from '../imap.js';
import { oneMessage } from '../smtp.js';
import { OURS, summarize, type MemorySample, type ProtocolReport, type Sample } from './report.js';
import { freePort, onCleanup, quantile, stopChild, waitListening, watchPeakMemory } from './util.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIL = 'urn:ietf:params:jmap:mail';
const USING = ['urn:ietf:params:jmap:core', MAIL];

export interface JmapBenchOptions {
  /** Runs, each on a freshly started server over the same data. @default 3 */
  runs?: number;
  /** Messages of the fetch user's INBOX (downloads, keywords). @default 1000 */
  messages?: number;
  /** Messages of the sync user's INBOX (query + get). @default 10000 */
  syncMessages?: number;
  /** Repetitions of the query + get request per run. @default 200 */
  queryReps?: number;
  /** Push rounds per run. @default 50 */
  pushRounds?: number;
  say?: (s: string) => void;
}

/** The JMAP side of one user: an authenticated HTTPS client with the session's URLs. */
class JmapLoadClient {
  private constructor(
    private readonly agent: Agent,
    private readonly auth: string,
    readonly accountId: string,
    readonly apiUrl: string,
    readonly downloadUrl: string,
    readonly eventSourceUrl: string,
    readonly maxObjectsInSet: number,
  ) {}

  static async connect(port: number, user: string, password: string): Promise<JmapLoadClient> {
    // Loopback and a self-signed certificate: the bench measures the server, not the chain check.
    const agent = new Agent({ connect: { rejectUnauthorized: false }, connections: 16 });
    const auth = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    const base = `https://127.0.0.1:${port}`;
    const r = await request(`${base}/.well-known/jmap`, { dispatcher: agent, headers: { authorization: auth } });
    if (r.statusCode !== 200) throw new Error(`JMAP session: HTTP ${r.statusCode} ${await r.body.text()}`);
    const s = (await r.body.json()) as {
      apiUrl: string;
      downloadUrl: string;
      eventSourceUrl: string;
      primaryAccounts: Record<string, string>;
      capabilities: Record<string, { maxObjectsInSet?: number }>;
    };
    // Not through URL: it would percent-encode the templates' braces.
    const abs = (u: string) => (u.startsWith('/') ? `${base}${u}` : u);
    const accountId = s.primaryAccounts[MAIL];
    if (!accountId) throw new Error('JMAP session: no primary mail account');
    const maxSet = s.capabilities['urn:ietf:params:jmap:core']?.maxObjectsInSet ?? 500;
    return new JmapLoadClient(agent, auth, accountId, abs(s.apiUrl), abs(s.downloadUrl), abs(s.eventSourceUrl), maxSet);
  }

  /** One API request; throws on an HTTP or method-level error. */
  async call(methodCalls: [string, Record<string, unknown>, string][]): Promise<[string, Record<string, unknown>, string][]> {
    const r = await request(this.apiUrl, {
      method: 'POST',
      dispatcher: this.agent,
      headers: { authorization: this.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ using: USING, methodCalls }),
    });
    const text = await r.body.text();
    if (r.statusCode !== 200) throw new Error(`JMAP API: HTTP ${r.statusCode} ${text.slice(0, 300)}`);
    const out = (JSON.parse(text) as { methodResponses: [string, Record<string, unknown>, string][] }).methodResponses;
    const err = out.find(([name]) => name === 'error');
    if (err) throw new Error(`JMAP ${methodCalls.find((c) => c[2] === err[2])?.[0]}: ${JSON.stringify(err[1])}`);
    return out;
  }

  /** Downloads a blob and returns its size. */
  async download(blobId: string): Promise<number> {
    const url = this.downloadUrl
      .replace('{accountId}', encodeURIComponent(this.accountId))
      .replace('{blobId}', encodeURIComponent(blobId))
      .replace('{type}', encodeURIComponent('message/rfc822'))
      .replace('{name}', 'm.eml');
    const r = await request(url, { dispatcher: this.agent, headers: { authorization: this.auth } });
    if (r.statusCode !== 200) throw new Error(`download ${blobId}: HTTP ${r.statusCode} ${await r.body.text()} ${url}`);
    let n = 0;
    for await (const chunk of r.body) n += (chunk as Buffer).length;
    return n;
  }

  /** Opens the event source; `onState` gets each StateChange's changed map. */
  async events(onState: (changed: Record<string, Record<string, string>>) => void): Promise<() => void> {
    const url = this.eventSourceUrl.replace('{types}', '*').replace('{closeafter}', 'no').replace('{ping}', '0');
    const ac = new AbortController();
    const r = await request(url, { dispatcher: this.agent, headers: { authorization: this.auth, accept: 'text/event-stream' }, signal: ac.signal });
    if (r.statusCode !== 200) throw new Error(`eventsource: HTTP ${r.statusCode}`);
    let buf = '';
    r.body.setEncoding('utf8');
    r.body.on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = event
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trim())
          .join('\n');
        if (!data) continue;
        const parsed = JSON.parse(data) as { changed?: Record<string, Record<string, string>> };
        if (parsed.changed) onState(parsed.changed);
      }
    });
    r.body.on('error', () => undefined);
    return () => ac.abort();
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

interface Measure {
  scenario: string;
  count: number;
  seconds: number;
  latenciesMs?: number[];
  note?: string;
}

/** Runs the JMAP rows and returns their report. */
export async function runJmapBench(options: JmapBenchOptions = {}): Promise<ProtocolReport> {
  const runs = options.runs ?? 3;
  const say = options.say ?? (() => undefined);
  const queryReps = options.queryReps ?? 200;
  const pushRounds = options.pushRounds ?? 50;
  const plan: ImapPlan = {
    fetchUsers: ['user0@bench.example'],
    messages: options.messages ?? 1000,
    size: 10240,
    syncUser: 'sync@bench.example',
    syncMessages: options.syncMessages ?? 10_000,
    syncSize: 4096,
    writeUser: 'writer@bench.example',
    bigUser: 'big@bench.example',
    bigMessages: 0,
    bigSize: 2048,
    password: 'bench-password',
  };
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-jmap-bench-'));
  const removeTemp = onCleanup(() => rm(dir, { recursive: true, force: true }));
  const samples: Sample[] = [];
  const memory: MemorySample[] = [];
  const problems: string[] = [];
  try {
    const dataDir = join(dir, 'data');
    const t0 = performance.now();
    await seedOursImap(dataDir, plan, say);
    say(`jmap: seeded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    for (let run = 1; run <= runs; run++) {
      const [imapPort, webPort, smtpPort] = [await freePort(), await freePort(), await freePort()];
      const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'containers', 'main.ts'), 'serve', 'imap,web,smtp,workers'], {
        env: {
          ...process.env,
          UV_THREADPOOL_SIZE: '16',
          TOMLINSON_DATA_DIR: dataDir,
          TOMLINSON_IMAP_PORT: String(imapPort),
          TOMLINSON_IMAPS_PORT: '0',
          TOMLINSON_WEB_PORT: String(webPort),
          TOMLINSON_SMTP_PORT: String(smtpPort),
          TOMLINSON_SUBMISSION_PORT: '0',
          TOMLINSON_SUBMISSIONS_PORT: '0',
          TOMLINSON_HEALTH_PORT: '0',
          TOMLINSON_LOG_LEVEL: 'warn',
          TOMLINSON_LOG_PRETTY: 'false',
        },
        cwd: ROOT,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr.on('data', (d: Buffer) => process.stderr.write(d));
      const stop = onCleanup(() => stopChild(child));
      const mem = watchPeakMemory(() => child.pid);
      let ms: Measure[] = [];
      try {
        await waitListening(child, webPort, 'tomlinson web');
        await waitListening(child, imapPort, 'tomlinson imap');
        ms = await scenarios({ imapPort, webPort, smtpPort }, plan, queryReps, pushRounds);
      } catch (e) {
        problems.push(`run ${run}: ${(e as Error).message}`);
        say(`jmap run ${run}: ${(e as Error).stack ?? (e as Error).message}`);
      } finally {
        const peak = await mem.stop();
        if (ms.length) memory.push({ server: OURS, run, peakPss: peak.pss, afterPss: peak.afterPss, peakRss: peak.rss, afterRss: peak.afterRss });
        await stop();
        for (const x of ms) {
          const value = x.count / x.seconds;
          say(`jmap run ${run} ${x.scenario}: ${Math.round(value)}/s`);
          samples.push({
            scenario: x.scenario,
            server: OURS,
            run,
            value,
            p50Ms: x.latenciesMs ? quantile(x.latenciesMs, 0.5) : undefined,
            p99Ms: x.latenciesMs && x.latenciesMs.length > 1 ? quantile(x.latenciesMs, 0.99) : undefined,
            note: x.note,
          });
        }
      }
    }
  } finally {
    await removeTemp();
  }
  const rep = summarize(
    'JMAP (against our own IMAP on the same server and data)',
    'op/s',
    samples,
    [
      `One server (serve imap,web,smtp,workers) per run over the same seeded data: an INBOX of ${plan.messages} × ${plan.size / 1024} KB and one of ${plan.syncMessages.toLocaleString('en')} messages of about ${plan.syncSize} octets. Each JMAP row has its IMAP counterpart in the same run. Every row counts operations (messages, or requests for query + get and changes) per second.`,
      'Push: from the 250 of an SMTP delivery (the message is durable) to the StateChange event on an open EventSource.',
    ],
    { samples: memory, tier: { mib: 0, what: 'none (`serve imap,web,smtp,workers` runs no proxy, the only part with a memory tier)' } },
  );
  return problems.length ? { ...rep, problems } : rep;
}

async function scenarios(
  ports: { imapPort: number; webPort: number; smtpPort: number },
  plan: ImapPlan,
  queryReps: number,
  pushRounds: number,
): Promise<Measure[]> {
  const out: Measure[] = [];
  const timed = async (scenario: string, count: number, fn: () => Promise<Partial<Measure> | void>) => {
    const t = performance.now();
    const extra = (await fn()) ?? {};
    out.push({ scenario, count, seconds: (performance.now() - t) / 1000, ...extra });
  };
  const m = plan.syncMessages;
  const n = plan.messages;

  // The newest 50 with preview and headers (what a client shows first).
  {
    const j = await JmapLoadClient.connect(ports.webPort, plan.syncUser, plan.password);
    const calls: [string, Record<string, unknown>, string][] = [
      ['Email/query', { accountId: j.accountId, filter: { inMailbox: 'INBOX' }, sort: [{ property: 'receivedAt', isAscending: false }], limit: 50 }, 'q'],
      [
        'Email/get',
        {
          accountId: j.accountId,
          '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' },
          properties: ['id', 'threadId', 'mailboxIds', 'keywords', 'receivedAt', 'size', 'from', 'to', 'subject', 'sentAt', 'preview', 'hasAttachment'],
        },
        'g',
      ],
    ];
    const check = (r: Awaited<ReturnType<JmapLoadClient['call']>>) => {
      const list = (r[1]?.[1] as { list?: unknown[] }).list;
      if (list?.length !== 50) throw new Error(`Email/get after Email/query: ${list?.length} emails, expected 50`);
    };
    for (let i = 0; i < 5; i++) check(await j.call(calls)); // warm-up, unmeasured
    const lat: number[] = [];
    await timed(`Email/query + Email/get, newest 50 of ${m.toLocaleString('en')} with preview`, queryReps, async () => {
      for (let i = 0; i < queryReps; i++) {
        const t = performance.now();
        check(await j.call(calls));
        lat.push(performance.now() - t);
      }
      return { latenciesMs: lat };
    });
    await j.close();

    const c = await ImapLoadClient.session(ports.imapPort, plan.syncUser, plan.password);
    const fetch = `FETCH ${m - 49}:${m} (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)`;
    const ilat: number[] = [];
    await timed(`IMAP ${fetch.split(' (')[0]} (UID FLAGS ENVELOPE ...), same folder`, queryReps, async () => {
      for (let i = 0; i < queryReps; i++) {
        const t = performance.now();
        const r = await c.must(fetch);
        if (r.fetches !== 50) throw new Error(`${fetch}: ${r.fetches} responses`);
        ilat.push(performance.now() - t);
      }
      return { latenciesMs: ilat };
    });
    await c.logout();
  }

  const j = await JmapLoadClient.connect(ports.webPort, plan.fetchUsers[0]!, plan.password);
  const ids: string[] = [];
  const blobIds: string[] = [];
  {
    const r = await j.call([
      ['Email/query', { accountId: j.accountId, filter: { inMailbox: 'INBOX' }, limit: n }, 'q'],
      ['Email/get', { accountId: j.accountId, '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' }, properties: ['id', 'blobId'] }, 'g'],
    ]);
    for (const e of (r[1]![1] as { list: { id: string; blobId: string }[] }).list) {
      ids.push(e.id);
      blobIds.push(e.blobId);
    }
    if (ids.length !== n) throw new Error(`Email/query of the fetch INBOX: ${ids.length} ids, expected ${n}`);
  }

  // Keywords on 1,000, in requests of at most maxObjectsInSet.
  {
    const setAll = async (seen: boolean) => {
      for (let i = 0; i < ids.length; i += j.maxObjectsInSet) {
        const update = Object.fromEntries(ids.slice(i, i + j.maxObjectsInSet).map((id) => [id, { 'keywords/$seen': seen ? true : null }]));
        const r = await j.call([['Email/set', { accountId: j.accountId, update }, 's']]);
        const done = Object.keys((r[0]![1] as { updated?: object }).updated ?? {}).length;
        if (done !== Object.keys(update).length) throw new Error(`Email/set: ${done} of ${Object.keys(update).length} updated`);
      }
    };
    const t = performance.now();
    await timed(`Email/set keywords $seen on ${n.toLocaleString('en')} messages`, n, async () => {
      await setAll(true);
      return { latenciesMs: [performance.now() - t] };
    });
    await setAll(false); // unmeasured: back to unseen for the IMAP row and the next run
    const c = await ImapLoadClient.session(ports.imapPort, plan.fetchUsers[0]!, plan.password);
    const t2 = performance.now();
    await timed(`IMAP UID STORE 1:* +FLAGS (\\Seen), same messages`, n, async () => {
      await c.must('UID STORE 1:* +FLAGS.SILENT (\\Seen)');
      return { latenciesMs: [performance.now() - t2] };
    });
    await c.must('UID STORE 1:* -FLAGS.SILENT (\\Seen)');
    await c.logout();
  }

  // Raw messages, one after another on one connection.
  {
    const lat: number[] = [];
    await timed(`Blob download of ${n.toLocaleString('en')} × ${plan.size / 1024} KB messages, one at a time`, n, async () => {
      for (const b of blobIds) {
        const t = performance.now();
        const size = await j.download(b);
        if (size < plan.size) throw new Error(`download ${b}: ${size} octets`);
        lat.push(performance.now() - t);
      }
      return { latenciesMs: lat };
    });
    const c = await ImapLoadClient.session(ports.imapPort, plan.fetchUsers[0]!, plan.password);
    await timed(`IMAP UID FETCH 1:* BODY.PEEK[], same messages`, n, async () => {
      const r = await c.must('UID FETCH 1:* BODY.PEEK[]');
      if (r.fetches !== n) throw new Error(`UID FETCH: ${r.fetches} responses`);
    });
    await c.logout();
  }
  await j.close();

  // Push, then changes: the writer user receives over SMTP.
  {
    const w = await JmapLoadClient.connect(ports.webPort, plan.writeUser, plan.password);
    const before = (await w.call([['Email/get', { accountId: w.accountId, ids: [] }, 'g']]))[0]![1].state as string;
    // The INBOX keeps earlier runs' deliveries (the data folder is seeded once).
    const total = async () =>
      Number((await w.call([['Email/query', { accountId: w.accountId, filter: { inMailbox: 'INBOX' }, calculateTotal: true, limit: 1 }, 'q']]))[0]![1].total);
    const startTotal = await total();
    let waiter: (() => void) | undefined;
    const close = await w.events((changed) => {
      if (changed[w.accountId]?.Email) waiter?.();
    });
    await new Promise((r) => setTimeout(r, 200));
    const body = Buffer.from(`From: sender@remote.example\r\nTo: ${plan.writeUser}\r\nSubject: push\r\n\r\nhello\r\n.\r\n`);
    const lat: number[] = [];
    await timed('Push: SMTP 250 to EventSource StateChange', pushRounds, async () => {
      for (let i = 0; i < pushRounds; i++) {
        let seenAt = NaN;
        const seen = new Promise<void>((resolve) => {
          waiter = () => {
            seenAt = performance.now();
            resolve();
          };
        });
        const sent = oneMessageTo(ports.smtpPort, plan.writeUser, body);
        const okAt = await sent;
        await Promise.race([seen, new Promise((_, reject) => setTimeout(() => reject(new Error('push: no StateChange within 30 s')), 30_000).unref())]);
        lat.push(Math.max(0, seenAt - okAt));
        waiter = undefined;
        await new Promise((r) => setTimeout(r, 20));
      }
      return { latenciesMs: lat };
    });
    close();
    // 50 more, so /changes spans 100 deliveries.
    for (let i = 0; i < 100 - pushRounds; i++) await oneMessageTo(ports.smtpPort, plan.writeUser, body);
    const deadline = Date.now() + 60_000;
    for (let n = await total(); n < startTotal + 100; n = await total()) {
      if (Date.now() > deadline) throw new Error(`deliveries: ${n - startTotal} of 100 in INBOX after 60 s`);
      await new Promise((r2) => setTimeout(r2, 100));
    }
    const clat: number[] = [];
    await timed('Email/changes after 100 deliveries', 50, async () => {
      for (let i = 0; i < 50; i++) {
        const t = performance.now();
        const r = await w.call([['Email/changes', { accountId: w.accountId, sinceState: before, maxChanges: 500 }, 'c']]);
        const created = (r[0]![1].created as string[] | undefined)?.length ?? 0;
        if (created < 100) throw new Error(`Email/changes: ${created} created, expected at least 100`);
        clat.push(performance.now() - t);
      }
      return { latenciesMs: clat };
    });
    await w.close();
  }
  return out;
}

/** One SMTP delivery to `rcpt`; resolves with the time of its 250 after DATA. */
async function oneMessageTo(port: number, rcpt: string, body: Buffer): Promise<number> {
  await oneMessage(port, body, rcpt);
  return performance.now();
}
