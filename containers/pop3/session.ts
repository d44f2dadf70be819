/**
 * The POP3 session state machine (RFC 1939, RFC 2449, RFC 2595, RFC 5034): one discriminated-union
 * state and a handler map keyed by verb, checked against the state before each command
 * (STYLE.md example 1). No sockets and no storage engine: the server feeds it lines and writes
 * what it returns; authentication and the maildrop come in through `Pop3Hooks`.
 */
import type { Readable } from 'node:stream';
import { err, multiline, ok, parseCommand, parseCount, parseMessageNumber, type Command, type ResponseCode } from './protocol/commands.js';
import { actsForAnother, decodeSaslBase64, splitPlain } from '../sasl.js';

/** One message of the maildrop snapshot taken at login. */
export interface MaildropMessage {
  /** Octets RETR sends for it (CRLF line ends, before byte-stuffing). */
  size: number;
  /** RFC 1939 §7 UIDL: 1..70 characters in 0x21..0x7E, stable and unique in the maildrop. */
  uidl: string;
}

/** A locked maildrop as the session sees it. */
export interface Maildrop {
  /** The snapshot: message n is messages[n - 1]; never changes during the session. */
  readonly messages: readonly MaildropMessage[];
  /** The stored message as a stream of raw bytes. */
  open(index: number): Promise<Readable>;
  /**
   * The stored message whole, when it is small enough to hold at once and can be read cheaply;
   * undefined means "stream it with open". Throws like open. The bytes may live in a buffer the
   * maildrop reuses: they are valid until the next call.
   */
  read?(index: number): Buffer | undefined;
  /**
   * A hint that message `index` is likely to be asked for next: the maildrop may read it now so
   * that its `read` costs nothing, and returns the bytes that `read(index)` will then return (the
   * same Buffer object), or undefined. Bounded (one message); errors surface at `read`.
   */
  readAhead?(index: number): Buffer | undefined;
  /** Removes the given messages (indexes into `messages`), all or nothing (RFC 1939 §6 UPDATE). */
  commit(indexes: number[]): Promise<void>;
  /** Gives up the lock without deleting anything; called once whatever the end of the session. */
  release(): Promise<void>;
}

/** Why a maildrop could not be opened. */
export type OpenFailure = 'in-use' | 'unavailable';

/** What the session needs from the outside world. */
export interface Pop3Hooks {
  /** The user's canonical login when the credentials are right; same time for both failures. */
  authenticate(login: string, password: string): Promise<string | undefined>;
  /** Called after each failed authentication; resolves when the reply may be sent (slowing). */
  authFailed?(login: string): Promise<void>;
  /** Called after a successful authentication. */
  authSucceeded?(user: string): void;
  /** Locks and snapshots the user's maildrop (RFC 1939 §8: exclusive access). */
  openMaildrop(user: string): Promise<Maildrop | OpenFailure>;
}

/** Facts about the connection that the session's answers depend on. */
export interface SessionEnv {
  /** The connection is under TLS (implicit, or after STLS). */
  tls: boolean;
  /** STLS can be offered (a TLS context exists and the connection is not yet under TLS). */
  stlsAvailable: boolean;
  /** USER/PASS and AUTH are allowed on this connection without TLS (RFC 2595 §2.3). */
  plaintextAllowed: boolean;
  /** The IMPLEMENTATION capability's text (RFC 2449 §6.9). @default 'Tomlinson' */
  implementation?: string;
}

/** A message body to stream after the first line of a multi-line reply. */
export interface BodyReply {
  /** The `+OK` line, CRLF included. */
  head: string;
  /** The raw stored message: a stream, or the whole of a small one. */
  source: Readable | Buffer;
  /** TOP's line count; undefined for RETR. */
  topLines?: number;
  /** The size announced in LIST, to check what was sent against. */
  expectedSize: number;
}

/** What the server does with one command's result. */
export interface Output {
  /** Text to write (single or multi-line replies, CRLF included). */
  text?: string;
  /** A message to stream after `text`. */
  body?: BodyReply;
  /** After writing: upgrade to TLS (STLS) or close the connection (QUIT, fatal errors). */
  then?: 'starttls' | 'close';
  /** The next line is a SASL continuation, not a command (RFC 5034 §4). */
  continuation?: boolean;
}

/** The three states of RFC 1939 §3, each carrying exactly what it needs. */
export type SessionState =
  { name: 'AUTHORIZATION'; user?: string; sasl?: 'PLAIN' } | { name: 'TRANSACTION'; user: string; drop: Maildrop; deleted: Set<number> } | { name: 'UPDATE' };

type StateName = SessionState['name'];
type Handler = (cmd: Command) => Promise<Output> | Output;

/** What one command did, for metrics and logs. */
export interface CommandRecord {
  verb: string;
  outcome: 'ok' | 'err';
}

/**
 * One POP3 conversation. Feed it each line the client sends with `line()`; call `close()` once the
 * connection ends for any reason (a drop releases the lock and deletes nothing).
 */
export class Pop3Session {
  private state: SessionState = { name: 'AUTHORIZATION' };
  private closed = false;
  /** Counts commands that were unknown or out of place, for the server's bad-command limit. */
  badCommands = 0;
  /** The last command handled, for metrics. */
  last: CommandRecord | undefined;
  /** The message after the last one RETR sent whole: the likely next RETR, for `idle`. */
  private nextRetr: number | undefined;

  private readonly handlers: Record<string, { states: readonly StateName[]; run: Handler }> = {
    CAPA: { states: ['AUTHORIZATION', 'TRANSACTION'], run: () => this.capa() },
    QUIT: { states: ['AUTHORIZATION', 'TRANSACTION'], run: () => this.quit() },
    NOOP: { states: ['TRANSACTION'], run: () => ({ text: ok() }) },
    STLS: { states: ['AUTHORIZATION'], run: () => this.stls() },
    USER: { states: ['AUTHORIZATION'], run: (c) => this.userCmd(c) },
    PASS: { states: ['AUTHORIZATION'], run: (c) => this.pass(c) },
    AUTH: { states: ['AUTHORIZATION'], run: (c) => this.auth(c) },
    STAT: { states: ['TRANSACTION'], run: () => this.stat() },
    LIST: { states: ['TRANSACTION'], run: (c) => this.list(c) },
    UIDL: { states: ['TRANSACTION'], run: (c) => this.uidl(c) },
    RETR: { states: ['TRANSACTION'], run: (c) => this.retr(c) },
    TOP: { states: ['TRANSACTION'], run: (c) => this.top(c) },
    DELE: { states: ['TRANSACTION'], run: (c) => this.dele(c) },
    RSET: { states: ['TRANSACTION'], run: () => this.rset() },
  };

  constructor(
    private readonly hooks: Pop3Hooks,
    private env: SessionEnv,
  ) {}

  /** The state name, for logs and tests. */
  get stateName(): StateName {
    return this.state.name;
  }

  /** The authenticated user, once in TRANSACTION. */
  get user(): string | undefined {
    return this.state.name === 'TRANSACTION' ? this.state.user : undefined;
  }

  /** RFC 1939 §4: "the POP3 server issues a one line greeting". */
  greeting(): string {
    return ok('POP3 server ready');
  }

  /**
   * Handles one line from the client: a command, or a SASL continuation when one was asked for.
   * Commands that need no storage round trip (RETR of a message read whole among them) answer
   * synchronously; the others return a promise.
   */
  line(line: string): Output | Promise<Output> {
    if (this.state.name === 'AUTHORIZATION' && this.state.sasl) return this.saslContinuation(line);
    const cmd = parseCommand(line);
    if (!cmd) return this.bad('?', 'Unknown command');
    const h = this.handlers[cmd.verb];
    // Unknown verbs are recorded as '?' so that metrics labels stay a closed set.
    if (!h) return this.bad('?', 'Unknown command');
    if (!h.states.includes(this.state.name)) return this.bad(cmd.verb, `${cmd.verb} not allowed in ${this.state.name} state`);
    const out = h.run(cmd);
    if (out instanceof Promise) return out.then((o) => this.record(cmd.verb, o));
    return this.record(cmd.verb, out);
  }

  private record(verb: string, out: Output): Output {
    this.last = { verb, outcome: out.text?.startsWith('-ERR') ? 'err' : 'ok' };
    return out;
  }

  /**
   * Called by the server when the client has no command pending, typically while a RETR response
   * is on the wire. Clients that download a maildrop RETR the messages in order, so the maildrop
   * reads the next one ahead, and this returns it as the body its RETR would send (when it is read
   * whole), for the server to build that response before it is asked for. The RETR itself still
   * goes through every check (a DELE in between, say, answers -ERR as always). After the login the
   * likely next RETR is message 1; after a RETR, the message after it; other commands in between
   * change nothing (the same bytes are returned again, so the server can keep what it built).
   */
  idle(): BodyReply | undefined {
    const i = this.nextRetr;
    if (i === undefined) return undefined;
    const s = this.state;
    if (s.name !== 'TRANSACTION' || i >= s.drop.messages.length || s.deleted.has(i)) return undefined;
    const source = s.drop.readAhead?.(i);
    const size = s.drop.messages[i]!.size;
    return source === undefined ? undefined : { head: retrHead(size), source, expectedSize: size };
  }

  /** The reply to a line that was longer than the limit. */
  tooLong(): Output {
    if (this.state.name === 'AUTHORIZATION' && this.state.sasl) {
      this.state = { name: 'AUTHORIZATION' };
      return { text: err('Authentication response too long', 'AUTH') };
    }
    return this.bad('?', 'Line too long');
  }

  /**
   * RFC 2595 §4: after the TLS handshake "the client MUST discard cached information about server
   * capabilities" and the server forgets what it knew: back to a fresh AUTHORIZATION state.
   */
  tlsStarted(): void {
    this.env = { ...this.env, tls: true, stlsAvailable: false };
    this.state = { name: 'AUTHORIZATION' };
  }

  /** Ends the session: releases the maildrop lock without deleting (a drop deletes nothing). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const s = this.state;
    this.state = { name: 'UPDATE' };
    if (s.name === 'TRANSACTION') await s.drop.release();
  }

  private bad(verb: string, text: string): Output {
    this.badCommands++;
    this.last = { verb, outcome: 'err' };
    return { text: err(text) };
  }

  private get mayAuthenticate(): boolean {
    return this.env.tls || this.env.plaintextAllowed;
  }

  /** RFC 2449 §5 CAPA, with the capabilities of RFC 2449 §6, RFC 2595 §4 and RFC 5034 §3. */
  private capa(): Output {
    const caps = ['TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING'];
    if (this.mayAuthenticate) caps.push('USER', 'SASL PLAIN');
    if (this.env.stlsAvailable && !this.env.tls && this.state.name === 'AUTHORIZATION') caps.push('STLS');
    // RFC 2449 §6.7: EXPIRE NEVER: the server never deletes messages on its own.
    caps.push('EXPIRE NEVER', `IMPLEMENTATION ${this.env.implementation ?? 'Tomlinson'}`);
    return { text: multiline(ok('Capability list follows'), caps) };
  }

  private async quit(): Promise<Output> {
    const s = this.state;
    if (s.name !== 'TRANSACTION') {
      this.state = { name: 'UPDATE' };
      this.closed = true;
      return { text: ok('Bye'), then: 'close' };
    }
    // RFC 1939 §6: QUIT in TRANSACTION enters UPDATE: "removes all messages marked as deleted".
    this.state = { name: 'UPDATE' };
    this.closed = true;
    const indexes = [...s.deleted].sort((a, b) => a - b);
    try {
      if (indexes.length > 0) await s.drop.commit(indexes);
    } catch {
      // RFC 1939 §6: "If there is an error, [the server] ... responds with a negative status".
      await s.drop.release().catch(() => undefined);
      return { text: err('Some deleted messages not removed; nothing was deleted', 'SYS/TEMP'), then: 'close' };
    }
    await s.drop.release().catch(() => undefined);
    const left = s.drop.messages.length - indexes.length;
    return { text: ok(`Bye (${left} message${left === 1 ? '' : 's'} left)`), then: 'close' };
  }

  /** RFC 2595 §4: STLS, only in AUTHORIZATION and only once. */
  private stls(): Output {
    if (this.env.tls || !this.env.stlsAvailable) return this.bad('STLS', this.env.tls ? 'Already under TLS' : 'STLS not available');
    return { text: ok('Begin TLS negotiation'), then: 'starttls' };
  }

  private plaintextRefused(): Output {
    // RFC 2595 §2.3 and §4: clear-text passwords only once the connection is secure.
    return { text: err('Plaintext authentication disallowed on non-secure connections; use STLS', 'AUTH') };
  }

  /** RFC 1939 §7 USER. */
  private userCmd(cmd: Command): Output {
    if (this.state.name !== 'AUTHORIZATION') return this.bad('USER', 'Not allowed');
    if (!this.mayAuthenticate) return this.plaintextRefused();
    const name = cmd.rest.trim();
    if (!name) return { text: err('USER needs a name') };
    this.state = { name: 'AUTHORIZATION', user: name };
    return { text: ok('Send your password') };
  }

  /** RFC 1939 §7 PASS: the whole rest of the line is the password (it may hold spaces). */
  private async pass(cmd: Command): Promise<Output> {
    if (this.state.name !== 'AUTHORIZATION') return this.bad('PASS', 'Not allowed');
    if (!this.mayAuthenticate) return this.plaintextRefused();
    const login = this.state.user;
    if (login === undefined) return { text: err('USER first') };
    this.state = { name: 'AUTHORIZATION' };
    return this.login(login, cmd.rest);
  }

  /** RFC 5034 §4 AUTH, with an initial response or the `+ ` continuation. */
  private async auth(cmd: Command): Promise<Output> {
    if (this.state.name !== 'AUTHORIZATION') return this.bad('AUTH', 'Not allowed');
    if (cmd.args.length === 0) {
      // RFC 1734 clients send a bare AUTH to list the mechanisms.
      return { text: multiline(ok('Supported mechanisms follow'), this.mayAuthenticate ? ['PLAIN'] : []) };
    }
    if (!this.mayAuthenticate) return this.plaintextRefused();
    const mech = cmd.args[0]!.toUpperCase();
    if (mech !== 'PLAIN') return { text: err('Unsupported authentication mechanism') };
    if (cmd.args.length > 2) return { text: err('Syntax: AUTH PLAIN [initial-response]') };
    const initial = cmd.args[1];
    if (initial === undefined) {
      this.state = { name: 'AUTHORIZATION', sasl: 'PLAIN' };
      // RFC 5034 §4: an empty challenge is sent as "+ " followed by nothing.
      return { text: '+ \r\n', continuation: true };
    }
    // RFC 5034 §4: "=" is a zero-length initial response.
    return this.plain(initial === '=' ? '' : initial);
  }

  private async saslContinuation(line: string): Promise<Output> {
    this.state = { name: 'AUTHORIZATION' };
    // RFC 5034 §4: "If the client wishes to cancel the authentication exchange, it issues a line
    // with a single '*'. If the server receives such a response, it MUST reject the AUTH command".
    if (line === '*') return { text: err('Authentication cancelled') };
    return this.plain(line);
  }

  /** RFC 4616 §2: message = [authzid] NUL authcid NUL passwd, base64 (RFC 5034 §4). */
  private async plain(b64: string): Promise<Output> {
    const decoded = decodeSaslBase64(b64);
    if (decoded === undefined) return { text: err('Invalid base64 in authentication response') };
    const c = splitPlain(decoded);
    if (!c) return { text: err('Invalid PLAIN authentication response') };
    // We do not let one user act as another: an authzid must name the authenticating user.
    if (actsForAnother(c)) {
      await this.hooks.authFailed?.(c.authcid);
      return { text: err('Authentication failed', 'AUTH') };
    }
    return this.login(c.authcid, c.password);
  }

  /** Checks the credentials, then locks the maildrop (RFC 1939 §7 PASS, RFC 1939 §8). */
  private async login(login: string, password: string): Promise<Output> {
    const user = login && password ? await this.hooks.authenticate(login, password) : undefined;
    if (user === undefined) {
      // RFC 3206 §4 [AUTH]: the same reply whether the user is unknown or the password wrong.
      await this.hooks.authFailed?.(login);
      return { text: err('Authentication failed', 'AUTH') };
    }
    this.hooks.authSucceeded?.(user);
    const drop = await this.hooks.openMaildrop(user);
    if (drop === 'in-use') {
      // RFC 2449 §8.1.1 [IN-USE]: "the maildrop is already locked by another session".
      return { text: err('Maildrop is in use by another session', 'IN-USE') };
    }
    if (drop === 'unavailable') return { text: err('Maildrop temporarily unavailable', 'SYS/TEMP') };
    if (this.closed) {
      // The connection went away while we were opening: give the lock back.
      await drop.release();
      return {};
    }
    this.state = { name: 'TRANSACTION', user, drop, deleted: new Set() };
    // A client that logs in to download starts with RETR 1 (after a LIST or UIDL, say): its
    // response is built ahead like the others' (see idle).
    this.nextRetr = 0;
    const n = drop.messages.length;
    return { text: ok(`Logged in, ${n} message${n === 1 ? '' : 's'} (${totalSize(drop.messages)} octets)`) };
  }

  /** The message at a number given by the client, or the -ERR reply (RFC 1939 §5). */
  private pick(arg: string | undefined): { index: number; message: MaildropMessage } | Output {
    const s = this.state;
    if (s.name !== 'TRANSACTION') return { text: err('Not allowed') };
    const n = parseMessageNumber(arg);
    if (n === undefined) return { text: err('Invalid message number') };
    const message = s.drop.messages[n - 1];
    if (!message) return { text: err('No such message') };
    // RFC 1939 §5: "may NOT refer to a message marked as deleted".
    if (s.deleted.has(n - 1)) return { text: err('Message is deleted') };
    return { index: n - 1, message };
  }

  private live(): { n: number; message: MaildropMessage }[] {
    const s = this.state;
    if (s.name !== 'TRANSACTION') return [];
    const out: { n: number; message: MaildropMessage }[] = [];
    s.drop.messages.forEach((message, i) => {
      if (!s.deleted.has(i)) out.push({ n: i + 1, message });
    });
    return out;
  }

  /** RFC 1939 §5 STAT: "+OK nn mm", deleted messages not counted. */
  private stat(): Output {
    const live = this.live();
    return { text: ok(`${live.length} ${live.reduce((a, m) => a + m.message.size, 0)}`) };
  }

  /** RFC 1939 §5 LIST [msg]. */
  private list(cmd: Command): Output {
    if (cmd.args.length > 1) return { text: err('Syntax: LIST [msg]') };
    if (cmd.args.length === 1) {
      const p = this.pick(cmd.args[0]);
      if (!('index' in p)) return p;
      return { text: ok(`${p.index + 1} ${p.message.size}`) };
    }
    const live = this.live();
    const size = live.reduce((a, m) => a + m.message.size, 0);
    return {
      text: multiline(
        ok(`${live.length} messages (${size} octets)`),
        live.map((m) => `${m.n} ${m.message.size}`),
      ),
    };
  }

  /** RFC 1939 §7 UIDL [msg]. */
  private uidl(cmd: Command): Output {
    if (cmd.args.length > 1) return { text: err('Syntax: UIDL [msg]') };
    if (cmd.args.length === 1) {
      const p = this.pick(cmd.args[0]);
      if (!('index' in p)) return p;
      return { text: ok(`${p.index + 1} ${p.message.uidl}`) };
    }
    return {
      text: multiline(
        ok('Unique-ID listing follows'),
        this.live().map((m) => `${m.n} ${m.message.uidl}`),
      ),
    };
  }

  /** RFC 1939 §5 RETR. */
  private retr(cmd: Command): Output | Promise<Output> {
    if (cmd.args.length !== 1) return { text: err('Syntax: RETR msg') };
    return this.body(cmd.args[0], undefined);
  }

  /** RFC 1939 §7 TOP msg n. */
  private top(cmd: Command): Output | Promise<Output> {
    if (cmd.args.length !== 2) return { text: err('Syntax: TOP msg n') };
    const lines = parseCount(cmd.args[1]);
    if (lines === undefined) return { text: err('Invalid line count') };
    return this.body(cmd.args[0], lines);
  }

  private body(arg: string | undefined, topLines: number | undefined): Output | Promise<Output> {
    const s = this.state;
    const p = this.pick(arg);
    if (!('index' in p) || s.name !== 'TRANSACTION') return p as Output;
    const head = topLines === undefined ? retrHead(p.message.size) : ok('Top of message follows');
    const expectedSize = p.message.size;
    if (topLines === undefined) this.nextRetr = p.index + 1;
    let whole: Buffer | undefined;
    try {
      whole = s.drop.read?.(p.index);
    } catch {
      return unavailable();
    }
    // No closure on this path (one per RETR, and under tsx each also costs a __name call).
    if (whole) return { body: { head, source: whole, topLines, expectedSize } };
    try {
      return s.drop.open(p.index).then((source): Output => ({ body: { head, source, topLines, expectedSize } }), unavailable);
    } catch {
      return unavailable();
    }
  }

  /** RFC 1939 §5 DELE: marks only; removal happens in UPDATE. */
  private dele(cmd: Command): Output {
    const s = this.state;
    if (cmd.args.length !== 1) return { text: err('Syntax: DELE msg') };
    const p = this.pick(cmd.args[0]);
    if (!('index' in p) || s.name !== 'TRANSACTION') return p as Output;
    s.deleted.add(p.index);
    return { text: ok(`Message ${p.index + 1} deleted`) };
  }

  /** RFC 1939 §5 RSET: "any messages that have been marked as deleted ... are unmarked". */
  private rset(): Output {
    const s = this.state;
    if (s.name === 'TRANSACTION') s.deleted.clear();
    const live = this.live();
    return { text: ok(`${live.length} messages (${live.reduce((a, m) => a + m.message.size, 0)} octets)`) };
  }
}

/** RFC 2449 §8.1.2 [SYS/TEMP]: the message could not be read now; a later RETR may work. */
function unavailable(): Output {
  return { text: err('Message temporarily unavailable', 'SYS/TEMP') };
}

/** RFC 1939 §5 RETR: "+OK" and, as is customary, the octet count. */
function retrHead(size: number): string {
  return ok(`${size} octets`);
}

function totalSize(messages: readonly MaildropMessage[]): number {
  let n = 0;
  for (const m of messages) n += m.size;
  return n;
}

export type { ResponseCode };
