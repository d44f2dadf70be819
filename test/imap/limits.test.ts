/**
 * The IMAP listener's connection limits over real sockets: the per-client and total caps refuse
 * with an untagged BYE that says which, and a silent client is logged out by the inactivity timer
 * with a BYE that says why (the timer is shortened here; its floor in the settings is 30 minutes).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { addImapUsers, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { RawImap } from './raw-client.js';

let h: ImapHarness;
const open: RawImap[] = [];

beforeAll(async () => {
  h = await startImapHarness({ TOMLINSON_IMAP_MAX_CONNECTIONS_PER_CLIENT: '2', TOMLINSON_IMAP_MAX_CONNECTIONS: '3' }, { idleTimeoutMs: 600 });
  await addImapUsers(h, 'cap@example.com');
});
afterAll(async () => {
  for (const c of open) c.close();
  await h?.close();
});

it('refuses a client past its own cap with a BYE that says so', async () => {
  for (let i = 0; i < 2; i++) open.push(await RawImap.connect(h.port));
  const third = await RawImap.connect(h.port).catch((e: Error) => e);
  // The refusal is the only line: RawImap.connect waits for `* OK`, so it fails with what it got.
  expect(String(third)).toContain('* BYE [UNAVAILABLE] Too many connections from your address');
  for (const c of open.splice(0)) c.close();
});

it('logs out a silent client after the inactivity timer, saying why', async () => {
  const c = await RawImap.connect(h.port);
  open.push(c);
  expect((await c.command(`LOGIN cap@example.com ${imapPassword('cap@example.com')}`)).tagged).toMatch(/OK/);
  await c.waitFor(/^\* BYE Autologout; idle for too long/, 5000);
  await c.waitClosed();
});
