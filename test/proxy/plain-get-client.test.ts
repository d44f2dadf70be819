/**
 * The origin client for plain GET and HEAD requests (containers/proxy/plain-get-client.ts) against a raw TCP origin that writes exactly
 * the bytes each test names: body framing (RFC 9112 §6.3), interim responses, strict heads,
 * connection reuse and its limits, timeouts.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PlainGetClient, requestHead, type PlainGetHandler } from '../../containers/proxy/plain-get-client.js';

interface Result {
  status?: number;
  headers: string[];
  body: string;
  error?: Error & { code?: string };
}

/** A handler collecting the exchange; resolves on completion or error. */
function collect(): { handler: PlainGetHandler; done: Promise<Result> } {
  const r: Result = { headers: [], body: '' };
  let resolve!: (r: Result) => void;
  const done = new Promise<Result>((res) => (resolve = res));
  const handler: PlainGetHandler = {
    onConnect: () => undefined,
    onHeaderList: (status, list) => {
      r.status = status;
      r.headers = list;
      return true;
    },
    onData: (chunk) => {
      r.body += chunk.toString('latin1');
      return true;
    },
    onComplete: () => resolve(r),
    onError: (e) => {
      r.error = e;
      resolve(r);
    },
  };
  return { handler, done };
}

/** A raw origin: `respond` is called once per request head with the connection's number. */
async function origin(
  respond: (socket: Socket, request: string, conn: number) => void,
): Promise<{ port: number; server: Server; conns: () => number; requests: string[] }> {
  let conns = 0;
  const requests: string[] = [];
  const server = createServer((socket) => {
    const n = ++conns;
    let buf = '';
    socket.on('error', () => undefined);
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n\r\n')) >= 0) {
        const req = buf.slice(0, i + 4);
        buf = buf.slice(i + 4);
        requests.push(req);
        respond(socket, req, n);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  return { port: (server.address() as { port: number }).port, server, conns: () => conns, requests };
}

const servers: Server[] = [];
const clients: PlainGetClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(
    servers.splice(0).map(
      (s) =>
        new Promise<void>((r) => {
          s.close(() => r());
          (s as Server & { closeAllConnections?: () => void }).closeAllConnections?.();
        }),
    ),
  );
});

function client(timeoutMs = 2000, maxSockets?: number): PlainGetClient {
  const c = new PlainGetClient({ timeoutMs, keepAliveMs: 2000, maxHeaderBytes: 1024, maxSockets });
  clients.push(c);
  return c;
}

async function get(c: PlainGetClient, port: number, method: 'GET' | 'HEAD' = 'GET', path = '/x'): Promise<Result> {
  const { handler, done } = collect();
  c.request('127.0.0.1', port, method, path, { host: `127.0.0.1:${port}` }, handler);
  return done;
}

/** Writes `text` one byte per write (the parser must not care how the bytes arrive). */
function dribble(socket: Socket, text: string): void {
  socket.cork();
  for (const ch of text) socket.write(ch, 'latin1');
  socket.uncork();
}

describe('plain GET origin client: framing', () => {
  it('reads a Content-Length body and reuses the connection for the next request', async () => {
    const o = await origin((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "a"\r\n\r\nhello'));
    const c = client();
    const a = await get(c, o.port);
    expect(a).toMatchObject({ status: 200, body: 'hello' });
    expect(a.headers).toEqual(['content-length', '5', 'etag', '"a"']);
    await new Promise((r) => setImmediate(r));
    const b = await get(c, o.port);
    expect(b.body).toBe('hello');
    expect(o.conns()).toBe(1);
    expect(o.requests[0]).toBe(`GET /x HTTP/1.1\r\nhost: 127.0.0.1:${o.port}\r\n\r\n`);
  });

  it('decodes chunked bodies with extensions and trailers, arriving a byte at a time', async () => {
    const o = await origin((s) =>
      dribble(s, 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n'),
    );
    const r = await get(client(), o.port);
    expect(r).toMatchObject({ status: 200, body: 'hello world' });
    expect(r.error).toBeUndefined();
  });

  it('reads a body without Content-Length or chunked until the origin closes, and does not reuse that connection', async () => {
    const o = await origin((s) => s.end('HTTP/1.1 200 OK\r\n\r\nuntil close'));
    const c = client();
    expect((await get(c, o.port)).body).toBe('until close');
    expect((await get(c, o.port)).body).toBe('until close');
    expect(o.conns()).toBe(2);
  });

  it('has no body for HEAD, 204 and 304 whatever their Content-Length says', async () => {
    const o = await origin((s, req) => {
      if (req.startsWith('HEAD')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n');
      else if (req.startsWith('GET /nc')) s.write('HTTP/1.1 204 No Content\r\n\r\n');
      else s.write('HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n');
    });
    const c = client();
    const turn = () => new Promise((r) => setImmediate(r)); // an idle connection is reused from the next turn on
    expect(await get(c, o.port, 'HEAD')).toMatchObject({ status: 200, body: '' });
    await turn();
    expect(await get(c, o.port, 'GET', '/nc')).toMatchObject({ status: 204, body: '' });
    await turn();
    expect(await get(c, o.port, 'GET', '/nm')).toMatchObject({ status: 304, body: '' });
    expect(o.conns()).toBe(1);
  });

  it('skips interim 1xx responses', async () => {
    const o = await origin((s) => s.write('HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    expect(await get(client(), o.port)).toMatchObject({ status: 200, body: 'ok', headers: ['content-length', '2'] });
  });

  it('accepts repeated identical Content-Length values', async () => {
    const o = await origin((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok'));
    expect((await get(client(), o.port)).body).toBe('ok');
  });
});

describe('plain GET origin client: refuses what it cannot frame safely (502)', () => {
  const bad: [string, string][] = [
    ['Transfer-Encoding with Content-Length', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n'],
    ['differing Content-Length values', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok'],
    ['a Content-Length that is not digits', 'HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok'],
    ['a space before the colon', 'HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok'],
    ['an invalid status line', 'HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok'],
    ['an invalid chunk size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n'],
    ['a chunk without its CRLF', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n'],
    ['101 unasked', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n'],
  ];
  for (const [what, bytes] of bad) {
    it(what, async () => {
      const o = await origin((s) => s.write(bytes));
      const r = await get(client(), o.port);
      expect(r.error?.code).toBe('EORIGINPROTOCOL');
    });
  }

  it('a response head larger than the limit', async () => {
    const o = await origin((s) => s.write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(2000)}\r\nContent-Length: 2\r\n\r\nok`));
    expect((await get(client(), o.port)).error?.message).toMatch(/head too large/);
  });

  it('an origin that closes mid-body', async () => {
    const o = await origin((s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf'));
    const r = await get(client(), o.port);
    expect(r.body).toBe('half');
    expect(r.error?.message).toMatch(/mid-body/);
  });

  it('a request field that would split the head', () => {
    expect(() => requestHead('GET', '/', { host: 'a', 'x-a': 'v\r\nx-b: w' })).toThrow(/invalid value/);
    expect(() => requestHead('GET', '/ HTTP/1.1', { host: 'a' })).toThrow(/request target/);
  });
});

describe('plain GET origin client: connections', () => {
  it('does not reuse a connection that carried bytes after the response', async () => {
    const o = await origin((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil'));
    const c = client();
    expect((await get(c, o.port)).body).toBe('ok');
    await new Promise((r) => setImmediate(r));
    expect((await get(c, o.port)).body).toBe('ok');
    expect(o.conns()).toBe(2);
  });

  it('closes an idle connection on which the origin sends anything', async () => {
    const o = await origin((s, _req, n) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      if (n === 1) setTimeout(() => s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil'), 50);
    });
    const c = client();
    expect((await get(c, o.port)).body).toBe('ok');
    await new Promise((r) => setTimeout(r, 150));
    expect((await get(c, o.port)).body).toBe('ok');
    expect(o.conns()).toBe(2);
  });

  it('sends a request again on a new connection when a reused one fails before any response byte', async () => {
    const seen = new Map<number, number>();
    const o = await origin((s, _req, n) => {
      seen.set(n, (seen.get(n) ?? 0) + 1);
      // The first connection takes a second request and drops it unanswered.
      if (n === 1 && seen.get(1) === 2) return void s.destroy();
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n${n}${n}`);
    });
    const c = client();
    expect((await get(c, o.port)).body).toBe('11');
    await new Promise((r) => setImmediate(r));
    const b = await get(c, o.port);
    expect(b.error).toBeUndefined();
    expect(b.body).toBe('22');
    expect(seen.get(1)).toBe(2);
  });

  it('fails with ETIMEDOUT when the origin does not answer in time', async () => {
    const o = await origin(() => undefined);
    const r = await get(client(200), o.port);
    expect(r.error?.code).toBe('ETIMEDOUT');
  });

  it('queues requests beyond maxSockets per origin and serves them in order', async () => {
    const o = await origin((s, req) => {
      const path = req.split(' ')[1]!;
      setTimeout(() => s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${path.length}\r\n\r\n${path}`), 20);
    });
    const c = client(2000, 1);
    const rs = await Promise.all(['/a', '/bb', '/ccc'].map((p) => get(c, o.port, 'GET', p)));
    expect(rs.map((r) => r.body)).toEqual(['/a', '/bb', '/ccc']);
    expect(o.conns()).toBe(1);
  });

  it('close() fails an exchange under way and the requests waiting for a connection', async () => {
    const o = await origin(() => undefined); // never answers
    const c = client(5000, 1);
    const a = get(c, o.port);
    const b = get(c, o.port);
    await new Promise((r) => setTimeout(r, 50));
    c.close();
    expect((await a).error).toBeDefined();
    expect((await b).error?.message).toMatch(/closing/);
  });

  it('a connection reused after a paused body still times out a silent origin', async () => {
    const o = await origin((s, _req, n) => {
      if (n === 1 && o.requests.length === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody');
      // the second request on the same connection gets no answer
    });
    const c = client(300);
    const r: Result = { headers: [], body: '' };
    const first = await new Promise<Result>((resolve) => {
      let resume!: () => void;
      c.request(
        '127.0.0.1',
        o.port,
        'GET',
        '/p',
        { host: 'a' },
        {
          onConnect: () => undefined,
          onHeaderList: (status, _list, res) => {
            r.status = status;
            resume = res;
            return true;
          },
          onData: (chunk) => {
            r.body += chunk.toString('latin1');
            setTimeout(() => resume(), 20);
            return false; // pause: the socket's timeout is switched off while the consumer waits
          },
          onComplete: () => resolve(r),
          onError: (e) => resolve({ ...r, error: e }),
        },
      );
    });
    expect(first).toMatchObject({ status: 200, body: 'body' });
    await new Promise((res) => setImmediate(res));
    const second = await get(c, o.port);
    expect(o.conns()).toBe(1);
    expect(second.error?.code).toBe('ETIMEDOUT');
  }, 5000); // without the timeout restored, the second request would wait forever

  it('fails with the connect error when nothing listens', async () => {
    const o = await origin(() => undefined);
    const port = o.port;
    await new Promise<void>((r) => o.server.close(() => r()));
    expect((await get(client(), port)).error?.code).toBe('ECONNREFUSED');
  });
});
