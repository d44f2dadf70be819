/**
 * A JmapContext for calling method handlers directly over real storage, as the engine would build
 * it for one request (containers/web/jmap/types.ts). The blob and `call` parts are the edge of
 * these tests: `blobs` serves `G<emailId>` for raw messages the test registers, and `call`
 * dispatches to handlers the test registers (the real Email/set and Email/get are another
 * helper's work).
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { JmapBlob, JmapContext, JmapMethod, JsonObject } from '../../containers/web/jmap/types.js';
import { MethodError } from '../../containers/web/jmap/types.js';
import type { Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import type { Storage } from '../../core/storage/ports.js';

/** `A` + 24 hex of sha256(lower-case address), as types.ts defines the accountId. */
export function accountIdOf(user: string): string {
  return `A${createHash('sha256').update(user.toLowerCase()).digest('hex').slice(0, 24)}`;
}

/** `M` + 24 hex of sha256(blobKey), as types.ts defines the emailId. */
export function emailIdOf(blobKey: string): string {
  return `M${createHash('sha256').update(blobKey).digest('hex').slice(0, 24)}`;
}

/** A test context and what it records. */
export interface TestContext {
  ctx: JmapContext;
  /** Implicit calls made through ctx.call, in order. */
  calls: [string, JsonObject][];
  /** Handlers ctx.call dispatches to. */
  methods: Map<string, JmapMethod>;
  /** Raw messages served as `G<emailId>` blobs, by emailId (the blob key they are stored under). */
  emails: Map<string, string>;
}

/** Builds a context for `user` over `storage`. */
export function testContext(user: string, config: Config, storage: Storage): TestContext {
  const calls: [string, JsonObject][] = [];
  const methods = new Map<string, JmapMethod>();
  const emails = new Map<string, string>();
  const ctx: JmapContext = {
    user,
    accountId: accountIdOf(user),
    config,
    storage,
    folders: new FolderStore(storage.tables, storage.mail),
    log: silentLogger,
    createdIds: new Map(),
    followUps: [],
    blobs: {
      async get(blobId: string): Promise<JmapBlob | undefined> {
        const key = blobId.startsWith('G') ? emails.get(blobId.slice(1)) : undefined;
        if (!key) return undefined;
        const info = await storage.mail.head(key);
        return { size: info.size, type: 'message/rfc822', open: async () => (await storage.mail.get(key)).body };
      },
      async put() {
        throw new Error('not used by these tests');
      },
    },
    async call(name: string, args: JsonObject): Promise<JsonObject> {
      calls.push([name, args]);
      const m = methods.get(name);
      if (!m) throw new MethodError('unknownMethod', name);
      return m(args, ctx);
    },
  };
  return { ctx, calls, methods, emails };
}

/** Stores a raw message for `user` to send and returns its emailId. */
export async function putEmail(t: TestContext, storage: Storage, key: string, raw: string): Promise<string> {
  await storage.mail.put(key, Readable.from([Buffer.from(raw)]));
  const id = emailIdOf(key);
  t.emails.set(id, key);
  return id;
}
