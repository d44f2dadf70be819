/**
 * Temporary folders for tests, removed by the returned cleanup.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Makes a fresh folder under the OS temp dir; `remove()` deletes it and everything in it. */
export async function tempDir(prefix = 'tomlinson-'): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
