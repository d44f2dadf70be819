/**
 * Typed per-stage deployment settings. Nothing secret lives here: passwords and keys are in
 * Secrets Manager entries the state stack creates empty or generated (docs/deploy.md says how to
 * fill them). infra/app.ts picks a stage by the `stage` context value and may override a few
 * fields from context; everything else in infra/ takes a StageConfig.
 */

/** The public listeners; each can be switched off (its NLB listener and service port go away). */
export type ListenerName = 'smtp' | 'submissions' | 'submission' | 'pop3' | 'pop3s' | 'imap' | 'imaps' | 'web' | 'proxy';

/**
 * The Fargate service that runs a listener, one per group.
 *
 * POP3 and IMAP share one `mailbox` service (mailbox access) rather than IMAP running on its own:
 * both read and write the same items (the user's folders, the change log, blob references), use
 * the same certificate and so the same task role; IMAP connections are long-lived (a client keeps
 * one or more open all day, IDLE included), so this service is sized by open connections while
 * POP3's short sessions alone would not fill even the smallest task. The group was called `pop3`
 * before IMAP: renaming it changes the logical ids of its service, task definition, role, security
 * group and log group, so the first deploy after the rename replaces them (CloudFormation creates
 * the new service before it deletes the old one, and both register with the same target groups, so
 * POP3 keeps answering; the retained log group of the old service stays). Nothing stateful is in a
 * listener service, which is why the clearer name was chosen over keeping `pop3`.
 *
 * The web listener (HTTPS: the JMAP API, later the webmail's files) is its own `web` service
 * although it touches the same items as `mailbox`: its load is request-shaped (JSON parsing, MIME
 * parsing for Email/get, uploads and downloads) where IMAP's is connection-shaped, so the two
 * scale on different signals, and its role also writes uploads and sends to the outbound queue
 * (EmailSubmission), which POP3 and IMAP never need.
 */
export type ListenerGroup = 'smtp' | 'mailbox' | 'web' | 'proxy';

/** The container component a listener belongs to (`serve <component>`, `TOMLINSON_<COMPONENT>_ENABLED`). */
export type ListenerComponent = 'smtp' | 'pop3' | 'imap' | 'web' | 'proxy';

/** Where one public listener lives. */
export interface ListenerSpec {
  /** The NLB listener port, e.g. 993. */
  publicPort: number;
  /** The container port (unprivileged: the task runs as non-root), e.g. 2993. */
  containerPort: number;
  /** The Fargate service that serves it. */
  group: ListenerGroup;
  /** The container component that opens the port. */
  component: ListenerComponent;
  /** The setting (core/config.ts SETTINGS) that carries the container port. */
  env: string;
  /**
   * The NLB's TCP idle timeout for this listener (60..6000 s; AWS's default is 350 s). Past it the
   * NLB drops the flow silently and answers the next packet of either side with a reset, so it must
   * outlast the server's own inactivity timer, which then ends the session with a proper reply:
   * POP3's is 10 minutes (RFC 1939 §3), IMAP's 30 minutes (RFC 9051 §5.4, `imap.idleTimeoutSeconds`).
   * An IMAP client in IDLE re-issues it about every 29 minutes, and the server sends
   * `* OK Still here` every 5 minutes during IDLE, so an idling connection is never quiet for 350 s
   * either; the longer NLB timeout covers a client that is quiet outside IDLE between commands.
   * SMTP's server timer (5 minutes) is already inside the default. The web listener's push
   * streams (JMAP EventSource, RFC 8620 §7.3) are quiet between changes unless the client asked for
   * `ping`, and a client may ask for none: it gets IMAP's 31 minutes, so a quiet push stream lasts
   * as long as an idling IMAP connection does before the client has to reconnect. @default 350
   */
  nlbIdleSeconds?: number;
}

/** Public port, container port, service group and component of each listener (DESIGN.md, "Running on AWS"). */
export const LISTENERS: Readonly<Record<ListenerName, ListenerSpec>> = {
  smtp: { publicPort: 25, containerPort: 2525, group: 'smtp', component: 'smtp', env: 'TOMLINSON_SMTP_PORT' },
  submissions: { publicPort: 465, containerPort: 2465, group: 'smtp', component: 'smtp', env: 'TOMLINSON_SUBMISSIONS_PORT' },
  submission: { publicPort: 587, containerPort: 2587, group: 'smtp', component: 'smtp', env: 'TOMLINSON_SUBMISSION_PORT' },
  pop3: { publicPort: 110, containerPort: 2110, group: 'mailbox', component: 'pop3', env: 'TOMLINSON_POP3_PORT', nlbIdleSeconds: 660 },
  pop3s: { publicPort: 995, containerPort: 2995, group: 'mailbox', component: 'pop3', env: 'TOMLINSON_POP3S_PORT', nlbIdleSeconds: 660 },
  imap: { publicPort: 143, containerPort: 2143, group: 'mailbox', component: 'imap', env: 'TOMLINSON_IMAP_PORT', nlbIdleSeconds: 1860 },
  imaps: { publicPort: 993, containerPort: 2993, group: 'mailbox', component: 'imap', env: 'TOMLINSON_IMAPS_PORT', nlbIdleSeconds: 1860 },
  // HTTPS with TLS at the task (TCP pass-through): JMAP (RFC 8620/8621), later the webmail.
  web: { publicPort: 443, containerPort: 2443, group: 'web', component: 'web', env: 'TOMLINSON_WEB_PORT', nlbIdleSeconds: 1860 },
  proxy: { publicPort: 3128, containerPort: 3128, group: 'proxy', component: 'proxy', env: 'TOMLINSON_PROXY_PORT' },
};

/** The container's health endpoint port (TOMLINSON_HEALTH_PORT), used by the NLB and ECS checks. */
export const HEALTH_PORT = 8025;

/** Size and scaling of one Fargate service. */
export interface ServiceSize {
  /** Fargate CPU units. @default 256 */
  cpu: number;
  /** Fargate memory. @default 512 */
  memoryMiB: number;
  /** Tasks at least (and at start). @default 1 */
  minTasks: number;
  /** Tasks at most. @default 4 */
  maxTasks: number;
}

/** Everything that differs between deployments. */
export interface StageConfig {
  /** Short name, part of every stack name (`Tomlinson-<stage>-State`). */
  stage: string;
  /** Account and region; undefined keeps the stacks environment-agnostic (synth needs no lookup). */
  env?: { account?: string; region?: string };
  /** The mail host name: HELO/EHLO name, TLS name, MX target and PTR name. */
  mailHostname: string;
  /** The mail domains this deployment receives for (one MX each). */
  domains: string[];
  /** Which public listeners exist. @default all */
  listeners: Record<ListenerName, boolean>;
  /** Client ranges (CIDR) in the VPC and networks peered or connected to it, allowed to reach the
   * proxy on 3128 through the internal load balancer; must cover the VPC (10.0.0.0/16 by default).
   * Never 0.0.0.0/0 (not an open proxy). @default ['10.0.0.0/8'] */
  proxyAllowedClients: string[];
  /** Public client ranges (CIDR) allowed to reach the proxy on 3128 of the internet-facing load
   * balancer; empty means no public proxy listener at all. Never 0.0.0.0/0. @default [] */
  proxyPublicClients: string[];
  /** Require Proxy-Authorization against the accounts (TOMLINSON_PROXY_REQUIRE_AUTH); only then may
   * the proxy's tasks read account items. @default false */
  proxyRequireAuth: boolean;
  /**
   * Outbound delivery: 'smarthost' relays through `smarthost` from the outbound Lambda (works in
   * every account); 'direct' delivers to MX hosts from a Fargate worker through the NAT gateways,
   * which needs AWS to lift the port 25 block and PTR records for the NAT addresses.
   */
  outbound: 'smarthost' | 'direct';
  /** smtp://user@host:587 or smtps://user@host:465; its password goes in the smarthost secret. */
  smarthost: string;
  /** Availability zones used by the VPC and the NLB (one Elastic IP each). @default 2 */
  maxAzs: number;
  /** NAT gateways for the private subnets; 0 puts tasks in public subnets with public IPs (cheaper,
   * documented in docs/deploy.md). @default 1 */
  natGateways: number;
  /** Per listener group. */
  services: Record<ListenerGroup | 'workers', ServiceSize>;
  /** IMAP connections one mailbox task admits (TOMLINSON_IMAP_MAX_CONNECTIONS); more are refused
   * with `* BYE`, and the connection alarm fires when the public listeners carry 80% of what the
   * largest mailbox service (maxTasks) admits. Idle IMAP connections cost memory rather than CPU,
   * so the service's memory target (70%) should be reached before this cap: at roughly 60 KB per
   * TLS connection, 4000 connections are ~240 MB of a 512 MiB task. @default 4000 */
  imapConnectionsPerTask: number;
  /** HTTPS connections one web task admits (TOMLINSON_WEB_MAX_CONNECTIONS), JMAP push streams
   * included; the same memory reasoning as imapConnectionsPerTask. @default 4000 */
  webConnectionsPerTask: number;
  /** The host name of the web endpoint (JMAP API; the `_jmap._tcp` SRV target of every domain,
   * RFC 8620 §2.2). The listeners share one certificate, so a name other than mailHostname must be
   * in that certificate too (docs/deploy.md). @default mailHostname */
  webHostname?: string;
  /** Lambda workers. */
  lambda: {
    /** @default 512 */
    memoryMiB: number;
    /** Inbound worker timeout. @default 120 */
    timeoutSeconds: number;
    /** Outbound worker timeout: one SMTP transaction may legitimately take minutes (RFC 5321
     * §4.5.3.2 allows 10 minutes for the reply to the final dot), and a Lambda killed mid-way
     * leaves the delivery to be repeated. @default 900 (the Lambda maximum) */
    outboundTimeoutSeconds: number;
    /** Most concurrent invocations per event source (SQS maximum concurrency, 2..1000), protecting
     * the table and the smarthost from a burst. @default 10 */
    maxConcurrency: number;
  };
  /** Receives before an inbound message goes to its dead-letter queue. @default 5 */
  queueMaxReceives: number;
  /** Receives before an outbound message goes to its dead-letter queue. Each scheduled retry is a
   * receive, so this covers the retry schedule up to the maximum age (5 days at ~30 min). @default 300 */
  outboundMaxReceives: number;
  /** Days a proxy cache object lives in S3 at most. @default 30 */
  cacheExpireDays: number;
  /** Days an overwritten or deleted mail object version is kept. @default 30 */
  mailNoncurrentDays: number;
  /** Route 53 zone to write records into; without it a stack output lists the records to create. */
  hostedZone?: { zoneId: string; zoneName: string };
  /** DKIM selector published as `<selector>._domainkey.<domain>`. @default 'tomlinson' */
  dkimSelector: string;
  /** Load the listeners' certificate from the TLS secret. Off until the secret holds a real
   * {"cert","key"} pair (docs/deploy.md); until then the listeners make a self-signed one.
   * @default false */
  tlsFromSecret: boolean;
  /** E-mail address subscribed to the alarm topic (confirm the subscription mail). */
  alarmEmail?: string;
  /** Bucket size (bytes) above which the mail bucket alarm fires. @default 100 GiB */
  mailBucketAlarmBytes: number;
  /** Log retention in days for Lambda and container logs. @default 30 */
  logRetentionDays: number;
  /** Hours between runs of the orphaned-blob sweep (a scheduled Lambda; core/mail/sweep.ts); each
   * run reads one reference item per old blob, so large buckets want it rare. 0 turns it off.
   * @default 24 */
  orphanSweepHours: number;
  /** Spam filtering (issue 24): rspamd as a sidecar of the SMTP task, its Bayes data in one
   * ElastiCache (Valkey) node shared by the SMTP tasks (infra/constructs/rspamd-sidecar.ts;
   * docs/deploy.md has the cost). Off: no sidecar, no node, mail is not scanned. */
  spam: {
    /** @default true */
    enabled: boolean;
    /** rspamd's official image with a pinned tag (never `latest`: a deploy changes rspamd only
     * when this does). @default 'rspamd/rspamd:3.12.1' */
    rspamdImage: string;
    /** The Bayes store's node type. @default 'cache.t4g.micro' */
    bayesNodeType: string;
    /** How often each SMTP task teaches the lessons users' moves left (TOMLINSON_SPAM_LEARN_POLL_SECONDS).
     * @default 30 */
    learnPollSeconds: number;
  };
}

const GiB = 1024 ** 3;

/** The defaults every stage starts from. */
export const DEFAULTS: Omit<StageConfig, 'stage' | 'mailHostname' | 'domains'> = {
  listeners: { smtp: true, submissions: true, submission: true, pop3: true, pop3s: true, imap: true, imaps: true, web: true, proxy: true },
  proxyAllowedClients: ['10.0.0.0/8'],
  proxyPublicClients: [],
  proxyRequireAuth: false,
  outbound: 'smarthost',
  smarthost: '',
  maxAzs: 2,
  natGateways: 1,
  services: {
    smtp: { cpu: 256, memoryMiB: 512, minTasks: 1, maxTasks: 4 },
    mailbox: { cpu: 256, memoryMiB: 512, minTasks: 1, maxTasks: 4 },
    web: { cpu: 256, memoryMiB: 512, minTasks: 1, maxTasks: 4 },
    proxy: { cpu: 512, memoryMiB: 1024, minTasks: 1, maxTasks: 4 },
    workers: { cpu: 256, memoryMiB: 512, minTasks: 1, maxTasks: 2 },
  },
  imapConnectionsPerTask: 4000,
  webConnectionsPerTask: 4000,
  lambda: { memoryMiB: 512, timeoutSeconds: 120, outboundTimeoutSeconds: 900, maxConcurrency: 10 },
  queueMaxReceives: 5,
  outboundMaxReceives: 300,
  cacheExpireDays: 30,
  mailNoncurrentDays: 30,
  dkimSelector: 'tomlinson',
  tlsFromSecret: false,
  mailBucketAlarmBytes: 100 * GiB,
  logRetentionDays: 30,
  orphanSweepHours: 24,
  spam: { enabled: true, rspamdImage: 'rspamd/rspamd:3.12.1', bayesNodeType: 'cache.t4g.micro', learnPollSeconds: 30 },
};

/** The named stages; `cdk deploy -c stage=prod`. Edit these (or add one) for your domains. */
export const STAGES: Readonly<Record<string, StageConfig>> = {
  dev: { ...DEFAULTS, stage: 'dev', mailHostname: 'mail.example.com', domains: ['example.com'] },
  prod: {
    ...DEFAULTS,
    stage: 'prod',
    mailHostname: 'mail.example.org',
    domains: ['example.org'],
    maxAzs: 2,
    natGateways: 2,
    // Two tasks at least per service, so that one task failing or being replaced leaves one serving.
    services: {
      ...DEFAULTS.services,
      smtp: { cpu: 512, memoryMiB: 1024, minTasks: 2, maxTasks: 8 },
      mailbox: { cpu: 256, memoryMiB: 512, minTasks: 2, maxTasks: 6 },
      web: { cpu: 512, memoryMiB: 1024, minTasks: 2, maxTasks: 6 },
      proxy: { cpu: 512, memoryMiB: 1024, minTasks: 2, maxTasks: 4 },
    },
  },
};

/** True for the stages whose load balancers are protected from deletion: every stage but dev. */
export function isProtectedStage(c: StageConfig): boolean {
  return c.stage !== 'dev';
}

/** A configuration error, naming the field. */
export class StageConfigError extends Error {
  override name = 'StageConfigError';
}

/** Checks what CloudFormation would otherwise reject late (or what would be unsafe) and returns the
 * config unchanged. */
export function validateStage(c: StageConfig): StageConfig {
  const fail = (field: string, why: string): never => {
    throw new StageConfigError(`stage ${c.stage}: ${field}: ${why}`);
  };
  if (!/^[A-Za-z][A-Za-z0-9-]{0,15}$/.test(c.stage)) fail('stage', 'letters, digits and dashes, at most 16');
  if (!/^[a-z0-9.-]+\.[a-z]{2,}$/i.test(c.mailHostname)) fail('mailHostname', `not a host name: ${c.mailHostname}`);
  if (c.domains.length === 0) fail('domains', 'at least one mail domain');
  for (const field of ['proxyAllowedClients', 'proxyPublicClients'] as const) {
    for (const cidr of c[field]) {
      if (!/^[0-9.]+\/\d{1,2}$/.test(cidr)) fail(field, `not an IPv4 CIDR: ${cidr}`);
      if (cidr.endsWith('/0')) fail(field, 'the proxy must not be open to everyone');
    }
  }
  if (c.outbound === 'smarthost' && c.smarthost && !/^smtps?:\/\//.test(c.smarthost)) fail('smarthost', 'smtp://... or smtps://...');
  if (c.outbound === 'direct' && c.natGateways < 1) fail('natGateways', 'direct delivery leaves through NAT gateways (their Elastic IPs get the PTR records)');
  if (c.maxAzs < 1 || c.maxAzs > 3) fail('maxAzs', '1..3');
  if (c.lambda.maxConcurrency < 2 || c.lambda.maxConcurrency > 1000) fail('lambda.maxConcurrency', '2..1000 (SQS event source limit)');
  for (const t of [c.lambda.timeoutSeconds, c.lambda.outboundTimeoutSeconds])
    if (t < 1 || t > 900) fail('lambda timeouts', '1..900 seconds (the Lambda maximum)');
  if (c.queueMaxReceives < 1 || c.queueMaxReceives > 1000) fail('queueMaxReceives', '1..1000');
  if (c.outboundMaxReceives < 1 || c.outboundMaxReceives > 1000) fail('outboundMaxReceives', '1..1000');
  if (c.imapConnectionsPerTask < 1) fail('imapConnectionsPerTask', 'at least 1');
  if (c.webConnectionsPerTask < 1) fail('webConnectionsPerTask', 'at least 1');
  if (c.webHostname !== undefined && !/^[a-z0-9.-]+\.[a-z]{2,}$/i.test(c.webHostname)) fail('webHostname', `not a host name: ${c.webHostname}`);
  for (const [name, l] of Object.entries(LISTENERS)) {
    if (l.nlbIdleSeconds !== undefined && (l.nlbIdleSeconds < 60 || l.nlbIdleSeconds > 6000)) fail(`LISTENERS.${name}.nlbIdleSeconds`, '60..6000 (NLB limit)');
  }
  if (c.spam.enabled) {
    const tag = /^[a-z0-9./_-]+:([A-Za-z0-9._-]+)$/.exec(c.spam.rspamdImage)?.[1];
    if (!tag || tag === 'latest' || tag === 'nightly')
      fail('spam.rspamdImage', `an image with a pinned version tag, e.g. rspamd/rspamd:3.12.1: ${c.spam.rspamdImage}`);
    if (!/^cache\.[a-z0-9]+\.[a-z0-9]+$/.test(c.spam.bayesNodeType))
      fail('spam.bayesNodeType', `an ElastiCache node type, e.g. cache.t4g.micro: ${c.spam.bayesNodeType}`);
    if (c.spam.learnPollSeconds < 1 || c.spam.learnPollSeconds > 3600) fail('spam.learnPollSeconds', '1..3600');
  }
  for (const [name, s] of Object.entries(c.services)) {
    if (s.minTasks < 0 || s.maxTasks < Math.max(1, s.minTasks)) fail(`services.${name}`, 'need 0 <= minTasks <= maxTasks, maxTasks >= 1');
  }
  return c;
}

/** The stage named `name`, with `overrides` applied on top; throws StageConfigError. */
export function stageConfig(name: string, overrides: Partial<StageConfig> = {}): StageConfig {
  const base = STAGES[name];
  if (!base) throw new StageConfigError(`unknown stage ${JSON.stringify(name)}; known: ${Object.keys(STAGES).join(', ')}`);
  return validateStage({ ...base, ...overrides });
}

/** The host name of the web endpoint: webHostname, else the mail host. */
export function webHost(c: StageConfig): string {
  return c.webHostname ?? c.mailHostname;
}

/** The listeners switched on, in port order. */
export function enabledListeners(c: StageConfig): ListenerName[] {
  return (Object.keys(LISTENERS) as ListenerName[]).filter((l) => c.listeners[l]).sort((a, b) => LISTENERS[a].publicPort - LISTENERS[b].publicPort);
}

/** The components of `group` that have at least one listener switched on. */
export function enabledComponents(c: StageConfig, group: ListenerGroup): ListenerComponent[] {
  return [
    ...new Set(
      enabledListeners(c)
        .filter((l) => LISTENERS[l].group === group)
        .map((l) => LISTENERS[l].component),
    ),
  ];
}

/** The listener groups that have at least one listener switched on. */
export function enabledGroups(c: StageConfig): ListenerGroup[] {
  return [...new Set(enabledListeners(c).map((l) => LISTENERS[l].group))];
}
