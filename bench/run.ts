/**
 * `npm run bench`: runs the SMTP, POP3, IMAP, JMAP, proxy and webmail benchmarks one after the other (each in its own
 * processes, on 127.0.0.1, bounded in time), shows their tables, and keeps their output under
 * bench/results/ (not committed). `npm run bench -- smtp pop3` runs a subset; other arguments
 * after `--` go to every benchmark (e.g. `--json`).
 *
 * Without `--peers`, ours runs alone and each bench compares with the issues' reference figures
 * (bench/pop3.ts also measures Dovecot in the same run when it is installed).
 *
 * `npm run bench -- --peers [all | smtp] [pop3] [imap] [jmap] [proxy] [webmail] [--runs 3] [--duration 10] [--smtp-messages 1500] [--smtp-warmup 1500] [--smtp-latency 500] [--smtp-spam]
 * [--pop3-messages 1000] [--imap-messages 1000] [--imap-sync 10000] [--imap-big [100000]] [--proxy-scenarios reval,miss]
 * [--webmail-runs 20] [--webmail-messages 10000]` runs the peers side
 * by side instead (bench/peers/): installs the missing Debian packages (as root), starts Postfix,
 * Dovecot, Squid and nginx on 127.0.0.1 with configs from bench/peers/, up at once with ours, each
 * row run on them back to back (the order turning per row and per run), prints one table per
 * protocol (median and min–max over runs, p50/p99, CPU per op, ours/peer, a memory row) and then
 * one table of every protocol with the machine line and load averages, and writes them as JSON and
 * Markdown to bench/results/<stamp>/ (table.md: the README's table). Every process it starts is
 * stopped, also on Ctrl-C.
 * `--smtp-spam` adds SMTP rows with a private rspamd scanning every message (ours through its
 * spam client, Postfix through smtpd_milters; bench/peers/smtp.ts).
 *
 * `npm run bench -- --cost [--messages 50] [--size 51200] [--trace]` runs bench/cost.ts instead: the
 * S3, SQS, DynamoDB and Lambda requests per inbound message, POP3 download and proxy hit or miss
 * on the aws family against moto, priced at us-east-1 list prices beside Amazon SES receiving.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { PROXY_SCENARIOS, type ProxyScenario } from './peers/util.js';

const root = new URL('..', import.meta.url).pathname;
const BENCHES = ['smtp', 'pop3', 'imap', 'jmap', 'proxy', 'webmail'] as const;

/** The big IMAP folder's size: `--imap-big` alone is 100,000 messages, `--imap-big N` is N; absent, none. */
function imapBig(argv: string[]): number | undefined {
  const i = argv.indexOf('--imap-big');
  if (i < 0) return undefined;
  const next = argv[i + 1];
  return next !== undefined && /^\d+$/.test(next) ? numberFlag(argv, 'imap-big') : 100_000;
}

async function runOne(name: string, args: string[], outFile: string): Promise<number> {
  const out = createWriteStream(outFile);
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'bench', `${name}.ts`), ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [child.stdout, child.stderr]) {
    s.on('data', (d: Buffer) => {
      process.stdout.write(d);
      out.write(d);
    });
  }
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
  out.end();
  return code;
}

/** `--proxy-scenarios a,b`: the proxy rows to run (undefined: all), refusing names it does not know. */
function proxyScenarios(argv: string[]): ProxyScenario[] | undefined {
  const i = argv.indexOf('--proxy-scenarios');
  if (i < 0) return undefined;
  const list = (argv[i + 1] ?? '').split(',').filter(Boolean);
  const known: readonly string[] = PROXY_SCENARIOS;
  const bad = list.filter((s) => !known.includes(s));
  if (list.length === 0 || bad.length)
    throw new Error(`--proxy-scenarios takes a comma-separated list of ${PROXY_SCENARIOS.join(', ')}${bad.length ? ` (not ${bad.join(', ')})` : ''}`);
  return list as ProxyScenario[];
}

/** The value after `--name` as a number, or undefined. */
/** The number after `--name`; zero only where `zero` allows it (a warm-up can be left out, a run cannot). */
function numberFlag(argv: string[], name: string, zero = false): number | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v < 0 || (v === 0 && !zero)) throw new Error(`--${name} needs a ${zero ? 'non-negative' : 'positive'} number`);
  return v;
}

async function peers(argv: string[]): Promise<void> {
  const { ensurePeerPackages, loadAverage, machineLine, peerVersions, runCleanups } = await import('./peers/util.js');
  const { reportMarkdown, reportText, summaryMarkdown, summaryText } = await import('./peers/report.js');
  // `--peers all` is every protocol, as `--peers` alone.
  const asked = argv.filter((a) => (BENCHES as readonly string[]).includes(a));
  const which = asked.length ? asked : [...BENCHES];
  const runs = numberFlag(argv, 'runs') ?? 3;
  const duration = numberFlag(argv, 'duration') ?? 10;
  const scenarios = proxyScenarios(argv);
  const say = (s: string) => process.stderr.write(`  ${s}\n`);
  try {
    await ensurePeerPackages(say);
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const dir = join(root, 'bench', 'results', stamp);
    await mkdir(dir, { recursive: true });
    const versions = await peerVersions();
    const machine = `${machineLine()}; ${Object.entries(versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`;
    const at = new Date().toISOString();
    const loadBefore = loadAverage();
    process.stdout.write(`bench --peers on ${machine}\nload average before: ${loadBefore}\n${runs} runs per server, results in ${dir}\n\n`);
    const reports = [];
    const failed: string[] = [];
    for (const name of which) {
      const started = Date.now();
      const protocolLoad = loadAverage();
      let rep: Awaited<ReturnType<typeof import('./peers/proxy.js').runProxyPeers>>;
      try {
        rep =
          name === 'smtp'
            ? await (
                await import('./peers/smtp.js')
              ).runSmtpPeers({
                runs,
                say,
                messages: numberFlag(argv, 'smtp-messages'),
                warmupMessages: numberFlag(argv, 'smtp-warmup', true),
                latencyMessages: numberFlag(argv, 'smtp-latency'),
                spam: argv.includes('--smtp-spam'),
              })
            : name === 'pop3'
              ? await (await import('./peers/pop3.js')).runPop3Peers({ runs, say, messages: numberFlag(argv, 'pop3-messages') })
              : name === 'imap'
                ? await (
                    await import('./peers/imap.js')
                  ).runImapPeers({
                    runs,
                    say,
                    messages: numberFlag(argv, 'imap-messages'),
                    syncMessages: numberFlag(argv, 'imap-sync'),
                    bigMessages: imapBig(argv),
                  })
                : name === 'jmap'
                  ? await (await import('./peers/jmap.js')).runJmapBench({ runs, say })
                  : name === 'webmail'
                    ? await (
                        await import('./webmail.js')
                      ).runWebmailBench({ runs: numberFlag(argv, 'webmail-runs'), messages: numberFlag(argv, 'webmail-messages'), say })
                    : await (await import('./peers/proxy.js')).runProxyPeers({ runs, duration, say, scenarios });
      } catch (e) {
        // One protocol failing (a peer that would not start) still leaves the others' tables.
        failed.push(name);
        process.stderr.write(`bench --peers ${name} failed: ${(e as Error).stack ?? e}\n`);
        await runCleanups();
        continue;
      }
      say(`${name}: ${Math.round((Date.now() - started) / 1000)} s`);
      // How busy the machine was around this protocol's runs (1, 5 and 15 minute averages).
      rep.notes.push(`Load average (1 / 5 / 15 min) before this protocol's runs: ${protocolLoad}; after: ${loadAverage()} (${cpus().length} cores).`);
      reports.push(rep);
      for (const p of rep.problems ?? []) failed.push(`${name} (${p})`);
      process.stdout.write(`${reportText(rep)}\n`);
      const head = `<!-- ${at}, ${machine} -->\n`;
      await writeFile(join(dir, `${name}.md`), head + reportMarkdown(rep));
      await writeFile(join(dir, `${name}.json`), JSON.stringify({ at, machine, versions, runs, ...rep }, null, 2));
    }
    // The one table the README pastes: every protocol, medians with their spread, the machine line.
    const loadAfter = loadAverage();
    const intro = `Machine: ${machine}. Load average (1 / 5 / 15 min) before: ${loadBefore}; after: ${loadAfter}. Medians of ${runs} runs (min–max in brackets), ${at.slice(0, 16).replace('T', ' ')} UTC, \`npm run bench -- ${argv.join(' ')}\`.`;
    const table = `## Benchmarks side by side (${at.slice(0, 10)})\n\n${intro}\n\n${summaryMarkdown(reports)}`;
    await writeFile(join(dir, 'table.md'), table);
    await writeFile(join(dir, 'peers.md'), `${table}\n${reports.map(reportMarkdown).join('\n')}`);
    await writeFile(join(dir, 'summary.json'), JSON.stringify({ machine, versions, at, runs, loadBefore, loadAfter, reports }, null, 2));
    process.stdout.write(`== All protocols ==\n${intro}\n${summaryText(reports)}\n`);
    process.stdout.write(`the table for the README in ${join(dir, 'table.md')}, with every protocol's own table and notes in ${join(dir, 'peers.md')}\n`);
    if (failed.length) throw new Error(`${failed.join(', ')} failed (see above)`);
  } finally {
    await runCleanups();
  }
}

/** `--cost`: one run of bench/cost.ts, its table kept under bench/results/<stamp>/cost.md. */
async function cost(argv: string[]): Promise<void> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = join(root, 'bench', 'results', stamp);
  await mkdir(dir, { recursive: true });
  const code = await runOne('cost', argv, join(dir, 'cost.md'));
  if (code !== 0) {
    process.stderr.write('bench: cost failed\n');
    process.exit(1);
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--peers')) return peers(argv);
  if (argv.includes('--cost')) return cost(argv.filter((a) => a !== '--cost'));
  const asked = argv.filter((a) => (BENCHES as readonly string[]).includes(a));
  const pass = argv.filter((a) => !(BENCHES as readonly string[]).includes(a));
  const which = asked.length ? asked : [...BENCHES];
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = join(root, 'bench', 'results', stamp);
  await mkdir(dir, { recursive: true });
  const machine = `${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  process.stdout.write(`bench on ${machine}\nresults in ${dir}\n\n`);
  const summary: { bench: string; exit: number; output: string }[] = [];
  for (const name of which) {
    process.stdout.write(`== ${name} ==\n`);
    const file = join(dir, `${name}.txt`);
    const code = await runOne(name, pass, file);
    summary.push({ bench: name, exit: code, output: file });
    process.stdout.write(`\n`);
  }
  await writeFile(join(dir, 'summary.json'), JSON.stringify({ machine, at: new Date().toISOString(), runs: summary }, null, 2));
  const failed = summary.filter((s) => s.exit !== 0);
  if (failed.length) {
    process.stderr.write(`bench: ${failed.map((f) => f.bench).join(', ')} failed\n`);
    process.exit(1);
  }
}

main().catch((e: Error) => {
  process.stderr.write(`bench failed: ${e.message}\n`);
  process.exit(1);
});
