/**
 * `domain`, `user` and `alias` through the real binary against the local adapters: human and
 * --json output, passwords from standard input (never argv), clear errors with a non-zero exit,
 * and nothing changed by a refused command.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import { startCli, type CliHarness } from './support.js';

// Each test spawns the binary several times (about half a second of CPU each); on a loaded
// machine that can pass the default minute, which would be a false failure.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

let cli: CliHarness;

beforeAll(async () => {
  cli = await startCli();
});
afterAll(async () => cli?.cleanup());

/** Checks a password through the model, the way POP3 and SMTP AUTH will. */
async function authenticates(login: string, password: string): Promise<boolean> {
  const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
  try {
    return (await new Accounts(storage.tables).authenticate(login, password)) !== undefined;
  } finally {
    await storage.close();
  }
}

describe('the three first commands of the README', () => {
  it('adds a domain, a user and an alias', async () => {
    expect(await cli.ok(['domain', 'add', 'example.com'])).toBe('added domain example.com\n');
    expect(await cli.ok(['user', 'add', 'bob@example.com', '--password-stdin'], { input: 'correct horse battery\n' })).toBe(
      'added user bob@example.com (quota unlimited)\n',
    );
    expect(await cli.ok(['alias', 'add', 'postmaster@example.com', 'bob@example.com'])).toBe('alias postmaster@example.com -> bob@example.com\n');
    expect(await authenticates('bob@example.com', 'correct horse battery')).toBe(true);
  });
});

describe('domain', () => {
  it('adds an international domain, lists as a table and as JSON', async () => {
    expect(await cli.ok(['domain', 'add', 'Bücher.DE'])).toBe('added domain xn--bcher-kva.de (bücher.de)\n');
    const table = await cli.ok(['domain', 'list']);
    expect(table.split('\n')[0]).toMatch(/^DOMAIN\s+UNICODE\s+CREATED$/);
    expect(table).toMatch(/^xn--bcher-kva\.de\s+bücher\.de\s+\d{4}-/m);
    const list = await cli.json<{ domain: string; unicode: string }[]>(['domain', 'list']);
    expect(list.map((d) => d.domain)).toEqual(['example.com', 'xn--bcher-kva.de']);
    // --json after the subcommand works too
    expect(JSON.parse(await cli.ok(['domain', 'list', '--json']))).toEqual(list);
  });

  it('refuses a duplicate or malformed domain with exit 1 and a clear message', async () => {
    const dup = await cli.run(['domain', 'add', 'EXAMPLE.com']);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toBe('error: domain example.com already exists\n');
    const bad = await cli.run(['domain', 'add', 'not a domain']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error: invalid address .*forbidden character " "\n$/);
    const json = await cli.run(['--json', 'domain', 'add', 'example.com']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stderr)).toMatchObject({ error: 'domain example.com already exists', code: 'Exists' });
    expect(await cli.json<unknown[]>(['domain', 'list'])).toHaveLength(2);
  });

  it('refuses to remove a domain in use, removes an empty one', async () => {
    const busy = await cli.run(['domain', 'remove', 'example.com']);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toContain('still has users');
    await cli.ok(['domain', 'add', 'spare.example']);
    expect(await cli.ok(['domain', 'remove', 'spare.example'])).toBe('removed domain spare.example\n');
    const gone = await cli.run(['domain', 'remove', 'spare.example']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe('error: domain spare.example does not exist\n');
  });
});

describe('user', () => {
  it('adds with a quota, lists with usage, and never takes a password from argv', async () => {
    await cli.ok(['user', 'add', 'Alice@Example.com', '--password-stdin', '--quota', '50M'], { input: 'alice-secret-1\r\n' });
    const list = await cli.json<{ address: string; quotaBytes: number; enabled: boolean; messages: number }[]>(['user', 'list']);
    expect(list.map((u) => [u.address, u.quotaBytes, u.enabled, u.messages])).toEqual([
      ['alice@example.com', 50 * 1024 * 1024, true, 0],
      ['bob@example.com', 0, true, 0],
    ]);
    expect(await cli.ok(['user', 'list', 'example.com'])).toMatch(/^alice@example\.com\s+0\s+0 B\s+50 MiB\s+enabled$/m);
    expect(await authenticates('alice@example.com', 'alice-secret-1')).toBe(true);
    const argv = await cli.run(['user', 'add', 'carol@example.com', 'carol-password']);
    expect(argv.code).toBe(2); // a password-looking extra argument is a usage error
    expect(argv.stderr).toContain('too many arguments');
  });

  it('refuses without a terminal or piped password, a duplicate, an unknown domain, a short password', async () => {
    const noTty = await cli.run(['user', 'add', 'carol@example.com']);
    expect(noTty.code).toBe(1);
    expect(noTty.stderr).toBe('error: no terminal to ask for the password; pipe it in with --password-stdin\n');
    const dup = await cli.run(['user', 'add', 'bob@EXAMPLE.com', '--password-stdin'], { input: 'whatever-123\n' });
    expect(dup.stderr).toBe('error: user bob@example.com already exists\n');
    const foreign = await cli.run(['user', 'add', 'carol@example.org', '--password-stdin'], { input: 'whatever-123\n' });
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toContain('example.org is not a local domain');
    const short = await cli.run(['user', 'add', 'carol@example.com', '--password-stdin'], { input: 'short\n' });
    expect(short.code).toBe(1);
    expect(short.stderr).toContain('at least 8 characters');
    const empty = await cli.run(['user', 'add', 'carol@example.com', '--password-stdin'], { input: '' });
    expect(empty.stderr).toBe('error: empty password; nothing changed\n');
    const badQuota = await cli.run(['user', 'add', 'carol@example.com', '--password-stdin', '--quota', 'lots'], { input: 'whatever-123\n' });
    expect(badQuota.code).toBe(1);
    expect(badQuota.stderr).toContain('invalid size "lots"');
    expect((await cli.json<{ address: string }[]>(['user', 'list'])).map((u) => u.address)).not.toContain('carol@example.com');
  });

  it('changes the password', async () => {
    expect(await cli.ok(['user', 'passwd', 'alice@example.com', '--password-stdin'], { input: 'alice-secret-2\n' })).toBe(
      'password changed for alice@example.com\n',
    );
    expect(await authenticates('alice@example.com', 'alice-secret-1')).toBe(false);
    expect(await authenticates('alice@example.com', 'alice-secret-2')).toBe(true);
    const unknown = await cli.run(['user', 'passwd', 'zed@example.com', '--password-stdin'], { input: 'zed-password\n' });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe('error: user zed@example.com does not exist\n');
  });

  it('sets the quota', async () => {
    expect(await cli.ok(['user', 'quota', 'alice@example.com', '2G'])).toBe('quota of alice@example.com is 2.0 GiB\n');
    expect(await cli.json(['user', 'quota', 'alice@example.com', 'unlimited'])).toMatchObject({ address: 'alice@example.com', quotaBytes: 0 });
    const bad = await cli.run(['user', 'quota', 'alice@example.com', '-5']);
    expect(bad.code).not.toBe(0);
  });

  it('disables and enables', async () => {
    expect(await cli.ok(['user', 'disable', 'alice@example.com'])).toBe('disabled alice@example.com\n');
    expect(await authenticates('alice@example.com', 'alice-secret-2')).toBe(false);
    expect(await cli.ok(['user', 'list'])).toMatch(/^alice@example\.com.*disabled$/m);
    await cli.ok(['user', 'enable', 'alice@example.com']);
    expect(await authenticates('alice@example.com', 'alice-secret-2')).toBe(true);
    const unknown = await cli.run(['user', 'disable', 'zed@example.com']);
    expect(unknown.code).toBe(1);
  });

  it('removes a user', async () => {
    await cli.ok(['user', 'add', 'temp@example.com', '--password-stdin'], { input: 'temp-password\n' });
    expect(await cli.ok(['user', 'remove', 'temp@example.com'])).toBe('removed user temp@example.com\n');
    expect(await authenticates('temp@example.com', 'temp-password')).toBe(false);
    const again = await cli.run(['user', 'remove', 'temp@example.com']);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe('error: user temp@example.com does not exist\n');
  });
});

describe('addresses with URL delimiters', () => {
  // The domain was parsed like a URL host, which cuts it at "/", "?", "#" or "\\": `user add
  // y@example.com/anything` silently added y@example.com.
  it.each(['y@example.com/anything', 'y@example.com?x', 'y@example.com#x', 'y@example.com\\x', 'y@ex%61mple.com'])(
    'refuses user add, alias add and domain add of %s',
    async (bad) => {
      const user = await cli.run(['user', 'add', bad, '--password-stdin'], { input: 'a long enough password\n' });
      expect(user.code).toBe(1);
      expect(user.stderr).toMatch(/^error: invalid address .*forbidden character .*\n$/);
      const alias = await cli.run(['alias', 'add', bad, 'bob@example.com']);
      expect(alias.code).toBe(1);
      expect(alias.stderr).toMatch(/^error: invalid address .*forbidden character .*\n$/);
      const target = await cli.run(['alias', 'add', 'z@example.com', bad]);
      expect(target.code).toBe(1);
      expect(target.stderr).toMatch(/^error: invalid address .*forbidden character .*\n$/);
      const domain = await cli.run(['domain', 'add', bad.slice(2)]);
      expect(domain.code).toBe(1);
      expect(domain.stderr.split('\n')).toHaveLength(2);
      const users = await cli.json<{ address: string }[]>(['user', 'list']);
      expect(users.map((u) => u.address)).not.toContain('y@example.com');
      const aliases = await cli.json<{ address: string }[]>(['alias', 'list']);
      expect(aliases.map((a) => a.address)).not.toContain('y@example.com');
      expect(aliases.map((a) => a.address)).not.toContain('z@example.com');
    },
  );
});

describe('alias', () => {
  it('adds a catch-all and remote targets, lists, removes a target and then the alias', async () => {
    expect(await cli.ok(['alias', 'add', '@bücher.de', 'alice@example.com'])).toBe('alias @xn--bcher-kva.de -> alice@example.com\n');
    await cli.ok(['alias', 'add', 'team@example.com', 'alice@example.com', 'Friend@Elsewhere.ORG']);
    const list = await cli.json<{ address: string; targets: string[] }[]>(['alias', 'list']);
    expect(list).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ address: 'team@example.com', targets: ['alice@example.com', 'Friend@elsewhere.org'] }),
        expect.objectContaining({ address: '@xn--bcher-kva.de', targets: ['alice@example.com'] }),
      ]),
    );
    expect(await cli.ok(['alias', 'list', 'example.com'])).toMatch(/^team@example\.com\s+alice@example\.com, Friend@elsewhere\.org$/m);
    expect(await cli.ok(['alias', 'remove', 'team@example.com', 'Friend@elsewhere.org'])).toBe('alias team@example.com -> alice@example.com\n');
    expect(await cli.ok(['alias', 'remove', 'team@example.com'])).toBe('removed alias team@example.com\n');
    expect((await cli.json<{ address: string }[]>(['alias', 'list'])).map((a) => a.address)).not.toContain('team@example.com');
  });

  it('refuses an alias over a user, in a foreign domain, or unknown on removal', async () => {
    const shadow = await cli.run(['alias', 'add', 'bob@example.com', 'alice@example.com']);
    expect(shadow.code).toBe(1);
    expect(shadow.stderr).toContain('is a user');
    const foreign = await cli.run(['alias', 'add', 'x@example.org', 'alice@example.com']);
    expect(foreign.code).toBe(1);
    const missing = await cli.run(['alias', 'remove', 'nothing@example.com']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('error: alias nothing@example.com does not exist\n');
  });
});

describe('usage', () => {
  it('prints help with exit 0 and usage errors with exit 2', async () => {
    const help = await cli.run(['--help']);
    expect(help.code).toBe(0);
    for (const group of ['domain', 'user', 'alias', 'mailbox']) expect(help.stdout).toContain(group);
    const unknown = await cli.run(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
    const missing = await cli.run(['user', 'quota', 'bob@example.com']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("missing required argument 'size'");
  });

  it('prints the settings table for README.md and the effective configuration', async () => {
    const { SETTINGS } = await import('../../core/config.js');
    const docs = await cli.ok(['config', '--docs']);
    expect(docs.split('\n')[0]).toBe('| Variable | File path | Default | Meaning |');
    for (const s of SETTINGS) expect(docs).toContain(`| \`${s.env}\` | \`${s.path}\` |`);
    const shown = JSON.parse((await cli.run(['--json', 'config', 'show'], { env: { TOMLINSON_POP3_PORT: '1110' } })).stdout);
    expect(shown['pop3.port']).toBe(1110);
    expect(shown.dataDir).toBe(cli.dataDir);
  });

  it('reports a bad configuration by its setting', async () => {
    const r = await cli.run(['domain', 'list'], { env: { TOMLINSON_STORAGE: 'floppy' } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('TOMLINSON_STORAGE');
  });
});
