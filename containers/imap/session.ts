/**
 * One IMAP conversation (RFC 9051 IMAP4rev2 and RFC 3501 IMAP4rev1): the states of §3 (not
 * authenticated, authenticated, selected, logout), a handler per command, and the untagged
 * updates owed to the client. Framing, literals, TLS and IDLE's waiting live in server.ts; the
 * commands on messages (FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE) in messages.ts; folders and
 * their changes come from FolderStore and the change log through SelectedFolder (selected.ts).
 */
import type { ChangeLog } from '../../core/mailbox/changes.js';
import type { LoginHooks } from '../auth-cache.js';
import { actsForAnother, decodeSaslBase64, splitPlain } from '../sasl.js';
import { DELIMITER, SPECIAL_USES, type FolderInfo, type FolderStore, type SpecialUse } from '../../core/mailbox/folders.js';
import { FolderError, INBOX, QuotaExceeded } from '../../core/mailbox/keys.js';
import type { Blobs } from '../../core/storage/ports.js';
import type { Logger } from '../../core/log.js';
import { listMatcher, nameForClient, nameFromClient } from './names.js';
import { imapString, tagged } from './protocol/encode.js';
import { is, text, type ImapValue } from './protocol/values.js';
import { SelectedFolder } from './selected.js';
import { MessageCommands, type AppendSource } from './messages.js';

/** What the server gives a session for its connection: the password checks (shared with POP3). */
export type SessionHooks = LoginHooks;

/** The storage a session works on. */
export interface SessionServices {
  folders: FolderStore;
  changes: ChangeLog;
  blobs: Blobs;
  log: Logger;
  /** The largest message APPEND takes (APPENDLIMIT, RFC 7889). */
  maxMessageBytes: number;
  /** The user's quota in bytes, 0 for none (QUOTA, RFC 9208). */
  quotaOf(user: string): Promise<number>;
}

/** How the connection is secured and what it allows before TLS. */
export interface SessionTransport {
  tls: boolean;
  starttlsAvailable: boolean;
  /** LOGIN and AUTHENTICATE without TLS (loopback clients, as POP3 allows). */
  plaintextAllowed: boolean;
}

/** Where a session writes: lines and literal bodies, with backpressure for big bodies. */
export interface ImapOutput {
  write(data: string | Buffer): void;
  /** Resolves once the client took what was written (or the connection closed). */
  drained(): Promise<void>;
}

/** What the server does after a command. */
export type Next =
  | { kind: 'done' }
  | { kind: 'logout' }
  | { kind: 'starttls' }
  | { kind: 'idle' }
  /** AUTHENTICATE without an initial response: write `prompt`, hand the client's next line to `onLine` (not `then`: a Next must not be a thenable). */
  | { kind: 'line'; prompt: string; onLine: (line: string) => Promise<Next> };

export type State = 'notAuthenticated' | 'authenticated' | 'selected' | 'logout';

/** A parsed command as the reader hands it over. */
export interface Command {
  tag: string;
  name: string;
  args: ImapValue[];
  /** The APPEND message literal, streamed to storage while it arrived. */
  append?: AppendSource;
}

type Handler = (cmd: Command) => Promise<Next>;

const DONE: Next = { kind: 'done' };

/** An error that becomes the command's tagged NO or BAD. */
export class CommandError extends Error {
  constructor(
    readonly status: 'NO' | 'BAD',
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

export class ImapSession {
  state: State = 'notAuthenticated';
  user = '';
  selected: SelectedFolder | undefined;
  /** ENABLEd extensions (RFC 5161). */
  readonly enabled = new Set<string>();
  /** RFC 7162: the client used a CONDSTORE feature, so MODSEQs go with FLAGS from now on. */
  condstore = false;
  /** Tagged BAD replies so far (the listener closes after too many in a row). */
  badReplies = 0;
  /** The tag of the command running (IDLE answers with it at DONE). */
  lastTag = '';
  /** RFC 5182 SEARCHRES: the UIDs a `SEARCH RETURN (SAVE)` kept, for `$`. */
  savedSearch: number[] | undefined;
  private readonly handlers: Record<string, { states: State[]; run: Handler }>;
  readonly messages: MessageCommands;

  constructor(
    readonly services: SessionServices,
    private readonly hooks: SessionHooks,
    private transport: SessionTransport,
    readonly out: ImapOutput,
  ) {
    this.messages = new MessageCommands(this);
    const any: State[] = ['notAuthenticated', 'authenticated', 'selected'];
    const pre: State[] = ['notAuthenticated'];
    const auth: State[] = ['authenticated', 'selected'];
    const sel: State[] = ['selected'];
    const m = this.messages;
    this.handlers = {
      CAPABILITY: { states: any, run: (c) => this.capability(c) },
      NOOP: { states: any, run: (c) => this.noop(c) },
      LOGOUT: { states: any, run: (c) => this.logout(c) },
      ID: { states: any, run: (c) => this.id(c) },
      STARTTLS: { states: pre, run: (c) => this.starttls(c) },
      LOGIN: { states: pre, run: (c) => this.login(c) },
      AUTHENTICATE: { states: pre, run: (c) => this.authenticate(c) },
      ENABLE: { states: auth, run: (c) => this.enable(c) },
      SELECT: { states: auth, run: (c) => this.select(c, false) },
      EXAMINE: { states: auth, run: (c) => this.select(c, true) },
      CREATE: { states: auth, run: (c) => this.create(c) },
      DELETE: { states: auth, run: (c) => this.delete(c) },
      RENAME: { states: auth, run: (c) => this.rename(c) },
      SUBSCRIBE: { states: auth, run: (c) => this.subscribe(c, true) },
      UNSUBSCRIBE: { states: auth, run: (c) => this.subscribe(c, false) },
      LIST: { states: auth, run: (c) => this.list(c, false) },
      LSUB: { states: auth, run: (c) => this.list(c, true) },
      NAMESPACE: { states: auth, run: (c) => this.namespace(c) },
      STATUS: { states: auth, run: (c) => this.status(c) },
      APPEND: { states: auth, run: (c) => m.append(c) },
      IDLE: { states: auth, run: async () => ({ kind: 'idle' }) },
      GETQUOTA: { states: auth, run: (c) => this.getQuota(c, false) },
      GETQUOTAROOT: { states: auth, run: (c) => this.getQuota(c, true) },
      CHECK: { states: sel, run: (c) => this.noop(c) },
      CLOSE: { states: sel, run: (c) => this.close(c, true) },
      UNSELECT: { states: sel, run: (c) => this.close(c, false) },
      EXPUNGE: { states: sel, run: (c) => m.expunge(c, undefined) },
      FETCH: { states: sel, run: (c) => m.fetch(c, false) },
      STORE: { states: sel, run: (c) => m.store(c, false) },
      COPY: { states: sel, run: (c) => m.copy(c, false, false) },
      MOVE: { states: sel, run: (c) => m.copy(c, false, true) },
      SEARCH: { states: sel, run: (c) => m.search(c, false) },
      SORT: { states: sel, run: (c) => m.sort(c, false) },
      UID: { states: sel, run: (c) => m.uid(c) },
    };
  }

  /** The first line (RFC 9051 §7.1.1: an OK greeting with the capabilities). */
  greeting(): string {
    return `* OK [CAPABILITY ${this.capabilities()}] Tomlinson IMAP ready\r\n`;
  }

  /** The client sent a command: run it and answer. */
  async run(cmd: Command): Promise<Next> {
    this.lastTag = cmd.tag;
    const h = this.handlers[cmd.name];
    if (!h) {
      cmd.append?.discard();
      return this.fail(cmd.tag, new CommandError('BAD', `Unknown command ${cmd.name.slice(0, 40)}`));
    }
    if (!h.states.includes(this.state)) {
      cmd.append?.discard();
      const why = this.state === 'notAuthenticated' ? 'Log in first' : this.state === 'authenticated' ? 'Select a folder first' : 'Not allowed now';
      return this.fail(cmd.tag, new CommandError('BAD', `${cmd.name}: ${why}`));
    }
    try {
      return await h.run(cmd);
    } catch (e) {
      return this.fail(cmd.tag, e);
    }
  }

  private fail(tag: string, e: unknown): Next {
    if (e instanceof CommandError && e.status === 'BAD') this.badReplies++;
    if (e instanceof CommandError) {
      this.out.write(tagged(tag, e.status, e.message, e.code));
    } else if (e instanceof FolderError) {
      const code = { NoSuchFolder: 'NONEXISTENT', AlreadyExists: 'ALREADYEXISTS', HasChildren: 'HASCHILDREN', BadName: 'CANNOT', Refused: 'CANNOT' }[e.code];
      this.out.write(tagged(tag, 'NO', e.message, code));
    } else if (e instanceof QuotaExceeded) {
      this.out.write(tagged(tag, 'NO', 'Over quota', 'OVERQUOTA'));
    } else {
      this.services.log.warn({ err: (e as Error).message, user: this.user }, 'IMAP command failed');
      this.out.write(tagged(tag, 'NO', 'Server error, try again', 'SERVERBUG'));
    }
    return DONE;
  }

  /** TLS is up after STARTTLS (RFC 9051 §6.2.1: the client asks for the capabilities again). */
  tlsStarted(): void {
    this.transport = { ...this.transport, tls: true, starttlsAvailable: false };
  }

  /** True for clients that speak IMAP4rev2 or ENABLEd UTF8=ACCEPT: names and strings in UTF-8. */
  get utf8(): boolean {
    return this.enabled.has('IMAP4REV2') || this.enabled.has('UTF8=ACCEPT');
  }

  get rev2(): boolean {
    return this.enabled.has('IMAP4REV2');
  }

  get qresync(): boolean {
    return this.enabled.has('QRESYNC');
  }

  capabilities(): string {
    const caps = ['IMAP4rev1', 'IMAP4rev2', 'LITERAL+', 'SASL-IR', 'ID', 'ENABLE', 'IDLE', 'NAMESPACE'];
    if (this.state === 'notAuthenticated') {
      if (this.transport.starttlsAvailable) caps.push('STARTTLS');
      if (this.transport.tls || this.transport.plaintextAllowed) caps.push('AUTH=PLAIN', 'AUTH=LOGIN');
      else caps.push('LOGINDISABLED');
      return caps.join(' ');
    }
    caps.push(
      'UIDPLUS',
      'MOVE',
      'UNSELECT',
      'CHILDREN',
      'SPECIAL-USE',
      'LIST-EXTENDED',
      'LIST-STATUS',
      'STATUS=SIZE',
      'CONDSTORE',
      'QRESYNC',
      'ESEARCH',
      'SEARCHRES',
      'SORT',
      'SORT=DISPLAY',
      'QUOTA',
      'QUOTA=RES-STORAGE',
      'UTF8=ACCEPT',
      `APPENDLIMIT=${this.services.maxMessageBytes}`,
    );
    return caps.join(' ');
  }

  /** Writes the untagged updates the client may be told now (after a refresh of the view). */
  async flushUpdates(allowExpunge: boolean, refresh = true): Promise<void> {
    const view = this.selected;
    if (!view) return;
    if (refresh) await view.refresh();
    for (const line of view.updates(allowExpunge, { condstore: this.condstore, qresync: this.qresync })) this.out.write(line);
  }

  /** The OK after a command, with the updates RFC 9051 §7 allows at its end. */
  async ok(tag: string, textLine: string, options: { code?: string; allowExpunge?: boolean; refresh?: boolean } = {}): Promise<Next> {
    await this.flushUpdates(options.allowExpunge ?? true, options.refresh ?? false);
    this.out.write(tagged(tag, 'OK', textLine, options.code));
    return DONE;
  }

  // ------------------------------------------------------------------------------------------
  // Any state

  private async capability(c: Command): Promise<Next> {
    this.out.write(`* CAPABILITY ${this.capabilities()}\r\n`);
    return this.ok(c.tag, 'CAPABILITY completed');
  }

  private async noop(c: Command): Promise<Next> {
    return this.ok(c.tag, `${c.name} completed`, { refresh: true });
  }

  private async logout(c: Command): Promise<Next> {
    this.out.write('* BYE Logging out\r\n');
    this.out.write(tagged(c.tag, 'OK', 'LOGOUT completed'));
    this.state = 'logout';
    return { kind: 'logout' };
  }

  /** RFC 2971: our name; the client's is logged. */
  private async id(c: Command): Promise<Next> {
    const params = c.args[0];
    if (Array.isArray(params)) {
      const pairs: Record<string, string> = {};
      for (let i = 0; i + 1 < params.length && i < 60; i += 2)
        pairs[String(text(params[i]) ?? '').slice(0, 30)] = String(text(params[i + 1]) ?? '').slice(0, 200);
      this.services.log.debug({ id: pairs }, 'IMAP client ID');
    }
    this.out.write('* ID ("name" "Tomlinson" "vendor" "Tomlinson")\r\n');
    return this.ok(c.tag, 'ID completed');
  }

  // ------------------------------------------------------------------------------------------
  // Not authenticated

  private async starttls(c: Command): Promise<Next> {
    if (!this.transport.starttlsAvailable) throw new CommandError('BAD', this.transport.tls ? 'TLS is already on' : 'STARTTLS is not offered here');
    this.out.write(tagged(c.tag, 'OK', 'Begin TLS negotiation now'));
    return { kind: 'starttls' };
  }

  private requireSecure(): void {
    if (!this.transport.tls && !this.transport.plaintextAllowed)
      throw new CommandError('NO', 'Use STARTTLS (or port 993) before logging in', 'PRIVACYREQUIRED');
  }

  private async login(c: Command): Promise<Next> {
    this.requireSecure();
    const login = text(c.args[0]);
    const password = text(c.args[1]);
    if (login === undefined || password === undefined || c.args.length !== 2) throw new CommandError('BAD', 'LOGIN needs a user name and a password');
    return this.finishLogin(c.tag, login, password);
  }

  private async finishLogin(tag: string, login: string, password: string): Promise<Next> {
    const user = await this.hooks.authenticate(login, password);
    if (!user) {
      await this.hooks.authFailed(login);
      throw new CommandError('NO', 'Wrong user name or password', 'AUTHENTICATIONFAILED');
    }
    this.hooks.authSucceeded(user);
    this.user = user;
    this.state = 'authenticated';
    this.out.write(tagged(tag, 'OK', 'Logged in', `CAPABILITY ${this.capabilities()}`));
    return DONE;
  }

  /** RFC 9051 §6.2.2 with PLAIN (RFC 4616) and LOGIN; SASL-IR (RFC 4959) initial responses. */
  private async authenticate(c: Command): Promise<Next> {
    this.requireSecure();
    const mech = text(c.args[0])?.toUpperCase();
    const initial = text(c.args[1]);
    if (mech === 'PLAIN') {
      const onResponse = async (line: string): Promise<Next> => {
        if (line === '*') throw new CommandError('BAD', 'Authentication cancelled');
        const decoded = line === '=' ? '' : decodeSaslBase64(line);
        const plain = decoded === undefined ? undefined : splitPlain(decoded);
        if (!plain) throw new CommandError('BAD', 'Malformed PLAIN response');
        if (actsForAnother(plain)) throw new CommandError('NO', 'Acting for another user is not allowed', 'AUTHORIZATIONFAILED');
        return this.finishLogin(c.tag, plain.authcid, plain.password);
      };
      if (initial !== undefined) return onResponse(initial);
      return { kind: 'line', prompt: '+ \r\n', onLine: (line) => onResponse(line).catch((e) => this.fail(c.tag, e)) };
    }
    if (mech === 'LOGIN') {
      const askPassword = (login: string): Next => ({
        kind: 'line',
        prompt: `+ ${Buffer.from('Password:').toString('base64')}\r\n`,
        onLine: async (line) => {
          if (line === '*') return this.fail(c.tag, new CommandError('BAD', 'Authentication cancelled'));
          const password = decodeSaslBase64(line);
          if (password === undefined) return this.fail(c.tag, new CommandError('BAD', 'Malformed LOGIN response'));
          return this.finishLogin(c.tag, login, password).catch((e) => this.fail(c.tag, e));
        },
      });
      const withLogin = (line: string): Next => {
        if (line === '*') return this.fail(c.tag, new CommandError('BAD', 'Authentication cancelled'));
        const login = decodeSaslBase64(line);
        return login === undefined ? this.fail(c.tag, new CommandError('BAD', 'Malformed LOGIN response')) : askPassword(login);
      };
      if (initial !== undefined) return withLogin(initial);
      return { kind: 'line', prompt: `+ ${Buffer.from('Username:').toString('base64')}\r\n`, onLine: async (line) => withLogin(line) };
    }
    throw new CommandError('NO', `Mechanism ${String(mech ?? '').slice(0, 20)} is not supported (PLAIN, LOGIN)`, 'CANNOT');
  }

  // ------------------------------------------------------------------------------------------
  // Authenticated

  private async enable(c: Command): Promise<Next> {
    const known = ['IMAP4REV2', 'CONDSTORE', 'QRESYNC', 'UTF8=ACCEPT'];
    const now: string[] = [];
    for (const a of c.args) {
      const name = text(a)?.toUpperCase();
      if (!name || !known.includes(name) || this.enabled.has(name)) continue;
      this.enabled.add(name);
      now.push(name);
      if (name === 'QRESYNC') this.enabled.add('CONDSTORE');
      if (name === 'QRESYNC' || name === 'CONDSTORE') this.condstore = true;
    }
    this.out.write(`* ENABLED${now.map((n) => ` ${n}`).join('')}\r\n`);
    return this.ok(c.tag, 'ENABLE completed');
  }

  /** The folder a client names, or NO [NONEXISTENT]. */
  async folderNamed(raw: ImapValue | undefined): Promise<FolderInfo> {
    const name = this.clientName(raw);
    const folder = await this.findFolder(name);
    if (!folder) throw new CommandError('NO', `No folder ${name}`, 'NONEXISTENT');
    return folder;
  }

  /**
   * The folder with this name. The special-use folders are made at first use: a client that
   * files into `Sent` or `Trash` before it ever listed finds them (RFC 6154 clients often do).
   */
  async findFolder(name: string): Promise<FolderInfo | undefined> {
    const found = await this.services.folders.find(this.user, name);
    if (found) return found;
    const use = (Object.keys(SPECIAL_USES) as SpecialUse[]).find((u) => SPECIAL_USES[u] === name);
    return use ? this.services.folders.ensureSpecialUse(this.user, use) : undefined;
  }

  /** A folder name argument, decoded; BAD when it is not one. */
  clientName(raw: ImapValue | undefined): string {
    const t = text(raw);
    const name = t === undefined ? undefined : nameFromClient(t, this.utf8);
    if (name === undefined) throw new CommandError('BAD', 'Invalid folder name');
    return name;
  }

  private async select(c: Command, readOnly: boolean): Promise<Next> {
    // A failed SELECT leaves no folder selected (RFC 9051 §6.3.2).
    if (this.selected) {
      this.selected = undefined;
      this.state = 'authenticated';
      if (this.qresync) this.out.write('* OK [CLOSED] Previous folder closed\r\n');
    }
    const folder = await this.folderNamed(c.args[0]);
    let qresync: ImapValue[] | undefined;
    const params = Array.isArray(c.args[1]) ? c.args[1] : [];
    for (let i = 0; i < params.length; i++) {
      if (is(params[i], 'CONDSTORE')) this.condstore = true;
      else if (is(params[i], 'QRESYNC')) {
        if (!this.qresync) throw new CommandError('BAD', 'ENABLE QRESYNC first');
        const q = params[i + 1];
        if (!Array.isArray(q)) throw new CommandError('BAD', 'QRESYNC needs (uidvalidity modseq [known-uids])');
        qresync = q;
      }
    }
    const view = await SelectedFolder.open(this.services.folders, this.services.changes, this.user, folder, readOnly);
    const flags = '(\\Answered \\Flagged \\Deleted \\Seen \\Draft)';
    this.out.write(`* ${view.exists} EXISTS\r\n`);
    if (!this.rev2) this.out.write('* 0 RECENT\r\n');
    this.out.write(`* FLAGS ${flags}\r\n`);
    this.out.write(`* OK [PERMANENTFLAGS ${readOnly ? '()' : '(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)'}] Flags permitted\r\n`);
    if (!this.rev2) {
      const firstUnseen = view.allUids.findIndex((u) => !view.entry(u)!.flags.includes('\\Seen'));
      if (firstUnseen >= 0) this.out.write(`* OK [UNSEEN ${firstUnseen + 1}] First unseen\r\n`);
    }
    this.out.write(`* OK [UIDVALIDITY ${view.uidValidity}] UIDs valid\r\n`);
    this.out.write(`* OK [UIDNEXT ${view.uidNext}] Predicted next UID\r\n`);
    if (this.condstore) this.out.write(`* OK [HIGHESTMODSEQ ${view.highestModSeq}] Highest\r\n`);
    if (this.rev2) this.out.write(`* LIST () "${DELIMITER}" ${imapString(nameForClient(folder.name, true), true)}\r\n`);
    this.selected = view;
    this.state = 'selected';
    if (qresync) await this.messages.qresyncSelect(view, qresync);
    this.out.write(tagged(c.tag, 'OK', `${readOnly ? 'EXAMINE' : 'SELECT'} completed`, readOnly ? 'READ-ONLY' : 'READ-WRITE'));
    return DONE;
  }

  private async close(c: Command, expunge: boolean): Promise<Next> {
    const view = this.selected!;
    // CLOSE expunges silently (RFC 9051 §6.4.1); UNSELECT does not.
    if (expunge && !view.readOnly) await this.messages.expungeDeleted(view, undefined);
    this.selected = undefined;
    this.state = 'authenticated';
    this.out.write(tagged(c.tag, 'OK', `${c.name} completed`));
    return DONE;
  }

  private async create(c: Command): Promise<Next> {
    let name = this.clientName(c.args[0]);
    if (name.endsWith(DELIMITER)) name = name.slice(0, -DELIMITER.length); // RFC 9051 §6.3.4: a trailing delimiter only says "will have children"
    let specialUse: SpecialUse | undefined;
    // RFC 6154 §3: CREATE name (USE (\Sent)).
    const opts = c.args[1];
    if (Array.isArray(opts) && is(opts[0], 'USE') && Array.isArray(opts[1])) {
      const use = text(opts[1][0]);
      const known = Object.keys(SPECIAL_USES).find((k) => k.toLowerCase() === use?.toLowerCase()) as SpecialUse | undefined;
      if (!known) throw new CommandError('NO', `Special use ${use ?? ''} is not supported`, 'USEATTR');
      specialUse = known;
    }
    await this.services.folders.create(this.user, name, specialUse ? { specialUse } : {});
    return this.ok(c.tag, 'CREATE completed');
  }

  private async delete(c: Command): Promise<Next> {
    const folder = await this.folderNamed(c.args[0]);
    if (folder.id === INBOX) throw new CommandError('NO', 'INBOX cannot be deleted', 'CANNOT');
    if (this.selected?.folder.id === folder.id) {
      this.selected = undefined;
      this.state = 'authenticated';
    }
    await this.services.folders.delete(this.user, folder.id);
    return this.ok(c.tag, 'DELETE completed');
  }

  private async rename(c: Command): Promise<Next> {
    const folder = await this.folderNamed(c.args[0]);
    const to = this.clientName(c.args[1]);
    if (folder.id === INBOX) {
      // RFC 9051 §6.3.6: renaming INBOX moves its messages into a new folder; INBOX stays.
      const target = await this.services.folders.create(this.user, to);
      const uids: number[] = [];
      for await (const m of this.services.folders.entries(this.user, INBOX)) uids.push(m.uid);
      if (uids.length) await this.services.folders.move(this.user, INBOX, uids, target.id);
      return this.ok(c.tag, 'RENAME completed');
    }
    await this.services.folders.rename(this.user, folder.id, to);
    return this.ok(c.tag, 'RENAME completed');
  }

  private async subscribe(c: Command, on: boolean): Promise<Next> {
    const folder = await this.folderNamed(c.args[0]);
    await this.services.folders.subscribe(this.user, folder.id, on);
    return this.ok(c.tag, `${c.name} completed`);
  }

  /**
   * LIST and LSUB (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154
   * SPECIAL-USE): selection options SUBSCRIBED, SPECIAL-USE, RECURSIVEMATCH; return options
   * SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS.
   */
  private async list(c: Command, lsub: boolean): Promise<Next> {
    const args = [...c.args];
    const select = new Set<string>();
    if (!lsub && Array.isArray(args[0])) for (const o of args.shift() as ImapValue[]) select.add(String(text(o)).toUpperCase());
    const reference = text(args.shift());
    const patternArg = args.shift();
    const patterns = Array.isArray(patternArg) ? patternArg.map((p) => text(p)) : [text(patternArg)];
    if (reference === undefined || patterns.some((p) => p === undefined)) throw new CommandError('BAD', 'LIST needs a reference and a mailbox pattern');
    const returns = new Set<string>();
    let statusItems: ImapValue[] | undefined;
    if (is(args[0], 'RETURN') && Array.isArray(args[1])) {
      const r = args[1];
      for (let i = 0; i < r.length; i++) {
        const name = String(text(r[i]) ?? '').toUpperCase();
        if (name === 'STATUS' && Array.isArray(r[i + 1])) statusItems = r[++i] as ImapValue[];
        else returns.add(name);
      }
    }
    const ref = nameFromClient(reference, this.utf8) ?? '';
    // `LIST "" ""`: the delimiter and root (RFC 9051 §6.3.9).
    if (patterns.length === 1 && patterns[0] === '') {
      this.out.write(`* ${lsub ? 'LSUB' : 'LIST'} (\\Noselect) "${DELIMITER}" ""\r\n`);
      return this.ok(c.tag, `${c.name} completed`);
    }
    const matchers = (patterns as string[]).map((p) => listMatcher(ref, this.utf8 ? p : (nameFromClient(p, false) ?? p)));
    const all = await this.services.folders.listWithSpecialUse(this.user);
    const names = new Set(all.map((f) => f.name));
    const subscribedOnly = lsub || select.has('SUBSCRIBED');
    const specialOnly = select.has('SPECIAL-USE');
    const verb = lsub ? 'LSUB' : 'LIST';
    for (const f of all) {
      if (!matchers.some((m) => m(f.name))) continue;
      if (subscribedOnly && !f.subscribed) continue;
      if (specialOnly && !f.specialUse) continue;
      const attrs: string[] = [];
      const hasChildren = [...names].some((n) => n.startsWith(f.name + DELIMITER));
      attrs.push(hasChildren ? '\\HasChildren' : '\\HasNoChildren');
      if ((subscribedOnly || returns.has('SUBSCRIBED')) && f.subscribed && !lsub) attrs.push('\\Subscribed');
      if (f.specialUse && !lsub) attrs.push(f.specialUse);
      const shown = nameForClient(f.name, this.utf8);
      this.out.write(`* ${verb} (${attrs.join(' ')}) "${DELIMITER}" ${imapString(shown, this.utf8)}\r\n`);
      if (statusItems && !lsub) {
        try {
          this.out.write(await this.statusLine(f, statusItems));
        } catch {
          // RFC 5819 §2: a folder whose status cannot be had is listed without it.
        }
      }
    }
    return this.ok(c.tag, `${c.name} completed`);
  }

  private async namespace(c: Command): Promise<Next> {
    this.out.write(`* NAMESPACE (("" "${DELIMITER}")) NIL NIL\r\n`);
    return this.ok(c.tag, 'NAMESPACE completed');
  }

  private async status(c: Command): Promise<Next> {
    const folder = await this.folderNamed(c.args[0]);
    const items = c.args[1];
    if (!Array.isArray(items) || !items.length) throw new CommandError('BAD', 'STATUS needs a list of items');
    this.out.write(await this.statusLine(folder, items));
    return this.ok(c.tag, 'STATUS completed');
  }

  /** One `* STATUS` line (RFC 9051 §7.2.4; SIZE RFC 8438; HIGHESTMODSEQ RFC 7162). */
  private async statusLine(folder: FolderInfo, items: ImapValue[]): Promise<string> {
    const s = await this.services.folders.status(this.user, folder.id);
    const out: string[] = [];
    for (const item of items) {
      const name = String(text(item) ?? '').toUpperCase();
      switch (name) {
        case 'MESSAGES':
          out.push(`MESSAGES ${s.count}`);
          break;
        case 'UIDNEXT':
          out.push(`UIDNEXT ${s.uidNext}`);
          break;
        case 'UIDVALIDITY':
          out.push(`UIDVALIDITY ${s.uidValidity}`);
          break;
        case 'UNSEEN':
          out.push(`UNSEEN ${s.unseen}`);
          break;
        case 'RECENT':
          out.push('RECENT 0');
          break;
        case 'SIZE':
          out.push(`SIZE ${s.bytes}`);
          break;
        case 'HIGHESTMODSEQ':
          this.condstore = true;
          out.push(`HIGHESTMODSEQ ${s.highestModSeq}`);
          break;
        case 'DELETED': {
          let deleted = 0;
          for await (const m of this.services.folders.entries(this.user, folder.id)) if (m.flags.includes('\\Deleted')) deleted++;
          out.push(`DELETED ${deleted}`);
          break;
        }
        default:
          throw new CommandError('BAD', `Unknown STATUS item ${name.slice(0, 30)}`);
      }
    }
    return `* STATUS ${imapString(nameForClient(folder.name, this.utf8), this.utf8)} (${out.join(' ')})\r\n`;
  }

  /** RFC 9208: one quota root per user, "", over every folder, in KiB (STORAGE). */
  private async getQuota(c: Command, byFolder: boolean): Promise<Next> {
    if (byFolder) {
      const folder = await this.folderNamed(c.args[0]);
      this.out.write(`* QUOTAROOT ${imapString(nameForClient(folder.name, this.utf8), this.utf8)} ""\r\n`);
    } else if (text(c.args[0]) !== '') {
      throw new CommandError('NO', 'No such quota root; the only one is ""', 'NONEXISTENT');
    }
    const quota = await this.services.quotaOf(this.user);
    if (quota > 0) {
      const used = await this.services.folders.usage(this.user);
      this.out.write(`* QUOTA "" (STORAGE ${Math.ceil(used.bytes / 1024)} ${Math.ceil(quota / 1024)})\r\n`);
    } else if (!byFolder) {
      this.out.write('* QUOTA "" ()\r\n');
    }
    return this.ok(c.tag, `${c.name} completed`);
  }
}
