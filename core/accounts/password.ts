/**
 * Password hashing with scrypt (RFC 7914), a memory-hard function in node:crypto. The hash is kept
 * as a PHC-style string `$scrypt$ln=14,r=8,p=1$<salt b64>$<hash b64>` so the parameters travel with
 * it and can be raised later (`needsRehash`).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** scrypt cost parameters. */
export interface ScryptParams {
  /** log2 of the CPU/memory cost N. @default 14 (16 MiB with r=8) */
  ln: number;
  /** Block size. @default 8 */
  r: number;
  /** Parallelism. @default 1 */
  p: number;
}

/** Parameters for new hashes: N=2^14, r=8, p=1, the scrypt paper's figure for interactive logins
 * (about 80 ms and 16 MiB per check on one core here); raise them with `Accounts` options. */
export const DEFAULT_SCRYPT: ScryptParams = { ln: 14, r: 8, p: 1 };

const KEY_LEN = 32;
const SALT_LEN = 16;

function derive(password: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const N = 2 ** params.ln;
  // maxmem must exceed 128 * N * r * p with headroom, or node refuses large N.
  const opts: ScryptOptions = { N, r: params.r, p: params.p, maxmem: 256 * N * params.r * params.p + 1024 * 1024 };
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, KEY_LEN, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** Hashes a password with a fresh random salt. */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_LEN);
  const key = await derive(password, salt, params);
  return `$scrypt$ln=${params.ln},r=${params.r},p=${params.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

interface Parsed {
  params: ScryptParams;
  salt: Buffer;
  key: Buffer;
}

function parseHash(stored: string): Parsed | undefined {
  const m = /^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(stored);
  if (!m) return undefined;
  const params = { ln: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.ln < 1 || params.ln > 22 || params.r < 1 || params.r > 64 || params.p < 1 || params.p > 16) return undefined;
  return { params, salt: Buffer.from(m[4], 'base64'), key: Buffer.from(m[5], 'base64') };
}

/** True when `password` matches `stored`; the comparison is constant-time (timingSafeEqual). */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parseHash(stored);
  if (!parsed || parsed.key.length !== KEY_LEN) return false;
  const key = await derive(password, parsed.salt, parsed.params);
  return timingSafeEqual(key, parsed.key);
}

/** True when `stored` was made with weaker parameters than `params` (or is unreadable). */
export function needsRehash(stored: string, params: ScryptParams = DEFAULT_SCRYPT): boolean {
  const parsed = parseHash(stored);
  if (!parsed) return true;
  return parsed.params.ln < params.ln || parsed.params.r < params.r || parsed.params.p < params.p;
}

/** The parameters a stored hash was made with, when it is readable. */
export function hashParams(stored: string): ScryptParams | undefined {
  return parseHash(stored)?.params;
}
