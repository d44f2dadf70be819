/**
 * IMAP sessions over raw sockets: IDLE told of a delivery within a second, two sessions on one
 * folder seeing each other's flag changes and expunges at the points RFC 9051 allows, a POP3 QUIT
 * that deletes shown as EXPUNGE, CONDSTORE and QRESYNC, and the limits (line length, literal
 * size, bad commands, a dropped APPEND) answered clearly without a crash or a stored fragment.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPop3 } from '../../containers/pop3/server.js';
import type { RunningListener } from '../../containers/listener.js';
import { silentLogger } from '../../core/log.js';
import { portOf } from '../pop3/harness.js';
import { addImapUsers, imapMessage, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { RawImap } from './raw-client.js';

let h: ImapHarness;
let pop3: RunningListener;
const open: RawImap[] = [];

beforeAll(async () => {
  h = await startImapHarness({ TOMLINSON_IMAP_MAX_BAD_COMMANDS: '3', TOMLINSON_SMTP_MAX_MESSAGE_BYTES: '100000' });
  pop3 = await startPop3(
    { config: { ...h.config, pop3: { ...h.config.pop3, port: 0 } }, storage: h.storage, log: silentLogger, metrics: h.metrics },
    { tlsPort: 0 },
  );
  await addImapUsers(h, 'idle@example.com', 'two@example.com', 'pop@example.com', 'cond@example.com', 'lim@example.com');
});
afterAll(async () => {
  for (const c of open) c.close();
  await pop3?.close(200);
  await h?.close();
});

async function loggedIn(user: string, select = 'INBOX'): Promise<RawImap> {
  const c = await RawImap.connect(h.port);
  open.push(c);
  expect((await c.command(`LOGIN ${user} ${imapPassword(user)}`)).tagged).toMatch(/OK/);
  if (select) expect((await c.command(`SELECT ${select}`)).tagged).toMatch(/OK/);
  return c;
}

describe('IDLE', () => {
  it('tells an idling client of each new message within a second of its delivery', async () => {
    const c = await loggedIn('idle@example.com');
    const delays: number[] = [];
    for (let i = 1; i <= 5; i++) {
      const from = c.lines.length;
      c.send(`i${i} IDLE\r\n`);
      await c.waitFor(/^\+ /, 5000, from);
      const delivered = h.deliver('idle@example.com', imapMessage(i));
      await delivered;
      const t0 = Date.now();
      await c.waitFor(new RegExp(`^\\* ${i} EXISTS$`), 1000, from);
      delays.push(Date.now() - t0);
      c.send('DONE\r\n');
      await c.waitFor(new RegExp(`^i${i} OK`), 5000, from);
    }
    expect(Math.max(...delays)).toBeLessThan(1000);
  });

  it('answers anything but DONE during IDLE with BAD and ends the IDLE', async () => {
    const c = await loggedIn('idle@example.com');
    const from = c.lines.length;
    c.send('x1 IDLE\r\n');
    await c.waitFor(/^\+ /, 5000, from);
    c.send('x2 NOOP\r\n');
    expect(await c.waitFor(/^x1 /, 5000, from)).toMatch(/^x1 BAD/);
    expect((await c.command('NOOP')).tagged).toMatch(/OK/);
  });
});

describe('two sessions on one folder', () => {
  it('see each other’s flag changes and expunges, and expunges wait while a FETCH by number runs', async () => {
    for (let i = 1; i <= 3; i++) await h.deliver('two@example.com', imapMessage(i));
    const a = await loggedIn('two@example.com');
    const b = await loggedIn('two@example.com');
    expect((await a.command('STORE 1 +FLAGS (\\Flagged)')).tagged).toMatch(/OK/);
    const seen = await b.command('NOOP');
    expect(seen.untagged).toContain('* 1 FETCH (UID 1 FLAGS (\\Flagged))');
    await a.command('STORE 2 +FLAGS (\\Deleted)');
    const ex = await a.command('EXPUNGE');
    expect(ex.untagged).toContain('* 2 EXPUNGE');
    // B still numbers 3 messages: a FETCH by number must not shift them under it (RFC 9051 §7.5.1).
    const f = await b.command('FETCH 3 (UID)');
    expect(f.untagged).toContain('* 3 FETCH (UID 3)');
    expect(f.untagged.some((l) => /EXPUNGE/.test(l))).toBe(false);
    const n = await b.command('NOOP');
    expect(n.untagged).toContain('* 2 EXPUNGE');
    const after = await b.command('FETCH 1:* (UID)');
    expect(after.untagged).toEqual(['* 1 FETCH (UID 1)', '* 2 FETCH (UID 3)']);
  });

  it('shows a POP3 QUIT that deletes as EXPUNGE', async () => {
    for (let i = 1; i <= 2; i++) await h.deliver('pop@example.com', imapMessage(i));
    const c = await loggedIn('pop@example.com');
    const p = net.connect({ host: '127.0.0.1', port: portOf(pop3.addresses, 'pop3') });
    let text = '';
    p.on('data', (d) => (text += d.toString()));
    const until = async (re: RegExp) => {
      const deadline = Date.now() + 5000;
      while (!re.test(text)) {
        if (Date.now() > deadline) throw new Error(`POP3: ${text}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until(/^\+OK/);
    p.write(`USER pop@example.com\r\nPASS ${imapPassword('pop@example.com')}\r\n`);
    await until(/\+OK.*\r\n\+OK/s);
    p.write('DELE 1\r\nQUIT\r\n');
    await until(/signing off|\+OK[^\r]*\r\n\+OK[^\r]*\r\n\+OK[^\r]*\r\n\+OK/s);
    p.destroy();
    const n = await c.command('NOOP');
    expect(n.untagged).toContain('* 1 EXPUNGE');
  });
});

describe('CONDSTORE and QRESYNC', () => {
  it('reports MODSEQs, answers CHANGEDSINCE, refuses a stale UNCHANGEDSINCE, and resyncs with VANISHED (EARLIER)', async () => {
    for (let i = 1; i <= 3; i++) await h.deliver('cond@example.com', imapMessage(i));
    const c = await loggedIn('cond@example.com', '');
    expect((await c.command('ENABLE QRESYNC')).untagged).toContain('* ENABLED QRESYNC');
    const sel = await c.command('SELECT INBOX');
    const validity = Number(/UIDVALIDITY (\d+)/.exec(sel.untagged.join('\n'))![1]);
    const before = Number(/HIGHESTMODSEQ (\d+)/.exec(sel.untagged.join('\n'))![1]);
    expect(before).toBeGreaterThan(0);
    const st = await c.command('STORE 2 +FLAGS (\\Seen)');
    const modseq = Number(/MODSEQ \((\d+)\)/.exec(st.untagged.join('\n'))![1]);
    expect(modseq).toBeGreaterThan(before);
    const changed = await c.command(`FETCH 1:* (FLAGS) (CHANGEDSINCE ${before})`);
    expect(changed.untagged).toEqual([`* 2 FETCH (FLAGS (\\Seen) MODSEQ (${modseq}))`]);
    const stale = await c.command(`STORE 2 (UNCHANGEDSINCE ${before}) +FLAGS (\\Flagged)`);
    expect(stale.tagged).toMatch(/OK \[MODIFIED 2\]/);
    await c.command('UID STORE 3 +FLAGS (\\Deleted)');
    await c.command('UID EXPUNGE 3');
    const other = await loggedIn('cond@example.com', '');
    await other.command('ENABLE QRESYNC');
    const re = await other.command(`SELECT INBOX (QRESYNC (${validity} ${before}))`);
    expect(re.untagged).toContain('* VANISHED (EARLIER) 3');
    expect(re.untagged.some((l) => /^\* 2 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ/.test(l))).toBe(true);
  });
});

describe('quota', () => {
  it('counts every folder: APPEND and COPY past the quota get NO [OVERQUOTA] and store nothing; GETQUOTAROOT reports it', async () => {
    const u = 'quota@example.com';
    await addImapUsers(h, u);
    await h.accounts.setQuota(u, 2000);
    await h.deliver(u, imapMessage(1, 'y'.repeat(700) + '\r\n'));
    const c = await loggedIn(u);
    expect((await c.command('COPY 1 Archive')).tagged).toMatch(/OK/);
    const copy = await c.command('COPY 1 Archive');
    expect(copy.tagged).toMatch(/NO \[OVERQUOTA\]/);
    const big = 'From: a@example.net\r\nSubject: big\r\n\r\n' + 'z'.repeat(900) + '\r\n';
    const append = await c.command(`APPEND Drafts {${big.length}+}\r\n${big}`);
    expect(append.tagged).toMatch(/NO \[OVERQUOTA\]/);
    const usage = await h.folders.usage(u);
    expect(usage.count).toBe(2);
    const q = await c.command('GETQUOTAROOT INBOX');
    expect(q.untagged).toContain('* QUOTAROOT "INBOX" ""');
    expect(q.untagged.some((l) => /^\* QUOTA "" \(STORAGE 2 2\)$/.test(l))).toBe(true);
  });
});

describe('limits and garbage', () => {
  it('says which limit a long line, a big literal and bad commands hit, then closes', async () => {
    const c = await loggedIn('lim@example.com');
    const long = await c.command(`NOOP ${'x'.repeat(70_000)}`);
    expect(long.tagged).toMatch(/BAD/);
    expect(long.tagged.toLowerCase()).toContain('line');
    const big = await c.command('APPEND INBOX {200000}');
    expect(big.tagged).toMatch(/NO \[TOOBIG\].*100000/);
    c.send('\x00\x01\x02 garbage\r\n');
    c.send('b1 FROB\r\n');
    c.send('b2 FROB\r\n');
    await c.waitFor(/^\* BYE Too many bad commands/, 5000);
    await c.waitClosed();
  });

  it('survives random bytes on many connections (seeded) and still logs a user in', async () => {
    let seed = 2143;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    const pieces = [
      'a1 ',
      'LOGIN ',
      'SELECT ',
      'FETCH 1:* ',
      'BODY[',
      ']',
      '(',
      ')',
      '{5}\r\n',
      '{99999999999+}\r\n',
      '~{3}\r\n',
      '"',
      '\\',
      '\r\n',
      '\n',
      '\x00',
      '*',
      '%',
      'UID ',
      'IDLE\r\n',
      'DONE\r\n',
    ];
    for (let conn = 0; conn < 8; conn++) {
      const c = await RawImap.connect(h.port);
      let junk = '';
      for (let i = 0; i < 200; i++) junk += rand() < 0.6 ? pieces[Math.floor(rand() * pieces.length)] : String.fromCharCode(Math.floor(rand() * 256));
      c.send(Buffer.from(junk, 'latin1'));
      c.send('z9 LOGOUT\r\n');
      await new Promise((r) => setTimeout(r, 50));
      c.close();
    }
    const ok = await loggedIn('lim@example.com');
    expect((await ok.command('NOOP')).tagged).toMatch(/OK/);
  });

  it('stores nothing of an APPEND whose connection drops mid-literal, and keeps serving others', async () => {
    const c = await loggedIn('lim@example.com', '');
    const before = (await h.folders.status('lim@example.com', 'INBOX')).count;
    c.send('a1 APPEND INBOX {5000+}\r\nFrom: x\r\n\r\nhalf');
    await new Promise((r) => setTimeout(r, 200));
    c.close();
    await new Promise((r) => setTimeout(r, 300));
    expect((await h.folders.status('lim@example.com', 'INBOX')).count).toBe(before);
    const left = await h.storage.mail.list('append/');
    expect(left.items).toEqual([]);
    const d = await loggedIn('lim@example.com');
    expect((await d.command('NOOP')).tagged).toMatch(/OK/);
  });
});
