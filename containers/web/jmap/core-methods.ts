/**
 * The methods of the core capability (RFC 8620): `Core/echo` (§4) and `Blob/copy` (§6.3). Every
 * user has one account, so Blob/copy can only "copy" within it: a blob the account can read is
 * already there, and comes back under its own id.
 */
import { MethodError, type JmapMethods, type JsonObject, type SetError } from './types.js';

/** The core capability's methods. */
export const coreModule: JmapMethods = {
  capability: 'urn:ietf:params:jmap:core',
  methods: {
    // §4.1: the arguments, unchanged.
    'Core/echo': async (args) => args,
    'Blob/copy': async (args, ctx) => {
      const { fromAccountId, blobIds } = args;
      if (typeof fromAccountId !== 'string' || !Array.isArray(blobIds) || !blobIds.every((b) => typeof b === 'string')) {
        throw new MethodError('invalidArguments', 'fromAccountId and blobIds (strings) are required');
      }
      if (fromAccountId !== ctx.accountId) throw new MethodError('fromAccountNotFound');
      const copied: Record<string, string> = {};
      const notCopied: Record<string, SetError> = {};
      for (const id of blobIds as string[]) {
        if (await ctx.blobs.get(id)) copied[id] = id;
        else notCopied[id] = { type: 'notFound' };
      }
      const out: JsonObject = {
        fromAccountId,
        accountId: ctx.accountId,
        copied: Object.keys(copied).length ? copied : null,
        notCopied: Object.keys(notCopied).length ? notCopied : null,
      };
      return out;
    },
  },
};
