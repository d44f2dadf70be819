import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { originCheck } from '../../bench/peers/proxy.js';
import {
  memoryVerdict,
  OURS,
  reportMarkdown,
  reportText,
  summarize,
  summaryMarkdown,
  summaryRows,
  type MemorySample,
  type Sample,
} from '../../bench/peers/report.js';
import {
  cpuMicros,
  fillTemplate,
  fmt,
  freePort,
  interleaveRows,
  markdownTable,
  median,
  parseWrk,
  processTree,
  quantile,
  ratio,
  textTable,
  turnOrder,
  waitListening,
  wrkLua,
  watchPeakMemory,
  wrkTimeMs,
} from '../../bench/peers/util.js';

const WRK_OUTPUT = `Running 10s test @ http://127.0.0.1:40080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.19ms    2.46ms  32.52ms   85.20%
    Req/Sec     8.28k     1.68k   10.89k    56.67%
  Latency Distribution
     50%  812.00us
     75%    4.06ms
     90%    5.57ms
     99%    1.20s
  49535 requests in 3.01s, 14.83MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  16448.73
Transfer/sec:      4.93MB
`;

describe('statistics', () => {
  it('median of odd and even counts, ignoring non-finite values', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([NaN, 7])).toBe(7);
    expect(median([])).toBeNaN();
  });

  it('quantile by nearest rank', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted on purpose
    expect(quantile(xs, 0.5)).toBe(50);
    expect(quantile(xs, 0.99)).toBe(99);
    expect(quantile(xs, 1)).toBe(100);
    expect(quantile([42], 0.99)).toBe(42);
  });

  it('ratio ours/peer, none when a side is missing or zero', () => {
    expect(ratio(150, 100)).toBe(1.5);
    expect(ratio(1, 3)).toBe(0.33);
    expect(ratio(undefined, 3)).toBeUndefined();
    expect(ratio(3, 0)).toBeUndefined();
  });

  it('fmt groups thousands and scales decimals', () => {
    expect(fmt(39000.4)).toBe('39,000');
    expect(fmt(12.34)).toBe('12.3');
    expect(fmt(0.456)).toBe('0.46');
    expect(fmt(undefined)).toBe('–');
  });
});

describe('tables', () => {
  it('markdown table with escaped pipes', () => {
    expect(markdownTable(['a', 'b'], [['1', 'x|y']])).toBe('| a | b |\n|---|---|\n| 1 | x\\|y |\n');
  });

  it('text table pads to the widest cell', () => {
    expect(textTable(['name', 'n'], [['ab', '1000']])).toBe('name     n\nab    1000\n');
  });
});

describe('fillTemplate', () => {
  it('fills every placeholder and refuses unknown ones', () => {
    expect(fillTemplate('port {{PORT}} dir {{DIR}}/x {{PORT}}', { PORT: 25, DIR: '/t' })).toBe('port 25 dir /t/x 25');
    expect(() => fillTemplate('{{NOPE}}', {})).toThrow(/NOPE/);
  });

  // Regression guard: a placeholder typo in a shipped peer config must fail here, not start a peer
  // with a literal {{...}} in its config.
  it.each([
    ['postfix/main.cf', { DIR: '/t', PORT: 1, UID: 2, GID: 3 }],
    ['postfix/master.cf', { DIR: '/t', PORT: 1, UID: 2, GID: 3 }],
    ['squid.conf', { DIR: '/t', PORT: 1 }],
    ['nginx.conf', { DIR: '/t', PORT: 1, ORIGIN: '127.0.0.1:2', USER: 'nobody' }],
    ['dovecot.conf', { DIR: '/t', PORT: 1 }],
    ['dovecot-imap.conf', { DIR: '/t', PORT: 1 }],
  ])('peer config %s uses only the values the bench gives', async (file, values) => {
    const text = await readFile(new URL(`../../bench/peers/${file}`, import.meta.url), 'utf8');
    const filled = fillTemplate(text, values);
    expect(filled).not.toMatch(/\{\{|\}\}/);
    expect(filled).not.toBe(text);
  });
});

describe('wrk', () => {
  it('Lua for hits: one fixed absolute-form request naming the origin in Host', () => {
    const lua = wrkLua('hit1k', 'http://127.0.0.1:4321');
    expect(lua).toContain('["Host"] = "127.0.0.1:4321"');
    expect(lua).toContain('wrk.format("GET", "http://127.0.0.1:4321/hit1k", headers)');
    expect(lua).not.toContain('math.random');
  });

  it('Lua for misses: a per-thread random prefix and a counter, so every URL is new', () => {
    const lua = wrkLua('miss', 'http://127.0.0.1:4321');
    expect(lua).toMatch(/setup = function\(thread\) thread:set\("id"/);
    expect(lua).toContain('"http://127.0.0.1:4321/miss/" .. id');
    expect(lua).toMatch(/n = n \+ 1\n\s+return wrk\.format\("GET", prefix \.\. n, headers\)/);
  });

  it('refuses an origin that would break out of the Lua string', () => {
    expect(() => wrkLua('hit1k', 'http://x"; os.exit() --')).toThrow();
  });

  it('parses wrk --latency output, units included', () => {
    expect(wrkTimeMs('812.00us')).toBeCloseTo(0.812);
    expect(wrkTimeMs('1.5m')).toBe(90_000);
    expect(wrkTimeMs('junk')).toBeNaN();
    expect(parseWrk(WRK_OUTPUT)).toEqual({ requestsPerSecond: 16448.73, requests: 49535, p50Ms: 0.812, p99Ms: 1200, errors: 12 });
  });
});

describe('interleaving', () => {
  it('turnOrder rotates the servers by the step, any step', () => {
    expect(turnOrder(['a', 'b'], 0)).toEqual(['a', 'b']);
    expect(turnOrder(['a', 'b'], 1)).toEqual(['b', 'a']);
    expect(turnOrder(['a', 'b', 'c'], 4)).toEqual(['b', 'c', 'a']);
    expect(turnOrder(['a', 'b', 'c'], -1)).toEqual(['c', 'a', 'b']);
    expect(turnOrder([], 3)).toEqual([]);
  });

  it('runs each row on every server back to back, swapping who goes first per row and per run', async () => {
    const order = async (run: number) => {
      const seen: string[] = [];
      await interleaveRows(['ours', 'peer'], 3, run, async (server, row) => {
        await Promise.resolve();
        seen.push(`${row}:${server}`);
      });
      return seen;
    };
    expect(await order(1)).toEqual(['0:ours', '0:peer', '1:peer', '1:ours', '2:ours', '2:peer']);
    expect(await order(2)).toEqual(['0:peer', '0:ours', '1:ours', '1:peer', '2:peer', '2:ours']);
  });
});

describe('summarize', () => {
  const samples: Sample[] = [
    { scenario: 'hit1k', server: 'squid', run: 1, value: 100, p99Ms: 9, cpuUs: 70 },
    { scenario: 'hit1k', server: OURS, run: 1, value: 90, p99Ms: 3 },
    { scenario: 'hit1k', server: 'squid', run: 2, value: 120, p99Ms: 7, cpuUs: 90 },
    { scenario: 'hit1k', server: OURS, run: 2, value: 150, p99Ms: 4 },
    { scenario: 'hit1k', server: 'squid', run: 3, value: 110, p99Ms: 8, cpuUs: 75 },
    { scenario: 'hit1k', server: OURS, run: 3, value: 165, p99Ms: 5, note: 'slow start' },
    { scenario: 'miss', server: 'squid', run: 1, value: 10 },
  ];
  const memory: MemorySample[] = [
    { server: 'squid', run: 1, peakPss: 480, afterPss: 470, peakRss: 500, afterRss: 490 },
    { server: OURS, run: 1, peakPss: 400, afterPss: 350, peakRss: 450, afterRss: 420 },
    { server: OURS, run: 2, peakPss: 420, afterPss: 360, peakRss: 470, afterRss: 430 },
    { server: OURS, run: 3, peakPss: 390, afterPss: 340, peakRss: 440, afterRss: 410 },
  ];
  const tier = { mib: 256, what: 'proxy.memoryBytes = 256 MiB' };

  it('medians and spreads per scenario and server, ours first, per-run ratios on peer rows', () => {
    const rep = summarize('Proxy', 'req/s', samples);
    expect(rep.rows.map((r) => [r.scenario, r.server])).toEqual([
      ['hit1k', OURS],
      ['hit1k', 'squid'],
      ['miss', 'squid'],
    ]);
    const [ours, squid, miss] = rep.rows;
    expect(ours!.median).toBe(150);
    expect([ours!.min, ours!.max]).toEqual([90, 165]);
    expect(ours!.values).toEqual([90, 150, 165]);
    expect(ours!.p99Ms).toBe(4);
    expect(ours!.oursOverPeer).toBeUndefined();
    expect(squid!.median).toBe(110);
    expect(squid!.cpuUs).toBe(75);
    expect(ours!.cpuUs).toBeUndefined(); // not measured
    expect(squid!.oursOverPeer).toBe(1.25); // per-run ratios 0.9, 1.25, 1.5
    expect([squid!.ratioMin, squid!.ratioMax]).toEqual([0.9, 1.5]);
    expect(miss!.oursOverPeer).toBeUndefined(); // ours did not run it
    expect(ours!.notes).toEqual(['slow start']);
    expect(rep.memory).toBeUndefined();
  });

  it('memory rows per server with the tier verdict in the notes', () => {
    const rep = summarize('Proxy', 'req/s', samples, [], { samples: memory, tier });
    expect(rep.memory!.map((m) => m.server)).toEqual([OURS, 'squid']);
    const ours = rep.memory![0]!;
    expect(ours.peakPss).toEqual({ median: 400, min: 390, max: 420 });
    expect(ours.afterRss.median).toBe(420);
    expect(memoryVerdict(ours, tier)).toBe('tier 256 + 150 = 406 MiB: met');
    expect(memoryVerdict(ours, { mib: 0, what: 'none' })).toBe('tier 0 + 150 = 150 MiB: not met (250 over)');
    expect(rep.notes.join('\n')).toContain('Our configured memory tier: proxy.memoryBytes = 256 MiB.');
  });

  it('renders Markdown and text with the spread, the memory rows and the notes', () => {
    const rep = summarize('Proxy', 'req/s', samples, ['how it was measured'], { samples: memory, tier });
    const md = reportMarkdown(rep);
    expect(md).toMatch(/^### Proxy\n\n\| scenario \| server \| req\/s \(median\) \| min–max \|/);
    expect(md).toContain(`| hit1k | squid | 110 | 100–120 | 100 / 120 / 110 | – | 8.00 | 75 | 1.25 (0.90–1.50) |`);
    expect(md).toContain(`| memory MiB: PSS peak / after (RSS peak / after) | ${OURS} | 400 / 350 (450 / 420) | 390–420 |`);
    expect(md).toContain('- how it was measured');
    expect(md).toContain(`- hit1k, ${OURS}: slow start`);
    expect(reportText(rep)).toMatch(/^== Proxy ==\nscenario/);
  });

  it('one table of every protocol: a line per scenario and peer, and a memory line per peer', () => {
    const proxy = summarize('Proxy', 'req/s', samples, [], { samples: memory, tier });
    const jmap = summarize('JMAP (against our own IMAP)', 'op/s', [{ scenario: 'push', server: OURS, run: 1, value: 5, p99Ms: 28.8 }], [], {
      samples: [{ server: OURS, run: 1, peakPss: 200, afterPss: 180, peakRss: 250, afterRss: 230 }],
      tier: { mib: 0, what: 'none' },
    });
    // The ours/peer note only where a peer ran.
    expect(proxy.notes.some((n) => n.startsWith('ours/peer'))).toBe(true);
    expect(jmap.notes.some((n) => n.startsWith('ours/peer'))).toBe(false);
    const rows = summaryRows([proxy, jmap]);
    expect(rows).toEqual([
      ['Proxy, hit1k', 'req/s', '150 (90–165)', 'squid 110 (100–120)', '1.25 (0.90–1.50)', '– / 75', '4.00 / 8.00'],
      ['Proxy, miss', 'req/s', '', 'squid 10 (10–10)', '', '', ''],
      [
        'Proxy, memory MiB: PSS peak / after (RSS peak / after)',
        'MiB',
        '400 / 350 (450 / 420); tier 256 + 150 = 406 MiB: met',
        'squid 480 / 470 (500 / 490)',
        '',
        '',
        '',
      ],
      ['JMAP, push', 'op/s', '5.00 (5.00–5.00)', '', '', '', '28.8 / –'],
      ['JMAP, memory MiB: PSS peak / after (RSS peak / after)', 'MiB', '200 / 180 (250 / 230); tier 0 + 150 = 150 MiB: not met (50 over)', '', '', '', ''],
    ]);
    expect(summaryMarkdown([proxy])).toMatch(/^\| protocol, scenario \| unit \| Tomlinson: median \(min–max\) \|/);
  });
});

describe('originCheck', () => {
  const zero = { hit1k: 0, hit100k: 0, miss: 0, reval200: 0, reval304: 0 };
  it('hits must not reach the origin', () => {
    expect(originCheck('hit1k', zero, { ...zero, hit1k: 3 }, 1000).bad).toBe(false);
    expect(originCheck('hit1k', zero, { ...zero, hit1k: 500 }, 1000).bad).toBe(true);
  });
  it('misses must all reach it', () => {
    expect(originCheck('miss', zero, { ...zero, miss: 1003 }, 1000).bad).toBe(false);
    expect(originCheck('miss', zero, { ...zero, miss: 10 }, 1000).bad).toBe(true);
  });
  it('revalidations must be conditional requests answered 304', () => {
    expect(originCheck('reval', zero, { ...zero, reval304: 1000 }, 1000).bad).toBe(false);
    expect(originCheck('reval', zero, { ...zero, reval200: 1000 }, 1000).bad).toBe(true);
  });
});

describe('waitListening', () => {
  // Regression guard: a peer that dies at start (bad config) must fail the bench at once with its
  // words, not after a minute of polling a port nobody will open.
  it('rejects at once with the stderr of a server that exits before listening', async () => {
    const child = spawn(process.execPath, ['-e', 'console.error("bad config line 3"); process.exit(3)'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const started = Date.now();
    await expect(waitListening(child, await freePort(), 'peer', 30_000)).rejects.toThrow(/peer exited with 3 before listening: bad config line 3/);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('resolves once the server listens', async () => {
    const child = spawn(process.execPath, ['-e', 'require("net").createServer().listen(Number(process.argv[1]), "127.0.0.1")', String(await freePort())], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      const port = Number(child.spawnargs[child.spawnargs.length - 1]);
      await expect(waitListening(child, port, 'peer', 30_000)).resolves.toBeUndefined();
    } finally {
      child.kill();
    }
  });
});

describe('cpuMicros', () => {
  it('counts the CPU time of a process and its children', async () => {
    const { spawn } = await import('node:child_process');
    // A child that spins until it has itself used 300 ms of CPU (by its own count, so a busy
    // machine only makes it take longer), says so, then waits to be stopped.
    const spin =
      'const c = () => { const u = process.cpuUsage(); return u.user + u.system; }; while (c() < 300000); process.stdout.write("spun\\n"); setInterval(() => {}, 1000);';
    const child = spawn(process.execPath, ['-e', spin], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the child did not finish spinning in 30 s')), 30_000);
        child.stdout!.on('data', () => (clearTimeout(timer), resolve()));
      });
      const us = await cpuMicros(child.pid!);
      // /proc counts in clock ticks (10 ms): allow a tick or two below the child's own count.
      expect(us).toBeGreaterThanOrEqual(280_000);
      expect(us).toBeLessThan(5_000_000);
      expect(await cpuMicros(process.pid)).toBeGreaterThan(us); // this process and its children, the spinner among them
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('watchPeakMemory', () => {
  // The memory row sums a server's process tree (our proxy's cluster workers, Postfix's and
  // Dovecot's forks): a child's memory must count, and so must what is still held at the end.
  it('sums the memory of a process and its children, peak and after', async () => {
    // A parent that forks a child holding 64 MiB of touched memory; the child says when it holds it.
    const childCode = 'const b = Buffer.alloc(64 * 2 ** 20, 1); process.stdout.write("held\\n"); setInterval(() => b[0]++, 1000);';
    const parentCode = `const c = require("child_process").spawn(process.execPath, ["-e", ${JSON.stringify(childCode)}], { stdio: ["ignore", "inherit", "ignore"] }); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['-e', parentCode], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the child did not allocate in 30 s')), 30_000);
        parent.stdout!.on('data', () => (clearTimeout(timer), resolve()));
      });
      const alone = watchPeakMemory(() => parent.pid, 50);
      const m = await alone.stop();
      expect(m.afterRss).toBeGreaterThan(64 + 20); // the child's 64 MiB plus two Node processes
      expect(m.afterPss).toBeGreaterThan(64);
      expect(m.rss).toBeGreaterThanOrEqual(m.afterRss);
      expect(m.pss).toBeGreaterThanOrEqual(m.afterPss);
    } finally {
      // The child first: once its parent is gone it would be nobody's to stop.
      for (const pid of processTree(parent.pid!).reverse()) process.kill(pid, 'SIGKILL');
    }
  });

  it('reads zero for a server that is gone', async () => {
    const m = await watchPeakMemory(() => undefined).stop();
    expect(m).toEqual({ rss: 0, pss: 0, afterRss: 0, afterPss: 0 });
  });
});
