/**
 * The SMTP listeners: MX (config.smtp.port, STARTTLS), submission (submissionPort, STARTTLS, AUTH
 * required) and submissions (submissionsPort, implicit TLS, RFC 8314), on the shared TCP scaffold
 * (../tcp-listener.ts: caps, TLS, idle timer, drain). This file joins a connection to its session:
 * reader events in, replies batched for PIPELINING (RFC 2920 §3.2: flush before waiting for
 * input). The protocol is in session.ts; policy in policy.ts; storage in spool.ts.
 */
import { randomBytes } from 'node:crypto';
import { Accounts } from '../../core/accounts/accounts.js';
import { cidrList, clientAllowed } from '../../core/address-ranges.js';
import type { Config } from '../../core/config.js';
import { dnsResolverFromConfig, type DnsResolver } from '../../core/dns.js';
import type { Logger } from '../../core/log.js';
import { DnsblChecker } from '../../core/mail/dnsbl.js';
import { spamScannerFromConfig, type SpamScanner } from '../../core/mail/spam.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { startTcpListener, type Connection, type ListenerPort, type SessionHandler, type TcpListener } from '../tcp-listener.js';
import { createHooks } from './policy.js';
import { formatReply } from './protocol/command.js';
import { SmtpReader } from './protocol/reader.js';
import { SmtpSession, type SmtpHooks, type TlsFacts } from './session.js';

/** Options for tests and embedding; everything else comes from the config. */
export interface SmtpServerOptions {
  /** Ports to listen on instead of the config's; 0 = ephemeral, null = off. */
  ports?: { mx?: number | null; submission?: number | null; submissions?: number | null };
  tls?: TlsProvider;
  resolver?: DnsResolver;
  hooks?: SmtpHooks;
  /** Messages up to this size are stored with one put. @default 262144 */
  inlineBytes?: number;
  /** TLS handshake limit. @default 30000 */
  handshakeTimeoutMs?: number;
  /** The spam scanner instead of the config's (spam.*); null: none. The listener closes it. */
  spam?: SpamScanner | null;
}

/** A running SMTP listener group, with its actual ports (useful with ephemeral ports). */
export interface RunningSmtp extends RunningListener {
  ports: { mx?: number; submission?: number; submissions?: number };
}

/** Client input held unprocessed above which the socket is no longer read (a pipelined flood). */
const INPUT_HIGH_WATER = 1024 * 1024;
/** ... and at or below which it is read again. */
const INPUT_LOW_WATER = 256 * 1024;

/** Starts the SMTP listeners from the config (containers/app.ts calls this). */
export async function startSmtp(ctx: ListenerContext): Promise<RunningListener> {
  return startSmtpServer(ctx);
}

/** Starts the SMTP listeners with optional overrides (tests). */
export async function startSmtpServer(ctx: ListenerContext, options: SmtpServerOptions = {}): Promise<RunningSmtp> {
  const { config, storage, metrics } = ctx;
  const log = ctx.log;
  const ownTls = options.tls === undefined;
  const tlsProvider = options.tls ?? (await createTlsProvider(config, log.child({ c: 'tls' })));
  const resolver = options.resolver ?? dnsResolverFromConfig(config);
  const accounts = new Accounts(storage.tables);
  const mailboxes = new MailboxStore(storage.tables, storage.mail);
  // Only the default hooks scan; a test's own hooks decide for themselves.
  const spam = options.hooks
    ? undefined
    : options.spam !== undefined
      ? (options.spam ?? undefined)
      : await spamScannerFromConfig(config.spam, { metrics, log });
  const c = config.smtp;
  const trusted = cidrList(c.trustedNetworks);
  const hooks =
    options.hooks ??
    createHooks(accounts, mailboxes, {
      storage,
      log,
      metrics,
      hostname: config.hostname,
      maxMessageBytes: config.smtp.maxMessageBytes,
      queueInlineBytes: config.smtp.queueInlineBytes,
      checkAuth: config.smtp.checkAuth,
      authFailureDelayMs: config.smtp.authFailureDelayMs,
      resolver,
      inlineBytes: options.inlineBytes,
      spam,
      scanOutbound: config.spam.scanOutbound,
      dnsbl: new DnsblChecker({ zones: c.dnsbl, resolver, timeoutMs: c.dnsTimeoutMs, log: log.child({ c: 'dnsbl' }), metrics }),
      dnsblExempt: (address) => clientAllowed(trusted, address),
      maxRecipientsPerUserHour: c.maxRecipientsPerUserHour,
    });
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 30_000;
  const want = (name: 'mx' | 'submission' | 'submissions', configured: number): number | null => {
    const o = options.ports?.[name];
    if (o !== undefined) return o;
    // The MX port is always on; a submission port of 0 turns that listener off (config docs).
    if (name !== 'mx' && configured === 0) return null;
    return configured;
  };
  const ports: ListenerPort[] = [];
  const mx = want('mx', c.port);
  const sub = want('submission', c.submissionPort);
  const subs = want('submissions', c.submissionsPort);
  if (mx !== null) ports.push({ name: 'mx', port: mx });
  if (sub !== null) ports.push({ name: 'submission', port: sub });
  if (subs !== null) ports.push({ name: 'submissions', port: subs, implicitTls: true });
  const line = (code: number, enhanced: string, text: string): string => formatReply({ code, enhanced, lines: [`${config.hostname} ${text}`] });

  let listener: TcpListener;
  try {
    listener = await startTcpListener({
      name: 'smtp',
      host: config.listenHost,
      ports,
      tls: tlsProvider,
      log,
      metrics,
      limits: {
        maxConnections: c.maxConnections,
        maxConnectionsPerClient: c.maxConnectionsPerClient,
        // Clients exempt from the per-client cap (Postfix's mynetworks).
        exempt: (address) => clientAllowed(trusted, address),
        idleTimeoutMs: c.idleTimeoutSeconds * 1000,
        handshakeTimeoutMs,
        pauseInputAbove: INPUT_HIGH_WATER,
        resumeInputAt: INPUT_LOW_WATER,
      },
      refusals: {
        shutdown: line(421, '4.3.2', 'Service shutting down'),
        tooManyConnections: line(421, '4.3.2', 'Too many connections, try again later'),
        tooManyFromClient: line(421, '4.7.0', 'Too many connections from your address'),
      },
      onConnection: (conn) => new SmtpConnection(conn, config, hooks, log),
    });
  } catch (e) {
    if (ownTls) tlsProvider.close();
    await spam?.close();
    throw e;
  }
  log.info(
    { addresses: listener.addresses, spamScanning: spam ? 'on' : 'off', dnsbl: c.dnsbl },
    `SMTP listening (spam scanning ${spam ? 'on' : 'off'}${c.dnsbl.length ? `; DNS blocklists ${c.dnsbl.join(', ')}` : ''})`,
  );

  return {
    name: 'smtp',
    addresses: listener.addresses,
    ports: listener.ports,
    healthy: () => listener.healthy(),
    async close(graceMs = 10_000): Promise<void> {
      await listener.close(graceMs);
      if (ownTls) tlsProvider.close();
      await spam?.close();
    },
  };
}

/**
 * One SMTP conversation on a connection: bytes into the reader, reader events into the session,
 * replies batched until the session would wait for input (RFC 2920 §3.2: flush before waiting).
 */
class SmtpConnection implements SessionHandler {
  private readonly reader: SmtpReader;
  private readonly session: SmtpSession;
  private out: string[] = [];
  private pumping = false;
  private ended = false;
  private clientHasEnded = false;

  constructor(
    private readonly conn: Connection,
    config: Config,
    hooks: SmtpHooks,
    private readonly log: Logger,
  ) {
    const c = config.smtp;
    this.reader = new SmtpReader(Math.max(12288, c.maxCommandLineBytes));
    this.session = new SmtpSession(
      randomBytes(6).toString('hex'),
      conn.address,
      conn.remotePort,
      {
        hostname: config.hostname,
        listener: conn.port.name === 'mx' ? 'mx' : 'submission',
        tlsAvailable: true,
        tls: conn.tls,
        allowPlainAuth: c.allowPlainAuth,
        maxMessageBytes: c.maxMessageBytes,
        maxRecipients: c.maxRecipients,
        maxBadCommands: c.maxBadCommands,
        maxCommandLineBytes: c.maxCommandLineBytes,
        maxTextLineBytes: c.maxTextLineBytes,
      },
      hooks,
      {
        reader: this.reader,
        reply: (r) => void this.out.push(formatReply(r)),
        startTls: () => this.startTls(),
        close: () => this.end(),
      },
    );
    const greeting = this.session.greet();
    if (!greeting) {
      this.flush();
      return;
    }
    // The connect hook (DNSBL) is asking: input waits in the reader until the greeting is out.
    this.pumping = true;
    greeting.then(
      () => {
        this.pumping = false;
        if (this.ended) return;
        this.flush();
        this.pump();
      },
      (err) => {
        this.log.error({ err }, 'SMTP greeting failed');
        this.session.abort('connection destroyed');
        this.conn.destroy();
      },
    );
  }

  get busy(): boolean {
    return this.pumping;
  }

  /** A message in DATA is let finish before the goodbye. */
  get atRest(): boolean {
    return !this.pumping && !this.reader.inData;
  }

  data(chunk: Buffer): void {
    this.reader.push(chunk);
    this.conn.inputHeld(this.reader.buffered);
    this.pump();
  }

  /** The client half-closed: finish what it sent (pipelined commands, a complete message), then close. */
  clientEnded(): void {
    this.clientHasEnded = true;
    if (!this.pumping) this.pump();
  }

  idleTimeout(): void {
    this.session.shutdown('Timeout waiting for client input, closing connection');
    this.flush();
  }

  shutdown(): void {
    this.session.shutdown('Service shutting down');
    this.flush();
  }

  closed(): void {
    this.ended = true;
    this.session.abort('connection closed');
  }

  private pump(): void {
    if (this.pumping || this.ended) return;
    if (this.clientHasEnded && this.reader.buffered === 0) {
      this.session.abort('client closed');
      this.end();
      return;
    }
    this.pumping = true;
    this.loop().then(
      () => undefined,
      (err) => {
        this.log.error({ err }, 'SMTP session failed');
        this.session.abort('connection destroyed');
        this.conn.destroy();
      },
    );
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        if (this.session.closed || this.ended) break;
        const ev = this.reader.next();
        if (ev.type === 'need-more') break;
        const r = this.session.handle(ev);
        if (r) await r;
      }
    } finally {
      this.pumping = false;
    }
    this.flush();
    if (this.clientHasEnded && !this.ended) {
      // Nothing more will come: an unfinished transaction is dropped.
      this.session.abort('client closed');
      this.end();
      return;
    }
    if (!this.ended) this.conn.inputHeld(this.reader.buffered);
  }

  private flush(): void {
    if (this.out.length === 0) return;
    const text = this.out.length === 1 ? this.out[0] : this.out.join('');
    this.out = [];
    this.conn.write(text);
  }

  private end(): void {
    this.flush();
    if (this.ended) return;
    this.ended = true;
    this.conn.end();
  }

  private startTls(): Promise<TlsFacts | undefined> {
    this.flush();
    return this.conn.upgradeToTls();
  }
}
