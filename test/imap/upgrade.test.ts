/**
 * A mailbox made by the code before folders existed keeps working: a data folder written by the
 * single-folder code (test/fixtures/single-folder-data) is opened by the current code, and IMAP
 * and POP3 both serve it as INBOX with its UIDs, UIDVALIDITY and bytes unchanged; ENVELOPE is made
 * on demand for messages stored without one; new mail continues its UIDs.
 */
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startPop3 } from '../../containers/pop3/server.js';
import type { RunningListener } from '../../containers/listener.js';
import { silentLogger } from '../../core/log.js';
import { portOf } from '../pop3/harness.js';
import { imaplib, imapMessage, startImapHarness, type ImapHarness } from './harness.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/single-folder-data', import.meta.url));
const USER = 'old@example.com';
const PASSWORD = 'fixture-password-1';
let h: ImapHarness;
let pop3: RunningListener;
/** The SHA-256 of each stored message, as the blob file's own header records it (`TMLB1 <n> <sha256>`). */
let storedShas: string[];

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tomlinson-upgrade-'));
  await cp(FIXTURE, dir, { recursive: true });
  const mailDir = join(dir, 'blobs/mail/in%2F/20261207%2F');
  const files = await Promise.all((await readdir(mailDir)).map((f) => readFile(join(mailDir, f))));
  storedShas = files.map((b) => /^TMLB1 \S+ ([0-9a-f]{64})\n/.exec(b.subarray(0, 128).toString('latin1'))![1]!);
  h = await startImapHarness({}, {}, dir);
  pop3 = await startPop3(
    { config: { ...h.config, pop3: { ...h.config.pop3, port: 0 } }, storage: h.storage, log: silentLogger, metrics: h.metrics },
    { tlsPort: 0 },
  );
});
afterAll(async () => {
  await pop3?.close(200);
  await h?.close();
});

const sha = (b: Buffer | string) =>
  createHash('sha256')
    .update(typeof b === 'string' ? Buffer.from(b, 'latin1') : b)
    .digest('hex');

it('serves the old mailbox as INBOX over IMAP: same UIDs, UIDVALIDITY and bytes, ENVELOPE made on demand, new mail after', async () => {
  const r = await imaplib({
    port: h.port,
    user: USER,
    password: PASSWORD,
    steps: [
      ['login'],
      ['status', 'INBOX', '(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)'],
      ['select', 'INBOX'],
      ['uid', 'FETCH', '1:*', '(UID BODY.PEEK[] ENVELOPE)'],
      ['uid', 'STORE', '3', '+FLAGS', '(\\Flagged)'],
    ],
  });
  expect(r.error).toBeUndefined();
  const res = r.results as [string, unknown[]][];
  expect(String(res[1]![1][0])).toMatch(/^"INBOX" \(MESSAGES 3 UIDNEXT 5 UIDVALIDITY 1796647870 UNSEEN 3 HIGHESTMODSEQ \d+\)$/);
  const fetched = (res[3]![1] as unknown[]).filter(Array.isArray) as [string, string][];
  expect(fetched.map((f) => /UID (\d+)/.exec(f[0])![1])).toEqual(['1', '3', '4']);
  expect(fetched.map((f) => sha(f[1])).sort()).toEqual([...storedShas].sort());
  const envelopes = (res[3]![1] as unknown[]).map((x) => (Array.isArray(x) ? x[0] : x)).join('\n');
  for (const n of [1, 3, 4]) expect(envelopes).toContain(`"old message ${n}"`);
  expect(res[4]![0]).toBe('OK');
  // The structure made for that FETCH is kept, so the next FETCH does not parse the message again.
  expect((await h.folders.get(USER, 'INBOX', 1))?.summary.imap).toMatchObject({ v: 1, envelope: expect.stringContaining('"old message 1"') });
  // New mail continues the old UIDs.
  const next = await h.deliver(USER, imapMessage(9));
  expect(next.uid).toBe(5);
});

it('still serves INBOX over POP3, with the flag set over IMAP left alone and the new message in it', async () => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const script = `
import poplib, sys
p = poplib.POP3('127.0.0.1', int(sys.argv[1]))
p.user('${USER}'); p.pass_('${PASSWORD}')
print(p.stat()[0], len(p.uidl()[1]))
p.quit()`;
  const { stdout } = await promisify(execFile)('python3', ['-c', script, String(portOf(pop3.addresses, 'pop3'))]);
  expect(stdout.trim()).toBe('4 4');
});
