/**
 * `npm run bench`: runs the SMTP, POP3 and proxy benchmarks one after the other (each in its own
 * processes, on 127.0.0.1, bounded in time), shows their tables, and keeps their output under
 * bench/results/ (not committed). `npm run bench -- smtp pop3` runs a subset; other arguments
 * after `--` go to every benchmark (e.g. `--json`).
 *
 * Peers: bench/pop3.ts measures Dovecot in the same run when it is installed (Debian
 * dovecot-pop3d); the SMTP and proxy benches compare against the reference figures for
 * Postfix and Squid/nginx, which are not started here yet.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const BENCHES = ['smtp', 'pop3', 'proxy'] as const;

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

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
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
