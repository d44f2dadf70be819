/**
 * The warm-up at start (warmup.ts, pop3.warmupRetrs): the server talks POP3 to itself before it
 * opens, and none of it shows afterwards: no metrics, no connection, no usable login, and real
 * sessions behave as ever.
 */
import net from 'node:net';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import type { RunningListener } from '../../containers/listener.js';
import { startPop3 } from '../../containers/pop3/server.js';
import { Pop3Session } from '../../containers/pop3/session.js';
import { warmupClient, warmupHooks } from '../../containers/pop3/warmup.js';
import { addUsers, makeMessage, passwordOf, portOf, RawClient, startHarness, type Harness } from './harness.js';

let h: Harness;
let warmed: RunningListener;
let port: number;
const metrics = new Metrics({ defaults: false });
const logs: { msg: string; retrs?: number }[] = [];
const USER = 'warm@example.com';

beforeAll(async () => {
  h = await startHarness();
  await addUsers(h, USER);
  // A second listener on the same storage, with the warm-up on and its log captured.
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const config = { ...h.config, pop3: { ...h.config.pop3, warmupRetrs: 1500 } };
  warmed = await startPop3({ config, storage: h.storage, log, metrics }, { tlsPort: 0 });
  port = portOf(warmed.addresses, 'pop3');
});
afterAll(async () => {
  await warmed?.close(500);
  await h?.close();
});

describe('POP3 warm-up at start', () => {
  it('runs before the listener opens, and leaves no command, connection or login behind', async () => {
    expect(logs.find((l) => l.msg === 'POP3 warm-up done')?.retrs).toBe(1500);
    expect(logs.some((l) => /warm-up failed/.test(l.msg))).toBe(false);
    const commands = (await metrics.commands.get()).values.reduce((a, v) => a + v.value, 0);
    expect(commands).toBe(0);
    const connections = (await metrics.connectionsTotal.get()).values.reduce((a, v) => a + v.value, 0);
    expect(connections).toBe(0);
    // The warm-up user is no account here, and its password is random per process.
    const { client } = await RawClient.connect(port);
    expect(await client.cmd('USER warm-up')).toMatch(/^\+OK/);
    expect(await client.cmd('PASS x')).toMatch(/^-ERR \[AUTH\]/);
    const raw = makeMessage(1, 5000);
    await h.deliver(USER, raw);
    expect(await client.login(USER, passwordOf(USER))).toMatch(/^\+OK/);
    expect(await client.cmd('RETR 1')).toMatch(/^\+OK/);
    expect((await client.multilineRaw()).toString()).toBe(raw);
    expect(await client.cmd('QUIT')).toMatch(/^\+OK/);
    await client.waitClosed();
  });

  it('the warm-up client counts its RETRs and fails fast on a refused login', async () => {
    const w = await warmupHooks(silentLogger, 2000);
    // A bare server of sessions with the warm-up hooks, to drive the client directly.
    const server = net.createServer((s) => {
      const session = new Pop3Session(w.hooks, { tls: false, stlsAvailable: false, plaintextAllowed: true });
      s.write(session.greeting());
      let buf = '';
      s.on('data', async (d) => {
        buf += d.toString('latin1');
        for (let nl = buf.indexOf('\r\n'); nl >= 0; nl = buf.indexOf('\r\n')) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          const out = await session.line(line);
          if (out.text) s.write(out.text);
          if (out.body && Buffer.isBuffer(out.body.source)) s.write(Buffer.concat([Buffer.from(out.body.head), Buffer.from(out.body.source.toString('latin1').replace(/^\./gm, '..'), 'latin1'), Buffer.from('.\r\n')]));
          if (out.then === 'close') s.end();
        }
      });
      s.on('error', () => undefined);
    });
    server.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const own = (server.address() as net.AddressInfo).port;
    try {
      expect(await warmupClient(own, w.user, w.password, 1200)).toBe(1200);
      await expect(warmupClient(own, w.user, 'wrong', 10)).rejects.toThrow(/PASS refused/);
    } finally {
      server.close();
      await w.close();
    }
  });
});
