/** `config show|docs`: the effective configuration, and the settings table for README.md. */
import type { Command } from 'commander';
import { SETTINGS } from '../../core/config.js';
import type { CliContext } from '../context.js';

function getPath(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), obj);
}

function shown(v: unknown): string {
  if (Array.isArray(v)) return v.join(',');
  return String(v);
}

/** Adds the `config` command group. */
export function register(program: Command, ctx: CliContext): void {
  const config = program.command('config').description('configuration: effective values and documentation');

  config
    .command('show')
    .description('print every setting with its effective value (environment and TOMLINSON_CONFIG file applied)')
    .action(() => {
      const cfg = ctx.config();
      // Secrets are shown as set or not, never their value.
      const rows = SETTINGS.map((s) => ({ env: s.env, path: s.path, value: s.secret ? (getPath(cfg, s.path) ? '(set)' : '') : getPath(cfg, s.path) }));
      ctx.table(
        rows.map((r) => ({ ...r, value: shown(r.value) })),
        [
          { key: 'env', title: 'VARIABLE' },
          { key: 'value', title: 'VALUE' },
        ],
        Object.fromEntries(rows.map((r) => [r.path, r.value])),
      );
    });

  config
    .command('docs')
    .description('print the settings as a Markdown table (for README.md)')
    .action(() => {
      const esc = (t: string) => t.replace(/\|/g, '\\|');
      const lines = ['| Variable | File path | Default | Meaning |', '|---|---|---|---|'];
      for (const s of SETTINGS) {
        const def = shown(s.default);
        const values = s.values ? ` One of: ${s.values.join(', ')}.` : '';
        lines.push(`| \`${s.env}\` | \`${s.path}\` | ${def === '' ? '(empty)' : `\`${esc(def)}\``} | ${esc(s.doc)}${values} |`);
      }
      ctx.print(lines.join('\n'), SETTINGS);
    });

  // `tomlinson config --docs`, as core/config.ts mentions, is the same as `config docs`.
  config.option('--docs', 'same as `config docs`').action(async (opts: { docs?: boolean }) => {
    if (!opts.docs) config.help();
    await config.commands.find((c) => c.name() === 'docs')!.parseAsync([], { from: 'user' });
  });
}
