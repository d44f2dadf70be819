/**
 * EmailSubmission (RFC 8621 §7) and the capability module that also carries Identity (§6,
 * ./submission-identity.ts). Creating a submission sends an Email (./submission-send.ts); its
 * record (which queue message, which envelope) is kept in Tables with a TTL
 * (./submission-records.ts), and its undo and delivery status are read from the outbound queue's
 * state.
 */
import { Accounts } from '../../../core/accounts/accounts.js';
import { QueueAdminError, OutboundQueueAdmin } from '../../../core/mail/outbound-admin.js';
import { isPending, OutboundStore, type RcptRecord } from '../../../core/mail/outbound-store.js';
import { MailboxStore } from '../../../core/mailbox/store.js';
import { setResponse } from './engine.js';
import { identityChanges, identityGet, identitySet } from './submission-identity.js';
import { changes, idsArg, pick, RecordList, setObject, type Rec } from './submission-records.js';
import { submit, type Envelope } from './submission-send.js';
import { MethodError, type JmapContext, type JmapMethods, type JsonObject, type SetError } from './types.js';

export { identityIdOf } from './submission-identity.js';

/** RFC 8621 §1.3.2. */
export const SUBMISSION_CAPABILITY = 'urn:ietf:params:jmap:submission';

/** How long a submission record is kept (RFC 8621 §7: the server may forget old submissions). */
export const SUBMISSION_TTL_SECONDS = 7 * 86400;

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
