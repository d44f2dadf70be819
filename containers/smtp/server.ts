/**
 * The SMTP listeners: MX (config.smtp.port, STARTTLS), submission (submissionPort, STARTTLS, AUTH
 * required) and submissions (submissionsPort, implicit TLS, RFC 8314). This file owns sockets:
 * TLS, connection limits, the idle timeout (RFC 5321 §4.5.3.2.7), reply batching for PIPELINING
 * (RFC 2920 §3.2: flush before waiting for input), backpressure and graceful close. The protocol
 * is in session.ts; policy in policy.ts; storage in spool.ts.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import * as tls from 'node:tls';
import { Accounts } from '../../core/accounts/accounts.js';
import type { Config } from '../../core/config.js';
import { dnsResolverFromConfig, type DnsResolver } from '../../core/dns.js';
import type { Logger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import type { Metrics } from '../../core/metrics.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { cidrList, clientAllowed, plainAddress } from '../../core/address-ranges.js';
import { createHooks } from './policy.js';
import { formatReply, type Reply } from './protocol/command.js';
import { SmtpReader } from './protocol/reader.js';
import { SmtpSession, type ListenerKind, type SmtpHooks, type TlsFacts } from './session.js';

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
}

/** A running SMTP listener group, with its actual ports (useful with ephemeral ports). */
export interface RunningSmtp extends RunningListener {
  ports: { mx?: number; submission?: number; submissions?: number };
}

const HIGH_WATER = 1024 * 1024;
const LOW_WATER = 256 * 1024;

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
    });

  const group = new ConnectionGroup(config, log, metrics, hooks, tlsProvider, options.handshakeTimeoutMs ?? 30_000);
  const servers: { kind: string; server: Server; port: number }[] = [];
  const want = (name: 'mx' | 'submission' | 'submissions', configured: number): number | null => {
    const o = options.ports?.[name];
    if (o !== undefined) return o;
    // The MX port is always on; a submission port of 0 turns that listener off (config docs).
    if (name !== 'mx' && configured === 0) return null;
    return configured;
  };

  const listen = async (kind: 'mx' | 'submission' | 'submissions', port: number): Promise<void> => {
    const server: Server =
      kind === 'submissions'
        ? tls.createServer({ ...tlsProvider.options(), handshakeTimeout: options.handshakeTimeoutMs ?? 30_000, allowHalfOpen: true }, (s) => group.accept(s, 'submission', true))
        : createServer({ allowHalfOpen: true }, (s) => group.accept(s, kind === 'mx' ? 'mx' : 'submission', false));
    if (kind === 'submissions') {
      tlsProvider.attach(server as tls.Server);
      server.on('tlsClientError', (err: Error, sock: Socket) => {
        log.debug({ err: err.message, client: sock.remoteAddress }, 'TLS handshake failed');
        sock.destroy();
      });
    }
    server.on('error', (err) => log.error({ err, kind }, 'listener error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, config.listenHost, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    servers.push({ kind, server, port: typeof addr === 'object' && addr ? addr.port : port });
  };

  try {
    const mx = want('mx', config.smtp.port);
    const sub = want('submission', config.smtp.submissionPort);
    const subs = want('submissions', config.smtp.submissionsPort);
    if (mx !== null) await listen('mx', mx);
    if (sub !== null) await listen('submission', sub);
    if (subs !== null) await listen('submissions', subs);
  } catch (e) {
    for (const s of servers) s.server.close();
    if (ownTls) tlsProvider.close();
    throw e;
  }

  const ports: RunningSmtp['ports'] = {};
  for (const s of servers) ports[s.kind as keyof RunningSmtp['ports']] = s.port;
  const addresses = servers.map((s) => `${s.kind} ${config.listenHost}:${s.port}`);
  log.info({ addresses }, 'SMTP listening');
  let open = true;

  return {
    name: 'smtp',
    addresses,
    ports,
    healthy: () => open && servers.every((s) => s.server.listening),
    async close(graceMs = 10_000): Promise<void> {
      if (!open) return;
      open = false;
      const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.server.close(() => resolve()))));
      await group.drain(graceMs);
      await closed;
      if (ownTls) tlsProvider.close();
    },
  };
}

/** Every live connection of the listener group, with the limits that span them. */
class ConnectionGroup {
  private readonly perClient = new Map<string, number>();
  private readonly live = new Set<Connection>();
  private draining = false;
  /** Clients exempt from the per-client cap (Postfix's mynetworks). */
  private readonly trusted: ReturnType<typeof cidrList>;

  constructor(
    readonly config: Config,
    readonly log: Logger,
    readonly metrics: Metrics,
    readonly hooks: SmtpHooks,
    readonly tlsProvider: TlsProvider,
    readonly handshakeTimeoutMs: number,
  ) {
    this.trusted = cidrList(config.smtp.trustedNetworks);
  }

  accept(socket: Socket, kind: ListenerKind, implicitTls: boolean): void {
    const address = plainAddress(socket.remoteAddress ?? '');
    const label = implicitTls ? 'submissions' : kind;
    this.metrics.connectionsTotal.inc({ listener: label });
    socket.on('error', () => undefined);
    const limit = (reply: Reply, what: string): void => {
      this.metrics.limitsHit.inc({ listener: label, limit: what });
      socket.end(formatReply(reply));
      socket.destroySoon?.();
    };
    if (this.draining) return limit({ code: 421, enhanced: '4.3.2', lines: [`${this.config.hostname} Service shutting down`] }, 'shutdown');
    if (this.live.size >= this.config.smtp.maxConnections) {
      return limit({ code: 421, enhanced: '4.3.2', lines: [`${this.config.hostname} Too many connections, try again later`] }, 'connections');
    }
    const counted = !clientAllowed(this.trusted, address);
    const n = counted ? (this.perClient.get(address) ?? 0) : 0;
    if (n >= this.config.smtp.maxConnectionsPerClient) {
      return limit({ code: 421, enhanced: '4.7.0', lines: [`${this.config.hostname} Too many connections from your address`] }, 'connections_per_client');
    }
    if (counted) this.perClient.set(address, n + 1);
    // The client's slot is given back once the server ends the session (QUIT answered, 421), not
    // when the client's FIN arrives: a client that opens its next connection as soon as it reads
    // 221 (Postfix smtp-source -s N) must not find its last session still counted.
    let released = !counted;
    const release = (): void => {
      if (released) return;
      released = true;
      const left = (this.perClient.get(address) ?? 1) - 1;
      if (left <= 0) this.perClient.delete(address);
      else this.perClient.set(address, left);
    };
    this.metrics.connections.inc({ listener: label });
    const conn = new Connection(this, socket, kind, implicitTls, address, release);
    this.live.add(conn);
    socket.once('close', () => {
      this.live.delete(conn);
      release();
      this.metrics.connections.dec({ listener: label });
      conn.closed();
    });
    conn.start();
  }

  /** Stop taking connections; idle sessions get 421 now, busy ones may finish within the grace. */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    for (const c of this.live) c.shutdownIfIdle();
    const deadline = Date.now() + graceMs;
    while (this.live.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      for (const c of this.live) c.shutdownIfIdle();
    }
    for (const c of this.live) c.destroy();
  }
}

/** One client connection: the socket (plain, then maybe TLS), the reader and the session. */
class Connection {
  private socket: Socket;
  private readonly reader: SmtpReader;
  private readonly session: SmtpSession;
  private out: string[] = [];
  private pumping = false;
  private paused = false;
  private ended = false;
  private clientEnded = false;
  private readonly onData = (chunk: Buffer): void => {
    this.reader.push(chunk);
    if (this.reader.buffered > HIGH_WATER && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.pump();
  };

  constructor(
    private readonly group: ConnectionGroup,
    socket: Socket,
    kind: ListenerKind,
    implicitTls: boolean,
    address: string,
    private readonly release: () => void,
  ) {
    this.socket = socket;
    const c = group.config.smtp;
    this.reader = new SmtpReader(Math.max(12288, c.maxCommandLineBytes));
    const tlsFacts = implicitTls ? facts(socket as tls.TLSSocket) : undefined;
    this.session = new SmtpSession(
      randomBytes(6).toString('hex'),
      address,
      socket.remotePort ?? 0,
      {
        hostname: group.config.hostname,
        listener: kind,
        tlsAvailable: true,
        tls: tlsFacts,
        allowPlainAuth: c.allowPlainAuth,
        maxMessageBytes: c.maxMessageBytes,
        maxRecipients: c.maxRecipients,
        maxBadCommands: c.maxBadCommands,
        maxCommandLineBytes: c.maxCommandLineBytes,
        maxTextLineBytes: c.maxTextLineBytes,
      },
      group.hooks,
      {
        reader: this.reader,
        reply: (r) => void this.out.push(formatReply(r)),
        startTls: () => this.startTls(),
        close: () => this.end(),
      },
    );
  }

  start(): void {
    const s = this.socket;
    s.setNoDelay(true);
    s.setTimeout(this.group.config.smtp.idleTimeoutSeconds * 1000);
    s.on('timeout', () => this.onTimeout());
    s.on('data', this.onData);
    s.on('end', () => this.clientEnd());
    this.session.greet();
    this.flush();
  }

  private onTimeout(): void {
    // The timer measures the client's silence; while we work (storage, DNS) it is not the client's.
    if (this.pumping) return;
    this.group.metrics.limitsHit.inc({ listener: this.session.listener, limit: 'idle_timeout' });
    this.session.shutdown('Timeout waiting for client input, closing connection');
    this.flush();
  }

  private pump(): void {
    if (this.pumping || this.ended) return;
    if (this.clientEnded && this.reader.buffered === 0) {
      this.session.abort('client closed');
      this.end();
      return;
    }
    this.pumping = true;
    this.loop().then(
      () => undefined,
      (err) => {
        this.group.log.error({ err }, 'SMTP session failed');
        this.destroy();
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
    if (this.clientEnded && !this.ended) {
      // Nothing more will come: an unfinished transaction is dropped.
      this.session.abort('client closed');
      this.end();
      return;
    }
    if (this.paused && this.reader.buffered < LOW_WATER && !this.ended) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private flush(): void {
    if (this.out.length === 0 || this.socket.destroyed) return;
    const text = this.out.length === 1 ? this.out[0] : this.out.join('');
    this.out = [];
    this.socket.write(text);
  }

  /** The client half-closed: finish what it sent (pipelined commands, a complete message), then close. */
  private clientEnd(): void {
    this.clientEnded = true;
    if (!this.pumping) this.pump();
  }

  private end(): void {
    this.flush();
    if (this.ended) return;
    this.ended = true;
    this.release();
    this.socket.end();
    // A client that never reads must not keep the socket forever.
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  private startTls(): Promise<TlsFacts | undefined> {
    this.flush();
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.setTimeout(0);
    const secure = new tls.TLSSocket(plain, {
      isServer: true,
      secureContext: this.group.tlsProvider.secureContext(),
      SNICallback: this.group.tlsProvider.options().SNICallback,
    });
    this.socket = secure;
    secure.on('error', () => undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        secure.destroy();
        resolve(undefined);
      }, this.group.handshakeTimeoutMs);
      secure.once('secure', () => {
        clearTimeout(timer);
        secure.setTimeout(this.group.config.smtp.idleTimeoutSeconds * 1000);
        secure.on('timeout', () => this.onTimeout());
        secure.on('data', this.onData);
        secure.on('end', () => this.clientEnd());
        resolve(facts(secure));
      });
      secure.once('close', () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }

  shutdownIfIdle(): void {
    if (this.pumping || this.reader.inData) return;
    this.session.shutdown('Service shutting down');
    this.flush();
  }

  destroy(): void {
    this.session.abort('connection destroyed');
    this.socket.destroy();
  }

  closed(): void {
    this.ended = true;
    this.session.abort('connection closed');
  }
}

function facts(s: tls.TLSSocket): TlsFacts {
  return { version: s.getProtocol() ?? 'TLS', cipher: s.getCipher()?.standardName ?? s.getCipher()?.name ?? 'unknown' };
}
