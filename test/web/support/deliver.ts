/**
 * Delivers one message to a user from a process of its own (as the inbound Lambda does on AWS),
 * so a push stream in the test process can only learn of it by polling the change log.
 * `node --import tsx test/web/support/deliver.ts <user> <subject>`; storage from the environment.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { loadConfig } from '../../../core/config.js';
import { silentLogger } from '../../../core/log.js';
import { summarizeForMailbox } from '../../../core/mail/imap-structure.js';
import { MailboxStore } from '../../../core/mailbox/store.js';
import { openStorage } from '../../../core/storage/open.js';

const [user, subject] = process.argv.slice(2);
const storage = await openStorage(loadConfig(process.env), silentLogger);
const body = Buffer.from(`From: a@example.net\r\nTo: ${user}\r\nSubject: ${subject}\r\nMessage-ID: <${randomUUID()}@example.net>\r\n\r\nhello\r\n`);
const blobKey = `in/test/${randomUUID()}.eml`;
const info = await storage.mail.put(blobKey, body);
const summary = await summarizeForMailbox(Readable.from([body]));
await new MailboxStore(storage.tables, storage.mail).deliver(user, {
  jobId: randomUUID(),
  blobKey,
  size: info.size,
  receivedAt: new Date().toISOString(),
  summary,
});
await storage.close();
process.stdout.write(`${Date.now()}\n`);
