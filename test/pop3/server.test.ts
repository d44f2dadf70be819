/**
 * The POP3 listener over real sockets, table-driven and grouped by RFC section: RFC 1939 (states,
 * commands, UPDATE, exclusive access), RFC 2449 (CAPA, response codes, pipelining), RFC 2595
 * (STLS), RFC 5034 (AUTH PLAIN). Every status line is checked against the reply grammar.
 */
import { createHash } from 'node:crypto';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addUsers, makeMessage, passwordOf, RawClient, startHarness, type Harness } from './harness.js';

let h: Harness;
const BOB = 'bob@example.com';
const DOTTY = 'Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n';
const messages = [makeMessage(1), DOTTY, makeMessage(3, 2000)];
const SPACEY = 'spacey@example.com';
const SPACEY_PW = '  pass with spaces ';

beforeAll(async () => {
  h = await startHarness();
  await addUsers(h, BOB, 'alice@example.com', 'carol@example.com', 'dave@example.com', 'erin@example.com');
  await h.accounts.addUser(SPACEY, SPACEY_PW);
  for (const m of messages) await h.deliver(BOB, m);
});
afterAll(async () => {
  await h?.close();
});

async function loggedIn(user = BOB, secure = false): Promise<RawClient> {
  const { client } = await RawClient.connect(secure ? h.tlsPort : h.port, secure);
  expect(await client.login(user, passwordOf(user))).toMatch(/^\+OK/);
  return client;
}

async function quit(c: RawClient): Promise<string> {
  const r = await c.cmd('QUIT');
  await c.waitClosed();
  return r;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

type Step = { send: string; status: RegExp; lines?: (string | RegExp)[] };

async function run(c: RawClient, steps: Step[]): Promise<void> {
  for (const s of steps) {
    const status = await c.cmd(s.send);
    expect(status, s.send).toMatch(s.status);
    if (s.lines) {
      const got = await c.multiline();
      expect(got.length, `${s.send} line count`).toBe(s.lines.length);
      s.lines.forEach((l, i) => (typeof l === 'string' ? expect(got[i]).toBe(l) : expect(got[i]).toMatch(l)));
    }
  }
}

describe('RFC 1939 §4: greeting and the AUTHORIZATION state', () => {
  it('greets with +OK', async () => {
    const { client, greeting } = await RawClient.connect(h.port);
    expect(greeting).toMatch(/^\+OK /);
    await quit(client);
  });

  it.each<[string, Step[]]>([
    [
      'transaction commands are refused before login',
      ['STAT', 'LIST', 'RETR 1', 'DELE 1', 'UIDL', 'TOP 1 1', 'RSET', 'NOOP'].map((send) => ({ send, status: /^-ERR/ })),
    ],
    [
      'unknown commands are refused',
      [
        { send: 'XYZZ', status: /^-ERR/ },
        { send: 'APOP bob 0123456789abcdef0123456789abcdef', status: /^-ERR/ },
      ],
    ],
    ['PASS needs USER first', [{ send: 'PASS secret', status: /^-ERR/ }]],
  ])('%s', async (_name, steps) => {
    const { client } = await RawClient.connect(h.port);
    await run(client, steps);
    expect(await quit(client)).toMatch(/^\+OK/);
  });

  it('QUIT in AUTHORIZATION says +OK and closes', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });
});

describe('RFC 1939 §7 USER/PASS and RFC 3206 [AUTH]', () => {
  it('a wrong password and an unknown user get the same -ERR [AUTH] answer', async () => {
    const { client } = await RawClient.connect(h.port);
    const wrong = await client.login(BOB, 'not-the-password');
    const unknown = await client.login('nobody@example.com', 'whatever');
    const otherDomain = await client.login('bob@elsewhere.example', 'whatever');
    expect(wrong).toMatch(/^-ERR \[AUTH\] /);
    expect(unknown).toBe(wrong);
    expect(otherDomain).toBe(wrong);
    // RFC 1939 §7: after a failed PASS the session stays in AUTHORIZATION and may try again.
    expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
    await quit(client);
  });

  it('PASS takes the whole rest of the line, spaces included', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.login(SPACEY, SPACEY_PW)).toMatch(/^\+OK/);
    await quit(client);
  });

  it('repeated failures of one account from one address are answered more and more slowly', async () => {
    // A base delay large enough that the doubling stands out from scrypt's time on a busy machine.
    const slow = await startHarness({ TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS: '300' });
    try {
      await addUsers(slow, BOB);
      const { client } = await RawClient.connect(slow.port);
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t = performance.now();
        expect(await client.login(BOB, `wrong-${i}`)).toMatch(/^-ERR \[AUTH\]/);
        times.push(performance.now() - t);
      }
      // 300, 600, 1200, 2400 ms of delay on top of the password check (whose time varies with load).
      expect(times[0]!).toBeGreaterThanOrEqual(295);
      expect(times[3]!).toBeGreaterThanOrEqual(2395);
      expect(times[3]! - times[0]!).toBeGreaterThan(1000);
      // The right password still gets in.
      expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
      await quit(client);
      expect((await slow.metrics.authFailures.get()).values).toEqual([{ labels: { listener: 'pop3' }, value: 4 }]);
    } finally {
      await slow.close();
    }
  });

  it("one user's failures do not slow another user behind the same address, and a success clears them", async () => {
    const slow = await startHarness({ TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS: '200' });
    try {
      await addUsers(slow, BOB, 'carol@example.com');
      const { client } = await RawClient.connect(slow.port);
      const timed = async (user: string, password: string): Promise<[string, number]> => {
        const t = performance.now();
        const r = await client.login(user, password);
        return [r, performance.now() - t];
      };
      for (let i = 0; i < 4; i++) expect((await timed(BOB, `wrong-${i}`))[0]).toMatch(/^-ERR \[AUTH\]/);
      // Keyed per address only, carol's first failure would wait bob's 3200 ms.
      const [carol, carolMs] = await timed('carol@example.com', 'wrong');
      expect(carol).toMatch(/^-ERR \[AUTH\]/);
      expect(carolMs).toBeLessThan(1200);
      expect((await timed(BOB, passwordOf(BOB)))[0]).toMatch(/^\+OK/);
      await quit(client);
      // Bob's success cleared his count: his next typo waits the base delay again.
      const second = await RawClient.connect(slow.port);
      const t = performance.now();
      expect(await second.client.login(BOB, 'wrong-again')).toMatch(/^-ERR \[AUTH\]/);
      expect(performance.now() - t).toBeLessThan(1200);
      await quit(second.client);
    } finally {
      await slow.close();
    }
  }, 30_000);
});

describe('RFC 5034 AUTH PLAIN (RFC 4616)', () => {
  it.each<[string, Step[], boolean]>([
    ['initial response', [{ send: `AUTH PLAIN ${b64(`\0${BOB}\0${passwordOf(BOB)}`)}`, status: /^\+OK/ }], true],
    ['authzid equal to the user', [{ send: `AUTH PLAIN ${b64(`${BOB}\0${BOB}\0${passwordOf(BOB)}`)}`, status: /^\+OK/ }], true],
    ['authzid of another user is refused', [{ send: `AUTH PLAIN ${b64(`alice@example.com\0${BOB}\0${passwordOf(BOB)}`)}`, status: /^-ERR \[AUTH\]/ }], false],
    ['wrong password', [{ send: `AUTH PLAIN ${b64(`\0${BOB}\0nope`)}`, status: /^-ERR \[AUTH\]/ }], false],
    ['bad base64', [{ send: 'AUTH PLAIN ***', status: /^-ERR/ }], false],
    ['unknown mechanism', [{ send: 'AUTH CRAM-MD5', status: /^-ERR/ }], false],
    ['bare AUTH lists the mechanisms', [{ send: 'AUTH', status: /^\+OK/, lines: ['PLAIN'] }], false],
  ])('%s', async (_name, steps, loggedInAfter) => {
    const { client } = await RawClient.connect(h.port);
    await run(client, steps);
    expect(await client.cmd('STAT')).toMatch(loggedInAfter ? /^\+OK/ : /^-ERR/);
    await quit(client);
  });

  it('the continuation form: "+ " then the response', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await client.cmd(b64(`\0${BOB}\0${passwordOf(BOB)}`))).toMatch(/^\+OK/);
    expect(await client.cmd('STAT')).toBe(`+OK 3 ${messages.reduce((a, m) => a + m.length, 0)}`);
    await quit(client);
  });

  it('"*" cancels the exchange; "=" is an empty initial response', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.cmd('AUTH PLAIN')).toBe('+ ');
    expect(await client.cmd('*')).toMatch(/^-ERR/);
    expect(await client.cmd('AUTH PLAIN =')).toMatch(/^-ERR/);
    // Still in AUTHORIZATION and able to log in.
    expect(await client.cmd(`AUTH PLAIN ${b64(`\0${BOB}\0${passwordOf(BOB)}`)}`)).toMatch(/^\+OK/);
    await quit(client);
  });
});

describe('RFC 2449 §5 CAPA', () => {
  it('lists the capabilities in AUTHORIZATION (plain port, loopback client)', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.cmd('CAPA')).toMatch(/^\+OK/);
    const caps = await client.multiline();
    for (const c of ['TOP', 'UIDL', 'USER', 'SASL PLAIN', 'STLS', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'EXPIRE NEVER']) expect(caps).toContain(c);
    expect(caps.some((c) => c.startsWith('IMPLEMENTATION '))).toBe(true);
    expect(caps.some((c) => c.startsWith('APOP'))).toBe(false);
    await quit(client);
  });

  it('lists them in TRANSACTION, without STLS', async () => {
    const client = await loggedIn();
    expect(await client.cmd('CAPA')).toMatch(/^\+OK/);
    const caps = await client.multiline();
    expect(caps).toContain('UIDL');
    expect(caps).not.toContain('STLS');
    await quit(client);
  });
});

describe('RFC 1939 §5 TRANSACTION commands', () => {
  const total = messages.reduce((a, m) => a + m.length, 0);
  it.each<[string, Step[]]>([
    ['STAT', [{ send: 'STAT', status: new RegExp(`^\\+OK 3 ${total}$`) }]],
    ['LIST', [{ send: 'LIST', status: /^\+OK/, lines: messages.map((m, i) => `${i + 1} ${m.length}`) }]],
    ['LIST n', [{ send: 'LIST 2', status: new RegExp(`^\\+OK 2 ${messages[1]!.length}$`) }]],
    [
      'LIST of a message that does not exist',
      [
        { send: 'LIST 4', status: /^-ERR/ },
        { send: 'LIST 0', status: /^-ERR/ },
        { send: 'LIST x', status: /^-ERR/ },
      ],
    ],
    ['NOOP', [{ send: 'NOOP', status: /^\+OK/ }]],
    [
      'DELE marks, hides from LIST/STAT/RETR, refuses twice; RSET unmarks',
      [
        { send: 'DELE 1', status: /^\+OK/ },
        { send: 'DELE 1', status: /^-ERR/ },
        { send: 'RETR 1', status: /^-ERR/ },
        { send: 'LIST 1', status: /^-ERR/ },
        { send: 'STAT', status: new RegExp(`^\\+OK 2 ${total - messages[0]!.length}$`) },
        { send: 'LIST', status: /^\+OK/, lines: [`2 ${messages[1]!.length}`, `3 ${messages[2]!.length}`] },
        { send: 'RSET', status: /^\+OK/ },
        { send: 'STAT', status: new RegExp(`^\\+OK 3 ${total}$`) },
      ],
    ],
    ['TOP n 0', [{ send: 'TOP 2 0', status: /^\+OK/, lines: ['Subject: dots', ''] }]],
    ['TOP n 2 (stuffed lines come back unstuffed)', [{ send: 'TOP 2 2', status: /^\+OK/, lines: ['Subject: dots', '', '.leading dot', '..two'] }]],
    [
      'TOP with bad arguments',
      [
        { send: 'TOP 2', status: /^-ERR/ },
        { send: 'TOP 2 -1', status: /^-ERR/ },
        { send: 'TOP 9 1', status: /^-ERR/ },
      ],
    ],
    ['UIDL', [{ send: 'UIDL', status: /^\+OK/, lines: [/^1 [\x21-\x7e]{1,70}$/, /^2 [\x21-\x7e]{1,70}$/, /^3 [\x21-\x7e]{1,70}$/] }]],
    [
      'UIDL n',
      [
        { send: 'UIDL 3', status: /^\+OK 3 [\x21-\x7e]{1,70}$/ },
        { send: 'UIDL 4', status: /^-ERR/ },
      ],
    ],
    [
      'RETR with bad arguments',
      [
        { send: 'RETR', status: /^-ERR/ },
        { send: 'RETR 0', status: /^-ERR/ },
        { send: 'RETR 1 2', status: /^-ERR/ },
      ],
    ],
  ])('%s', async (_name, steps) => {
    const client = await loggedIn();
    await run(client, steps);
    // Leaving with RSET-less QUIT would apply a DELE: these cases RSET or delete nothing.
    await client.cmd('RSET');
    expect(await quit(client)).toMatch(/^\+OK/);
  });

  it('RETR sends each message byte-identical, with the size LIST announced', async () => {
    const client = await loggedIn();
    for (let i = 0; i < messages.length; i++) {
      expect(await client.cmd(`RETR ${i + 1}`)).toMatch(/^\+OK/);
      const body = await client.multilineRaw();
      expect(body.toString('utf8')).toBe(messages[i]);
      expect(body.length).toBe(messages[i]!.length);
    }
    await quit(client);
  });

  it('UIDLs are unique, stable across sessions, and valid', async () => {
    const a = await loggedIn();
    await a.cmd('UIDL');
    const first = await a.multiline();
    await quit(a);
    const b = await loggedIn();
    await b.cmd('UIDL');
    expect(await b.multiline()).toEqual(first);
    await quit(b);
    const ids = first.map((l) => l.split(' ')[1]);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

describe('RFC 1939 §6 UPDATE: deletions only at QUIT, all or nothing', () => {
  it('QUIT after DELE removes the marked messages; the rest keep their UIDLs', async () => {
    const user = 'carol@example.com';
    for (let i = 1; i <= 4; i++) await h.deliver(user, makeMessage(i));
    const a = await loggedIn(user);
    await a.cmd('UIDL');
    const before = await a.multiline();
    await run(a, [
      { send: 'DELE 1', status: /^\+OK/ },
      { send: 'DELE 3', status: /^\+OK/ },
    ]);
    expect(await quit(a)).toMatch(/^\+OK .*2 messages left/);
    const b = await loggedIn(user);
    await b.cmd('UIDL');
    const after = await b.multiline();
    expect(after.map((l) => l.split(' ')[1])).toEqual([before[1]!.split(' ')[1], before[3]!.split(' ')[1]]);
    expect(await b.cmd('RETR 1')).toMatch(/^\+OK/);
    expect((await b.multilineRaw()).toString()).toBe(makeMessage(2));
    await quit(b);
    expect((await h.store.meta(user)).count).toBe(2);
  });

  it('a dropped connection deletes nothing and frees the maildrop', async () => {
    const user = 'erin@example.com';
    for (let i = 1; i <= 3; i++) await h.deliver(user, makeMessage(i));
    const a = await loggedIn(user);
    await run(a, [
      { send: 'DELE 1', status: /^\+OK/ },
      { send: 'DELE 2', status: /^\+OK/ },
    ]);
    a.destroy();
    // The lease is released when the server sees the drop; retry briefly until it has.
    let b: RawClient | undefined;
    for (let i = 0; i < 50 && !b; i++) {
      const { client } = await RawClient.connect(h.port);
      const r = await client.login(user, passwordOf(user));
      if (r.startsWith('+OK')) b = client;
      else {
        expect(r).toMatch(/^-ERR \[IN-USE\]/);
        await quit(client);
        await new Promise((res) => setTimeout(res, 20));
      }
    }
    expect(b).toBeDefined();
    expect(await b!.cmd('STAT')).toMatch(/^\+OK 3 /);
    await quit(b!);
  });

  it('the maildrop is a snapshot: mail arriving during the session shows at the next login', async () => {
    const user = 'alice@example.com';
    await h.deliver(user, makeMessage(1));
    const a = await loggedIn(user);
    expect(await a.cmd('STAT')).toMatch(/^\+OK 1 /);
    await h.deliver(user, makeMessage(2));
    await h.deliver(user, makeMessage(3));
    expect(await a.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await a.cmd('LIST 2')).toMatch(/^-ERR/);
    expect(await a.cmd('DELE 1')).toMatch(/^\+OK/);
    await quit(a);
    const b = await loggedIn(user);
    expect(await b.cmd('STAT')).toMatch(/^\+OK 2 /);
    await b.cmd('RETR 1');
    expect((await b.multilineRaw()).toString()).toBe(makeMessage(2));
    await quit(b);
  });
});

describe('RFC 1939 §8 and RFC 2449 §8.1.1: exclusive access, [IN-USE]', () => {
  it('a second login to a maildrop in use gets -ERR [IN-USE]; it opens once the first quits', async () => {
    const a = await loggedIn();
    const { client: b } = await RawClient.connect(h.port);
    expect(await b.login(BOB, passwordOf(BOB))).toMatch(/^-ERR \[IN-USE\] /);
    // A wrong password on a locked maildrop still says [AUTH]: the lock is no oracle.
    expect(await b.login(BOB, 'wrong')).toMatch(/^-ERR \[AUTH\] /);
    await quit(a);
    expect(await b.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
    await quit(b);
  });
});

describe('RFC 2449 §6.6 PIPELINING', () => {
  it('answers a batch of commands sent in one write, in order', async () => {
    const client = await loggedIn();
    client.send('NOOP\r\nSTAT\r\nLIST 2\r\nRETR 2\r\nUIDL 1\r\nXYZZ\r\nTOP 2 0\r\nNOOP\r\n');
    expect(await client.reply()).toBe('+OK');
    expect(await client.reply()).toMatch(/^\+OK 3 /);
    expect(await client.reply()).toMatch(/^\+OK 2 /);
    expect(await client.reply()).toMatch(/^\+OK/);
    expect((await client.multilineRaw()).toString()).toBe(DOTTY);
    expect(await client.reply()).toMatch(/^\+OK 1 /);
    expect(await client.reply()).toMatch(/^-ERR/);
    expect(await client.reply()).toMatch(/^\+OK/);
    expect(await client.multiline()).toEqual(['Subject: dots', '']);
    expect(await client.reply()).toBe('+OK');
    await quit(client);
  });
});

describe('RFC 2595 STLS and implicit TLS (RFC 8314)', () => {
  it('STLS upgrades; afterwards CAPA has no STLS and a second STLS is refused', async () => {
    const { client } = await RawClient.connect(h.port);
    expect(await client.stls()).toMatch(/^\+OK/);
    expect((client.socket as import('node:tls').TLSSocket).encrypted).toBe(true);
    await client.cmd('CAPA');
    const caps = await client.multiline();
    expect(caps).not.toContain('STLS');
    expect(caps).toContain('USER');
    expect(await client.cmd('STLS')).toMatch(/^-ERR/);
    expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
    expect(await client.cmd('STLS')).toMatch(/^-ERR/);
    await quit(client);
  });

  it('discards commands pipelined after STLS (no plaintext injection into the TLS session)', async () => {
    const { client } = await RawClient.connect(h.port);
    client.send(`STLS\r\nUSER ${BOB}\r\n`);
    expect(await client.reply()).toMatch(/^\+OK/);
    const plain = client.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const tls = await import('node:tls');
    const secure = tls.connect({ socket: plain as import('node:net').Socket, rejectUnauthorized: false });
    await new Promise<void>((r, j) => {
      secure.once('secureConnect', () => r());
      secure.once('error', j);
    });
    const lines: string[] = [];
    secure.on('data', (d: Buffer) => lines.push(...d.toString().split('\r\n').filter(Boolean)));
    // Had "USER" survived, PASS would be accepted as its follow-up.
    secure.write(`PASS ${passwordOf(BOB)}\r\n`);
    await new Promise((r) => setTimeout(r, 200));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^-ERR/);
    secure.destroy();
  });

  it('implicit TLS: greeting under TLS, no STLS offered, login works', async () => {
    const { client, greeting } = await RawClient.connect(h.tlsPort, true);
    expect(greeting).toMatch(/^\+OK/);
    await client.cmd('CAPA');
    const caps = await client.multiline();
    expect(caps).not.toContain('STLS');
    expect(caps).toContain('SASL PLAIN');
    expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
    await quit(client);
  });
});

describe('RFC 2595 §2.3: no clear-text passwords before TLS (allowPlaintext=never)', () => {
  let strict: Harness;
  beforeAll(async () => {
    strict = await startHarness({ TOMLINSON_POP3_ALLOW_PLAINTEXT: 'never' });
    await addUsers(strict, BOB);
  });
  afterAll(async () => strict?.close());

  it('refuses USER, PASS and AUTH before STLS and hides them from CAPA; accepts them after', async () => {
    const { client } = await RawClient.connect(strict.port);
    await client.cmd('CAPA');
    const caps = await client.multiline();
    expect(caps).toContain('STLS');
    expect(caps).not.toContain('USER');
    expect(caps.some((c) => c.startsWith('SASL'))).toBe(false);
    expect(await client.cmd(`USER ${BOB}`)).toMatch(/^-ERR \[AUTH\] /);
    expect(await client.cmd(`PASS ${passwordOf(BOB)}`)).toMatch(/^-ERR/);
    expect(await client.cmd(`AUTH PLAIN ${b64(`\0${BOB}\0${passwordOf(BOB)}`)}`)).toMatch(/^-ERR \[AUTH\] /);
    expect(await client.stls()).toMatch(/^\+OK/);
    expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
    await quit(client);
  });
});

describe('limits', () => {
  it('a session whose QUIT was answered no longer counts toward the per-client cap, even before the client closes', async () => {
    const capped = await startHarness({ TOMLINSON_POP3_MAX_CONNECTIONS_PER_CLIENT: '1' });
    const sockets: net.Socket[] = [];
    // A client that has read +OK to QUIT but not yet closed its socket (no automatic FIN).
    const session = async (): Promise<{ socket: net.Socket; lines: string[]; next: () => Promise<string> }> => {
      const socket = net.connect({ host: '127.0.0.1', port: capped.port, allowHalfOpen: true });
      sockets.push(socket);
      const lines: string[] = [];
      let buf = '';
      socket.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\r\n')) >= 0) {
          lines.push(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      });
      const next = async (): Promise<string> => {
        for (let t = 0; t < 100 && lines.length === 0; t++) await new Promise((r) => setTimeout(r, 50));
        return lines.shift() ?? '(nothing)';
      };
      return { socket, lines, next };
    };
    try {
      for (let i = 0; i < 5; i++) {
        const c = await session();
        expect(await c.next(), `session ${i}`).toMatch(/^\+OK/);
        c.socket.write('QUIT\r\n');
        expect(await c.next()).toMatch(/^\+OK/);
      }
      const open = await session();
      expect(await open.next()).toMatch(/^\+OK/);
      const refused = await session();
      expect(await refused.next()).toMatch(/^-ERR/);
    } finally {
      for (const s of sockets) s.destroy();
      await capped.close();
    }
  });

  it('a line past the limit gets -ERR and the session goes on', async () => {
    const client = await loggedIn();
    expect(await client.cmd(`NOOP ${'x'.repeat(5000)}`)).toMatch(/^-ERR/);
    expect(await client.cmd('NOOP')).toBe('+OK');
    await quit(client);
  });

  it('too many bad commands close the connection', async () => {
    const { client } = await RawClient.connect(h.port);
    for (let i = 0; i < h.config.pop3.maxBadCommands - 1; i++) expect(await client.cmd('BAD')).toMatch(/^-ERR/);
    expect(await client.cmd('BAD')).toMatch(/^-ERR/);
    expect(await client.reply()).toMatch(/^-ERR/);
    await client.waitClosed();
  });

  it('RETR streams a large message byte-identical without holding it in memory', async () => {
    const user = 'dave@example.com';
    const line = `${'y'.repeat(998)}\r\n`;
    const big = Buffer.from(`Subject: big\r\n\r\n${line.repeat(20 * 1024)}`); // ~20 MB
    const want = createHash('sha256').update(big).digest('hex');
    await h.deliver(user, big);
    const client = await loggedIn(user);
    client.socket.removeAllListeners('data');
    const hash = createHash('sha256');
    let pending = Buffer.alloc(0);
    let total = 0;
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const done = new Promise<void>((resolve) => {
      let first = true;
      client.socket.on('data', (d: Buffer) => {
        heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
        let buf = Buffer.concat([pending, d]);
        if (first) {
          const i = buf.indexOf('\r\n');
          if (i < 0) return void (pending = buf);
          expect(buf.subarray(0, i).toString()).toMatch(/^\+OK/);
          buf = buf.subarray(i + 2);
          first = false;
        }
        // Hash everything but the last 5 bytes (they may be the terminator).
        if (buf.length > 5) {
          hash.update(buf.subarray(0, buf.length - 5));
          total += buf.length - 5;
          buf = buf.subarray(buf.length - 5);
        }
        pending = buf;
        if (pending.toString() === '\r\n.\r\n') {
          hash.update(Buffer.from('\r\n'));
          total += 2;
          resolve();
        }
      });
    });
    client.send('RETR 1\r\n');
    await done;
    expect(total).toBe(big.length);
    expect(hash.digest('hex')).toBe(want);
    // The message is 20 MB; the server's heap must not have grown by anything like that.
    expect(heapPeak - heapBefore).toBeLessThan(12 * 1024 * 1024);
    client.destroy();
  });
});

describe('RFC 1939 §3 inactivity timer and graceful close', () => {
  it('an idle session is closed with nothing deleted, and the maildrop opens again', async () => {
    // Long enough that a loaded machine does not time out between the login and DELE.
    const idle = await startHarness({}, { idleTimeoutMs: 1500 });
    try {
      await addUsers(idle, BOB);
      await idle.deliver(BOB, makeMessage(1));
      const { client } = await RawClient.connect(idle.port);
      expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
      expect(await client.cmd('DELE 1')).toMatch(/^\+OK/);
      expect(await client.reply()).toMatch(/^-ERR/);
      await client.waitClosed();
      const { client: again } = await RawClient.connect(idle.port);
      expect(await again.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
      expect(await again.cmd('STAT')).toMatch(/^\+OK 1 /);
      await quit(again);
    } finally {
      await idle.close();
    }
  });

  it('close() tells connected clients, releases their leases, deletes nothing', async () => {
    const g = await startHarness();
    let closed = false;
    try {
      await addUsers(g, BOB);
      await g.deliver(BOB, makeMessage(1));
      const { client } = await RawClient.connect(g.port);
      expect(await client.login(BOB, passwordOf(BOB))).toMatch(/^\+OK/);
      expect(await client.cmd('DELE 1')).toMatch(/^\+OK/);
      await g.listener.close(200);
      closed = true;
      expect(await client.reply()).toMatch(/^-ERR \[SYS\/TEMP\]/);
      await client.waitClosed();
      expect(g.listener.healthy()).toBe(false);
      expect((await g.store.meta(BOB)).count).toBe(1);
      expect(await g.store.acquireLease(BOB, 'someone-else', 5)).toBe(true);
    } finally {
      if (!closed) await g.listener.close(200);
      await g.storage.close();
    }
  });
});
