import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImapLoadClient, needle, syncMessage } from '../../bench/imap.js';
import { makeMessage } from '../../bench/pop3.js';
import { startImapHarness, type ImapHarness } from '../imap/harness.js';

const USER = 'load@bench.example';
const PASSWORD = 'bench-password';

describe('the IMAP bench load client against our server', () => {
  let h: ImapHarness;
  beforeAll(async () => {
    h = await startImapHarness();
    await h.accounts.addDomain('bench.example');
    await h.accounts.addUser(USER, PASSWORD);
    for (let i = 0; i < 3; i++) await h.deliver(USER, makeMessage(i, 10240));
    await h.deliver(USER, syncMessage(2, 4, 4096));
  });
  afterAll(() => h.close());

  // Regression guard: the server's socket is corked while a command runs, and a FETCH that waited
  // for the client to drain more than 16 KiB of bodies waited on a corked socket for ever.
  it('reads a FETCH of several bodies whole, literals counted', async () => {
    const c = await ImapLoadClient.session(h.port, USER, PASSWORD);
    try {
      const r = await c.must('UID FETCH 1:3 BODY.PEEK[]');
      expect(r.fetches).toBe(3);
      expect(r.literalBytes).toBe(3 * 10240);
      const after = await c.must('NOOP'); // the stream is still in step after the literals
      expect(after.status).toBe('OK');
    } finally {
      c.close();
    }
  }, 20_000);

  it('pipelines APPEND with LITERAL+ and finds the sync message by SEARCH TEXT', async () => {
    const c = await ImapLoadClient.session(h.port, USER, PASSWORD);
    try {
      const raw = makeMessage(9, 2048);
      const rs = await Promise.all([c.send('APPEND INBOX ()', raw), c.send('APPEND INBOX ()', raw)]);
      expect(rs.map((r) => r.status)).toEqual(['OK', 'OK']);
      const s = await c.must(`UID SEARCH TEXT "${needle(4)}"`);
      expect(s.untagged).toContain('* SEARCH 4');
    } finally {
      c.close();
    }
  }, 20_000);

  it('sees EXISTS while idling when another session appends', async () => {
    const idler = await ImapLoadClient.session(h.port, USER, PASSWORD);
    const writer = await ImapLoadClient.session(h.port, USER, PASSWORD, null);
    try {
      const exists = new Promise<string>((resolve) => (idler.onUntagged = (l) => /EXISTS/.test(l) && resolve(l)));
      const idle = await idler.idle();
      await writer.must('APPEND INBOX ()', makeMessage(10, 1024));
      expect(await exists).toMatch(/^\* \d+ EXISTS$/);
      expect((await idle.done()).status).toBe('OK');
    } finally {
      idler.close();
      writer.close();
    }
  }, 20_000);
});
