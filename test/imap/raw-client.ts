/**
 * A raw IMAP client over a real socket for the tests that need the wire itself: IDLE timing,
 * two sessions watching each other, limits and garbage. Reads lines (and literals as they come)
 * and waits for a tagged reply or for a line matching a pattern.
 */
import net from 'node:net';
import tls from 'node:tls';

export class RawImap {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  /** Every line received, literals inlined. */
  readonly lines: string[] = [];
  closed = false;
  private n = 0;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.split();
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number, options: { tls?: boolean } = {}): Promise<RawImap> {
    const socket = options.tls ? tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }) : net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      socket.once(options.tls ? 'secureConnect' : 'connect', () => resolve());
      socket.once('error', reject);
    });
    const c = new RawImap(socket);
    await c.waitFor(/^\* OK/);
    return c;
  }

  /** Moves complete lines (with any literals they carry) from the buffer to `lines`; a line whose
   * literal or tail has not all arrived stays in the buffer untouched until it has. */
  private split(): void {
    for (;;) {
      let line = '';
      let pos = 0;
      for (;;) {
        const i = this.buf.indexOf('\r\n', pos);
        if (i < 0) return;
        const segment = this.buf.subarray(pos, i).toString('latin1');
        line += segment;
        const lit = /\{(\d+)\}$/.exec(segment);
        if (!lit) {
          this.buf = this.buf.subarray(i + 2);
          break;
        }
        const end = i + 2 + Number(lit[1]);
        if (this.buf.length < end) return;
        line += this.buf.subarray(i + 2, end).toString('latin1');
        pos = end;
      }
      this.lines.push(line);
    }
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Sends `tag command` and resolves with the lines up to its tagged reply. */
  async command(text: string, timeoutMs = 10_000): Promise<{ tagged: string; untagged: string[] }> {
    const tag = `t${++this.n}`;
    const from = this.lines.length;
    this.send(`${tag} ${text}\r\n`);
    const tagged = await this.waitFor(new RegExp(`^${tag} (OK|NO|BAD)`), timeoutMs, from);
    const all = this.lines.slice(from);
    return { tagged, untagged: all.filter((l) => l.startsWith('*')) };
  }

  /** Resolves with the first line from index `from` on matching `re`. */
  async waitFor(re: RegExp, timeoutMs = 10_000, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find((l) => re.test(l));
      if (hit) return hit;
      if (this.closed) throw new Error(`closed before ${re}; got:\n${this.lines.slice(from).join('\n')}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; got:\n${this.lines.slice(from).join('\n')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Resolves once the server closed the connection. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('server did not close');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
