/**
 * The Queues port on SQS standard queues. Each logical queue name maps to a URL from
 * configuration; dead-lettering is SQS's own redrive policy on the main queues (created by CDK in
 * production and by the test harness in tests), so nothing here counts receives.
 */
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import type { Logger } from '../../log.js';
import {
  InvalidRequest,
  MAX_DELAY_SECONDS,
  MAX_RECEIVE_BATCH,
  MAX_VISIBILITY_SECONDS,
  NotFound,
  Unavailable,
  type QueueName,
  type QueueStats,
  type Queues,
  type ReceivedMessage,
} from '../ports.js';
import { errorName, guard, toStorageError } from './errors.js';

/** SQS's longest long-poll wait. */
const MAX_WAIT_SECONDS = 20;
const RECEIPT_PREFIX = 'tmln1:';

/**
 * The receipt handed to callers: SQS's receipt handle with the message's send time and this
 * receive's time in front, which changeVisibility needs for SQS's 12-hour cap. A bare SQS receipt
 * handle (as a Lambda event carries it) is accepted too.
 */
function encodeReceipt(handle: string, sentAt: number, receivedAt: number): string {
  return `${RECEIPT_PREFIX}${sentAt}:${receivedAt}:${handle}`;
}

function decodeReceipt(receipt: string): { handle: string; sentAt?: number; receivedAt?: number } {
  if (typeof receipt !== 'string' || receipt === '') throw new InvalidRequest('malformed receipt');
  const m = receipt.startsWith(RECEIPT_PREFIX) ? /^(\d+):(\d+):(.+)$/s.exec(receipt.slice(RECEIPT_PREFIX.length)) : null;
  return m ? { handle: m[3], sentAt: Number(m[1]), receivedAt: Number(m[2]) } : { handle: receipt };
}

/** Queue URLs by logical name; a missing dead-letter URL is found from the main queue's redrive policy. */
export type QueueUrls = Record<QueueName, string>;

/** Queues on SQS. */
export class SqsQueues implements Queues {
  private readonly urls: Partial<Record<QueueName, Promise<string>>> = {};

  constructor(
    private readonly sqs: SQSClient,
    urls: QueueUrls,
    private readonly log: Logger,
  ) {
    for (const [name, url] of Object.entries(urls) as [QueueName, string][]) if (url) this.urls[name] = Promise.resolve(url);
  }

  async send(queue: QueueName, body: string, options: { delaySeconds?: number } = {}): Promise<string> {
    const delay = options.delaySeconds ?? 0;
    if (!Number.isInteger(delay) || delay < 0 || delay > MAX_DELAY_SECONDS) throw new InvalidRequest(`delay ${delay} s (0..${MAX_DELAY_SECONDS})`);
    if (typeof body !== 'string' || body.length === 0) throw new InvalidRequest('empty message body');
    const url = await this.url(queue);
    const res = await guard(`send to ${queue}`, () => this.sqs.send(new SendMessageCommand({ QueueUrl: url, MessageBody: body, DelaySeconds: delay })));
    return res.MessageId!;
  }

  async receive(
    queue: QueueName,
    options: { max?: number; visibilitySeconds?: number; waitSeconds?: number; signal?: AbortSignal } = {},
  ): Promise<ReceivedMessage[]> {
    const max = options.max ?? 1;
    if (!Number.isInteger(max) || max < 1 || max > MAX_RECEIVE_BATCH) throw new InvalidRequest(`receive max ${max} (1..${MAX_RECEIVE_BATCH})`);
    const vis = options.visibilitySeconds;
    if (vis !== undefined && (!Number.isInteger(vis) || vis < 0 || vis > MAX_VISIBILITY_SECONDS)) throw new InvalidRequest(`visibility ${vis} s`);
    const wait = options.waitSeconds ?? 0;
    if (!Number.isInteger(wait) || wait < 0 || wait > MAX_WAIT_SECONDS) throw new InvalidRequest(`waitSeconds must be a whole number 0..${MAX_WAIT_SECONDS}`);
    if (options.signal?.aborted) return [];
    const url = await this.url(queue);
    // One request for the whole wait: an idle worker's polls are what it costs (one ReceiveMessage
    // per queue per 20 s, not one per 2 s as short slices made it). SQS cannot cancel a poll it
    // holds: had the signal aborted the HTTP request, a message sent meanwhile would go to the
    // abandoned poll and stay hidden for its visibility timeout. So the signal only stops our
    // waiting; the request runs to its end and whatever it brings is made visible again at once.
    const request = this.receiveOnce(queue, url, max, vis, wait);
    if (!options.signal) return request;
    const signal = options.signal;
    return new Promise<ReceivedMessage[]>((resolve, reject) => {
      const onAbort = () => {
        resolve([]);
        void request.then(
          (late) => this.release(queue, late),
          () => undefined,
        );
      };
      signal.addEventListener('abort', onAbort, { once: true });
      request.then(
        (got) => {
          signal.removeEventListener('abort', onAbort);
          if (signal.aborted) return; // settled by onAbort, which releases these
          resolve(got);
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          if (signal.aborted) resolve([]);
          else reject(e);
        },
      );
    });
  }

  /** Makes messages that a poll nobody waits for any more received visible again (best effort). */
  private async release(queue: QueueName, messages: ReceivedMessage[]): Promise<void> {
    for (const m of messages) await this.changeVisibility(queue, m.receipt, 0).catch(() => undefined);
  }

  private async receiveOnce(queue: QueueName, url: string, max: number, vis: number | undefined, wait: number): Promise<ReceivedMessage[]> {
    try {
      const res = await this.sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: url,
          MaxNumberOfMessages: max,
          VisibilityTimeout: vis,
          WaitTimeSeconds: wait,
          MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
        }),
      );
      const receivedAt = Date.now();
      return (res.Messages ?? []).map((m) => {
        const sentAt = Number(m.Attributes?.SentTimestamp ?? receivedAt);
        return {
          id: m.MessageId!,
          receipt: encodeReceipt(m.ReceiptHandle!, sentAt, receivedAt),
          body: m.Body ?? '',
          receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 1),
          sentAt: new Date(sentAt),
        };
      });
    } catch (e) {
      throw toStorageError(e, `receive from ${queue}`);
    }
  }

  async delete(queue: QueueName, receipt: string): Promise<void> {
    const { handle } = decodeReceipt(receipt);
    const url = await this.url(queue);
    // SQS accepts the receipt of a message already deleted; a malformed one is the caller's error.
    await guard(`delete from ${queue}`, () => this.sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: handle })));
  }

  async changeVisibility(queue: QueueName, receipt: string, seconds: number): Promise<void> {
    if (!Number.isInteger(seconds) || seconds < 0 || seconds > MAX_VISIBILITY_SECONDS)
      throw new InvalidRequest(`visibility ${seconds} s (0..${MAX_VISIBILITY_SECONDS})`);
    const { handle, sentAt, receivedAt } = decodeReceipt(receipt);
    const url = await this.url(queue);
    // SQS caps a message's total visibility at 12 hours, counted from its receive (moto: from its
    // send), and refuses more. The port asks for "hidden `seconds` from now", so on that refusal
    // hide it as long as SQS still allows, computed from the times kept in the receipt.
    const candidates = [seconds];
    for (const base of [receivedAt, sentAt]) {
      if (base !== undefined) candidates.push(Math.min(seconds, Math.floor(MAX_VISIBILITY_SECONDS - (Date.now() - base) / 1000) - 2));
    }
    for (let i = 0; ; i++) {
      try {
        await this.sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: handle, VisibilityTimeout: candidates[i] }));
        return;
      } catch (e) {
        const name = errorName(e);
        // The message was deleted, or its receipt outlived by a newer receive.
        if (name === 'MessageNotInflight' || name === 'AWS.SimpleQueueService.MessageNotInflight') {
          throw new NotFound(`in-flight message in ${queue}`, { cause: e });
        }
        const beyondLimit = name === 'InvalidParameterValue' && /limit|maximum|exceed/i.test((e as Error).message ?? '');
        const next = candidates[i + 1];
        if (!beyondLimit || next === undefined || next < 0) throw toStorageError(e, `change visibility in ${queue}`);
      }
    }
  }

  async stats(queue: QueueName): Promise<QueueStats> {
    const url = await this.url(queue);
    const res = await guard(`stats of ${queue}`, () =>
      this.sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl: url,
          AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'],
        }),
      ),
    );
    const a = res.Attributes ?? {};
    // The age of the oldest message is a CloudWatch metric only; the SQS API does not give it.
    return {
      visible: Number(a.ApproximateNumberOfMessages ?? 0),
      inFlight: Number(a.ApproximateNumberOfMessagesNotVisible ?? 0),
      delayed: Number(a.ApproximateNumberOfMessagesDelayed ?? 0),
    };
  }

  /** Liveness probe: the attributes of `queues` (both work queues by default). */
  async probe(queues: readonly ('inbound' | 'outbound')[] = ['inbound', 'outbound']): Promise<void> {
    await Promise.all(queues.map((q) => this.stats(q)));
  }

  /** The URL of a logical queue; a dead-letter queue's is found from its main queue's redrive policy. */
  private url(queue: QueueName): Promise<string> {
    const known = this.urls[queue];
    if (known) return known;
    if (queue !== 'inbound-dlq' && queue !== 'outbound-dlq') return Promise.reject(new InvalidRequest(`no URL configured for queue ${queue}`));
    const lookup = this.findDeadLetterUrl(queue);
    this.urls[queue] = lookup;
    lookup.catch(() => {
      if (this.urls[queue] === lookup) delete this.urls[queue];
    });
    return lookup;
  }

  private async findDeadLetterUrl(queue: 'inbound-dlq' | 'outbound-dlq'): Promise<string> {
    const main = queue === 'inbound-dlq' ? 'inbound' : 'outbound';
    const mainUrl = await this.url(main);
    const res = await guard(`redrive policy of ${main}`, () =>
      this.sqs.send(new GetQueueAttributesCommand({ QueueUrl: mainUrl, AttributeNames: ['RedrivePolicy'] })),
    );
    const arn = res.Attributes?.RedrivePolicy ? (JSON.parse(res.Attributes.RedrivePolicy) as { deadLetterTargetArn?: string }).deadLetterTargetArn : undefined;
    if (!arn) throw new Unavailable(`queue ${main} has no redrive policy, so ${queue} is unknown`);
    // arn:aws:sqs:region:account:name
    const [, , , , account, name] = arn.split(':');
    const out = await guard(`URL of ${queue}`, () => this.sqs.send(new GetQueueUrlCommand({ QueueName: name, QueueOwnerAWSAccountId: account })));
    this.log.debug({ queue, url: out.QueueUrl }, 'dead-letter queue found from redrive policy');
    return out.QueueUrl!;
  }
}
