/**
 * RFC 1939 §8 exclusive access and RFC 1939 §6 UPDATE under failure: the maildrop lease of a
 * killed server process expires and the mailbox opens again with nothing deleted; a session that
 * lost its lease may not delete; a deletion decided at QUIT but cut short is finished at the next
 * login, so QUIT is all or nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mailboxKeys } from '../../core/mailbox/store.js';
import { pendingDeleteKey } from '../../containers/pop3/maildrop.js';
import { addUsers, makeMessage, passwordOf, RawClient, startHarness, type Harness } from './harness.js';

const HOLDER = fileURLToPath(new URL('./support/holder.ts', import.meta.url));
const LEASE_SECONDS = 5;
let h: Harness;
const children: ChildProcess[] = [];

beforeAll(async () => {
  h = await startHarness({ TOMLINSON_POP3_LEASE_SECONDS: String(LEASE_SECONDS) });
  await addUsers(h, 'killed@example.com', 'lost@example.com', 'pending@example.com');
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await h?.close();
});

/** Starts a POP3 server in another process over the same data folder. */
async function startHolder(): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', HOLDER, h.dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, LEASE_SECONDS: String(LEASE_SECONDS) },
  });
  children.push(child);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`holder exited with ${code}`)));
  });
  return { child, port };
}

async function login(port: number, user: string): Promise<{ client: RawClient; reply: string }> {
  const { client } = await RawClient.connect(port);
  return { client, reply: await client.login(user, passwordOf(user)) };
}

describe('RFC 1939 §8: the lease of a killed holder', () => {
  it('a killed server process after DELE deletes nothing; its lease expires and the maildrop opens', async () => {
    const user = 'killed@example.com';
    for (let i = 1; i <= 3; i++) await h.deliver(user, makeMessage(i));
    const { child, port } = await startHolder();
    const a = await login(port, user);
    expect(a.reply).toMatch(/^\+OK/);
    expect(await a.client.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await a.client.cmd('DELE 2')).toMatch(/^\+OK/);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const killedAt = Date.now();

    // The lease outlives its dead holder for up to LEASE_SECONDS: meanwhile, IN-USE.
    const b = await login(h.port, user);
    expect(b.reply).toMatch(/^-ERR \[IN-USE\]/);
    let opened = false;
    while (!opened && Date.now() - killedAt < (LEASE_SECONDS + 5) * 1000) {
      await new Promise((r) => setTimeout(r, 250));
      opened = (await b.client.login(user, passwordOf(user))).startsWith('+OK');
    }
    expect(opened).toBe(true);
    expect(Date.now() - killedAt).toBeLessThan((LEASE_SECONDS + 5) * 1000);
    expect(await b.client.cmd('STAT')).toMatch(/^\+OK 3 /);
    await b.client.cmd('QUIT');
  });
});

describe('RFC 1939 §6: UPDATE is all or nothing', () => {
  it('a session whose lease was taken over may not delete: QUIT says -ERR and nothing goes', async () => {
    const user = 'lost@example.com';
    for (let i = 1; i <= 2; i++) await h.deliver(user, makeMessage(i));
    const a = await login(h.port, user);
    expect(a.reply).toMatch(/^\+OK/);
    expect(await a.client.cmd('DELE 1')).toMatch(/^\+OK/);
    // Simulate the lease running out while the session stalled, and another holder taking it.
    await h.storage.tables.delete(mailboxKeys.lease(user));
    expect(await h.store.acquireLease(user, 'another-session', LEASE_SECONDS)).toBe(true);
    expect(await a.client.cmd('QUIT')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    await a.client.waitClosed();
    expect((await h.store.list(user)).length).toBe(2);
    await h.store.releaseLease(user, 'another-session');
  });

  it('a deletion recorded at QUIT but cut short is finished before the next snapshot', async () => {
    const user = 'pending@example.com';
    const uids: number[] = [];
    for (let i = 1; i <= 4; i++) uids.push((await h.deliver(user, makeMessage(i))).uid);
    // The state a crash right after the commit point leaves behind.
    await h.storage.tables.put({ ...pendingDeleteKey(user), uids: [uids[0]!, uids[2]!], holder: 'crashed' });
    const b = await login(h.port, user);
    expect(b.reply).toMatch(/^\+OK/);
    expect(await b.client.cmd('STAT')).toMatch(/^\+OK 2 /);
    expect(await b.client.cmd('RETR 1')).toMatch(/^\+OK/);
    expect((await b.client.multilineRaw()).toString()).toBe(makeMessage(2));
    expect(await b.client.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await h.storage.tables.get(pendingDeleteKey(user))).toBeUndefined();
    expect((await h.store.list(user)).map((e) => e.uid)).toEqual([uids[1], uids[3]]);
  });
});
