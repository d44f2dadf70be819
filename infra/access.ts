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
  /** Sends jobs to the inbound queue. */
  sendsTo?: 'inbound';
}

/** The health probe's item (core/storage/aws/dynamo-tables.ts `probe`), read by every task. */
const HEALTH_PK = '#health';

/** Accounts (core/accounts/accounts.ts `keys`): logins read the user; a login whose hash uses old
 * parameters rewrites it (Accounts.authenticate), so USER# is written too. */
const LOGIN = { read: ['USER#*'], write: ['USER#*'] };

/** The prefix under which IMAP APPEND stores new message blobs (the lead's append path). */
export const APPEND_PREFIX = 'append/';

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
 * `folderKeys.marker`); it reads and deletes message blobs whatever wrote them (in/, dsn/,
 * outbound-dsn/, import/, append/) and writes only APPEND's new blobs under `append/`. The proxy
 * touches only its cache items (core/cache/store.ts, stats.ts) and the cache bucket, and accounts
 * only when it requires Proxy-Authorization.
 */
export function listenerAccess(c: Pick<StageConfig, 'proxyRequireAuth'>): Record<ListenerGroup, ServiceAccess> {
  const proxyLogin = c.proxyRequireAuth ? LOGIN : { read: [], write: [] };
  return {
    smtp: {
      table: { read: [HEALTH_PK, ...LOGIN.read, 'DOMAIN#*', 'DOMAINS', 'ALIAS#*', 'MBX#*'], write: LOGIN.write },
      bucket: { name: 'Mail', read: ['in/', 'spool/'], write: ['in/', 'spool/'], delete: ['in/', 'spool/'] },
      sendsTo: 'inbound',
    },
    mailbox: {
      table: {
        read: [HEALTH_PK, ...LOGIN.read, 'MBX#*', 'POP3DEL#*', 'BLOBREF#*', 'CHG#*', 'JOB#*'],
        write: [...LOGIN.write, 'MBX#*', 'POP3DEL#*', 'BLOBREF#*', 'CHG#*', 'JOB#*'],
      },
      bucket: { name: 'Mail', read: [''], write: [APPEND_PREFIX], delete: [''] },
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
