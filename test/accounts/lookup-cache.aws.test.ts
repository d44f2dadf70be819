/**
 * The account lookup cache of the aws family (mail.accountCacheSeconds), through the real SMTP
 * and POP3 listeners against moto, with the accounts changed from a second storage client as the
 * CLI would: a repeated RCPT costs no DynamoDB read, its reads are eventually consistent, a user
 * removed elsewhere is still accepted for at most the cache's lifetime and refused after it, and
 * a password change takes effect at the very next login (logins are never served from it).
 */
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openAwsStorage } from '../../core/storage/aws/index.js';
import { observeAwsRequests, type AwsRequest } from '../../core/storage/aws/requests.js';
import type { Storage } from '../../core/storage/ports.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';

const CACHE_SECONDS = 3;
let backend: AwsTestBackend;
let app: App;
let admin: Storage;
let accounts: Accounts;
let dir: { path: string; remove: () => Promise<void> };
const seen: AwsRequest[] = [];
let unobserve: () => void;

/** One line-based client: sends a line, reads one reply line (SMTP multi-line replies joined). */
class Lines {
  private buf = '';
  private wake: (() => void) | undefined;
  constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      this.wake?.();
    });
  }
  static async open(port: number): Promise<Lines> {
    const sock = net.connect(port, '127.0.0.1');
    await once(sock, 'connect');
    const c = new Lines(sock);
    await c.reply();
    return c;
  }
  async reply(): Promise<string> {
    for (;;) {
      // SMTP: the last line of a reply has a space after the code; POP3: one line.
      const m = /(^|\n)(\d{3} [^\r\n]*|[+-][^\r\n]*)\r\n/.exec(this.buf);
      if (m) {
        const end = m.index + m[0].length;
        const out = this.buf.slice(0, end);
        this.buf = this.buf.slice(end);
        return out.trim();
      }
      await new Promise<void>((r) => (this.wake = r));
    }
  }
  async send(line: string): Promise<string> {
    this.sock.write(`${line}\r\n`);
    return this.reply();
  }
  close(): void {
    this.sock.destroy();
  }
}

function portOf(name: string, listener: string): number {
  const a = app.listeners.find((l) => l.name === listener)!.addresses.find((x) => x.startsWith(`${name} `))!;
  return Number(a.slice(a.lastIndexOf(':') + 1));
}

beforeAll(async () => {
  backend = await startMoto();
  dir = await tempDir('tomlinson-lookup-cache-');
  const env = {
    ...backend.env,
    TOMLINSON_STORAGE: 'aws',
    TOMLINSON_DATA_DIR: dir.path,
    TOMLINSON_HOSTNAME: 'mx.example.test',
    TOMLINSON_SMTP_PORT: '0',
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_POP3_PORT: '0',
    TOMLINSON_POP3S_PORT: '0',
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_IMAPS_PORT: '0',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS: '0',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_ACCOUNT_CACHE_SECONDS: String(CACHE_SECONDS),
    TOMLINSON_LOG_LEVEL: 'silent',
  };
  // The administrator's own client, as `tomlinson accounts` in another process would open it.
  admin = await openAwsStorage(loadConfig(env), silentLogger);
  accounts = new Accounts(admin.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser('bob@example.test', 'bob-password-1');
  await accounts.addUser('carol@example.test', 'carol-password-1');
  app = await startApp(loadConfig(env), ['smtp', 'pop3'], silentLogger);
  unobserve = observeAwsRequests((r) => seen.push(r));
}, 90_000);

afterAll(async () => {
  unobserve?.();
  await app?.close(1000);
  await admin?.close();
  await backend?.stop();
  await dir?.remove();
});

describe('account lookup cache (aws family)', () => {
  it('answers a repeated RCPT without DynamoDB, reads eventually consistent, and sees a removal within its lifetime', async () => {
    const smtp = await Lines.open(portOf('mx', 'smtp'));
    try {
      expect(await smtp.send('EHLO client.example.net')).toMatch(/^250[ -]/);
      expect(await smtp.send('MAIL FROM:<alice@example.net>')).toMatch(/^250 /);
      seen.length = 0;
      expect(await smtp.send('RCPT TO:<bob@example.test>')).toMatch(/^250 /);
      const first = seen.filter((r) => r.service === 'dynamodb').map((r) => `${r.op} ${(r.input.Key as { pk: { S: string } }).pk.S} ${r.input.ConsistentRead}`);
      // The domain and the user, read once, eventually consistent (half a read unit each).
      expect(first).toContain('GetItem DOMAIN#example.test false');
      expect(first).toContain('GetItem USER#bob@example.test false');
      expect(first.filter((x) => x.endsWith(' true'))).toEqual([]);

      seen.length = 0;
      expect(await smtp.send('RCPT TO:<bob@example.test>')).toMatch(/^250 /);
      expect(seen.filter((r) => r.service === 'dynamodb')).toEqual([]);

      // Removed by the administrator's client: this task may accept for up to CACHE_SECONDS...
      const removedAt = Date.now();
      await accounts.removeUser('bob@example.test');
      const early = await smtp.send('RCPT TO:<bob@example.test>');
      if (Date.now() - removedAt < CACHE_SECONDS * 1000 - 500) expect(early).toMatch(/^250 /);
      // ...and no longer after it.
      await new Promise((r) => setTimeout(r, CACHE_SECONDS * 1000 + 300));
      expect(await smtp.send('RCPT TO:<bob@example.test>')).toMatch(/^550 5\.1\.1/);
      await smtp.send('QUIT');
    } finally {
      smtp.close();
    }
  }, 60_000);

  it('applies a password change made elsewhere at the very next login', async () => {
    const login = async (password: string): Promise<string> => {
      const pop = await Lines.open(portOf('pop3', 'pop3'));
      try {
        await pop.send('USER carol@example.test');
        const answer = await pop.send(`PASS ${password}`);
        await pop.send('QUIT');
        return answer;
      } finally {
        pop.close();
      }
    };
    expect(await login('carol-password-1')).toMatch(/^\+OK/);
    await accounts.setPassword('carol@example.test', 'carol-password-2');
    expect(await login('carol-password-2')).toMatch(/^\+OK/);
    expect(await login('carol-password-1')).toMatch(/^-ERR/);
  }, 60_000);
});
