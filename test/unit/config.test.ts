import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../core/config.js';

describe('loadConfig', () => {
  it('gives the unprivileged default ports and local storage with no settings at all', () => {
    const c = loadConfig({});
    expect(c.storage.driver).toBe('local');
    expect([c.smtp.port, c.smtp.submissionPort, c.smtp.submissionsPort]).toEqual([2525, 2587, 2465]);
    expect([c.pop3.port, c.pop3.tlsPort, c.proxy.port]).toEqual([2110, 2995, 3128]);
    expect(c.listenHost).toBe('127.0.0.1');
    expect(c.smtp.maxMessageBytes).toBe(50 * 1024 * 1024);
    expect(c.dataDir.endsWith('/data')).toBe(true);
    expect(c.hostname.length).toBeGreaterThan(0);
  });

  it('reads environment variables with their types', () => {
    const c = loadConfig({ TOMLINSON_SMTP_PORT: '2600', TOMLINSON_SMTP_ENABLED: 'false', TOMLINSON_PROXY_ALLOWED_CLIENTS: '10.0.0.0/8, 127.0.0.1/32' });
    expect(c.smtp.port).toBe(2600);
    expect(c.smtp.enabled).toBe(false);
    expect(c.proxy.allowedClients).toEqual(['10.0.0.0/8', '127.0.0.1/32']);
  });

  it('reads a JSON file and lets the environment win over it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ smtp: { port: 2700, maxRecipients: 7 }, pop3: { allowPlaintext: 'never' } }));
    const c = loadConfig({ TOMLINSON_CONFIG: file, TOMLINSON_SMTP_PORT: '2800' });
    expect(c.smtp.port).toBe(2800);
    expect(c.smtp.maxRecipients).toBe(7);
    expect(c.pop3.allowPlaintext).toBe('never');
  });

  it.each([
    [{ TOMLINSON_SMTP_PORT: '70000' }, 'TOMLINSON_SMTP_PORT'],
    [{ TOMLINSON_SMTP_PORT: 'abc' }, 'TOMLINSON_SMTP_PORT'],
    [{ TOMLINSON_STORAGE: 's3' }, 'TOMLINSON_STORAGE'],
    [{ TOMLINSON_SMTP_ENABLED: 'maybe' }, 'TOMLINSON_SMTP_ENABLED'],
    [{ TOMLINSON_POP3_IDLE_TIMEOUT: '30' }, 'TOMLINSON_POP3_IDLE_TIMEOUT'],
    [{ TOMLINSON_STORAGE: 'aws' }, 'TOMLINSON_MAIL_BUCKET'],
    [{ TOMLINSON_CONFIG: '/nonexistent/tomlinson.json' }, 'TOMLINSON_CONFIG'],
    [{ TOMLINSON_OUTBOUND_RETRY_SCHEDULE: '300,soon' }, 'TOMLINSON_OUTBOUND_RETRY_SCHEDULE'],
  ])('refuses %j naming the setting', (env, setting) => {
    let caught: unknown;
    try {
      loadConfig(env);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).setting).toBe(setting);
    expect((caught as ConfigError).message).toContain(setting);
  });

  it('names the file path of a bad value that came from the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ proxy: { port: 'x' } }));
    expect(() => loadConfig({ TOMLINSON_CONFIG: file })).toThrow(/proxy\.port/);
  });
});
