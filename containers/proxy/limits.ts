/**
 * Connection caps of the proxy listener, as the SMTP and POP3 listeners have them (issue 18: the
 * proxy accepted 2,000 held-open sockets, and file descriptors are shared with SMTP and POP3): a
 * total and a per-client-address count, with a warning logged at most every ten seconds.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../../core/log.js';
import type { Metrics } from '../../core/metrics.js';
import { plainAddress } from '../../core/address-ranges.js';

/** How long a connection over the caps may stay open to read its 503, in ms. */
const OVER_CAP_CLOSE_MS = 2000;
const LOG_EVERY_MS = 10_000;

/** Counts open client connections; `admit` refuses those over proxy.maxConnections or proxy.maxConnectionsPerClient. */
export class ConnectionLimits {
  private open = 0;
  private readonly perClient = new Map<string, number>();
  private refusedSinceLog = 0;
  private lastLog = 0;

  constructor(
    private readonly max: number,
    private readonly maxPerClient: number,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  /**
   * Counts a new connection until it closes and returns undefined, or, over a cap, returns the
   * 503's text and closes the connection after OVER_CAP_CLOSE_MS whatever it does.
   */
  admit(socket: Socket): string | undefined {
    const client = plainAddress(socket.remoteAddress ?? '');
    const n = this.perClient.get(client) ?? 0;
    const over =
      this.open >= this.max
        ? { limit: 'connections', text: 'too many connections to the proxy (proxy.maxConnections); try again later' }
        : n >= this.maxPerClient
          ? { limit: 'connections_per_client', text: 'too many connections from your address (proxy.maxConnectionsPerClient); try again later' }
          : undefined;
    if (over) {
      this.metrics.limitsHit.inc({ listener: 'proxy', limit: over.limit });
      this.refusedSinceLog++;
      const now = Date.now();
      if (now - this.lastLog >= LOG_EVERY_MS) {
        this.log.warn({ client, limit: over.limit, open: this.open, fromClient: n, refused: this.refusedSinceLog }, 'proxy connection limit reached');
        this.lastLog = now;
        this.refusedSinceLog = 0;
      }
      setTimeout(destroy, OVER_CAP_CLOSE_MS, socket).unref();
      return over.text;
    }
    this.open++;
    this.perClient.set(client, n + 1);
    socket.once('close', () => {
      this.open--;
      const left = (this.perClient.get(client) ?? 1) - 1;
      if (left <= 0) this.perClient.delete(client);
      else this.perClient.set(client, left);
    });
    return undefined;
  }
}

function destroy(socket: Socket): void {
  socket.destroy();
}
