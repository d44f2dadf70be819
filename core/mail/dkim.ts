/**
 * DKIM signing of outgoing mail (RFC 6376; ed25519-sha256 per RFC 8463) with per-domain keys from
 * files or Secrets Manager. Signing itself is mailauth's `dkimSign` (relaxed/relaxed), which reads
 * the message as a stream; we only choose keys and build the DNS record to publish.
 */
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { dkimSign } from 'mailauth';
import { parseDkimSecret, SecretStore } from '../secrets.js';

/** The signing algorithms we use. */
export type DkimAlgorithm = 'rsa-sha256' | 'ed25519-sha256';

/** One signing key of a domain. */
export interface DkimKey {
  selector: string;
  algorithm: DkimAlgorithm;
  /** PKCS#8 or PKCS#1 PEM. */
  privateKey: string;
}

/** Where a domain's keys come from. */
export interface DkimKeySource {
  /** The keys of a domain (none: do not sign). */
  keys(domain: string): Promise<DkimKey[]>;
}

function algorithmOf(pem: string): DkimAlgorithm {
  const t = createPublicKey(pem).asymmetricKeyType;
  if (t === 'ed25519') return 'ed25519-sha256';
  if (t === 'rsa') return 'rsa-sha256';
  throw new Error(`unsupported DKIM key type ${t}`);
}

/**
 * Keys from files: `<dir>/<domain>/<selector>.pem` (one signature per file; the algorithm follows
 * the key type). Cached for `cacheMs`.
 */
export function fileDkimKeys(dir: string, options: { cacheMs?: number; now?: () => number } = {}): DkimKeySource {
  const cache = new Map<string, { at: number; keys: DkimKey[] }>();
  const ttl = options.cacheMs ?? 60_000;
  const now = options.now ?? Date.now;
  return {
    async keys(domain) {
      const d = domain.toLowerCase();
      if (!/^[a-z0-9.-]+$/.test(d) || d.includes('..')) return [];
      const hit = cache.get(d);
      if (hit && now() - hit.at < ttl) return hit.keys;
      let names: string[] = [];
      try {
        names = (await readdir(join(dir, d))).filter((n) => n.endsWith('.pem')).sort();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      const keys: DkimKey[] = [];
      for (const n of names) {
        const privateKey = await readFile(join(dir, d, n), 'utf8');
        keys.push({ selector: n.slice(0, -4), algorithm: algorithmOf(privateKey), privateKey });
      }
      cache.set(d, { at: now(), keys });
      return keys;
    },
  };
}

/** Keys from Secrets Manager: secret `<prefix><domain>` holding `{"keys":[{"selector",
 * "privateKey"}]}` or a single `{"selector","privateKey"}` (algorithm from the key type).
 * Missing secret: no keys. */
export function secretsDkimKeys(prefix: string, options: { cacheMs?: number; region?: string } = {}): DkimKeySource {
  const cache = new Map<string, { at: number; keys: DkimKey[] }>();
  const ttl = options.cacheMs ?? 300_000;
  const secrets = new SecretStore(options.region);
  return {
    async keys(domain) {
      const d = domain.toLowerCase();
      const hit = cache.get(d);
      if (hit && Date.now() - hit.at < ttl) return hit.keys;
      const keys = parseDkimSecret(await secrets.read(`${prefix}${d}`)).map((k) => ({ selector: k.selector, privateKey: k.privateKey, algorithm: algorithmOf(k.privateKey) }));
      cache.set(d, { at: Date.now(), keys });
      return keys;
    },
  };
}

/** No keys at all: nothing is signed. */
export const noDkimKeys: DkimKeySource = { keys: async () => [] };

/**
 * Computes the DKIM-Signature header fields (one per key, CRLF-terminated) for a message read
 * from `input`; the caller prepends them to the message it sends. Empty string when there are no
 * keys. Throws when signing fails.
 */
export async function dkimSignatures(input: Readable, domain: string, keys: DkimKey[], options: { now?: Date } = {}): Promise<string> {
  if (keys.length === 0) {
    input.resume();
    return '';
  }
  const [first, ...rest] = keys;
  const base = { canonicalization: 'relaxed/relaxed', signTime: options.now };
  const res = await dkimSign(input, {
    ...base,
    signingDomain: domain,
    selector: first.selector,
    privateKey: first.privateKey,
    algorithm: first.algorithm,
    signatureData: [first, ...rest].map((k) => ({ ...base, signingDomain: domain, selector: k.selector, privateKey: k.privateKey, algorithm: k.algorithm })),
  });
  if (res.errors?.length) throw new Error(`DKIM signing for ${domain} failed: ${res.errors.map((e) => e.message).join('; ')}`);
  return res.signatures.trim() ? res.signatures : '';
}

/** A new key pair and the DNS TXT record (RFC 6376 §3.6.1) to publish at `<selector>._domainkey.<domain>`. */
export function generateDkimKey(domain: string, selector: string, algorithm: DkimAlgorithm = 'rsa-sha256', bits = 2048): { privateKey: string; name: string; txt: string } {
  let privateKey: string;
  let p: string;
  if (algorithm === 'ed25519-sha256') {
    const kp = generateKeyPairSync('ed25519');
    privateKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    // RFC 8463 §4.2: p= is the raw 32-byte public key, base64; the SPKI DER ends with it.
    const der = kp.publicKey.export({ type: 'spki', format: 'der' });
    p = der.subarray(der.length - 32).toString('base64');
  } else {
    const kp = generateKeyPairSync('rsa', { modulusLength: bits });
    privateKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    p = kp.publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  }
  const k = algorithm === 'ed25519-sha256' ? 'ed25519' : 'rsa';
  return { privateKey, name: `${selector}._domainkey.${domain}`, txt: `v=DKIM1; k=${k}; p=${p}` };
}
