/**
 * The one typed configuration of Tomlinson. Read once at the edge (containers/main.ts, each Lambda
 * handler, the CLI) from environment variables and an optional JSON file; everything inward takes
 * the typed `Config`. Every setting has one environment variable and one dotted path in the file;
 * the environment wins. An invalid value throws ConfigError naming the setting.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { resolve } from 'node:path';
import { parseDnsblEntry } from './mail/dnsbl.js';

/** A setting was invalid; `setting` names it as the environment variable and the file path. */
export class ConfigError extends Error {
  constructor(
    readonly setting: string,
    message: string,
  ) {
    super(`${setting}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Kind = 'string' | 'int' | 'port' | 'bool' | 'list' | 'enum';
interface Setting {
  /** Dotted path in the config object and in the JSON file. */
  path: string;
  env: string;
  kind: Kind;
  default: unknown;
  values?: readonly string[];
  min?: number;
  max?: number;
  doc: string;
  /** A secret: `config show` prints only whether it is set. */
  secret?: boolean;
}

const MB = 1024 * 1024;

/**
 * Every setting, with its environment variable, default and meaning. README.md's configuration
 * table is written from this list (`npm run cli -- config --docs`).
 */
export const SETTINGS: readonly Setting[] = [
  { path: 'dataDir', env: 'TOMLINSON_DATA_DIR', kind: 'string', default: './data', doc: 'Folder for blobs, SQLite and generated keys (local storage).' },
  {
    path: 'hostname',
    env: 'TOMLINSON_HOSTNAME',
    kind: 'string',
    default: '',
    doc: 'Name used in SMTP greetings, Received headers and HELO; defaults to the machine name.',
  },
  {
    path: 'listenHost',
    env: 'TOMLINSON_LISTEN_HOST',
    kind: 'string',
    default: '127.0.0.1',
    doc: 'Address every listener binds to. Set 0.0.0.0 in a container.',
  },
  {
    path: 'log.level',
    env: 'TOMLINSON_LOG_LEVEL',
    kind: 'enum',
    values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    default: 'info',
    doc: 'Log level.',
  },
  {
    path: 'log.pretty',
    env: 'TOMLINSON_LOG_PRETTY',
    kind: 'enum',
    values: ['auto', 'true', 'false'],
    default: 'auto',
    doc: 'Human-readable logs; auto: when stdout is a terminal.',
  },

  {
    path: 'storage.driver',
    env: 'TOMLINSON_STORAGE',
    kind: 'enum',
    values: ['local', 'aws'],
    default: 'local',
    doc: 'Adapter family: local (files + SQLite) or aws (S3, DynamoDB, SQS).',
  },
  {
    path: 'storage.queueMaxReceives',
    env: 'TOMLINSON_QUEUE_MAX_RECEIVES',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 5,
    doc: 'Receives after which a queue message goes to its dead-letter queue (local; on AWS the redrive policy).',
  },
  { path: 'storage.aws.region', env: 'AWS_REGION', kind: 'string', default: '', doc: 'AWS region (standard variable).' },
  { path: 'storage.aws.mailBucket', env: 'TOMLINSON_MAIL_BUCKET', kind: 'string', default: '', doc: 'S3 bucket for raw messages.' },
  { path: 'storage.aws.cacheBucket', env: 'TOMLINSON_CACHE_BUCKET', kind: 'string', default: '', doc: 'S3 bucket for proxy cache objects.' },
  { path: 'storage.aws.table', env: 'TOMLINSON_TABLE', kind: 'string', default: '', doc: 'DynamoDB table (pk, sk, ttl).' },
  { path: 'storage.aws.inboundQueueUrl', env: 'TOMLINSON_INBOUND_QUEUE_URL', kind: 'string', default: '', doc: 'SQS URL of the inbound queue.' },
  { path: 'storage.aws.outboundQueueUrl', env: 'TOMLINSON_OUTBOUND_QUEUE_URL', kind: 'string', default: '', doc: 'SQS URL of the outbound queue.' },
  { path: 'storage.aws.inboundDlqUrl', env: 'TOMLINSON_INBOUND_DLQ_URL', kind: 'string', default: '', doc: 'SQS URL of the inbound dead-letter queue.' },
  { path: 'storage.aws.outboundDlqUrl', env: 'TOMLINSON_OUTBOUND_DLQ_URL', kind: 'string', default: '', doc: 'SQS URL of the outbound dead-letter queue.' },
  {
    path: 'storage.aws.forcePathStyle',
    env: 'AWS_S3_FORCE_PATH_STYLE',
    kind: 'bool',
    default: false,
    doc: 'Path-style S3 addressing (emulators such as LocalStack or moto).',
  },

  {
    path: 'tls.certFile',
    env: 'TOMLINSON_TLS_CERT_FILE',
    kind: 'string',
    default: '',
    doc: 'PEM certificate chain; empty: a self-signed one is made in the data folder.',
  },
  { path: 'tls.keyFile', env: 'TOMLINSON_TLS_KEY_FILE', kind: 'string', default: '', doc: 'PEM private key.' },
  { path: 'tls.secretId', env: 'TOMLINSON_TLS_SECRET_ID', kind: 'string', default: '', doc: 'Secrets Manager secret holding {"cert","key"} (AWS).' },
  { path: 'tls.sniDir', env: 'TOMLINSON_TLS_SNI_DIR', kind: 'string', default: '', doc: 'Folder of <domain>.crt/<domain>.key pairs served by SNI.' },

  { path: 'smtp.enabled', env: 'TOMLINSON_SMTP_ENABLED', kind: 'bool', default: true, doc: 'Run the SMTP listeners.' },
  { path: 'smtp.port', env: 'TOMLINSON_SMTP_PORT', kind: 'port', default: 2525, doc: 'MX listener (public 25).' },
  { path: 'smtp.submissionPort', env: 'TOMLINSON_SUBMISSION_PORT', kind: 'port', default: 2587, doc: 'Submission with STARTTLS (public 587); 0 turns it off.' },
  {
    path: 'smtp.submissionsPort',
    env: 'TOMLINSON_SUBMISSIONS_PORT',
    kind: 'port',
    default: 2465,
    doc: 'Submission with implicit TLS (public 465); 0 turns it off.',
  },
  {
    path: 'smtp.maxMessageBytes',
    env: 'TOMLINSON_SMTP_MAX_MESSAGE_BYTES',
    kind: 'int',
    min: 1024,
    max: 2 ** 40,
    default: 50 * MB,
    doc: 'Largest message accepted (SIZE).',
  },
  {
    path: 'smtp.queueInlineBytes',
    env: 'TOMLINSON_SMTP_QUEUE_INLINE_BYTES',
    kind: 'int',
    min: 0,
    max: 128 * 1024,
    default: 64 * 1024,
    doc: 'Messages up to this size travel inside their inbound job, whose one durable queue write is then the only write before 250; the worker stores the raw message. 0: every message is stored first.',
  },
  { path: 'smtp.maxRecipients', env: 'TOMLINSON_SMTP_MAX_RECIPIENTS', kind: 'int', min: 1, max: 100000, default: 100, doc: 'Recipients per message.' },
  {
    path: 'smtp.maxConnectionsPerClient',
    env: 'TOMLINSON_SMTP_MAX_CONNECTIONS_PER_CLIENT',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 50,
    doc: 'Concurrent connections from one client address (not applied to smtp.trustedNetworks).',
  },
  {
    path: 'smtp.trustedNetworks',
    env: 'TOMLINSON_SMTP_TRUSTED_NETWORKS',
    kind: 'list',
    default: ['127.0.0.0/8', '::1/128'],
    doc: 'Client address ranges (CIDR) exempt from the per-client connection cap and never looked up in smtp.dnsbl (as Postfix exempts mynetworks); the total cap still applies. Loopback is exempt only while it is listed here.',
  },
  {
    path: 'smtp.maxConnections',
    env: 'TOMLINSON_SMTP_MAX_CONNECTIONS',
    kind: 'int',
    min: 1,
    max: 1000000,
    default: 1000,
    doc: 'Concurrent connections in all.',
  },
  {
    path: 'smtp.maxBadCommands',
    env: 'TOMLINSON_SMTP_MAX_BAD_COMMANDS',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 10,
    doc: 'Unknown or bad commands before 421 and disconnect.',
  },
  {
    path: 'smtp.authFailureDelayMs',
    env: 'TOMLINSON_SMTP_AUTH_FAILURE_DELAY_MS',
    kind: 'int',
    min: 0,
    max: 60000,
    default: 1000,
    doc: 'Delay before a failed AUTH is answered; doubles with each further failure of the same account from the same address (up to 16 times, cleared by a success), and an address past 10 failures in 15 minutes over all accounts is slowed as a whole.',
  },
  {
    path: 'smtp.allowPlainAuth',
    env: 'TOMLINSON_SMTP_ALLOW_PLAIN_AUTH',
    kind: 'bool',
    default: false,
    doc: 'Offer AUTH without TLS (tests only; never in production).',
  },
  { path: 'smtp.checkAuth', env: 'TOMLINSON_SMTP_CHECK_AUTH', kind: 'bool', default: true, doc: 'SPF/DKIM/DMARC checks on the MX listener.' },
  {
    path: 'smtp.dnsServers',
    env: 'TOMLINSON_DNS_SERVERS',
    kind: 'list',
    default: [],
    doc: 'DNS resolvers (ip or ip:port), comma-separated; empty: the system resolver.',
  },
  { path: 'smtp.dnsTimeoutMs', env: 'TOMLINSON_DNS_TIMEOUT_MS', kind: 'int', min: 50, max: 60000, default: 2000, doc: 'DNS query timeout.' },
  {
    path: 'smtp.dnsbl',
    env: 'TOMLINSON_SMTP_DNSBL',
    kind: 'list',
    default: [],
    doc: "DNS blocklist zones (RFC 5782) asked about each MX client at connect, comma-separated, e.g. zen.spamhaus.org; a listed client gets 554 5.7.1 naming the list. A zone may name the return codes that count, in Postfix's reject_rbl_client syntax: zone=d.d.d.d, each d a number or [n;n..m], e.g. zen.spamhaus.org=127.0.0.[2..11] or bl.example=127.0.0.4; a listing with another code lets the client in. None by default: each query tells the list who connects. A failed lookup lets the client in. smtp.trustedNetworks (by default loopback) and the submission ports are never checked.",
  },
  {
    path: 'smtp.maxRecipientsPerUserHour',
    env: 'TOMLINSON_SMTP_MAX_RECIPIENTS_PER_USER_HOUR',
    kind: 'int',
    min: 0,
    max: 10000000,
    default: 500,
    doc: 'Recipients an authenticated user may send to per clock hour, over every listener and task (a message to 3 recipients counts 3); past it RCPT gets 451 4.7.1. 0: no limit.',
  },
  {
    path: 'smtp.maxCommandLineBytes',
    env: 'TOMLINSON_SMTP_MAX_COMMAND_LINE',
    kind: 'int',
    min: 512,
    max: 65536,
    default: 512,
    doc: 'Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: at least 512; AUTH lines may be longer).',
  },
  {
    path: 'smtp.maxTextLineBytes',
    env: 'TOMLINSON_SMTP_MAX_TEXT_LINE',
    kind: 'int',
    min: 1000,
    max: 1048576,
    default: 1000,
    doc: 'Longest message line, CRLF included (RFC 5321 §4.5.3.1.6: at least 1000).',
  },
  {
    path: 'smtp.idleTimeoutSeconds',
    env: 'TOMLINSON_SMTP_IDLE_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 3600,
    default: 300,
    doc: 'Client inactivity before 421 (RFC 5321 §4.5.3.2.7: at least 5 minutes).',
  },

  {
    path: 'spam.enabled',
    env: 'TOMLINSON_SPAM',
    kind: 'enum',
    values: ['auto', 'on', 'off'],
    default: 'auto',
    doc: 'Scan MX mail with rspamd at spam.url: auto = when it answers /ping at start-up; on = always (a scan that fails is skipped and counted); off = never.',
  },
  {
    path: 'spam.scanOutbound',
    env: 'TOMLINSON_SPAM_SCAN_OUTBOUND',
    kind: 'bool',
    default: true,
    doc: "Scan what authenticated users send (submission ports and JMAP EmailSubmission, so the webmail too), passing the user to rspamd; rspamd's reject gives 550 5.7.1 (JMAP: forbiddenToSend) and nothing is sent.",
  },
  { path: 'spam.url', env: 'TOMLINSON_SPAM_URL', kind: 'string', default: 'http://127.0.0.1:11333', doc: "rspamd's normal worker (its /checkv2 and /ping)." },
  {
    path: 'spam.timeoutMs',
    env: 'TOMLINSON_SPAM_TIMEOUT_MS',
    kind: 'int',
    min: 100,
    max: 120000,
    default: 5000,
    doc: 'Longest wait for a scan; past it the message is accepted unscanned (X-Spam-Status: Unknown).',
  },
  {
    path: 'spam.controllerUrl',
    env: 'TOMLINSON_SPAM_CONTROLLER_URL',
    kind: 'string',
    default: 'http://127.0.0.1:11334',
    doc: "rspamd's controller worker, taught learn_spam / learn_ham when a user moves a message into or out of Junk. Empty: this process's inbound worker leaves lessons for a learner that has one (spam.learnPollSeconds).",
  },
  {
    path: 'spam.learnPollSeconds',
    env: 'TOMLINSON_SPAM_LEARN_POLL_SECONDS',
    kind: 'int',
    min: 0,
    max: 3600,
    default: 0,
    doc: 'Besides the inbound worker, teach the lessons waiting in the table every this many seconds from this process (on AWS the SMTP task, beside its rspamd sidecar); 0 = only the inbound worker.',
  },
  {
    path: 'spam.controllerPassword',
    env: 'TOMLINSON_SPAM_CONTROLLER_PASSWORD',
    kind: 'string',
    default: '',
    doc: "The controller's password (rspamd's `password` or `enable_password`); empty when our address is its secure_ip. Never logged.",
    secret: true,
  },

  { path: 'pop3.enabled', env: 'TOMLINSON_POP3_ENABLED', kind: 'bool', default: true, doc: 'Run the POP3 listeners.' },
  { path: 'pop3.port', env: 'TOMLINSON_POP3_PORT', kind: 'port', default: 2110, doc: 'POP3 with STLS (public 110).' },
  { path: 'pop3.tlsPort', env: 'TOMLINSON_POP3S_PORT', kind: 'port', default: 2995, doc: 'POP3 with implicit TLS (public 995); 0 turns it off.' },
  {
    path: 'pop3.allowPlaintext',
    env: 'TOMLINSON_POP3_ALLOW_PLAINTEXT',
    kind: 'enum',
    values: ['never', 'loopback', 'always'],
    default: 'loopback',
    doc: 'USER/PASS and AUTH before STLS: never, from loopback clients only, or always.',
  },
  {
    path: 'pop3.idleTimeoutSeconds',
    env: 'TOMLINSON_POP3_IDLE_TIMEOUT',
    kind: 'int',
    min: 600,
    max: 86400,
    default: 600,
    doc: 'Inactivity timer (RFC 1939 §3: at least 10 minutes).',
  },
  {
    path: 'pop3.leaseSeconds',
    env: 'TOMLINSON_POP3_LEASE_SECONDS',
    kind: 'int',
    min: 5,
    max: 86400,
    default: 60,
    doc: 'Maildrop lock lease, renewed while the session lives.',
  },
  {
    path: 'pop3.maxConnections',
    env: 'TOMLINSON_POP3_MAX_CONNECTIONS',
    kind: 'int',
    min: 1,
    max: 1000000,
    default: 1000,
    doc: 'Concurrent POP3 connections in all.',
  },
  {
    path: 'pop3.maxConnectionsPerClient',
    env: 'TOMLINSON_POP3_MAX_CONNECTIONS_PER_CLIENT',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 20,
    doc: 'Concurrent POP3 connections from one client address.',
  },
  {
    path: 'pop3.maxBadCommands',
    env: 'TOMLINSON_POP3_MAX_BAD_COMMANDS',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 10,
    doc: 'Unknown or misplaced commands before the connection is closed.',
  },
  {
    path: 'pop3.authFailureDelayMs',
    env: 'TOMLINSON_POP3_AUTH_FAILURE_DELAY_MS',
    kind: 'int',
    min: 0,
    max: 60000,
    default: 1000,
    doc: 'Delay before a failed login is answered; doubles with each further failure of the same account from the same address (up to 16 times, cleared by a success), and an address past 10 failures in 15 minutes over all accounts is slowed as a whole.',
  },
  {
    path: 'pop3.loginCacheSeconds',
    env: 'TOMLINSON_POP3_LOGIN_CACHE_SECONDS',
    kind: 'int',
    min: 0,
    max: 86400,
    default: 900,
    doc: 'How long a password that passed the (slow, memory-hard) check is remembered in memory as a keyed hash, so the next login of that user skips it; 0 turns the cache off.',
  },

  { path: 'imap.enabled', env: 'TOMLINSON_IMAP_ENABLED', kind: 'bool', default: true, doc: 'Run the IMAP listeners.' },
  { path: 'imap.port', env: 'TOMLINSON_IMAP_PORT', kind: 'port', default: 2143, doc: 'IMAP with STARTTLS (public 143).' },
  { path: 'imap.tlsPort', env: 'TOMLINSON_IMAPS_PORT', kind: 'port', default: 2993, doc: 'IMAP with implicit TLS (public 993); 0 turns it off.' },
  {
    path: 'imap.allowPlaintext',
    env: 'TOMLINSON_IMAP_ALLOW_PLAINTEXT',
    kind: 'enum',
    values: ['never', 'loopback', 'always'],
    default: 'loopback',
    doc: 'LOGIN and AUTHENTICATE before STARTTLS: never, from loopback clients only, or always.',
  },
  {
    path: 'imap.idleTimeoutSeconds',
    env: 'TOMLINSON_IMAP_IDLE_TIMEOUT',
    kind: 'int',
    min: 1800,
    max: 86400,
    default: 1800,
    doc: 'Inactivity timer, IDLE included (RFC 9051 §5.4: at least 30 minutes).',
  },
  {
    path: 'imap.maxConnections',
    env: 'TOMLINSON_IMAP_MAX_CONNECTIONS',
    kind: 'int',
    min: 1,
    max: 1000000,
    default: 5000,
    doc: 'Concurrent IMAP connections in all.',
  },
  {
    path: 'imap.maxConnectionsPerClient',
    env: 'TOMLINSON_IMAP_MAX_CONNECTIONS_PER_CLIENT',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 50,
    doc: 'Concurrent IMAP connections from one client address (a mail program opens several per account).',
  },
  {
    path: 'imap.maxBadCommands',
    env: 'TOMLINSON_IMAP_MAX_BAD_COMMANDS',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 20,
    doc: 'Malformed or unknown commands in a row before BYE.',
  },
  {
    path: 'imap.authFailureDelayMs',
    env: 'TOMLINSON_IMAP_AUTH_FAILURE_DELAY_MS',
    kind: 'int',
    min: 0,
    max: 60000,
    default: 1000,
    doc: "Delay before a failed LOGIN or AUTHENTICATE is answered; grows with repeated failures as POP3's does.",
  },
  {
    path: 'imap.loginCacheSeconds',
    env: 'TOMLINSON_IMAP_LOGIN_CACHE_SECONDS',
    kind: 'int',
    min: 0,
    max: 86400,
    default: 900,
    doc: 'How long a password that passed the memory-hard check is remembered as a keyed hash (mail programs log in often, on several connections); 0 turns it off.',
  },
  {
    path: 'imap.maxLineBytes',
    env: 'TOMLINSON_IMAP_MAX_LINE_BYTES',
    kind: 'int',
    min: 1024,
    max: 10485760,
    default: 65536,
    doc: 'Longest command line, literals excluded (a UID set of a big folder is long; RFC 7162 §4 asks for at least 8192).',
  },

  { path: 'web.enabled', env: 'TOMLINSON_WEB_ENABLED', kind: 'bool', default: true, doc: 'Run the web listener (JMAP API and the webmail).' },
  { path: 'web.port', env: 'TOMLINSON_WEB_PORT', kind: 'port', default: 2443, doc: 'HTTPS for JMAP (public 443).' },
  {
    path: 'web.maxConnections',
    env: 'TOMLINSON_WEB_MAX_CONNECTIONS',
    kind: 'int',
    min: 1,
    max: 1000000,
    default: 5000,
    doc: 'Concurrent HTTPS connections in all (push connections included).',
  },
  {
    path: 'web.maxConnectionsPerClient',
    env: 'TOMLINSON_WEB_MAX_CONNECTIONS_PER_CLIENT',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 100,
    doc: 'Concurrent HTTPS connections from one client address (a browser opens several, and one per push stream); over it a connection is closed before its TLS handshake.',
  },
  {
    path: 'web.headersTimeoutMs',
    env: 'TOMLINSON_WEB_HEADERS_TIMEOUT_MS',
    kind: 'int',
    min: 1000,
    max: 600000,
    default: 20000,
    doc: 'Time a client has to send the request headers.',
  },
  {
    path: 'web.requestTimeoutMs',
    env: 'TOMLINSON_WEB_REQUEST_TIMEOUT_MS',
    kind: 'int',
    min: 1000,
    max: 3600000,
    default: 300000,
    doc: 'Time a client has to send a whole request, body included (an upload of maxSizeUpload on a slow link).',
  },
  {
    path: 'web.authFailureDelayMs',
    env: 'TOMLINSON_WEB_AUTH_FAILURE_DELAY_MS',
    kind: 'int',
    min: 0,
    max: 60000,
    default: 1000,
    doc: "Delay before a failed HTTP Basic login is answered 401; grows with repeated failures as POP3's does.",
  },
  {
    path: 'web.loginCacheSeconds',
    env: 'TOMLINSON_WEB_LOGIN_CACHE_SECONDS',
    kind: 'int',
    min: 0,
    max: 86400,
    default: 900,
    doc: 'How long a password or app password that passed the memory-hard check is remembered as a keyed hash (every JMAP request carries it); 0 turns it off.',
  },
  {
    path: 'web.maxSizeUpload',
    env: 'TOMLINSON_WEB_MAX_SIZE_UPLOAD',
    kind: 'int',
    min: 1024,
    max: 2 ** 40,
    default: 50 * MB,
    doc: 'JMAP maxSizeUpload: the largest blob upload in bytes (RFC 8620 §2).',
  },
  {
    path: 'web.maxConcurrentUpload',
    env: 'TOMLINSON_WEB_MAX_CONCURRENT_UPLOAD',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 4,
    doc: 'JMAP maxConcurrentUpload: uploads one account may have in progress at once.',
  },
  {
    path: 'web.maxSizeRequest',
    env: 'TOMLINSON_WEB_MAX_SIZE_REQUEST',
    kind: 'int',
    min: 1024,
    max: 1024 * MB,
    default: 10 * MB,
    doc: 'JMAP maxSizeRequest: the largest API request body in bytes.',
  },
  {
    path: 'web.maxConcurrentRequests',
    env: 'TOMLINSON_WEB_MAX_CONCURRENT_REQUESTS',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 4,
    doc: 'JMAP maxConcurrentRequests: API requests one account may have in progress at once.',
  },
  {
    path: 'web.maxCallsInRequest',
    env: 'TOMLINSON_WEB_MAX_CALLS_IN_REQUEST',
    kind: 'int',
    min: 1,
    max: 10000,
    default: 32,
    doc: 'JMAP maxCallsInRequest: method calls in one API request.',
  },
  {
    path: 'web.maxObjectsInGet',
    env: 'TOMLINSON_WEB_MAX_OBJECTS_IN_GET',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 500,
    doc: 'JMAP maxObjectsInGet: ids one /get may ask for.',
  },
  {
    path: 'web.maxObjectsInSet',
    env: 'TOMLINSON_WEB_MAX_OBJECTS_IN_SET',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 500,
    doc: 'JMAP maxObjectsInSet: creates, updates and destroys in one /set.',
  },
  {
    path: 'web.uploadTtlSeconds',
    env: 'TOMLINSON_WEB_UPLOAD_TTL_SECONDS',
    kind: 'int',
    min: 3600,
    max: 30 * 86400,
    default: 86400,
    doc: 'How long an uploaded blob stays usable (RFC 8620 §6.1 asks for at least an hour); the orphan sweep deletes the unused ones later.',
  },
  {
    path: 'web.sessionHours',
    env: 'TOMLINSON_WEB_SESSION_HOURS',
    kind: 'int',
    min: 1,
    max: 24 * 366,
    default: 168,
    doc: 'Lifetime of a webmail sign-in from the moment it is made (absolute: use does not extend it); `tomlinson session revoke` ends one earlier.',
  },
  {
    path: 'web.webmailDir',
    env: 'TOMLINSON_WEB_WEBMAIL_DIR',
    kind: 'string',
    default: '',
    doc: "Folder of the built webmail (index.html and assets/); empty: the app's dist/webmail (`npm run build` makes it).",
  },
  {
    path: 'web.imageProxy',
    env: 'TOMLINSON_WEB_IMAGE_PROXY',
    kind: 'string',
    default: 'auto',
    doc: "Forward proxy the webmail fetches a message's remote images through (http://host:port); auto: this process's own caching proxy (on listenHost) when proxy.enabled; off: remote images are refused.",
  },
  {
    path: 'web.imageMaxBytes',
    env: 'TOMLINSON_WEB_IMAGE_MAX_BYTES',
    kind: 'int',
    min: 1024,
    max: 1024 * MB,
    default: 10 * MB,
    doc: 'Largest remote image the webmail fetches for a message.',
  },
  {
    path: 'web.imageTimeoutMs',
    env: 'TOMLINSON_WEB_IMAGE_TIMEOUT_MS',
    kind: 'int',
    min: 100,
    max: 300000,
    default: 15000,
    doc: 'Time a remote image fetch may take in all.',
  },

  { path: 'proxy.enabled', env: 'TOMLINSON_PROXY_ENABLED', kind: 'bool', default: true, doc: 'Run the caching proxy.' },
  { path: 'proxy.port', env: 'TOMLINSON_PROXY_PORT', kind: 'port', default: 3128, doc: 'HTTP forward proxy.' },
  {
    path: 'proxy.workers',
    env: 'TOMLINSON_PROXY_WORKERS',
    kind: 'int',
    min: 0,
    max: 256,
    default: 0,
    doc: 'Proxy worker processes sharing the proxy port, each with proxy.memoryBytes / workers of the memory tier and all sharing the object tier; 0: one per core (fewer under a container CPU quota); 1: the proxy runs in the main process.',
  },
  {
    path: 'proxy.allowedClients',
    env: 'TOMLINSON_PROXY_ALLOWED_CLIENTS',
    kind: 'list',
    default: ['127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
    doc: 'Client address ranges (CIDR) allowed to use the proxy.',
  },
  {
    path: 'proxy.requireAuth',
    env: 'TOMLINSON_PROXY_REQUIRE_AUTH',
    kind: 'bool',
    default: false,
    doc: 'Require Proxy-Authorization: Basic against the accounts.',
  },
  {
    path: 'proxy.connectPorts',
    env: 'TOMLINSON_PROXY_CONNECT_PORTS',
    kind: 'list',
    default: ['443'],
    doc: 'Ports CONNECT may reach, and absolute-form https:// requests (proxy.httpsOrigin) too.',
  },
  {
    path: 'proxy.httpsOrigin',
    env: 'TOMLINSON_PROXY_HTTPS_ORIGIN',
    kind: 'bool',
    default: true,
    doc: "Take absolute-form https://... requests over plain HTTP (GET https://host/x HTTP/1.1, as Squid does): the proxy opens TLS to the origin itself (certificate checked against Node's trusted roots and NODE_EXTRA_CA_CERTS) and caches the answers as http ones. Off: such requests get 400 and https goes through CONNECT only.",
  },
  {
    path: 'proxy.allowedOrigins',
    env: 'TOMLINSON_PROXY_ALLOWED_ORIGINS',
    kind: 'list',
    default: [],
    doc: 'Internal origin address ranges (CIDR) the proxy may contact; every other non-public address (private, loopback, link-local, the other IANA special-purpose ranges, its own addresses) is refused with 403, after DNS. Cloud metadata addresses are refused even inside these ranges.',
  },
  {
    path: 'proxy.allowPrivateOrigins',
    env: 'TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS',
    kind: 'bool',
    default: false,
    doc: 'Allow every origin address, metadata services included (tests and benchmarks only; use proxy.allowedOrigins in production).',
  },
  {
    path: 'proxy.dnsServers',
    env: 'TOMLINSON_PROXY_DNS_SERVERS',
    kind: 'list',
    default: [],
    doc: 'DNS resolvers for origin names (ip or ip:port), comma-separated; empty: the system resolver (with /etc/hosts).',
  },
  {
    path: 'proxy.maxConnections',
    env: 'TOMLINSON_PROXY_MAX_CONNECTIONS',
    kind: 'int',
    min: 1,
    max: 1000000,
    default: 1000,
    doc: 'Concurrent client connections in all (tunnels included); over it a connection gets 503 and is closed.',
  },
  {
    path: 'proxy.maxConnectionsPerClient',
    env: 'TOMLINSON_PROXY_MAX_CONNECTIONS_PER_CLIENT',
    kind: 'int',
    min: 1,
    max: 100000,
    default: 100,
    doc: 'Concurrent client connections from one client address.',
  },
  {
    path: 'proxy.accessLog',
    env: 'TOMLINSON_PROXY_ACCESS_LOG',
    kind: 'bool',
    default: true,
    doc: 'One info log line per request (c: "access": method, url, status, cache, bytes, ms; reason on the proxy\'s own refusals and errors).',
  },
  { path: 'proxy.memoryBytes', env: 'TOMLINSON_PROXY_MEMORY_BYTES', kind: 'int', min: 0, max: 2 ** 40, default: 256 * MB, doc: 'Memory tier size.' },
  {
    path: 'proxy.cacheBytes',
    env: 'TOMLINSON_PROXY_CACHE_BYTES',
    kind: 'int',
    min: 0,
    max: 2 ** 50,
    default: 10 * 1024 * MB,
    doc: 'Object tier size (blobs).',
  },
  {
    path: 'proxy.maxObjectBytes',
    env: 'TOMLINSON_PROXY_MAX_OBJECT_BYTES',
    kind: 'int',
    min: 0,
    max: 2 ** 40,
    default: 100 * MB,
    doc: 'Largest response stored.',
  },
  {
    path: 'proxy.originTimeoutMs',
    env: 'TOMLINSON_PROXY_ORIGIN_TIMEOUT_MS',
    kind: 'int',
    min: 100,
    max: 600000,
    default: 30000,
    doc: 'Origin response timeout (504 after it).',
  },
  {
    path: 'proxy.maxHeaderBytes',
    env: 'TOMLINSON_PROXY_MAX_HEADER_BYTES',
    kind: 'int',
    min: 1024,
    max: 1048576,
    default: 16384,
    doc: 'Largest request head accepted (431 above it).',
  },
  {
    path: 'proxy.collapseWaitMs',
    env: 'TOMLINSON_PROXY_COLLAPSE_WAIT_MS',
    kind: 'int',
    min: 0,
    max: 600000,
    default: 10000,
    doc: 'How long a request waits for a concurrent miss of the same URL before going to the origin itself.',
  },
  {
    path: 'proxy.heuristicCapSeconds',
    env: 'TOMLINSON_PROXY_HEURISTIC_CAP_SECONDS',
    kind: 'int',
    min: 0,
    max: 31536000,
    default: 86400,
    doc: 'Cap on heuristic freshness (10% of the time since Last-Modified).',
  },
  {
    path: 'proxy.objectTierAdmitHits',
    env: 'TOMLINSON_PROXY_OBJECT_TIER_ADMIT_HITS',
    kind: 'int',
    min: 1,
    max: 1000,
    default: 2,
    doc: 'Uses of a response held in memory (the storing request is the first) before it is also written to the shared object tier (at once when another proxy worker misses on it); 1: write every stored response.',
  },
  {
    path: 'proxy.statsLogSeconds',
    env: 'TOMLINSON_PROXY_STATS_LOG_SECONDS',
    kind: 'int',
    min: 0,
    max: 86400,
    default: 60,
    doc: 'Seconds between the proxy log lines with cache: "stats" and the counts of the interval (the CloudWatch hit-ratio metrics sum them); 0: never.',
  },

  {
    path: 'outbound.smarthost',
    env: 'TOMLINSON_SMARTHOST',
    kind: 'string',
    default: '',
    doc: 'smtp://user@host:587 (STARTTLS required; ?tls=opportunistic or ?tls=none to allow cleartext, without credentials only) or smtps://host:465 relay for all remote mail; empty: direct MX delivery.',
  },
  {
    path: 'outbound.smarthostPasswordSecretId',
    env: 'TOMLINSON_SMARTHOST_SECRET_ID',
    kind: 'string',
    default: '',
    doc: 'Secrets Manager secret with the smarthost password (AWS).',
  },
  {
    path: 'outbound.maxAgeSeconds',
    env: 'TOMLINSON_OUTBOUND_MAX_AGE',
    kind: 'int',
    min: 60,
    max: 30 * 86400,
    default: 5 * 86400,
    doc: 'Give up and bounce after this long.',
  },
  {
    path: 'outbound.retrySchedule',
    env: 'TOMLINSON_OUTBOUND_RETRY_SCHEDULE',
    kind: 'list',
    default: ['300', '600', '1200', '1800'],
    doc: 'Seconds between attempts; the last repeats.',
  },
  {
    path: 'outbound.smarthostDomains',
    env: 'TOMLINSON_SMARTHOST_DOMAINS',
    kind: 'list',
    default: [],
    doc: 'Recipient domains routed through the smarthost; empty: all of them.',
  },
  {
    path: 'outbound.mxPort',
    env: 'TOMLINSON_OUTBOUND_MX_PORT',
    kind: 'port',
    default: 25,
    doc: 'Port of remote MX hosts (tests point it at their own server).',
  },
  {
    path: 'outbound.requireTlsDomains',
    env: 'TOMLINSON_OUTBOUND_REQUIRE_TLS_DOMAINS',
    kind: 'list',
    default: [],
    doc: 'Recipient domains whose MX hosts must accept STARTTLS (with a verified certificate unless outbound.tlsVerify is never).',
  },
  {
    path: 'outbound.tlsVerify',
    env: 'TOMLINSON_OUTBOUND_TLS_VERIFY',
    kind: 'enum',
    values: ['never', 'required', 'always'],
    default: 'required',
    doc: 'Verify server certificates: never, where TLS is required (smarthost, requireTlsDomains), or always.',
  },
  {
    path: 'outbound.connectTimeoutSeconds',
    env: 'TOMLINSON_OUTBOUND_CONNECT_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 600,
    default: 30,
    doc: 'TCP connect (and TLS handshake) timeout per host.',
  },
  {
    path: 'outbound.commandTimeoutSeconds',
    env: 'TOMLINSON_OUTBOUND_COMMAND_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 3600,
    default: 300,
    doc: 'Reply timeout per command (RFC 5321 4.5.3.2: 5 minutes).',
  },
  {
    path: 'outbound.dataTimeoutSeconds',
    env: 'TOMLINSON_OUTBOUND_DATA_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 3600,
    default: 600,
    doc: 'Reply timeout after the end of the data (RFC 5321 4.5.3.2.6: 10 minutes).',
  },
  {
    path: 'outbound.delayNoticeSeconds',
    env: 'TOMLINSON_OUTBOUND_DELAY_NOTICE',
    kind: 'int',
    min: 0,
    max: 30 * 86400,
    default: 4 * 3600,
    doc: 'Send one delay notice once a message has waited this long; 0: never.',
  },
  {
    path: 'outbound.dkimDir',
    env: 'TOMLINSON_DKIM_DIR',
    kind: 'string',
    default: '',
    doc: 'Folder of DKIM keys <domain>/<selector>.pem; empty: <dataDir>/dkim.',
  },
  {
    path: 'outbound.dkimSecretPrefix',
    env: 'TOMLINSON_DKIM_SECRET_PREFIX',
    kind: 'string',
    default: '',
    doc: 'Secrets Manager prefix of DKIM keys (secret <prefix><domain>); empty: keys from files.',
  },
  {
    path: 'outbound.mtaSts',
    env: 'TOMLINSON_OUTBOUND_MTA_STS',
    kind: 'bool',
    default: true,
    doc: "Honour recipient domains' MTA-STS policies (RFC 8461) for MX delivery.",
  },
  {
    path: 'outbound.mtaStsPort',
    env: 'TOMLINSON_OUTBOUND_MTA_STS_PORT',
    kind: 'port',
    default: 443,
    doc: 'HTTPS port of mta-sts.<domain> policy hosts (tests point it at their own server).',
  },

  { path: 'workers.enabled', env: 'TOMLINSON_WORKERS_ENABLED', kind: 'bool', default: true, doc: 'Run the queue workers in-process (embedded default).' },
  {
    path: 'workers.thread',
    env: 'TOMLINSON_WORKERS_THREAD',
    kind: 'bool',
    default: true,
    doc: "Run the in-process queue workers on a thread of their own, so their work never delays the listeners' replies (containers/worker-host.ts).",
  },
  { path: 'workers.concurrency', env: 'TOMLINSON_WORKER_CONCURRENCY', kind: 'int', min: 1, max: 256, default: 8, doc: 'Jobs processed at once per queue.' },
  {
    path: 'workers.visibilitySeconds',
    env: 'TOMLINSON_WORKER_VISIBILITY',
    kind: 'int',
    min: 2,
    max: 43200,
    default: 60,
    doc: 'How long a job taken by a worker that died stays hidden before another takes it.',
  },

  {
    path: 'mail.orphanGraceHours',
    env: 'TOMLINSON_ORPHAN_GRACE_HOURS',
    kind: 'int',
    min: 1,
    max: 24 * 3650,
    default: 360,
    doc: 'An unreferenced raw message older than this is an orphan whatever the queues hold; longer than any job lives (SQS keeps 14 days, DLQ included).',
  },
  {
    path: 'mail.orphanSettleMinutes',
    env: 'TOMLINSON_ORPHAN_SETTLE_MINUTES',
    kind: 'int',
    min: 0,
    max: 10080,
    default: 15,
    doc: 'A blob must have been seen unreferenced this long before the sweep deletes it (covers a put whose job is still being sent); 0 only with every listener stopped.',
  },
  {
    path: 'mail.sweepIntervalMinutes',
    env: 'TOMLINSON_SWEEP_INTERVAL_MINUTES',
    kind: 'int',
    min: 0,
    max: 10080,
    default: 60,
    doc: 'How often the in-process workers sweep orphaned message blobs (first run 5 minutes after start); 0 turns it off.',
  },
  {
    path: 'mail.accountCacheSeconds',
    env: 'TOMLINSON_ACCOUNT_CACHE_SECONDS',
    kind: 'int',
    min: 0,
    max: 3600,
    default: 30,
    doc: 'aws family: how long listeners and workers keep a domain, user or alias lookup (address resolution only, never a password check); a user removed or added elsewhere is seen up to this late. 0 turns the cache off.',
  },

  { path: 'health.port', env: 'TOMLINSON_HEALTH_PORT', kind: 'port', default: 8025, doc: 'Health and /metrics HTTP endpoint; 0 turns it off.' },
  { path: 'health.host', env: 'TOMLINSON_HEALTH_HOST', kind: 'string', default: '127.0.0.1', doc: 'Address of the health endpoint.' },
];

/** The typed configuration. */
export interface Config {
  dataDir: string;
  hostname: string;
  listenHost: string;
  log: { level: string; pretty: 'auto' | 'true' | 'false' };
  storage: {
    driver: 'local' | 'aws';
    queueMaxReceives: number;
    aws: {
      region: string;
      mailBucket: string;
      cacheBucket: string;
      table: string;
      inboundQueueUrl: string;
      outboundQueueUrl: string;
      inboundDlqUrl: string;
      outboundDlqUrl: string;
      forcePathStyle: boolean;
    };
  };
  tls: { certFile: string; keyFile: string; secretId: string; sniDir: string };
  smtp: {
    enabled: boolean;
    port: number;
    submissionPort: number;
    submissionsPort: number;
    maxMessageBytes: number;
    queueInlineBytes: number;
    maxRecipients: number;
    maxConnectionsPerClient: number;
    trustedNetworks: string[];
    maxConnections: number;
    maxBadCommands: number;
    authFailureDelayMs: number;
    allowPlainAuth: boolean;
    checkAuth: boolean;
    dnsServers: string[];
    dnsTimeoutMs: number;
    dnsbl: string[];
    maxRecipientsPerUserHour: number;
    maxCommandLineBytes: number;
    maxTextLineBytes: number;
    idleTimeoutSeconds: number;
  };
  spam: {
    enabled: 'auto' | 'on' | 'off';
    scanOutbound: boolean;
    url: string;
    timeoutMs: number;
    controllerUrl: string;
    controllerPassword: string;
    learnPollSeconds: number;
  };
  pop3: {
    enabled: boolean;
    port: number;
    tlsPort: number;
    allowPlaintext: 'never' | 'loopback' | 'always';
    idleTimeoutSeconds: number;
    leaseSeconds: number;
    maxConnections: number;
    maxConnectionsPerClient: number;
    maxBadCommands: number;
    authFailureDelayMs: number;
    loginCacheSeconds: number;
  };
  imap: {
    enabled: boolean;
    port: number;
    tlsPort: number;
    allowPlaintext: 'never' | 'loopback' | 'always';
    idleTimeoutSeconds: number;
    maxConnections: number;
    maxConnectionsPerClient: number;
    maxBadCommands: number;
    maxLineBytes: number;
    authFailureDelayMs: number;
    loginCacheSeconds: number;
  };
  web: {
    enabled: boolean;
    port: number;
    maxConnections: number;
    maxConnectionsPerClient: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    authFailureDelayMs: number;
    loginCacheSeconds: number;
    maxSizeUpload: number;
    maxConcurrentUpload: number;
    maxSizeRequest: number;
    maxConcurrentRequests: number;
    maxCallsInRequest: number;
    maxObjectsInGet: number;
    maxObjectsInSet: number;
    uploadTtlSeconds: number;
    sessionHours: number;
    webmailDir: string;
    imageProxy: string;
    imageMaxBytes: number;
    imageTimeoutMs: number;
  };
  proxy: {
    enabled: boolean;
    port: number;
    workers: number;
    allowedClients: string[];
    requireAuth: boolean;
    connectPorts: string[];
    httpsOrigin: boolean;
    allowedOrigins: string[];
    allowPrivateOrigins: boolean;
    dnsServers: string[];
    maxConnections: number;
    maxConnectionsPerClient: number;
    accessLog: boolean;
    memoryBytes: number;
    cacheBytes: number;
    maxObjectBytes: number;
    originTimeoutMs: number;
    maxHeaderBytes: number;
    collapseWaitMs: number;
    heuristicCapSeconds: number;
    statsLogSeconds: number;
    objectTierAdmitHits: number;
  };
  outbound: {
    smarthost: string;
    smarthostPasswordSecretId: string;
    maxAgeSeconds: number;
    retrySchedule: string[];
    smarthostDomains: string[];
    mxPort: number;
    requireTlsDomains: string[];
    tlsVerify: 'never' | 'required' | 'always';
    connectTimeoutSeconds: number;
    commandTimeoutSeconds: number;
    dataTimeoutSeconds: number;
    delayNoticeSeconds: number;
    dkimDir: string;
    dkimSecretPrefix: string;
    mtaSts: boolean;
    mtaStsPort: number;
  };
  workers: { enabled: boolean; thread: boolean; concurrency: number; visibilitySeconds: number };
  mail: { orphanGraceHours: number; orphanSettleMinutes: number; sweepIntervalMinutes: number; accountCacheSeconds: number };
  health: { port: number; host: string };
}

function parseValue(s: Setting, raw: unknown): unknown {
  const name = s.env;
  switch (s.kind) {
    case 'string':
      if (typeof raw !== 'string') throw new ConfigError(name, `expected a string, got ${JSON.stringify(raw)}`);
      return raw;
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const v = String(raw).trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(v)) return true;
      if (['0', 'false', 'no', 'off', ''].includes(v)) return false;
      throw new ConfigError(name, `expected true or false, got ${JSON.stringify(raw)}`);
    }
    case 'int':
    case 'port': {
      const text = String(raw).trim();
      if (!/^-?\d+$/.test(text)) throw new ConfigError(name, `expected a whole number, got ${JSON.stringify(raw)}`);
      const n = Number(text);
      const min = s.kind === 'port' ? 0 : (s.min ?? -Infinity);
      const max = s.kind === 'port' ? 65535 : (s.max ?? Infinity);
      if (n < min || n > max) throw new ConfigError(name, `${n} is out of range ${min}..${max}`);
      return n;
    }
    case 'list': {
      if (Array.isArray(raw)) return raw.map(String);
      return String(raw)
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean);
    }
    case 'enum': {
      const v = String(raw);
      if (!s.values!.includes(v)) throw new ConfigError(name, `expected one of ${s.values!.join(', ')}, got ${JSON.stringify(raw)}`);
      return v;
    }
  }
}

function getPath(obj: Record<string, unknown>, path: string): unknown {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    cur[part] ??= {};
    cur = cur[part] as Record<string, unknown>;
  }
  cur[parts.at(-1)!] = value;
}

/**
 * Builds the Config from environment variables and, when TOMLINSON_CONFIG names one (or `file` is
 * given), a JSON file with the same dotted paths as nested objects. Throws ConfigError.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, file?: string): Config {
  const path = file ?? env.TOMLINSON_CONFIG;
  let fromFile: Record<string, unknown> = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError('TOMLINSON_CONFIG', `cannot read ${path}: ${(e as Error).message}`);
    }
    try {
      fromFile = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError('TOMLINSON_CONFIG', `${path} is not valid JSON: ${(e as Error).message}`);
    }
  }
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const envRaw = env[s.env];
    const fileRaw = getPath(fromFile, s.path);
    let value: unknown;
    if (envRaw !== undefined && envRaw !== '') value = parseValue(s, envRaw);
    else if (fileRaw !== undefined) value = parseValue({ ...s, env: `${s.env} (${s.path} in ${path})` }, fileRaw);
    else value = s.default;
    setPath(out, s.path, value);
  }
  const cfg = out as unknown as Config;
  cfg.hostname ||= osHostname();
  cfg.dataDir = resolve(cfg.dataDir);
  for (const x of cfg.outbound.retrySchedule) {
    if (!/^\d+$/.test(x) || Number(x) < 1) throw new ConfigError('TOMLINSON_OUTBOUND_RETRY_SCHEDULE', `expected seconds, got ${JSON.stringify(x)}`);
  }
  for (const x of cfg.smtp.dnsbl) {
    const entry = parseDnsblEntry(x);
    if ('error' in entry) throw new ConfigError('TOMLINSON_SMTP_DNSBL', entry.error);
  }
  for (const x of cfg.proxy.connectPorts) {
    if (!/^\d+$/.test(x) || Number(x) < 1 || Number(x) > 65535)
      throw new ConfigError('TOMLINSON_PROXY_CONNECT_PORTS', `expected port numbers, got ${JSON.stringify(x)}`);
  }
  for (const x of cfg.proxy.allowedOrigins) {
    const [addr, bits, extra] = x.split('/');
    const max = isIP(addr) === 4 ? 32 : 128;
    if (!isIP(addr) || extra !== undefined || (bits !== undefined && (!/^\d{1,3}$/.test(bits) || Number(bits) > max))) {
      throw new ConfigError('TOMLINSON_PROXY_ALLOWED_ORIGINS', `expected address ranges such as 10.20.0.0/16, got ${JSON.stringify(x)}`);
    }
  }
  if (cfg.storage.driver === 'aws') {
    const a = cfg.storage.aws;
    const need: [string, string][] = [
      ['TOMLINSON_MAIL_BUCKET', a.mailBucket],
      ['TOMLINSON_CACHE_BUCKET', a.cacheBucket],
      ['TOMLINSON_TABLE', a.table],
      ['TOMLINSON_INBOUND_QUEUE_URL', a.inboundQueueUrl],
      ['TOMLINSON_OUTBOUND_QUEUE_URL', a.outboundQueueUrl],
    ];
    for (const [name, v] of need) if (!v) throw new ConfigError(name, 'required when TOMLINSON_STORAGE=aws');
  }
  return cfg;
}
