/**
 * Where the mailbox model keeps its items (Tables port), and the errors its operations throw.
 * Shared by MailboxStore (store.ts: INBOX as POP3 and delivery see it) and FolderStore
 * (folders.ts: every folder, flags, copy/move, the change log), so neither imports the other's
 * internals.
 *
 * | item                          | pk                          | sk                       |
 * |-------------------------------|-----------------------------|--------------------------|
 * | INBOX counters                | `MBX#<user>`                | `META`                   |
 * | INBOX message                 | `MBX#<user>`                | `UID#<10-digit uid>`     |
 * | maildrop lease                | `MBX#<user>`                | `LEASE`                  |
 * | folder (registry entry)       | `MBX#<user>`                | `FOLDER#<folder id>`     |
 * | folder name index             | `MBX#<user>`                | `NAME#<parent id>/<leaf>`|
 * | special-use index             | `MBX#<user>`                | `USE#<\Sent...>`         |
 * | uidValidity guard (TTL 1 day) | `MBX#<user>`                | `VALIDITY#<n>`           |
 * | usage over every folder       | `MBX#<user>`                | `USAGE`                  |
 * | other folder counters         | `MBX#<user>#<folder id>`    | `META`                   |
 * | other folder message          | `MBX#<user>#<folder id>`    | `UID#<10-digit uid>`     |
 * | modseq counter                | `CHG#<user>`                | `HEAD`                   |
 * | settled position of the log   | `CHG#<user>`                | `SETTLED`                |
 * | change (TTL: the horizon)     | `CHG#<user>`                | `MOD#<16-digit modseq>`  |
 * | delivery / append marker      | `JOB#<key>`                 | `RCPT#<user>[#<folder>]` |
 * | blob references, holds        | `BLOBREF#<blob key>`        | `META`, `HOLD#<holder>`  |
 * | where an Email is (JMAP)      | `EML#<user>`                | `<emailId>#<folder id>#<10-digit uid>` |
 * | index backfilled (marker)     | `EML#<user>`                | `BACKFILLED`             |
 * | Message-ID → thread           | `THR#<user>`                | `MID#<24 hex of the id>` |
 * | thread member                 | `THR#<user>`                | `<threadId>#<receivedAt>#<emailId>` |
 *
 * An address has exactly one '@' and a domain never holds '#', so `MBX#<user>#<id>` can never be
 * another user's INBOX partition.
 */
import type { Key } from '../storage/ports.js';

/** INBOX's folder id: its items are the `MBX#<user>` partition that POP3 has always served. */
export const INBOX = 'INBOX';

export const UID_WIDTH = 10;
export const MODSEQ_WIDTH = 16;

/** Key helpers, exported for tests and tools. */
export const mailboxKeys = {
  meta: (user: string): Key => ({ pk: `MBX#${user}`, sk: 'META' }),
  message: (user: string, uid: number): Key => ({ pk: `MBX#${user}`, sk: `UID#${String(uid).padStart(UID_WIDTH, '0')}` }),
  lease: (user: string): Key => ({ pk: `MBX#${user}`, sk: 'LEASE' }),
  marker: (jobId: string, user: string): Key => ({ pk: `JOB#${jobId}`, sk: `RCPT#${user}` }),
  blobRef: (blobKey: string): Key => ({ pk: `BLOBREF#${blobKey}`, sk: 'META' }),
  blobHold: (blobKey: string, holder: string): Key => ({ pk: `BLOBREF#${blobKey}`, sk: `HOLD#${holder}` }),
};

/** Keys of folders, usage and the change log (INBOX maps onto mailboxKeys' partition). */
export const folderKeys = {
  /** The partition holding a folder's META and UID# items. */
  partition: (user: string, folderId: string): string => (folderId === INBOX ? `MBX#${user}` : `MBX#${user}#${folderId}`),
  meta: (user: string, folderId: string): Key => ({ pk: folderKeys.partition(user, folderId), sk: 'META' }),
  message: (user: string, folderId: string, uid: number): Key => ({
    pk: folderKeys.partition(user, folderId),
    sk: `UID#${String(uid).padStart(UID_WIDTH, '0')}`,
  }),
  folder: (user: string, folderId: string): Key => ({ pk: `MBX#${user}`, sk: `FOLDER#${folderId}` }),
  name: (user: string, parentId: string, leaf: string): Key => ({ pk: `MBX#${user}`, sk: `NAME#${parentId}/${leaf}` }),
  specialUse: (user: string, use: string): Key => ({ pk: `MBX#${user}`, sk: `USE#${use}` }),
  validity: (user: string, v: number): Key => ({ pk: `MBX#${user}`, sk: `VALIDITY#${v}` }),
  usage: (user: string): Key => ({ pk: `MBX#${user}`, sk: 'USAGE' }),
  /** An append's idempotency marker; INBOX's is the delivery marker, so deliver and append agree. */
  marker: (key: string, user: string, folderId: string): Key =>
    folderId === INBOX ? mailboxKeys.marker(key, user) : { pk: `JOB#${key}`, sk: `RCPT#${user}#${folderId}` },
  modseqHead: (user: string): Key => ({ pk: `CHG#${user}`, sk: 'HEAD' }),
  /** How far the log is known to be settled (ChangeLog.position). */
  watermark: (user: string): Key => ({ pk: `CHG#${user}`, sk: 'SETTLED' }),
  change: (user: string, modseq: number): Key => ({ pk: `CHG#${user}`, sk: `MOD#${String(modseq).padStart(MODSEQ_WIDTH, '0')}` }),
};

/** Keys of the Email index (email-index.ts): where each Email is, and its thread. */
export const indexKeys = {
  locations: (user: string): string => `EML#${user}`,
  location: (user: string, emailId: string, folderId: string, uid: number): Key => ({
    pk: `EML#${user}`,
    sk: `${emailId}#${folderId}#${String(uid).padStart(UID_WIDTH, '0')}`,
  }),
  backfilled: (user: string): Key => ({ pk: `EML#${user}`, sk: 'BACKFILLED' }),
  threads: (user: string): string => `THR#${user}`,
  messageId: (user: string, hashed: string): Key => ({ pk: `THR#${user}`, sk: `MID#${hashed}` }),
  member: (user: string, threadId: string, receivedAt: string, emailId: string): Key => ({ pk: `THR#${user}`, sk: `${threadId}#${receivedAt}#${emailId}` }),
};

/** The operation would take the user past the quota; nothing was stored. */
export class QuotaExceeded extends Error {
  constructor(
    readonly user: string,
    readonly quotaBytes: number,
    readonly usedBytes: number,
    readonly size: number,
  ) {
    super(`mailbox ${user} is full: ${usedBytes} + ${size} bytes would pass the quota of ${quotaBytes}`);
    this.name = 'QuotaExceeded';
  }
}

/** The user has no account (removed, or never created); nothing was stored. */
export class NoSuchMailbox extends Error {
  constructor(readonly user: string) {
    super(`no mailbox for ${user}`);
    this.name = 'NoSuchMailbox';
  }
}

/** A folder operation refused for a reason a protocol reports to its client (IMAP NO [CODE]). */
export class FolderError extends Error {
  constructor(
    readonly code: 'NoSuchFolder' | 'AlreadyExists' | 'HasChildren' | 'BadName' | 'Refused',
    message: string,
  ) {
    super(message);
    this.name = `FolderError(${code})`;
  }
}

/** Small random back-off between optimistic retries so racing writers spread out. */
export function backoff(attempt: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + attempt * 3)));
}

/** The most optimistic retries of one operation before its last error is thrown. */
export const MAX_ATTEMPTS = 50;
