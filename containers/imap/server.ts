/**
 * The IMAP listeners: config.imap.port (plain, with STARTTLS) and config.imap.tlsPort (implicit
 * TLS, RFC 8314) on the shared TCP scaffold (../tcp-listener.ts: caps, TLS, inactivity timer,
 * drain). This file joins a connection to its session: framing through the CommandReader,
 * commands run one at a time in the order sent, literals (APPEND's streamed into storage as they
 * arrive), the bad-command limit, AUTHENTICATE's continuation lines, and IDLE (RFC 2177): woken
 * at once by a change made in this process (core/mailbox/notify.ts), and by a poll of the change
 * log for changes made elsewhere (the AWS form: a Lambda delivers, this task listens).
 */
import { randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { Accounts } from '../../core/accounts/accounts.js';
import type { Logger } from '../../core/log.js';
import type { Metrics } from '../../core/metrics.js';
import { ChangeLog } from '../../core/mailbox/changes.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { onMailboxChange } from '../../core/mailbox/notify.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import type { Blobs } from '../../core/storage/ports.js';
import { createTlsProvider, type TlsProvider } from '../../core/tls.js';
import { AuthThrottle } from '../auth-throttle.js';
import type { ListenerContext, RunningListener } from '../listener.js';
import { isLoopback, LoginCache, loginHooks } from '../auth-cache.js';
import { startTcpListener, type Connection, type SessionHandler, type TcpListener } from '../tcp-listener.js';
import type { AppendSource } from './messages.js';
import { CommandReader, type LiteralDecision } from './protocol/reader.js';
import { tagged } from './protocol/encode.js';
import { ImapSession, type Next, type SessionHooks, type SessionServices } from './session.js';
import { coalescedWake } from '../wake.js';

/** Knobs that tests and the bench set beyond the configuration. */

/** Reply bytes a session gathers before it hands them to the socket and waits for them to drain. */
const FLUSH_BYTES = 256 * 1024;
export interface ImapServerOptions {
  /** Inactivity timer; overrides config.imap.idleTimeoutSeconds (tests only). */
  idleTimeoutMs?: number;
  tls?: TlsProvider;
  handshakeTimeoutMs?: number;
  /** Implicit-TLS port instead of config.imap.tlsPort; here 0 means an ephemeral port (tests). */
  tlsPort?: number;
  /** How often an idling session reads the change log for changes made in other processes. @default 2000 locally, 5000 on aws */
  idlePollMs?: number;
  /** How often an idling session tells the client it is still there. @default 5 minutes */
  idleKeepaliveMs?: number;
  authCacheSeconds?: number;
}

/** Client input held unprocessed before the socket stops being read. */
const MAX_PENDING_INPUT = 256 * 1024;
/** The largest literal of a command other than APPEND (a search string, a password). */
const MAX_ARG_LITERAL = 64 * 1024;
/** Before login a literal can only be a user name or a password. */
const MAX_PREAUTH_LITERAL = 8 * 1024;

/** What every connection of the listener shares. */
interface ServerShared {
  log: Logger;
  metrics: Metrics;
  services: SessionServices;
  blobs: Blobs;
  plaintext: 'never' | 'loopback' | 'always';
  maxBadCommands: number;
  maxLineBytes: number;
  idlePollMs: number;
  idleKeepaliveMs: number;
  hooksFor(address: string): SessionHooks;
}

/** One IMAP conversation on a connection. */
class ImapConnection implements SessionHandler {
  private reader: CommandReader;
  private readonly session: ImapSession;
  private working = false;
  private ended = false;
  private clientHasEnded = false;
  private badInARow = 0;
  /** Set while a continuation line is awaited (AUTHENTICATE). */
  private onLine: ((line: string) => Promise<Next>) | undefined;
  /** Set while the client idles. */
  private idling: { tag: string; stop: () => void } | undefined;
  /** The APPEND literal being streamed into storage. */
  private appendInFlight: { source: AppendSource; abort: () => void } | undefined;

  constructor(
    private readonly conn: Connection,
    private readonly shared: ServerShared,
  ) {
    const tls = conn.tls !== undefined;
    this.reader = this.newReader();
    this.session = new ImapSession(
      shared.services,
      shared.hooksFor(conn.address),
      {
        tls,
        starttlsAvailable: !tls,
        plaintextAllowed: shared.plaintext === 'always' || (shared.plaintext === 'loopback' && isLoopback(conn.address)),
      },
      { write: (d) => this.say(d), drained: () => this.flushed() },
    );
    conn.write(this.session.greeting());
  }

  /**
   * Sends what pump() holds corked and resolves once the socket drained (or closed). Waiting for
   * 'drain' on a corked socket would wait for ever: a FETCH past the socket's high-water mark
   * (16 KB) hung. At most FLUSH_BYTES wait in a connection's buffer.
   */
  private async flushed(): Promise<void> {
    const s = this.conn.socket;
    // Below FLUSH_BYTES the replies stay corked and leave in one write with the rest: a FETCH of
    // many messages goes out in writes of about that size rather than of the socket's 16 KB
    // high-water mark (which TLS sockets do not let us raise).
    if (s.writableLength < FLUSH_BYTES) return;
    const corked = s.writableCorked;
    for (let i = 0; i < corked; i++) s.uncork();
    await this.conn.drained();
    for (let i = 0; i < corked; i++) s.cork();
  }

  private newReader(): CommandReader {
    return new CommandReader({ maxLineBytes: this.shared.maxLineBytes, maxLiteralBytes: MAX_ARG_LITERAL });
  }

  get busy(): boolean {
    return this.working;
  }

  data(chunk: Buffer): void {
    this.reader.push(chunk);
    this.conn.inputHeld(this.reader.pending);
    void this.pump();
  }

  clientEnded(): void {
    this.clientHasEnded = true;
    void this.pump();
  }

  idleTimeout(): void {
    this.conn.log.info('idle timeout');
    this.say('* BYE Autologout; idle for too long\r\n');
    this.end();
  }

  shutdown(): void {
    this.say('* BYE Server shutting down, try again shortly\r\n');
    this.end();
  }

  closed(): void {
    this.ended = true;
    this.idling?.stop();
    this.appendInFlight?.abort();
    this.appendInFlight = undefined;
  }

  private say(data: string | Buffer): void {
    if (!this.ended) this.conn.write(data);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.idling?.stop();
    this.conn.end();
  }

  /** Works through what the client sent, one command at a time, answers in order. */
  private async pump(): Promise<void> {
    if (this.working || this.ended) return;
    this.working = true;
    this.conn.socket.cork();
    try {
      while (!this.ended) {
        const ev = this.reader.next();
        if (!ev) {
          if (this.clientHasEnded) this.end();
          break;
        }
        if (ev.kind === 'line') {
          await this.line(ev.text);
          continue;
        }
        if (this.idling) {
          // Anything but DONE while idling ends the IDLE with BAD (RFC 2177).
          this.stopIdle('BAD', 'Expected DONE');
          continue;
        }
        if (ev.kind === 'bad') {
          this.say(ev.tag ? tagged(ev.tag, 'BAD', ev.text) : `* BAD ${ev.text}\r\n`);
          if (ev.fatal || this.countBad()) return this.tooManyBad(ev.fatal);
          continue;
        }
        if (ev.kind === 'literal') {
          this.literal(ev.tag, ev.name, ev.size, ev.sync);
          continue;
        }
        const append = ev.name === 'APPEND' ? this.appendInFlight?.source : undefined;
        this.appendInFlight = undefined;
        const started = process.hrtime.bigint();
        const bad = this.session.badReplies;
        const next = await this.session.run({ tag: ev.tag, name: ev.name, args: ev.args, ...(append ? { append } : {}) });
        this.count(ev.name, started);
        if (this.session.badReplies > bad) {
          if (this.countBad()) return this.tooManyBad(false);
        } else if (next.kind === 'done') this.badInARow = 0;
        await this.after(next);
      }
    } catch (e) {
      this.conn.log.error({ err: (e as Error).message }, 'IMAP session failed');
      this.say('* BYE Internal error; closing\r\n');
      this.end();
    } finally {
      this.working = false;
      if (!this.ended) {
        // The current socket: after STARTTLS it is the TLS one.
        this.conn.socket.uncork();
        this.conn.inputHeld(this.reader.pending);
      }
    }
  }

  private count(name: string, started: bigint): void {
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    this.shared.metrics.commands.labels({ listener: 'imap', command: commandLabel(name), outcome: 'done' }).inc();
    if (ms > 5000) this.conn.log.info({ command: name, ms: Math.round(ms) }, 'slow IMAP command');
  }

  /** Counts a client error; true once the limit is reached. */
  private countBad(): boolean {
    return ++this.badInARow >= this.shared.maxBadCommands;
  }

  private tooManyBad(fatal: boolean): void {
    this.shared.metrics.limitsHit.inc({ listener: 'imap', limit: fatal ? 'line_length' : 'bad_commands' });
    this.say(`* BYE ${fatal ? 'Cannot read the command stream any more' : 'Too many bad commands'}; closing\r\n`);
    this.end();
  }

  /** A literal is announced: say go ahead (or no) before its bytes come. */
  private literal(tag: string, name: string, size: number, sync: boolean): void {
    let decision: LiteralDecision;
    const authed = this.session.state === 'authenticated' || this.session.state === 'selected';
    if (name === 'APPEND' && authed && !this.appendInFlight) {
      const max = this.shared.services.maxMessageBytes;
      if (size > max) {
        decision = { refuse: tagged(tag, 'NO', `Message too big: the limit is ${max} octets`, 'TOOBIG') };
      } else {
        const { sink, source, abort } = streamAppend(this.shared.blobs, size, () => this.conn.inputHeld(this.reader.pending));
        this.appendInFlight = { source, abort };
        decision = { take: 'stream', sink };
      }
    } else {
      const max = authed ? MAX_ARG_LITERAL : MAX_PREAUTH_LITERAL;
      decision = size > max ? { refuse: tagged(tag, 'BAD', `Literal too big: at most ${max} octets here`, 'TOOBIG') } : { take: 'buffer' };
    }
    this.reader.decide(decision);
    if ('refuse' in decision) {
      this.shared.metrics.limitsHit.inc({ listener: 'imap', limit: 'literal_size' });
      this.say(decision.refuse);
    } else if (sync) {
      this.say('+ Ready for literal data\r\n');
    }
  }

  /** A raw line: AUTHENTICATE's continuation or IDLE's DONE. */
  private async line(text: string): Promise<void> {
    this.reader.expectLine = false;
    if (this.idling) {
      if (text.toUpperCase() === 'DONE') this.stopIdle('OK', 'IDLE terminated');
      else this.stopIdle('BAD', 'Expected DONE');
      return;
    }
    const then = this.onLine;
    this.onLine = undefined;
    if (then) await this.after(await then(text));
  }

  /** What a command's result asks of the connection. */
  private async after(next: Next): Promise<void> {
    switch (next.kind) {
      case 'done':
        return;
      case 'logout':
        this.end();
        return;
      case 'starttls':
        return this.startTls();
      case 'line':
        this.say(next.prompt);
        this.onLine = next.onLine;
        this.reader.expectLine = true;
        return;
      case 'idle':
        return this.startIdle();
    }
  }

  private async startTls(): Promise<void> {
    // Nothing the client pipelined after STARTTLS may be read as a command (RFC 9051 §6.2.1).
    this.reader = this.newReader();
    this.conn.socket.uncork();
    const facts = await this.conn.upgradeToTls();
    if (!facts) {
      this.ended = true;
      return;
    }
    this.conn.socket.cork();
    this.session.tlsStarted();
  }

  /**
   * IDLE (RFC 2177): updates are written as they happen until the client sends DONE. Woken by a
   * change in this process at once; changes made by other processes are found by a poll of the
   * change log every idlePollMs. A keepalive line now and then keeps load balancers from
   * dropping the quiet connection.
   */
  private async startIdle(): Promise<void> {
    const tagLine = this.session.lastTag;
    this.say('+ idling\r\n');
    this.reader.expectLine = true;
    const wake = coalescedWake(() => this.session.flushUpdates(true), {
      active: () => !!this.idling,
      onError: (e) => this.conn.log.warn({ err: e.message }, 'IDLE refresh failed'),
    });
    const unsubscribe = this.session.user ? onMailboxChange(this.session.user, wake) : () => {};
    const poll = setInterval(wake, this.shared.idlePollMs);
    const keepalive = setInterval(() => this.say('* OK Still here\r\n'), this.shared.idleKeepaliveMs);
    poll.unref();
    keepalive.unref();
    this.idling = {
      tag: tagLine,
      stop: () => {
        unsubscribe();
        clearInterval(poll);
        clearInterval(keepalive);
      },
    };
    // Anything that happened between the IDLE command and now.
    wake();
  }

  private stopIdle(status: 'OK' | 'BAD', text: string): void {
    const idle = this.idling;
    if (!idle) return;
    this.idling = undefined;
    idle.stop();
    this.reader.expectLine = false;
    this.say(tagged(idle.tag, status, text));
    if (status === 'BAD' && this.countBad()) this.tooManyBad(false);
  }
}

/**
 * Streams an APPEND literal into a new blob while summarising it in the same pass; the message
 * is durable when `stored` resolves. A connection that drops mid-literal aborts the blob write
 * (nothing is stored); a blob stored for a command that then fails is deleted, and one left by a
 * crash between the two is found by the orphan sweep (`append/` is one of its prefixes).
 */
function streamAppend(blobs: Blobs, size: number, resume: () => void) {
  const key = `append/${new Date().toISOString().slice(0, 10).replace(/-/g, '')}/${randomUUID()}`;
  const toBlob = new PassThrough();
  const toSummary = new PassThrough();
  const put = blobs.put(key, toBlob, { maxBytes: size });
  // The same summary delivery stores, IMAP structure included, so FETCH never parses it later.
  const summary = summarizeForMailbox(toSummary);
  toBlob.on('drain', resume);
  let discarded = false;
  const stored = Promise.all([put, summary]).then(([, s]) => ({ blobKey: key, summary: s }));
  stored.catch(() => {}); // awaited by the command; a dropped connection never awaits it
  const source: AppendSource = {
    size,
    stored,
    discard() {
      if (discarded) return;
      discarded = true;
      void stored.then(() => blobs.delete(key)).catch(() => {});
    },
  };
  return {
    source,
    sink: {
      write(chunk: Buffer) {
        toBlob.write(chunk);
        toSummary.write(chunk);
      },
      end() {
        toBlob.end();
        toSummary.end();
      },
    },
    abort() {
      const gone = new Error('connection closed during APPEND');
      toBlob.destroy(gone);
      toSummary.destroy(gone);
      source.discard();
    },
  };
}

/** A bounded set of metric labels: known commands, the rest as `other`. */
function commandLabel(name: string): string {
  return /^(CAPABILITY|NOOP|LOGOUT|ID|STARTTLS|LOGIN|AUTHENTICATE|ENABLE|SELECT|EXAMINE|CREATE|DELETE|RENAME|SUBSCRIBE|UNSUBSCRIBE|LIST|LSUB|NAMESPACE|STATUS|APPEND|IDLE|GETQUOTA|GETQUOTAROOT|CHECK|CLOSE|UNSELECT|EXPUNGE|FETCH|STORE|COPY|MOVE|SEARCH|SORT|UID)$/.test(
    name,
  )
    ? name
    : 'other';
}

/** Starts the IMAP listeners that the configuration enables. */
export async function startImap(ctx: ListenerContext, options: ImapServerOptions = {}): Promise<RunningListener> {
  const { config, storage, metrics } = ctx;
  const log = ctx.log.child({ c: 'imap' });
  const cfg = config.imap;
  const tlsProvider = options.tls ?? (await createTlsProvider(config, log));
  const ownsTls = options.tls === undefined;
  const accounts = new Accounts(storage.tables);
  const logins = new LoginCache(accounts, storage.tables, { ttlSeconds: options.authCacheSeconds ?? cfg.loginCacheSeconds });
  const throttle = new AuthThrottle({ baseDelayMs: cfg.authFailureDelayMs });
  const folders = new FolderStore(storage.tables, storage.mail, { learnQueue: storage.queues });
  const changes = new ChangeLog(storage.tables);

  if (cfg.allowPlaintext === 'always') log.warn('IMAP accepts passwords without TLS from any client (imap.allowPlaintext=always)');

  const services: SessionServices = {
    folders,
    changes,
    blobs: storage.mail,
    log,
    maxMessageBytes: config.smtp.maxMessageBytes,
    quotaOf: async (user) => (await accounts.getUser(user))?.quotaBytes ?? 0,
  };
  const shared: ServerShared = {
    log,
    metrics,
    services,
    blobs: storage.mail,
    plaintext: cfg.allowPlaintext,
    maxBadCommands: cfg.maxBadCommands,
    maxLineBytes: cfg.maxLineBytes,
    idlePollMs: options.idlePollMs ?? (storage.capabilities.sharedBetweenProcesses ? 5000 : 2000),
    idleKeepaliveMs: options.idleKeepaliveMs ?? 5 * 60_000,
    hooksFor: loginHooks('imap', { logins, throttle, log, metrics }),
  };

  const tlsPort = options.tlsPort ?? cfg.tlsPort;
  let listener: TcpListener;
  try {
    listener = await startTcpListener({
      name: 'imap',
      host: config.listenHost,
      ports: [
        { name: 'imap', port: cfg.port, metricsLabel: 'imap' },
        ...(tlsPort !== 0 || options.tlsPort === 0 ? [{ name: 'imaps', port: tlsPort, implicitTls: true, metricsLabel: 'imap' }] : []),
      ],
      tls: tlsProvider,
      log,
      metrics,
      limits: {
        maxConnections: cfg.maxConnections,
        maxConnectionsPerClient: cfg.maxConnectionsPerClient,
        idleTimeoutMs: options.idleTimeoutMs ?? cfg.idleTimeoutSeconds * 1000,
        handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
        pauseInputAbove: MAX_PENDING_INPUT,
      },
      refusals: {
        shutdown: '* BYE Server shutting down, try again shortly\r\n',
        tooManyConnections: '* BYE [UNAVAILABLE] Too many connections, try again later\r\n',
        tooManyFromClient: '* BYE [UNAVAILABLE] Too many connections from your address\r\n',
      },
      onConnection: (conn) => new ImapConnection(conn, shared),
    });
  } catch (e) {
    if (ownsTls) tlsProvider.close();
    throw e;
  }
  return {
    name: 'imap',
    addresses: listener.addresses,
    healthy: () => listener.healthy(),
    async close(graceMs = 10_000) {
      await listener.close(graceMs);
      if (ownsTls) tlsProvider.close();
    },
  };
}
