/** Exports a mailbox as an mbox stream (mboxrd), one message at a time from the blobs. */
import type { Writable } from 'node:stream';
import { isStorageError, type Blobs } from '../storage/ports.js';
import { writeMboxMessage } from './mbox.js';
import type { MailboxStore } from './store.js';

/** What an export did. */
export interface ExportReport {
  exported: number;
  /** Bytes of the messages as stored (before mbox quoting and LF line ends). */
  bytes: number;
  /** UIDs whose raw message is missing from the blobs (reported, not fatal). */
  missing: number[];
}

/** Writes every message of `user` to `out` in UID order; does not end `out`. */
export async function exportMailbox(o: {
  user: string;
  store: MailboxStore;
  blobs: Blobs;
  out: Writable;
  onProgress?: (done: number, total: number) => void;
}): Promise<ExportReport> {
  const report: ExportReport = { exported: 0, bytes: 0, missing: [] };
  const total = (await o.store.meta(o.user)).count;
  for await (const e of o.store.entries(o.user)) {
    let body;
    try {
      body = (await o.blobs.get(e.blobKey)).body;
    } catch (err) {
      if (!isStorageError(err, 'NotFound')) throw err;
      report.missing.push(e.uid);
      continue;
    }
    const from = typeof e.summary.fromAddress === 'string' ? e.summary.fromAddress : '';
    const date = Number.isNaN(Date.parse(e.receivedAt)) ? new Date(0) : new Date(e.receivedAt);
    await writeMboxMessage(o.out, body, { from, date });
    report.exported++;
    report.bytes += e.size;
    o.onProgress?.(report.exported, total);
  }
  return report;
}
