/**
 * SPF (RFC 7208), DKIM (RFC 6376), ARC and DMARC (RFC 7489) checks of a message received on the MX
 * listener, through mailauth with our caching resolver (core/dns.ts). The result is the
 * `Authentication-Results` (RFC 8601) and `Received-SPF` header text to prepend, and whether
 * DMARC says reject. DNS trouble gives `temperror` results, and the whole check has a deadline, so
 * a dead resolver never stalls a session.
 */
import type { Readable } from 'node:stream';
import { authenticate } from 'mailauth';
import type { DnsResolver } from '../dns.js';

/** What the check needs beyond the message. */
export interface AuthCheckOptions {
  /** The SMTP client's address. */
  ip: string;
  helo: string;
  /** The MAIL FROM address ('' for the null sender). */
  sender: string;
  /** Our hostname: the authserv-id of the header. */
  mta: string;
  resolver: DnsResolver;
  /** Give up after this long and report temperror. @default 15000 */
  deadlineMs?: number;
}

/** The outcome of the checks. */
export interface AuthCheck {
  /** Header fields to prepend, each ending in CRLF. */
  headers: string;
  spf: string;
  dkim: string;
  dmarc: string;
  /** DMARC failed and the domain's policy (p, or sp for a subdomain) is reject. */
  dmarcReject: boolean;
}

/** Runs the checks; never throws (a failure becomes temperror). */
export async function checkMessageAuth(message: Readable | Buffer, o: AuthCheckOptions): Promise<AuthCheck> {
  const resolver = (name: string, rrtype: string) => o.resolver.resolve(name, rrtype) as Promise<string[][] | string[]>;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), o.deadlineMs ?? 15_000);
    timer.unref();
  });
  try {
    const r = await Promise.race([authenticate(message, { ip: o.ip, helo: o.helo, sender: o.sender, mta: o.mta, resolver, disableBimi: true }), deadline]);
    if (r === 'timeout') {
      if (typeof (message as Readable).destroy === 'function') (message as Readable).destroy();
      return temperror(o.mta, 'timeout');
    }
    const dmarc = r.dmarc || undefined;
    const dmarcResult = dmarc?.status?.result ?? 'none';
    const pct = typeof dmarc?.pct === 'number' ? dmarc.pct : 100;
    // RFC 7489 §6.6.4: the policy applies to pct percent of failing mail.
    const dmarcReject = dmarcResult === 'fail' && dmarc?.policy === 'reject' && (pct >= 100 || Math.random() * 100 < pct);
    const dkimResults = r.dkim?.results ?? [];
    return {
      headers: r.headers.endsWith('\r\n') ? r.headers : r.headers + '\r\n',
      spf: (r.spf && r.spf.status?.result) || 'none',
      dkim: dkimResults.length ? (dkimResults.find((x) => x.status?.result === 'pass')?.status.result ?? dkimResults[0].status?.result ?? 'none') : 'none',
      dmarc: dmarcResult,
      dmarcReject,
    };
  } catch (e) {
    return temperror(o.mta, e instanceof Error ? e.message : 'error');
  } finally {
    clearTimeout(timer);
  }
}

function temperror(mta: string, why: string): AuthCheck {
  const reason = why
    .replace(/[^\x20-\x7e]/g, '?')
    .replace(/[()\\]/g, '')
    .slice(0, 80);
  return {
    headers: `Authentication-Results: ${mta};\r\n spf=temperror (${reason});\r\n dkim=temperror;\r\n dmarc=temperror\r\n`,
    spf: 'temperror',
    dkim: 'temperror',
    dmarc: 'temperror',
    dmarcReject: false,
  };
}
