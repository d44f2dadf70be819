/**
 * The per-user record lists behind Identity (RFC 8621 §6) and EmailSubmission (§7): records with
 * a revision counter, which give both types their state string and /changes (RFC 8620 §5.2), and
 * the argument helpers their /get and /set share.
 */
import type { Item, Tables } from '../../../core/storage/ports.js';
import { MethodError, type JmapContext, type JsonObject } from './types.js';

/** Most records one /changes or /query reads (the user's whole list, bounded by the TTL). */
const MAX_RECORDS = 5000;

export interface Rec {
  id: string;
  createdRev: number;
  rev: number;
  destroyed?: boolean;
  data: JsonObject;
}

/** Records of one kind for one user: `<kind>#<user>` / `R#<id>`, and the counter at `STATE`. */
export class RecordList {
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
export async function changes(list: RecordList, args: JsonObject, ctx: JmapContext, parse: (s: string) => number | undefined): Promise<JsonObject> {
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

export const intState = (s: string): number | undefined => (/^\d{1,15}$/.test(s) ? Number(s) : undefined);

export function idsArg(args: JsonObject): string[] | null {
  const ids = args.ids;
  if (ids === undefined || ids === null) return null;
  if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string')) throw new MethodError('invalidArguments', 'ids must be a list of ids or null');
  return ids as string[];
}

export function pick(o: JsonObject, properties: unknown, all: readonly string[]): JsonObject {
  if (properties === undefined || properties === null) return o;
  if (!Array.isArray(properties) || properties.some((p) => typeof p !== 'string' || !all.includes(p)))
    throw new MethodError('invalidArguments', 'unknown properties');
  return Object.fromEntries(Object.entries(o).filter(([k]) => k === 'id' || (properties as string[]).includes(k)));
}

export function setObject(args: JsonObject, name: string): JsonObject {
  const v = args[name];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new MethodError('invalidArguments', `${name} must be an object`);
  return v as JsonObject;
}
