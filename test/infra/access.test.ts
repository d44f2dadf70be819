/**
 * Least privilege of the listener task roles, read from the synthesized policies: each service
 * reaches only the table items (by partition-key prefix), bucket objects (by key prefix) and queues
 * it uses. The prefixes are checked against the code's own key builders, and the health probe of
 * each task (core/storage/aws/index.ts) against what its role may reach.
 */
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keys as accountKeys } from '../../core/accounts/accounts.js';
import { STATS_PK } from '../../core/cache/store.js';
import { loadConfig } from '../../core/config.js';
import { QUEUE_LIST_PK } from '../../core/mail/outbound-store.js';
import { folderKeys, indexKeys } from '../../core/mailbox/keys.js';
import { mailboxKeys } from '../../core/mailbox/store.js';
import { backendsUsed } from '../../core/storage/aws/index.js';
import { pendingDeleteKey } from '../../containers/pop3/maildrop.js';
import { messageKey } from '../../containers/smtp/spool.js';
import { APPEND_PREFIX, UPLOAD_PREFIX, listenerAccess } from '../../infra/access.js';
import { DEFAULTS } from '../../infra/config.js';
import { cleanOutdirs, testApp } from './support.js';

type Stmt = { Action: string | string[]; Resource: unknown; Condition?: Record<string, Record<string, string[]>> };
type Res = { Type: string; Properties?: Record<string, unknown> };

let t: Template;
beforeAll(() => {
  t = Template.fromStack(testApp().stacks.listeners!);
}, 120_000);
afterAll(cleanOutdirs);

function statementsOf(tpl: Template, rolePrefix: string): Stmt[] {
  const out: Stmt[] = [];
  for (const p of Object.values(tpl.findResources('AWS::IAM::Policy') as Record<string, Res>)) {
    if (!JSON.stringify(p.Properties!.Roles).includes(`"${rolePrefix}`)) continue;
    out.push(...(p.Properties!.PolicyDocument as { Statement: Stmt[] }).Statement);
  }
  expect(out.length, `policies of ${rolePrefix}`).toBeGreaterThan(0);
  return out;
}
const actionsOf = (s: Stmt): string[] => (Array.isArray(s.Action) ? s.Action : [s.Action]);
const role = (group: string) => `${group}TaskTaskRole`;

/** Partition-key patterns a role may use for `action`; a statement without the condition allows every key. */
function leadingKeys(stmts: Stmt[], action: string): string[] {
  return stmts.filter((s) => actionsOf(s).includes(action)).flatMap((s) => s.Condition?.['ForAllValues:StringLike']?.['dynamodb:LeadingKeys'] ?? ['*']);
}

/** IAM StringLike: `*` any run, `?` one character. */
function like(pattern: string, value: string): boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
  return re.test(value);
}
const allows = (patterns: string[], pk: string) => patterns.some((p) => like(p, pk));

describe('listener task roles', () => {
  it('limit every DynamoDB statement to partition-key prefixes and never allow Scan', () => {
    for (const g of ['Smtp', 'Mailbox', 'Web', 'Proxy']) {
      const ddb = statementsOf(t, role(g)).filter((s) => actionsOf(s).some((a) => a.startsWith('dynamodb:')));
      expect(ddb.length, g).toBeGreaterThan(0);
      for (const s of ddb) {
        expect(s.Condition?.['ForAllValues:StringLike']?.['dynamodb:LeadingKeys'], `${g} ${JSON.stringify(s.Action)}`).toBeDefined();
        expect(actionsOf(s)).not.toContain('dynamodb:Scan');
        expect(actionsOf(s).some((a) => a.includes('*'))).toBe(false);
      }
    }
  });

  it('give the proxy no account items, no mailbox items, no mail bucket and no queue', () => {
    const proxy = statementsOf(t, role('Proxy'));
    const reads = leadingKeys(proxy, 'dynamodb:GetItem');
    for (const pk of [
      accountKeys.user('alice@example.com').pk,
      mailboxKeys.meta('alice@example.com').pk,
      accountKeys.domain('example.com').pk,
      QUEUE_LIST_PK,
    ]) {
      expect(allows(reads, pk), pk).toBe(false);
    }
    expect(allows(reads, STATS_PK)).toBe(true);
    expect(allows(reads, 'CACHE#0123abcd')).toBe(true);
    const text = JSON.stringify(proxy);
    expect(text).not.toContain('MailBucket');
    expect(text).toContain('CacheBucketArn');
    expect(proxy.flatMap(actionsOf).filter((a) => a.startsWith('sqs:') || a.startsWith('kms:'))).toEqual([]);
  });

  it('let SMTP write only its spool prefixes, read accounts and counters, and send to the inbound queue only', () => {
    const smtp = statementsOf(t, role('Smtp'));
    const puts = smtp.filter((s) => actionsOf(s).includes('s3:PutObject')).flatMap((s) => s.Resource as unknown[]);
    expect(puts.map((r) => JSON.stringify(r)).sort()).toEqual([expect.stringContaining('/in/*'), expect.stringContaining('/spool/*')]);
    const reads = leadingKeys(smtp, 'dynamodb:GetItem');
    // What the RCPT and AUTH hooks read (containers/smtp/policy.ts).
    for (const pk of [
      accountKeys.user('a@example.com').pk,
      accountKeys.domain('example.com').pk,
      accountKeys.alias('b@example.com').pk,
      mailboxKeys.meta('a@example.com').pk,
    ])
      expect(allows(reads, pk), pk).toBe(true);
    // A bare RCPT TO:<Postmaster> walks the domain listing (Query) to find a postmaster.
    expect(allows(leadingKeys(smtp, 'dynamodb:Query'), accountKeys.domainListing('example.com').pk)).toBe(true);
    expect(allows(leadingKeys(smtp, 'dynamodb:PutItem'), mailboxKeys.meta('a@example.com').pk)).toBe(false);
    expect(allows(reads, 'CACHE#x')).toBe(false);
    expect(messageKey('id1', new Date('2026-01-01T00:00:00Z'))).toMatch(/^in\//);
    const send = smtp.filter((s) => actionsOf(s).includes('sqs:SendMessage'));
    expect(JSON.stringify(send)).toContain('InboundQueue');
    expect(JSON.stringify(smtp)).not.toContain('OutboundQueue');
    expect(JSON.stringify(smtp)).not.toContain('CacheBucket');
  });

  it('let the mailbox service (POP3 and IMAP) read and delete every message, write only APPEND blobs and send nothing', () => {
    const mailbox = statementsOf(t, role('Mailbox'));
    const acts = mailbox.flatMap(actionsOf);
    // Writing APPEND's blobs under the bucket key needs a data key; reading needs Decrypt.
    expect(acts).toEqual(expect.arrayContaining(['s3:GetObject', 's3:DeleteObject', 's3:PutObject', 'kms:Decrypt', 'kms:GenerateDataKey']));
    expect(acts.filter((a) => a.startsWith('sqs:'))).toEqual([]);
    const objects = (action: string) => mailbox.filter((s) => actionsOf(s).includes(action)).flatMap((s) => [s.Resource].flat().map((r) => JSON.stringify(r)));
    expect(objects('s3:PutObject')).toEqual([expect.stringContaining(`/${APPEND_PREFIX}*`)]);
    expect(objects('s3:GetObject')).toEqual([expect.stringMatching(/MailBucketArn.*\/\*"/)]);
    expect(objects('s3:DeleteObject')).toEqual([expect.stringMatching(/MailBucketArn.*\/\*"/)]);
    expect(JSON.stringify(mailbox)).not.toContain('CacheBucket');
  });

  it('let the mailbox service own the maildrop, the folders, the change log and APPEND markers, and nothing of the domain or the queue', () => {
    const mailbox = statementsOf(t, role('Mailbox'));
    const reads = leadingKeys(mailbox, 'dynamodb:Query');
    const writes = leadingKeys(mailbox, 'dynamodb:UpdateItem');
    const puts = leadingKeys(mailbox, 'dynamodb:PutItem');
    for (const k of [
      mailboxKeys.meta('u'),
      mailboxKeys.message('u', 7),
      mailboxKeys.lease('u'),
      mailboxKeys.blobRef('in/x'),
      pendingDeleteKey('u'),
      // A QUIT's removal also keeps the usage and writes the change log (core/mailbox/folders.ts).
      folderKeys.usage('u'),
      folderKeys.modseqHead('u'),
      folderKeys.change('u', 9),
      // IMAP: folders, their messages (flags, copies, moves), and an APPEND's idempotency marker.
      folderKeys.folder('u@example.com', 'f1'),
      folderKeys.name('u@example.com', 'INBOX', 'Sent'),
      folderKeys.meta('u@example.com', 'f1'),
      folderKeys.message('u@example.com', 'f1', 3),
      folderKeys.marker('append-1', 'u@example.com', 'f1'),
      folderKeys.marker('append-2', 'u@example.com', 'INBOX'),
    ]) {
      expect(allows(writes, k.pk), `write ${k.pk}`).toBe(true);
      expect(allows(puts, k.pk), `put ${k.pk}`).toBe(true);
      // IDLE and CONDSTORE read "changes since N" with a Query on the change log.
      expect(allows(reads, k.pk), `query ${k.pk}`).toBe(true);
    }
    for (const pk of [accountKeys.domain('example.com').pk, QUEUE_LIST_PK, STATS_PK, 'CACHE#x']) {
      expect(allows(writes, pk), pk).toBe(false);
      expect(allows(reads, pk), pk).toBe(false);
    }
  });

  it('let the web service (JMAP) read and delete every message, write only uploads and submissions, and send to the inbound queue only', () => {
    const web = statementsOf(t, role('Web'));
    const acts = web.flatMap(actionsOf);
    expect(acts).toEqual(expect.arrayContaining(['s3:GetObject', 's3:DeleteObject', 's3:PutObject', 'kms:Decrypt', 'kms:GenerateDataKey']));
    const objects = (action: string) => web.filter((s) => actionsOf(s).includes(action)).flatMap((s) => [s.Resource].flat().map((r) => JSON.stringify(r)));
    // Uploads (RFC 8620 §6) and the blobs Email/set create makes, and EmailSubmission's spooled
    // message (as the submission listener spools it); downloads and expunges reach every message.
    expect(objects('s3:PutObject').sort()).toEqual(
      [expect.stringContaining('/in/*'), expect.stringContaining('/spool/*'), expect.stringContaining(`/${UPLOAD_PREFIX}*`)].sort(),
    );
    expect(objects('s3:GetObject')).toEqual([expect.stringMatching(/MailBucketArn.*\/\*"/)]);
    expect(objects('s3:DeleteObject')).toEqual([expect.stringMatching(/MailBucketArn.*\/\*"/)]);
    expect(JSON.stringify(web)).not.toContain('CacheBucket');
    // EmailSubmission is handed to the inbound worker as submitted mail is (the outbound worker
    // signs with DKIM); nothing is received here.
    const send = web.filter((s) => actionsOf(s).includes('sqs:SendMessage'));
    expect(send).toHaveLength(1);
    expect(JSON.stringify(send)).toContain('InboundQueue');
    expect(JSON.stringify(web)).not.toContain('OutboundQueue');
    expect(acts.filter((a) => a.startsWith('sqs:') && !['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'].includes(a))).toEqual([]);
    expect(JSON.stringify(web)).not.toContain('dkim');
  });

  it('let the web service own the mailbox items, the JMAP indexes, vacation and submissions, read identities, and nothing else', () => {
    const web = statementsOf(t, role('Web'));
    const reads = leadingKeys(web, 'dynamodb:Query');
    const gets = leadingKeys(web, 'dynamodb:GetItem');
    const writes = leadingKeys(web, 'dynamodb:UpdateItem');
    const puts = leadingKeys(web, 'dynamodb:PutItem');
    const owned = [
      accountKeys.user('u@example.com'), // logins, and app passwords in the same partition
      mailboxKeys.meta('u'),
      mailboxKeys.blobRef('upload/Aabc/x'),
      folderKeys.modseqHead('u'),
      folderKeys.change('u', 9),
      folderKeys.folder('u@example.com', 'f1'),
      folderKeys.meta('u@example.com', 'f1'),
      folderKeys.message('u@example.com', 'f1', 3),
      folderKeys.marker('append-1', 'u@example.com', 'f1'),
      // The JMAP indexes, the vacation setting (core/mail/vacation.ts), identities and submissions
      // (containers/web/jmap/submission.ts).
      { pk: indexKeys.locations('u@example.com') },
      { pk: indexKeys.threads('u@example.com') },
      { pk: 'VAC#u@example.com' },
      { pk: 'IDENT#u@example.com' },
      { pk: 'SUBM#u@example.com' },
      // Webmail sessions (core/accounts/web-sessions.ts) and their per-user listing.
      { pk: `SESSION#${'a'.repeat(64)}` },
      { pk: 'WEBSESS#u@example.com' },
      // EmailSubmission: delivery status and cancelling a message not yet tried.
      { pk: 'OUT#m1' },
      { pk: QUEUE_LIST_PK },
    ];
    for (const k of owned) {
      for (const [what, patterns] of [
        ['query', reads],
        ['get', gets],
        ['update', writes],
        ['put', puts],
      ] as const)
        expect(allows(patterns, k.pk), `${what} ${k.pk}`).toBe(true);
    }
    // Identities are the addresses the user may send as: read, never written.
    for (const pk of [
      accountKeys.domain('example.com').pk,
      accountKeys.alias('b@example.com').pk,
      accountKeys.aliasListing('example.com', 'b@example.com').pk,
    ]) {
      expect(allows(gets, pk), pk).toBe(true);
      expect(allows(puts, pk), pk).toBe(false);
      expect(allows(writes, pk), pk).toBe(false);
    }
    // Not the proxy's cache, not POP3's maildrop, not the domain listing, not the sweep's marks.
    for (const pk of [STATS_PK, 'CACHE#x', pendingDeleteKey('u').pk, accountKeys.domainListing('example.com').pk, 'SWEEP#in/x']) {
      expect(allows(gets, pk), pk).toBe(false);
      expect(allows(puts, pk), pk).toBe(false);
    }
  });

  it('give the proxy account reads only when it requires Proxy-Authorization', () => {
    expect(listenerAccess({ proxyRequireAuth: false, spam: DEFAULTS.spam }).proxy.table.read.some((p) => like(p, 'USER#a@b'))).toBe(false);
    const auth = Template.fromStack(testApp({ proxyRequireAuth: true }).stacks.listeners!);
    expect(allows(leadingKeys(statementsOf(auth, role('Proxy')), 'dynamodb:GetItem'), accountKeys.user('a@example.com').pk)).toBe(true);
  });

  it('cover what each task health probe asks for, and the probe asks nothing else', () => {
    const defs = Object.values(t.findResources('AWS::ECS::TaskDefinition') as Record<string, Res>);
    for (const [g, command] of [
      ['Smtp', 'smtp'],
      ['Mailbox', 'pop3,imap'],
      ['Web', 'web'],
      ['Proxy', 'proxy'],
    ] as const) {
      const d = defs.find((x) => JSON.stringify(x.Properties).includes(`"serve","${command}"`))!;
      const env = Object.fromEntries(
        (d.Properties!.ContainerDefinitions as { Environment: { Name: string; Value: unknown }[] }[])[0]!.Environment.map((e) => [
          e.Name,
          typeof e.Value === 'string' ? e.Value : 'token',
        ]),
      );
      const config = loadConfig(env);
      const uses = backendsUsed(config);
      const stmts = statementsOf(t, role(g));
      const list = JSON.stringify(stmts.filter((s) => actionsOf(s).includes('s3:ListBucket')));
      expect(list.includes('MailBucketArn'), `${g} mail`).toBe(uses.mail);
      expect(list.includes('CacheBucketArn'), `${g} cache`).toBe(uses.cache);
      const attrs = JSON.stringify(stmts.filter((s) => actionsOf(s).includes('sqs:GetQueueAttributes')));
      for (const q of ['inbound', 'outbound'] as const)
        expect(attrs.includes(q === 'inbound' ? 'InboundQueue' : 'OutboundQueue'), `${g} ${q}`).toBe(uses.queues.includes(q));
      expect(allows(leadingKeys(stmts, 'dynamodb:GetItem'), '#health'), `${g} table probe`).toBe(true);
    }
  });
});
