/**
 * The side-by-side report of `npm run bench -- --peers`: samples (one per scenario, server and
 * run) summarised into medians with ours/peer ratios, and rendered as text and Markdown tables.
 * Pure functions, unit-tested in test/bench/report.test.ts.
 */
import { fmt, markdownTable, median, ratio, textTable } from './util.js';

/** The name our own server goes by in samples and tables. */
export const OURS = 'tomlinson';

/** One measured run of one scenario on one server. */
export interface Sample {
  scenario: string;
  server: string;
  run: number;
  /** Throughput (messages/s or requests/s). */
  value: number;
  p50Ms?: number;
  p99Ms?: number;
  /** Peak resident memory of the server during the run (MiB; VmHWM summed over its processes). */
  peakMiB?: number;
  /** Peak proportional set size of the server during the run (MiB; Pss summed over its processes). */
  pssMiB?: number;
  /** CPU time of the server's processes per operation during the measured run (µs). */
  cpuUs?: number;
  /** Anything worth a note (delivered counts, drain time, errors). */
  note?: string;
}

/** The medians of one scenario on one server. */
export interface Row {
  scenario: string;
  server: string;
  runs: number;
  values: number[];
  median: number;
  p50Ms?: number;
  p99Ms?: number;
  peakMiB?: number;
  pssMiB?: number;
  cpuUs?: number;
  /** The median over runs of (ours in run r) / (this server in run r), on peer rows of a scenario we ran too. */
  oursOverPeer?: number;
  notes: string[];
}

/** A protocol's summary: rows ordered by scenario (first seen), ours first within each. */
export interface ProtocolReport {
  protocol: string;
  unit: string;
  rows: Row[];
  /** Free-form lines printed under the table (how it was measured, caveats). */
  notes: string[];
  /** What went wrong beyond slowness (mail accepted and never delivered): the bench exits 1. */
  problems?: string[];
}

function medianOf(xs: (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length ? median(v) : undefined;
}

/** Groups samples by scenario and server into medians, with ratios against ours. */
export function summarize(protocol: string, unit: string, samples: readonly Sample[], notes: string[] = []): ProtocolReport {
  const scenarios = [...new Set(samples.map((s) => s.scenario))];
  const rows: Row[] = [];
  for (const scenario of scenarios) {
    const here = samples.filter((s) => s.scenario === scenario);
    const servers = [...new Set(here.map((s) => s.server))].sort((a, b) => (a === OURS ? -1 : b === OURS ? 1 : 0));
    const oursByRun = new Map(here.filter((s) => s.server === OURS).map((s) => [s.run, s.value]));
    for (const server of servers) {
      const ss = here.filter((s) => s.server === server).sort((a, b) => a.run - b.run);
      const m = median(ss.map((s) => s.value));
      // Runs alternate, so run r of ours and run r of the peer saw about the same machine load:
      // the median of the per-run ratios is steadier than the ratio of medians when load swings.
      const perRun = ss.map((s) => ratio(oursByRun.get(s.run), s.value)).filter((x): x is number => x !== undefined);
      rows.push({
        scenario,
        server,
        runs: ss.length,
        values: ss.map((s) => s.value),
        median: m,
        p50Ms: medianOf(ss.map((s) => s.p50Ms)),
        p99Ms: medianOf(ss.map((s) => s.p99Ms)),
        peakMiB: medianOf(ss.map((s) => s.peakMiB)),
        pssMiB: medianOf(ss.map((s) => s.pssMiB)),
        cpuUs: medianOf(ss.map((s) => s.cpuUs)),
        oursOverPeer: server === OURS || perRun.length === 0 ? undefined : Math.round(median(perRun) * 100) / 100,
        notes: [...new Set(ss.map((s) => s.note).filter((n): n is string => !!n))],
      });
    }
  }
  return {
    protocol,
    unit,
    rows,
    notes: [...notes, 'ours/peer: the median over runs of ours in run r over the peer in run r (runs alternate, so each pair saw about the same load).'],
  };
}

const HEADER = (unit: string) => [
  'scenario',
  'server',
  `${unit} (median)`,
  'each run',
  'p50 ms',
  'p99 ms',
  'peak RSS MiB',
  'peak PSS MiB',
  'CPU µs/op',
  'ours/peer',
];

function cells(r: Row): string[] {
  return [
    r.scenario,
    r.server,
    fmt(r.median, 0),
    r.values.map((v) => fmt(v, 0)).join(' / '),
    fmt(r.p50Ms),
    fmt(r.p99Ms),
    fmt(r.peakMiB, 0),
    fmt(r.pssMiB, 0),
    fmt(r.cpuUs, 0),
    r.oursOverPeer === undefined ? '' : fmt(r.oursOverPeer, 2),
  ];
}

/** The report as a Markdown section: a heading, the table, and the notes as a list. */
export function reportMarkdown(rep: ProtocolReport): string {
  const notes = [...rep.notes, ...rep.rows.flatMap((r) => r.notes.map((n) => `${r.scenario}, ${r.server}: ${n}`))];
  return `### ${rep.protocol}\n\n${markdownTable(HEADER(rep.unit), rep.rows.map(cells))}${notes.length ? `\n${notes.map((n) => `- ${n}`).join('\n')}\n` : ''}`;
}

/** The report as plain text for the terminal. */
export function reportText(rep: ProtocolReport): string {
  const notes = [...rep.notes, ...rep.rows.flatMap((r) => r.notes.map((n) => `${r.scenario}, ${r.server}: ${n}`))];
  return `== ${rep.protocol} ==\n${textTable(HEADER(rep.unit), rep.rows.map(cells))}${notes.map((n) => `  * ${n}\n`).join('')}`;
}
