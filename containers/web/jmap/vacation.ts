/**
 * VacationResponse/get and /set (RFC 8621 §8) over the vacation setting the inbound worker answers
 * from (core/mail/vacation.ts), so a reply set here is sent as one set with `tomlinson vacation`.
 * The object is a singleton with id `singleton`; its state is the setting's revision.
 */
import { VacationStore, type StoredVacation, type VacationSetting } from '../../../core/mail/vacation.js';
import { isStorageError } from '../../../core/storage/ports.js';
import { MethodError, type JmapContext, type JmapMethods, type JsonObject, type SetError } from './types.js';

/** RFC 8621 §8: the capability of this data type. */
export const VACATION_CAPABILITY = 'urn:ietf:params:jmap:vacationresponse';

const SINGLETON = 'singleton';
const PROPERTIES = ['id', 'isEnabled', 'fromDate', 'toDate', 'subject', 'textBody', 'htmlBody'] as const;
/** RFC 8620 §1.4 UTCDate: an RFC 3339 date-time with time-offset `Z`. */
const UTC_DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

function toJmap(v: StoredVacation, properties: readonly string[]): JsonObject {
  const all: JsonObject = {
    id: SINGLETON,
    isEnabled: v.isEnabled,
    fromDate: v.fromDate,
    toDate: v.toDate,
    subject: v.subject,
    textBody: v.textBody,
    htmlBody: v.htmlBody,
  };
  // RFC 8620 §5.1: the id is always returned.
  return Object.fromEntries(Object.entries(all).filter(([k]) => k === 'id' || properties.includes(k)));
}

function propertiesArg(args: JsonObject): readonly string[] {
  const p = args.properties;
  if (p === undefined || p === null) return PROPERTIES;
  if (!Array.isArray(p) || p.some((x) => typeof x !== 'string')) throw new MethodError('invalidArguments', 'properties must be a list of strings');
  const unknown = (p as string[]).filter((x) => !(PROPERTIES as readonly string[]).includes(x));
  if (unknown.length) throw new MethodError('invalidArguments', `unknown properties: ${unknown.join(', ')}`);
  return p as string[];
}

/** RFC 8621 §8.1 VacationResponse/get. */
async function get(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const properties = propertiesArg(args);
  const ids = args.ids;
  if (ids !== undefined && ids !== null && (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string')))
    throw new MethodError('invalidArguments', 'ids must be a list of ids or null');
  const v = await new VacationStore(ctx.storage.tables).get(ctx.user);
  const wanted = (ids as string[] | null | undefined) ?? [SINGLETON];
  return {
    accountId: ctx.accountId,
    state: String(v.rev),
    list: wanted.includes(SINGLETON) ? [toJmap(v, properties)] : [],
    notFound: [...new Set(wanted.filter((id) => id !== SINGLETON))],
  };
}

/** The patch's changes, or the SetError that refuses it (RFC 8620 §5.3 invalidProperties). */
function readPatch(patch: unknown): Partial<VacationSetting> | SetError {
  if (!patch || typeof patch !== 'object' || Array.isArray(patch)) return { type: 'invalidPatch' };
  const out: Partial<VacationSetting> = {};
  const bad: string[] = [];
  for (const [k, v] of Object.entries(patch as JsonObject)) {
    switch (k) {
      case 'id':
        if (v !== SINGLETON) bad.push(k);
        break;
      case 'isEnabled':
        if (typeof v === 'boolean') out.isEnabled = v;
        else bad.push(k);
        break;
      case 'fromDate':
      case 'toDate':
        if (v === null || (typeof v === 'string' && UTC_DATE.test(v) && !Number.isNaN(Date.parse(v))))
          out[k] = v === null ? null : new Date(Date.parse(v)).toISOString();
        else bad.push(k);
        break;
      case 'subject':
      case 'textBody':
      case 'htmlBody':
        if (v === null || typeof v === 'string') out[k] = v;
        else bad.push(k);
        break;
      default:
        bad.push(k);
    }
  }
  if (bad.length) return { type: 'invalidProperties', properties: bad };
  return out;
}

/** RFC 8621 §8.2 VacationResponse/set: only an update of the singleton. */
async function set(args: JsonObject, ctx: JmapContext): Promise<JsonObject> {
  const store = new VacationStore(ctx.storage.tables);
  const before = await store.get(ctx.user);
  const oldState = String(before.rev);
  if (args.ifInState !== undefined && args.ifInState !== null && args.ifInState !== oldState) throw new MethodError('stateMismatch');
  const notCreated: Record<string, SetError> = {};
  const notUpdated: Record<string, SetError> = {};
  const notDestroyed: Record<string, SetError> = {};
  const updated: Record<string, null> = {};
  const create = args.create;
  if (create !== undefined && create !== null) {
    if (typeof create !== 'object' || Array.isArray(create)) throw new MethodError('invalidArguments', 'create must be an object');
    for (const id of Object.keys(create)) notCreated[id] = { type: 'singleton', description: 'VacationResponse is a singleton; it cannot be created' };
  }
  const destroy = args.destroy;
  if (destroy !== undefined && destroy !== null) {
    if (!Array.isArray(destroy)) throw new MethodError('invalidArguments', 'destroy must be a list of ids');
    for (const id of destroy) notDestroyed[String(id)] = { type: 'singleton', description: 'VacationResponse is a singleton; it cannot be destroyed' };
  }
  const update = args.update;
  let after = before;
  if (update !== undefined && update !== null) {
    if (typeof update !== 'object' || Array.isArray(update)) throw new MethodError('invalidArguments', 'update must be an object');
    for (const [id, patch] of Object.entries(update as JsonObject)) {
      if (id !== SINGLETON) {
        notUpdated[id] = { type: 'notFound' };
        continue;
      }
      const changes = readPatch(patch);
      if ('type' in changes) {
        notUpdated[id] = changes as SetError;
        continue;
      }
      const fromDate = changes.fromDate !== undefined ? changes.fromDate : after.fromDate;
      const toDate = changes.toDate !== undefined ? changes.toDate : after.toDate;
      if (fromDate && toDate && Date.parse(fromDate) >= Date.parse(toDate)) {
        notUpdated[id] = { type: 'invalidProperties', properties: ['fromDate', 'toDate'], description: 'toDate must be after fromDate' };
        continue;
      }
      try {
        // Conditional on the revision read above, so two racing sets cannot both claim oldState.
        after = await store.set(ctx.user, changes, { ifRev: after.rev });
      } catch (e) {
        if (isStorageError(e, 'ConditionFailed')) throw new MethodError('stateMismatch', 'the vacation response changed meanwhile');
        throw e;
      }
      updated[id] = null;
    }
  }
  return {
    accountId: ctx.accountId,
    oldState,
    newState: String(after.rev),
    created: null,
    updated: Object.keys(updated).length ? updated : null,
    destroyed: null,
    notCreated: Object.keys(notCreated).length ? notCreated : null,
    notUpdated: Object.keys(notUpdated).length ? notUpdated : null,
    notDestroyed: Object.keys(notDestroyed).length ? notDestroyed : null,
  };
}

/** The VacationResponse methods for the engine. */
export const vacationMethods: JmapMethods = {
  capability: VACATION_CAPABILITY,
  sessionCapability: {},
  accountCapability: {},
  methods: { 'VacationResponse/get': get, 'VacationResponse/set': set },
};
