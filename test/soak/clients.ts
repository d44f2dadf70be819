/**
 * Minimal SMTP and POP3 clients for the soak. Hand-written on purpose: the soak must know exactly
 * which reply a message got (a 250 after DATA, or anything else, or a dropped connection), and
 * compare POP3 downloads byte for byte, which a general client library would hide.
 */
import { connect, type Socket } from 'node:net';

/** Reads CRLF-terminated lines from a socket. */
class LineReader {
  private buf = '';
  private waiting: ((line: string | Error) => void)[] = [];
  private lines: string[] = [];
  private error?: Error;

  constructor(socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        const w = this.waiting.shift();
        if (w) w(line);
        else this.lines.push(line);
      }
    });
    const fail = (e: Error) => {
      this.error ??= e;
      for (const w of this.waiting.splice(0)) w(this.error);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  next(): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => this.waiting.push((x) => (x instanceof Error ? reject(x) : resolve(x))));
  }
}

function open(port: number, timeoutMs: number): Promise<{ socket: Socket; reader: LineReader }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timeout')));
    const reader = new LineReader(socket);
    socket.once('connect', () => resolve({ socket, reader }));
    socket.once('error', reject);
  });
}

async function smtpReply(reader: LineReader): Promise<{ code: number; text: string }> {
  let text = '';
  for (;;) {
    const line = await reader.next();
    text += line + '\n';
    if (line[3] !== '-') return { code: Number(line.slice(0, 3)), text };
  }
}

/** What happened to one message. */
export type SendResult = { accepted: boolean; reply: string; /** Nothing listened: the message was never offered. */ refused?: boolean };

/**
 * Sends one message over a fresh connection. `accepted` is true only when the server answered 250
 * to the end of DATA.
 */
export async function smtpSend(port: number, from: string, to: string, message: string, timeoutMs = 30_000): Promise<SendResult> {
  let socket: Socket | undefined;
  try {
    const c = await open(port, timeoutMs);
    socket = c.socket;
    const r = c.reader;
    const expect = async (code: number, stage: string) => {
      const rep = await smtpReply(r);
      if (rep.code !== code) throw new Error(`${stage}: ${rep.text.trim()}`);
      return rep;
    };
    await expect(220, 'greeting');
    socket.write('EHLO soak.client\r\n');
    await expect(250, 'EHLO');
    socket.write(`MAIL FROM:<${from}>\r\n`);
    await expect(250, 'MAIL');
    socket.write(`RCPT TO:<${to}>\r\n`);
    await expect(250, 'RCPT');
    socket.write('DATA\r\n');
    await expect(354, 'DATA');
    const stuffed = message.replace(/^\./gm, '..');
    socket.write(stuffed + (stuffed.endsWith('\r\n') ? '' : '\r\n') + '.\r\n', 'latin1');
    const final = await smtpReply(r);
    socket.write('QUIT\r\n');
    socket.end();
    return final.code === 250 ? { accepted: true, reply: final.text.trim() } : { accepted: false, reply: final.text.trim() };
  } catch (e) {
    socket?.destroy();
    const refused = (e as NodeJS.ErrnoException).code === 'ECONNREFUSED';
    return { accepted: false, reply: `error: ${(e as Error).message}`, refused };
  }
}

/** Downloads every message of a maildrop over POP3 (USER/PASS, RETR, QUIT without DELE), undoing
 * the dot-stuffing; returns the raw messages with CRLF line ends. */
export async function pop3DownloadAll(port: number, user: string, password: string, timeoutMs = 60_000): Promise<string[]> {
  const { socket, reader } = await open(port, timeoutMs);
  const ok = async (stage: string) => {
    const line = await reader.next();
    if (!line.startsWith('+OK')) throw new Error(`${stage}: ${line}`);
    return line;
  };
  try {
    await ok('greeting');
    socket.write(`USER ${user}\r\n`);
    await ok('USER');
    socket.write(`PASS ${password}\r\n`);
    await ok('PASS');
    socket.write('STAT\r\n');
    const count = Number((await ok('STAT')).split(' ')[1]);
    const out: string[] = [];
    for (let i = 1; i <= count; i++) {
      socket.write(`RETR ${i}\r\n`);
      await ok(`RETR ${i}`);
      const lines: string[] = [];
      for (;;) {
        const line = await reader.next();
        if (line === '.') break;
        lines.push(line.startsWith('.') ? line.slice(1) : line);
      }
      out.push(lines.map((l) => l + '\r\n').join(''));
    }
    socket.write('QUIT\r\n');
    await ok('QUIT');
    return out;
  } finally {
    socket.destroy();
  }
}
