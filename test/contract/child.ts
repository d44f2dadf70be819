/**
 * A child process for the storage contract suite: it opens the storage under test from its
 * environment (the same variables the parent's target gives), runs one scenario and prints one
 * JSON line. Run as `node --import tsx test/contract/child.ts <mode> ...`.
 *
 * Modes:
 * - `big <key> <bytes>`: streams generated data through put and get, measuring resident memory.
 * - `crash <key>`: starts a put of an endless body and prints STREAMING once it is well under
 *   way; the parent SIGKILLs it there.
 * - `race <pk> <sk> <blobKey> <racers> <name>`: prints READY, waits for GO on stdin, then runs
 *   `racers` conditional table puts and put-if-absent blob puts at once and reports the wins.
 * - `drain <queue> <seconds>`: prints READY, waits for GO, then receives and deletes for that long.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import { isStorageError, type QueueName, type Storage } from '../../core/storage/ports.js';

const CHUNK = 64 * 1024;

function out(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** Deterministic-looking data: a random block with the chunk index stamped into each copy. */
function* generate(total: number, hash: ReturnType<typeof createHash>): Generator<Buffer> {
  const base = randomBytes(CHUNK);
  let sent = 0;
  for (let i = 0; sent < total; i++) {
    const n = Math.min(CHUNK, total - sent);
    const chunk = Buffer.allocUnsafe(n);
    base.copy(chunk, 0, 0, n);
    if (n >= 8) chunk.writeBigUInt64BE(BigInt(i), 0);
    hash.update(chunk);
    sent += n;
    yield chunk;
  }
}

async function big(storage: Storage, key: string, bytes: number): Promise<void> {
  // Warm up: load the code paths (and SDK modules) before taking the baseline.
  await storage.mail.put(`${key}.warmup`, randomBytes(1024 * 1024));
  const w = await storage.mail.get(`${key}.warmup`);
  for await (const _ of w.body) void _;
  await storage.mail.delete(`${key}.warmup`);
  (globalThis as { gc?: () => void }).gc?.();
  await sleep(50);
  const baseline = process.memoryUsage.rss();
  let peak = baseline;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss());
  }, 10);
  const expected = createHash('sha256');
  const started = Date.now();
  const info = await storage.mail.put(key, Readable.from(generate(bytes, expected), { objectMode: false }), {
    maxBytes: bytes + 1,
    contentType: 'application/octet-stream',
  });
  const putMs = Date.now() - started;
  const expectedSha = expected.digest('hex');
  const got = await storage.mail.get(key);
  const back = createHash('sha256');
  let backBytes = 0;
  for await (const chunk of got.body as AsyncIterable<Buffer>) {
    back.update(chunk);
    backBytes += chunk.length;
  }
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage.rss());
  out({
    size: info.size,
    putSha: info.sha256,
    expectedSha,
    getSha: back.digest('hex'),
    backBytes,
    headSize: got.info.size,
    baseline,
    peak,
    putMs,
    totalMs: Date.now() - started,
  });
}

async function crash(storage: Storage, key: string): Promise<void> {
  async function* endless(): AsyncGenerator<Buffer> {
    const block = randomBytes(1024 * 1024);
    for (let i = 0; ; i++) {
      yield Buffer.from(block);
      // Pulled again only after the adapter took the previous chunks: by now the put is under way.
      if (i === 8) process.stdout.write('STREAMING\n');
      if (i >= 8) await sleep(20);
    }
  }
  await storage.mail.put(key, Readable.from(endless(), { objectMode: false }));
  out({ error: 'the endless put finished' });
}

async function race(storage: Storage, pk: string, sk: string, blobKey: string, racers: number, name: string): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.on('line', (l) => l.trim() === 'GO' && resolve()));
  process.stdout.write('READY\n');
  await go;
  lines.close();
  const table = Array.from({ length: racers }, (_, i) =>
    storage.tables.put({ pk, sk, winner: `${name}-${i}` }, { condition: { exists: false } }).then(
      () => `${name}-${i}`,
      (e: unknown) => {
        if (isStorageError(e, 'ConditionFailed')) return undefined;
        throw e;
      },
    ),
  );
  const blob = Array.from({ length: racers }, (_, i) =>
    storage.mail.put(blobKey, `winner ${name}-${i}`, { ifAbsent: true }).then(
      () => `${name}-${i}`,
      (e: unknown) => {
        if (isStorageError(e, 'ConditionFailed')) return undefined;
        throw e;
      },
    ),
  );
  const tableWins = (await Promise.all(table)).filter(Boolean);
  const blobWins = (await Promise.all(blob)).filter(Boolean);
  out({ tableWins, blobWins });
}

/** Receives from `queue` until `seconds` pass, deleting each message; reports the bodies it got. */
async function drain(storage: Storage, queue: QueueName, seconds: number): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.on('line', (l) => l.trim() === 'GO' && resolve()));
  process.stdout.write('READY\n');
  await go;
  lines.close();
  const bodies: string[] = [];
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const got = await storage.queues.receive(queue, { max: 10, visibilitySeconds: 60, waitSeconds: 1 });
    for (const m of got) {
      bodies.push(m.body);
      await storage.queues.delete(queue, m.receipt);
    }
  }
  out({ bodies });
}

async function main(): Promise<void> {
  const [mode, ...args] = process.argv.slice(2);
  const storage = await openStorage(loadConfig(process.env), silentLogger);
  try {
    if (mode === 'big') await big(storage, args[0], Number(args[1]));
    else if (mode === 'crash') await crash(storage, args[0]);
    else if (mode === 'drain') await drain(storage, args[0] as QueueName, Number(args[1]));
    else if (mode === 'race') await race(storage, args[0], args[1], args[2], Number(args[3]), args[4]);
    else throw new Error(`unknown mode ${mode}`);
  } finally {
    await storage.close();
  }
}

main().catch((e: unknown) => {
  out({ error: String((e as Error)?.stack ?? e) });
  process.exitCode = 1;
});
