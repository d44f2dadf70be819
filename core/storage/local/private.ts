/**
 * The data folder holds password hashes (tomlinson.db), every stored message, the TLS and DKIM
 * private keys: it is its owner's alone. Everything is created owner-only (folders 0700, files
 * 0600, explicit modes that no umask can widen), and on open a folder left readable by others
 * (made by an older version, or copied with 0755/0644) is tightened and the change logged.
 */
import type { Dirent } from 'node:fs';
import { chmod, lstat, mkdir, opendir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../log.js';

/** Mode of every folder made under the data folder. */
export const PRIVATE_DIR_MODE = 0o700;
/** Mode of every file made under the data folder. */
export const PRIVATE_FILE_MODE = 0o600;

/** What securePrivateFolder found and changed. */
export interface TightenReport {
  /** Folders and files whose mode was changed. */
  dirs: number;
  files: number;
  /** Entries whose mode could not be changed (another owner). */
  failed: number;
  /** Entries looked at. */
  checked: number;
  /** Whether the whole tree was walked (the folder itself was open to others). */
  walked: boolean;
  /** The first few paths changed, relative to the folder. */
  examples: string[];
}

/** Entries looked at in parallel while walking. */
const PARALLEL = 64;
/** How deep the check goes when the folder itself is private: its entries and theirs. */
const SHALLOW_DEPTH = 2;

/**
 * Creates `root` (0700) or tightens it. When `root` itself is open to other users, every folder and
 * file below it is made 0700/0600 (one lstat per entry, plus a chmod where needed); otherwise only
 * two levels are checked (the database, the blob roots, tls/, dkim/), since a private folder
 * already keeps other users out of everything below it. Symbolic links are left alone.
 */
export async function securePrivateFolder(root: string, log: Logger): Promise<TightenReport> {
  await mkdir(root, { recursive: true, mode: PRIVATE_DIR_MODE });
  const report: TightenReport = { dirs: 0, files: 0, failed: 0, checked: 0, walked: false, examples: [] };
  // stat, not lstat: a data folder that is a symbolic link is tightened at its target.
  const top = await stat(root);
  report.walked = (top.mode & 0o077) !== 0;
  await fix(root, '', top.mode, true, report);
  await visit(root, '', report.walked ? Infinity : SHALLOW_DEPTH, report);
  if (report.dirs + report.files + report.failed > 0) {
    log.warn(
      { dataDir: root, dirs: report.dirs, files: report.files, failed: report.failed, checked: report.checked, examples: report.examples },
      `data folder was readable by other local users: made ${report.dirs} folders 0700 and ${report.files} files 0600${report.failed ? `; ${report.failed} could not be changed (another owner)` : ''}`,
    );
  }
  return report;
}

async function fix(path: string, rel: string, mode: number, dir: boolean, report: TightenReport): Promise<void> {
  report.checked++;
  const want = dir ? PRIVATE_DIR_MODE : PRIVATE_FILE_MODE;
  // Only bits beyond the owner's are taken away; the owner's own bits are left as they are.
  if ((mode & 0o077) === 0) return;
  try {
    await chmod(path, (mode & 0o700) | want);
  } catch {
    report.failed++;
    return;
  }
  if (dir) report.dirs++;
  else report.files++;
  if (report.examples.length < 5) report.examples.push(rel || '.');
}

async function visit(dir: string, rel: string, depth: number, report: TightenReport): Promise<void> {
  if (depth <= 0) return;
  let handle;
  try {
    handle = await opendir(dir, { bufferSize: 256 });
  } catch {
    return; // gone, or not ours to read: nothing to tighten here
  }
  let batch: Dirent[] = [];
  const subdirs: string[] = [];
  const flush = async () => {
    await Promise.all(
      batch.map(async (e) => {
        const path = join(dir, e.name);
        const st = await lstat(path).catch(() => undefined);
        if (!st || st.isSymbolicLink()) return;
        await fix(path, rel ? `${rel}/${e.name}` : e.name, st.mode, st.isDirectory(), report);
        if (st.isDirectory()) subdirs.push(e.name);
      }),
    );
    batch = [];
  };
  for await (const e of handle) {
    batch.push(e);
    if (batch.length >= PARALLEL) await flush();
  }
  await flush();
  for (const name of subdirs) await visit(join(dir, name), rel ? `${rel}/${name}` : name, depth - 1, report);
}
