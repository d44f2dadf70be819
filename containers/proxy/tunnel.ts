/**
 * CONNECT tunnels (RFC 9110 §9.3.6): after the same access checks as requests, a TCP connection to
 * an allowed port of an allowed origin address, bytes relayed both ways until either side closes.
 */
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import type { CacheStats } from '../../core/cache/stats.js';
import type { ListenerContext } from '../listener.js';
import { authorityTarget, type OriginGuard } from './access.js';
import { loggedUrl } from './access-log.js';
import { originFailure } from './origin-requests.js';

/** What a tunnel needs of the proxy. */
export interface TunnelParts {
  cfg: ListenerContext['config']['proxy'];
  stats: CacheStats;
  /** The access log. */
  access: ListenerContext['log'];
  guard: OriginGuard;
  /** Our Via entry (RFC 9110 §7.6.3). */
  via: string;
  /** The access checks shared with requests: undefined when allowed, else the refusal. */
  refuse(req: IncomingMessage, socket: Socket): Promise<{ status: number; text: string } | undefined>;
  /** The 403 text when `host` is an IP address the origin guard refuses. */
  originRefusal(host: string): string | undefined;
  /** Called when a client connection becomes a tunnel (it is no longer an idle HTTP connection). */
  becameTunnel(socket: Socket): void;
}

/** The open tunnels. */
export class Tunnels {
  private readonly open = new Set<Socket>();
  private readonly ports: Set<number>;

  constructor(private readonly p: TunnelParts) {
    this.ports = new Set(p.cfg.connectPorts.map(Number));
  }

  /** Closes every tunnel. */
  destroyAll(): void {
    for (const t of this.open) t.destroy();
  }

  /** The access log line of a CONNECT: its refusal or failure, or the tunnel once it ends. */
  private line(req: IncomingMessage, socket: Socket, status: number, start: number, sentBefore: number, reason: string | undefined): void {
    if (!this.p.cfg.accessLog && reason === undefined) return;
    const ms = Math.round((performance.now() - start) * 1000) / 1000;
    this.p.access.info({
      client: socket.remoteAddress,
      method: 'CONNECT',
      url: loggedUrl(req.url),
      status,
      bytes: socket.bytesWritten - sentBefore,
      ms,
      reason,
    });
  }

  /** Answers a CONNECT request on `socket` (`head`: bytes the client sent after the request head). */
  async connect(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const start = performance.now();
    const sentBefore = socket.bytesWritten;
    const { p } = this;
    const answer = (status: number, text: string, extra = ''): void => {
      const body = `${text}\n`;
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`,
      );
      p.stats.record(status === 502 || status === 504 ? 'failed' : 'refused', 0, 0);
      this.line(req, socket, status, start, sentBefore, text);
    };
    socket.on('error', () => socket.destroy());
    const r = await p.refuse(req, socket);
    if (r) return answer(r.status, r.text, r.status === 407 ? 'Proxy-Authenticate: Basic realm="tomlinson", charset="UTF-8"\r\n' : '');
    const t = authorityTarget(req.url ?? '');
    if (!t) return answer(400, 'CONNECT needs host:port');
    const { host, port } = t;
    if (!this.ports.has(port)) return answer(403, `CONNECT to port ${port} is not allowed (proxy.connectPorts)`);
    const refused = p.originRefusal(host);
    if (refused) return answer(403, refused);
    const upstream = netConnect({ host, port, lookup: p.guard.lookup as never, timeout: p.cfg.originTimeoutMs });
    let open = false;
    p.becameTunnel(socket);
    this.open.add(socket);
    const cleanup = (): void => {
      if (open && this.open.has(socket)) this.line(req, socket, 200, start, sentBefore, undefined);
      this.open.delete(socket);
      upstream.destroy();
      socket.destroy();
    };
    upstream.once('connect', () => {
      open = true;
      upstream.setTimeout(0);
      socket.write(`HTTP/1.1 200 Connection Established\r\nVia: ${p.via}\r\n\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.once('timeout', () => {
      if (!open) answer(504, 'origin did not answer in time');
      cleanup();
    });
    upstream.once('error', (e) => {
      if (!open) {
        const f = originFailure(e);
        answer(f.status, f.message);
      }
      cleanup();
    });
    upstream.once('close', () => {
      if (open) cleanup();
    });
    socket.once('close', cleanup);
  }
}
