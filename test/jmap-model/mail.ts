/**
 * Messages for the Email index tests: raw RFC 5322 text stored as a blob and summarized the way
 * every filing path summarizes (summarizeForMailbox), so threading reads real parsed headers.
 */
import { Readable } from 'node:stream';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import type { AppendInput } from '../../core/mailbox/folders.js';
import type { Blobs } from '../../core/storage/ports.js';

export interface TestMail {
  /** Message-ID without brackets; left out of the message when empty. */
  id: string;
  subject: string;
  inReplyTo?: string;
  references?: string[];
  /** INTERNALDATE. @default 2026-03-01T10:00:00Z */
  receivedAt?: string;
}

/** The raw message. */
export function rawMail(m: TestMail): string {
  const lines = ['From: Ann <ann@example.org>', 'To: bob@example.com', `Subject: ${m.subject}`, 'Date: Sun, 1 Mar 2026 10:00:00 +0000'];
  if (m.id) lines.push(`Message-ID: <${m.id}>`);
  if (m.inReplyTo) lines.push(`In-Reply-To: <${m.inReplyTo}>`);
  // References folded over lines, as clients write long ones.
  if (m.references?.length) lines.push(`References: ${m.references.map((r) => `<${r}>`).join('\r\n ')}`);
  return `${lines.join('\r\n')}\r\n\r\nbody of ${m.id || m.subject}\r\n`;
}

/** Stores the message under `blobKey` and returns what FolderStore.append takes. */
export async function storeMail(blobs: Blobs, blobKey: string, m: TestMail): Promise<AppendInput> {
  const raw = rawMail(m);
  await blobs.put(blobKey, raw);
  return {
    blobKey,
    size: Buffer.byteLength(raw),
    receivedAt: m.receivedAt ?? '2026-03-01T10:00:00.000Z',
    summary: await summarizeForMailbox(Readable.from([Buffer.from(raw)])),
  };
}
