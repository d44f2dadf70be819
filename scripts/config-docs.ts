/**
 * Prints the configuration table of README.md from core/config.ts SETTINGS, so the README cannot
 * drift from the code (test/unit/readme.test.ts compares them). `npx tsx scripts/config-docs.ts`.
 */
import { SETTINGS } from '../core/config.js';

/** The Markdown table of every setting. */
export function configTable(): string {
  const rows = SETTINGS.map((s) => {
    const d = Array.isArray(s.default) ? s.default.join(',') : String(s.default);
    return `| \`${s.env}\` | \`${s.path}\` | ${d === '' ? '(empty)' : `\`${d}\``} | ${s.doc} |`;
  });
  return ['| variable | file path | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(configTable() + '\n');
