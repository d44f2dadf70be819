/**
 * The per-user hourly recipient limit (smtp.maxRecipientsPerUserHour), run on each storage family
 * (send-limit.test.ts: local; send-limit.aws.test.ts: DynamoDB on moto). Two SMTP listener groups
 * share one storage, as two processes or two Fargate tasks share one table: what one counts, the
 * other sees. Clients: Python's smtplib and a raw socket.
 */
import { execFile } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { reserveRecipients, sentThisHour, SEND_LIMIT_PK } from '../../core/mail/send-limit.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { startSmtpServer, type RunningSmtp } from '../../containers/smtp/server.js';
import { ALICE, BOB, DOMAIN, drainInbound, PASSWORD, TestClient } from '../smtp/harness.js';
import { startMoto } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const LIMIT = 3;

type Logged = { msg: string; [k: string]: unknown };

/** smtplib over implicit TLS as `user`; prints what sendmail refused, or the exception. */
const SEND = `
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL('127.0.0.1', int(sys.argv[1]), timeout=30, context=ctx)
s.login(sys.argv[2], sys.argv[3])
try:
    print('refused', s.sendmail(sys.argv[2], sys.argv[4].split(','), b'Subject: hello\\r\\n\\r\\nHi.\\r\\n'))
except smtplib.SMTPRecipientsRefused as e:
    print('all refused', {k: (v[0], v[1].decode()) for k, v in e.recipients.items()})
s.quit()
`;

export function describeSendLimit(family: 'local' | 'aws'): void {
  describe(`the hourly recipient limit per user (${family} storage, two listeners sharing it)`, () => {
    let storage: Storage;
    let config: Config;
    let tls: TlsProvider;
    let a: RunningSmtp;
    let b: RunningSmtp;
    const metrics = new Metrics({ defaults: false });
    const logged: Logged[] = [];
    const cleanup: (() => Promise<void>)[] = [];

    beforeAll(async () => {
      // The counter is per clock hour: a run that would straddle an hour's end waits for the next.
      const left = 3600_000 - (Date.now() % 3600_000);
      if (left < 90_000) await new Promise((r) => setTimeout(r, left + 100));
      const dir = await tempDir('tomlinson-limit-');
      cleanup.push(() => dir.remove());
      let env: Record<string, string> = {};
      if (family === 'aws') {
        const moto = await startMoto({ say: () => undefined });
        cleanup.push(() => moto.stop());
        env = moto.env;
      }
      config = loadConfig({
        ...env,
        TOMLINSON_DATA_DIR: dir.path,
        TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
        TOMLINSON_LISTEN_HOST: '127.0.0.1',
        TOMLINSON_SPAM: 'off',
        TOMLINSON_SMTP_CHECK_AUTH: 'false',
        TOMLINSON_SMTP_AUTH_FAILURE_DELAY_MS: '20',
        TOMLINSON_SMTP_MAX_RECIPIENTS_PER_USER_HOUR: String(LIMIT),
      });
      storage = await openStorage(config, silentLogger);
      cleanup.unshift(() => storage.close());
      const accounts = new Accounts(storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
      await accounts.addDomain(DOMAIN);
      await accounts.addUser(ALICE, PASSWORD);
      await accounts.addUser(BOB, PASSWORD);
      tls = await createTlsProvider(config, silentLogger);
      const sink = new PassThrough();
      sink.on('data', (d: Buffer) => {
        for (const line of d.toString('utf8').split('\n').filter(Boolean)) logged.push(JSON.parse(line) as Logged);
      });
      const log = createLogger({ level: 'info', pretty: false, destination: sink });
      const ports = { mx: 0, submission: 0, submissions: 0 };
      a = await startSmtpServer({ config, storage, log, metrics }, { ports, tls });
      b = await startSmtpServer({ config, storage, log, metrics: new Metrics({ defaults: false }) }, { ports, tls });
    });

    afterAll(async () => {
      await a?.close(1000);
      await b?.close(1000);
      tls?.close();
      for (const f of cleanup) await f();
    });

    async function send(server: RunningSmtp, user: string, rcpts: string[]): Promise<string> {
      const { stdout } = await run('python3', ['-c', SEND, String(server.ports.submissions), user, PASSWORD, rcpts.join(',')], { timeout: 30_000 });
      return stdout.trim();
    }

    it('counts recipients over both listeners; past the limit RCPT gets 451 4.7.1 with a clear text and a log line', async () => {
      expect(await send(a, ALICE, ['one@remote.example', 'two@remote.example'])).toBe('refused {}');
      expect(await sentThisHour(storage.tables, ALICE)).toBe(2);
      // On the other listener: the third recipient fits, the fourth does not; the message goes to the third.
      const partly = await send(b, ALICE, ['three@remote.example', 'four@remote.example']);
      expect(partly).toMatch(
        /^refused \{'four@remote\.example': \(451, b'4\.7\.1 Sending limit reached: alice@example\.test may send to 3 recipients per hour; try again later'\)\}$/,
      );
      expect(await sentThisHour(storage.tables, ALICE)).toBe(3);
      const none = await send(a, ALICE, [BOB]);
      expect(none).toContain(`all refused {'${BOB}': (451, '4.7.1 Sending limit reached`);
      const jobs = await drainInbound(storage);
      expect(jobs.map((j) => j.rcpts.map((r) => r.address))).toEqual([['one@remote.example', 'two@remote.example'], ['three@remote.example']]);
      const line = logged.find((l) => l.msg.startsWith(`sending limit reached: ${ALICE}`));
      expect(line).toMatchObject({ user: ALICE, limit: LIMIT, sentThisHour: expect.any(Number) });
      expect((await metrics.smtpRefusals.get()).values.find((v) => v.labels.reason === 'rate_limit')?.value).toBeGreaterThanOrEqual(1);
    });

    it('another user is not affected, and the hour’s counter item expires (TTL) an hour after its hour', async () => {
      expect(await send(b, BOB, ['x@remote.example'])).toBe('refused {}');
      expect(await drainInbound(storage)).toHaveLength(1);
      const { items } = await storage.tables.query(`${SEND_LIMIT_PK}${BOB}`);
      expect(items).toHaveLength(1);
      const hourEnd = Math.ceil(Date.now() / 3600_000) * 3600;
      expect(items[0]).toMatchObject({ count: 1, ttl: hourEnd + 3600 });
    });

    it('two sessions that both passed RCPT are settled atomically at the end of DATA: the one that no longer fits gets 451', async () => {
      const user = BOB; // 1 sent this hour: room for 2 more
      const open = async (server: RunningSmtp): Promise<TestClient> => {
        const c = await TestClient.connect(server.ports.submissions!, { tls: true });
        expect((await c.reply()).code).toBe(220);
        expect((await c.cmd('EHLO client.example')).code).toBe(250);
        expect((await c.cmd(`AUTH PLAIN ${Buffer.from(`\0${user}\0${PASSWORD}`).toString('base64')}`)).code).toBe(235);
        expect((await c.cmd(`MAIL FROM:<${user}>`)).code).toBe(250);
        expect((await c.cmd('RCPT TO:<p@remote.example>')).code).toBe(250);
        expect((await c.cmd('RCPT TO:<q@remote.example>')).code).toBe(250);
        expect((await c.cmd('DATA')).code).toBe(354);
        return c;
      };
      const [c1, c2] = [await open(a), await open(b)];
      try {
        const r1 = await c1.cmd('Subject: one\r\n\r\nHi.\r\n.');
        const r2 = await c2.cmd('Subject: two\r\n\r\nHi.\r\n.');
        expect(r1.code).toBe(250);
        expect(r2.code).toBe(451);
        expect(r2.enhanced).toBe('4.7.1');
      } finally {
        c1.close();
        c2.close();
      }
      expect(await drainInbound(storage)).toHaveLength(1);
      expect(await sentThisHour(storage.tables, user)).toBe(3);
    });

    it('concurrent reservations never pass the limit (atomic adds through the Tables port)', async () => {
      const user = 'carol@example.test';
      const results = await Promise.all(Array.from({ length: 12 }, () => reserveRecipients(storage.tables, user, 1, 5)));
      expect(results.filter((r) => r.ok)).toHaveLength(5);
      expect(await sentThisHour(storage.tables, user)).toBe(5);
    });
  });
}
