/** Byte sizes for people: parsing `500M`, `2G`, `unlimited` and printing `1.5 MiB`. */

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/** Parses a size such as `1048576`, `500M`, `2G` or `unlimited` (0) into bytes; undefined when invalid. */
export function parseSize(text: string): number | undefined {
  const t = text.trim().toLowerCase();
  if (t === 'unlimited' || t === 'none') return 0;
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(t);
  if (!m || !(m[2] in UNITS)) return undefined;
  const n = Math.round(Number(m[1]) * UNITS[m[2]]);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** Formats bytes in binary units, e.g. `1.5 MiB`; 0 with `zero` gives that word instead. */
export function formatSize(bytes: number, zero?: string): string {
  if (bytes === 0 && zero) return zero;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}
