/**
 * Thread/get and Thread/changes (RFC 8621 §3). Threads are decided when a message is filed (the
 * Email index, core/mailbox/email-index.ts); these methods only read. The state string is the
 * user's change-log position (the MODSEQ every change at or below which is settled), the same
 * number Mailbox and Email states are made of, so one change moves all of them together.
 */
import type { Change } from '../../../core/mailbox/changes.js';
import { isThreadId } from '../../../core/mailbox/email-ids.js';
import { MAIL_CAPABILITY, MethodError, type JmapContext, type JmapMethods, type JsonObject } from './types.js';

const PROPERTIES = ['id', 'emailIds'];
/** Change-log MODSEQs read per page while collecting threads. */
const PAGE = 200;

/** The state string of the user's mail data now. */
async function currentState(ctx: JmapContext): Promise<string> {
  return String(await ctx.folders.changes.position(ctx.user));
}

function stringList(v: unknown, name: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new MethodError('invalidArguments', `${name} must be a list of strings`);
  return v as string[];
}

/** RFC 8620 §5.1 /get for Thread. `ids: null` would list every thread, which this server does not
 * offer (§5.1 allows refusing): `requestTooLarge`. */
async function threadGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  if (args.ids === null || args.ids === undefined) throw new MethodError('requestTooLarge', 'Thread/get needs ids');
  const ids = [...new Set(stringList(args.ids, 'ids'))];
  let properties = PROPERTIES;
  if (args.properties !== null && args.properties !== undefined) {
    properties = stringList(args.properties, 'properties');
    const unknown = properties.filter((p) => !PROPERTIES.includes(p));
    if (unknown.length) throw new MethodError('invalidArguments', `unknown properties: ${unknown.join(', ')}`);
  }
  await ctx.folders.ensureIndexed(ctx.user);
  // The state is read before the threads, so a change between the two shows in the next /changes.
  const state = await currentState(ctx);
  const list: JsonObject[] = [];
  const notFound: string[] = [];
  for (const id of ids) {
    const t = isThreadId(id) ? await ctx.folders.index.thread(ctx.user, id) : undefined;
    if (!t || t.emailIds.length === 0) {
      notFound.push(id);
      continue;
    }
    // `id` is always returned (RFC 8620 §5.1).
    list.push({ id, ...(properties.includes('emailIds') ? { emailIds: t.emailIds } : {}) });
  }
  return { accountId: ctx.accountId, state, list, notFound };
}

/** The threads one change touched; undefined when the entry predates JMAP (cannot say). */
function threadsOf(change: Change): string[] | undefined {
  const out: string[] = [];
  for (const e of change.entries) {
    if (e.kind !== 'append' && e.kind !== 'expunge') continue; // flags and folders leave threads as they are
    if (!e.emailIds) return undefined;
    out.push(...(e.threadIds ?? []));
  }
  return out;
}

/** RFC 8620 §5.2 /changes for Thread. */
async function threadChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  if (typeof args.sinceState !== 'string') throw new MethodError('invalidArguments', 'sinceState must be a string');
  const max = args.maxChanges ?? null;
  if (max !== null && !(typeof max === 'number' && Number.isInteger(max) && max > 0))
    throw new MethodError('invalidArguments', 'maxChanges must be a positive integer');
  if (!/^\d{1,16}$/.test(args.sinceState)) throw new MethodError('cannotCalculateChanges', 'unknown state');
  const since = Number(args.sinceState);
  const touched = new Set<string>();
  let at = since;
  let more = false;
  pages: for (;;) {
    const page = await ctx.folders.changes.since(ctx.user, at, PAGE);
    if (page.tooOld) throw new MethodError('cannotCalculateChanges', 'the state is older than the change log keeps');
    for (const change of page.changes) {
      const threads = threadsOf(change);
      if (!threads) throw new MethodError('cannotCalculateChanges', 'changes from before threads were kept');
      const added = threads.filter((t) => !touched.has(t));
      if (max !== null && touched.size + added.length > max) {
        // One MODSEQ is never split: a single change over more threads than maxChanges cannot be
        // reported within it.
        if (touched.size === 0) throw new MethodError('cannotCalculateChanges', `one change touched more than ${max} threads`);
        more = true;
        break pages;
      }
      added.forEach((t) => touched.add(t));
      at = change.modseq;
    }
    const before = at;
    at = Math.max(at, page.modseq);
    // `more` without progress: a change still being written (a young gap). Report up to it; the
    // client's next /changes goes on from there.
    if (!page.more || at === before) break;
  }
  const created: string[] = [];
  const updated: string[] = [];
  const destroyed: string[] = [];
  for (const id of touched) {
    const t = await ctx.folders.index.thread(ctx.user, id);
    if (t.emailIds.length === 0) destroyed.push(id);
    else if (t.createdModseq > since) created.push(id);
    else updated.push(id);
  }
  return { accountId: ctx.accountId, oldState: args.sinceState, newState: String(at), hasMoreChanges: more, created, updated, destroyed };
}

/** The Thread methods, for the engine's method table. */
export const threadMethods: JmapMethods = {
  capability: MAIL_CAPABILITY,
  methods: { 'Thread/get': threadGet, 'Thread/changes': threadChanges },
};
