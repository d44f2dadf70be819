/**
 * `tomlinson mailbox sweep` through the real binary against the local adapters: a dry run lists
 * and keeps, the default settle time only marks, `--settle-minutes 0` deletes the orphan and keeps
 * what a mailbox (filled by `mailbox import`) refers to; bad values are refused.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import type { SweepReport } from '../../core/mail/sweep.js';
import { openStorage } from '../../core/storage/open.js';
import { startCli, type CliHarness } from '../cli/support.js';
import { blobExists } from '../support/blobs.js';

// Each run spawns the binary (about half a second of CPU); a loaded machine needs room.
vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

let cli: CliHarness;

async function withStorage<T>(fn: (s: Awaited<ReturnType<typeof openStorage>>) => Promise<T>): Promise<T> {
  const s = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

const exists = (key: string) => withStorage((s) => blobExists(s.mail, key));

beforeAll(async () => {
  cli = await startCli();
  await cli.ok(['domain', 'add', 'example.com']);
  await cli.ok(['user', 'add', 'bob@example.com', '--password-stdin'], { input: 'bob-password\n' });
});
afterAll(async () => cli?.cleanup());

describe('tomlinson mailbox sweep', () => {
  it('dry run, then mark, then delete the orphan; the imported message stays', async () => {
    const work = join(cli.dataDir, '..', 'work');
    await mkdir(work, { recursive: true });
    const mbox = join(work, 'one.mbox');
    await writeFile(mbox, 'From a@example.org Tue Nov 25 10:00:00 2025\nFrom: <a@example.org>\nSubject: kept\n\nhello\n');
    await cli.ok(['mailbox', 'import', 'bob@example.com', mbox]);
    const orphan = 'in/20260101/orphan-from-a-kill.eml';
    await withStorage((s) => s.mail.put(orphan, 'Subject: lost between put and send\r\n\r\nx\r\n'));

    const dry = await cli.json<SweepReport>(['mailbox', 'sweep', '--dry-run', '--settle-minutes', '0']);
    expect(dry).toMatchObject({ dryRun: true, quiescent: true, scanned: 2, deleted: 1, keptReferenced: 1, deletedKeys: [orphan] });
    expect(await exists(orphan)).toBe(true);

    // The default settle time: first sight only marks it.
    const first = await cli.json<SweepReport>(['mailbox', 'sweep']);
    expect(first).toMatchObject({ deleted: 0, marked: 1, keptReferenced: 1 });
    expect(await exists(orphan)).toBe(true);

    const human = await cli.ok(['mailbox', 'sweep', '--settle-minutes', '0', '--list']);
    expect(human).toContain('deleted 1 orphaned blob of 2 scanned; kept 1 referenced');
    expect(human).toContain(`  ${orphan}`);
    expect(await exists(orphan)).toBe(false);

    // The imported message is still whole.
    const show = await cli.json<{ count: number }>(['mailbox', 'show', 'bob@example.com']);
    expect(show.count).toBe(1);
    const again = await cli.json<SweepReport>(['mailbox', 'sweep', '--settle-minutes', '0', '--grace-hours', '1']);
    expect(again).toMatchObject({ scanned: 1, deleted: 0, keptReferenced: 1 });
  });

  it('refuses bad values with a message and exit 1', async () => {
    const r = await cli.run(['mailbox', 'sweep', '--grace-hours', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--grace-hours must be a whole number 1..');
    const s = await cli.run(['mailbox', 'sweep', '--settle-minutes', 'soon']);
    expect(s.code).toBe(1);
    expect(s.stderr).toContain('--settle-minutes must be a whole number 0..');
  });
});
