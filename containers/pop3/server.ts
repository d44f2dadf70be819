/**
 * The POP3 listeners: config.pop3.port (plain, with STLS, RFC 2595) and config.pop3.tlsPort
 * (implicit TLS, the "pop3s" of RFC 8314 §3.3) on config.listenHost, on the shared TCP scaffold
 * (../tcp-listener.ts: caps, TLS, inactivity timer, drain). This file joins a connection to its
 * session: framing through the pure LineReader, pipelined commands in order (RFC 2449 §6.6), the
 * bad-command limit, and RETR/TOP bodies written with backpressure. The protocol itself is
 * Pop3Session; mailboxes come from StoreMaildrops.
 */
import { Accounts } from '../../core/accounts/accounts.js';
import type { Logger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { AuthThrottle } from '../auth-throttle.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { startTcpListener, type Connection, type SessionHandler, type TcpListener } from '../tcp-listener.js';
import { isLoopback, LoginCache, loginHooks } from '../auth-cache.js';
import { StoreMaildrops } from './maildrop.js';
import { err } from './protocol/commands.js';
import { encodeWhole, MessageEncoder } from './protocol/encode.js';
import { LineReader } from './protocol/lines.js';
import { Pop3Session, type BodyReply, type Pop3Hooks } from './session.js';

/** Knobs that tests and the bench set beyond the configuration. */
export interface Pop3ServerOptions {
  /** Inactivity timer; overrides config.pop3.idleTimeoutSeconds (tests only). */
  idleTimeoutMs?: number;
  /** TLS certificates; @default createTlsProvider(config, log) */
  tls?: TlsProvider;
  /** How long a TLS handshake may take. @default 30000 */
  handshakeTimeoutMs?: number;
  /** Implicit-TLS port instead of config.pop3.tlsPort; here 0 means an ephemeral port (tests). */
  tlsPort?: number;
  /** How long a password that passed scrypt is remembered (see LoginCache); 0 turns it off. @default config.pop3.loginCacheSeconds */
  authCacheSeconds?: number;
}

/** Client input buffered while a command runs before we stop reading the socket. */
const MAX_PENDING_INPUT = 64 * 1024;
/** Commands answered in a row without waiting before the connection lets others run. */
const MAX_SYNC_COMMANDS = 32;
/** Response buffers up to this size are kept from one RETR to the next (per connection). */
const MAX_KEPT_RESPONSE = 128 * 1024;
/** A SASL continuation line may be longer than a command (RFC 5034 §4 has no 255-octet cap). */
const MAX_SASL_LINE = 16 * 1024;

/** What every connection of the listener shares. */
interface ServerShared {
  log: Logger;
  metrics: Metrics;
  plaintext: 'never' | 'loopback' | 'always';
  hooksFor(address: string): Pop3Hooks;
  maxBadCommands: number;
  /** Counts one command in the commands metric. */
  countCommand(verb: string, outcome: 'ok' | 'err'): void;
}

/** One POP3 conversation on a connection: lines in, replies and message bodies out. */
class Pop3Connection implements SessionHandler {
  private readonly reader = new LineReader();
  private readonly session: Pop3Session;
  private working = false;
  private ended = false;
  private clientHasEnded = false;
  /** The buffer whole RETR responses are built in, while the socket does not hold it. */
  private response: Buffer | undefined;
  /** The buffer a response is built ahead in (see `prepare`), while nothing else holds it. */
  private spare: Buffer | undefined;
  /** The response to the likely next RETR, built while the client was reading the previous one. */
  private prepared: { head: string; source: Buffer; response: Buffer; octets: number } | undefined;
  private finishing: Promise<void> | undefined;

  constructor(
    private readonly conn: Connection,
    private readonly shared: ServerShared,
  ) {
    const implicitTls = conn.tls !== undefined;
    const plaintext = shared.plaintext;
    this.session = new Pop3Session(shared.hooksFor(conn.address), {
      tls: implicitTls,
      stlsAvailable: !implicitTls,
      plaintextAllowed: plaintext === 'always' || (plaintext === 'loopback' && isLoopback(conn.address)),
    });
    conn.write(this.session.greeting());
  }

  /** True while a command runs or a reply is being written (the idle timer and a drain wait for these). */
  get busy(): boolean {
    return this.working;
  }

  data(chunk: Buffer): void {
    this.reader.push(chunk);
    this.conn.inputHeld(this.reader.pending);
    void this.pump();
  }

  /** The client half-closed: answer what it sent, then close. */
  clientEnded(): void {
    this.clientHasEnded = true;
    void this.pump();
  }

  idleTimeout(): void {
    // RFC 1939 §3: an inactivity autologout timer; the server then closes "without ... entering
    // the UPDATE state", so nothing marked is deleted.
    this.conn.log.info('idle timeout');
    this.say(err('Disconnected for inactivity'));
    this.end();
  }

  /** Sends a last line and closes (server shutdown). */
  shutdown(): void {
    this.say(err('Server shutting down', 'SYS/TEMP'));
    this.end();
  }

  closed(): Promise<void> {
    return this.finish();
  }

  /** Writes a line if the connection can still take it. */
  private say(text: string): void {
    if (!this.ended) this.conn.write(text);
  }

  /** Handles buffered lines one after the other; replies stay in command order. */
  private async pump(): Promise<void> {
    if (this.working || this.ended) return;
    this.working = true;
    this.conn.socket.cork();
    let inARow = 0;
    try {
      while (!this.ended) {
        const r = this.reader.next();
        if (r.kind === 'need-more') {
          if (this.clientHasEnded) this.end();
          break;
        }
        // Most commands answer synchronously: no await (and no trip through the microtask queue)
        // unless the session needs storage. A long pipelined run still yields now and then, so
        // that one client cannot hold the event loop.
        let out = r.kind === 'too-long' ? this.session.tooLong() : this.session.line(r.line);
        if (out instanceof Promise) {
          out = await out;
          inARow = 0;
        } else if (++inARow >= MAX_SYNC_COMMANDS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          inARow = 0;
        }
        if (this.ended) break;
        const last = this.session.last;
        this.reader.setMaxLine(out.continuation ? MAX_SASL_LINE : 1024);
        if (out.then === 'starttls') {
          if (last) this.shared.countCommand(last.verb, last.outcome);
          await this.startTls(out.text ?? '');
          continue;
        }
        if (out.text) this.conn.write(out.text);
        // Counted once the reply is on its way: the client's wait does not include the metric.
        const sent = out.body ? this.sendBody(out.body) : undefined;
        if (last) this.shared.countCommand(last.verb, last.outcome);
        if (sent) await sent;
        if (out.then === 'close') {
          this.end();
          break;
        }
        if (this.session.badCommands >= this.shared.maxBadCommands) {
          this.shared.metrics.limitsHit.inc({ listener: 'pop3', limit: 'bad-commands' });
          this.say(err('Too many bad commands; closing'));
          this.end();
          break;
        }
      }
    } catch (e) {
      this.conn.log.error({ err: (e as Error).message }, 'session failed');
      this.say(err('Internal error; closing', 'SYS/TEMP'));
      this.end();
    } finally {
      this.working = false;
      if (!this.ended) {
        this.conn.socket.uncork();
        this.conn.inputHeld(this.reader.pending);
        if (this.reader.pending === 0) this.prepare();
      }
    }
  }

  /**
   * The replies so far are in the kernel and the client has sent nothing more: while it reads
   * them, build the response to the RETR it will likely send next (one, in a buffer of its own),
   * so that its wait is a command parse and a write. A client fetching a maildrop waits once per
   * message; this takes the blob read and the encoding off that wait. A response built earlier
   * is kept while the session still names the same bytes (a LIST or NOOP came in between).
   */
  private prepare(): void {
    const next = this.session.idle();
    const p = this.prepared;
    if (p !== undefined && next !== undefined && p.source === next.source && p.head === next.head) return;
    this.unprepare();
    if (next === undefined || !Buffer.isBuffer(next.source)) return;
    const whole = encodeWhole(next.head, next.source, this.spare);
    if (whole === undefined) return;
    this.spare = undefined;
    this.prepared = { head: next.head, source: next.source, response: whole.response, octets: whole.octets };
  }

  /** Drops a prepared response that was not used; its buffer goes back to `spare`. */
  private unprepare(): void {
    const p = this.prepared;
    if (p === undefined) return;
    this.prepared = undefined;
    if (this.spare === undefined && p.response.buffer.byteLength <= MAX_KEPT_RESPONSE) this.spare = Buffer.from(p.response.buffer);
  }

  /**
   * Sends a RETR/TOP body: CRLF line ends, byte-stuffing, terminator (RFC 1939 §3). Returns a
   * promise only when there is something to wait for (a stream, or a full socket).
   */
  private sendBody(body: BodyReply): Promise<void> | undefined {
    const src = body.source;
    const p = this.prepared;
    // The same Buffer object means the maildrop handed out the bytes it read ahead: the prepared
    // response is this one.
    if (p !== undefined && p.source === src && p.head === body.head && body.topLines === undefined) {
      this.prepared = undefined;
      return this.sendWhole(body, p.response, p.octets, true);
    }
    this.unprepare();
    if (Buffer.isBuffer(src) && body.topLines === undefined) {
      const whole = encodeWhole(body.head, src, this.response);
      if (whole) return this.sendWhole(body, whole.response, whole.octets, false);
    }
    return this.sendEncoded(body);
  }

  /** sendBody through MessageEncoder: TOP, messages with bare CR or LF, and streamed messages. */
  private async sendEncoded(body: BodyReply): Promise<void> {
    const s = this.conn.socket;
    const src = body.source;
    const enc = new MessageEncoder({ topLines: body.topLines });
    s.write(body.head);
    if (Buffer.isBuffer(src)) {
      // TOP, or a message with bare CR or LF: the general encoder over the whole message. The
      // source is only valid until the next read, so what is written must not share its memory.
      const out = enc.encode(src);
      if (out.length > 0) s.write(out.buffer === src.buffer ? Buffer.from(out) : out);
      s.write(enc.finish());
      this.checkSize(body, enc.messageOctets);
      if (s.writableNeedDrain) await this.drained();
      return;
    }
    // Events rather than for-await: the response is complete at the source's 'end', without
    // waiting for its file to be closed, and a full socket pauses the source (backpressure).
    const outcome = await new Promise<'ok' | 'gone' | Error>((resolve) => {
      let settled = false;
      const settle = (v: 'ok' | 'gone' | Error) => {
        if (settled) return;
        settled = true;
        src.off('data', onData);
        src.off('end', onEnd);
        src.off('error', onError);
        src.off('close', onSrcClose);
        s.off('close', onGone);
        s.off('drain', onDrain);
        resolve(v);
      };
      const onData = (chunk: Buffer) => {
        const out = enc.encode(chunk);
        if (out.length > 0 && !s.write(out)) {
          src.pause();
          s.uncork();
          s.once('drain', onDrain);
        }
        if (enc.done) {
          src.destroy();
          settle('ok');
        }
      };
      const onDrain = () => {
        s.cork();
        src.resume();
      };
      const onEnd = () => settle('ok');
      const onError = (e: Error) => settle(e);
      const onGone = () => settle('gone');
      const onSrcClose = () => settle(src.errored ?? new Error('message stream closed before its end'));
      if (src.destroyed) return onSrcClose();
      src.on('data', onData);
      src.once('end', onEnd);
      src.once('error', onError);
      src.once('close', onSrcClose);
      s.once('close', onGone);
    });
    if (outcome === 'gone') {
      src.destroy();
      return;
    }
    if (outcome instanceof Error) {
      // The +OK line is out: the only honest thing left is to drop the connection (no UPDATE).
      this.conn.log.error({ err: outcome.message }, 'message read failed mid-response; closing');
      src.destroy();
      this.end();
      return;
    }
    s.write(enc.finish());
    this.checkSize(body, enc.messageOctets);
  }

  /**
   * Writes a whole RETR response built in `this.response` (or `this.spare` when `prepared`).
   * Earlier replies still corked go first; the response itself goes to the socket at once, and
   * when the kernel took all of it the buffer is kept for the next response (no allocation, no
   * garbage per message). Otherwise the socket still holds it, so the next response gets a new
   * buffer.
   */
  private sendWhole(body: BodyReply, response: Buffer, octets: number, prepared: boolean): Promise<void> | undefined {
    const s = this.conn.socket;
    this.checkSize(body, octets);
    s.uncork();
    s.write(response);
    const own = response.buffer;
    const keep = s.writableLength === 0 && own.byteLength <= MAX_KEPT_RESPONSE ? Buffer.from(own) : undefined;
    if (prepared) this.spare = keep;
    else this.response = keep;
    s.cork();
    // Pipelined RETRs must not pile messages up in memory: wait until the client takes them.
    return s.writableNeedDrain ? this.drained() : undefined;
  }

  private checkSize(body: BodyReply, sent: number): void {
    if (body.topLines === undefined && sent !== body.expectedSize) {
      this.conn.log.warn({ announced: body.expectedSize, sent }, 'message size differs from the size LIST announced');
    }
  }

  /** Flushes the corked writes and resolves once the socket drained (or closed). */
  private async drained(): Promise<void> {
    const s = this.conn.socket;
    s.uncork();
    await this.conn.drained();
    s.cork();
  }

  /** RFC 2595 §4 STLS: "+OK", then the TLS handshake; anything pipelined after STLS is dropped. */
  private async startTls(okLine: string): Promise<void> {
    this.reader.clear();
    this.conn.write(okLine);
    const facts = await this.conn.upgradeToTls();
    if (facts === undefined) {
      // The socket is gone; its close releases the session.
      this.conn.log.info('STLS handshake failed');
      this.ended = true;
      return;
    }
    // pump() uncorks the socket it finds when it is done: now the TLS one.
    this.conn.socket.cork();
    this.session.tlsStarted();
    this.conn.log.debug({ protocol: facts.version }, 'STLS done');
  }

  /**
   * Closes the connection after flushing what was written. The maildrop is released first, so a
   * client that sees the close can log in again at once.
   */
  private end(): void {
    if (this.ended) return;
    this.ended = true;
    void this.finish().finally(() => this.conn.end());
  }

  /** Releases the session (a drop deletes nothing) once, whichever way the connection ended. */
  private finish(): Promise<void> {
    this.ended = true;
    return (this.finishing ??= this.session.close().catch((e: unknown) => {
      this.conn.log.warn({ err: (e as Error).message }, 'session close failed');
    }));
  }
}

/** Counts commands in `metrics`: one labelled child per verb and outcome, made once. */
function commandCounter(metrics: Metrics): ServerShared['countCommand'] {
  const counters = new Map<string, { inc(): void }>();
  return (verb, outcome) => {
    // A closed set of verbs and outcomes, so a command costs an increment rather than hashing a
    // labels object.
    const k = `${verb} ${outcome}`;
    let c = counters.get(k);
    if (!c) counters.set(k, (c = metrics.commands.labels({ listener: 'pop3', command: verb, outcome })));
    c.inc();
  };
}

/** Starts the POP3 listeners that the configuration enables. */
export async function startPop3(ctx: ListenerContext, options: Pop3ServerOptions = {}): Promise<RunningListener> {
  const { config, storage, metrics } = ctx;
  const log = ctx.log.child({ c: 'pop3' });
  const cfg = config.pop3;
  const tlsProvider = options.tls ?? (await createTlsProvider(config, log));
  const ownsTls = options.tls === undefined;
  const accounts = new Accounts(storage.tables);
  const logins = new LoginCache(accounts, storage.tables, { ttlSeconds: options.authCacheSeconds ?? cfg.loginCacheSeconds });
  const store = new MailboxStore(storage.tables, storage.mail);
  const maildrops = new StoreMaildrops(store, storage.tables, storage.mail, { leaseSeconds: cfg.leaseSeconds, log });
  const throttle = new AuthThrottle({ baseDelayMs: cfg.authFailureDelayMs });

  if (cfg.allowPlaintext === 'always') log.warn('POP3 accepts passwords without TLS from any client (pop3.allowPlaintext=always)');
  else if (cfg.allowPlaintext === 'loopback') log.info('POP3 accepts passwords without TLS from loopback clients only (pop3.allowPlaintext=loopback)');

  const loginsFor = loginHooks('pop3', { logins, throttle, log, metrics });
  const shared: ServerShared = {
    log,
    metrics,
    plaintext: cfg.allowPlaintext,
    maxBadCommands: cfg.maxBadCommands,
    countCommand: commandCounter(metrics),
    hooksFor: (address) => ({ ...loginsFor(address), openMaildrop: (user) => maildrops.open(user) }),
  };

  const tlsPort = options.tlsPort ?? cfg.tlsPort;
  const refusal = (text: string): string => err(text, 'SYS/TEMP');
  let listener: TcpListener;
  try {
    listener = await startTcpListener({
      name: 'pop3',
      host: config.listenHost,
      ports: [
        { name: 'pop3', port: cfg.port, metricsLabel: 'pop3' },
        // Here 0 turns the implicit-TLS port off, unless the options ask for an ephemeral one.
        ...(tlsPort !== 0 || options.tlsPort === 0 ? [{ name: 'pop3s', port: tlsPort, implicitTls: true, metricsLabel: 'pop3' }] : []),
      ],
      tls: tlsProvider,
      log,
      metrics,
      limits: {
        maxConnections: cfg.maxConnections,
        maxConnectionsPerClient: cfg.maxConnectionsPerClient,
        idleTimeoutMs: options.idleTimeoutMs ?? cfg.idleTimeoutSeconds * 1000,
        handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
        // Pipelined input beyond this waits in the kernel until the session catches up.
        pauseInputAbove: MAX_PENDING_INPUT,
      },
      refusals: {
        shutdown: refusal('Server shutting down'),
        tooManyConnections: refusal('Too many connections'),
        tooManyFromClient: refusal('Too many connections'),
      },
      onConnection: (conn) => new Pop3Connection(conn, shared),
    });
  } catch (e) {
    if (ownsTls) tlsProvider.close();
    throw e;
  }

  return {
    name: 'pop3',
    addresses: listener.addresses,
    healthy: () => listener.healthy(),
    async close(graceMs = 10_000) {
      // Connections between commands are told and closed now; a command in flight (a RETR being
      // streamed, a QUIT applying deletions) gets up to graceMs to finish.
      await listener.close(graceMs);
      if (ownsTls) tlsProvider.close();
    },
  };
}
