/**
 * The JMAP request engine (RFC 8620 §3): checks a parsed API request, runs its method calls in
 * order, resolves result references (§3.7) and creation ids (§3.3, §5.3), turns thrown
 * MethodErrors into `error` responses (§3.6.2) and anything else into `serverFail`, and sends a
 * method's follow-up responses after its own. No I/O of its own: the web listener reads the body
 * and hands the parsed JSON here; a request-level problem (§3.6.1) is thrown as a RequestProblem,
 * which the listener writes as RFC 7807 JSON.
 */
import type { Config } from '../../../core/config.js';
import type { Logger } from '../../../core/log.js';
import type { SpamScanner } from '../../../core/mail/spam.js';
import type { FolderStore } from '../../../core/mailbox/folders.js';
import type { Storage } from '../../../core/storage/ports.js';
import type { JmapRegistry } from './registry.js';
import { MethodError, type JmapBlobs, type JmapContext, type JsonObject } from './types.js';

/** A request-level problem (RFC 8620 §3.6.1), answered as RFC 7807 `application/problem+json`. */
export class RequestProblem extends Error {
  constructor(
    /** The last part of `urn:ietf:params:jmap:error:<type>`, e.g. `notJSON`. */
    readonly type: 'notJSON' | 'notRequest' | 'limit' | 'unknownCapability',
    readonly status: number,
    readonly detail: string,
    readonly extra: JsonObject = {},
  ) {
    super(detail);
  }

  /** The RFC 7807 body. */
  body(): JsonObject {
    return { type: `urn:ietf:params:jmap:error:${this.type}`, status: this.status, detail: this.detail, ...this.extra };
  }
}

/** What the engine needs besides the request. */
export interface EngineServices {
  config: Config;
  storage: Storage;
  folders: FolderStore;
  log: Logger;
  registry: JmapRegistry;
  /** The outbound spam scanner for EmailSubmission (JmapContext.spam). */
  spam?: SpamScanner;
}

/** The authenticated side of one request. */
export interface RequestAuth {
  user: string;
  accountId: string;
  blobs: JmapBlobs;
  /** The session resource's state (§2), sent back as `sessionState`. */
  sessionState: string;
}

type Invocation = [string, JsonObject, string];

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks the shape of a Request object (§3.3); a notRequest problem otherwise. */
function parseRequest(body: unknown): { using: string[]; calls: Invocation[]; createdIds?: Record<string, string> } {
  const bad = (detail: string) => new RequestProblem('notRequest', 400, detail);
  if (!isObject(body)) throw bad('the request is not a JSON object');
  const { using, methodCalls, createdIds } = body;
  if (!Array.isArray(using) || !using.every((u) => typeof u === 'string')) throw bad('"using" must be an array of strings');
  if (!Array.isArray(methodCalls)) throw bad('"methodCalls" must be an array');
  for (const c of methodCalls) {
    if (!Array.isArray(c) || c.length !== 3 || typeof c[0] !== 'string' || !isObject(c[1]) || typeof c[2] !== 'string') {
      throw bad('each method call must be [name, arguments object, call id]');
    }
  }
  if (createdIds !== undefined && (!isObject(createdIds) || !Object.values(createdIds).every((v) => typeof v === 'string'))) {
    throw bad('"createdIds" must map creation ids to ids');
  }
  return { using: using as string[], calls: methodCalls as Invocation[], ...(createdIds ? { createdIds: createdIds as Record<string, string> } : {}) };
}

/**
 * Evaluates a result reference's path (§3.7): an RFC 6901 JSON Pointer, extended so that `*` on
 * an array applies the rest of the path to every item and flattens array results one level.
 * Written here because no JSON Pointer library knows JMAP's `*`. Throws on a path that does not
 * resolve.
 */
export function evaluatePointer(value: unknown, path: string): unknown {
  if (path === '') return value;
  if (!path.startsWith('/')) throw new Error('a path starts with "/"');
  const tokens = path
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
  const walk = (v: unknown, i: number): unknown => {
    if (i === tokens.length) return v;
    const t = tokens[i];
    if (Array.isArray(v)) {
      if (t === '*') {
        const out: unknown[] = [];
        for (const item of v) {
          const r = walk(item, i + 1);
          if (Array.isArray(r)) out.push(...(r as unknown[]));
          else out.push(r);
        }
        return out;
      }
      if (!/^(0|[1-9][0-9]*)$/.test(t) || Number(t) >= v.length) throw new Error(`no item ${t}`);
      return walk(v[Number(t)], i + 1);
    }
    if (isObject(v) && Object.prototype.hasOwnProperty.call(v, t)) return walk(v[t], i + 1);
    throw new Error(`no property ${t}`);
  };
  return walk(value, 0);
}

/** Resolves `#name` arguments (§3.7) against the responses so far; MethodError when one fails. */
function resolveReferences(args: JsonObject, responses: Invocation[]): JsonObject {
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(args)) {
    if (!k.startsWith('#')) {
      out[k] = v;
      continue;
    }
    const name = k.slice(1);
    if (Object.prototype.hasOwnProperty.call(args, name)) throw new MethodError('invalidArguments', `both ${name} and #${name} are given`);
    if (!isObject(v) || typeof v.resultOf !== 'string' || typeof v.name !== 'string' || typeof v.path !== 'string') {
      throw new MethodError('invalidResultReference', `#${name} is not a ResultReference (resultOf, name, path)`);
    }
    const source = responses.find((r) => r[2] === v.resultOf);
    if (!source) throw new MethodError('invalidResultReference', `no earlier response with call id ${v.resultOf}`);
    if (source[0] !== v.name) throw new MethodError('invalidResultReference', `the response ${v.resultOf} is ${source[0]}, not ${v.name}`);
    try {
      out[name] = evaluatePointer(source[1], v.path);
    } catch (e) {
      throw new MethodError('invalidResultReference', `path ${v.path}: ${(e as Error).message}`);
    }
  }
  return out;
}

/** An id argument that may be a creation id (`#abc`, §5.3): the real id, or undefined when the
 * creation id is unknown in this request. Plain ids come back unchanged. */
export function resolveCreationId(id: string, ctx: Pick<JmapContext, 'createdIds'>): string | undefined {
  return id.startsWith('#') ? ctx.createdIds.get(id.slice(1)) : id;
}

/** §5.1: a /get asking for more ids than maxObjectsInGet is refused with requestTooLarge. */
export function checkObjectsInGet(ids: unknown, config: Config): void {
  if (Array.isArray(ids) && ids.length > config.web.maxObjectsInGet) {
    throw new MethodError('requestTooLarge', `at most ${config.web.maxObjectsInGet} ids in one /get`);
  }
}

/** §5.3: a /set with more creates, updates and destroys than maxObjectsInSet is refused. */
export function checkObjectsInSet(args: JsonObject, config: Config): void {
  const n =
    (isObject(args.create) ? Object.keys(args.create).length : 0) +
    (isObject(args.update) ? Object.keys(args.update).length : 0) +
    (Array.isArray(args.destroy) ? args.destroy.length : 0);
  if (n > config.web.maxObjectsInSet) throw new MethodError('requestTooLarge', `at most ${config.web.maxObjectsInSet} objects in one /set`);
}

/** Runs one API request (already parsed JSON); returns the Response object (§3.4). */
export async function runRequest(services: EngineServices, auth: RequestAuth, body: unknown): Promise<JsonObject> {
  const { registry, config } = services;
  const request = parseRequest(body);
  for (const u of request.using) {
    if (!registry.capabilities.has(u)) throw new RequestProblem('unknownCapability', 400, `unknown capability ${u}`);
  }
  if (request.calls.length > config.web.maxCallsInRequest) {
    throw new RequestProblem('limit', 400, `at most ${config.web.maxCallsInRequest} method calls in one request`, { limit: 'maxCallsInRequest' });
  }
  const using = new Set(request.using);
  const createdIds = new Map(Object.entries(request.createdIds ?? {}));
  const responses: Invocation[] = [];

  const run = async (name: string, args: JsonObject, followUps: [string, JsonObject][]): Promise<JsonObject> => {
    const m = registry.method(name);
    // §3.6.2: a method of a capability the request does not use is as unknown as a missing one.
    if (!m || !using.has(m.capability)) {
      throw new MethodError('unknownMethod', `${name} is not a method of the capabilities in "using"`);
    }
    if (args.accountId !== undefined) {
      if (typeof args.accountId !== 'string') throw new MethodError('invalidArguments', 'accountId must be a string');
      // Only the user's own account exists for them (types.ts): any other id is not found.
      if (args.accountId !== auth.accountId) throw new MethodError('accountNotFound');
      if (!m.onAccount) throw new MethodError('accountNotSupportedByMethod');
    }
    const ctx: JmapContext = {
      user: auth.user,
      accountId: auth.accountId,
      config,
      storage: services.storage,
      folders: services.folders,
      blobs: auth.blobs,
      log: services.log,
      ...(services.spam ? { spam: services.spam } : {}),
      createdIds,
      followUps,
      call: (n, a) => run(n, a, followUps),
    };
    return m.run(args, ctx);
  };

  for (const [name, rawArgs, callId] of request.calls) {
    const followUps: [string, JsonObject][] = [];
    try {
      const args = resolveReferences(rawArgs, responses);
      responses.push([name, await run(name, args, followUps), callId]);
      for (const [n, a] of followUps) responses.push([n, a, callId]);
    } catch (e) {
      if (e instanceof MethodError) {
        responses.push(['error', { type: e.type, ...(e.description ? { description: e.description } : {}), ...e.extra }, callId]);
      } else {
        services.log.error({ err: (e as Error).message, method: name }, 'JMAP method failed');
        responses.push(['error', { type: 'serverFail', description: 'the method failed on the server; nothing more is known' }, callId]);
      }
    }
  }
  return {
    methodResponses: responses,
    ...(request.createdIds ? { createdIds: Object.fromEntries(createdIds) } : {}),
    sessionState: auth.sessionState,
  };
}

/** What a /set (or /copy) did, for setResponse. */
export interface SetOutcome {
  created: Record<string, unknown>;
  updated: Record<string, unknown>;
  destroyed: string[];
  notCreated: Record<string, unknown>;
  notUpdated: Record<string, unknown>;
  notDestroyed: Record<string, unknown>;
}

/** The arguments of a /set response (RFC 8620 §5.3): an empty map or list is sent as null. */
export function setResponse(accountId: string, oldState: string | null, newState: string, r: SetOutcome): JsonObject {
  const orNull = (o: Record<string, unknown>) => (Object.keys(o).length ? o : null);
  return {
    accountId,
    oldState,
    newState,
    created: orNull(r.created),
    updated: orNull(r.updated),
    destroyed: r.destroyed.length ? r.destroyed : null,
    notCreated: orNull(r.notCreated),
    notUpdated: orNull(r.notUpdated),
    notDestroyed: orNull(r.notDestroyed),
  };
}

/** The arguments of a /changes response (RFC 8620 §5.2). */
export function changesResponse(
  accountId: string,
  oldState: string,
  newState: string,
  hasMoreChanges: boolean,
  r: { created: Iterable<string>; updated: Iterable<string>; destroyed: Iterable<string> },
): JsonObject {
  return { accountId, oldState, newState, hasMoreChanges, created: [...r.created], updated: [...r.updated], destroyed: [...r.destroyed] };
}
