/**
 * The Secrets Manager adapter of the secrets port: the one place that builds its client and knows
 * its errors. The SDK is imported on first use, so a process that never reads a secret never loads
 * it. Secret layouts: TLS `{"cert","key"}`; DKIM `<prefix><domain>` holding `{"keys":[{selector,
 * privateKey}]}` or one `{selector, privateKey}`; the smarthost password as text or `{"password"}`.
 */
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { Config } from '../config.js';
import { SecretExists, type Secrets, type StoredDkimKey, type TlsPair } from '../secrets.js';

/** Reads and writes secret strings by name; `close` ends its connections. */
export class SecretStore {
  private client: Promise<SecretsManagerClient> | undefined;

  /** @param region the client's region. @default the SDK's own (AWS_REGION) */
  constructor(private readonly region?: string) {}

  private sdk(): Promise<SecretsManagerClient> {
    this.client ??= import('@aws-sdk/client-secrets-manager').then((sm) => new sm.SecretsManagerClient(this.region ? { region: this.region } : {}));
    return this.client;
  }

  /** The secret's current string; undefined when the secret or its value does not exist. */
  async read(id: string): Promise<string | undefined> {
    const { GetSecretValueCommand } = await import('@aws-sdk/client-secrets-manager');
    try {
      return (await (await this.sdk()).send(new GetSecretValueCommand({ SecretId: id }))).SecretString;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Sets the secret's value, creating the secret when it does not exist. */
  async write(id: string, value: string): Promise<void> {
    const { PutSecretValueCommand, CreateSecretCommand } = await import('@aws-sdk/client-secrets-manager');
    const client = await this.sdk();
    try {
      await client.send(new PutSecretValueCommand({ SecretId: id, SecretString: value }));
    } catch (e) {
      if (!isNotFound(e)) throw e;
      await client.send(new CreateSecretCommand({ Name: id, SecretString: value }));
    }
  }

  /** Ends the client's connections (a short-lived process would otherwise wait for them). */
  close(): void {
    void this.client?.then((c) => c.destroy());
  }
}

/** Reads one secret with a client of its own, closed afterwards. */
export async function readSecretOnce(id: string, region?: string): Promise<string | undefined> {
  const store = new SecretStore(region);
  try {
    return await store.read(id);
  } finally {
    store.close();
  }
}

function isNotFound(e: unknown): boolean {
  return (e as { name?: string }).name === 'ResourceNotFoundException';
}

/**
 * A domain's DKIM keys from its secret: `{"keys":[{selector, privateKey}, ...]}` or one
 * `{selector, privateKey}`. A key whose privateKey is still empty (a secret the stack created
 * before its key) is left out.
 */
export function parseDkimSecret(text: string | undefined): StoredDkimKey[] {
  const parsed = JSON.parse(text || '{}') as { keys?: StoredDkimKey[]; selector?: string; privateKey?: string };
  const list = parsed.keys ?? (parsed.selector ? [{ selector: parsed.selector, privateKey: parsed.privateKey ?? '' }] : []);
  return list.filter((k) => k.selector && k.privateKey);
}

function parseTlsSecret(text: string): TlsPair {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new Error('the TLS secret is not JSON {"cert","key"}');
  }
  const o = obj as Record<string, unknown>;
  if (typeof o.cert !== 'string' || typeof o.key !== 'string') throw new Error('the TLS secret needs string fields "cert" and "key"');
  return { cert: o.cert, key: o.key };
}

/** The names of the secrets this adapter reads (empty: not kept here). */
export interface AwsSecretNames {
  /** @default the SDK's own (AWS_REGION) */
  region?: string;
  tlsSecretId?: string;
  dkimSecretPrefix?: string;
  smarthostPasswordSecretId?: string;
}

/** The secrets port over Secrets Manager, for the secret names given. */
export class AwsSecrets implements Secrets {
  private readonly store: SecretStore;

  constructor(private readonly names: AwsSecretNames) {
    this.store = new SecretStore(names.region || undefined);
  }

  async tlsPair(): Promise<TlsPair | undefined> {
    if (!this.names.tlsSecretId) return undefined;
    const text = await this.store.read(this.names.tlsSecretId);
    if (text === undefined) throw new Error('the secret has no SecretString');
    return parseTlsSecret(text);
  }

  async dkimKeys(domain: string): Promise<StoredDkimKey[]> {
    if (!this.names.dkimSecretPrefix) return [];
    return parseDkimSecret(await this.store.read(`${this.names.dkimSecretPrefix}${domain}`));
  }

  async addDkimKey(domain: string, key: StoredDkimKey): Promise<string> {
    if (!this.names.dkimSecretPrefix) throw new Error('no DKIM secret prefix is configured');
    const id = `${this.names.dkimSecretPrefix}${domain}`;
    const keys = parseDkimSecret(await this.store.read(id));
    if (keys.some((k) => k.selector === key.selector)) throw new SecretExists(`selector ${key.selector} exists in ${id}; choose another --selector`);
    await this.store.write(id, JSON.stringify({ keys: [...keys, { selector: key.selector, privateKey: key.privateKey }] }));
    return `secret ${id}`;
  }

  async smarthostPassword(): Promise<string | undefined> {
    if (!this.names.smarthostPasswordSecretId) return undefined;
    const s = (await this.store.read(this.names.smarthostPasswordSecretId)) ?? '';
    // Either the password itself or {"password": "..."}.
    if (s.trim().startsWith('{')) return String((JSON.parse(s) as { password?: string }).password ?? '');
    return s;
  }

  close(): void {
    this.store.close();
  }
}

/** The adapter for a configuration's secret names. */
export function awsSecrets(config: Config): AwsSecrets {
  return new AwsSecrets({
    region: config.storage.aws.region || undefined,
    tlsSecretId: config.tls.secretId,
    dkimSecretPrefix: config.outbound.dkimSecretPrefix,
    smarthostPasswordSecretId: config.outbound.smarthostPasswordSecretId,
  });
}
