/**
 * Identity (RFC 8621 §6): an address the user may send as. Their own and each alias that leads to
 * them (what the submission listener allows as MAIL FROM, Accounts.canSendAs), plus any the user
 * creates for one of those addresses with another name or signature.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Accounts } from '../../../core/accounts/accounts.js';
import { setResponse } from './engine.js';
import { changes, idsArg, intState, pick, RecordList, setObject } from './submission-records.js';
import { MethodError, type JmapContext, type JsonObject, type SetError } from './types.js';

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

export async function identityChanges(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const [rev, addresses] = typeof args.sinceState === 'string' ? args.sinceState.split('.') : [];
  const now = await identityState(ctx);
  if (typeof args.sinceState === 'string' && addresses !== now.split('.')[1])
    throw new MethodError('cannotCalculateChanges', 'the addresses you may send as changed');
  const r = await changes(identities(ctx), { ...args, ...(rev === undefined ? {} : { sinceState: rev }) }, ctx, intState);
  return { ...r, oldState: args.sinceState, newState: `${String(r.newState)}.${addresses}` };
}

/** The user's identities: stored ones (edited or created), then one per remaining address. */
export async function identityList(ctx: JmapContext): Promise<JsonObject[]> {
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

export async function identityGet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
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

export async function identitySet(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
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
