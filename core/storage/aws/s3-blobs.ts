/**
 * The Blobs port on one S3 bucket. A put streams its body through a byte counter and a SHA-256
 * hash; a body that fits in one part goes up as a single PutObject (with its SHA-256 kept as
 * metadata), a longer one as a multipart upload that S3 makes visible only when it
 * completes, so a crash mid-put never leaves a partial object. Put-if-absent is S3's conditional
 * write, `If-None-Match: *`, on PutObject or on CompleteMultipartUpload.
 */
import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import type { Logger } from '../../log.js';
import {
  ConditionFailed,
  InvalidRequest,
  TooLarge,
  isStorageError,
  type BlobBody,
  type BlobInfo,
  type BlobListPage,
  type BlobPutOptions,
  type Blobs,
  type ByteRange,
} from '../ports.js';
import { guard, toStorageError } from './errors.js';

/** User-metadata key that holds the hex SHA-256 of a single-part object; hidden from callers. */
const SHA_KEY = 'tomlinson-sha256';

/** S3's smallest multipart part (except the last). */
const MIN_PART_SIZE = 5 * 1024 * 1024;

/** Tuning of the S3 blob adapter. */
export interface S3BlobsOptions {
  /** Bytes per multipart part (S3's minimum is 5 MiB); also the largest body sent as one PutObject. @default 5 MiB */
  partSize?: number;
  /** Parts uploaded at once. Memory held by one put is at most partSize x (queueSize + 2); with the
   * defaults a 100 MB put grows the process by well under 64 MB (test/contract). @default 2 */
  queueSize?: number;
}

/** Blobs on an S3 bucket. */
export class S3Blobs implements Blobs {
  private readonly partSize: number;
  private readonly queueSize: number;

  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly log: Logger,
    options: S3BlobsOptions = {},
  ) {
    this.partSize = Math.max(MIN_PART_SIZE, options.partSize ?? MIN_PART_SIZE);
    this.queueSize = Math.max(1, options.queueSize ?? 2);
  }

  async put(key: string, body: BlobBody, options: BlobPutOptions = {}): Promise<BlobInfo> {
    checkKey(key);
    const limit = options.maxBytes ?? Number.POSITIVE_INFINITY;
    const hash = createHash('sha256');
    const counted: Metered = { bytes: 0 };
    const source = meter(toChunks(body), hash, limit, counted);
    const what = `s3://${this.bucket}/${key}`;
    const userMetadata = cleanMetadata(options.metadata);
    const metadata = { ...(userMetadata ?? {}) };

    // Read up to one part: if the body ends there, it goes up as one PutObject whose SHA-256 is
    // known before the request starts and can be stored with it.
    const first: Buffer[] = [];
    let firstBytes = 0;
    let ended = false;
    try {
      while (firstBytes <= this.partSize) {
        const next = await source.next();
        if (next.done) {
          ended = true;
          break;
        }
        first.push(next.value);
        firstBytes += next.value.length;
      }
    } catch (e) {
      await source.return(undefined).catch(() => undefined);
      // TooLarge, or the caller's own stream failing: neither is the backend's fault.
      throw e;
    }

    if (ended) {
      const data = Buffer.concat(first, firstBytes);
      const sha256 = hash.digest('hex');
      await guard(what, () =>
        this.s3.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: data,
            ContentLength: data.length,
            ContentType: options.contentType,
            Metadata: { ...metadata, [SHA_KEY]: sha256 },
            ...(options.ifAbsent ? { IfNoneMatch: '*' } : {}),
          }),
        ),
      );
      return infoFrom(key, data.length, options.contentType, { ...metadata, [SHA_KEY]: sha256 }, new Date());
    }

    if (options.ifAbsent) {
      // Fail before sending gigabytes; CompleteMultipartUpload's If-None-Match still decides races.
      const exists = await this.exists(key).catch(async (e: unknown) => {
        await source.return(undefined).catch(() => undefined);
        throw e;
      });
      if (exists) {
        await source.return(undefined).catch(() => undefined);
        throw new ConditionFailed(`${what} exists`);
      }
    }

    try {
      await this.multipart(key, what, first, source, {
        ContentType: options.contentType,
        Metadata: metadata,
        ...(options.ifAbsent ? { IfNoneMatch: '*' } : {}),
      });
    } catch (e) {
      if (counted.bytes > limit) throw new TooLarge(limit, { cause: e });
      if (counted.sourceError !== undefined) throw counted.sourceError;
      throw toStorageError(e, what);
    }
    this.log.debug({ bucket: this.bucket, key, size: counted.bytes }, 'multipart put done');
    return { ...infoFrom(key, counted.bytes, options.contentType, metadata, new Date()), sha256: hash.digest('hex') };
  }

  /**
   * A multipart upload from `first` (already read) and the rest of `source`. Parts are copied
   * into at most queueSize + 1 reusable buffers of partSize bytes, so a put holds that much memory
   * whatever the object's size (lib-storage's Upload concatenates and copies each part instead).
   * The object appears only at CompleteMultipartUpload; any failure aborts the upload.
   */
  private async multipart(
    key: string,
    what: string,
    first: Buffer[],
    source: AsyncGenerator<Buffer>,
    params: { ContentType?: string; Metadata: Record<string, string>; IfNoneMatch?: string },
  ): Promise<void> {
    const created = await this.s3.send(
      // CRC32 part checksums, as the SDK adds them to UploadPart by default (lib-storage does the same).
      new CreateMultipartUploadCommand({
        Bucket: this.bucket,
        Key: key,
        ContentType: params.ContentType,
        Metadata: params.Metadata,
        ChecksumAlgorithm: 'CRC32',
      }),
    );
    const uploadId = created.UploadId!;
    const parts: CompletedPart[] = [];
    const free: Buffer[] = [];
    let allocated = 0;
    const inflight = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;

    const takeSlot = async (): Promise<Buffer> => {
      while (free.length === 0 && allocated > this.queueSize && inflight.size > 0) await Promise.race(inflight);
      if (failure) throw failure.error;
      const slot = free.pop();
      if (slot) return slot;
      allocated++;
      return Buffer.allocUnsafe(this.partSize);
    };
    const send = (slot: Buffer, length: number, partNumber: number): void => {
      const p = this.s3
        .send(
          new UploadPartCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId: uploadId,
            PartNumber: partNumber,
            Body: slot.subarray(0, length),
            ContentLength: length,
          }),
        )
        .then(
          (res) => {
            parts.push({ PartNumber: partNumber, ETag: res.ETag, ...(res.ChecksumCRC32 ? { ChecksumCRC32: res.ChecksumCRC32 } : {}) });
            free.push(slot);
          },
          (e: unknown) => {
            failure ??= { error: e };
          },
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
    };

    try {
      let partNumber = 0;
      let slot = await takeSlot();
      let fill = 0;
      const chunks = (async function* () {
        while (first.length) yield first.shift()!;
        yield* source;
      })();
      for await (const chunk of chunks) {
        let off = 0;
        while (off < chunk.length) {
          if (fill === this.partSize) {
            // S3 allows 10,000 parts; past that the object cannot be completed.
            if (partNumber >= 10_000) throw new InvalidRequest(`${what}: more than 10,000 parts of ${this.partSize} bytes`);
            send(slot, fill, ++partNumber);
            slot = await takeSlot();
            fill = 0;
          }
          const n = Math.min(this.partSize - fill, chunk.length - off);
          chunk.copy(slot, fill, off, off + n);
          fill += n;
          off += n;
        }
      }
      send(slot, fill, ++partNumber);
      while (inflight.size) await Promise.race(inflight);
      if (failure) throw failure.error;
      parts.sort((x, y) => x.PartNumber! - y.PartNumber!);
      await this.s3.send(
        new CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts },
          // S3 makes the object visible only now, and refuses with 412 when the key exists by then.
          ...(params.IfNoneMatch ? { IfNoneMatch: params.IfNoneMatch } : {}),
        }),
      );
    } catch (e) {
      await source.return(undefined).catch(() => undefined);
      while (inflight.size) await Promise.race(inflight);
      await this.s3.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch((abortError: unknown) => {
        // An upload left behind is removed by the bucket's lifecycle rule for incomplete uploads.
        this.log.warn({ bucket: this.bucket, key, err: (abortError as Error).message }, 'aborting a multipart upload failed');
      });
      throw e;
    }
  }

  async get(key: string, options: { range?: ByteRange } = {}): Promise<{ info: BlobInfo; body: Readable }> {
    checkKey(key);
    const range = options.range;
    if (
      range &&
      (!Number.isSafeInteger(range.start) || range.start < 0 || (range.end !== undefined && (!Number.isSafeInteger(range.end) || range.end < range.start)))
    ) {
      throw new InvalidRequest(`byte range ${JSON.stringify(range)}`);
    }
    const res = await guard(`s3://${this.bucket}/${key}`, () =>
      this.s3.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          // RFC 9110 §14.1.2: bytes=first-last, both inclusive; "first-" runs to the end.
          Range: range ? `bytes=${range.start}-${range.end ?? ''}` : undefined,
        }),
      ),
    );
    // With a range, Content-Range "bytes 0-9/1234" carries the whole object's size.
    const total = /\/(\d+)$/.exec(res.ContentRange ?? '')?.[1];
    const body = res.Body ? guardStream(res.Body as Readable, `s3://${this.bucket}/${key}`) : Readable.from([]);
    return {
      info: infoFrom(key, total !== undefined ? Number(total) : (res.ContentLength ?? 0), res.ContentType, res.Metadata, res.LastModified),
      body,
    };
  }

  /** None: every S3 read is a network request, which no caller may wait for synchronously. */
  smallReader(): undefined {
    return undefined;
  }

  async head(key: string): Promise<BlobInfo> {
    checkKey(key);
    const res = await guard(`s3://${this.bucket}/${key}`, () => this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key })));
    return infoFrom(key, res.ContentLength ?? 0, res.ContentType, res.Metadata, res.LastModified);
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    // S3 answers 204 for an absent key too, which is the idempotence the port asks for.
    await guard(`s3://${this.bucket}/${key}`, () => this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })));
  }

  async list(prefix: string, options: { limit?: number; cursor?: string } = {}): Promise<BlobListPage> {
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidRequest('list limit must be 1..1000');
    if (typeof prefix !== 'string') throw new InvalidRequest('list prefix must be a string');
    // ListObjectsV2 returns keys in UTF-8 binary order, at most 1000 per call.
    const res = await guard(`s3://${this.bucket}/${prefix}*`, () =>
      this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          MaxKeys: limit,
          ContinuationToken: options.cursor || undefined,
        }),
      ),
    );
    const items: BlobInfo[] = (res.Contents ?? []).map((o) => ({ key: o.Key!, size: o.Size ?? 0, lastModified: o.LastModified }));
    return { items, cursor: res.IsTruncated && res.NextContinuationToken ? res.NextContinuationToken : undefined };
  }

  /** True when the key exists now. */
  private async exists(key: string): Promise<boolean> {
    try {
      await this.head(key);
      return true;
    } catch (e) {
      if (isStorageError(e, 'NotFound')) return false;
      throw e;
    }
  }
}

/** S3 accepts any 1..1024-byte key; the local family stores keys as paths, so both families
 * refuse what a path cannot hold (NUL, a leading '/', empty, '.' and '..' segments). */
function checkKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0) throw new InvalidRequest('blob key must be a non-empty string');
  if (Buffer.byteLength(key) > 1024) throw new InvalidRequest('blob key longer than 1024 bytes');
  if (key.includes('\0')) throw new InvalidRequest('blob key contains NUL');
  if (key.startsWith('/')) throw new InvalidRequest(`blob key is absolute: ${JSON.stringify(key)}`);
  for (const s of key.split('/')) {
    if (s === '' || s === '.' || s === '..') throw new InvalidRequest(`blob key has an empty, '.' or '..' segment: ${JSON.stringify(key)}`);
  }
}

/** User metadata travels as x-amz-meta-* headers (2 KB in all, ASCII); S3 lower-cases the names. */
function cleanMetadata(m: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!m) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== 'string' || !/^[\x20-\x7e]*$/.test(v)) throw new InvalidRequest(`metadata ${k}: values must be printable ASCII`);
    if (!/^[a-z0-9][a-z0-9-_]*$/i.test(k)) throw new InvalidRequest(`metadata key ${JSON.stringify(k)}: use letters, digits, - and _`);
    if (k.toLowerCase() === SHA_KEY) throw new InvalidRequest(`metadata key ${k} is reserved`);
    out[k.toLowerCase()] = v;
  }
  if (Buffer.byteLength(JSON.stringify(out)) > 2048) throw new InvalidRequest('metadata larger than 2048 bytes');
  return Object.keys(out).length ? out : undefined;
}

function infoFrom(
  key: string,
  size: number,
  contentType: string | undefined,
  meta: Record<string, string> | undefined,
  lastModified: Date | undefined,
): BlobInfo {
  const metadata = { ...(meta ?? {}) };
  const sha256 = metadata[SHA_KEY];
  delete metadata[SHA_KEY];
  return {
    key,
    size,
    ...(sha256 ? { sha256 } : {}),
    ...(contentType ? { contentType } : {}),
    ...(Object.keys(metadata).length ? { metadata } : {}),
    ...(lastModified ? { lastModified } : {}),
  };
}

/**
 * The object's body as the caller reads it: a failure mid-stream (socket reset, the SDK's checksum
 * check) arrives as a StorageError, and a caller that stops reading releases the connection.
 */
function guardStream(src: Readable, what: string): Readable {
  const out = new PassThrough();
  src.once('error', (e) => out.destroy(toStorageError(e, what)));
  out.once('close', () => {
    if (!src.destroyed) src.destroy();
  });
  src.pipe(out);
  return out;
}

/** Every accepted body shape as a sequence of byte chunks. */
async function* toChunks(body: BlobBody): AsyncGenerator<Buffer> {
  if (typeof body === 'string') {
    yield Buffer.from(body);
    return;
  }
  if (body instanceof Uint8Array) {
    yield Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    return;
  }
  for await (const chunk of body as AsyncIterable<Uint8Array | string>) {
    yield typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
}

interface Metered {
  bytes: number;
  /** What the caller's body stream threw, if it did. */
  sourceError?: unknown;
}

/** Passes chunks through, counting and hashing them; throws TooLarge past `limit` bytes. */
async function* meter(src: AsyncGenerator<Buffer>, hash: Hash, limit: number, counted: Metered): AsyncGenerator<Buffer> {
  const it = src[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await it.next();
      } catch (e) {
        counted.sourceError = e;
        throw e;
      }
      if (next.done) return;
      counted.bytes += next.value.length;
      if (counted.bytes > limit) throw new TooLarge(limit);
      hash.update(next.value);
      yield next.value;
    }
  } finally {
    await it.return?.(undefined);
  }
}
