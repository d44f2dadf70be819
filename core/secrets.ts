/**
 * AWS Secrets Manager, the one place that builds its client and knows its errors: TLS certificates,
 * DKIM keys, the smarthost password and the CLI's `dkim generate` all read and write secrets here.
 * The SDK is imported on first use, so a process that never touches a secret never loads it.
 */
import type { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';

/** A DKIM key as its domain's secret holds it. */
export interface StoredDkimKey {
  selector: string;
  privateKey: string;
}

/** Reads and writes secret strings; `close` ends its connections. */
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

function isNotFound(e: unknown): boolean {
  return (e as { name?: string }).name === 'ResourceNotFoundException';
}
