/**
 * The files-and-settings adapter of the secrets port (the local default): the TLS certificate and
 * key from the configured PEM files, DKIM keys as `<dkimDir>/<domain>/<selector>.pem` (readable by
 * the owner only), and the smarthost password from the smarthost URL setting itself.
 */
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { SecretExists, type Secrets, type StoredDkimKey, type TlsPair } from '../secrets.js';

/** Where this adapter finds the secrets. */
export interface SecretFiles {
  /** PEM certificate chain and key; both empty: none configured. */
  tlsCertFile?: string;
  tlsKeyFile?: string;
  /** Folder of `<domain>/<selector>.pem` DKIM keys. */
  dkimDir: string;
}

/** A domain name safe to use as a folder name. */
function safeDomain(domain: string): boolean {
  return /^[a-z0-9.-]+$/.test(domain) && !domain.includes('..');
}

/** The secrets port over files. */
export class FileSecrets implements Secrets {
  constructor(private readonly files: SecretFiles) {}

  async tlsPair(): Promise<TlsPair | undefined> {
    const { tlsCertFile, tlsKeyFile } = this.files;
    if (!tlsCertFile || !tlsKeyFile) return undefined;
    const [cert, key] = await Promise.all([readFile(tlsCertFile, 'utf8'), readFile(tlsKeyFile, 'utf8')]);
    return { cert, key };
  }

  async dkimKeys(domain: string): Promise<StoredDkimKey[]> {
    if (!safeDomain(domain)) return [];
    const dir = join(this.files.dkimDir, domain);
    let names: string[] = [];
    try {
      names = (await readdir(dir)).filter((n) => n.endsWith('.pem')).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const keys: StoredDkimKey[] = [];
    for (const n of names) keys.push({ selector: n.slice(0, -4), privateKey: await readFile(join(dir, n), 'utf8') });
    return keys;
  }

  async addDkimKey(domain: string, key: StoredDkimKey): Promise<string> {
    if (!safeDomain(domain)) throw new Error(`not a domain name: ${domain}`);
    const dir = join(this.files.dkimDir, domain);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, `${key.selector}.pem`);
    try {
      await writeFile(file, key.privateKey, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new SecretExists(`${file} exists; choose another --selector`);
      throw e;
    }
    return file;
  }

  /** None of its own: the password is the one in the smarthost URL setting. */
  async smarthostPassword(): Promise<string | undefined> {
    return undefined;
  }

  close(): void {}
}

/** The adapter for a configuration's files. */
export function fileSecrets(config: Config): FileSecrets {
  return new FileSecrets({
    tlsCertFile: config.tls.certFile,
    tlsKeyFile: config.tls.keyFile,
    dkimDir: config.outbound.dkimDir || join(config.dataDir, 'dkim'),
  });
}
