/**
 * Blob helpers shared by the tests.
 */
import { isStorageError, type Blobs } from '../../core/storage/ports.js';

/** Whether `key` is stored in `blobs` (head succeeds); NotFound is false, any other error throws. */
export async function blobExists(blobs: Blobs, key: string): Promise<boolean> {
  try {
    await blobs.head(key);
    return true;
  } catch (e) {
    if (isStorageError(e, 'NotFound')) return false;
    throw e;
  }
}
