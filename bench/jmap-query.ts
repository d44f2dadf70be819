/**
 * Email/query latency on a large folder (issue 22's speed target: inMailbox, sort receivedAt
 * desc, limit 50 on 10,000 messages, p99 under 50 ms), over real local storage, handlers called
 * directly (no HTTP): the cold first query (index build), repeated queries with nothing changed,
 * a query after each new delivery (index catch-up and a new sort), Email/queryChanges after a
 * delivery, and one full-text query for scale.
 *
 * Run: npx tsx bench/jmap-query.ts [messages=10000] [rounds=300]
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Accounts } from '../core/accounts/accounts.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { summarizeForMailbox } from '../core/mail/imap-structure.js';
import { FolderStore } from '../core/mailbox/folders.js';
import { INBOX } from '../core/mailbox/keys.js';
import { openStorage } from '../core/storage/open.js';
import { emailQueryMethods } from '../containers/web/jmap/email-query.js';
import type { JmapContext, JsonObject } from '../containers/web/jmap/types.js';

const USER = 'bench@example.com';
const count = Number(process.argv[2] ?? 10_000);
const rounds = Number(process.argv[3] ?? 300);

function message(i: number): Buffer {
  const body = `Message number ${i} with some text to search through.\r\n`.repeat(20);
  return Buffer.from(
    `From: Sender ${i % 97} <s${i % 97}@example.net>\r\nTo: bench@example.com\r\nSubject: Topic ${i % 501} report ${i}\r\n` +
      `Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m${i}@example.net>\r\n\r\n${body}`,
  );
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function report(name: string, samples: number[]): void {
  const s = [...samples].sort((a, b) => a - b);
  console.log(`${name}: n=${s.length} p50=${percentile(s, 50).toFixed(2)} ms p99=${percentile(s, 99).toFixed(2)} ms max=${s[s.length - 1]!.toFixed(2)} ms`);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-jmap-bench-'));
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' });
  const storage = await openStorage(config, silentLogger);
  try {
    const accounts = new Accounts(storage.tables);
    await accounts.addDomain('example.com');
    await accounts.addUser(USER, 'bench-password');
    const folders = new FolderStore(storage.tables, storage.mail);
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    const deliver = async (i: number) => {
      const raw = message(i);
      const blobKey = `in/bench/${randomUUID()}.eml`;
      const info = await storage.mail.put(blobKey, raw);
      const summary = await summarizeForMailbox(Readable.from([raw]));
      await folders.append(USER, INBOX, {
        blobKey,
        size: info.size,
        receivedAt: new Date(t0 + i * 60_000).toISOString(),
        summary,
        flags: i % 3 ? ['\\Seen'] : [],
      });
    };
    const fillStart = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < count) await deliver(next++);
      }),
    );
    console.log(`filled ${count} messages in ${((performance.now() - fillStart) / 1000).toFixed(1)} s`);

    const refuse = async () => {
      throw new Error('unused');
    };
    const ctx: JmapContext = {
      user: USER,
      accountId: 'Abench',
      config,
      storage,
      folders,
      blobs: { get: refuse, put: refuse },
      log: silentLogger,
      createdIds: new Map(),
      followUps: [],
      call: refuse,
    };
    const query = emailQueryMethods.methods['Email/query']!;
    const changes = emailQueryMethods.methods['Email/queryChanges']!;
    const args: JsonObject = { filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }], limit: 50, calculateTotal: true };
    const timed = async (fn: () => Promise<unknown>) => {
      const start = performance.now();
      await fn();
      return performance.now() - start;
    };

    console.log(`cold query (index build): ${(await timed(() => query(args, ctx))).toFixed(1)} ms`);
    const warm: number[] = [];
    for (let i = 0; i < rounds; i++) warm.push(await timed(() => query({ ...args, position: (i * 50) % count }, ctx)));
    report('warm query, nothing changed', warm);
    const pos: number[] = [];
    for (let i = 0; i < rounds; i++) pos.push(await timed(() => folders.changes.position(USER)));
    report('change-log position alone', pos);
    const head: number[] = [];
    for (let i = 0; i < rounds; i++) head.push(await timed(() => folders.changes.allocated(USER)));
    report('one table get (change-log head)', head);

    const afterDelivery: number[] = [];
    const changesAfter: number[] = [];
    for (let i = 0; i < Math.min(rounds, 200); i++) {
      const state = (await query(args, ctx)).queryState;
      await deliver(count + i);
      afterDelivery.push(await timed(() => query(args, ctx)));
      changesAfter.push(await timed(() => changes({ ...args, sinceQueryState: state }, ctx)));
    }
    report('query after one new delivery', afterDelivery);
    report('queryChanges after one new delivery', changesAfter);

    const other: number[] = [];
    for (let i = 0; i < Math.min(rounds, 100); i++) {
      other.push(
        await timed(() => query({ filter: { inMailbox: INBOX, hasKeyword: '$seen', from: `s${i % 97}@` }, sort: [{ property: 'subject' }], limit: 50 }, ctx)),
      );
    }
    report('uncached query (keyword + from, sort subject)', other);
    console.log(
      `text query over every message (reads each blob): ${(await timed(() => query({ filter: { text: 'no such words anywhere' }, limit: 50 }, ctx))).toFixed(0)} ms`,
    );
  } finally {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
