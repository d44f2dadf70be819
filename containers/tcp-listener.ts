/**
 * What every TCP protocol listener needs around its session state machine: the listening sockets
 * (plain, and implicit TLS per RFC 8314), the set of live connections with a total and a
 * per-client cap, the STARTTLS upgrade of a plain connection, the idle timer, input backpressure
 * and a graceful drain. A protocol plugs in through `onConnection`: it is handed a `Connection`
 * (write, upgrade to TLS, end) and returns the `SessionHandler` that turns the client's bytes into
 * its session's work. SMTP and POP3 are built on it; IMAP is meant to be.
 *
 * The protocol keeps what is its own: framing, reply batching, the wording of its replies. The
 * scaffold keeps what is the same for all: which socket is current, when a client's slot is given
 * back, when the client's silence counts, and in what order a shutdown happens.
 */
import net from 'node:net';
import tls from 'node:tls';
import { plainAddress } from '../core/address-ranges.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { TlsProvider } from '../core/tls.js';
import type { RunningListener } from './listener.js';

/** One port of a listener. */
export interface ListenerPort {
  /** Its name in `addresses` and `ports`, e.g. 'mx', 'pop3s'. */
  name: string;
  /** 0 = an ephemeral port. */
  port: number;
  /** TLS from the first byte (RFC 8314 implicit TLS). @default false */
  implicitTls?: boolean;
  /** The `listener` label of this port's metrics. @default name */
  metricsLabel?: string;
}

/** The transport-level limits of a listener. */
export interface ConnectionLimits {
  /** Live connections over all ports; one more is refused with `refusals.tooManyConnections`. */
  maxConnections: number;
  /** Live connections from one client address; one more gets `refusals.tooManyFromClient`. */
  maxConnectionsPerClient: number;
  /** Clients that do not count toward the per-client cap (the total cap still applies). */
  exempt?: (address: string) => boolean;
  /** Client silence after which the handler's `idleTimeout` runs. */
  idleTimeoutMs: number;
  /** How long a TLS handshake may take, implicit or after STARTTLS. @default 30000 */
  handshakeTimeoutMs?: number;
  /** Input the protocol holds unread (see Connection.inputHeld) above which the socket is no longer read. */
  pauseInputAbove: number;
  /** Reading resumes once the protocol holds this much or less. @default pauseInputAbove */
  resumeInputAt?: number;
}

/** Whole reply lines, CRLF included, said to a connection refused before its session starts. */
export interface Refusals {
  /** The listener is closing. */
  shutdown: string;
  /** The total cap is reached. */
  tooManyConnections: string;
  /** The client's own cap is reached. */
  tooManyFromClient: string;
}

/** What a protocol gives the scaffold for one connection (returned by `onConnection`). */
export interface SessionHandler {
  /** Bytes from the client, in order (after STARTTLS, the decrypted ones). */
  data(chunk: Buffer): void;
  /** The client half-closed: finish what it sent, then end the connection. */
  clientEnded(): void;
  /** True while the server works for the client (a command running, a reply being written): the
   * idle timer does not count that time, and a drain does not interrupt it. */
  readonly busy: boolean;
  /** True when a shutdown line may be said now. @default !busy (SMTP: also not inside DATA) */
  readonly atRest?: boolean;
  /** The client was silent for the idle timeout: say the protocol's line and end. */
  idleTimeout(): void;
  /** The listener is closing: say the protocol's goodbye and end (at rest, or at the deadline). */
  shutdown(): void;
  /** The connection is gone, whichever way; release what the session holds. Listener close waits
   * for the promise (up to a second). */
  closed(): void | Promise<void>;
}

/** The negotiated TLS of a connection. */
export interface TlsFacts {
  /** e.g. 'TLSv1.3'. */
  version: string;
  cipher: string;
}

/** What a protocol passes to start a listener. */
export interface TcpListenerOptions {
  /** For logs, e.g. 'smtp'. */
  name: string;
  host: string;
  /** Ports in the order they are opened; a failure closes those already open. */
  ports: ListenerPort[];
  tls: TlsProvider;
  limits: ConnectionLimits;
  refusals: Refusals;
  log: Logger;
  metrics: Metrics;
  /** Called for each admitted connection; greet the client here. */
  onConnection(conn: Connection): SessionHandler;
}

/** A started listener, with the actual port of each named port. */
export interface TcpListener extends Omit<RunningListener, 'name'> {
  ports: Record<string, number>;
}

/** How long a refused client may read its refusal before the socket is destroyed. */
const REFUSAL_LINGER_MS = 2000;
/** How long an ended connection may take to flush to a client that does not read. */
const END_LINGER_MS = 5000;
/** During a drain, how often connections are checked for being at rest. */
const DRAIN_POLL_MS = 50;
/** After the drain's deadline and the goodbyes, how long sockets and sessions get to close. */
const FINAL_WAIT_MS = 1000;

let nextId = 1;

/**
 * One client connection: the current socket (plain, then maybe TLS), its cap slot, its timers.
 * The protocol writes through it and ends it; the scaffold feeds the handler.
 */
export class Connection {
  /** Per process, for logs. */
  readonly id = nextId++;
  /** The client's address, IPv4-mapped IPv6 addresses as plain IPv4. */
  readonly address: string;
  readonly remotePort: number;
  /** The listener port it arrived on. */
  readonly port: Readonly<Required<ListenerPort>>;
  private current: net.Socket;
  private handler: SessionHandler | undefined;
  private tlsFacts: TlsFacts | undefined;
  private paused = false;
  private ended = false;
  private released: boolean;
  private childLog: Logger | undefined;

  /** @internal Made by the listener. */
  constructor(
    private readonly group: ConnectionGroup,
    socket: net.Socket,
    port: Readonly<Required<ListenerPort>>,
    address: string,
    counted: boolean,
  ) {
    this.current = socket;
    this.port = port;
    this.address = address;
    this.remotePort = socket.remotePort ?? 0;
    this.released = !counted;
    if (port.implicitTls) this.tlsFacts = facts(socket as tls.TLSSocket);
  }

  /** The socket in use now (the TLS one after an upgrade), for protocols that write large responses themselves. */
  get socket(): net.Socket {
    return this.current;
  }

  /** The connection's TLS, once there is one (implicit, or after `upgradeToTls`). */
  get tls(): TlsFacts | undefined {
    return this.tlsFacts;
  }

  /** True once `end` or `destroy` was called, or the socket closed. */
  get isEnded(): boolean {
    return this.ended;
  }

  /** A logger bound to this connection, made on first use. */
  get log(): Logger {
    return (this.childLog ??= this.group.log.child({ cid: this.id, client: this.address, port: this.port.name }));
  }

  /** Writes to the client if the socket still takes writes; false when it should be let drain. */
  write(data: string | Uint8Array): boolean {
    const s = this.current;
    if (!s.writable) return false;
    return s.write(data);
  }

  /** Resolves once what was written has left for the kernel (or the socket closed). */
  drained(): Promise<void> {
    const s = this.current;
    if (!s.writableNeedDrain || s.destroyed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
    });
  }

  /**
   * Tells the scaffold how many bytes of client input the protocol holds unprocessed: above the
   * listener's `pauseInputAbove` the socket is no longer read (pipelined input waits in the
   * kernel), and at `resumeInputAt` or less it is read again. Call after taking bytes in and after
   * working through them.
   */
  inputHeld(bytes: number): void {
    const l = this.group.limits;
    if (!this.paused) {
      if (bytes > l.pauseInputAbove) {
        this.paused = true;
        this.current.pause();
      }
    } else if (bytes <= (l.resumeInputAt ?? l.pauseInputAbove) && !this.ended) {
      this.paused = false;
      this.current.resume();
    }
  }

  /**
   * STARTTLS (RFC 3207 §4, RFC 2595 §4): the protocol has written its go-ahead and dropped every
   * byte it buffered; from here no plaintext byte reaches the handler, and the handshake runs on
   * the same connection within the handshake timeout. Resolves with the TLS facts, or undefined
   * when the handshake failed (the socket is then destroyed and the handler's `closed` follows).
   */
  upgradeToTls(): Promise<TlsFacts | undefined> {
    const plain = this.current;
    this.detach(plain);
    plain.uncork();
    const provider = this.group.tls;
    const secure = new tls.TLSSocket(plain, { isServer: true, secureContext: provider.secureContext(), SNICallback: provider.options().SNICallback });
    this.current = secure;
    this.paused = false;
    secure.on('error', (e: Error) => this.log.debug({ err: e.message }, 'TLS upgrade failed'));
    return new Promise((resolve) => {
      const timer = setTimeout(() => secure.destroy(), this.group.handshakeTimeoutMs);
      secure.once('secure', () => {
        clearTimeout(timer);
        if (this.ended) return resolve(undefined);
        this.tlsFacts = facts(secure);
        this.attach(secure);
        resolve(this.tlsFacts);
      });
      secure.once('close', () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }

  /**
   * Ends the connection after what was written: the client's cap slot is given back now (a client
   * that connects again as soon as it reads the last reply must not find this session still
   * counted), and a client that never reads is cut off after a grace.
   */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.release();
    const s = this.current;
    s.end();
    setTimeout(() => s.destroy(), END_LINGER_MS).unref();
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.ended = true;
    this.release();
    this.current.destroy();
  }

  /** @internal Starts feeding the handler. */
  start(handler: SessionHandler): void {
    this.handler = handler;
    this.attach(this.current);
  }

  /** @internal The raw socket closed: the handler learns it once. */
  onClosed(): void | Promise<void> {
    this.ended = true;
    this.release();
    return this.handler?.closed();
  }

  /** @internal True when the drain may say goodbye now. */
  get atRest(): boolean {
    const h = this.handler;
    if (!h) return true;
    return h.atRest ?? !h.busy;
  }

  /** @internal The listener is closing: goodbye now if at rest, or whatever the state when `force`. */
  shutdown(force: boolean): void {
    if (this.ended || !this.handler) return;
    if (force || this.atRest) this.handler.shutdown();
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.group.releaseSlot(this.address);
  }

  private readonly onData = (chunk: Buffer): void => {
    const h = this.handler!;
    // Draining: a client that sends its next command between two of ours gets the goodbye instead.
    if (this.group.draining && this.atRest) return this.shutdown(true);
    h.data(chunk);
  };

  private readonly onEnd = (): void => this.handler!.clientEnded();

  private readonly onTimeout = (): void => {
    // The timer measures the client's silence; time the server spends on a command is not it.
    // The socket's timer fires again after another quiet period.
    if (this.ended || this.handler!.busy) return;
    this.group.metrics.limitsHit.inc({ listener: this.port.metricsLabel, limit: 'idle_timeout' });
    this.handler!.idleTimeout();
  };

  private attach(s: net.Socket): void {
    s.setNoDelay(true);
    s.setTimeout(this.group.limits.idleTimeoutMs);
    s.on('timeout', this.onTimeout);
    s.on('data', this.onData);
    s.on('end', this.onEnd);
  }

  private detach(s: net.Socket): void {
    s.setTimeout(0);
    s.off('timeout', this.onTimeout);
    s.off('data', this.onData);
    s.off('end', this.onEnd);
  }
}

/** Every live connection of one listener, with the caps that span them. */
class ConnectionGroup {
  readonly live = new Set<Connection>();
  private readonly perClient = new Map<string, number>();
  /** Sessions still releasing what they hold after their socket closed. */
  private readonly releasing = new Set<Promise<void>>();
  draining = false;
  readonly handshakeTimeoutMs: number;
  private wakeDrain: (() => void) | undefined;

  constructor(
    private readonly options: TcpListenerOptions,
    readonly log: Logger,
  ) {
    this.handshakeTimeoutMs = options.limits.handshakeTimeoutMs ?? 30_000;
  }

  get limits(): ConnectionLimits {
    return this.options.limits;
  }

  get metrics(): Metrics {
    return this.options.metrics;
  }

  get tls(): TlsProvider {
    return this.options.tls;
  }

  accept(socket: net.Socket, port: Readonly<Required<ListenerPort>>): void {
    const { limits, refusals, metrics } = this.options;
    const label = port.metricsLabel;
    const address = plainAddress(socket.remoteAddress ?? '');
    metrics.connectionsTotal.inc({ listener: label });
    socket.on('error', () => undefined);
    const refuse = (line: string, limit: string): void => {
      metrics.limitsHit.inc({ listener: label, limit });
      socket.end(line);
      setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
    };
    if (this.draining) return refuse(refusals.shutdown, 'shutdown');
    if (this.live.size >= limits.maxConnections) return refuse(refusals.tooManyConnections, 'connections');
    const counted = !limits.exempt?.(address);
    const n = counted ? (this.perClient.get(address) ?? 0) : 0;
    if (n >= limits.maxConnectionsPerClient) return refuse(refusals.tooManyFromClient, 'connections_per_client');
    if (counted) this.perClient.set(address, n + 1);

    metrics.connections.inc({ listener: label });
    const conn = new Connection(this, socket, port, address, counted);
    this.live.add(conn);
    // 'close' of the socket accepted is the end of the TCP connection, TLS upgrade or not.
    socket.once('close', () => {
      this.live.delete(conn);
      metrics.connections.dec({ listener: label });
      let closing: void | Promise<void> = undefined;
      try {
        closing = conn.onClosed();
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'session close failed');
      }
      if (closing) {
        const p = closing.catch((e: unknown) => this.log.warn({ err: (e as Error).message }, 'session close failed'));
        this.releasing.add(p);
        void p.finally(() => this.releasing.delete(p));
      }
      if (this.draining && this.live.size === 0) this.wakeDrain?.();
    });
    try {
      conn.start(this.options.onConnection(conn));
    } catch (e) {
      this.log.error({ err: e }, 'session could not start');
      conn.destroy();
    }
  }

  /** Resolves once no connection is live, or after `ms`. */
  private allClosed(ms: number): Promise<void> {
    if (this.live.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wakeDrain = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  releaseSlot(address: string): void {
    const left = (this.perClient.get(address) ?? 1) - 1;
    if (left <= 0) this.perClient.delete(address);
    else this.perClient.set(address, left);
  }

  /**
   * Stops taking connections; sessions at rest get the goodbye now, busy ones when they come to
   * rest, and whatever is still going at the deadline gets it regardless. Sockets then get a
   * moment to close (a client that keeps its half open is cut off), and sessions to release what
   * they hold.
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    const deadline = Date.now() + graceMs;
    const going = (): boolean => {
      for (const c of this.live) if (!c.isEnded) return true;
      return false;
    };
    for (const c of this.live) c.shutdown(false);
    while (going() && Date.now() < deadline) {
      await delay(Math.min(DRAIN_POLL_MS, deadline - Date.now()));
      for (const c of this.live) c.shutdown(false);
    }
    for (const c of this.live) c.shutdown(true);
    await this.allClosed(FINAL_WAIT_MS);
    for (const c of this.live) c.destroy();
    await this.allClosed(FINAL_WAIT_MS);
    if (this.releasing.size > 0) await Promise.race([Promise.all(this.releasing), delay(FINAL_WAIT_MS)]);
  }
}

/** Opens every port of a listener and admits connections through the caps. */
export async function startTcpListener(options: TcpListenerOptions): Promise<TcpListener> {
  const log = options.log;
  const group = new ConnectionGroup(options, log);
  const servers: { name: string; server: net.Server }[] = [];
  const detachers: (() => void)[] = [];
  const handshakeTimeout = group.handshakeTimeoutMs;
  try {
    for (const p of options.ports) {
      const port: Required<ListenerPort> = { implicitTls: false, metricsLabel: p.name, ...p };
      // allowHalfOpen: a client that pipelines and then half-closes still gets every reply.
      let server: net.Server;
      if (port.implicitTls) {
        const secure = tls.createServer({ ...options.tls.options(), handshakeTimeout, allowHalfOpen: true }, (s) => group.accept(s, port));
        detachers.push(options.tls.attach(secure));
        secure.on('tlsClientError', (e: Error, s: net.Socket) => {
          log.debug({ err: e.message, client: s.remoteAddress, port: port.name }, 'TLS handshake failed');
          s.destroy();
        });
        server = secure;
      } else {
        server = net.createServer({ allowHalfOpen: true }, (s) => group.accept(s, port));
      }
      server.on('error', (e) => log.error({ err: e, listener: options.name, port: port.name }, 'listener error'));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port.port, options.host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      servers.push({ name: port.name, server });
    }
  } catch (e) {
    for (const s of servers) s.server.close();
    for (const d of detachers) d();
    throw e;
  }

  const ports: Record<string, number> = {};
  const addresses = servers.map(({ name, server }) => {
    const a = server.address() as net.AddressInfo;
    ports[name] = a.port;
    return `${name} ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  });
  let open = true;
  return {
    addresses,
    ports,
    healthy: () => open && servers.every((s) => s.server.listening),
    async close(graceMs = 10_000): Promise<void> {
      if (!open) return;
      open = false;
      const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.server.close(() => resolve()))));
      for (const d of detachers) d();
      await group.drain(graceMs);
      await closed;
    },
  };
}

function facts(s: tls.TLSSocket): TlsFacts {
  const cipher = s.getCipher();
  return { version: s.getProtocol() ?? 'TLS', cipher: cipher?.standardName ?? cipher?.name ?? 'unknown' };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
