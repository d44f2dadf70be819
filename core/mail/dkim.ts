/**
 * DKIM signing of outgoing mail (RFC 6376; ed25519-sha256 per RFC 8463) with per-domain keys from
 * the secrets port (core/secrets.ts: files or Secrets Manager). Signing itself is mailauth's `dkimSign` (relaxed/relaxed), which reads
 * the message as a stream; we only choose keys and build the DNS record to publish.
 */
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import type { Readable } from 'node:stream';
import { dkimSign } from 'mailauth';
import type { Secrets } from '../secrets.js';

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
 * The keys of each domain from the secrets port (files `<dkimDir>/<domain>/<selector>.pem`, or the
 * secret `<prefix><domain>`; the algorithm follows the key type), kept for `cacheMs`.
 */
export function storedDkimKeys(secrets: Pick<Secrets, 'dkimKeys'>, options: { cacheMs?: number; now?: () => number } = {}): DkimKeySource {
  const cache = new Map<string, { at: number; keys: DkimKey[] }>();
  const ttl = options.cacheMs ?? 60_000;
  const now = options.now ?? Date.now;
  return {
    async keys(domain) {
      const d = domain.toLowerCase();
      const hit = cache.get(d);
      if (hit && now() - hit.at < ttl) return hit.keys;
      const keys = (await secrets.dkimKeys(d)).map((k) => ({ selector: k.selector, privateKey: k.privateKey, algorithm: algorithmOf(k.privateKey) }));
      cache.set(d, { at: now(), keys });
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
export function generateDkimKey(
  domain: string,
  selector: string,
  algorithm: DkimAlgorithm = 'rsa-sha256',
  bits = 2048,
): { privateKey: string; name: string; txt: string } {
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
