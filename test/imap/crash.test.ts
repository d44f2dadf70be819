/**
 * Crash safety of IMAP (issue 21, "Never lose mail"): the IMAP server runs in its own process
 * (crash-server.ts, `serve imap` on a local data folder), a client drives APPEND, COPY, MOVE and
 * EXPUNGE, and the process is SIGKILLed at seeded points: at the n-th storage write (before or
 * after it) or, every third round, by a timer from outside. After each kill the storage is checked
 * with the process dead (every folder entry's blob exists; each blob's BLOBREF count equals the
 * entries naming it; an unreferenced blob has no BLOBREF left), then the process is restarted on
 * the same folder and a fresh client checks the operation that was cut short:
 * - APPEND: the message is there once or not at all; an APPEND that got its OK is there.
 * - MOVE: each moved message is in the source or the target, exactly once.
 * - COPY: the source unchanged; each message at most once more in the target.
 * - EXPUNGE: only messages marked \Deleted go; an EXPUNGE that got its OK removed them all.
 * Every operation that got its OK is checked the same way with nothing left uncertain, so the chain
 * of checks accounts for each message from its APPEND on. At the end the orphan sweep removes what
 * the kills left (blobs stored for an APPEND that never committed, blobs whose last reference went
 * just before the kill) and nothing else, and every message's body comes back byte for byte.
 * TOMLINSON_CRASH_SEED picks another seed (the one used is printed); TOMLINSON_CRASH_KEEP keeps the
 * data folder for a look after a failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { sweepOrphanBlobs } from '../../core/mail/sweep.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { mailboxKeys } from '../../core/mailbox/keys.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { RawImap } from './raw-client.js';

const here = new URL('.', import.meta.url).pathname;
const root = new URL('../..', import.meta.url).pathname;
const USER = 'crash@crash.test';
const PASSWORD = 'crash-password-1';
const FOLDERS = ['INBOX', 'Work', 'Archive'] as const;
type Folder = (typeof FOLDERS)[number];
const KILLS = 12;
/** Operations per round before the round's kill is forced from outside. */
const MAX_OPS_PER_ROUND = 40;

/** mulberry32: a small seeded PRNG, so a failing run can be repeated. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A message the test can recognise by its Message-ID, sizes from a few hundred bytes to 40 KB. */
function message(id: number, rand: () => number): string {
  const lines = [`From: <s${id % 5}@elsewhere.test>`, `To: <${USER}>`, `Subject: crash ${id}`, `Message-ID: <c${id}@crash.test>`, '', ''];
  const body = Array.from({ length: 4 + Math.floor(rand() * 500) }, (_, i) => `line ${i} of ${id} ${'y'.repeat(i % 70)}`);
  return lines.join('\r\n') + body.join('\r\n') + '\r\n';
}

/** What a folder holds: uid → message id and whether it is marked \Deleted. */
type Snapshot = Map<Folder, Map<number, { id: number; deleted: boolean }>>;

type Op =
  | { kind: 'append'; folder: Folder; id: number }
  | { kind: 'copy' | 'move'; from: Folder; to: Folder; uids: number[] }
  | { kind: 'expunge'; folder: Folder; uids: number[]; plain: boolean }
  | { kind: 'none' };

/** Reads every folder through the protocol. */
async function snapshot(c: RawImap): Promise<Snapshot> {
  const out: Snapshot = new Map();
  for (const f of FOLDERS) {
    const ex = await c.command(`EXAMINE ${f}`);
    if (!/ OK/.test(ex.tagged)) throw new Error(`EXAMINE ${f}: ${ex.tagged}`);
    const m = new Map<number, { id: number; deleted: boolean }>();
    if (ex.untagged.some((l) => /^\* [1-9]\d* EXISTS$/.test(l))) {
      const r = await c.command('UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])');
      if (!/ OK/.test(r.tagged)) throw new Error(`FETCH in ${f}: ${r.tagged}`);
      for (const line of r.untagged) {
        const uid = /UID (\d+)/.exec(line);
        const id = /Message-ID: <c(\d+)@crash\.test>/i.exec(line);
        if (!uid || !id) continue;
        m.set(Number(uid[1]), { id: Number(id[1]), deleted: /FLAGS \([^)]*\\Deleted/.test(line) });
      }
    }
    out.set(f, m);
  }
  return out;
}

/** Multiset of ids as a sorted list, for comparison. */
const ids = (xs: Iterable<{ id: number }>) => [...xs].map((x) => x.id).sort((a, b) => a - b);
/** True when multiset `a` is inside multiset `b`. */
function within(a: number[], b: number[]): boolean {
  const left = [...b];
  for (const x of a) {
    const i = left.indexOf(x);
    if (i < 0) return false;
    left.splice(i, 1);
  }
  return true;
}

/**
 * What is wrong with going from `before` to `after` through `op` (which got its OK when
 * `completed`); empty when the outcome is one the rules allow.
 */
function outcomeErrors(before: Snapshot, after: Snapshot, op: Op, completed: boolean): string[] {
  const errors: string[] = [];
  const gone = new Map<Folder, { id: number }[]>();
  const added = new Map<Folder, { id: number }[]>();
  for (const f of FOLDERS) {
    const b = before.get(f)!;
    const a = after.get(f)!;
    const top = Math.max(0, ...b.keys());
    gone.set(
      f,
      [...b].filter(([uid]) => !a.has(uid)).map(([uid, x]) => ({ uid, id: x.id })),
    );
    const fresh: { id: number }[] = [];
    for (const [uid, x] of a) {
      const old = b.get(uid);
      if (old && old.id !== x.id) errors.push(`${f} uid ${uid} was message ${old.id}, is ${x.id}`);
      if (!old) {
        if (uid <= top) errors.push(`${f} uid ${uid} is new but not above the old highest uid ${top}`);
        fresh.push(x);
      }
    }
    added.set(f, fresh);
  }
  const expectGone = (f: Folder, allowed: Set<number>, required: Set<number>) => {
    const g = gone.get(f)! as { uid: number; id: number }[];
    for (const x of g) if (!allowed.has(x.uid)) errors.push(`${f} lost uid ${x.uid} (message ${x.id}) that ${op.kind} must not remove`);
    const goneUids = new Set(g.map((x) => x.uid));
    for (const uid of required) if (!goneUids.has(uid)) errors.push(`${f} still has uid ${uid} after an OK'd ${op.kind}`);
  };
  const expectAdded = (f: Folder, allowed: number[], required: number[]) => {
    const got = ids(added.get(f)!);
    if (!within(got, allowed)) errors.push(`${f} gained messages [${got}] where at most [${allowed}] may appear`);
    if (!within(required, got)) errors.push(`${f} gained [${got}] but an OK'd ${op.kind} must add [${required}]`);
  };
  const none = new Set<number>();
  for (const f of FOLDERS) {
    const involved =
      op.kind === 'append' || op.kind === 'expunge' ? f === op.folder : op.kind === 'copy' || op.kind === 'move' ? f === op.from || f === op.to : false;
    if (!involved) {
      expectGone(f, none, none);
      expectAdded(f, [], []);
    }
  }
  switch (op.kind) {
    case 'append':
      expectGone(op.folder, none, none);
      expectAdded(op.folder, [op.id], completed ? [op.id] : []);
      break;
    case 'expunge': {
      const b = before.get(op.folder)!;
      const allowed = new Set(op.plain ? [...op.uids, ...[...b].filter(([, x]) => x.deleted).map(([uid]) => uid)] : op.uids);
      expectGone(op.folder, allowed, completed ? allowed : none);
      expectAdded(op.folder, [], []);
      break;
    }
    case 'copy': {
      const src = before.get(op.from)!;
      const moving = ids(op.uids.map((u) => src.get(u)!));
      expectGone(op.from, none, none);
      expectGone(op.to, none, none);
      expectAdded(op.from, [], []);
      expectAdded(op.to, moving, completed ? moving : []);
      break;
    }
    case 'move': {
      const src = before.get(op.from)!;
      const moving = ids(op.uids.map((u) => src.get(u)!));
      expectGone(op.from, new Set(op.uids), completed ? new Set(op.uids) : none);
      expectGone(op.to, none, none);
      expectAdded(op.from, [], []);
      // Exactly once: what left the source is what reached the target, message for message.
      const left = ids(gone.get(op.from)!);
      const arrived = ids(added.get(op.to)!);
      if (left.join() !== arrived.join()) errors.push(`MOVE ${op.from}→${op.to}: left [${left}] but arrived [${arrived}]`);
      expectAdded(op.to, moving, completed ? moving : []);
      break;
    }
    case 'none':
      break;
  }
  return errors;
}

/** Picks the next operation from the current state. */
function pickOp(state: Snapshot, rand: () => number, nextId: () => number): Op {
  const nonEmpty = FOLDERS.filter((f) => state.get(f)!.size > 0);
  const r = rand();
  const folder = (): Folder => FOLDERS[Math.floor(rand() * FOLDERS.length)]!;
  if (r < 0.35 || nonEmpty.length === 0) return { kind: 'append', folder: folder(), id: nextId() };
  const from = nonEmpty[Math.floor(rand() * nonEmpty.length)]!;
  const uids = [...state.get(from)!.keys()].filter(() => rand() < 0.6);
  if (!uids.length) uids.push([...state.get(from)!.keys()][0]!);
  // More than 10 messages span two transactions (FolderStore's BATCH): a kill can fall between.
  const chosen = uids.slice(0, 25);
  if (r < 0.85) {
    const others = FOLDERS.filter((f) => f !== from);
    return { kind: r < 0.6 ? 'move' : 'copy', from, to: others[Math.floor(rand() * others.length)]!, uids: chosen };
  }
  return { kind: 'expunge', folder: from, uids: chosen, plain: rand() < 0.5 };
}

/** Runs `op`; resolves true when it got its OK, false when the connection died first. */
async function runOp(c: RawImap, op: Op, bodies: Map<number, string>): Promise<boolean> {
  const expectOk = (r: { tagged: string }, what: string) => {
    if (!/^\S+ OK/.test(r.tagged)) throw new Error(`${what}: ${r.tagged}`);
  };
  try {
    switch (op.kind) {
      case 'append': {
        const m = bodies.get(op.id)!;
        expectOk(await c.command(`APPEND ${op.folder} {${m.length}+}\r\n${m}`), 'APPEND');
        return true;
      }
      case 'copy':
      case 'move':
        expectOk(await c.command(`SELECT ${op.from}`), 'SELECT');
        expectOk(await c.command(`UID ${op.kind.toUpperCase()} ${op.uids.join(',')} ${op.to}`), op.kind);
        return true;
      case 'expunge':
        expectOk(await c.command(`SELECT ${op.folder}`), 'SELECT');
        expectOk(await c.command(`UID STORE ${op.uids.join(',')} +FLAGS.SILENT (\\Deleted)`), 'STORE');
        expectOk(await c.command(op.plain ? 'EXPUNGE' : `UID EXPUNGE ${op.uids.join(',')}`), 'EXPUNGE');
        return true;
      case 'none':
        return true;
    }
  } catch (e) {
    if (c.closed) return false;
    throw e;
  }
}

interface StoreCheck {
  entries: number;
  /** Unreferenced blobs under append/ (left by a kill; the sweep's to remove). */
  orphans: number;
  errors: string[];
}

/** Checks blobs and reference counts directly in the data folder (the server must be dead). */
async function checkStore(config: Config): Promise<StoreCheck> {
  const storage = await openLocalStorage(config, silentLogger);
  try {
    const folders = new FolderStore(storage.tables, storage.mail);
    const perBlob = new Map<string, number>();
    const errors: string[] = [];
    let entries = 0;
    for (const f of await folders.list(USER))
      for await (const m of folders.entries(USER, f.id)) {
        entries++;
        perBlob.set(m.blobKey, (perBlob.get(m.blobKey) ?? 0) + 1);
      }
    for (const [key, n] of perBlob) {
      const refs = Number((await storage.tables.get(mailboxKeys.blobRef(key)))?.refs ?? 0);
      if (refs !== n) errors.push(`blob ${key}: ${n} folder entries, BLOBREF refs ${refs}`);
      try {
        await storage.mail.head(key);
      } catch {
        errors.push(`blob ${key} missing for ${n} folder entries`);
      }
    }
    let orphans = 0;
    let cursor: string | undefined;
    do {
      const page = await storage.mail.list('append/', { cursor, limit: 1000 });
      for (const b of page.items) {
        if (perBlob.has(b.key)) continue;
        orphans++;
        const ref = await storage.tables.get(mailboxKeys.blobRef(b.key));
        if (ref) errors.push(`blob ${b.key}: no folder entry but BLOBREF refs ${String(ref.refs)}`);
      }
      cursor = page.cursor;
    } while (cursor);
    return { entries, orphans, errors };
  } finally {
    await storage.close();
  }
}

describe('IMAP crash safety', () => {
  it('leaves every message exactly once (COPY: at most once more) across SIGKILLs inside APPEND, COPY, MOVE and EXPUNGE', async () => {
    const seed = Number(process.env.TOMLINSON_CRASH_SEED ?? 20_261_207);
    const rand = prng(seed);
    const dir = await tempDir('tomlinson-imap-crash-');
    const [port] = await freePorts(1);
    const env: Record<string, string> = {
      TOMLINSON_DATA_DIR: join(dir.path, 'data'),
      TOMLINSON_LISTEN_HOST: '127.0.0.1',
      TOMLINSON_IMAP_PORT: String(port),
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_WEB_PORT: '0',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_LOG_LEVEL: 'error',
      TOMLINSON_LOG_PRETTY: 'false',
    };
    const config = loadConfig(env);
    {
      const storage = await openLocalStorage(config, silentLogger);
      const accounts = new Accounts(storage.tables);
      await accounts.addDomain('crash.test');
      await accounts.addUser(USER, PASSWORD);
      const folders = new FolderStore(storage.tables, storage.mail);
      await folders.create(USER, 'Work');
      await folders.ensureSpecialUse(USER, '\\Archive');
      await storage.close();
    }

    let child: ChildProcess | undefined;
    let childOutput = '';
    const start = async (crashAt: number, when: 'before' | 'after') => {
      const c = spawn(process.execPath, ['--import', 'tsx', join(here, 'crash-server.ts')], {
        cwd: root,
        env: { ...process.env, ...env, CRASH_AT_WRITE: String(crashAt), CRASH_WHEN: when },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child = c;
      const ready = new Promise<void>((resolve, reject) => {
        c.stdout!.on('data', (d: Buffer) => {
          if (d.toString().includes('READY')) resolve();
        });
        c.stderr!.on('data', (d: Buffer) => (childOutput = (childOutput + d.toString()).slice(-4000)));
        c.once('exit', (code, signal) => reject(new Error(`crash-server exited (${code ?? signal}) before READY:\n${childOutput}`)));
      });
      await ready;
    };
    const dead = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
    const connect = async () => {
      const c = await RawImap.connect(port);
      const r = await c.command(`LOGIN ${USER} ${PASSWORD}`);
      if (!/ OK/.test(r.tagged)) throw new Error(`LOGIN: ${r.tagged}`);
      return c;
    };

    const bodies = new Map<number, string>();
    let lastId = 0;
    const nextId = () => {
      const id = ++lastId;
      bodies.set(id, message(id, rand));
      return id;
    };
    const errors: string[] = [];
    const tally = { ops: 0, completed: 0, cutShort: {} as Record<string, number>, internalKills: 0, timedKills: 0, orphansSeen: 0 };
    const startedAt = Date.now();
    let state: Snapshot = new Map(FOLDERS.map((f) => [f, new Map()]));
    let pending: { op: Op; completed: boolean } = { op: { kind: 'none' }, completed: true };

    try {
      for (let round = 0; round <= KILLS; round++) {
        const last = round === KILLS;
        const timed = !last && round % 3 === 2;
        const crashAt = last || timed ? 0 : 1 + Math.floor(rand() * 30);
        const when = rand() < 0.5 ? 'before' : 'after';
        await start(crashAt, when);
        const c = child!;
        let timer: NodeJS.Timeout | undefined;
        let forced = false;
        if (timed) timer = setTimeout(() => c.kill('SIGKILL'), 300 + Math.floor(rand() * 1500));
        let client: RawImap | undefined;
        try {
          client = await connect();
          // The operation the last kill cut short (or that got its OK just before it).
          const after = await snapshot(client);
          for (const e of outcomeErrors(state, after, pending.op, pending.completed)) errors.push(`round ${round}, after restart: ${e}`);
          state = after;
          pending = { op: { kind: 'none' }, completed: true };
          for (let n = 0; n < (last ? 10 : MAX_OPS_PER_ROUND); n++) {
            const op = pickOp(state, rand, nextId);
            tally.ops++;
            pending = { op, completed: false };
            pending.completed = await runOp(client, op, bodies);
            if (!pending.completed) {
              tally.cutShort[op.kind] = (tally.cutShort[op.kind] ?? 0) + 1;
              break;
            }
            tally.completed++;
            const next = await snapshot(client);
            for (const e of outcomeErrors(state, next, op, true)) errors.push(`round ${round}, ${op.kind}: ${e}`);
            state = next;
            pending = { op: { kind: 'none' }, completed: true };
          }
        } catch (e) {
          // The kill came during LOGIN or a snapshot: nothing uncertain beyond `pending`.
          if (!(client?.closed ?? true) && c.exitCode === null && c.signalCode === null) throw e;
        } finally {
          client?.close();
        }
        // A dropped connection means the process is dying: let its exit arrive before judging.
        if (!last && client?.closed) await Promise.race([dead(c), new Promise((r) => setTimeout(r, 5000))]);
        if (last) {
          // Every message byte for byte, through the restarted server.
          const v = await connect();
          for (const f of FOLDERS) {
            await v.command(`EXAMINE ${f}`);
            const r = await v.command('UID FETCH 1:* (BODY.PEEK[])');
            for (const line of r.untagged) {
              const m = /^\* \d+ FETCH \(.*BODY\[\] \{(\d+)\}([\s\S]*)\)$/.exec(line);
              const id = m && /Message-ID: <c(\d+)@crash\.test>/.exec(m[2]!);
              if (!m || !id) continue;
              const body = m[2]!.slice(0, Number(m[1]));
              if (body !== bodies.get(Number(id[1]))) errors.push(`${f}: message ${id[1]} differs from what was appended`);
            }
          }
          v.close();
          c.kill('SIGTERM');
        } else {
          clearTimeout(timer);
          if (c.exitCode === null && c.signalCode === null) {
            forced = true; // the round ran out of operations before its kill
            c.kill('SIGKILL');
          }
        }
        await dead(c);
        if (!last) {
          if (c.signalCode !== 'SIGKILL') throw new Error(`crash-server ended with ${c.exitCode ?? c.signalCode}, not SIGKILL:\n${childOutput}`);
          if (timed || forced) tally.timedKills++;
          else tally.internalKills++;
        }
        const store = await checkStore(config);
        tally.orphansSeen = store.orphans;
        for (const e of store.errors) errors.push(`round ${round}, storage: ${e}`);
      }

      // The documented cleanup (no server runs, no queue holds anything): only orphans go.
      const storage = await openLocalStorage(config, silentLogger);
      const swept = await sweepOrphanBlobs(storage, { settleSeconds: 0 });
      await storage.close();
      const final = await checkStore(config);
      for (const e of final.errors) errors.push(`after the sweep: ${e}`);
      const held = [...state.values()].reduce((n, m) => n + m.size, 0);
      process.stdout.write(
        `imap crash (seed ${seed}): ${tally.ops} operations, ${tally.completed} OK'd, cut short ${JSON.stringify(tally.cutShort)};` +
          ` kills ${tally.internalKills} at a storage write + ${tally.timedKills} by timer; ${held} messages held in the end;` +
          ` orphan blobs ${tally.orphansSeen} before the sweep, ${swept.deleted} swept, ${final.orphans} after; ${Math.round((Date.now() - startedAt) / 1000)} s\n`,
      );
      expect(errors).toEqual([]);
      expect(tally.internalKills + tally.timedKills).toBe(KILLS);
      // Most kills must land inside an operation, not between them.
      expect(Object.values(tally.cutShort).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(KILLS / 2);
      expect(final.entries).toBe(held);
      expect(swept.deleted).toBe(tally.orphansSeen);
      expect(final.orphans).toBe(0);
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      if (process.env.TOMLINSON_CRASH_KEEP) process.stdout.write(`data kept in ${dir.path}\n`);
      else await dir.remove();
    }
  }, 150_000);
});
