/**
 * The per-client connection cap over real sockets: a session stops counting once its QUIT is
 * answered (a client that connects again as soon as it reads 221, as Postfix's smtp-source does,
 * is not refused), and clients in smtp.trustedNetworks (loopback by default) are exempt from the
 * per-client cap but not from the total one.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startHarness, type Harness } from './harness.js';

let h: Harness | undefined;
const open: Socket[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) s.destroy();
  await h?.close();
  h = undefined;
});

/** A raw client that does not answer the server's FIN with its own (allowHalfOpen), like a client
 * that has read 221 but not yet closed its socket. */
async function raw(port: number): Promise<{ socket: Socket; line: () => Promise<string> }> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  open.push(socket);
  socket.on('error', () => undefined);
  let buf = '';
  let wake: (() => void) | undefined;
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buf += d;
    wake?.();
  });
  socket.on('end', () => wake?.());
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const line = async (): Promise<string> => {
    const deadline = Date.now() + 5000;
    while (!buf.includes('\r\n')) {
      if (Date.now() > deadline || socket.readableEnded) throw new Error(`no line; got ${JSON.stringify(buf)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
    const i = buf.indexOf('\r\n');
    const l = buf.slice(0, i);
    buf = buf.slice(i + 2);
    return l;
  };
  return { socket, line };
}

describe('per-client connection cap', () => {
  it('a session whose QUIT was answered no longer counts, even before the client closes its socket', async () => {
    // Loopback must not be exempt here, so the cap applies to the test client.
    h = await startHarness({ TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '2', TOMLINSON_SMTP_TRUSTED_NETWORKS: '192.0.2.0/24' });
    const port = h.server.ports.mx!;
    const held = await raw(port);
    expect(await held.line()).toMatch(/^220 /);
    for (let i = 0; i < 20; i++) {
      const c = await raw(port);
      expect(await c.line(), `session ${i}`).toMatch(/^220 /);
      c.socket.write('EHLO client.example\r\n');
      while (!(await c.line()).startsWith('250 '));
      c.socket.write('QUIT\r\n');
      expect(await c.line()).toMatch(/^221 /);
      // The socket stays open (half-closed by the server) while the next session starts.
    }
    // The cap itself still holds for sessions that are really open.
    const second = await raw(port);
    expect(await second.line()).toMatch(/^220 /);
    const third = await raw(port);
    expect(await third.line()).toMatch(/^421 4\.7\.0 .*Too many connections from your address/);
  });

  it('loopback (the default trusted networks) is exempt from the per-client cap, not from the total', async () => {
    h = await startHarness({ TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT: '2', TOMLINSON_SMTP_MAX_CONNECTIONS: '5' });
    const port = h.server.ports.mx!;
    for (let i = 0; i < 5; i++) expect(await (await raw(port)).line(), `connection ${i}`).toMatch(/^220 /);
    expect(await (await raw(port)).line()).toMatch(/^421 4\.3\.2 .*Too many connections, try again later/);
  });
});
