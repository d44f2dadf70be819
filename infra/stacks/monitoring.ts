/**
 * The monitoring stack: one CloudWatch dashboard and the alarms that say mail is stuck or lost
 * (dead-letter queues not empty, old inbound jobs, old undelivered outbound mail, Lambda errors,
 * unhealthy or missing tasks, a high delivery failure rate, mailbox connections near capacity),
 * plus proxy hit ratio and mail bucket size. Alarms notify an SNS topic; `alarmEmail` subscribes an
 * address to it.
 */
import { Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type { Construct } from 'constructs';
import { OUTBOUND_AGE_METRIC } from '../../core/mail/outbound-age.js';
import { OUTBOUND_SPAM_SKIPPED_MSG } from '../../core/mail/outbound-verdict.js';
import { SPAM_SKIPPED_MSG } from '../../core/mail/spam.js';
import type { StageConfig } from '../config.js';
import type { ListenersStack } from './listeners.js';
import type { ProcessingStack } from './processing.js';
import type { StateStack } from './state.js';

/** Props of MonitoringStack. */
export interface MonitoringStackProps extends StackProps {
  config: StageConfig;
  state: StateStack;
  processing: ProcessingStack;
  /** Absent when the listeners are not deployed (e.g. LocalStack). */
  listeners?: ListenersStack;
}

/** Namespace of the metrics made from log lines by the metric filters below. */
export const METRIC_NAMESPACE = 'Tomlinson';

/**
 * The JSON log fields the metric filters count. The outbound worker logs one line per recipient
 * attempt with `rcpt` and `state` (core/mail/outbound.ts: delivered, deferred or bounced). The
 * proxy logs, every TOMLINSON_PROXY_STATS_LOG_SECONDS, one line `{"cache":"stats","hit":n,…}`
 * whose numeric fields are the outcomes of core/cache/stats.ts (a line per request would cost a
 * log write per hit); each cache metric sums one of those fields.
 */
export const LOG_FIELDS = {
  state: ['delivered', 'deferred', 'bounced'],
  cache: ['hit', 'miss', 'revalidated', 'stale', 'bypass', 'refused', 'failed'],
} as const;

/** The start of the SMTP listener's log line for a skipped spam scan (one constant, written by
 * containers/smtp/spool.ts and matched by the alarm's metric filter). */
export { OUTBOUND_SPAM_SKIPPED_MSG, SPAM_SKIPPED_MSG };

/** Dashboard, alarms and alarm topic of one stage. */
export class MonitoringStack extends Stack {
  readonly topic: sns.Topic;
  readonly dashboard: cloudwatch.Dashboard;
  readonly alarms: cloudwatch.Alarm[] = [];

  constructor(scope: Construct, id: string, props: MonitoringStackProps) {
    super(scope, id, props);
    const { config: c, state, processing, listeners } = props;
    const five = Duration.minutes(5);

    // CloudWatch may publish only to topics whose key lets it: a customer managed key.
    const key = new kms.Key(this, 'AlarmTopicKey', { enableKeyRotation: true, description: `Tomlinson ${c.stage}: alarm topic` });
    key.grantEncryptDecrypt(new iam.ServicePrincipal('cloudwatch.amazonaws.com'));
    this.topic = new sns.Topic(this, 'Alarms', { masterKey: key, enforceSSL: true, displayName: `Tomlinson ${c.stage} alarms` });
    if (c.alarmEmail) this.topic.addSubscription(new subs.EmailSubscription(c.alarmEmail));
    const notify = new actions.SnsAction(this.topic);

    const alarm = (
      aid: string,
      metric: cloudwatch.Metric | cloudwatch.MathExpression,
      threshold: number,
      description: string,
      options: Partial<cloudwatch.CreateAlarmOptions> = {},
    ): cloudwatch.Alarm => {
      const a = metric.createAlarm(this, aid, {
        threshold,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
        ...options,
      });
      a.addAlarmAction(notify);
      a.addOkAction(notify);
      this.alarms.push(a);
      return a;
    };

    // Queues: a message in a DLQ is mail that needs a human; an old message is mail that waits.
    alarm(
      'InboundDlqNotEmpty',
      state.inboundDlq.metricApproximateNumberOfMessagesVisible({ period: five, statistic: 'Maximum' }),
      1,
      'Inbound jobs failed every attempt and wait in the dead-letter queue.',
    );
    alarm(
      'OutboundDlqNotEmpty',
      state.outboundDlq.metricApproximateNumberOfMessagesVisible({ period: five, statistic: 'Maximum' }),
      1,
      'Outbound jobs failed every attempt and wait in the dead-letter queue.',
    );
    alarm(
      'InboundQueueAge',
      state.inboundQueue.metricApproximateAgeOfOldestMessage({ period: five, statistic: 'Maximum' }),
      900,
      'An accepted message has waited more than 15 minutes for mailbox delivery.',
      { evaluationPeriods: 2 },
    );
    // Not SQS ApproximateAgeOfOldestMessage: it leaves out messages received three times or more,
    // and every outbound retry is a receive. The outbound worker publishes the age of the oldest
    // undelivered message from the table (core/mail/outbound-age.ts, embedded metric format). It
    // reports while it works, at least every retry; between reports the alarm keeps its state.
    const outboundAge = new cloudwatch.Metric({
      namespace: OUTBOUND_AGE_METRIC.namespace,
      metricName: OUTBOUND_AGE_METRIC.name,
      dimensionsMap: { [OUTBOUND_AGE_METRIC.dimension]: state.table.tableName },
      period: Duration.hours(1),
      statistic: 'Maximum',
    });
    alarm('OutboundQueueAge', outboundAge, 6 * 3600, 'Outbound mail has been waiting for delivery for more than 6 hours.', {
      treatMissingData: cloudwatch.TreatMissingData.IGNORE,
    });

    // Lambda errors: a thrown job (not a scheduled retry).
    const functions = [processing.inbound, processing.outbound].filter((w) => w !== undefined);
    for (const w of functions) {
      alarm(
        `${w.node.id}Errors`,
        w.function.metricErrors({ period: five, statistic: 'Sum' }),
        1,
        `The ${w.node.id.toLowerCase()} Lambda worker failed invocations.`,
        { evaluationPeriods: 2, datapointsToAlarm: 2 },
      );
    }
    if (processing.sweep) {
      // One failed run is already worth a look: the next one is hours away.
      alarm(
        'SweepErrors',
        processing.sweep.metricErrors({ period: Duration.hours(1), statistic: 'Sum' }),
        1,
        'The orphaned mail blob sweep failed (see its log group).',
      );
    }

    // Delivery outcomes and proxy cache outcomes, counted from the workers' JSON log lines.
    const outboundLogs: logs.ILogGroup[] = [];
    if (processing.outbound) outboundLogs.push(processing.outbound.logGroup);
    if (listeners?.services.workers) outboundLogs.push(listeners.services.workers.logGroup);
    const count = (group: logs.ILogGroup, field: string, value: string, fid: string, metricName: string, also?: string, metricValue = '1'): void => {
      const match = logs.FilterPattern.stringValue(`$.${field}`, '=', value);
      new logs.MetricFilter(this, fid, {
        logGroup: group,
        filterPattern: also ? logs.FilterPattern.all(logs.FilterPattern.exists(`$.${also}`), match) : match,
        metricNamespace: METRIC_NAMESPACE,
        metricName,
        metricValue,
        defaultValue: 0,
        unit: cloudwatch.Unit.COUNT,
      });
    };
    outboundLogs.forEach((g, i) => LOG_FIELDS.state.forEach((v) => count(g, 'state', v, `Delivery${v}${i}`, `delivery-${v}`, 'rcpt')));
    const m = (name: string, label: string, period = Duration.minutes(15)): cloudwatch.Metric =>
      new cloudwatch.Metric({ namespace: METRIC_NAMESPACE, metricName: name, period, statistic: 'Sum', label });
    const failureRate = new cloudwatch.MathExpression({
      expression: 'IF(delivered + bounced >= 10, 100 * bounced / (delivered + bounced), 0)',
      usingMetrics: { delivered: m('delivery-delivered', 'delivered'), bounced: m('delivery-bounced', 'bounced') },
      period: Duration.minutes(15),
      label: 'delivery failure %',
    });
    if (outboundLogs.length)
      alarm('DeliveryFailureRate', failureRate, 20, 'More than 20% of outbound deliveries failed permanently in 15 minutes (at least 10 attempts).');

    // Spam scans skipped (rspamd down, slow or erroring): the mail was accepted (or, from a user,
    // sent) unscanned. Counted from the logs of the tasks with an rspamd sidecar (SMTP: MX and
    // submissions; web: JMAP and the webmail); the alarm wants several in 15 minutes, not one slow scan.
    const spamSkipped = m('spam-scans-skipped', 'spam scans skipped');
    const scanning = listeners?.rspamd ? (['smtp', 'web'] as const).flatMap((g) => (listeners.services[g] ? [[g, listeners.services[g]!] as const] : [])) : [];
    for (const [g, svc] of scanning) {
      new logs.MetricFilter(this, g === 'smtp' ? 'SpamSkippedFilter' : 'SpamSkippedFilterWeb', {
        logGroup: svc.logGroup,
        filterPattern: logs.FilterPattern.any(
          logs.FilterPattern.stringValue('$.msg', '=', `${SPAM_SKIPPED_MSG}*`),
          logs.FilterPattern.stringValue('$.msg', '=', `${OUTBOUND_SPAM_SKIPPED_MSG}*`),
        ),
        metricNamespace: METRIC_NAMESPACE,
        metricName: 'spam-scans-skipped',
        metricValue: '1',
        defaultValue: 0,
        unit: cloudwatch.Unit.COUNT,
      });
    }
    if (scanning.length) {
      alarm(
        'SpamScansSkipped',
        spamSkipped,
        5,
        'At least 5 messages in 15 minutes were accepted or sent without a spam scan: an rspamd sidecar (SMTP or web task) is down, slow or failing (see the rspamd log streams of that log group).',
      );
    }

    const proxy = listeners?.services.proxy;
    let hitRatio: cloudwatch.MathExpression | undefined;
    if (proxy) {
      LOG_FIELDS.cache.forEach((v) => count(proxy.logGroup, 'cache', 'stats', `Cache${v}`, `cache-${v}`, undefined, `$.${v}`));
      hitRatio = new cloudwatch.MathExpression({
        expression: 'IF(hit + miss + revalidated >= 100, 100 * (hit + revalidated) / (hit + miss + revalidated), 100)',
        usingMetrics: {
          hit: m('cache-hit', 'hit', Duration.hours(1)),
          miss: m('cache-miss', 'miss', Duration.hours(1)),
          revalidated: m('cache-revalidated', 'revalidated', Duration.hours(1)),
        },
        period: Duration.hours(1),
        label: 'proxy hit %',
      });
      alarm('ProxyHitRatioLow', hitRatio, 5, 'The proxy served less than 5% of cacheable requests from cache for 3 hours (cache bucket or policy broken?).', {
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        evaluationPeriods: 3,
      });
    }

    // Task health: any target the NLB considers unhealthy for 3 minutes, and no healthy target at
    // all (with every task gone the unhealthy count is 0; no data then is no target either).
    for (const [name, svc] of Object.entries(listeners?.services ?? {})) {
      svc.targetGroups.forEach((tg, i) => {
        alarm(
          `${name}Unhealthy${i}`,
          tg.metrics.unHealthyHostCount({ period: Duration.minutes(1), statistic: 'Maximum' }),
          1,
          `A ${name} task fails its health check.`,
          { evaluationPeriods: 3 },
        );
        alarm(
          `${name}NoHealthyTask${i}`,
          tg.metrics.healthyHostCount({ period: Duration.minutes(1), statistic: 'Minimum' }),
          1,
          `No healthy ${name} task behind the load balancer: the service is down.`,
          {
            comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            treatMissingData: cloudwatch.TreatMissingData.BREACHING,
            evaluationPeriods: 2,
          },
        );
      });
      if (!svc.targetGroups.length) {
        alarm(`${name}NotRunning`, svc.service.metricCpuUtilization({ period: five, statistic: 'SampleCount' }), 1, `No ${name} task is running.`, {
          comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
          treatMissingData: cloudwatch.TreatMissingData.BREACHING,
          evaluationPeriods: 2,
        });
      }
    }

    // Connections: IMAP clients hold theirs all day, so the open-connection count, not the request
    // rate, is what runs a mailbox service out of room. NLB flow counts exist per load balancer
    // only (no target group dimension), so this compares every public flow (SMTP's short ones and
    // the web service's HTTPS and push connections too, which errs early) with what the mailbox
    // service admits at its largest.
    const imapOn = c.listeners.imap || c.listeners.imaps;
    if (listeners?.services.mailbox && imapOn) {
      const capacity = c.services.mailbox.maxTasks * c.imapConnectionsPerTask;
      alarm(
        'MailboxConnectionsHigh',
        listeners.nlb.metrics.activeFlowCount({ period: five, statistic: 'Maximum' }),
        Math.floor(0.8 * capacity),
        `The public listeners hold 80% of the ${capacity} IMAP connections the mailbox service admits at ${c.services.mailbox.maxTasks} tasks: raise services.mailbox.maxTasks or imapConnectionsPerTask.`,
        { evaluationPeriods: 3 },
      );
    }

    // S3 reports bucket size once a day.
    const mailBytes = new cloudwatch.Metric({
      namespace: 'AWS/S3',
      metricName: 'BucketSizeBytes',
      dimensionsMap: { BucketName: state.mailBucket.bucketName, StorageType: 'StandardStorage' },
      period: Duration.days(1),
      statistic: 'Average',
      label: 'mail bucket bytes',
    });
    alarm('MailBucketSize', mailBytes, c.mailBucketAlarmBytes, 'The mail bucket grew past its configured size.');

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', { dashboardName: `Tomlinson-${c.stage}` });
    const queueDepth = (q: typeof state.inboundQueue, label: string): cloudwatch.IMetric =>
      q.metricApproximateNumberOfMessagesVisible({ label, period: Duration.minutes(1) });
    this.dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: 'Queue depth',
        left: [
          queueDepth(state.inboundQueue, 'inbound'),
          queueDepth(state.outboundQueue, 'outbound'),
          queueDepth(state.inboundDlq, 'inbound DLQ'),
          queueDepth(state.outboundDlq, 'outbound DLQ'),
        ],
      }),
      new cloudwatch.GraphWidget({
        title: 'Oldest message (s)',
        left: [state.inboundQueue.metricApproximateAgeOfOldestMessage({ label: 'inbound' }), outboundAge.with({ label: 'outbound (oldest undelivered)' })],
      }),
      new cloudwatch.GraphWidget({
        title: 'Lambda',
        left: functions.map((w) => w.function.metricInvocations({ label: `${w.node.id} invocations` })),
        right: functions.map((w) => w.function.metricErrors({ label: `${w.node.id} errors` })),
      }),
    );
    this.dashboard.addWidgets(
      new cloudwatch.GraphWidget({ title: 'Deliveries', left: LOG_FIELDS.state.map((v) => m(`delivery-${v}`, v)), right: [failureRate] }),
      new cloudwatch.GraphWidget({ title: 'Proxy cache', left: LOG_FIELDS.cache.map((v) => m(`cache-${v}`, v)), right: hitRatio ? [hitRatio] : [] }),
      new cloudwatch.GraphWidget({ title: 'Mail bucket size', left: [mailBytes] }),
    );
    if (listeners?.rspamd) this.dashboard.addWidgets(new cloudwatch.GraphWidget({ title: 'Spam scans skipped', left: [spamSkipped] }));
    if (listeners) {
      this.dashboard.addWidgets(
        new cloudwatch.GraphWidget({
          title: 'Connections (NLB flows)',
          left: [listeners.nlb.metrics.activeFlowCount({ label: 'active' }), listeners.nlb.metrics.newFlowCount({ label: 'new' })],
          // Resets sent by the NLB itself: mostly flows that outlived their listener's idle timeout.
          right: [listeners.nlb.metrics.tcpElbResetCount({ label: 'NLB resets' })],
        }),
        new cloudwatch.GraphWidget({
          title: 'Task CPU %',
          left: Object.entries(listeners.services).map(([n, s]) => s.service.metricCpuUtilization({ label: n })),
        }),
        new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms }),
      );
    }
  }
}
