/**
 * The secrets port: where TLS certificates, DKIM signing keys and the smarthost password are kept.
 * Two adapters: files and settings (core/secrets/file.ts, the local default) and AWS Secrets
 * Manager (core/secrets/aws.ts). They sit beside the port rather than under core/storage because
 * they follow their own settings, not `storage.driver`: each secret comes from Secrets Manager
 * when its secret name is configured and from files or settings otherwise, so a local process
 * may still read its certificate from Secrets Manager. `openSecrets` is the one place that picks.
 */
import type { Config } from './config.js';

/** A certificate chain and its private key, PEM. */
export interface TlsPair {
  cert: string;
  key: string;
}

/** A DKIM signing key as it is kept: its selector and PEM private key. */
export interface StoredDkimKey {
  selector: string;
  privateKey: string;
}

/** An addition refused because the secret already holds it (e.g. a DKIM selector in use). */
export class SecretExists extends Error {
  override readonly name = 'SecretExists';
}

/** The secrets every part of Tomlinson reads, each from where its settings say. */
export interface Secrets {
  /** The configured TLS certificate and key; undefined when none is configured (then a self-signed
   * one is made). Throws when one is configured but cannot be read or is malformed. */
  tlsPair(): Promise<TlsPair | undefined>;
  /** A domain's DKIM keys (none: do not sign); `domain` in lower case. */
  dkimKeys(domain: string): Promise<StoredDkimKey[]>;
  /** Adds a key for the domain; SecretExists when the selector is taken. Returns where it is kept
   * (for the operator: a file path or `secret <name>`). */
  addDkimKey(domain: string, key: StoredDkimKey): Promise<string>;
  /** The smarthost's password; undefined: use the one in the smarthost URL setting. */
  smarthostPassword(): Promise<string | undefined>;
  /** Ends connections (a short-lived process would otherwise wait for them). */
  close(): void;
}

/** Which secrets the configuration keeps in Secrets Manager (a name set) rather than in files. */
function keptInSecretsManager(config: Config): { tls: boolean; dkim: boolean; smarthost: boolean } {
  return { tls: Boolean(config.tls.secretId), dkim: Boolean(config.outbound.dkimSecretPrefix), smarthost: Boolean(config.outbound.smarthostPasswordSecretId) };
}

/**
 * The secrets of a configuration: each from Secrets Manager when its secret name is set, else from
 * files and settings. The AWS adapter (and its SDK) is loaded only when a secret name is set and
 * read.
 */
export function openSecrets(config: Config): Secrets {
  const inSm = keptInSecretsManager(config);
  let aws: Promise<Secrets> | undefined;
  let files: Promise<Secrets> | undefined;
  const awsSecrets = () => (aws ??= import('./secrets/aws.js').then((m) => m.awsSecrets(config)));
  const fileSecrets = () => (files ??= import('./secrets/file.js').then((m) => m.fileSecrets(config)));
  const pick = (inSecretsManager: boolean) => (inSecretsManager ? awsSecrets() : fileSecrets());
  return {
    tlsPair: async () => (await pick(inSm.tls)).tlsPair(),
    dkimKeys: async (domain) => (await pick(inSm.dkim)).dkimKeys(domain),
    addDkimKey: async (domain, key) => (await pick(inSm.dkim)).addDkimKey(domain, key),
    smarthostPassword: async () => (await pick(inSm.smarthost)).smarthostPassword(),
    close() {
      void aws?.then((s) => s.close());
      void files?.then((s) => s.close());
    },
  };
}
