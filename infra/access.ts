/**
 * What each listener service may reach in the state stack: table items by partition-key prefix
 * (IAM `dynamodb:LeadingKeys`), bucket objects by key prefix and the queues it sends to. The
 * prefixes come from the key builders in core/ and containers/ (named beside each entry); a new
 * item kind read by a listener needs its prefix here, or the listener gets AccessDenied.
 */
import { Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type { IConstruct } from 'constructs';
import type { ListenerGroup, StageConfig } from './config.js';

/** Object access of one service in one bucket. */
export interface BucketAccess {
  /** Which of the state stack's buckets. */
  name: 'Mail' | 'Cache';
  /** Key prefixes (`in/`, or '' for every object) the service reads. */
  read: string[];
  /** Key prefixes the service writes (put, multipart upload, abort). */
  write: string[];
  /** Key prefixes the service deletes. */
  delete: string[];
}

/** Table, bucket and queue access of one listener service. */
export interface ServiceAccess {
  /** Partition-key patterns (IAM StringLike) the service reads and writes. */
  table: { read: string[]; write: string[] };
  bucket: BucketAccess;
  /** The queue the service sends jobs to: SMTP hands accepted mail to the inbound worker, the web
   * service's EmailSubmission hands mail to the outbound worker. */
  sendsTo?: 'inbound' | 'outbound';
}

/** The health probe's item (core/storage/aws/dynamo-tables.ts `probe`), read by every task. */
const HEALTH_PK = '#health';

/** Accounts (core/accounts/accounts.ts `keys`): logins read the user; a login whose hash uses old
 * parameters rewrites it (Accounts.authenticate), so USER# is written too. */
const LOGIN = { read: ['USER#*'], write: ['USER#*'] };

/** The prefix under which IMAP APPEND stores new message blobs (the lead's append path). */
export const APPEND_PREFIX = 'append/';

/** The prefix under which the web service stores JMAP uploads (RFC 8620 §6.1) and the blobs its
 * handlers make (JmapBlobs.put: Email/set create); the orphan sweep deletes unused ones after
 * their TTL (core/mail/sweep.ts, SWEEP_PREFIXES). */
export const UPLOAD_PREFIX = 'upload/';

/** The spam lessons (core/mail/spam-learn.ts LESSON_PK): a move into or out of Junk writes one in
 * its own transaction, whichever service moves (IMAP, JMAP). */
const SPAM_LESSONS = 'SPAMLEARN';

/** What the SMTP task's learner and scan counters use (core/mail/spam-learn.ts, spam-stats.ts,
 * spam-prefs.ts). */
const SPAM_SMTP_ITEMS = [SPAM_LESSONS, 'SPAMSTATS', 'SPAMPREF'];

/**
 * The mailbox items every service that reads or changes mailboxes (POP3, IMAP, JMAP) uses:
 * MBX# (INBOX and the other folders' partitions `MBX#<user>#<folder>`, the folder registry,
 * counters, lease, usage), BLOBREF# (reference counts: a COPY adds one, an EXPUNGE drops one;
 * core/mailbox/store.ts), CHG# (the user's MODSEQ counter and change log, written by every flag
 * change, copy, move, append and expunge and read by CONDSTORE/QRESYNC, IDLE, JMAP /changes and
 * push; core/mailbox/changes.ts), JOB# (an APPEND's idempotency marker, core/mailbox/keys.ts
 * `folderKeys.marker`), and the JMAP indexes the folder store keeps in the same transactions:
 * EML# (where an Email is, by emailId) and THR# (Message-ID to thread, thread members), and the
 * spam lesson a move into or out of Junk writes (SPAMLEARN).
 */
const MAILBOX_ITEMS = ['MBX#*', 'BLOBREF#*', 'CHG#*', 'JOB#*', 'EML#*', 'THR#*', SPAM_LESSONS];

/** Items only JMAP uses: VAC# (the vacation setting, VacationResponse/get and /set; the inbound
 * worker writes the sent-reply markers in the same partition), IDENT# (identities a user made,
 * Identity/set) and SUBM# (EmailSubmission records; containers/web/jmap/submission.ts). */
const JMAP_ITEMS = ['VAC#*', 'IDENT#*', 'SUBM#*'];

/** The webmail's sign-ins (core/accounts/web-sessions.ts): SESSION#<hash of the cookie> (made at
 * login, read at every cookie request, deleted at logout) and WEBSESS#<user>, the user's listing
 * that `tomlinson session list|revoke` reads. Both expire by TTL. */
const WEB_SESSION_ITEMS = ['SESSION#*', 'WEBSESS#*'];

/** What EmailSubmission reads and changes of the outbound queue's state (core/mail/outbound-store.ts):
 * `OUT#<id>` (deliveryStatus, and undoStatus `canceled` while no attempt was made) and the queue
 * listing `OUTQ` that a cancel removes the message from. */
const OUTBOUND_ITEMS = ['OUT#*', 'OUTQ'];

/** What an identity is made from (RFC 8621 §6): the addresses a user may send as, resolved as the
 * submission listener resolves MAIL FROM (core/accounts/accounts.ts canSendAs). */
const SEND_AS = ['DOMAIN#*', 'ALIAS#*', 'ALIASES#*'];

/**
 * Per listener group. SMTP resolves recipients (DOMAIN#, ALIAS#, USER#; the DOMAINS list for a bare
 * <Postmaster>, containers/smtp/policy.ts), checks quotas on the
 * mailbox counters (MBX#) and spools raw messages under `in/` and `spool/`
 * (containers/smtp/spool.ts). The mailbox service (POP3 and IMAP) owns the mailbox: MBX# (INBOX and
 * the other folders' partitions `MBX#<user>#<folder>`, the folder registry, counters, lease, usage),
 * POP3DEL# (containers/pop3/maildrop.ts), BLOBREF# (reference counts: a COPY adds one, an EXPUNGE
 * drops one; core/mailbox/store.ts), CHG# (the user's MODSEQ counter and change log, written by
 * every flag change, copy, move, append and expunge and read by CONDSTORE/QRESYNC and IDLE;
 * core/mailbox/changes.ts) and JOB# (an APPEND's idempotency marker, core/mailbox/keys.ts
 * `folderKeys.marker`), all in MAILBOX_ITEMS; it reads and deletes message blobs whatever wrote
 * them (in/, dsn/, outbound-dsn/, import/, append/, upload/) and writes only APPEND's new blobs
 * under `append/`. The web service (JMAP) has the mailbox service's items and blob reads and
 * deletes, writes uploads under `upload/`, reads what identities are made of, owns the
 * vacation setting and the webmail's sessions, and hands EmailSubmissions to the inbound queue as the submission listener does
 * (spooled under in/; no DKIM key: the outbound worker signs). The proxy
 * touches only its cache items (core/cache/store.ts, stats.ts) and the cache bucket, and accounts
 * only when it requires Proxy-Authorization.
 */
export function listenerAccess(c: Pick<StageConfig, 'proxyRequireAuth' | 'spam'>): Record<ListenerGroup, ServiceAccess> {
  const proxyLogin = c.proxyRequireAuth ? LOGIN : { read: [], write: [] };
  // With spam filtering, SMTP counts its scans (SPAMSTATS) and teaches the lessons users' moves
  // left (SPAMLEARN, their per-user opt-out in SPAMPREF) from any message of a mailbox, so it
  // reads every mail object (only reads; core/mail/spam-learn.ts teachWaitingLessons).
  const spam = c.spam.enabled;
  return {
    smtp: {
      table: {
        read: [HEALTH_PK, ...LOGIN.read, 'DOMAIN#*', 'DOMAINS', 'ALIAS#*', 'MBX#*', ...(spam ? SPAM_SMTP_ITEMS : [])],
        write: [...LOGIN.write, ...(spam ? SPAM_SMTP_ITEMS : [])],
      },
      bucket: { name: 'Mail', read: spam ? [''] : ['in/', 'spool/'], write: ['in/', 'spool/'], delete: ['in/', 'spool/'] },
      sendsTo: 'inbound',
    },
    mailbox: {
      table: {
        read: [HEALTH_PK, ...LOGIN.read, ...MAILBOX_ITEMS, 'POP3DEL#*'],
        write: [...LOGIN.write, ...MAILBOX_ITEMS, 'POP3DEL#*'],
      },
      bucket: { name: 'Mail', read: [''], write: [APPEND_PREFIX], delete: [''] },
    },
    web: {
      table: {
        // USER# also holds the app passwords (`USER#<address>` / `APPPW#<id>`), read at every login;
        // APPPW#<id> names the owner of one sent alone as a bearer token.
        read: [HEALTH_PK, ...LOGIN.read, 'APPPW#*', ...SEND_AS, ...MAILBOX_ITEMS, ...JMAP_ITEMS, ...OUTBOUND_ITEMS, ...WEB_SESSION_ITEMS],
        write: [...LOGIN.write, ...MAILBOX_ITEMS, ...JMAP_ITEMS, ...OUTBOUND_ITEMS, ...WEB_SESSION_ITEMS],
      },
      // EmailSubmission sends as the submission listener does (containers/smtp/policy.ts hooks):
      // the raw message spooled under in/ (spool/ while it arrives) and a job on the inbound queue.
      bucket: { name: 'Mail', read: [''], write: [UPLOAD_PREFIX, 'in/', 'spool/'], delete: [''] },
      sendsTo: 'inbound',
    },
    proxy: {
      table: {
        read: [HEALTH_PK, ...proxyLogin.read, 'CACHE#*', 'CACHESTATS', 'CACHELRU', 'CACHEPURGE'],
        write: [...proxyLogin.write, 'CACHE#*', 'CACHESTATS', 'CACHELRU', 'CACHEPURGE'],
      },
      bucket: { name: 'Cache', read: [''], write: [''], delete: [''] },
    },
  };
}

/** Item actions on `tableArn` limited to the partition keys matching `read` / `write`. No Scan:
 * a Scan has no leading key, so a ForAllValues condition would let it read everything. */
export function grantTableItems(grantee: iam.IGrantable, tableArn: string, read: string[], write: string[]): void {
  const keys = (patterns: string[]) => ({ 'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': patterns } });
  const add = (actions: string[], patterns: string[]) => {
    if (!patterns.length) return;
    grantee.grantPrincipal.addToPrincipalPolicy(new iam.PolicyStatement({ actions, resources: [tableArn], conditions: keys(patterns) }));
  };
  add(['dynamodb:GetItem', 'dynamodb:BatchGetItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem'], read);
  add(['dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:BatchWriteItem', 'dynamodb:ConditionCheckItem'], write);
}

/** The object ARN patterns of `prefixes` in the bucket `bucketArn` ('' is every object). */
export function objectArns(bucketArn: string, prefixes: string[]): string[] {
  return prefixes.map((p) => `${bucketArn}/${p}*`);
}

/** Object actions by prefix, plus ListBucket on the bucket: the health probe's HeadBucket needs
 * it, and without it S3 answers a missing key with 403 instead of 404. */
export function grantObjects(grantee: iam.IGrantable, bucketArn: string, a: BucketAccess): void {
  const add = (actions: string[], resources: string[]) => {
    if (resources.length) grantee.grantPrincipal.addToPrincipalPolicy(new iam.PolicyStatement({ actions, resources }));
  };
  add(['s3:ListBucket'], [bucketArn]);
  add(['s3:GetObject'], objectArns(bucketArn, a.read));
  add(['s3:PutObject', 's3:AbortMultipartUpload'], objectArns(bucketArn, a.write));
  add(['s3:DeleteObject'], objectArns(bucketArn, a.delete));
}

/** Acknowledges cdk-nag's AwsSolutions-IAM5 for the object prefixes granted by grantObjects. */
export function acknowledgeObjectPrefixes(scope: IConstruct, exportName: string, a: BucketAccess): void {
  const prefixes = new Set([...a.read, ...a.write, ...a.delete]);
  for (const p of prefixes) {
    Validations.of(scope).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${exportName}/${p}*]`,
      reason: 'Objects under one key prefix of one named bucket, the prefix this service writes or reads (infra/access.ts); nothing on other buckets.',
    });
  }
}
