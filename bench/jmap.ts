/**
 * JMAP speed on its own (issue 22): `npx tsx bench/jmap.ts [--runs 1]` prints the table that
 * `npm run bench -- --peers jmap` prints (bench/peers/jmap.ts; its rows set JMAP beside our IMAP).
 */
import { runJmapBench } from './peers/jmap.js';
import { reportText } from './peers/report.js';

const i = process.argv.indexOf('--runs');
const runs = i >= 0 ? Number(process.argv[i + 1]) : 1;
const rep = await runJmapBench({ runs, say: (s) => process.stderr.write(`  ${s}\n`) });
process.stdout.write(`${reportText(rep)}\n`);
if (rep.problems?.length) process.exitCode = 1;
