/**
 * MTA-STS (RFC 8461) for outbound MX delivery: discover a domain's policy (the `_mta-sts` TXT
 * record, then the policy file over HTTPS with a verified certificate), cache it in Tables until
 * its max_age runs out, and tell routing which MX hosts may be used and whether TLS is required.
 * Parsing of the TXT record and the policy file is mailauth's; the HTTPS fetch is ours because
 * mailauth's fixes port 443 and the system CAs, which tests (and private CAs) cannot meet.
 */
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import { parsePolicy, resolvePolicy } from 'mailauth/lib/mta-sts.js';
import type { DnsResolver } from '../dns.js';
import type { Tables } from '../storage/ports.js';

/** A domain's policy in the terms delivery needs. */
export interface StsPolicy {
  mode: 'enforce' | 'testing' | 'none';
  /** Allowed MX patterns (`mx.example.com`, `*.example.com`). */
  mx: string[];
  /** The policy id from the TXT record; '' when there is no policy. */
  id: string;
  /** Epoch ms after which the cached policy must not be used. */
  expires: number;
}

/** Options of the policy source. */
export interface MtaStsOptions {
  resolver: Pick<DnsResolver, 'resolve' | 'resolve4' | 'resolve6'>;
  tables: Tables;
  /** HTTPS port of `mta-sts.<domain>`. @default 443 */
  port?: number;
  /** Extra trusted CA certificates (PEM), e.g. a test CA. */
  ca?: string;
  /** @default 15000 */
  timeoutMs?: number;
  /** @default () => new Date() */
  now?: () => Date;
}

/** RFC 8461 §3.3: the policy body is at most 64 KiB. */
const MAX_POLICY_BYTES = 64 * 1024;
const NONE: Omit<StsPolicy, 'expires'> = { mode: 'none', mx: [], id: '' };

/**
 * True when `host` matches one of the policy's MX patterns. RFC 8461 §4.1: a pattern with a
 * leading "*." matches exactly one extra label ("*.example.com" matches "mx.example.com", not
 * "a.b.example.com" nor "example.com").
 */
export function mxMatches(host: string, patterns: string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return patterns.some((raw) => {
    const p = raw.toLowerCase().replace(/\.$/, '');
    if (!p.startsWith('*.')) return p === h;
    const rest = p.slice(1);
    return h.endsWith(rest) && !h.slice(0, h.length - rest.length).includes('.') && h.length > rest.length;
  });
}

async function fetchPolicyText(domain: string, o: MtaStsOptions): Promise<string> {
  const host = `mta-sts.${domain}`;
  const addrs = await o.resolver.resolve4(host).catch(() => o.resolver.resolve6(host));
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: addrs[0],
        port: o.port ?? 443,
        servername: host,
        headers: { host },
        path: '/.well-known/mta-sts.txt',
        method: 'GET',
        // RFC 8461 §3.3: the certificate must be valid for the policy host.
        rejectUnauthorized: true,
        ca: o.ca ? [...rootCertificates, o.ca] : undefined,
        timeout: o.timeoutMs ?? 15_000,
      },
      (res) => {
        // RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed"; only 200 is a policy.
        if (res.statusCode !== 200) {
          res.resume();
          return reject(new Error(`policy fetch for ${domain}: HTTP ${res.statusCode}`));
        }
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
          if (body.length > MAX_POLICY_BYTES) req.destroy(new Error(`policy for ${domain} is larger than 64 KiB`));
        });
        res.on('end', () => resolve(body));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`policy fetch for ${domain} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** Finds the policy of a recipient domain, using and refreshing the cache in Tables. A domain
 * without a policy, or whose policy cannot be had (and none is cached), gets mode `none`. */
export async function stsPolicy(domain: string, o: MtaStsOptions): Promise<StsPolicy> {
  const now = (o.now ?? (() => new Date()))().getTime();
  const key = { pk: `MTASTS#${domain.toLowerCase()}`, sk: 'POLICY' };
  const item = await o.tables.get(key);
  const cached = item && Number(item.expires) > now ? ({ mode: item.mode, mx: item.mx, id: item.id, expires: Number(item.expires) } as StsPolicy) : undefined;
  let id: string | false;
  try {
    id = await resolvePolicy(domain, { resolver: ((name: string, type: string) => o.resolver.resolve(name, type)) as never });
  } catch {
    // RFC 8461 §5.1: DNS failures keep the cached policy in force.
    return cached ?? { ...NONE, expires: now };
  }
  // RFC 8461 §5.1: with no TXT record a cached, unexpired policy still applies.
  if (!id) return cached ?? { ...NONE, expires: now };
  if (cached && cached.id === id) return cached;
  try {
    const parsed = parsePolicy(await fetchPolicyText(domain, o)) as { mode: StsPolicy['mode']; mx?: string[]; maxAge: number };
    const policy: StsPolicy = { mode: parsed.mode, mx: parsed.mx ?? [], id, expires: now + parsed.maxAge * 1000 };
    await o.tables.put({ ...key, ...policy, ttl: Math.ceil(policy.expires / 1000) });
    return policy;
  } catch {
    return cached ?? { ...NONE, expires: now };
  }
}
