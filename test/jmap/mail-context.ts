/**
 * Test support for the JMAP mail method suites: a JmapContext over the IMAP harness's real local
 * storage, so IMAP (imaplib) and the JMAP handlers read and write one mailbox. The request engine
 * (another part of issue 22) is not here: its pieces the handlers use are stood in for at this
 * edge only: uploads (`U` blobs) as plain blobs under a per-user prefix, and `call` dispatching
 * to the given method map.
 */
import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { silentLogger } from '../../core/log.js';
import type { JmapBlob, JmapBlobs, JmapContext, JmapMethods, JsonObject } from '../../containers/web/jmap/types.js';
import { MethodError } from '../../containers/web/jmap/types.js';
import type { ImapHarness } from '../imap/harness.js';

export function accountIdOf(user: string): string {
  return 'A' + createHash('sha256').update(user.toLowerCase()).digest('hex').slice(0, 24);
}

/** A context for `user`; `resolve` serves blobIds other than uploads (the mail module's `G` ids). */
export function jmapContext(
  h: ImapHarness,
  user: string,
  methods: JmapMethods[],
  resolve?: (blobId: string, ctx: JmapContext) => Promise<JmapBlob | undefined>,
): JmapContext {
  const uploadKey = (id: string) => `jmap-test-upload/${user}/${id}`;
  const blobs: JmapBlobs = {
    async get(blobId) {
      if (blobId.startsWith('U')) {
        try {
          const info = await h.storage.mail.head(uploadKey(blobId));
          return { size: info.size, type: 'application/octet-stream', open: async () => (await h.storage.mail.get(uploadKey(blobId))).body };
        } catch {
          return undefined;
        }
      }
      return resolve?.(blobId, ctx);
    },
    async put(body, type) {
      const blobId = 'U' + randomUUID().replace(/-/g, '');
      const info = await h.storage.mail.put(uploadKey(blobId), body instanceof Uint8Array ? Readable.from([body]) : body);
      return { blobId, size: info.size, type };
    },
  };
  const ctx: JmapContext = {
    user,
    accountId: accountIdOf(user),
    config: h.config,
    storage: h.storage,
    folders: h.folders,
    blobs,
    log: silentLogger,
    createdIds: new Map(),
    followUps: [],
    async call(name: string, args: JsonObject) {
      for (const m of methods) if (m.methods[name]) return m.methods[name](args, ctx);
      throw new MethodError('unknownMethod');
    },
  };
  return ctx;
}

/** Calls a method the way the engine would: a thrown MethodError becomes ['error', {type}]. */
export async function invoke(ctx: JmapContext, name: string, args: JsonObject): Promise<[string, JsonObject]> {
  try {
    return [name, await ctx.call(name, { accountId: ctx.accountId, ...args })];
  } catch (e) {
    if (e instanceof MethodError) return ['error', { type: e.type, ...e.extra }];
    throw e;
  }
}
