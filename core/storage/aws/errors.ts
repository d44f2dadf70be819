/**
 * Translation of AWS SDK v3 failures into StorageError (STYLE.md example 10): nothing
 * SDK-specific leaves core/storage/aws.
 */
import { ConditionFailed, InvalidRequest, NotFound, StorageError, Unavailable } from '../ports.js';

/** The fields every SDK v3 service exception (and most network errors) carry. */
interface SdkErrorShape {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
  $retryable?: unknown;
}

const CONDITION_FAILED = new Set([
  'ConditionalCheckFailedException',
  // S3 conditional writes (If-None-Match: *): 412, and 409 when a racing write is in progress.
  'PreconditionFailed',
  'ConditionalRequestConflict',
]);

const NOT_FOUND = new Set(['NoSuchKey', 'NotFound', 'NoSuchUpload']);

const UNAVAILABLE = new Set([
  'ThrottlingException',
  'Throttling',
  'ThrottledException',
  'ProvisionedThroughputExceededException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'SlowDown',
  'ServiceUnavailable',
  'InternalServerError',
  'InternalError',
  'InternalFailure',
  'TransactionConflictException',
  'TransactionInProgressException',
  'ItemCollectionSizeLimitExceededException',
  'KMSThrottlingException',
  'RequestTimeout',
  'RequestTimeoutException',
  'TimeoutError',
  'CredentialsProviderError',
  'ExpiredToken',
  'ExpiredTokenException',
  // A missing bucket, table or queue is a deployment fault, not an absent key: report it as the
  // backend being unusable so that callers never mistake it for "no such item".
  'NoSuchBucket',
  'ResourceNotFoundException',
  'QueueDoesNotExist',
  'AWS.SimpleQueueService.NonExistentQueue',
]);

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET']);

/** The SDK error's name (its service exception code), or '' for non-SDK values. */
export function errorName(e: unknown): string {
  if (e === null || typeof e !== 'object') return '';
  const x = e as SdkErrorShape;
  return x.name ?? x.code ?? '';
}

/** True when `e` is the AbortError of an AbortSignal the caller fired. */
export function isAbort(e: unknown): boolean {
  const n = errorName(e);
  return n === 'AbortError' || n === 'RequestAbortedError';
}

/**
 * Maps any failure of an SDK call to a StorageError; `what` names the resource for the message.
 * StorageErrors pass through unchanged.
 */
export function toStorageError(e: unknown, what: string): StorageError {
  if (e instanceof StorageError) return e;
  const x = (e ?? {}) as SdkErrorShape;
  const name = errorName(e);
  const status = x.$metadata?.httpStatusCode;
  const options = { cause: e };
  if (CONDITION_FAILED.has(name)) return new ConditionFailed(what, options);
  if (NOT_FOUND.has(name)) return new NotFound(what, options);
  if (UNAVAILABLE.has(name) || NETWORK_CODES.has(x.code ?? '') || NETWORK_CODES.has(name)) {
    return new Unavailable(`${what} (${name || x.code})`, options);
  }
  if (status !== undefined && status >= 500) return new Unavailable(`${what} (${name} ${status})`, options);
  if (status === 429 || status === 503) return new Unavailable(`${what} (${name} ${status})`, options);
  if (status === 412) return new ConditionFailed(what, options);
  if (status === 404) return new NotFound(what, options);
  if (status !== undefined && status >= 400) return new InvalidRequest(`${what}: ${name}: ${x.message ?? ''}`, options);
  // No HTTP status at all: the request never got an answer (socket, DNS, TLS, timeouts).
  return new Unavailable(`${what} (${name || 'no response'}: ${x.message ?? String(e)})`, options);
}

/** Runs one SDK call and rethrows its failure as a StorageError. */
export async function guard<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw toStorageError(e, what);
  }
}
