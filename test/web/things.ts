/**
 * A small test-only JMAP method module, so the engine can be tested before the mail modules
 * exist: `Thing/set` creates objects (recording creation ids), `Thing/get` reads them (creation
 * ids resolved, maxObjectsInGet enforced), and methods that fail in each way a module can.
 */
import { checkObjectsInGet, checkObjectsInSet, resolveCreationId } from '../../containers/web/jmap/engine.js';
import type { RegisteredModule } from '../../containers/web/jmap/registry.js';
import { MethodError, type JsonObject } from '../../containers/web/jmap/types.js';

export const THINGS = 'urn:test:things';
export const ELSEWHERE = 'urn:test:elsewhere';

/** Thing objects of the process, by id. */
const things = new Map<string, JsonObject>();
let next = 1;

export const thingsModule: RegisteredModule = {
  capability: THINGS,
  sessionCapability: { maxThings: 7 },
  accountCapability: { colours: ['red'] },
  methods: {
    'Thing/set': async (args, ctx) => {
      checkObjectsInSet(args, ctx.config);
      const created: Record<string, JsonObject> = {};
      for (const [cid, value] of Object.entries((args.create ?? {}) as Record<string, JsonObject>)) {
        const id = `X${next++}`;
        things.set(id, { ...value, id });
        ctx.createdIds.set(cid, id);
        created[cid] = { id };
      }
      if (args.note) ctx.followUps.push(['Thing/noted', { note: args.note }]);
      return { accountId: ctx.accountId, created };
    },
    'Thing/get': async (args, ctx) => {
      checkObjectsInGet(args.ids, ctx.config);
      if (!Array.isArray(args.ids)) throw new MethodError('invalidArguments', 'ids is required here');
      const list: JsonObject[] = [];
      const notFound: string[] = [];
      for (const raw of args.ids as string[]) {
        const id = resolveCreationId(raw, ctx);
        const t = id === undefined ? undefined : things.get(id);
        if (t) list.push(t);
        else notFound.push(raw);
      }
      return { accountId: ctx.accountId, list, notFound };
    },
    'Thing/forbidden': async () => {
      throw new MethodError('forbidden', 'not for you');
    },
    'Thing/crash': async () => {
      throw new Error('boom');
    },
    'Thing/echoTwice': async (args, ctx) => ({ first: await ctx.call('Core/echo', args), user: ctx.user }),
  },
};

/** A capability the server knows but the account does not have. */
export const elsewhereModule: RegisteredModule = {
  capability: ELSEWHERE,
  onAccount: false,
  methods: { 'Elsewhere/get': async () => ({}) },
};
