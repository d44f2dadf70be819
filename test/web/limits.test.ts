/**
 * The web listener's per-client connection cap: a client over `web.maxConnectionsPerClient` has
 * its connection closed before the TLS handshake (the log and a metric say which limit), and
 * gets in again once one of its connections closes.
 */
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startWebHarness, type WebHarness } from './harness.js';

let h: WebHarness;
beforeAll(async () => {
  h = await startWebHarness({ TOMLINSON_WEB_MAX_CONNECTIONS_PER_CLIENT: '2' }, {}, ['ann@example.com']);
});
afterAll(async () => h?.close());

/** A TLS connection: resolves once the handshake is done, or with 'closed' when the server drops it first. */
function open(): Promise<tls.TLSSocket | 'closed'> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.port, rejectUnauthorized: false });
    s.once('secureConnect', () => resolve(s));
    s.once('error', () => resolve('closed'));
    s.once('close', () => resolve('closed'));
  });
}

it('closes a third connection from one client before TLS, and takes one again after a close', async () => {
  const a = await open();
  const b = await open();
  expect(a).not.toBe('closed');
  expect(b).not.toBe('closed');
  expect(await open()).toBe('closed');
  (a as tls.TLSSocket).destroy();
  await new Promise((r) => setTimeout(r, 100));
  const c = await open();
  expect(c).not.toBe('closed');
  for (const s of [b, c]) (s as tls.TLSSocket).destroy();
  await new Promise((r) => setTimeout(r, 100));
  // The harness's own client is let in as before.
  const res = await h.fetch('/jmap/session', { user: 'ann@example.com' });
  expect(res.status).toBe(200);
  await res.body?.cancel();
});
