/**
 * Sending one outbound message to one group of recipients: the message as it goes out (DKIM
 * signatures, no Return-Path) and the route (smarthost, or MX hosts under MTA-STS and the TLS
 * policy), whose hosts are tried in turn through the SMTP client. Part of the outbound worker
 * (outbound.ts), which decides what to do with each recipient's outcome.
 */
import { PassThrough, type Readable } from 'node:stream';
import type { Logger } from '../log.js';
import type { JobContext } from '../workers/job.js';
import { dkimSignatures } from './dkim.js';
import { mxMatches } from './mta-sts.js';
import { resolveMxRoute } from './mx.js';
import type { OutboundDeps, Smarthost } from './outbound.js';
import { domainOf, type MessageRecord, type RcptRecord } from './outbound-store.js';
import { withoutReturnPath } from './return-path.js';
import type { TlsMode, TransactionResult } from './smtp-client.js';

/** At most this many host addresses are tried per domain and attempt. */
const MAX_HOSTS_PER_ATTEMPT = 5;

/** The message as it goes out: DKIM-Signature fields (if any) followed by the stored message. */
export interface PreparedMessage {
  signatures: string;
  size: number;
  open: () => Promise<Readable>;
}

export async function prepareMessage(m: MessageRecord, ctx: JobContext, deps: OutboundDeps, log: Logger): Promise<PreparedMessage> {
  const blobs = ctx.storage.mail;
  let signatures = '';
  const fromHeader = await headerFromDomain(withoutReturnPath((await blobs.get(m.blobKey)).body));
  const candidates = [...new Set([fromHeader, domainOf(m.from)].filter((d): d is string => !!d))];
  for (const domain of candidates) {
    const keys = await deps.dkim.keys(domain);
    if (!keys.length) continue;
    try {
      signatures = await dkimSignatures(withoutReturnPath((await blobs.get(m.blobKey)).body), domain, keys, { now: ctx.now() });
    } catch (e) {
      // An unsigned message is better than an undelivered one; the log says why.
      log.error({ err: e, domain }, 'DKIM signing failed; sending unsigned');
    }
    break;
  }
  const sig = Buffer.from(signatures, 'utf8');
  return {
    signatures,
    size: m.size + sig.length,
    open: async () => {
      // RFC 5321 §4.4: the Return-Path our listener wrote for local delivery does not travel on.
      const body = withoutReturnPath((await blobs.get(m.blobKey)).body);
      if (!sig.length) return body;
      const out = new PassThrough();
      out.write(sig);
      body.on('error', (e) => out.destroy(e));
      body.pipe(out);
      return out;
    },
  };
}

/** The domain of the first address in the From header field (for the DKIM d= domain). */
export async function headerFromDomain(src: Readable): Promise<string | undefined> {
  let text = '';
  try {
    for await (const c of src) {
      text += typeof c === 'string' ? c : (c as Buffer).toString('latin1');
      const end = text.search(/\r?\n\r?\n/);
      if (end >= 0) {
        text = text.slice(0, end);
        break;
      }
      if (text.length > 256 * 1024) break;
    }
  } finally {
    src.destroy();
  }
  const unfolded = text.replace(/\r?\n[ \t]+/g, ' ');
  const line = unfolded.split(/\r?\n/).find((l) => /^from\s*:/i.test(l));
  if (!line) return undefined;
  const value = line.slice(line.indexOf(':') + 1);
  const angle = /<[^<>@\s]*@([^<>\s]+)>/.exec(value);
  const bare = /[^\s<>,;:"@]+@([A-Za-z0-9.-]+)/.exec(value);
  return (angle?.[1] ?? bare?.[1])?.toLowerCase();
}

/** One recipient's result of an attempt. */
export interface Outcome {
  ok: boolean;
  temporary: boolean;
  reply: string;
  status: string;
  host?: string;
  /** The reply is ours (DNS, policy), not a remote SMTP reply. */
  local?: boolean;
  /** The host that took the message supports DSN (RFC 3461), so it reports success itself. */
  dsn?: boolean;
}

/** One attempt for a group of recipients that share a route: the smarthost, or the MX hosts of
 * their domain (with MTA-STS and the TLS policy), tried in turn until one gives every recipient
 * its own answer. */
export async function deliverGroup(
  key: string,
  rcpts: RcptRecord[],
  via: Smarthost | undefined,
  m: MessageRecord,
  msg: PreparedMessage,
  ctx: JobContext,
  deps: OutboundDeps,
  log: Logger,
): Promise<Map<string, Outcome>> {
  const { config } = ctx;
  const all = (o: Outcome) => new Map(rcpts.map((r) => [r.address, o]));
  type Target = { host: string; address: string; port: number; tls: TlsMode; verify: boolean; auth?: { user: string; pass: string } };
  let targets: Target[];
  if (via) {
    // Certificates are checked where TLS is required (outbound.tlsVerify), as for MX hosts.
    const verify = config.outbound.tlsVerify === 'always' || (config.outbound.tlsVerify === 'required' && (via.tls === 'required' || via.tls === 'implicit'));
    targets = [
      { host: via.host, address: via.host, port: via.port, tls: via.tls, verify, auth: via.user ? { user: via.user, pass: via.pass ?? '' } : undefined },
    ];
  } else {
    const route = await resolveMxRoute(deps.dns, key, { random: deps.random });
    if (route.kind !== 'hosts') {
      return all({ ok: false, temporary: route.kind === 'temporary', reply: route.reason, status: route.status, local: true });
    }
    let hosts = route.hosts;
    let required = config.outbound.requireTlsDomains.map((d) => d.toLowerCase()).includes(key);
    const sts = await deps.mtaSts(key, ctx.storage);
    if (sts.mode !== 'none') {
      const allowed = hosts.filter((h) => mxMatches(h.host, sts.mx));
      if (sts.mode === 'enforce') {
        // RFC 8461 §5: only MX hosts the policy names, only over TLS with a valid certificate;
        // "the sending MTA MUST NOT deliver the message" otherwise (a temporary failure).
        if (!allowed.length) {
          return all({
            ok: false,
            temporary: true,
            reply: `no MX host of ${key} matches its MTA-STS policy (${sts.mx.join(', ')})`,
            status: '4.7.5',
            local: true,
          });
        }
        hosts = allowed;
        required = true;
      } else if (allowed.length !== hosts.length) {
        log.warn({ domain: key, policy: sts.mx }, 'MTA-STS testing: some MX hosts do not match the policy');
      }
    }
    const verify = config.outbound.tlsVerify === 'always' || (required && config.outbound.tlsVerify === 'required') || sts.mode === 'enforce';
    targets = hosts.flatMap((h) =>
      h.addresses.map((a) => ({ host: h.host, address: a, port: config.outbound.mxPort, tls: (required ? 'required' : 'opportunistic') as TlsMode, verify })),
    );
  }
  let last: TransactionResult | undefined;
  let lastHost = '';
  let anyTemporary = false;
  const tries = targets.slice(0, MAX_HOSTS_PER_ATTEMPT);
  for (let i = 0; i < tries.length; i++) {
    const t = tries[i];
    const res = await deps.transact({
      host: t.host,
      address: t.address,
      port: t.port,
      helo: config.hostname,
      tls: t.tls,
      tlsVerify: t.verify,
      ca: deps.ca,
      auth: t.auth,
      from: m.from,
      rcpts: rcpts.map((r) => ({ address: r.address, notify: r.notify, orcpt: r.orcpt })),
      dsn: { ret: m.ret, envid: m.envid },
      size: msg.size,
      body8bit: m.body8bit,
      smtputf8: m.smtputf8,
      message: msg.open,
      connectTimeoutMs: config.outbound.connectTimeoutSeconds * 1000,
      commandTimeoutMs: config.outbound.commandTimeoutSeconds * 1000,
      dataTimeoutMs: config.outbound.dataTimeoutSeconds * 1000,
    });
    last = res;
    lastHost = `${t.host} [${t.address}]`;
    if (!res.sessionFailure) {
      log.debug({ host: lastHost, tls: res.tls, chunked: res.chunked }, 'transaction done');
      if (res.unconverted8bit) log.warn({ host: lastHost }, '8-bit message sent unconverted to a server without 8BITMIME');
      return new Map(
        res.rcpts.map((r) => [
          r.address,
          { ok: r.ok, temporary: r.temporary, reply: r.reply, status: r.status, host: lastHost, dsn: res.extensions.includes('DSN') },
        ]),
      );
    }
    if (res.sessionFailure.stage === 'STARTTLS' && t.tls === 'opportunistic') {
      // RFC 7435 §3: opportunistic security must not make delivery worse than cleartext; a host
      // whose TLS handshake fails is tried once more without STARTTLS.
      log.info({ host: lastHost, reply: res.sessionFailure.reply }, 'STARTTLS failed; retrying this host in cleartext');
      tries.splice(i + 1, 0, { ...t, tls: 'none' });
      continue;
    }
    if (res.sessionFailure.temporary) anyTemporary = true;
    if (via && res.sessionFailure.stage === 'STARTTLS' && t.tls === 'required') {
      log.warn(
        { host: lastHost, reply: res.sessionFailure.reply },
        'smarthost: no TLS session, so nothing was sent; the message will be retried (?tls=opportunistic in outbound.smarthost allows cleartext)',
      );
    } else {
      log.info({ host: lastHost, stage: res.sessionFailure.stage, reply: res.sessionFailure.reply }, 'host failed; trying the next');
    }
  }
  const f = last!.sessionFailure!;
  // RFC 5321 §5.1: after every host failed, the failure is temporary unless all were permanent.
  return all({
    ok: false,
    temporary: anyTemporary,
    reply: f.reply,
    status: anyTemporary && f.status.startsWith('5') ? `4${f.status.slice(1)}` : f.status,
    host: lastHost,
    local: f.stage === 'connect' || !/^\d{3}\s/.test(f.reply),
  });
}
