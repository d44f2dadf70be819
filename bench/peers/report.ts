/**
 * The side-by-side report of `npm run bench -- --peers`: samples (one per scenario, server and
 * run) summarised into medians with their spread (min–max over runs) and ours/peer ratios, one
 * memory row per server, rendered as text and Markdown: a table per protocol, and one table of
 * every protocol in the README's shape (`summaryTable`). Pure functions, unit-tested in
 * test/bench/peers.test.ts.
 */
import { fmt, markdownTable, median, textTable } from './util.js';

/** The name our own server goes by in samples and tables. */
export const OURS = 'tomlinson';

/** Issue 25 part 3: our process stays within its configured memory tier plus this much (MiB). */
export const MEMORY_OVERHEAD_TARGET_MIB = 150;

/** One measured run of one scenario on one server. */
export interface Sample {
  scenario: string;
  server: string;
  run: number;
  /** Throughput (messages/s or requests/s). */
  value: number;
  p50Ms?: number;
  p99Ms?: number;
  /** CPU time of the server's processes per operation during the measured run (µs). */
  cpuUs?: number;
  /** Anything worth a note (delivered counts, drain time, errors). */
  note?: string;
}

/** The memory of one server over one run (MiB, summed over its processes; see watchPeakMemory). */
export interface MemorySample {
  server: string;
  run: number;
  /** Largest sampled sum of Pss during the run. */
  peakPss: number;
  /** Sum of Pss at the end of the run, before the server stopped. */
  afterPss: number;
  /** Largest sum of VmHWM during the run (shared pages counted in each process). */
  peakRss: number;
  /** Sum of VmRSS at the end of the run. */
  afterRss: number;
}

/** A figure over runs: its median and its range. */
export interface Spread {
  median: number;
  min: number;
  max: number;
}

/** The medians of one scenario on one server. */
export interface Row {
  scenario: string;
  server: string;
  runs: number;
  values: number[];
  median: number;
  /** The smallest and largest run: the spread a later change must beat to count as a change. */
  min: number;
  max: number;
  p50Ms?: number;
  p99Ms?: number;
  cpuUs?: number;
  /** The median over runs of (ours in run r) / (this server in run r), on peer rows of a scenario we ran too. */
  oursOverPeer?: number;
  /** The range of those per-run ratios. */
  ratioMin?: number;
  ratioMax?: number;
  notes: string[];
}

/** One server's memory over the runs of a protocol. */
export interface MemoryRow {
  server: string;
  runs: number;
  peakPss: Spread;
  afterPss: Spread;
  peakRss: Spread;
  afterRss: Spread;
}

/** What our process was configured to hold in memory, for the memory row's target. */
export interface MemoryTier {
  /** The configured memory tier (MiB); 0 when the process runs nothing that has one. */
  mib: number;
  /** What the tier is, in words (the setting and its value, or why there is none). */
  what: string;
}

/** A protocol's summary: rows ordered by scenario (first seen), ours first within each. */
export interface ProtocolReport {
  protocol: string;
  unit: string;
  rows: Row[];
  /** One row per server: peak and after-run memory over the runs. */
  memory?: MemoryRow[];
  tier?: MemoryTier;
  /** Free-form lines printed under the table (how it was measured, caveats). */
  notes: string[];
  /** What went wrong beyond slowness (mail accepted and never delivered): the bench exits 1. */
  problems?: string[];
}

function medianOf(xs: (number | undefined)[]): number | undefined {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length ? median(v) : undefined;
}

function spread(xs: readonly number[]): Spread {
  const v = xs.filter((x) => Number.isFinite(x));
  return { median: median(v), min: v.length ? Math.min(...v) : NaN, max: v.length ? Math.max(...v) : NaN };
}

/** Summarises each server's memory samples over the runs, ours first. */
export function summarizeMemory(samples: readonly MemorySample[]): MemoryRow[] {
  const servers = [...new Set(samples.map((s) => s.server))].sort((a, b) => (a === OURS ? -1 : b === OURS ? 1 : 0));
  return servers.map((server) => {
    const ss = samples.filter((s) => s.server === server);
    return {
      server,
      runs: ss.length,
      peakPss: spread(ss.map((s) => s.peakPss)),
      afterPss: spread(ss.map((s) => s.afterPss)),
      peakRss: spread(ss.map((s) => s.peakRss)),
      afterRss: spread(ss.map((s) => s.afterRss)),
    };
  });
}

/** Whether our median peak PSS stays within the tier plus the target overhead, in words. */
export function memoryVerdict(row: MemoryRow, tier: MemoryTier): string {
  const budget = tier.mib + MEMORY_OVERHEAD_TARGET_MIB;
  const over = row.peakPss.median - budget;
  return `tier ${fmt(tier.mib, 0)} + ${MEMORY_OVERHEAD_TARGET_MIB} = ${fmt(budget, 0)} MiB: ${over <= 0 ? 'met' : `not met (${fmt(over, 0)} over)`}`;
}

/** Groups samples by scenario and server into medians and spreads, with ratios against ours. */
export function summarize(
  protocol: string,
  unit: string,
  samples: readonly Sample[],
  notes: string[] = [],
  memory?: { samples: readonly MemorySample[]; tier: MemoryTier },
): ProtocolReport {
  const scenarios = [...new Set(samples.map((s) => s.scenario))];
  const rows: Row[] = [];
  for (const scenario of scenarios) {
    const here = samples.filter((s) => s.scenario === scenario);
    const servers = [...new Set(here.map((s) => s.server))].sort((a, b) => (a === OURS ? -1 : b === OURS ? 1 : 0));
    const oursByRun = new Map(here.filter((s) => s.server === OURS).map((s) => [s.run, s.value]));
    for (const server of servers) {
      const ss = here.filter((s) => s.server === server).sort((a, b) => a.run - b.run);
      const values = ss.map((s) => s.value);
      // Runs interleave, so run r of ours and run r of the peer saw about the same machine load:
      // the median of the per-run ratios is steadier than the ratio of medians when load swings.
      const perRun = ss
        .map((s) => {
          const ours = oursByRun.get(s.run);
          return ours !== undefined && Number.isFinite(ours) && Number.isFinite(s.value) && s.value !== 0 ? ours / s.value : undefined;
        })
        .filter((x): x is number => x !== undefined);
      const r2 = (x: number) => Math.round(x * 100) / 100;
      const peer = server !== OURS && perRun.length > 0;
      const { min, max } = spread(values);
      rows.push({
        scenario,
        server,
        runs: ss.length,
        values,
        median: median(values),
        min,
        max,
        p50Ms: medianOf(ss.map((s) => s.p50Ms)),
        p99Ms: medianOf(ss.map((s) => s.p99Ms)),
        cpuUs: medianOf(ss.map((s) => s.cpuUs)),
        oursOverPeer: peer ? r2(median(perRun)) : undefined,
        ratioMin: peer ? r2(Math.min(...perRun)) : undefined,
        ratioMax: peer ? r2(Math.max(...perRun)) : undefined,
        notes: [...new Set(ss.map((s) => s.note).filter((n): n is string => !!n))],
      });
    }
  }
  const memoryRows = memory && memory.samples.length ? summarizeMemory(memory.samples) : undefined;
  const ours = memoryRows?.find((m) => m.server === OURS);
  const memoryNotes = memoryRows
    ? [
        "memory: MiB summed over the server's processes (ours: the main process and its workers; a peer: every process it forks), peak / after the run: PSS (shared pages split among their sharers; peak: the largest sum sampled every 200 ms) and in brackets RSS (peak: the sum of each process's own VmHWM, shared pages counted in each; after: the sum of VmRSS). After: at the end of the run, once every row of every server is done, before the servers stop. Median over runs; the range is the peak PSS's.",
        ...(ours && memory
          ? [
              `Our configured memory tier: ${memory.tier.what}. Issue 25's target is our peak PSS within the tier + ${MEMORY_OVERHEAD_TARGET_MIB} MiB: ${memoryVerdict(ours, memory.tier)}.`,
            ]
          : []),
      ]
    : [];
  return {
    protocol,
    unit,
    rows,
    ...(memoryRows ? { memory: memoryRows, tier: memory!.tier } : {}),
    notes: [
      ...notes,
      ...memoryNotes,
      'min–max: the slowest and fastest run.',
      // Only where a peer ran beside ours (JMAP and the webmail have none).
      ...(rows.some((r) => r.oursOverPeer !== undefined)
        ? [
            'ours/peer: the median over runs of ours in run r over the peer in run r (each row runs on both servers back to back, so each pair saw about the same load), with the range of those per-run ratios.',
          ]
        : []),
    ],
  };
}

/** `median` or `min–max` of a figure, thousands grouped. */
const val = (x: number) => fmt(x, Math.abs(x) >= 10 ? 0 : undefined);
const range = (min: number, max: number) => `${val(min)}–${val(max)}`;
const ratioCell = (r: Row) => (r.oursOverPeer === undefined ? '' : `${fmt(r.oursOverPeer, 2)} (${fmt(r.ratioMin, 2)}–${fmt(r.ratioMax, 2)})`);
/** Memory as `peak / after PSS (peak / after RSS)`. */
const memCell = (m: MemoryRow) => `${val(m.peakPss.median)} / ${val(m.afterPss.median)} (${val(m.peakRss.median)} / ${val(m.afterRss.median)})`;
const MEMORY_SCENARIO = 'memory MiB: PSS peak / after (RSS peak / after)';

const HEADER = (unit: string) => ['scenario', 'server', `${unit} (median)`, 'min–max', 'each run', 'p50 ms', 'p99 ms', 'CPU µs/op', 'ours/peer (min–max)'];

function cells(r: Row): string[] {
  return [r.scenario, r.server, val(r.median), range(r.min, r.max), r.values.map(val).join(' / '), fmt(r.p50Ms), fmt(r.p99Ms), fmt(r.cpuUs, 0), ratioCell(r)];
}

function memoryCells(m: MemoryRow, tier: MemoryTier | undefined): string[] {
  return [MEMORY_SCENARIO, m.server, memCell(m), range(m.peakPss.min, m.peakPss.max), '', '', '', '', m.server === OURS && tier ? memoryVerdict(m, tier) : ''];
}

function tableRows(rep: ProtocolReport): string[][] {
  return [...rep.rows.map(cells), ...(rep.memory ?? []).map((m) => memoryCells(m, rep.tier))];
}

function allNotes(rep: ProtocolReport): string[] {
  return [...rep.notes, ...rep.rows.flatMap((r) => r.notes.map((n) => `${r.scenario}, ${r.server}: ${n}`))];
}

/** The report as a Markdown section: a heading, the table, and the notes as a list. */
export function reportMarkdown(rep: ProtocolReport): string {
  const notes = allNotes(rep);
  return `### ${rep.protocol}\n\n${markdownTable(HEADER(rep.unit), tableRows(rep))}${notes.length ? `\n${notes.map((n) => `- ${n}`).join('\n')}\n` : ''}`;
}

/** The report as plain text for the terminal. */
export function reportText(rep: ProtocolReport): string {
  return `== ${rep.protocol} ==\n${textTable(HEADER(rep.unit), tableRows(rep))}${allNotes(rep)
    .map((n) => `  * ${n}\n`)
    .join('')}`;
}

const SUMMARY_HEADER = [
  'protocol, scenario',
  'unit',
  'Tomlinson: median (min–max)',
  'peer: median (min–max)',
  'ours/peer (min–max)',
  'CPU µs per op, ours / peer',
  'p99 ms, ours / peer',
];

/** A protocol's name in the summary's first column: its first word ("JMAP (against ...)" -> "JMAP"). */
const shortName = (protocol: string) => protocol.split(' ')[0]!;

/**
 * Every protocol in one table, the README's shape: a line per scenario and peer (ours beside
 * it), figures as median (min–max), and a memory line per protocol and peer.
 */
export function summaryRows(reports: readonly ProtocolReport[]): string[][] {
  const out: string[][] = [];
  const fig = (r: Row | undefined) => (r ? `${val(r.median)} (${range(r.min, r.max)})` : '');
  const pair = (a: string, b: string) => (a === '–' && b === '–' ? '' : `${a} / ${b}`);
  for (const rep of reports) {
    const name = shortName(rep.protocol);
    const scenarios = [...new Set(rep.rows.map((r) => r.scenario))];
    for (const scenario of scenarios) {
      const ours = rep.rows.find((r) => r.scenario === scenario && r.server === OURS);
      const peers = rep.rows.filter((r) => r.scenario === scenario && r.server !== OURS);
      for (const peer of peers.length ? peers : [undefined]) {
        out.push([
          `${name}, ${scenario}`,
          rep.unit,
          fig(ours),
          peer ? `${peer.server} ${fig(peer)}` : '',
          peer ? ratioCell(peer) : '',
          pair(fmt(ours?.cpuUs, 0), peer ? fmt(peer.cpuUs, 0) : '–'),
          pair(fmt(ours?.p99Ms), peer ? fmt(peer.p99Ms) : '–'),
        ]);
      }
    }
    const mem = rep.memory ?? [];
    const ours = mem.find((m) => m.server === OURS);
    const peers = mem.filter((m) => m.server !== OURS);
    for (const peer of peers.length ? peers : ours ? [undefined] : []) {
      out.push([
        `${name}, ${MEMORY_SCENARIO}`,
        'MiB',
        ours ? `${memCell(ours)}${rep.tier ? `; ${memoryVerdict(ours, rep.tier)}` : ''}` : '',
        peer ? `${peer.server} ${memCell(peer)}` : '',
        '',
        '',
        '',
      ]);
    }
  }
  return out;
}

/** What the one table's columns mean, printed under it (each protocol's own notes say how it ran). */
export const SUMMARY_LEGEND = [
  'median (min–max): over the runs, each on servers started cold; a change counts only when a row moves beyond its range.',
  'ours/peer: the median of the per-run ratios (each row runs on ours and the peer back to back, the order swapped each run), with their range.',
  `memory: MiB summed over a server's processes (ours: the main process and its workers), peak and after the run, PSS and in brackets RSS; issue 25's target is our peak PSS within our configured memory tier + ${MEMORY_OVERHEAD_TARGET_MIB} MiB.`,
];

/** The one table of every protocol as Markdown, with its legend. */
export function summaryMarkdown(reports: readonly ProtocolReport[]): string {
  return `${markdownTable(SUMMARY_HEADER, summaryRows(reports))}\n${SUMMARY_LEGEND.map((l) => `- ${l}`).join('\n')}\n`;
}

/** The one table of every protocol as plain text. */
export function summaryText(reports: readonly ProtocolReport[]): string {
  return textTable(SUMMARY_HEADER, summaryRows(reports));
}
