/**
 * Prometheus metrics (prom-client), one registry per process, served at /metrics by the health
 * endpoint. Components register what they measure here so that names stay in one vocabulary.
 */
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';

/** Metrics as `Registry.getMetricsAsJSON()` gives them, e.g. from another thread. */
export type MetricsSnapshot = MetricObjectWithValues<MetricValue<string>>[];

/** All metrics of one process. */
export class Metrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({ name: 'tomlinson_connections', help: 'Open client connections', labelNames: ['listener'], registers: [this.registry] });
  readonly connectionsTotal = new Counter({
    name: 'tomlinson_connections_total',
    help: 'Accepted client connections',
    labelNames: ['listener'],
    registers: [this.registry],
  });
  readonly commands = new Counter({
    name: 'tomlinson_commands_total',
    help: 'Protocol commands handled',
    labelNames: ['listener', 'command', 'outcome'],
    registers: [this.registry],
  });
  readonly limitsHit = new Counter({
    name: 'tomlinson_limits_hit_total',
    help: 'Requests or sessions refused for a limit',
    labelNames: ['listener', 'limit'],
    registers: [this.registry],
  });
  readonly authFailures = new Counter({
    name: 'tomlinson_auth_failures_total',
    help: 'Failed logins (wrong password or unknown user)',
    labelNames: ['listener'],
    registers: [this.registry],
  });
  readonly messages = new Counter({
    name: 'tomlinson_messages_total',
    help: 'Messages by stage and outcome',
    labelNames: ['stage', 'outcome'],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({ name: 'tomlinson_queue_depth', help: 'Messages in a queue', labelNames: ['queue', 'state'], registers: [this.registry] });
  readonly queueOldestAge = new Gauge({
    name: 'tomlinson_queue_oldest_age_seconds',
    help: 'Age of the oldest queued message',
    labelNames: ['queue'],
    registers: [this.registry],
  });
  readonly storageLatency = new Histogram({
    name: 'tomlinson_storage_seconds',
    help: 'Storage call latency',
    labelNames: ['port', 'op', 'outcome'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly cacheRequests = new Counter({
    name: 'tomlinson_cache_requests_total',
    help: 'Proxy requests by cache outcome (hit, miss, revalidated, stale, bypass, refused, failed)',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly cacheBytes = new Counter({
    name: 'tomlinson_cache_bytes_total',
    help: 'Response body bytes served, by source (cache, origin)',
    labelNames: ['source'],
    registers: [this.registry],
  });

  readonly spamScans = new Counter({
    name: 'tomlinson_spam_scans_total',
    help: 'Spam scans of MX mail by result: the rspamd action (no_action, add_header, rewrite_subject, greylist, soft_reject, reject) or skipped (rspamd down, slow or erroring; the mail is accepted unscanned)',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly spamOutboundScans = new Counter({
    name: 'tomlinson_spam_outbound_scans_total',
    help: 'Spam scans of what authenticated users send, by result as tomlinson_spam_scans_total (reject: 550, nothing sent; skipped: sent unscanned)',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly spamScanSeconds = new Histogram({
    name: 'tomlinson_spam_scan_seconds',
    help: 'Time a spam scan added before the reply to DATA',
    labelNames: ['result'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly dnsblLookups = new Counter({
    name: 'tomlinson_dnsbl_lookups_total',
    help: 'DNS blocklist lookups of MX clients, one per zone, by result: listed, clean, filtered (listed with a code outside the codes smtp.dnsbl names for the zone; let in), or error (timeout, SERVFAIL, a list error code; the client is let in)',
    labelNames: ['result'],
    registers: [this.registry],
  });
  readonly smtpRefusals = new Counter({
    name: 'tomlinson_smtp_policy_refusals_total',
    help: 'SMTP sessions or messages refused by policy, by reason: dnsbl (a listed MX client, 554 at connect), rate_limit (a user over smtp.maxRecipientsPerUserHour, 451), outbound_spam (a submitted message rspamd rejects, 550)',
    labelNames: ['reason'],
    registers: [this.registry],
  });

  constructor(options: { defaults?: boolean } = {}) {
    if (options.defaults ?? true) collectDefaultMetrics({ register: this.registry });
  }

  private readonly remotes = new Set<() => Promise<MetricsSnapshot>>();

  /** Adds the metrics another thread keeps (the queue workers') to this exposition; returns its remover. */
  addRemote(source: () => Promise<MetricsSnapshot>): () => void {
    this.remotes.add(source);
    return () => this.remotes.delete(source);
  }

  /** The Prometheus text exposition, with the remote sources' series summed into this process's. */
  async text(): Promise<string> {
    if (!this.remotes.size) return this.registry.metrics();
    // A source that cannot answer (a thread restarting) leaves its series out of this scrape.
    const remote = await Promise.all([...this.remotes].map((r) => r().catch(() => [] as MetricsSnapshot)));
    return AggregatorRegistry.aggregate([await this.registry.getMetricsAsJSON(), ...remote]).metrics();
  }
}
