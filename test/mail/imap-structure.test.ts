import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { importMailbox } from '../../core/mailbox/import.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import {
  filterHeaderFields,
  imapStructure,
  sectionRange,
  summarizeForMailbox,
  WHOLE_MESSAGE,
  type ImapStructure,
  type SectionKind,
} from '../../core/mail/imap-structure.js';
import { tempDir } from '../support/tmp.js';

const FIXTURES = join(__dirname, '../fixtures/imap');

/** The corpus: every fixture (LF in the files, CRLF on the wire unless named *.lf.eml) and a deep nesting. */
function corpus(): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const f of readdirSync(FIXTURES).sort()) {
    const text = readFileSync(join(FIXTURES, f));
    const name = f.replace(/\.eml$/, '');
    out.set(name, f.endsWith('.lf.eml') ? text : Buffer.from(text.toString('latin1').replace(/\n/g, '\r\n'), 'latin1'));
  }
  out.set('deep', Buffer.from(deepMessage(30)));
  return out;
}

/** Multiparts nested `levels` deep, every fifth level inside an attached message. */
function deepMessage(levels: number): string {
  let body = 'Content-Type: text/plain\r\n\r\ninnermost\r\n';
  for (let i = levels; i > 0; i--) {
    body = `Content-Type: multipart/mixed; boundary="b${i}"\r\n\r\n--b${i}\r\n${body}--b${i}--\r\n`;
    if (i % 5 === 0) body = `Content-Type: message/rfc822\r\n\r\nSubject: level ${i}\r\n${body}`;
  }
  return `From: deep@example.org\r\nSubject: deep\r\n${body}`;
}

const structureOf = (raw: Buffer | string): Promise<ImapStructure> => imapStructure(Readable.from([Buffer.from(raw)]));
const slice = (raw: Buffer, r: { start: number; end: number } | undefined): string | undefined => (r ? raw.subarray(r.start, r.end).toString() : undefined);

/**
 * Dovecot's ENVELOPE, BODYSTRUCTURE and BODY of each message, printed by `doveadm fetch` over a
 * throwaway Maildir (no server). doveadm prints the values without their outer parentheses.
 */
function dovecotStructures(dir: string, messages: Map<string, Buffer>): Map<string, { envelope: string; bodystructure: string; body: string }> {
  const mail = join(dir, 'mail');
  for (const sub of ['cur', 'new', 'tmp']) mkdirSync(join(mail, sub), { recursive: true });
  mkdirSync(join(dir, 'home'));
  mkdirSync(join(dir, 'run'));
  // Dovecot refuses to read mail as root: it drops to `nobody` then.
  const root = process.getuid?.() === 0;
  const uid = root ? 65534 : process.getuid!();
  const gid = root ? 65534 : process.getgid!();
  for (const [name, raw] of messages) writeFileSync(join(mail, 'cur', `${name}:2,`), raw);
  chmodSync(dir, 0o755);
  if (root)
    for (const p of [
      mail,
      join(mail, 'cur'),
      join(mail, 'new'),
      join(mail, 'tmp'),
      join(dir, 'home'),
      ...[...messages.keys()].map((n) => join(mail, 'cur', `${n}:2,`)),
    ])
      chownSync(p, uid, gid);
  const conf = join(dir, 'dovecot.conf');
  writeFileSync(
    conf,
    [
      `mail_location = maildir:${mail}`,
      `base_dir = ${join(dir, 'run')}`,
      `state_dir = ${join(dir, 'run')}`,
      `log_path = ${join(dir, 'log')}`,
      'ssl = no',
      `mail_uid = ${uid}`,
      `mail_gid = ${gid}`,
      `first_valid_uid = ${Math.min(uid, 500)}`,
      `first_valid_gid = ${Math.min(gid, 500)}`,
      '',
    ].join('\n'),
  );
  const r = spawnSync('doveadm', ['-c', conf, 'fetch', 'guid imap.envelope imap.bodystructure imap.body', 'mailbox', 'INBOX', 'all'], {
    env: { PATH: process.env.PATH, HOME: join(dir, 'home'), USER: 'tester' },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`doveadm failed: ${r.stderr || r.error?.message}`);
  const out = new Map<string, { envelope: string; bodystructure: string; body: string }>();
  for (const record of r.stdout.split('\n\f\n')) {
    const m = /^guid: (.*)\nimap\.envelope: ([\s\S]*)\nimap\.bodystructure: ([\s\S]*)\nimap\.body: ([\s\S]*?)\n?$/.exec(record);
    if (m) out.set(m[1], { envelope: `(${m[2]})`, bodystructure: `(${m[3]})`, body: `(${m[4]})` });
  }
  return out;
}

const hasDoveadm = spawnSync('doveadm', ['help'], { encoding: 'utf8' }).error === undefined;

describe.skipIf(!hasDoveadm)('ENVELOPE and BODYSTRUCTURE match Dovecot (doveadm fetch) over the corpus', () => {
  const messages = corpus();
  let dir: { path: string; remove: () => Promise<void> };
  let dovecot: ReturnType<typeof dovecotStructures>;
  beforeAll(async () => {
    dir = await tempDir('tomlinson-imapstruct-');
    // The bare-LF message goes to Dovecot with CRLF too, to compare the structure apart from sizes.
    const forDovecot = new Map(messages);
    forDovecot.set('bare-lf.crlf', Buffer.from(messages.get('bare-lf.lf')!.toString('latin1').replace(/\n/g, '\r\n'), 'latin1'));
    dovecot = dovecotStructures(dir.path, forDovecot);
  });
  afterAll(() => dir?.remove());

  it('reads every message of the corpus back from doveadm', () => {
    expect([...dovecot.keys()].sort()).toEqual([...messages.keys(), 'bare-lf.crlf'].sort());
  });

  for (const name of corpus().keys()) {
    it(`${name}: same ENVELOPE, BODYSTRUCTURE and BODY`, async () => {
      const ours = await structureOf(messages.get(name)!);
      const theirs = dovecot.get(name)!;
      expect(ours.envelope).toBe(theirs.envelope);
      if (name === 'bare-lf.lf') {
        // On purpose: sizes are of the octets stored and sent by BODY[] (RFC 9051 §7.5.2
        // body-fld-octets), so a bare-LF line counts one octet less than in Dovecot, which counts
        // every LF as CRLF. The structure equals Dovecot's for the same message with CRLF.
        const crlf = await structureOf(messages.get(name)!.toString('latin1').replace(/\n/g, '\r\n'));
        expect(crlf.bodystructure).toBe(dovecot.get('bare-lf.crlf')!.bodystructure);
        expect(ours.bodystructure).toBe(crlf.bodystructure.replace(' 18 1 ', ' 17 1 '));
        return;
      }
      expect(ours.bodystructure).toBe(theirs.bodystructure);
      expect(ours.body).toBe(theirs.body);
    });
  }
});

describe('imapStructure', () => {
  it('writes 8-bit header text as literals and keeps encoded-words encoded (RFC 9051 §7.5.2)', async () => {
    const s = await structureOf(corpus().get('eightbit-headers')!);
    expect(s.envelope).toContain('{17}\r\nGrüße aus Köln');
    const e = await structureOf(corpus().get('encoded-subject')!);
    expect(e.envelope).toContain('"=?ISO-8859-1?Q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"');
  });

  it('gives the same result whatever the chunk size', async () => {
    const raw = corpus().get('nested')!;
    const whole = await structureOf(raw);
    for (let size = 1; size <= 64; size++) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < raw.length; i += size) chunks.push(raw.subarray(i, i + size));
      expect(await imapStructure(Readable.from(chunks))).toEqual(whole);
    }
  });

  it('rejects with the input stream error (a truncated message is not described as whole)', async () => {
    const failing = new Readable({
      read() {
        this.push('Subject: x\r\n');
        this.destroy(new Error('disk gone'));
      },
    });
    await expect(imapStructure(failing)).rejects.toThrow('disk gone');
  });

  it('describes garbage and an empty input without failing', async () => {
    const bytes = Buffer.alloc(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919) % 256;
    // No empty line: all of it is a header block (as Dovecot reads it), with no field in it.
    const s = await structureOf(bytes);
    expect(s.bodystructure).toBe('("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)');
    expect(s.parts[WHOLE_MESSAGE]).toEqual({ headerStart: 0, bodyStart: 4096, end: 4096 });
    const withBody = await structureOf(Buffer.concat([Buffer.from('Subject: x\r\n\r\n'), bytes]));
    expect(withBody.bodystructure).toMatch(/^\("text" "plain" \("charset" "us-ascii"\) NIL NIL "7bit" 4096 \d+ NIL NIL NIL NIL\)$/);
    const empty = await structureOf('');
    expect(empty.envelope).toBe('(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)');
    expect(empty.parts[WHOLE_MESSAGE]).toEqual({ headerStart: 0, bodyStart: 0, end: 0 });
  });

  it('reads a message of thousands of parts quickly, and leaves its structure out of the summary', async () => {
    const parts = Array.from({ length: 3000 }, (_, i) => `--x\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`).join('');
    const raw = Buffer.from(`Subject: many\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n${parts}--x--\r\n`);
    const started = Date.now();
    const s = await structureOf(raw);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(s.parts['3000']).toBeDefined();
    expect(slice(raw, sectionRange(s, [2999], ''))).toBe('part 2998');
    const summary = await summarizeForMailbox(Readable.from([raw]));
    expect(summary.subject).toBe('many');
    expect(summary.imap).toBeUndefined();
  });
});

describe('sectionRange (RFC 9051 §6.4.5)', () => {
  const raw = corpus().get('nested')!;
  let s: ImapStructure;
  beforeAll(async () => (s = await structureOf(raw)));
  const at = (part: number[], kind: SectionKind) => slice(raw, sectionRange(s, part, kind));

  it('finds the whole message, its header and its text', () => {
    expect(at([], '')).toBe(raw.toString());
    expect(at([], 'HEADER')).toMatch(/^From: outer@example.org\r\n[\s\S]*boundary="outer"\r\n\r\n$/);
    expect(at([], 'TEXT')).toMatch(/^--outer\r\n[\s\S]*--outer--\r\n$/);
    expect(at([], 'MIME')).toBeUndefined();
  });

  it('finds parts, their MIME headers, and an attached message’s header, text and parts', () => {
    expect(at([1], '')).toBe('Forwarded below.');
    expect(at([1], 'MIME')).toBe('Content-Type: text/plain; charset=us-ascii\r\n\r\n');
    expect(at([2], 'MIME')).toBe('Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="inner.eml"\r\n\r\n');
    expect(at([2], '')).toMatch(/^From: Inner Person[\s\S]*--inner--\r\n$/);
    expect(at([2], 'HEADER')).toMatch(/^From: Inner Person[\s\S]*boundary="inner"\r\n\r\n$/);
    expect(at([2], 'TEXT')).toMatch(/^--inner\r\n[\s\S]*--inner--\r\n$/);
    expect(at([2, 1], '')).toBe('inner text');
    expect(at([2, 2], '')).toBe('<b>inner</b>');
    expect(at([2, 2], 'MIME')).toBe('Content-Type: text/html\r\n\r\n');
    // An attached message that is not multipart: its body is part 3.1 (§6.4.5).
    expect(at([3], 'HEADER')).toBe('Subject: simple inner\r\nFrom: x@y.example\r\n\r\n');
    expect(at([3, 1], '')).toBe('just text');
    expect(at([3], 'TEXT')).toBe('just text');
  });

  it('has no HEADER or TEXT for a part that is not a message, and nothing for a missing part', () => {
    expect(at([1], 'HEADER')).toBeUndefined();
    expect(at([1], 'TEXT')).toBeUndefined();
    expect(at([4], '')).toBeUndefined();
    expect(at([1, 1], '')).toBeUndefined();
  });

  it('gives a message that is not multipart its body as part 1', async () => {
    const plain = corpus().get('plain')!;
    const p = await structureOf(plain);
    expect(slice(plain, sectionRange(p, [1], ''))).toBe('Hello Bob,\r\nthis is plain text.\r\n');
    expect(slice(plain, sectionRange(p, [1], 'MIME'))).toBe(slice(plain, sectionRange(p, [], 'HEADER')));
  });

  it('ends an unterminated multipart and bare-LF parts where they end', async () => {
    const bad = corpus().get('malformed-boundary')!;
    const b = await structureOf(bad);
    expect(slice(bad, sectionRange(b, [2], ''))).toBe('second part without a closing delimiter\r\n');
    const lf = corpus().get('bare-lf.lf')!;
    const l = await structureOf(lf);
    expect(slice(lf, sectionRange(l, [1], ''))).toBe('line one\nline two');
    expect(slice(lf, sectionRange(l, [2], 'MIME'))).toBe('Content-Type: text/plain\n\n');
  });
});

describe('filterHeaderFields', () => {
  const header = Buffer.from('From: a@example.org\r\nSubject: one\r\n two\r\nX-Other: y\r\nsubject: again\r\n\r\n');

  it('keeps the named fields with their folded lines, and the blank line', () => {
    expect(filterHeaderFields(header, ['SUBJECT'], false).toString()).toBe('Subject: one\r\n two\r\nsubject: again\r\n\r\n');
    expect(filterHeaderFields(header, ['from', 'x-other'], false).toString()).toBe('From: a@example.org\r\nX-Other: y\r\n\r\n');
  });

  it('keeps the other fields with NOT', () => {
    expect(filterHeaderFields(header, ['Subject'], true).toString()).toBe('From: a@example.org\r\nX-Other: y\r\n\r\n');
  });

  it('gives the blank line alone when nothing matches, and ends a block that had none', () => {
    expect(filterHeaderFields(header, ['cc'], false).toString()).toBe('\r\n');
    expect(filterHeaderFields(Buffer.from('A: 1\nB: 2\n'), ['b'], false).toString()).toBe('B: 2\n\r\n');
  });
});

describe('delivery stores summary.imap', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let storage: Storage;
  let ctx: JobContext;
  const raw = corpus().get('nested')!;
  beforeEach(async () => {
    dir = await tempDir('tomlinson-imapstruct-deliver-');
    const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_HOSTNAME: 'mx.tomlinson.test' });
    storage = await openLocalStorage(config, silentLogger, { purgeIntervalMs: 0 });
    ctx = { config, storage, log: silentLogger, now: () => new Date() };
    const accounts = new Accounts(storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser('alice@example.test', 'pw-alice-123456');
  });
  afterEach(async () => {
    await storage.close();
    await dir.remove();
  });

  async function deliver(job: Partial<InboundJob>): Promise<void> {
    const full: InboundJob = {
      v: 1,
      id: 'job1',
      blobKey: 'in/20261126/job1.eml',
      size: raw.length,
      from: 'outer@example.org',
      rcpts: [{ address: 'alice@example.test' }],
      receivedAt: new Date().toISOString(),
      client: { address: '192.0.2.1', helo: 'x' },
      listener: 'mx',
      ...job,
    };
    expect(await inboundJob(JSON.stringify(full), { queue: 'inbound', id: 'm1', receiveCount: 1, sentAt: new Date() }, ctx)).toEqual({
      kind: 'done',
    });
  }

  const expected = async () => {
    const s = await structureOf(raw);
    expect(s.bodystructure.startsWith('(("text" "plain"')).toBe(true);
    return s;
  };

  it('through the inbound worker reading the blob', async () => {
    await storage.mail.put('in/20261126/job1.eml', raw);
    await deliver({});
    const [m] = await new MailboxStore(storage.tables, storage.mail).list('alice@example.test');
    expect(m.summary.subject).toBe('Fwd: inner');
    expect(m.summary.imap).toEqual(await expected());
  });

  it('through the inbound worker taking the message carried in the job', async () => {
    await deliver({ raw: raw.toString('base64') });
    const [m] = await new MailboxStore(storage.tables, storage.mail).list('alice@example.test');
    expect(m.summary.imap).toEqual(await expected());
  });

  it('through a Maildir import (LF files stored with CRLF)', async () => {
    const maildir = join(dir.path, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) mkdirSync(join(maildir, sub), { recursive: true });
    writeFileSync(join(maildir, 'cur', '1700000000.1.host:2,S'), readFileSync(join(FIXTURES, 'nested.eml')));
    const store = new MailboxStore(storage.tables, storage.mail);
    const report = await importMailbox({ user: 'alice@example.test', path: maildir, store, blobs: storage.mail, maxBytes: 1 << 20 });
    expect(report.imported).toBe(1);
    const [m] = await store.list('alice@example.test');
    expect(m.summary.imap).toEqual(await expected());
  });
});
