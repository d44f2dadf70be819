/**
 * The data folder is its owner's alone: the real `serve all` and the real `tomlinson` command,
 * started under `umask 022` (the usual default, which leaves new files 0644), make every folder
 * 0700 and every file 0600: the database with its -wal and -shm files, the self-signed TLS key and
 * certificate, a delivered message, a proxy cache object. A folder left open by an older version
 * (0755/0644) is tightened at the next start, with one log line saying what was changed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, lstat, readdir } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';

const root = new URL('../..', import.meta.url).pathname;
const started: ChildProcess[] = [];

afterAll(() => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `command` through /bin/sh after `umask 022`; resolves with its exit code and output. */
function underUmask022(command: string, env: Record<string, string>, input = ''): { child: ChildProcess; done: Promise<{ code: number | null; out: string }> } {
  const child = spawn('/bin/sh', ['-c', `umask 022 && exec ${command}`], { cwd: root, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  started.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  child.stdin!.end(input);
  const done = new Promise<{ code: number | null; out: string }>((resolve) => child.once('close', (code) => resolve({ code, out })));
  return { child, done };
}

/** Every folder and file under `dir` with its permission bits, e.g. ['blobs', 0o700]. */
async function modes(dir: string, rel = ''): Promise<[string, number, 'dir' | 'file'][]> {
  const out: [string, number, 'dir' | 'file'][] = [];
  // While the server runs, temporary files come and go between readdir and lstat.
  for (const name of await readdir(join(dir, rel)).catch(() => [])) {
    const r = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(dir, r)).catch(() => undefined);
    if (!st || st.isSymbolicLink()) continue;
    out.push([r, st.mode & 0o777, st.isDirectory() ? 'dir' : 'file']);
    if (st.isDirectory()) out.push(...(await modes(dir, r)));
  }
  return out;
}

function loose(list: [string, number, 'dir' | 'file'][]): string[] {
  return list.filter(([, m, k]) => m !== (k === 'dir' ? 0o700 : 0o600)).map(([p, m]) => `${p} ${m.toString(8)}`);
}

/** One POP3 session from loopback: the number of messages in the maildrop. */
async function pop3Count(port: number, user: string, pass: string): Promise<number> {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  let buf = '';
  s.on('data', (d: Buffer) => (buf += d.toString()));
  const line = async () => {
    for (const end = Date.now() + 5000; !buf.includes('\r\n');) {
      if (Date.now() > end) throw new Error(`POP3: no reply in ${JSON.stringify(buf)}`);
      await sleep(20);
    }
    const l = buf.slice(0, buf.indexOf('\r\n'));
    buf = buf.slice(buf.indexOf('\r\n') + 2);
    return l;
  };
  try {
    await line();
    s.write(`USER ${user}\r\n`);
    await line();
    s.write(`PASS ${pass}\r\n`);
    if (!(await line()).startsWith('+OK')) return -1;
    s.write('STAT\r\n');
    const stat = await line();
    s.write('QUIT\r\n');
    return Number(/^\+OK (\d+)/.exec(stat)?.[1] ?? -1);
  } finally {
    s.destroy();
  }
}

/** Sends one message to the MX listener. */
async function smtpSend(port: number, to: string): Promise<void> {
  const s = net.connect(port, '127.0.0.1');
  let buf = '';
  s.on('data', (d: Buffer) => (buf += d.toString()));
  const reply = async (code: string) => {
    for (const end = Date.now() + 10_000; !new RegExp(`^${code} `, 'm').test(buf);) {
      if (Date.now() > end) throw new Error(`SMTP: no ${code} in ${JSON.stringify(buf)}`);
      await sleep(20);
    }
    buf = '';
  };
  await reply('220');
  for (const [cmd, code] of [
    ['EHLO client.test', '250'],
    ['MAIL FROM:<carol@remote.test>', '250'],
    [`RCPT TO:<${to}>`, '250'],
    ['DATA', '354'],
    [`From: carol@remote.test\r\nTo: ${to}\r\nSubject: private\r\n\r\nsecret words\r\n.`, '250'],
    ['QUIT', '221'],
  ]) {
    s.write(`${cmd}\r\n`);
    await reply(code);
  }
  s.destroy();
}

describe('the data folder is private (umask 022)', () => {
  it('serve and the CLI make every folder 0700 and every file 0600; an open folder is tightened and logged', async () => {
    const dir = await tempDir('tomlinson-private-');
    const dataDir = join(dir.path, 'data');
    const origin = http.createServer((_req, res) =>
      res.writeHead(200, { 'Cache-Control': 'max-age=600', 'Content-Type': 'text/plain' }).end('cacheable body\n'),
    );
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    const originPort = (origin.address() as net.AddressInfo).port;
    const [smtp, sub, subs, pop, pops, proxy, health] = await freePorts(7);
    const env = {
      TOMLINSON_DATA_DIR: dataDir,
      TOMLINSON_SMTP_PORT: String(smtp),
      TOMLINSON_SUBMISSION_PORT: String(sub),
      TOMLINSON_SUBMISSIONS_PORT: String(subs),
      TOMLINSON_POP3_PORT: String(pop),
      TOMLINSON_POP3S_PORT: String(pops),
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_WEB_PORT: '0',
      TOMLINSON_PROXY_PORT: String(proxy),
      TOMLINSON_HEALTH_PORT: String(health),
      TOMLINSON_SMTP_CHECK_AUTH: 'false',
      TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
      TOMLINSON_PROXY_OBJECT_TIER_ADMIT_HITS: '1',
      TOMLINSON_LOG_PRETTY: 'false',
    };
    const cli = async (args: string, input = '') => {
      const r = await underUmask022(`node bin/tomlinson.mjs ${args}`, env, input).done;
      expect(r.code, r.out).toBe(0);
    };
    const serve = async () => {
      const run = underUmask022('node --import tsx containers/main.ts serve all', env);
      for (const end = Date.now() + 90_000; ;) {
        if (run.child.exitCode !== null) throw new Error(`serve exited: ${(await run.done).out}`);
        const ok = await fetch(`http://127.0.0.1:${health}/health`).then(
          (r) => r.status === 200,
          () => false,
        );
        if (ok) break;
        if (Date.now() > end) throw new Error('serve did not become healthy');
        await sleep(250);
      }
      return {
        async stop() {
          run.child.kill('SIGTERM');
          return (await run.done).out;
        },
      };
    };

    try {
      await cli('domain add example.test');
      await cli('user add bob@example.test --password-stdin', 'bob-password-1234\n');
      const first = await serve();
      await smtpSend(smtp, 'bob@example.test');
      for (const end = Date.now() + 30_000; (await pop3Count(pop, 'bob@example.test', 'bob-password-1234')) !== 1;) {
        if (Date.now() > end) throw new Error('the message never reached the mailbox');
        await sleep(200);
      }
      // A proxy response stored in the object tier (blobs/cache).
      const viaProxy = await new Promise<number>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: proxy, path: `http://127.0.0.1:${originPort}/object`, headers: { Host: `127.0.0.1:${originPort}` } }, (res) =>
            res.resume().on('end', () => resolve(res.statusCode ?? 0)),
          )
          .on('error', reject);
      });
      expect(viaProxy).toBe(200);
      let running: [string, number, 'dir' | 'file'][] = [];
      for (const end = Date.now() + 10_000; ; await sleep(200)) {
        running = await modes(dataDir);
        if (running.some(([p, , k]) => p.startsWith('blobs/cache/') && k === 'file' && !p.includes('.tmp')) || Date.now() > end) break;
      }
      const names = running.map(([p]) => p);
      // What must be there while it runs, so that the check below covers it.
      for (const p of ['tomlinson.db', 'tomlinson.db-wal', 'tomlinson.db-shm', 'tls/selfsigned.key', 'tls/selfsigned.crt', 'blobs/mail', 'blobs/cache'])
        expect(names, p).toContain(p);
      expect(
        running.filter(([p, , k]) => p.startsWith('blobs/mail/') && k === 'file' && !p.startsWith('blobs/mail/.tmp')).length,
        'a stored message',
      ).toBeGreaterThan(0);
      expect(
        running.filter(([p, , k]) => p.startsWith('blobs/cache/') && k === 'file' && !p.startsWith('blobs/cache/.tmp')).length,
        'a cache object',
      ).toBeGreaterThan(0);
      expect(loose(running), 'open to other users while running').toEqual([]);
      expect((await lstat(dataDir)).mode & 0o777).toBe(0o700);
      const firstLog = await first.stop();
      expect(firstLog).not.toContain('readable by other local users');
      expect(loose(await modes(dataDir)), 'open to other users after stop').toEqual([]);

      // An older version's folder: folders 0755, files 0644. The next start tightens it all.
      const all = await modes(dataDir);
      await chmod(dataDir, 0o755);
      for (const [p, , k] of all) await chmod(join(dataDir, p), k === 'dir' ? 0o755 : 0o644);
      expect(loose(await modes(dataDir)).length).toBe(all.length);
      const second = await serve();
      expect((await lstat(dataDir)).mode & 0o777).toBe(0o700);
      expect(loose(await modes(dataDir)), 'still open after a restart').toEqual([]);
      const secondLog = await second.stop();
      const lines = secondLog.split('\n').filter((l) => l.includes('readable by other local users'));
      expect(lines, secondLog.slice(0, 3000)).toHaveLength(1);
      const logged = JSON.parse(lines[0]!) as { dirs: number; files: number; failed: number; examples: string[] };
      expect(logged.dirs + logged.files).toBe(all.length + 1);
      expect(logged.failed).toBe(0);
      expect(logged.examples).toContain('.');
    } finally {
      origin.close();
      await dir.remove();
    }
  }, 240_000);
});
