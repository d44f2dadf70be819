/**
 * `npm run bench -- --cost`: what one inbound message, one POP3 download and one proxy hit or
 * miss cost on AWS. Runs the real listeners and in-process workers on the aws storage family
 * against moto on 127.0.0.1, counts every S3, SQS and DynamoDB request the SDK clients send
 * (core/storage/aws/requests.ts), and prices them at us-east-1 list prices.
 *
 * DynamoDB units are computed from item sizes by AWS's rules (moto's ConsumedCapacity is a
 * constant per call): a read costs ceil(bytes / 4 KB) units (half when eventually consistent, a
 * missing item still one), a write ceil(bytes / 1 KB), a transaction's write twice that; where
 * neither the request nor its answer shows the item (deletes, updates and checks inside
 * transactions) it is counted as one 1 KB item. SQS bills each 64 KB of payload as one request.
 * Lambda: one invocation per inbound receive that brought messages (what the event source
 * mapping hands the function); its duration is not measured here (this process's time against
 * moto says nothing of AWS's round trips), so GB-s are the estimate LAMBDA_SECONDS x 0.5 GB.
 *
 * Run: `npx tsx bench/cost.ts [--messages 50] [--size 51200] [--json]`.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { startApp, type App } from '../containers/app.js';
import { Accounts } from '../core/accounts/accounts.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { MailboxStore } from '../core/mailbox/store.js';
import { Metrics } from '../core/metrics.js';
import { observeAwsRequests, type AwsRequest } from '../core/storage/aws/requests.js';
import { startMoto } from '../test/support/moto.js';

/** us-east-1 list prices in dollars (see README "Monthly cost of a small deployment"). */
export const PRICES = {
  s3Put: 0.005 / 1000,
  s3Get: 0.0004 / 1000,
  sqsRequest: 0.4 / 1e6,
  ddbWriteUnit: 0.625 / 1e6,
  ddbReadUnit: 0.125 / 1e6,
  lambdaRequest: 0.2 / 1e6,
  /** arm64, per GB-second. */
  lambdaGbSecond: 0.0000133334,
  /** Amazon SES receiving: per 1,000 messages, and per 1,000 incoming 256 KB chunks. */
  sesPerMessage: 0.1 / 1000,
  sesPerChunk: 0.09 / 1000,
};

/** S3 operations billed at the PUT rate (PUT, COPY, POST, LIST); the rest at the GET rate. */
const S3_PUT_CLASS = new Set(['PutObject', 'CopyObject', 'CreateMultipartUpload', 'UploadPart', 'CompleteMultipartUpload', 'ListObjectsV2', 'ListObjects']);
/** S3 calls that cost nothing. */
const S3_FREE = new Set(['DeleteObject', 'DeleteObjects', 'AbortMultipartUpload']);

/** What a set of requests costs, by service. */
export interface Tally {
  requests: Record<string, number>;
  s3Put: number;
  s3Get: number;
  sqs: number;
  ddbWrite: number;
  ddbRead: number;
  lambdaRequests: number;
  lambdaGbSeconds: number;
}

function emptyTally(): Tally {
  return { requests: {}, s3Put: 0, s3Get: 0, sqs: 0, ddbWrite: 0, ddbRead: 0, lambdaRequests: 0, lambdaGbSeconds: 0 };
}

/** DynamoDB's item size: attribute names plus values (strings by UTF-8 length, numbers ~ digits / 2 + 1). */
function valueSize(v: unknown): number {
  if (v === null || typeof v !== 'object') return 1;
  const av = v as Record<string, unknown>;
  if (typeof av.S === 'string') return Buffer.byteLength(av.S);
  if (typeof av.N === 'string') return Math.ceil(av.N.replace(/^-|\./g, '').length / 2) + 1;
  if (av.B !== undefined) return (av.B as Uint8Array).length ?? 0;
  if (av.BOOL !== undefined || av.NULL !== undefined) return 1;
  if (Array.isArray(av.L)) return 3 + av.L.reduce((n: number, x) => n + 1 + valueSize(x), 0);
  if (av.M && typeof av.M === 'object') return 3 + itemSize(av.M as Record<string, unknown>);
  if (Array.isArray(av.SS)) return av.SS.reduce((n: number, s) => n + Buffer.byteLength(String(s)), 0);
  return 1;
}

function itemSize(item: Record<string, unknown> | undefined): number {
  if (!item) return 0;
  let n = 0;
  for (const [k, v] of Object.entries(item)) n += Buffer.byteLength(k) + valueSize(v);
  return n;
}

const readUnits = (bytes: number, consistent: boolean) => Math.max(1, Math.ceil(bytes / 4096)) * (consistent ? 1 : 0.5);
const writeUnits = (bytes: number) => Math.max(1, Math.ceil(bytes / 1024));
const sqsChunks = (bytes: number) => Math.max(1, Math.ceil(bytes / 65536));

/** Adds one request to a tally by AWS's billing rules (see the file's comment). */
export function addRequest(t: Tally, r: AwsRequest): void {
  const name = `${r.service}:${r.op}`;
  t.requests[name] = (t.requests[name] ?? 0) + 1;
  const input = r.input;
  const output = r.output ?? {};
  if (r.service === 's3') {
    if (S3_PUT_CLASS.has(r.op)) t.s3Put++;
    else if (!S3_FREE.has(r.op)) t.s3Get++;
  } else if (r.service === 'sqs') {
    if (r.op === 'SendMessage') t.sqs += sqsChunks(Buffer.byteLength(String(input.MessageBody ?? '')));
    else if (r.op === 'ReceiveMessage') {
      const msgs = (output.Messages as { Body?: string }[] | undefined) ?? [];
      t.sqs += sqsChunks(msgs.reduce((n, m) => n + Buffer.byteLength(m.Body ?? ''), 0));
    } else t.sqs++;
  } else {
    const consistent = input.ConsistentRead === true;
    switch (r.op) {
      case 'GetItem':
        t.ddbRead += readUnits(itemSize(output.Item as Record<string, unknown>), consistent);
        break;
      case 'Query': {
        const items = (output.Items as Record<string, unknown>[] | undefined) ?? [];
        t.ddbRead += readUnits(
          items.reduce((n, i) => n + itemSize(i), 0),
          consistent,
        );
        break;
      }
      case 'PutItem':
        t.ddbWrite += writeUnits(itemSize(input.Item as Record<string, unknown>));
        break;
      case 'UpdateItem':
        t.ddbWrite += writeUnits(itemSize(output.Attributes as Record<string, unknown>));
        break;
      case 'DeleteItem':
        t.ddbWrite += 1;
        break;
      case 'TransactWriteItems':
        for (const op of (input.TransactItems as { Put?: { Item: Record<string, unknown> } }[]) ?? []) {
          t.ddbWrite += 2 * (op.Put ? writeUnits(itemSize(op.Put.Item)) : 1);
        }
        break;
      default:
        t.ddbRead += 1;
    }
  }
}

function add(a: Tally, b: Tally): Tally {
  const out = emptyTally();
  for (const t of [a, b]) {
    for (const [k, v] of Object.entries(t.requests)) out.requests[k] = (out.requests[k] ?? 0) + v;
    out.s3Put += t.s3Put;
    out.s3Get += t.s3Get;
    out.sqs += t.sqs;
    out.ddbWrite += t.ddbWrite;
    out.ddbRead += t.ddbRead;
    out.lambdaRequests += t.lambdaRequests;
    out.lambdaGbSeconds += t.lambdaGbSeconds;
  }
  return out;
}

function scale(t: Tally, by: number): Tally {
  const out = emptyTally();
  for (const [k, v] of Object.entries(t.requests)) out.requests[k] = v / by;
  for (const k of ['s3Put', 's3Get', 'sqs', 'ddbWrite', 'ddbRead', 'lambdaRequests', 'lambdaGbSeconds'] as const) out[k] = t[k] / by;
  return out;
}

/** Dollars for a tally, by service. */
export function price(t: Tally): { s3: number; sqs: number; dynamodb: number; lambda: number; total: number } {
  const s3 = t.s3Put * PRICES.s3Put + t.s3Get * PRICES.s3Get;
  const sqs = t.sqs * PRICES.sqsRequest;
  const dynamodb = t.ddbWrite * PRICES.ddbWriteUnit + t.ddbRead * PRICES.ddbReadUnit;
  const lambda = t.lambdaRequests * PRICES.lambdaRequest + t.lambdaGbSeconds * PRICES.lambdaGbSecond;
  return { s3, sqs, dynamodb, lambda, total: s3 + sqs + dynamodb + lambda };
}

/** Records requests between start and stop. */
class Recorder {
  private seen: { at: number; r: AwsRequest }[] = [];
  private readonly off: () => void;
  constructor() {
    this.off = observeAwsRequests((r) => this.seen.push({ at: Date.now(), r }));
  }
  take(): { at: number; r: AwsRequest }[] {
    const out = this.seen;
    this.seen = [];
    return out;
  }
  close(): void {
    this.off();
  }
}

/** The proxy's purge-log poll (a Query of CACHEPURGE once a second per proxy task): background, reported apart. */
function isPurgePoll(r: AwsRequest): boolean {
  return r.op === 'Query' && JSON.stringify(r.input.ExpressionAttributeValues ?? {}).includes('CACHEPURGE');
}

/** `--trace`: every request on stderr, with its key and consistency. */
let trace = false;

/** Estimated Lambda run time per invocation (seconds), priced at infra's 512 MB. */
const LAMBDA_SECONDS = 0.2;

function tally(list: { at: number; r: AwsRequest }[], lambdaMemoryGb: number): Tally {
  const t = emptyTally();
  if (trace) {
    for (const { r } of list) {
      const key = (r.input.Key ?? r.input.Item) as Record<string, { S?: string }> | undefined;
      const where = key
        ? `${key.pk?.S} ${key.sk?.S}`
        : String(r.input.Key ?? r.input.QueueUrl ?? JSON.stringify(r.input.ExpressionAttributeValues ?? '')).slice(0, 120);
      process.stderr.write(`    ${r.service}:${r.op} ${where}${r.input.ConsistentRead ? ' (consistent)' : ''}${r.error ? ` [${r.error.name}]` : ''}\n`);
    }
    process.stderr.write('    --\n');
  }
  for (const { r } of list) {
    addRequest(t, r);
    // Lambda: each inbound receive that brought messages is one invocation; its duration runs to
    // the last delete of its messages.
    if (r.service === 'sqs' && r.op === 'ReceiveMessage' && String(r.input.QueueUrl).includes('inbound') && !String(r.input.QueueUrl).includes('dlq')) {
      const msgs = (r.output?.Messages as unknown[] | undefined) ?? [];
      if (msgs.length) {
        t.lambdaRequests++;
        t.lambdaGbSeconds += LAMBDA_SECONDS * lambdaMemoryGb;
      }
    }
  }
  return t;
}

function smtpPortOf(app: App, listener: string, name: string): number {
  const a = app.listeners.find((l) => l.name === listener)!.addresses.find((x) => x.startsWith(`${name} `))!;
  return Number(a.slice(a.lastIndexOf(':') + 1));
}

/** A minimal POP3 client: one command, one answer (multi-line where asked). */
class Pop3 {
  private buf = '';
  private waiters: (() => void)[] = [];
  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      for (const w of this.waiters.splice(0)) w();
    });
  }
  static async connect(port: number): Promise<Pop3> {
    const sock = net.connect(port, '127.0.0.1');
    await once(sock, 'connect');
    const c = new Pop3(sock);
    await c.read(false);
    return c;
  }
  private async read(multi: boolean): Promise<string> {
    for (;;) {
      const end = multi ? this.buf.indexOf('\r\n.\r\n') : this.buf.indexOf('\r\n');
      if (this.buf.startsWith('-ERR') && this.buf.includes('\r\n')) throw new Error(`POP3: ${this.buf.split('\r\n')[0]}`);
      if (end >= 0) {
        const n = end + (multi ? 5 : 2);
        const out = this.buf.slice(0, n);
        this.buf = this.buf.slice(n);
        return out;
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
  async cmd(line: string, multi = false): Promise<string> {
    this.sock.write(`${line}\r\n`);
    return this.read(multi);
  }
  end(): void {
    this.sock.end();
  }
}

/** A session: login, STAT, UIDL, RETR and DELE of every message, QUIT. Returns messages read. */
async function popSession(port: number, user: string, password: string): Promise<number> {
  const c = await Pop3.connect(port);
  await c.cmd(`USER ${user}`);
  await c.cmd(`PASS ${password}`);
  const stat = await c.cmd('STAT');
  const n = Number(stat.split(' ')[1]);
  await c.cmd('UIDL', true);
  for (let i = 1; i <= n; i++) {
    await c.cmd(`RETR ${i}`, true);
    await c.cmd(`DELE ${i}`);
  }
  await c.cmd('QUIT');
  c.end();
  return n;
}

function proxyGet(proxyPort: number, url: string): Promise<{ status: number; bytes: number; cache: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({ host: '127.0.0.1', port: proxyPort, method: 'GET', path: url, headers: { host: u.host } }, (res) => {
      let bytes = 0;
      res.on('data', (d: Buffer) => (bytes += d.length));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, cache: String(res.headers['x-cache'] ?? res.headers['cache-status'] ?? '') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What the cost bench measured. */
export interface CostResult {
  emulator: string;
  messages: number;
  size: number;
  perMessage: Tally;
  perDownload: Tally;
  popSession: Tally;
  proxyMiss: Tally;
  proxyHitMemory: Tally;
  proxyHitObject: Tally;
  purgePollPerSecond: number;
}

/** Runs the scenarios; `say` gets progress lines. */
export async function runCostBench(o: { messages?: number; size?: number; say?: (s: string) => void } = {}): Promise<CostResult> {
  const messages = o.messages ?? 50;
  const size = o.size ?? 50 * 1024;
  const say = o.say ?? (() => undefined);
  const lambdaGb = 0.5; // infra/config.ts lambda.memoryMiB
  const backend = await startMoto({ say });
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-cost-'));
  const rec = new Recorder();
  const apps: App[] = [];
  const origin = http.createServer((req, res) => {
    const body = Buffer.alloc(20 * 1024, `${req.url}\n`);
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'public, max-age=3600', 'content-length': body.length });
    res.end(body);
  });
  try {
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    const originPort = (origin.address() as net.AddressInfo).port;
    const env = {
      ...backend.env,
      TOMLINSON_STORAGE: 'aws',
      TOMLINSON_DATA_DIR: dir,
      TOMLINSON_HOSTNAME: 'mx.example.com',
      TOMLINSON_SMTP_PORT: '0',
      TOMLINSON_SUBMISSION_PORT: '0',
      TOMLINSON_SUBMISSIONS_PORT: '0',
      TOMLINSON_SMTP_CHECK_AUTH: 'false',
      TOMLINSON_POP3_PORT: '0',
      TOMLINSON_POP3S_PORT: '0',
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_PROXY_PORT: '0',
      TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_WORKERS_THREAD: 'false',
      TOMLINSON_LOG_LEVEL: 'silent',
    };
    const mailApp = await startApp(loadConfig(env), ['smtp', 'pop3', 'workers'], silentLogger, { metrics: new Metrics({ defaults: false }) });
    apps.push(mailApp);
    const accounts = new Accounts(mailApp.storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
    const user = 'bob@example.com';
    const password = 'cost-bench-password';
    await accounts.addDomain('example.com');
    await accounts.addUser(user, password);
    const store = new MailboxStore(mailApp.storage.tables, mailApp.storage.mail);
    await sleep(500);
    rec.take();

    // Inbound: one SMTP session per message (as MX traffic comes), then until all are filed.
    say(`inbound: ${messages} messages of ${size} bytes`);
    const mx = smtpPortOf(mailApp, 'smtp', 'mx');
    const text = `${'x'.repeat(76)}\r\n`.repeat(Math.ceil(size / 78)).slice(0, size);
    for (let i = 0; i < messages; i++) {
      const t = nodemailer.createTransport({ host: '127.0.0.1', port: mx, secure: false, ignoreTLS: true, name: 'client.example.net' });
      await t.sendMail({ from: 'alice@example.net', to: user, subject: `cost ${i}`, text });
      t.close();
    }
    const deadline = Date.now() + 120_000;
    while ((await store.list(user)).length < messages) {
      if (Date.now() > deadline) throw new Error('messages were not all delivered within 120 s');
      await sleep(200);
    }
    await sleep(500);
    const inbound = tally(
      rec.take().filter((x) => !isPurgePoll(x.r)),
      lambdaGb,
    );

    // POP3: an empty session's cost apart from the per-message part.
    say('pop3: download and delete every message');
    const pop = smtpPortOf(mailApp, 'pop3', 'pop3');
    const got = await popSession(pop, user, password);
    if (got !== messages) throw new Error(`POP3 saw ${got} of ${messages} messages`);
    await sleep(500);
    const full = tally(rec.take(), lambdaGb);
    await popSession(pop, user, password);
    await sleep(500);
    const empty = tally(rec.take(), lambdaGb);
    const perDownload = scale(add(full, scale(empty, -1)), messages);

    // Proxy: misses on distinct URLs, then hits from the memory tier; a second task with no
    // memory tier serves the same URLs from the object tier (S3), as another task would.
    say('proxy: misses and hits');
    const proxyApp = await startApp(loadConfig(env), ['proxy'], silentLogger, { metrics: new Metrics({ defaults: false }) });
    apps.push(proxyApp);
    const proxyPort = smtpPortOf(proxyApp, 'proxy', 'proxy');
    const urls = Array.from({ length: 20 }, (_, i) => `http://127.0.0.1:${originPort}/object-${i}`);
    await sleep(1500);
    rec.take();
    const idleStart = Date.now();
    await sleep(5000);
    const idle = rec.take();
    const purgePollPerSecond = idle.filter((x) => isPurgePoll(x.r)).length / ((Date.now() - idleStart) / 1000);
    for (const u of urls) await proxyGet(proxyPort, u);
    await sleep(1500); // the object-tier writes and the stats flush
    const miss = scale(
      tally(
        rec.take().filter((x) => !isPurgePoll(x.r)),
        lambdaGb,
      ),
      urls.length,
    );
    for (let round = 0; round < 3; round++) for (const u of urls) await proxyGet(proxyPort, u);
    await sleep(1500);
    const hitMem = scale(
      tally(
        rec.take().filter((x) => !isPurgePoll(x.r)),
        lambdaGb,
      ),
      urls.length * 3,
    );
    const coldApp = await startApp(loadConfig({ ...env, TOMLINSON_PROXY_MEMORY_BYTES: '0' }), ['proxy'], silentLogger, {
      metrics: new Metrics({ defaults: false }),
    });
    apps.push(coldApp);
    const coldPort = smtpPortOf(coldApp, 'proxy', 'proxy');
    await sleep(1500);
    rec.take();
    for (const u of urls) await proxyGet(coldPort, u);
    await sleep(1500);
    const hitObj = scale(
      tally(
        rec.take().filter((x) => !isPurgePoll(x.r)),
        lambdaGb,
      ),
      urls.length,
    );

    return {
      emulator: backend.emulator,
      messages,
      size,
      perMessage: scale(inbound, messages),
      perDownload,
      popSession: empty,
      proxyMiss: miss,
      proxyHitMemory: hitMem,
      proxyHitObject: hitObj,
      purgePollPerSecond,
    };
  } finally {
    rec.close();
    for (const a of apps.reverse()) await a.close(1000).catch(() => undefined);
    origin.close();
    await backend.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

const fmt = (n: number, d = 2) => (Number.isInteger(n) ? String(n) : n.toFixed(d));
const dollars = (n: number) => `$${n < 0.01 ? n.toPrecision(2) : n.toFixed(2)}`;

/** The result as Markdown tables (per unit, and per million units). */
export function costMarkdown(r: CostResult): string {
  const rows: [string, Tally][] = [
    [`inbound message (${Math.round(r.size / 1024)} KB, one local recipient)`, r.perMessage],
    ['POP3 download (RETR + DELE, per message)', r.perDownload],
    ['POP3 session (login, STAT, UIDL, QUIT; empty)', r.popSession],
    ['proxy miss (20 KB, cacheable)', r.proxyMiss],
    ['proxy hit, memory tier', r.proxyHitMemory],
    ['proxy hit, object tier (S3)', r.proxyHitObject],
  ];
  const lines = ['| per | S3 PUT / GET | SQS requests | DynamoDB WRU / RRU | Lambda invocations / GB-s | $ per million |', '|---|---|---|---|---|---|'];
  for (const [name, t] of rows) {
    const p = price(t);
    lines.push(
      `| ${name} | ${fmt(t.s3Put)} / ${fmt(t.s3Get)} | ${fmt(t.sqs)} | ${fmt(t.ddbWrite)} / ${fmt(t.ddbRead)} | ${fmt(t.lambdaRequests)} / ${fmt(t.lambdaGbSeconds, 4)} | ${dollars(p.total * 1e6)} |`,
    );
  }
  const chunks = Math.ceil(r.size / (256 * 1024));
  const ses = PRICES.sesPerMessage + chunks * PRICES.sesPerChunk;
  lines.push(`| Amazon SES receiving, for comparison | | | | | ${dollars(ses * 1e6)} |`);
  const detail = rows.map(
    ([name, t]) =>
      `- ${name}: ${
        Object.entries(t.requests)
          .map(([k, v]) => `${k} ${fmt(v)}`)
          .join(', ') || 'none'
      }`,
  );
  return `${lines.join('\n')}\n\nRequests behind each row (${r.emulator}; ${r.messages} messages):\n\n${detail.join('\n')}\n- background, per proxy task: the purge-log poll, ${fmt(r.purgePollPerSecond, 1)} Query per second\n`;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  trace = argv.includes('--trace');
  const num = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : undefined;
  };
  const r = await runCostBench({ messages: num('messages'), size: num('size'), say: (s) => process.stderr.write(`  ${s}\n`) });
  process.stdout.write(argv.includes('--json') ? `${JSON.stringify(r, null, 2)}\n` : costMarkdown(r));
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, ''))) {
  main().catch((e: Error) => {
    process.stderr.write(`cost bench failed: ${e.stack ?? e.message}\n`);
    process.exit(1);
  });
}
