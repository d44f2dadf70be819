/**
 * The outbound SMTP client's steps against a scripted server on a real socket: each test makes
 * the server answer one step in a particular way and checks what the client sent and reported.
 * The paths aiosmtpd and our own listener do not reach (no PIPELINING, DATA refused or accepted
 * after every RCPT was refused, a reply timeout at a named step, dot-stuffing across chunk
 * boundaries) are pinned here.
 */
import net from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { deliverTransaction, type SmtpTransaction } from '../../core/mail/smtp-client.js';

/** What the scripted server answers to a command line ('.' is the end of data); undefined: nothing. */
type Answer = (command: string) => string | undefined;

interface Scripted {
  port: number;
  /** Every command line received, in order (data excluded). */
  commands: string[];
  /** The raw bytes of each DATA section, terminator included. */
  data: Buffer[];
  /** Resolves when the client has ended (or dropped) its first connection. */
  ended: Promise<void>;
  close(): Promise<void>;
}

const servers: Scripted[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

const EHLO_PIPELINING = '250-fake.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME';
const EHLO_PLAIN = '250-fake.test\r\n250 SIZE 100000';

/** Default answers of a willing server; `answer` overrides any of them. */
function defaults(ehlo: string, answer: Answer = () => undefined): Answer {
  return (c) => {
    const own = answer(c);
    if (own !== undefined) return own;
    const verb = c.split(/[ :]/)[0].toUpperCase();
    if (verb === 'EHLO') return ehlo;
    if (verb === 'DATA') return '354 go ahead';
    if (verb === 'QUIT') return '221 bye';
    if (verb === '.') return '250 2.0.0 queued';
    return '250 2.1.0 ok';
  };
}

async function scripted(answer: Answer, greeting = '220 fake.test ESMTP'): Promise<Scripted> {
  const commands: string[] = [];
  const data: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  let onEnd!: () => void;
  const ended = new Promise<void>((resolve) => (onEnd = resolve));
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let inData = false;
    const say = (reply: string | undefined) => {
      if (reply !== undefined) sock.write(`${reply}\r\n`);
    };
    sock.write(`${greeting}\r\n`);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (inData) {
          // The section ends with CRLF.CRLF, or is just '.' CRLF when it is empty.
          const end = buf.subarray(0, 3).toString('latin1') === '.\r\n' ? 0 : buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const len = end === 0 ? 3 : end + 5;
          data.push(Buffer.from(buf.subarray(0, len)));
          buf = buf.subarray(len);
          inData = false;
          say(answer('.'));
          continue;
        }
        const i = buf.indexOf('\r\n');
        if (i < 0) return;
        const line = buf.subarray(0, i).toString('latin1');
        buf = buf.subarray(i + 2);
        commands.push(line);
        const reply = answer(line);
        say(reply);
        if (line.toUpperCase() === 'DATA' && reply?.startsWith('354')) inData = true;
        if (line.toUpperCase() === 'QUIT') sock.end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const s: Scripted = {
    port: (server.address() as net.AddressInfo).port,
    commands,
    data,
    ended,
    close: () =>
      new Promise<void>((resolve) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => resolve());
      }),
  };
  servers.push(s);
  return s;
}

function transaction(port: number, extra: Partial<SmtpTransaction> = {}): SmtpTransaction {
  const body = 'Subject: t\r\n\r\nhello\r\n';
  return {
    host: '127.0.0.1',
    port,
    helo: 'client.test',
    tls: 'none',
    from: 'a@client.test',
    rcpts: [{ address: 'x@fake.test' }, { address: 'y@fake.test' }],
    size: body.length,
    message: async () => Readable.from([Buffer.from(body)]),
    commandTimeoutMs: 2000,
    dataTimeoutMs: 2000,
    ...extra,
  };
}

describe('envelope (RFC 5321 §3.3)', () => {
  it('without PIPELINING each command waits for its reply; each recipient keeps its own answer', async () => {
    const s = await scripted(defaults(EHLO_PLAIN, (c) => (c.startsWith('RCPT TO:<y@') ? '550 5.1.1 no such user' : undefined)));
    const r = await deliverTransaction(transaction(s.port));
    expect(r.sessionFailure).toBeUndefined();
    expect(r.rcpts).toEqual([
      { address: 'x@fake.test', ok: true, temporary: false, reply: '250 2.0.0 queued', status: '2.0.0' },
      { address: 'y@fake.test', ok: false, temporary: false, reply: '550 5.1.1 no such user', status: '5.1.1' },
    ]);
    await s.ended;
    expect(s.commands).toEqual(['EHLO client.test', 'MAIL FROM:<a@client.test> SIZE=21', 'RCPT TO:<x@fake.test>', 'RCPT TO:<y@fake.test>', 'DATA', 'QUIT']);
    expect(r).toMatchObject({ tls: false, chunked: false, unconverted8bit: false });
  });

  it('with PIPELINING, every RCPT refused and DATA answered 554: the refusals are the outcome, not a session failure', async () => {
    const s = await scripted(
      defaults(EHLO_PIPELINING, (c) => (c.startsWith('RCPT') ? '450 4.2.1 try later' : c === 'DATA' ? '554 5.5.1 no valid recipients' : undefined)),
    );
    let opened = false;
    const r = await deliverTransaction(transaction(s.port, { message: async () => ((opened = true), Readable.from([])) }));
    expect(r.sessionFailure).toBeUndefined();
    expect(r.rcpts.map((x) => [x.ok, x.temporary, x.reply])).toEqual([
      [false, true, '450 4.2.1 try later'],
      [false, true, '450 4.2.1 try later'],
    ]);
    expect(opened).toBe(false);
    await s.ended;
    expect(s.commands.slice(-2)).toEqual(['DATA', 'QUIT']);
    expect('unconverted8bit' in r).toBe(false);
  });

  it('with PIPELINING, every RCPT refused but DATA answered 354: an empty section is ended and nothing is read', async () => {
    const s = await scripted(defaults(EHLO_PIPELINING, (c) => (c.startsWith('RCPT') ? '550 5.1.1 unknown' : undefined)));
    let opened = false;
    const r = await deliverTransaction(transaction(s.port, { message: async () => ((opened = true), Readable.from([])) }));
    expect(r.sessionFailure).toBeUndefined();
    expect(r.rcpts.every((x) => !x.ok && !x.temporary && x.status === '5.1.1')).toBe(true);
    expect(opened).toBe(false);
    expect(s.data.map((d) => d.toString('latin1'))).toEqual(['.\r\n']);
  });

  it('a failure after some recipient was answered leaves that answer and gives the rest the failure', async () => {
    const s = await scripted(
      defaults(EHLO_PIPELINING, (c) => (c.startsWith('RCPT TO:<x@') ? '550 5.1.1 unknown' : c === 'DATA' ? '451 4.3.0 local trouble' : undefined)),
    );
    const r = await deliverTransaction(transaction(s.port));
    expect(r.sessionFailure).toBeUndefined();
    expect(r.rcpts).toEqual([
      { address: 'x@fake.test', ok: false, temporary: false, reply: '550 5.1.1 unknown', status: '5.1.1' },
      { address: 'y@fake.test', ok: false, temporary: true, reply: '451 4.3.0 local trouble', status: '4.3.0' },
    ]);
  });
});

describe('session failures are shared by every recipient', () => {
  it('a 554 greeting (RFC 5321 §3.1) is a permanent failure at stage greeting', async () => {
    const s = await scripted(defaults(EHLO_PLAIN), '554 no service here');
    const r = await deliverTransaction(transaction(s.port));
    expect(r.sessionFailure).toEqual({ temporary: false, reply: '554 no service here', status: '5.0.0', stage: 'greeting' });
    expect(r.rcpts.map((x) => x.reply)).toEqual(['554 no service here', '554 no service here']);
    await s.ended;
    expect(s.commands).toEqual(['QUIT']);
  });

  it('a line that is no reply (RFC 5321 §4.2) ends the session as a temporary failure', async () => {
    const s = await scripted(defaults(EHLO_PLAIN, (c) => (c.startsWith('MAIL') ? 'hello there' : undefined)));
    const r = await deliverTransaction(transaction(s.port));
    expect(r.sessionFailure).toMatchObject({ temporary: true, status: '4.5.0', stage: 'reply' });
  });

  it('a silent server times out at the step it was at', async () => {
    const s = await scripted((c) => (c.startsWith('EHLO') ? EHLO_PLAIN : c.startsWith('MAIL') ? undefined : c === 'QUIT' ? '221 bye' : '250 ok'));
    const t0 = Date.now();
    const r = await deliverTransaction(transaction(s.port, { commandTimeoutMs: 300 }));
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(r.sessionFailure).toEqual({ temporary: true, status: '4.4.2', stage: 'MAIL', reply: 'timeout after 300 ms waiting for the MAIL reply' });
  });

  it('refuses to send credentials without TLS before saying anything after EHLO', async () => {
    const s = await scripted(defaults('250-fake.test\r\n250 AUTH PLAIN'));
    const r = await deliverTransaction(transaction(s.port, { auth: { user: 'u', pass: 'p' } }));
    expect(r.sessionFailure).toMatchObject({ temporary: true, status: '4.7.0', stage: 'AUTH' });
    await s.ended;
    expect(s.commands).toEqual(['EHLO client.test', 'QUIT']);
  });
});

describe('DATA (RFC 5321 §4.5.2)', () => {
  it('doubles leading dots across chunk boundaries and ends a body without a final CRLF correctly', async () => {
    const s = await scripted(defaults(EHLO_PLAIN));
    const chunks = ['Subject: t\r\n\r\n.one\r', '\n', '..two\r\n', '.', 'three\r\nlast'];
    const r = await deliverTransaction(transaction(s.port, { message: async () => Readable.from(chunks.map((c) => Buffer.from(c))) }));
    expect(r.rcpts.every((x) => x.ok)).toBe(true);
    expect(s.data.map((d) => d.toString('latin1'))).toEqual(['Subject: t\r\n\r\n..one\r\n...two\r\n..three\r\nlast\r\n.\r\n']);
  });

  it('a body ending in CRLF gets only the terminator', async () => {
    const s = await scripted(defaults(EHLO_PLAIN));
    await deliverTransaction(transaction(s.port, { message: async () => Readable.from([Buffer.from('Subject: t\r\n\r\nx\r\n.\r\n')]) }));
    expect(s.data.map((d) => d.toString('latin1'))).toEqual(['Subject: t\r\n\r\nx\r\n..\r\n.\r\n']);
  });
});
