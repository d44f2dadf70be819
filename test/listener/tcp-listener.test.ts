/**
 * The TCP listener scaffold (containers/tcp-listener.ts) over real sockets, with a toy line
 * protocol in place of SMTP or POP3: the total and per-client caps and their refusal lines, the
 * slot given back when the server ends a session, the idle timer (and that server work does not
 * count as the client's silence), implicit TLS, STARTTLS with the plaintext-injection defence,
 * and the drain (goodbye at rest, busy sessions finish, the deadline, sessions released).
 */
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { startTcpListener, type Connection, type ConnectionLimits, type SessionHandler, type TcpListener } from '../../containers/tcp-listener.js';
import { tempDir } from '../support/tmp.js';

/**
 * The toy protocol: greeting `+HELLO`; `ECHO x` -> `x`; `SLOW ms` -> `+DONE` after ms (busy in
 * between); `TLS` -> the TLS version or `none`; `STARTTLS` -> `+GO`, then the handshake; `QUIT`
 * -> `+BYE` and the server ends. Idle timeout says `-IDLE`, shutdown `-SHUTDOWN`.
 */
class ToySession implements SessionHandler {
  private buf = '';
  private working = false;
  released = false;

  constructor(private readonly conn: Connection) {
    conn.write('+HELLO\r\n');
  }

  get busy(): boolean {
    return this.working;
  }

  data(chunk: Buffer): void {
    this.buf += chunk.toString('latin1');
    void this.pump();
  }

  clientEnded(): void {
    this.conn.end();
  }

  idleTimeout(): void {
    this.conn.write('-IDLE\r\n');
    this.conn.end();
  }

  shutdown(): void {
    this.conn.write('-SHUTDOWN\r\n');
    this.conn.end();
  }

  closed(): Promise<void> {
    // A session that takes a moment to give back what it holds (a POP3 lease, say).
    return new Promise((resolve) =>
      setTimeout(() => {
        this.released = true;
        sessions.released++;
        resolve();
      }, 100),
    );
  }

  private async pump(): Promise<void> {
    if (this.working) return;
    this.working = true;
    try {
      for (let i = this.buf.indexOf('\r\n'); i >= 0 && !this.conn.isEnded; i = this.buf.indexOf('\r\n')) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        const [verb, arg = ''] = line.split(' ', 2);
        if (verb === 'ECHO') this.conn.write(`${arg}\r\n`);
        else if (verb === 'TLS') this.conn.write(`${this.conn.tls?.version ?? 'none'}\r\n`);
        else if (verb === 'SLOW') {
          await new Promise((r) => setTimeout(r, Number(arg)));
          this.conn.write('+DONE\r\n');
        } else if (verb === 'QUIT') {
          this.conn.write('+BYE\r\n');
          this.conn.end();
        } else if (verb === 'STARTTLS') {
          this.conn.write('+GO\r\n');
          // The protocol's part of the injection defence: what it buffered is dropped.
          this.buf = '';
          if (!(await this.conn.upgradeToTls())) return;
        } else this.conn.write('-ERR\r\n');
      }
    } finally {
      this.working = false;
    }
  }
}

const sessions = { released: 0 };
let provider: TlsProvider;
let dir: { path: string; remove: () => Promise<void> };
let metrics: Metrics;
let listener: TcpListener | undefined;
const sockets: net.Socket[] = [];

beforeAll(async () => {
  dir = await tempDir('tomlinson-listener-');
  provider = await createTlsProvider(loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_HOSTNAME: 'toy.test' }), silentLogger);
});
afterAll(async () => {
  provider?.close();
  await dir?.remove();
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await listener?.close(200);
  listener = undefined;
});

async function start(limits: Partial<ConnectionLimits> = {}): Promise<TcpListener> {
  metrics = new Metrics({ defaults: false });
  listener = await startTcpListener({
    name: 'toy',
    host: '127.0.0.1',
    ports: [
      { name: 'toy', port: 0 },
      { name: 'toys', port: 0, implicitTls: true },
    ],
    tls: provider,
    log: silentLogger,
    metrics,
    limits: { maxConnections: 100, maxConnectionsPerClient: 100, idleTimeoutMs: 10_000, handshakeTimeoutMs: 1000, pauseInputAbove: 64 * 1024, ...limits },
    refusals: { shutdown: '-CLOSING\r\n', tooManyConnections: '-FULL\r\n', tooManyFromClient: '-FULL client\r\n' },
    onConnection: (conn) => new ToySession(conn),
  });
  return listener;
}

/** A line client over a plain or TLS socket; `allowHalfOpen` so that it does not answer the server's FIN. */
class Client {
  private buf = '';
  private wake: (() => void) | undefined;
  closed = false;

  private constructor(public socket: net.Socket) {
    this.listen(socket);
  }

  private listen(s: net.Socket): void {
    s.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      this.wake?.();
    });
    s.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    s.on('error', () => undefined);
  }

  static async connect(port: number, secure = false): Promise<Client> {
    const socket = secure ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }) : net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    sockets.push(socket);
    await new Promise<void>((resolve, reject) => socket.once(secure ? 'secureConnect' : 'connect', () => resolve()).once('error', reject));
    return new Client(socket);
  }

  send(text: string): void {
    this.socket.write(text);
  }

  /** The next line, or '(closed)' once the server closed and nothing is left. */
  async line(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.buf.indexOf('\r\n');
      if (i >= 0) {
        const l = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        return l;
      }
      if (this.closed || this.socket.readableEnded) return '(closed)';
      if (Date.now() > deadline) throw new Error(`no line within ${timeoutMs} ms; buffered ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && !this.socket.readableEnded) {
      if (Date.now() > deadline) throw new Error('still open');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** STARTTLS from the client's side: the handshake on the same TCP connection. */
  async startTls(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    sockets.push(secure);
    await new Promise<void>((resolve, reject) => secure.once('secureConnect', () => resolve()).once('error', reject));
    this.socket = secure;
    this.listen(secure);
  }
}

async function limitHits(limit: string): Promise<number> {
  return (await metrics.limitsHit.get()).values.filter((v) => v.labels.limit === limit).reduce((n, v) => n + v.value, 0);
}

describe('caps', () => {
  it('the total cap refuses with its own line, counts the refusal, and frees the slot when a session ends', async () => {
    const l = await start({ maxConnections: 2 });
    const a = await Client.connect(l.ports.toy!);
    const b = await Client.connect(l.ports.toys!, true);
    expect([await a.line(), await b.line()]).toEqual(['+HELLO', '+HELLO']);
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('-FULL');
    await c.waitClosed();
    expect(await limitHits('connections')).toBe(1);
    a.socket.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const d = await Client.connect(l.ports.toy!);
    expect(await d.line()).toBe('+HELLO');
  });

  it('the per-client cap counts both ports; a session the server ended no longer counts, before the client closes', async () => {
    const l = await start({ maxConnectionsPerClient: 2 });
    const held = await Client.connect(l.ports.toys!, true);
    expect(await held.line()).toBe('+HELLO');
    for (let i = 0; i < 10; i++) {
      const c = await Client.connect(l.ports.toy!);
      expect(await c.line(), `session ${i}`).toBe('+HELLO');
      c.send('QUIT\r\n');
      expect(await c.line()).toBe('+BYE');
      // The client keeps its half open (allowHalfOpen) while the next session starts.
    }
    const second = await Client.connect(l.ports.toy!);
    expect(await second.line()).toBe('+HELLO');
    const third = await Client.connect(l.ports.toy!);
    expect(await third.line()).toBe('-FULL client');
    expect(await limitHits('connections_per_client')).toBe(1);
  });

  it('exempt clients skip the per-client cap, not the total', async () => {
    const l = await start({ maxConnectionsPerClient: 1, maxConnections: 3, exempt: (a) => a === '127.0.0.1' });
    const lines = [];
    for (let i = 0; i < 4; i++) lines.push(await (await Client.connect(l.ports.toy!)).line());
    expect(lines).toEqual(['+HELLO', '+HELLO', '+HELLO', '-FULL']);
  });
});

describe('idle timer', () => {
  it("says the protocol's idle line after the client's silence and closes", async () => {
    const l = await start({ idleTimeoutMs: 300 });
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    const t0 = Date.now();
    expect(await c.line()).toBe('-IDLE');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    await c.waitClosed();
    expect(await limitHits('idle_timeout')).toBe(1);
  });

  it('time the server spends on a command is not the client’s silence', async () => {
    const l = await start({ idleTimeoutMs: 300 });
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    c.send('SLOW 700\r\n');
    expect(await c.line()).toBe('+DONE');
    expect(await c.line()).toBe('-IDLE');
  });
});

describe('TLS', () => {
  it('implicit TLS: the session starts under TLS and sees its facts', async () => {
    const l = await start();
    const c = await Client.connect(l.ports.toys!, true);
    expect(await c.line()).toBe('+HELLO');
    c.send('TLS\r\n');
    expect(await c.line()).toMatch(/^TLSv1\.[23]$/);
  });

  it('STARTTLS upgrades the same connection; the idle timer runs on the TLS socket', async () => {
    const l = await start({ idleTimeoutMs: 800 });
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    c.send('TLS\r\n');
    expect(await c.line()).toBe('none');
    c.send('STARTTLS\r\n');
    expect(await c.line()).toBe('+GO');
    await c.startTls();
    c.send('TLS\r\nECHO under-tls\r\n');
    expect(await c.line()).toMatch(/^TLSv1\.[23]$/);
    expect(await c.line()).toBe('under-tls');
    expect(await c.line(3000)).toBe('-IDLE');
  });

  it('commands pipelined after STARTTLS in the same write are never acted on', async () => {
    const l = await start();
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    c.send('STARTTLS\r\nECHO injected\r\n');
    expect(await c.line()).toBe('+GO');
    await c.startTls();
    c.send('ECHO after\r\n');
    expect(await c.line()).toBe('after');
  });

  it('plaintext sent after the go-ahead is never given to the session: the handshake fails and the connection closes', async () => {
    const l = await start();
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    c.send('STARTTLS\r\n');
    expect(await c.line()).toBe('+GO');
    c.send('ECHO injected\r\n');
    expect(await c.line()).toBe('(closed)');
  });

  it('a STARTTLS handshake that never completes is closed after the handshake timeout', async () => {
    const l = await start({ handshakeTimeoutMs: 400 });
    const c = await Client.connect(l.ports.toy!);
    expect(await c.line()).toBe('+HELLO');
    c.send('STARTTLS\r\n');
    expect(await c.line()).toBe('+GO');
    const t0 = Date.now();
    c.send(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xf0, 0x01]) as unknown as string);
    await c.waitClosed(4000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
  });
});

describe('drain', () => {
  it('sessions at rest get the goodbye at once, a busy one finishes first, new connections are refused, sessions are released before close resolves', async () => {
    const l = await start();
    const idle = await Client.connect(l.ports.toy!);
    const busy = await Client.connect(l.ports.toys!, true);
    expect([await idle.line(), await busy.line()]).toEqual(['+HELLO', '+HELLO']);
    busy.send('SLOW 400\r\n');
    await new Promise((r) => setTimeout(r, 50));
    const before = sessions.released;
    const t0 = Date.now();
    const closing = l.close(5000);
    expect(await idle.line()).toBe('-SHUTDOWN');
    expect(await busy.line()).toBe('+DONE');
    expect(await busy.line()).toBe('-SHUTDOWN');
    await closing;
    // The plain client keeps its half open: the scaffold waits about a second, then cuts it off.
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(sessions.released - before).toBe(2);
    expect(l.healthy()).toBe(false);
    await expect(Client.connect(l.ports.toy!)).rejects.toThrow();
  });

  it('a session still busy at the deadline gets the goodbye then, and close does not wait for it', async () => {
    const l = await start();
    const busy = await Client.connect(l.ports.toy!);
    expect(await busy.line()).toBe('+HELLO');
    busy.send('SLOW 10000\r\n');
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await l.close(300);
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(await busy.line()).toBe('-SHUTDOWN');
  });
});
