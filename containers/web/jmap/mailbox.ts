/**
 * RFC 8621 §2: Mailbox/get, /changes, /query, /queryChanges and /set over the folder store
 * (core/mailbox/folders.ts). A Mailbox is a folder: its id is the folder id, its name the last
 * level of the folder's full name, its parentId the folder above (null at the top), its role the
 * folder's special use (RFC 6154 names lower-cased, as RFC 8621 §2 registers them).
 *
 * State strings are the user's change-log position (core/mailbox/changes.ts: the MODSEQ up to
 * which every change is settled), the same number for Mailbox and Email: RFC 8620 §5.2 lets a
 * type's state move when nothing of that type changed, and `/changes` then reports nothing.
 */
import type { Change } from '../../../core/mailbox/changes.js';
import { INBOX } from '../../../core/mailbox/keys.js';
import { DELIMITER, type FolderInfo, type FolderStatus, type SpecialUse } from '../../../core/mailbox/folders.js';
import { FolderError } from '../../../core/mailbox/keys.js';
import { accountIndex } from './email-query.js';
import { changesResponse, setResponse } from './engine.js';
import { MAIL_CAPABILITY, MethodError, type JmapContext, type JmapMethods, type JsonObject, type SetError } from './types.js';

/** RFC 8621 §2 roles by RFC 6154 special use. */
const ROLE_BY_USE: Record<SpecialUse, string> = {
  '\\Sent': 'sent',
  '\\Drafts': 'drafts',
  '\\Trash': 'trash',
  '\\Junk': 'junk',
  '\\Archive': 'archive',
};
const USE_BY_ROLE = Object.fromEntries(Object.entries(ROLE_BY_USE).map(([u, r]) => [r, u as SpecialUse])) as Record<string, SpecialUse>;

/** Properties a client may name in Mailbox/get (RFC 8621 §2). */
const MAILBOX_PROPERTIES = [
  'id',
  'name',
  'parentId',
  'role',
  'sortOrder',
  'totalEmails',
  'unreadEmails',
  'totalThreads',
  'unreadThreads',
  'myRights',
  'isSubscribed',
] as const;
/** The properties that change when only a mailbox's messages changed (RFC 8621 §2.2). */
const COUNT_PROPERTIES = ['totalEmails', 'unreadEmails', 'totalThreads', 'unreadThreads'];

// ---------------------------------------------------------------------------------------------
// Shared with email.ts: state strings and argument checks.

/** The account's current state string (see the file header). Read before the data it goes with,
 * so a change racing the read shows up again in the next `/changes`, never goes missing. */
export async function currentState(ctx: JmapContext): Promise<string> {
  return String(await ctx.folders.changes.position(ctx.user));
}

/** A state string as a MODSEQ; undefined for one this server never gave out. */
export function parseState(state: unknown): number | undefined {
  return typeof state === 'string' && /^(0|[1-9][0-9]{0,15})$/.test(state) ? Number(state) : undefined;
}

/** RFC 8620 §5.3 ifInState. */
export async function checkIfInState(ctx: JmapContext, args: JsonObject): Promise<string> {
  const state = await currentState(ctx);
  if (args.ifInState !== undefined && args.ifInState !== null && args.ifInState !== state) throw new MethodError('stateMismatch');
  return state;
}

/** An optional list of ids (null = all). */
export function idList(value: unknown, name: string): string[] | null {
  if (value === undefined || value === null) return null;
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new MethodError('invalidArguments', `${name} must be a list of ids`);
  return value as string[];
}

/** The requested properties, checked against the type's list; id always included. */
export function propertyList(value: unknown, known: readonly string[], defaults: readonly string[] = known): string[] {
  if (value === undefined || value === null) return [...defaults];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new MethodError('invalidArguments', 'properties must be a list of strings');
  const unknown = (value as string[]).filter((p) => !known.includes(p));
  if (unknown.length) throw new MethodError('invalidArguments', `unknown properties: ${unknown.join(', ')}`);
  return ['id', ...(value as string[]).filter((p) => p !== 'id')];
}

/** A non-negative integer argument (RFC 8620 UnsignedInt). */
export function unsignedArg(value: unknown, name: string, fallback?: number): number | undefined {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw new MethodError('invalidArguments', `${name} must be an unsigned integer`);
  return value;
}

/** An id that may be a creation id of this request (`#abc`, RFC 8620 §5.3). */
export function resolveId(ctx: JmapContext, id: string): string | undefined {
  return id.startsWith('#') ? ctx.createdIds.get(id.slice(1)) : id;
}

// ---------------------------------------------------------------------------------------------
// Mailbox objects

interface MailboxView {
  info: FolderInfo;
  status: FolderStatus;
  /** Thread counts, when asked for (threadCounts). */
  threads?: { total: number; unread: number };
}

/**
 * totalThreads and unreadThreads of every folder (RFC 8621 §2), from the query index of the
 * account (email-query.ts, kept current from the change log): a thread counts in a folder when one
 * of its Emails is there, and as unread when one of its Emails has neither $seen nor $draft. The
 * Trash is apart, as §2 says: an unread Email only in the Trash does not make a thread unread
 * elsewhere, and in the Trash only unread Emails in the Trash count.
 */
async function threadCounts(ctx: JmapContext, trash: string | undefined): Promise<Map<string, { total: number; unread: number }>> {
  const index = await accountIndex(ctx);
  const unreadOutside = new Set<string>();
  const unreadInTrash = new Set<string>();
  const byFolder = new Map<string, Set<string>>();
  for (const e of index.emails.values()) {
    const unread = !e.keywords.has('$seen') && !e.keywords.has('$draft');
    for (const c of e.copies) {
      let threads = byFolder.get(c.folder);
      if (!threads) byFolder.set(c.folder, (threads = new Set()));
      threads.add(e.threadId);
      if (unread) (c.folder === trash ? unreadInTrash : unreadOutside).add(e.threadId);
    }
  }
  const out = new Map<string, { total: number; unread: number }>();
  for (const [folder, threads] of byFolder) {
    const unread = folder === trash ? unreadInTrash : unreadOutside;
    out.set(folder, { total: threads.size, unread: [...threads].filter((t) => unread.has(t)).length });
  }
  return out;
}

const leafOf = (info: FolderInfo) => info.name.slice(info.name.lastIndexOf(DELIMITER) + 1);
const roleOf = (info: FolderInfo): string | null => (info.id === INBOX ? 'inbox' : info.specialUse ? ROLE_BY_USE[info.specialUse] : null);

/** INBOX first, then the special folders, then the rest (RFC 8621 §2 sortOrder: lower first). */
function sortOrderOf(info: FolderInfo): number {
  if (info.id === INBOX) return 0;
  const order = ['\\Drafts', '\\Sent', '\\Archive', '\\Junk', '\\Trash'];
  return info.specialUse ? 1 + order.indexOf(info.specialUse) : 10;
}

function rights(info: FolderInfo): JsonObject {
  const inbox = info.id === INBOX;
  return {
    mayReadItems: true,
    mayAddItems: true,
    mayRemoveItems: true,
    maySetSeen: true,
    maySetKeywords: true,
    mayCreateChild: true,
    mayRename: !inbox,
    mayDelete: !inbox,
    maySubmit: true,
  };
}

/** A Mailbox object; thread counts are the Email counts where they were not computed (a folder
 * just made, which holds nothing). */
function toMailbox(v: MailboxView, properties: string[]): JsonObject {
  const all: JsonObject = {
    id: v.info.id,
    name: leafOf(v.info),
    parentId: v.info.parentId === '' ? null : v.info.parentId,
    role: roleOf(v.info),
    sortOrder: sortOrderOf(v.info),
    totalEmails: v.status.count,
    unreadEmails: v.status.unseen,
    totalThreads: v.threads?.total ?? v.status.count,
    unreadThreads: v.threads?.unread ?? v.status.unseen,
    myRights: rights(v.info),
    isSubscribed: v.info.subscribed,
  };
  return Object.fromEntries(properties.map((p) => [p, all[p]]));
}

async function views(ctx: JmapContext, withStatus: boolean): Promise<MailboxView[]> {
  const list = await ctx.folders.listWithSpecialUse(ctx.user);
  const zero: FolderStatus = { count: 0, unseen: 0, bytes: 0, uidNext: 1, uidValidity: 0, highestModSeq: 0 };
  return Promise.all(
    list.map(async (info) => ({
      info,
      // A folder deleted between the list and its status reads as empty rather than failing.
      status: withStatus ? await ctx.folders.status(ctx.user, info.id).catch((e: unknown) => (e instanceof FolderError ? zero : Promise.reject(e))) : zero,
    })),
  );
}

// ---------------------------------------------------------------------------------------------
// Mailbox/get (RFC 8620 §5.1)

async function mailboxGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const ids = idList(args.ids, 'ids');
  const properties = propertyList(args.properties, MAILBOX_PROPERTIES);
  // The special-use folders are made (at first use) before the state is read, so the state covers them.
  await ctx.folders.listWithSpecialUse(ctx.user);
  const state = await currentState(ctx);
  const withStatus = properties.some((p) => COUNT_PROPERTIES.includes(p));
  const all = await views(ctx, withStatus);
  if (properties.includes('totalThreads') || properties.includes('unreadThreads')) {
    const counts = await threadCounts(ctx, all.find((v) => v.info.specialUse === '\\Trash')?.info.id);
    for (const v of all) v.threads = counts.get(v.info.id) ?? { total: 0, unread: 0 };
  }
  const byId = new Map(all.map((v) => [v.info.id, v]));
  const list: JsonObject[] = [];
  const notFound: string[] = [];
  for (const id of ids ?? all.map((v) => v.info.id)) {
    const real = resolveId(ctx, id);
    const v = real === undefined ? undefined : byId.get(real);
    if (v) list.push(toMailbox(v, properties));
    else notFound.push(id);
  }
  return { accountId: ctx.accountId, state, list, notFound };
}

// ---------------------------------------------------------------------------------------------
// Mailbox/changes (RFC 8620 §5.2)

/** created/updated/destroyed id sets of a `/changes` answer being built. */
export interface ChangeSets {
  created: Set<string>;
  updated: Set<string>;
  destroyed: Set<string>;
  /** Whether every update so far changed counts only (Mailbox's updatedProperties). */
  countsOnly: boolean;
}

/**
 * Reads the change log after `since` and folds each change into the id sets with `apply`, one
 * change at a time, stopping before a change that would take the answer past `maxChanges` ids
 * (RFC 8620 §5.2: newState is then the last change included, and hasMoreChanges is true). Pages
 * of the log that held only tombstones are read past.
 */
export async function foldChanges(
  ctx: JmapContext,
  since: number,
  maxChanges: number,
  apply: (sets: ChangeSets, change: Change) => Promise<void> | void,
): Promise<ChangeSets & { newState: number; more: boolean }> {
  let sets: ChangeSets = { created: new Set(), updated: new Set(), destroyed: new Set(), countsOnly: true };
  let at = since;
  for (;;) {
    const r = await ctx.folders.changes.since(ctx.user, at, maxChanges);
    if (r.tooOld) throw new MethodError('cannotCalculateChanges', 'the state is past the change log horizon');
    for (const change of r.changes) {
      const next: ChangeSets = {
        created: new Set(sets.created),
        updated: new Set(sets.updated),
        destroyed: new Set(sets.destroyed),
        countsOnly: sets.countsOnly,
      };
      await apply(next, change);
      const size = next.created.size + next.updated.size + next.destroyed.size;
      if (size > maxChanges && sets.created.size + sets.updated.size + sets.destroyed.size > 0) return { ...sets, newState: at, more: true };
      sets = next;
      at = change.modseq;
    }
    at = r.modseq;
    const size = sets.created.size + sets.updated.size + sets.destroyed.size;
    if (!r.more || size >= maxChanges) return { ...sets, newState: at, more: r.more };
  }
}

async function mailboxChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const since = parseState(args.sinceState);
  if (since === undefined) throw new MethodError('cannotCalculateChanges', 'unknown state');
  const maxChanges = unsignedArg(args.maxChanges, 'maxChanges', 500)!;
  if (maxChanges === 0) throw new MethodError('invalidArguments', 'maxChanges must be positive');
  const r = await foldChanges(ctx, since, maxChanges, (sets, change) => {
    const { created, updated, destroyed } = sets;
    for (const e of change.entries) {
      const id = e.folder;
      if (e.kind === 'folder-create') {
        destroyed.delete(id);
        created.add(id);
      } else if (e.kind === 'folder-delete') {
        // Created and destroyed in the window: the client never saw it (RFC 8620 §5.2 allows
        // leaving it out entirely).
        if (created.delete(id)) continue;
        updated.delete(id);
        destroyed.add(id);
      } else {
        if (e.kind === 'folder-rename' || e.kind === 'folder-update') sets.countsOnly = false;
        if (!created.has(id) && !destroyed.has(id)) updated.add(id);
      }
    }
  });
  return {
    ...changesResponse(ctx.accountId, String(since), String(r.newState), r.more, r),
    // RFC 8621 §2.2: non-null only when every update changed counts alone.
    updatedProperties: r.updated.size > 0 && r.countsOnly ? COUNT_PROPERTIES : null,
  };
}

// ---------------------------------------------------------------------------------------------
// Mailbox/query and /queryChanges (RFC 8620 §5.5, RFC 8621 §2.3)

type Filter = (v: MailboxView) => boolean;

function compileFilter(f: unknown): Filter {
  if (f === undefined || f === null) return () => true;
  if (typeof f !== 'object' || Array.isArray(f)) throw new MethodError('unsupportedFilter', 'filter must be an object');
  const o = f as JsonObject;
  if ('operator' in o) {
    const subs = o.conditions;
    if (!Array.isArray(subs)) throw new MethodError('unsupportedFilter', 'conditions must be a list');
    const fs = subs.map(compileFilter);
    if (o.operator === 'AND') return (v) => fs.every((x) => x(v));
    if (o.operator === 'OR') return (v) => fs.some((x) => x(v));
    if (o.operator === 'NOT') return (v) => !fs.some((x) => x(v));
    throw new MethodError('unsupportedFilter', `unknown operator ${String(o.operator)}`);
  }
  const tests: Filter[] = [];
  for (const [k, val] of Object.entries(o)) {
    if (k === 'parentId') {
      if (val !== null && typeof val !== 'string') throw new MethodError('unsupportedFilter', 'parentId must be an id or null');
      tests.push((v) => (v.info.parentId === '' ? null : v.info.parentId) === val);
    } else if (k === 'name') {
      if (typeof val !== 'string') throw new MethodError('unsupportedFilter', 'name must be a string');
      const needle = val.toLowerCase();
      tests.push((v) => leafOf(v.info).toLowerCase().includes(needle));
    } else if (k === 'role') {
      if (val !== null && typeof val !== 'string') throw new MethodError('unsupportedFilter', 'role must be a string or null');
      tests.push((v) => roleOf(v.info) === val);
    } else if (k === 'hasAnyRole') {
      if (typeof val !== 'boolean') throw new MethodError('unsupportedFilter', 'hasAnyRole must be a boolean');
      tests.push((v) => (roleOf(v.info) !== null) === val);
    } else if (k === 'isSubscribed') {
      if (typeof val !== 'boolean') throw new MethodError('unsupportedFilter', 'isSubscribed must be a boolean');
      tests.push((v) => v.info.subscribed === val);
    } else throw new MethodError('unsupportedFilter', `unknown filter property ${k}`);
  }
  return (v) => tests.every((t) => t(v));
}

function compileSort(sort: unknown): (a: MailboxView, b: MailboxView) => number {
  if (sort === undefined || sort === null) return () => 0;
  if (!Array.isArray(sort)) throw new MethodError('invalidArguments', 'sort must be a list');
  const cmps = sort.map((s: unknown) => {
    if (typeof s !== 'object' || s === null) throw new MethodError('unsupportedSort', 'bad comparator');
    const { property, isAscending } = s as JsonObject;
    const dir = isAscending === false ? -1 : 1;
    if (property === 'name') return (a: MailboxView, b: MailboxView) => dir * leafOf(a.info).localeCompare(leafOf(b.info));
    if (property === 'sortOrder') return (a: MailboxView, b: MailboxView) => dir * (sortOrderOf(a.info) - sortOrderOf(b.info));
    throw new MethodError('unsupportedSort', `cannot sort by ${String(property)}`);
  });
  return (a, b) => {
    for (const c of cmps) {
      const r = c(a, b);
      if (r) return r;
    }
    return 0;
  };
}

/** Orders mailboxes so each parent comes before its children, siblings in `cmp` order
 * (RFC 8621 §2.3 sortAsTree); with `filterAsTree`, a mailbox whose parent was filtered out goes too. */
function asTree(all: MailboxView[], keep: Filter, cmp: (a: MailboxView, b: MailboxView) => number, filterAsTree: boolean): MailboxView[] {
  const children = new Map<string, MailboxView[]>();
  for (const v of all) {
    const list = children.get(v.info.parentId) ?? [];
    list.push(v);
    children.set(v.info.parentId, list);
  }
  const out: MailboxView[] = [];
  const walk = (parent: string, depth: number) => {
    if (depth > 100) return;
    for (const v of [...(children.get(parent) ?? [])].sort(cmp)) {
      const ok = keep(v);
      if (ok) out.push(v);
      if (ok || !filterAsTree) walk(v.info.id, depth + 1);
    }
  };
  walk('', 0);
  return out;
}

async function mailboxQuery(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const keep = compileFilter(args.filter);
  const cmp = compileSort(args.sort);
  const position = typeof args.position === 'number' && Number.isInteger(args.position) ? args.position : unsignedArg(args.position, 'position', 0)!;
  const limit = unsignedArg(args.limit, 'limit');
  const state = await currentState(ctx);
  const all = await views(ctx, false);
  const ordered =
    args.sortAsTree === true || args.filterAsTree === true
      ? asTree(all, keep, cmp, args.filterAsTree === true).filter((v) => args.sortAsTree === true || keep(v))
      : all.filter(keep).sort(cmp);
  let ids = ordered.map((v) => v.info.id);
  let start = position < 0 ? Math.max(0, ids.length + position) : position;
  if (typeof args.anchor === 'string') {
    const at = ids.indexOf(args.anchor);
    if (at < 0) throw new MethodError('anchorNotFound');
    const offset = typeof args.anchorOffset === 'number' && Number.isInteger(args.anchorOffset) ? args.anchorOffset : 0;
    start = Math.max(0, at + offset);
  }
  const total = ids.length;
  ids = ids.slice(start, limit === undefined ? undefined : start + limit);
  return {
    accountId: ctx.accountId,
    queryState: state,
    canCalculateChanges: false,
    position: start,
    ids,
    ...(args.calculateTotal === true ? { total } : {}),
    ...(limit !== undefined ? { limit } : {}),
  };
}

/** RFC 8620 §5.6 allows a server to decline; a client then queries again (mailboxes are few). */
async function mailboxQueryChanges(): Promise<JsonObject> {
  throw new MethodError('cannotCalculateChanges', 'query again: mailbox queries are not tracked');
}

// ---------------------------------------------------------------------------------------------
// Mailbox/set (RFC 8620 §5.3, RFC 8621 §2.5)

/** A FolderError as the SetError RFC 8621 §2.5 names. */
function folderSetError(e: unknown): SetError {
  if (!(e instanceof FolderError)) throw e;
  switch (e.code) {
    case 'NoSuchFolder':
      return { type: 'notFound', description: e.message };
    case 'AlreadyExists':
      return { type: 'invalidProperties', properties: ['name'], description: 'a mailbox of that name exists under that parent' };
    case 'HasChildren':
      return { type: 'mailboxHasChild', description: e.message };
    case 'BadName':
      return { type: 'invalidProperties', properties: ['name'], description: e.message };
    case 'Refused':
      return { type: 'forbidden', description: e.message };
  }
}

/** Checks a Mailbox name (RFC 8621 §2: non-empty, no control characters; ours: no `/`, which
 * separates levels of the folder's full name that IMAP sees). */
function nameError(name: unknown): SetError | undefined {
  if (typeof name !== 'string' || name === '' || name.includes(DELIMITER) || /[\x00-\x1f\x7f*%]/.test(name) || Buffer.byteLength(name) > 255)
    return { type: 'invalidProperties', properties: ['name'], description: 'name must be 1-255 octets without control characters, `/`, `*` or `%`' };
  return undefined;
}

const SETTABLE = new Set(['name', 'parentId', 'role', 'sortOrder', 'isSubscribed']);

async function mailboxSet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const oldState = await checkIfInState(ctx, args);
  const created: Record<string, JsonObject> = {};
  const notCreated: Record<string, SetError> = {};
  const updated: Record<string, JsonObject | null> = {};
  const notUpdated: Record<string, SetError> = {};
  const destroyed: string[] = [];
  const notDestroyed: Record<string, SetError> = {};
  const objectArg = (v: unknown, name: string): Record<string, unknown> => {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) throw new MethodError('invalidArguments', `${name} must be an object`);
    return v as Record<string, unknown>;
  };
  const create = objectArg(args.create, 'create');
  const update = objectArg(args.update, 'update');
  const destroy = idList(args.destroy, 'destroy') ?? [];
  const removeEmails = args.onDestroyRemoveEmails === true;

  const byId = async () => new Map((await ctx.folders.list(ctx.user)).map((f) => [f.id, f]));

  // Creates, parents before children when a child names its parent by creation id.
  let pending = Object.entries(create);
  while (pending.length) {
    const waiting: typeof pending = [];
    for (const [cid, raw] of pending) {
      const parentRef = (raw as JsonObject | null)?.parentId;
      if (
        typeof parentRef === 'string' &&
        parentRef.startsWith('#') &&
        pending.some(([other]) => `#${other}` === parentRef) &&
        !ctx.createdIds.has(parentRef.slice(1))
      ) {
        waiting.push([cid, raw]);
        continue;
      }
      const r = await createOne(ctx, raw, await byId());
      if (r.error) notCreated[cid] = r.error;
      else {
        created[cid] = r.ok;
        ctx.createdIds.set(cid, String(r.ok.id));
      }
    }
    if (waiting.length === pending.length) {
      for (const [cid] of waiting)
        notCreated[cid] = { type: 'invalidProperties', properties: ['parentId'], description: 'parentId names a mailbox not created' };
      break;
    }
    pending = waiting;
  }

  for (const [rawId, patch] of Object.entries(update)) {
    const id = resolveId(ctx, rawId) ?? rawId;
    const r = await updateOne(ctx, id, patch, await byId());
    if (r) notUpdated[rawId] = r;
    else updated[rawId] = null;
  }

  // Children before their parents when both are destroyed (RFC 8620 §5.3 lets the server order).
  const depthOf = (f: FolderInfo | undefined) => (f ? f.name.split(DELIMITER).length : 0);
  const before = await byId();
  const order = [...destroy].sort((a, b) => depthOf(before.get(resolveId(ctx, b) ?? b)) - depthOf(before.get(resolveId(ctx, a) ?? a)));
  for (const rawId of order) {
    const id = resolveId(ctx, rawId) ?? rawId;
    const folders = await byId();
    if (!folders.has(id)) {
      notDestroyed[rawId] = { type: 'notFound' };
      continue;
    }
    if (id === INBOX) {
      notDestroyed[rawId] = { type: 'forbidden', description: 'the inbox cannot be destroyed' };
      continue;
    }
    if ([...folders.values()].some((f) => f.parentId === id)) {
      notDestroyed[rawId] = { type: 'mailboxHasChild' };
      continue;
    }
    try {
      if (!removeEmails && (await ctx.folders.status(ctx.user, id)).count > 0) {
        notDestroyed[rawId] = { type: 'mailboxHasEmail' };
        continue;
      }
      // Emails only here go with the folder; those also elsewhere keep their other mailboxes.
      await ctx.folders.delete(ctx.user, id);
      destroyed.push(rawId);
    } catch (e) {
      notDestroyed[rawId] = folderSetError(e);
    }
  }
  return setResponse(ctx.accountId, oldState, await currentState(ctx), { created, updated, destroyed, notCreated, notUpdated, notDestroyed });
}

async function createOne(
  ctx: JmapContext,
  raw: unknown,
  folders: Map<string, FolderInfo>,
): Promise<{ ok: JsonObject; error?: undefined } | { error: SetError }> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    return { error: { type: 'invalidProperties', description: 'a Mailbox must be an object' } };
  const m = raw as JsonObject;
  const bad = Object.keys(m).filter((k) => !SETTABLE.has(k));
  if (bad.length) return { error: { type: 'invalidProperties', properties: bad, description: 'server-set or unknown properties' } };
  const badName = nameError(m.name);
  if (badName) return { error: badName };
  let parentId = '';
  if (m.parentId !== undefined && m.parentId !== null) {
    const resolved = typeof m.parentId === 'string' ? resolveId(ctx, m.parentId) : undefined;
    if (!resolved || !folders.has(resolved)) return { error: { type: 'invalidProperties', properties: ['parentId'], description: 'no such parent mailbox' } };
    parentId = resolved;
  }
  let specialUse: SpecialUse | undefined;
  if (m.role !== undefined && m.role !== null) {
    specialUse = typeof m.role === 'string' ? USE_BY_ROLE[m.role] : undefined;
    if (!specialUse)
      return { error: { type: 'invalidProperties', properties: ['role'], description: 'role must be one of sent, drafts, trash, junk, archive' } };
    if ([...folders.values()].some((f) => f.specialUse === specialUse))
      return { error: { type: 'invalidProperties', properties: ['role'], description: 'another mailbox has that role' } };
  }
  if (m.sortOrder !== undefined && m.sortOrder !== null && typeof m.sortOrder !== 'number')
    return { error: { type: 'invalidProperties', properties: ['sortOrder'] } };
  if (m.isSubscribed !== undefined && typeof m.isSubscribed !== 'boolean') return { error: { type: 'invalidProperties', properties: ['isSubscribed'] } };
  const parentName = parentId ? folders.get(parentId)!.name : '';
  try {
    const info = await ctx.folders.create(
      ctx.user,
      parentName ? `${parentName}${DELIMITER}${String(m.name)}` : String(m.name),
      specialUse ? { specialUse } : {},
    );
    // RFC 8621 §2: isSubscribed defaults to... the client's value; ours default to subscribed.
    if (m.isSubscribed === false) await ctx.folders.subscribe(ctx.user, info.id, false);
    const view = toMailbox(
      { info: { ...info, subscribed: m.isSubscribed !== false }, status: { count: 0, unseen: 0, bytes: 0, uidNext: 1, uidValidity: 0, highestModSeq: 0 } },
      ['id', 'sortOrder', 'totalEmails', 'unreadEmails', 'totalThreads', 'unreadThreads', 'myRights', 'isSubscribed', 'role'],
    );
    return { ok: view };
  } catch (e) {
    return { error: folderSetError(e) };
  }
}

async function updateOne(ctx: JmapContext, id: string, raw: unknown, folders: Map<string, FolderInfo>): Promise<SetError | undefined> {
  const info = folders.get(id);
  if (!info) return { type: 'notFound' };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { type: 'invalidPatch' };
  const patch = raw as JsonObject;
  const bad = Object.keys(patch).filter((k) => !SETTABLE.has(k));
  if (bad.length) return { type: 'invalidProperties', properties: bad };
  // Role and sortOrder are derived from the folder (special use, fixed order): only their current
  // value is accepted, as RFC 8620 §5.3 lets a server refuse changing a property.
  if ('role' in patch && patch.role !== roleOf(info)) return { type: 'invalidProperties', properties: ['role'], description: 'role cannot be changed' };
  if ('sortOrder' in patch && patch.sortOrder !== sortOrderOf(info))
    return { type: 'invalidProperties', properties: ['sortOrder'], description: 'sortOrder cannot be changed' };
  if ('isSubscribed' in patch && typeof patch.isSubscribed !== 'boolean') return { type: 'invalidProperties', properties: ['isSubscribed'] };
  const newName = 'name' in patch ? patch.name : leafOf(info);
  if ('name' in patch) {
    const badName = nameError(newName);
    if (badName) return badName;
  }
  let parentId = info.parentId;
  if ('parentId' in patch) {
    if (patch.parentId === null) parentId = '';
    else {
      const resolved = typeof patch.parentId === 'string' ? resolveId(ctx, patch.parentId) : undefined;
      if (!resolved || !folders.has(resolved)) return { type: 'invalidProperties', properties: ['parentId'], description: 'no such parent mailbox' };
      // No mailbox may become its own ancestor (RFC 8621 §2.5).
      for (let cur: string | undefined = resolved, depth = 0; cur && depth < 100; cur = folders.get(cur)?.parentId, depth++)
        if (cur === id) return { type: 'invalidProperties', properties: ['parentId'], description: 'a mailbox cannot be moved below itself' };
      parentId = resolved;
    }
  }
  try {
    if (parentId !== info.parentId || newName !== leafOf(info)) {
      if (id === INBOX) return { type: 'forbidden', description: 'the inbox cannot be renamed or moved' };
      const parentName = parentId ? folders.get(parentId)!.name : '';
      await ctx.folders.rename(ctx.user, id, parentName ? `${parentName}${DELIMITER}${String(newName)}` : String(newName));
    }
    if ('isSubscribed' in patch && patch.isSubscribed !== info.subscribed) await ctx.folders.subscribe(ctx.user, id, patch.isSubscribed as boolean);
    return undefined;
  } catch (e) {
    return folderSetError(e);
  }
}

/** The Mailbox methods of the mail capability (email.ts adds the Email ones to the same capability). */
export const mailboxMethods: JmapMethods = {
  capability: MAIL_CAPABILITY,
  // RFC 8621 §1.3.1. An Email may be in any number of folders (copies share one blob), folders
  // nest without a depth limit; the web listener adds maxSizeAttachmentsPerEmail from the
  // message size limit.
  accountCapability: { maxMailboxesPerEmail: null, maxMailboxDepth: null, maxSizeMailboxName: 255, mayCreateTopLevelMailbox: true },
  methods: {
    'Mailbox/get': mailboxGet,
    'Mailbox/changes': mailboxChanges,
    'Mailbox/query': mailboxQuery,
    'Mailbox/queryChanges': mailboxQueryChanges,
    'Mailbox/set': mailboxSet,
  },
};
