/**
 * Identity (RFC 8621 §6) and EmailSubmission (§7). An identity is an address the user may send
 * as: their own and each alias that leads to them (what the submission listener allows as MAIL
 * FROM, Accounts.canSendAs), plus any the user creates for one of those addresses with another
 * name or signature. A submission sends an existing Email's raw message through the submission
 * listener's own hooks (containers/smtp/policy.ts: MAIL FROM, RCPT TO, then the spool), so it is
 * queued, relayed and DKIM-signed exactly as mail sent over SMTP AUTH; its record (which queue
 * message, which envelope) is kept in Tables with a TTL, and its undo and delivery status are
 * read from the outbound queue's state.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { Accounts } from '../../../core/accounts/accounts.js';
import type { DsnRecipient } from '../../../core/mail/jobs.js';
import { QueueAdminError, OutboundQueueAdmin } from '../../../core/mail/outbound-admin.js';
import { isPending, OutboundStore, type RcptRecord } from '../../../core/mail/outbound-store.js';
import { withoutBcc } from '../../../core/mail/bcc.js';
import { withoutReturnPath } from '../../../core/mail/return-path.js';
import { readHeaders } from '../../../core/mail/vacation.js';
import { MailboxStore } from '../../../core/mailbox/store.js';
import type { Item, Tables } from '../../../core/storage/ports.js';
import addressparser from 'nodemailer/lib/addressparser/index.js';
import { createHooks } from '../../smtp/policy.js';
import { ReplyError } from '../../smtp/protocol/command.js';
import type { SessionInfo, Transaction } from '../../smtp/session.js';
import { setResponse } from './engine.js';
import { MethodError, type JmapContext, type JmapMethods, type JsonObject, type SetError } from './types.js';

/** RFC 8621 §1.3.2. */
export const SUBMISSION_CAPABILITY = 'urn:ietf:params:jmap:submission';

/** How long a submission record is kept (RFC 8621 §7: the server may forget old submissions). */
export const SUBMISSION_TTL_SECONDS = 7 * 86400;
/** Most records one /changes or /query reads (the user's whole list, bounded by the TTL). */
const MAX_RECORDS = 5000;

// ---------------------------------------------------------------------------------------------
// A per-user list of records with a revision counter: the state string and /changes of both types.

interface Rec {
  id: string;
  createdRev: number;
  rev: number;
  destroyed?: boolean;
  data: JsonObject;
}

/** Records of one kind for one user: `<kind>#<user>` / `R#<id>`, and the counter at `STATE`. */
class RecordList {
  constructor(
    private readonly tables: Tables,
    private readonly pk: string,
    private readonly ttlSeconds?: number,
  ) {}

  async state(): Promise<number> {
    return Number((await this.tables.get({ pk: this.pk, sk: 'STATE' }))?.rev ?? 0);
  }

  async all(): Promise<Rec[]> {
    const out: Rec[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.tables.query(this.pk, { range: { beginsWith: 'R#' }, limit: 500, cursor });
      for (const it of page.items) out.push(toRec(it));
      cursor = page.cursor;
    } while (cursor && out.length < MAX_RECORDS);
    return out;
  }

  async get(id: string): Promise<Rec | undefined> {
    const it = await this.tables.get({ pk: this.pk, sk: `R#${id}` });
    return it ? toRec(it) : undefined;
  }

  /** Writes the record at a new revision; returns it. `knownSince`: the revision the object
   * counts as created at when this is its first record (0: it existed before any record). */
  async put(id: string, data: JsonObject, now: Date, options: { created?: boolean; destroyed?: boolean; knownSince?: number } = {}): Promise<Rec> {
    const rev = Number((await this.tables.update({ pk: this.pk, sk: 'STATE' }, { add: { rev: 1 } })).rev);
    const old = options.created ? undefined : await this.get(id);
    const rec: Rec = { id, createdRev: old?.createdRev ?? options.knownSince ?? rev, rev, data, ...(options.destroyed ? { destroyed: true } : {}) };
    await this.tables.put({
      pk: this.pk,
      sk: `R#${id}`,
      createdRev: rec.createdRev,
      rev,
      destroyed: rec.destroyed ?? false,
      data: JSON.stringify(data),
      ...(this.ttlSeconds ? { ttl: Math.floor(now.getTime() / 1000) + this.ttlSeconds } : {}),
    });
    return rec;
  }
}

function toRec(it: Item): Rec {
  return {
    id: it.sk.slice(2),
    createdRev: Number(it.createdRev),
    rev: Number(it.rev),
    destroyed: it.destroyed === true,
    data: JSON.parse(String(it.data)) as JsonObject,
  };
}

/** RFC 8620 §5.2 /changes over a RecordList. `floor`: the oldest state still answerable. */
async function changes(list: RecordList, args: JsonObject, ctx: JmapContext, parse: (s: string) => number | undefined): Promise<JsonObject> {
  if (typeof args.sinceState !== 'string') throw new MethodError('invalidArguments', 'sinceState is required');
  const since = parse(args.sinceState);
  if (since === undefined) throw new MethodError('cannotCalculateChanges');
  const max = args.maxChanges === undefined || args.maxChanges === null ? Infinity : Number(args.maxChanges);
  if (!(max > 0)) throw new MethodError('invalidArguments', 'maxChanges must be a positive integer');
  const current = await list.state();
  if (since > current) throw new MethodError('cannotCalculateChanges', 'state from the future');
  const changed = (await list.all()).filter((r) => r.rev > since && !(r.destroyed && r.createdRev > since)).sort((a, b) => a.rev - b.rev);
  const taken = changed.slice(0, Number.isFinite(max) ? max : undefined);
  const hasMoreChanges = taken.length < changed.length;
  const newRev = hasMoreChanges ? taken[taken.length - 1].rev : current;
  return {
    accountId: ctx.accountId,
    oldState: args.sinceState,
    newState: String(newRev),
    hasMoreChanges,
    created: taken.filter((r) => !r.destroyed && r.createdRev > since).map((r) => r.id),
    updated: taken.filter((r) => !r.destroyed && r.createdRev <= since).map((r) => r.id),
    destroyed: taken.filter((r) => r.destroyed).map((r) => r.id),
  };
}

const intState = (s: string): number | undefined => (/^\d{1,15}$/.test(s) ? Number(s) : undefined);

function idsArg(args: JsonObject): string[] | null {
  const ids = args.ids;
  if (ids === undefined || ids === null) return null;
  if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string')) throw new MethodError('invalidArguments', 'ids must be a list of ids or null');
  return ids as string[];
}

function pick(o: JsonObject, properties: unknown, all: readonly string[]): JsonObject {
  if (properties === undefined || properties === null) return o;
  if (!Array.isArray(properties) || properties.some((p) => typeof p !== 'string' || !all.includes(p)))
    throw new MethodError('invalidArguments', 'unknown properties');
  return Object.fromEntries(Object.entries(o).filter(([k]) => k === 'id' || (properties as string[]).includes(k)));
}

function setObject(args: JsonObject, name: string): JsonObject {
  const v = args[name];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new MethodError('invalidArguments', `${name} must be an object`);
  return v as JsonObject;
}

// ---------------------------------------------------------------------------------------------
// Identity (RFC 8621 §6)

const IDENTITY_PROPERTIES = ['id', 'name', 'email', 'replyTo', 'bcc', 'textSignature', 'htmlSignature', 'mayDelete'] as const;

/** The identity of an address the user may send as: `I` + 24 hex of sha256(address). */
export function identityIdOf(address: string): string {
  return `I${createHash('sha256').update(address.toLowerCase()).digest('hex').slice(0, 24)}`;
}

const identities = (ctx: JmapContext) => new RecordList(ctx.storage.tables, `IDENT#${ctx.user}`);

/** Every address the user may send as: their own and each alias (not a catch-all) leading to it. */
async function sendableAddresses(ctx: JmapContext): Promise<string[]> {
  const accounts = new Accounts(ctx.storage.tables);
  const out = [ctx.user];
  for (const a of await accounts.listAliases()) {
    if (a.address.startsWith('@') || a.address === ctx.user) continue;
    if (await accounts.canSendAs(ctx.user, a.address)) out.push(a.address);
  }
  return out;
}

/**
 * The Identity state: the revision of the user's stored identities, and a short hash of the
 * addresses they may send as, since an alias made or removed with the CLI adds or takes away an
 * identity without touching the stored ones. A state whose addresses differ from today's answers
 * /changes with cannotCalculateChanges (RFC 8620 §5.2 allows it), so the client fetches again.
 */
async function identityState(ctx: JmapContext): Promise<string> {
  const addresses = (await sendableAddresses(ctx)).sort().join('\n');
  return `${await identities(ctx).state()}.${createHash('sha256').update(addresses).digest('hex').slice(0, 8)}`;
}

async function identityChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const [rev, addresses] = typeof args.sinceState === 'string' ? args.sinceState.split('.') : [];
  const now = await identityState(ctx);
  if (typeof args.sinceState === 'string' && addresses !== now.split('.')[1])
    throw new MethodError('cannotCalculateChanges', 'the addresses you may send as changed');
  const r = await changes(identities(ctx), { ...args, ...(rev === undefined ? {} : { sinceState: rev }) }, ctx, intState);
  return { ...r, oldState: args.sinceState, newState: `${String(r.newState)}.${addresses}` };
}

/** The user's identities: stored ones (edited or created), then one per remaining address. */
async function identityList(ctx: JmapContext): Promise<JsonObject[]> {
  const stored = await identities(ctx).all();
  const byId = new Map(stored.map((r) => [r.id, r]));
  const out: JsonObject[] = [];
  for (const email of await sendableAddresses(ctx)) {
    const id = identityIdOf(email);
    const r = byId.get(id);
    if (r?.destroyed) continue;
    out.push({ id, name: '', email, replyTo: null, bcc: null, textSignature: '', htmlSignature: '', ...(r?.data ?? {}), mayDelete: false });
  }
  for (const r of stored) {
    if (r.destroyed || out.some((i) => i.id === r.id)) continue;
    // A created identity whose address the user may no longer use is not offered.
    if (!(await new Accounts(ctx.storage.tables).canSendAs(ctx.user, String(r.data.email)))) continue;
    out.push({ id: r.id, name: '', replyTo: null, bcc: null, textSignature: '', htmlSignature: '', ...r.data, mayDelete: true });
  }
  return out;
}

async function identityGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const ids = idsArg(args);
  const all = await identityList(ctx);
  const list = ids === null ? all : all.filter((i) => ids.includes(String(i.id)));
  return {
    accountId: ctx.accountId,
    state: await identityState(ctx),
    list: list.map((i) => pick(i, args.properties, IDENTITY_PROPERTIES)),
    notFound: ids === null ? [] : ids.filter((id) => !all.some((i) => i.id === id)),
  };
}

/** The editable properties of an identity patch or create, or the SetError refusing them. */
function identityFields(o: unknown, creating: boolean): JsonObject | SetError {
  if (!o || typeof o !== 'object' || Array.isArray(o)) return { type: 'invalidProperties' };
  const bad: string[] = [];
  const out: JsonObject = {};
  const isAddrList = (v: unknown) =>
    v === null || (Array.isArray(v) && v.every((a) => a && typeof a === 'object' && typeof (a as JsonObject).email === 'string'));
  for (const [k, v] of Object.entries(o as JsonObject)) {
    if (k === 'email' && creating && typeof v === 'string') out.email = v.toLowerCase();
    else if ((k === 'name' || k === 'textSignature' || k === 'htmlSignature') && typeof v === 'string') out[k] = v;
    else if ((k === 'replyTo' || k === 'bcc') && isAddrList(v)) out[k] = v;
    else bad.push(k);
  }
  if (creating && typeof out.email !== 'string') bad.push('email');
  return bad.length ? { type: 'invalidProperties', properties: [...new Set(bad)] } : out;
}

async function identitySet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const list = identities(ctx);
  const oldState = await identityState(ctx);
  if (args.ifInState !== undefined && args.ifInState !== null && args.ifInState !== oldState) throw new MethodError('stateMismatch');
  const now = new Date();
  const created: Record<string, JsonObject> = {};
  const notCreated: Record<string, SetError> = {};
  const updated: Record<string, null> = {};
  const notUpdated: Record<string, SetError> = {};
  const destroyed: string[] = [];
  const notDestroyed: Record<string, SetError> = {};
  const accounts = new Accounts(ctx.storage.tables);

  for (const [cid, o] of Object.entries(setObject(args, 'create'))) {
    const f = identityFields(o, true);
    if ('type' in f) {
      notCreated[cid] = f as SetError;
      continue;
    }
    // RFC 8621 §6.3: an address the user may not send as is forbiddenFrom.
    if (!(await accounts.canSendAs(ctx.user, String(f.email)))) {
      notCreated[cid] = { type: 'forbiddenFrom', description: `${ctx.user} may not send as ${String(f.email)}` };
      continue;
    }
    const id = `I${randomBytes(12).toString('hex')}`;
    await list.put(id, f, now, { created: true });
    ctx.createdIds.set(cid, id);
    created[cid] = { id, mayDelete: true };
  }

  const current = await identityList(ctx);
  for (const [id, patch] of Object.entries(setObject(args, 'update'))) {
    const existing = current.find((i) => i.id === id);
    if (!existing) {
      notUpdated[id] = { type: 'notFound' };
      continue;
    }
    const f = identityFields(patch, false);
    if ('type' in f) {
      notUpdated[id] = f as SetError;
      continue;
    }
    const stored = (await list.get(id))?.data ?? {};
    // An address's own identity existed before its first edit: that edit is an update.
    await list.put(id, { ...stored, ...(existing.mayDelete ? { email: existing.email } : {}), ...f }, now, { knownSince: 0 });
    updated[id] = null;
  }

  const destroy = args.destroy;
  if (destroy !== undefined && destroy !== null && !Array.isArray(destroy)) throw new MethodError('invalidArguments', 'destroy must be a list');
  for (const id of (destroy as string[] | null | undefined) ?? []) {
    const existing = current.find((i) => i.id === id);
    if (!existing) notDestroyed[id] = { type: 'notFound' };
    // The identity of an address the account has cannot go while the address does.
    else if (!existing.mayDelete) notDestroyed[id] = { type: 'forbidden', description: 'this identity is the address itself; remove the alias instead' };
    else {
      await list.put(id, (await list.get(id))?.data ?? {}, now, { destroyed: true });
      destroyed.push(id);
    }
  }
  return setResponse(ctx.accountId, oldState, await identityState(ctx), { created, updated, destroyed, notCreated, notUpdated, notDestroyed });
}

// ---------------------------------------------------------------------------------------------
// EmailSubmission (RFC 8621 §7)

const SUBMISSION_PROPERTIES = [
  'id',
  'identityId',
  'emailId',
  'threadId',
  'envelope',
  'sendAt',
  'undoStatus',
  'deliveryStatus',
  'dsnBlobIds',
  'mdnBlobIds',
] as const;

interface Address {
  email: string;
  parameters: JsonObject | null;
}
interface Envelope {
  mailFrom: Address;
  rcptTo: Address[];
}

const submissions = (ctx: JmapContext) => new RecordList(ctx.storage.tables, `SUBM#${ctx.user}`, SUBMISSION_TTL_SECONDS);

/** State `<rev>.<epoch seconds>`: a state older than the records' TTL may have lost destroys
 * (expired records leave no trace), so /changes refuses it. */
function submissionState(rev: number): string {
  return `${rev}.${Math.floor(Date.now() / 1000)}`;
}
function parseSubmissionState(s: string): number | undefined {
  const m = /^(\d{1,15})\.(\d{1,12})$/.exec(s);
  if (!m) return undefined;
  if (Number(m[2]) < Date.now() / 1000 - SUBMISSION_TTL_SECONDS + 3600) return undefined;
  return Number(m[1]);
}

/** The queue's view of one submission: undo status and per-recipient delivery status. */
async function liveStatus(rec: Rec, ctx: JmapContext): Promise<{ undoStatus: string; deliveryStatus: JsonObject; cancellable: boolean }> {
  const queueId = String(rec.data.queueId);
  const envelope = rec.data.envelope as unknown as Envelope;
  const out = new OutboundStore(ctx.storage.tables);
  const message = await out.getMessage(queueId);
  const rcpts = message ? await out.getRecipients(queueId) : [];
  const byAddress = new Map<string, RcptRecord>(rcpts.map((r) => [r.address.toLowerCase(), r]));
  const accounts = new Accounts(ctx.storage.tables);
  const mailboxes = new MailboxStore(ctx.storage.tables, ctx.storage.mail);
  const deliveryStatus: JsonObject = {};
  for (const r of envelope.rcptTo) {
    const q = byAddress.get(r.email.toLowerCase());
    let delivered = 'queued';
    let smtpReply = '250 2.0.0 Queued';
    if (q) {
      delivered = q.state === 'delivered' ? 'yes' : q.state === 'bounced' || q.state === 'deleted' ? 'no' : 'queued';
      smtpReply = q.lastReply ?? smtpReply;
    } else {
      const res = await accounts.resolve(r.email);
      if (res.kind === 'local' && res.users.length && res.remote.length === 0) {
        let all = true;
        for (const u of res.users) if ((await mailboxes.delivered(queueId, u)) === undefined) all = false;
        if (all) [delivered, smtpReply] = ['yes', '250 2.0.0 Delivered'];
      }
    }
    deliveryStatus[r.email] = { smtpReply, delivered, displayed: 'unknown' };
  }
  if (rec.data.canceled === true || message?.status === 'deleted') return { undoStatus: 'canceled', deliveryStatus, cancellable: false };
  // RFC 8621 §7: pending while it may still be stopped: the queue holds it, no recipient has got
  // it (each is queued or deferred after a temporary refusal), and no worker is sending it now.
  // Deleting it from the queue then takes it back entirely. Local recipients have it at once.
  const untried = !!message && message.status === 'active' && rcpts.every(isPending) && message.lockUntil <= Date.now();
  // Before the inbound worker hands it to the outbound queue it is still waiting too, though not
  // yet where it can be stopped.
  const waiting =
    !message &&
    Object.values(deliveryStatus).some((d) => (d as JsonObject).delivered === 'queued') &&
    !(await ctx.storage.tables.get({ pk: `JOB#${queueId}`, sk: 'OUTBOUND' }));
  const undoStatus = untried || waiting ? 'pending' : 'final';
  return { undoStatus, deliveryStatus, cancellable: untried };
}

async function toSubmission(rec: Rec, ctx: JmapContext): Promise<JsonObject> {
  const { undoStatus, deliveryStatus } = await liveStatus(rec, ctx);
  const d = rec.data;
  return {
    id: rec.id,
    identityId: d.identityId,
    emailId: d.emailId,
    threadId: d.threadId ?? null,
    envelope: d.envelope,
    sendAt: d.sendAt,
    undoStatus,
    deliveryStatus,
    dsnBlobIds: [],
    mdnBlobIds: [],
  };
}

async function submissionGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const ids = idsArg(args);
  const list = submissions(ctx);
  const recs = ids === null ? (await list.all()).filter((r) => !r.destroyed) : [];
  const notFound: string[] = [];
  if (ids !== null)
    for (const id of ids) {
      const r = await list.get(id);
      if (r && !r.destroyed) recs.push(r);
      else notFound.push(id);
    }
  const out: JsonObject[] = [];
  for (const r of recs) out.push(pick(await toSubmission(r, ctx), args.properties, SUBMISSION_PROPERTIES));
  return { accountId: ctx.accountId, state: submissionState(await list.state()), list: out, notFound };
}

/** RFC 8621 §7.3 filter conditions and §7.3 sorts (emailId, threadId, sentAt). */
async function submissionQuery(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const list = submissions(ctx);
  const recs = (await list.all()).filter((r) => !r.destroyed);
  const rows: JsonObject[] = [];
  for (const r of recs) rows.push(await toSubmission(r, ctx));
  const filter = (args.filter ?? {}) as JsonObject;
  if (typeof filter !== 'object' || Array.isArray(filter) || 'operator' in filter)
    throw new MethodError('unsupportedFilter', 'only a FilterCondition is supported');
  const known = ['identityIds', 'emailIds', 'threadIds', 'undoStatus', 'before', 'after'];
  if (Object.keys(filter).some((k) => !known.includes(k))) throw new MethodError('unsupportedFilter');
  const inList = (key: string, v: unknown) => !Array.isArray(filter[key]) || (filter[key] as unknown[]).includes(v);
  let hits = rows.filter(
    (s) =>
      inList('identityIds', s.identityId) &&
      inList('emailIds', s.emailId) &&
      inList('threadIds', s.threadId) &&
      (filter.undoStatus === undefined || filter.undoStatus === s.undoStatus) &&
      (typeof filter.before !== 'string' || String(s.sendAt) < filter.before) &&
      (typeof filter.after !== 'string' || String(s.sendAt) >= filter.after),
  );
  const sort = (args.sort ?? [{ property: 'sentAt', isAscending: true }]) as { property: string; isAscending?: boolean }[];
  if (!Array.isArray(sort) || sort.some((c) => !['emailId', 'threadId', 'sentAt'].includes(c?.property))) throw new MethodError('unsupportedSort');
  hits = hits.sort((a, b) => {
    for (const c of sort) {
      const key = c.property === 'sentAt' ? 'sendAt' : c.property;
      const d = String(a[key] ?? '').localeCompare(String(b[key] ?? ''));
      if (d) return c.isAscending === false ? -d : d;
    }
    return String(a.id).localeCompare(String(b.id));
  });
  const position = Number(args.position ?? 0);
  const limit = args.limit === undefined || args.limit === null ? undefined : Number(args.limit);
  if (!Number.isInteger(position) || (limit !== undefined && !(Number.isInteger(limit) && limit >= 0)))
    throw new MethodError('invalidArguments', 'position and limit must be integers');
  const start = position < 0 ? Math.max(0, hits.length + position) : position;
  const ids = hits.slice(start, limit === undefined ? undefined : start + limit).map((s) => String(s.id));
  return {
    accountId: ctx.accountId,
    queryState: submissionState(await list.state()),
    canCalculateChanges: false,
    position: start,
    ids,
    ...(args.calculateTotal === true ? { total: hits.length } : {}),
  };
}

function readAddress(a: unknown): Address | undefined {
  if (!a || typeof a !== 'object') return undefined;
  const { email, parameters } = a as JsonObject;
  if (typeof email !== 'string' || (parameters !== undefined && parameters !== null && typeof parameters !== 'object')) return undefined;
  return { email, parameters: (parameters as JsonObject | null | undefined) ?? null };
}

/** Addresses of header fields (lower-cased, deduplicated, in order). */
function headerAddresses(headers: Awaited<ReturnType<typeof readHeaders>>, fields: string[]): string[] {
  const all = fields
    .flatMap((f) => headers.get(f).map((line) => line.slice(line.indexOf(':') + 1)))
    .flatMap((v) => addressparser(v, { flatten: true }).map((a) => a.address))
    .filter((a) => a.includes('@'));
  return [...new Set(all.map((a) => a.toLowerCase()))];
}

/** A stream that passes bytes through while counting them and noting 8-bit octets (DataStats). */
async function* measured(src: Readable, stats: { bytes: number; eightBit: boolean }): AsyncGenerator<Buffer> {
  for await (const c of src) {
    const b = c as Buffer;
    stats.bytes += b.length;
    if (!stats.eightBit)
      for (const x of b)
        if (x > 0x7f) {
          stats.eightBit = true;
          break;
        }
    yield b;
  }
}

/** Sends one Email as the submission listener would; returns the record's data or a SetError. */
async function submit(o: JsonObject, ctx: JmapContext): Promise<JsonObject | SetError> {
  const bad = Object.keys(o).filter((k) => !['identityId', 'emailId', 'envelope'].includes(k));
  if (bad.length) return { type: 'invalidProperties', properties: bad, description: 'server-set or unknown properties' };
  const resolve = (v: unknown) => (typeof v === 'string' && v.startsWith('#') ? ctx.createdIds.get(v.slice(1)) : v);
  const identityId = resolve(o.identityId);
  const emailId = resolve(o.emailId);
  if (typeof identityId !== 'string') return { type: 'invalidProperties', properties: ['identityId'] };
  if (typeof emailId !== 'string') return { type: 'invalidProperties', properties: ['emailId'] };
  const identity = (await identityList(ctx)).find((i) => i.id === identityId);
  if (!identity) return { type: 'invalidProperties', properties: ['identityId'], description: 'no such identity' };
  const blob = await ctx.blobs.get(`G${emailId}`);
  if (!blob) return { type: 'invalidProperties', properties: ['emailId'], description: 'no such email' };
  const maxSize = ctx.config.smtp.maxMessageBytes;
  if (blob.size > maxSize) return { type: 'tooLarge', maxSize };

  const head = await blob.open();
  // readHeaders stops early; the blob's own stream is closed here, not only the filter on it.
  const headers = await readHeaders(withoutReturnPath(head)).finally(() => head.destroy());
  const accounts = new Accounts(ctx.storage.tables);
  // RFC 8621 §7.5 forbiddenFrom: the From header names an address the user may not send as.
  const fromHeader = headerAddresses(headers, ['from']);
  if (fromHeader.length === 0) return { type: 'invalidEmail', properties: ['from'], description: 'the Email has no From address' };
  for (const a of fromHeader) if (!(await accounts.canSendAs(ctx.user, a))) return { type: 'forbiddenFrom', description: `${ctx.user} may not send as ${a}` };

  // RFC 8621 §7: without an envelope, MAIL FROM is the Sender (else From) address and RCPT TO the
  // deduplicated To, Cc and Bcc addresses.
  let envelope: Envelope;
  if (o.envelope === undefined || o.envelope === null) {
    const sender = headerAddresses(headers, ['sender'])[0] ?? fromHeader[0];
    envelope = {
      mailFrom: { email: sender, parameters: null },
      rcptTo: headerAddresses(headers, ['to', 'cc', 'bcc']).map((email) => ({ email, parameters: null })),
    };
  } else {
    const e = o.envelope as JsonObject;
    const mailFrom = readAddress(e?.mailFrom);
    const rcptTo = Array.isArray(e?.rcptTo) ? e.rcptTo.map(readAddress) : undefined;
    if (!mailFrom || !rcptTo || rcptTo.some((r) => !r)) return { type: 'invalidProperties', properties: ['envelope'] };
    envelope = { mailFrom, rcptTo: rcptTo as Address[] };
  }
  if (envelope.rcptTo.length === 0) return { type: 'noRecipients' };

  // The listener's own hooks, in the order an SMTP session calls them.
  const hooks = createHooks(accounts, new MailboxStore(ctx.storage.tables, ctx.storage.mail), {
    storage: ctx.storage,
    log: ctx.log,
    hostname: ctx.config.hostname,
    maxMessageBytes: maxSize,
    queueInlineBytes: ctx.config.smtp.queueInlineBytes,
    checkAuth: false,
    // The same hourly recipient limit as the submission ports (one counter per user in Tables).
    maxRecipientsPerUserHour: ctx.config.smtp.maxRecipientsPerUserHour,
  });
  const session: SessionInfo = {
    id: `jmap-${randomBytes(6).toString('hex')}`,
    listener: 'submission',
    implicitTls: true,
    clientAddress: '127.0.0.1',
    clientPort: 0,
    helo: 'jmap',
    esmtp: true,
    tls: undefined,
    authUser: ctx.user,
  };
  const tx: Transaction = { from: envelope.mailFrom.email, declaredSize: blob.size, smtputf8: false, dsn: {}, rcpts: [] };
  try {
    await hooks.mailFrom(envelope.mailFrom.email, tx, session);
  } catch (e) {
    if (e instanceof ReplyError) return { type: 'forbiddenMailFrom', description: e.message };
    throw e;
  }
  const invalid: string[] = [];
  for (const r of envelope.rcptTo) {
    const rcpt: DsnRecipient = { address: r.email };
    try {
      await hooks.rcptTo(rcpt, tx, session);
      tx.rcpts.push(rcpt);
    } catch (e) {
      if (!(e instanceof ReplyError)) throw e;
      // The sending limit: RFC 8621 §7.5 forbiddenToSend, "not permitted to send ... right now".
      if (e.code === 451 && e.enhanced === '4.7.1') return { type: 'forbiddenToSend', description: e.message };
      invalid.push(r.email);
    }
  }
  if (invalid.length) return { type: 'invalidRecipients', invalidRecipients: invalid };
  const sink = hooks.openMessage(tx, session);
  const stats = { bytes: 0, eightBit: false };
  try {
    // The draft keeps its Bcc (its recipients came from it above); the copy sent does not.
    for await (const chunk of measured(withoutBcc(withoutReturnPath(await blob.open())), stats)) await sink.write(chunk);
    if (stats.eightBit) tx.body = '8BITMIME';
    await sink.finish({ ...stats, bareLf: false, bareCr: false, longestLine: 0 });
  } catch (e) {
    sink.abort('submission failed');
    if (e instanceof ReplyError) return { type: 'forbiddenToSend', description: e.message };
    throw e;
  }
  let threadId: unknown = null;
  try {
    const got = await ctx.call('Email/get', { accountId: ctx.accountId, ids: [emailId], properties: ['threadId'] });
    threadId = (got.list as JsonObject[] | undefined)?.[0]?.threadId ?? null;
  } catch {
    // Email/get is another module's; the submission stands without its thread.
  }
  return {
    identityId,
    emailId,
    threadId,
    envelope: envelope as unknown as JsonObject,
    sendAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    queueId: sink.id,
  };
}

async function submissionSet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const list = submissions(ctx);
  const oldState = submissionState(await list.state());
  if (args.ifInState !== undefined && args.ifInState !== null && parseSubmissionState(String(args.ifInState)) !== (await list.state()))
    throw new MethodError('stateMismatch');
  const now = new Date();
  const created: Record<string, JsonObject> = {};
  const notCreated: Record<string, SetError> = {};
  const updated: Record<string, JsonObject | null> = {};
  const notUpdated: Record<string, SetError> = {};
  const destroyed: string[] = [];
  const notDestroyed: Record<string, SetError> = {};
  /** Submission ids that succeeded in this call, by the key onSuccess* may use (`#cid` or id). */
  const succeeded = new Map<string, { id: string; emailId: string }>();

  for (const [cid, o] of Object.entries(setObject(args, 'create'))) {
    if (!o || typeof o !== 'object' || Array.isArray(o)) {
      notCreated[cid] = { type: 'invalidProperties' };
      continue;
    }
    const r = await submit(o as JsonObject, ctx);
    if (typeof r.type === 'string') {
      notCreated[cid] = r as SetError;
      continue;
    }
    const id = `S${String(r.queueId)}`;
    const rec = await list.put(id, r as JsonObject, now, { created: true });
    ctx.createdIds.set(cid, id);
    const { undoStatus } = await liveStatus(rec, ctx);
    created[cid] = { id, threadId: r.threadId ?? null, sendAt: r.sendAt, undoStatus };
    succeeded.set(`#${cid}`, { id, emailId: String(r.emailId) });
    ctx.log.info({ c: 'jmap', user: ctx.user, submission: id, rcpts: (r.envelope as unknown as Envelope).rcptTo.length }, 'email submitted');
  }

  for (const [id, patch] of Object.entries(setObject(args, 'update'))) {
    const rec = await list.get(id);
    if (!rec || rec.destroyed) {
      notUpdated[id] = { type: 'notFound' };
      continue;
    }
    const p = (patch ?? {}) as JsonObject;
    const keys = Object.keys(p);
    if (keys.some((k) => k !== 'undoStatus') || (keys.length && p.undoStatus !== 'canceled')) {
      // RFC 8621 §7.5: undoStatus may only be set, and only to canceled.
      notUpdated[id] = { type: 'invalidProperties', properties: keys.filter((k) => k !== 'undoStatus' || p.undoStatus !== 'canceled') };
      continue;
    }
    if (keys.length) {
      const { cancellable } = await liveStatus(rec, ctx);
      let canceled = false;
      if (cancellable) {
        try {
          await new OutboundQueueAdmin(ctx.storage).delete(String(rec.data.queueId));
          canceled = true;
        } catch (e) {
          if (!(e instanceof QueueAdminError)) throw e;
        }
      }
      if (!canceled) {
        notUpdated[id] = { type: 'cannotUnsend', description: 'the message has left or is being delivered' };
        continue;
      }
      await list.put(id, { ...rec.data, canceled: true }, now);
    }
    updated[id] = null;
    succeeded.set(id, { id, emailId: String(rec.data.emailId) });
  }

  const destroy = args.destroy;
  if (destroy !== undefined && destroy !== null && !Array.isArray(destroy)) throw new MethodError('invalidArguments', 'destroy must be a list');
  for (const id of (destroy as string[] | null | undefined) ?? []) {
    const rec = await list.get(id);
    if (!rec || rec.destroyed) {
      notDestroyed[id] = { type: 'notFound' };
      continue;
    }
    // Forgetting the record does not stop the message (RFC 8621 §7.5).
    await list.put(id, rec.data, now, { destroyed: true });
    destroyed.push(id);
  }

  const response = setResponse(ctx.accountId, oldState, submissionState(await list.state()), {
    created,
    updated,
    destroyed,
    notCreated,
    notUpdated,
    notDestroyed,
  });
  await onSuccess(args, succeeded, ctx);
  return response;
}

/** RFC 8621 §7.5: onSuccessUpdateEmail / onSuccessDestroyEmail as one implicit Email/set, whose
 * response follows this method's (same call id). */
async function onSuccess(args: JsonObject, succeeded: Map<string, { id: string; emailId: string }>, ctx: JmapContext): Promise<void> {
  const updates = setObject(args, 'onSuccessUpdateEmail');
  const destroys = args.onSuccessDestroyEmail;
  if (destroys !== undefined && destroys !== null && !Array.isArray(destroys))
    throw new MethodError('invalidArguments', 'onSuccessDestroyEmail must be a list');
  const update: JsonObject = {};
  for (const [key, patch] of Object.entries(updates)) {
    const s = succeeded.get(key);
    if (s) update[s.emailId] = patch;
  }
  const destroy = ((destroys as string[] | null | undefined) ?? []).map((k) => succeeded.get(k)?.emailId).filter((x): x is string => !!x);
  if (!Object.keys(update).length && !destroy.length) return;
  const result = await ctx.call('Email/set', {
    accountId: ctx.accountId,
    ...(Object.keys(update).length ? { update } : {}),
    ...(destroy.length ? { destroy } : {}),
  });
  ctx.followUps.push(['Email/set', result]);
}

/** The Identity and EmailSubmission methods for the engine. */
export const submissionMethods: JmapMethods = {
  capability: SUBMISSION_CAPABILITY,
  sessionCapability: {},
  // RFC 8621 §1.3.2: no delayed sending (sendAt is when it was queued); the usual SMTP extensions.
  accountCapability: { maxDelayedSend: 0, submissionExtensions: { '8BITMIME': [], SMTPUTF8: [], DSN: [] } },
  methods: {
    'Identity/get': identityGet,
    'Identity/changes': identityChanges,
    'Identity/set': identitySet,
    'EmailSubmission/get': submissionGet,
    'EmailSubmission/changes': async (args, ctx) => {
      const r = await changes(submissions(ctx), args, ctx, parseSubmissionState);
      return { ...r, newState: submissionState(Number(r.newState)) };
    },
    'EmailSubmission/query': submissionQuery,
    'EmailSubmission/set': submissionSet,
  },
};
