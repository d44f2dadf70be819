/**
 * Sees every request the aws family's SDK clients send (each HTTP attempt, retries included) with
 * its decoded answer, for the cost bench and the idle-polling test. Nothing is observed, and
 * nothing is paid beyond one Set lookup per request, until an observer is added.
 */

/** One request to S3, SQS or DynamoDB as the SDK sent it, with its answer or its error. */
export interface AwsRequest {
  service: 's3' | 'sqs' | 'dynamodb';
  /** The command without "Command", e.g. "ReceiveMessage", "GetItem". */
  op: string;
  input: Record<string, unknown>;
  output?: Record<string, unknown>;
  error?: Error;
}

/** Something that wants to see each request. */
export type AwsRequestObserver = (request: AwsRequest) => void;

const observers = new Set<AwsRequestObserver>();

/** Adds an observer for every client opened in this thread; returns the function that removes it. */
export function observeAwsRequests(observer: AwsRequestObserver): () => void {
  observers.add(observer);
  return () => observers.delete(observer);
}

interface MiddlewareClient {
  middlewareStack: { add(mw: unknown, options: { step: 'deserialize'; name: string; priority: 'high' }): void };
}

/** Hooks one SDK client up to the observers (the deserialize step runs once per HTTP attempt). */
export function watchClient(client: MiddlewareClient, service: AwsRequest['service']): void {
  const mw =
    (next: (args: { input: Record<string, unknown> }) => Promise<{ output: Record<string, unknown> }>, context: { commandName?: string }) =>
    async (args: { input: Record<string, unknown> }) => {
      if (observers.size === 0) return next(args);
      const op = (context.commandName ?? '?').replace(/Command$/, '');
      try {
        const out = await next(args);
        for (const o of observers) o({ service, op, input: args.input, output: out.output });
        return out;
      } catch (e) {
        for (const o of observers) o({ service, op, input: args.input, error: e as Error });
        throw e;
      }
    };
  client.middlewareStack.add(mw, { step: 'deserialize', name: 'tomlinsonObserveRequests', priority: 'high' });
}
