/**
 * Blobs for JMAP (RFC 8620 §6): uploads stored through the Blobs port under
 * `upload/<accountId>/<blobId>`, so that the key itself says whose they are and no lookup can
 * reach another account's; and the `JmapBlobs` handed to method handlers, which dispatches a
 * blobId by its first letter: `U` an upload (here), anything else to a resolver a method module
 * registers (registry.ts BLOB_RESOLVERS; the mail model's `G`, and its `U<upload>P<n>`, a part of
 * an uploaded message).
 *
 * Uploads are usable for `web.uploadTtlSeconds` after they were made (§6.1 asks for at least one
 * hour); after that `get` treats them as gone, and the orphan sweep (core/mail/sweep.ts, prefix
 * `upload/`) deletes the bytes of the ones nothing references.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { FolderStore } from '../../../core/mailbox/folders.js';
import { isStorageError, type Blobs, type Storage } from '../../../core/storage/ports.js';
import type { JmapBlob, JmapBlobs } from './types.js';

/** The blob key prefix of uploads (the orphan sweep needs it). */
export const UPLOAD_PREFIX = 'upload/';

/** RFC 8620 §1.2: ids are 1 to 255 characters of the URL-safe base64 alphabet. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,255}$/;

/** Whose blob is being asked for, for a resolver. */
export interface BlobOwner {
  user: string;
  accountId: string;
  storage: Storage;
  folders: FolderStore;
  /** Another blob of the owner's, by id, for a resolver that serves parts of a blob (the mail
   * model's `U<upload>P<n>`); given by `jmapBlobs`. */
  blob?: (blobId: string) => Promise<JmapBlob | undefined>;
}

/** Finds a blob of a prefix the engine does not own (e.g. `G…`); undefined when it does not exist
 * or is not the owner's. */
export type BlobResolver = (blobId: string, owner: BlobOwner) => Promise<JmapBlob | undefined>;

/** A media type we pass on as given, or undefined (RFC 6838 §4.2 names, optional parameters). */
export function cleanMediaType(type: string | undefined): string | undefined {
  if (!type) return undefined;
  const t = type.trim();
  return t.length <= 255 && /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;[\x20-\x7e]*)?$/.test(t) ? t : undefined;
}

/** Uploaded blobs of every account. */
export class UploadStore {
  constructor(
    private readonly blobs: Blobs,
    private readonly ttlSeconds: number,
    private readonly now: () => number = Date.now,
  ) {}

  private key(accountId: string, blobId: string): string {
    return `${UPLOAD_PREFIX}${accountId}/${blobId}`;
  }

  /** Streams `body` in; TooLarge (StorageError) past `maxBytes`, and then nothing is kept. */
  async put(accountId: string, body: Readable | Uint8Array, type: string, maxBytes: number): Promise<{ blobId: string; size: number; type: string }> {
    const blobId = `U${randomBytes(12).toString('hex')}`;
    const info = await this.blobs.put(this.key(accountId, blobId), body, { maxBytes, contentType: type });
    return { blobId, size: info.size, type };
  }

  /** The upload if it is the account's and not expired. */
  async get(accountId: string, blobId: string): Promise<JmapBlob | undefined> {
    if (!blobId.startsWith('U') || !ID_PATTERN.test(blobId)) return undefined;
    const key = this.key(accountId, blobId);
    let info;
    try {
      info = await this.blobs.head(key);
    } catch (e) {
      if (isStorageError(e, 'NotFound')) return undefined;
      throw e;
    }
    if (info.lastModified && info.lastModified.getTime() + this.ttlSeconds * 1000 < this.now()) return undefined;
    return {
      size: info.size,
      ...(info.contentType ? { type: info.contentType } : {}),
      open: async () => (await this.blobs.get(key)).body,
    };
  }
}

/** The JmapBlobs of one authenticated request. */
export function jmapBlobs(owner: BlobOwner, uploads: UploadStore, resolvers: Readonly<Record<string, BlobResolver>>, maxSizeUpload: number): JmapBlobs {
  const blobs: JmapBlobs = {
    async get(blobId) {
      if (typeof blobId !== 'string' || !ID_PATTERN.test(blobId)) return undefined;
      // An upload's own id is `U` and hex digits; a longer `U…P<n>` is a part of one, which
      // a module resolves (registered under `U`) reading the upload through `blob`.
      if (/^U[0-9a-f]*$/.test(blobId)) return uploads.get(owner.accountId, blobId);
      const resolve = resolvers[blobId[0]];
      return resolve ? resolve(blobId, { ...owner, blob: (id) => blobs.get(id) }) : undefined;
    },
    put(body, type) {
      return uploads.put(owner.accountId, body, cleanMediaType(type) ?? 'application/octet-stream', maxSizeUpload);
    },
  };
  return blobs;
}
