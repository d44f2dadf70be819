/**
 * The secrets port (core/secrets.ts) through `openSecrets`, one contract for both adapters: files
 * and settings in a temp folder, and Secrets Manager on moto (started here). What an adapter does
 * with a missing secret, a taken DKIM selector or a password kept elsewhere is asserted here in
 * port terms; Secrets Manager's own error names stay inside core/secrets/aws.ts.
 */
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { openSecrets, SecretExists, type Secrets, type TlsPair } from '../../core/secrets.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { tempDir } from '../support/tmp.js';

vi.setConfig({ hookTimeout: 120_000 });

/** How one adapter is set up: its secrets with nothing configured, and with everything configured. */
interface Target {
  /** Secrets of a configuration that names no TLS pair and no smarthost password. */
  bare(): Secrets;
  /** Secrets of a configuration whose TLS pair is `pair` and smarthost password `password` (as the adapter keeps it). */
  provisioned(pair: TlsPair, password: string): Promise<{ secrets: Secrets; expectedPassword: string | undefined }>;
  cleanup(): Promise<void>;
}

const PAIR: TlsPair = {
  cert: '-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n',
  key: '-----BEGIN PRIVATE KEY-----\nS0VZ\n-----END PRIVATE KEY-----\n',
};

function describeSecretsContract(name: string, setup: () => Promise<Target>): void {
  describe(`secrets contract: ${name}`, () => {
    let target: Target;
    const opened: Secrets[] = [];
    const track = (s: Secrets) => (opened.push(s), s);
    beforeAll(async () => {
      target = await setup();
    });
    afterAll(async () => {
      for (const s of opened) s.close();
      await target?.cleanup();
    });

    it('has no TLS pair and no smarthost password of its own when none is configured', async () => {
      const s = track(target.bare());
      expect(await s.tlsPair()).toBeUndefined();
      expect(await s.smarthostPassword()).toBeUndefined();
    });

    it('reads the configured TLS pair and smarthost password', async () => {
      const { secrets, expectedPassword } = await target.provisioned(PAIR, 'hunter2');
      track(secrets);
      expect(await secrets.tlsPair()).toEqual(PAIR);
      expect(await secrets.smarthostPassword()).toBe(expectedPassword);
    });

    it('a domain without keys has none; added keys are read back in selector order; a taken selector is refused', async () => {
      const s = track(target.bare());
      const domain = `d${randomUUID().slice(0, 8)}.test`;
      expect(await s.dkimKeys(domain)).toEqual([]);
      const where = await s.addDkimKey(domain, { selector: 'b2', privateKey: 'PEM-B' });
      expect(where).toContain(domain);
      await s.addDkimKey(domain, { selector: 'a1', privateKey: 'PEM-A' });
      const keys = await s.dkimKeys(domain);
      expect(keys.map((k) => k.selector).sort()).toEqual(['a1', 'b2']);
      expect(Object.fromEntries(keys.map((k) => [k.selector, k.privateKey]))).toEqual({ a1: 'PEM-A', b2: 'PEM-B' });
      await expect(s.addDkimKey(domain, { selector: 'a1', privateKey: 'OTHER' })).rejects.toBeInstanceOf(SecretExists);
      expect((await s.dkimKeys(domain)).find((k) => k.selector === 'a1')?.privateKey).toBe('PEM-A');
    });
  });
}

describeSecretsContract('files and settings', async () => {
  const dir = await tempDir('tomlinson-secrets-');
  return {
    bare: () => openSecrets(loadConfig({ TOMLINSON_DATA_DIR: dir.path })),
    async provisioned(pair, password) {
      const certFile = join(dir.path, 'tls.crt');
      const keyFile = join(dir.path, 'tls.key');
      await writeFile(certFile, pair.cert);
      await writeFile(keyFile, pair.key);
      const config = loadConfig({
        TOMLINSON_DATA_DIR: dir.path,
        TOMLINSON_TLS_CERT_FILE: certFile,
        TOMLINSON_TLS_KEY_FILE: keyFile,
        TOMLINSON_SMARTHOST: `smtp://relay:${password}@relay.test:587`,
      });
      // The password is the smarthost URL setting's own: the adapter has none to add.
      return { secrets: openSecrets(config), expectedPassword: undefined };
    },
    cleanup: dir.remove,
  };
});

describeSecretsContract('Secrets Manager (moto)', async () => {
  const moto: AwsTestBackend = await startMoto({ say: () => undefined });
  const dir = await tempDir('tomlinson-secrets-aws-');
  const run = randomUUID().slice(0, 8);
  const base = { ...moto.env, TOMLINSON_DATA_DIR: dir.path, TOMLINSON_DKIM_SECRET_PREFIX: `tomlinson-test/${run}/dkim/` };
  return {
    bare: () => openSecrets(loadConfig(base)),
    async provisioned(pair, password) {
      const config = loadConfig({
        ...base,
        TOMLINSON_TLS_SECRET_ID: `tomlinson-test/${run}/tls`,
        TOMLINSON_SMARTHOST_SECRET_ID: `tomlinson-test/${run}/smarthost`,
      });
      // Written through the adapter's own client, as the stack or an operator would.
      const { SecretStore } = await import('../../core/secrets/aws.js');
      const store = new SecretStore(config.storage.aws.region || undefined);
      await store.write(config.tls.secretId, JSON.stringify(pair));
      await store.write(config.outbound.smarthostPasswordSecretId, JSON.stringify({ password }));
      store.close();
      return { secrets: openSecrets(config), expectedPassword: password };
    },
    async cleanup() {
      await moto.stop();
      await dir.remove();
    },
  };
});
