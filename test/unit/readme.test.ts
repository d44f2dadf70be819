/**
 * README.md is the user's door: it must name the two setup commands and the test command, and its
 * configuration table must be the one the code defines (scripts/config-docs.ts).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { configTable } from '../../scripts/config-docs.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const ci = readFileSync(new URL('../../.ci/run', import.meta.url), 'utf8');

describe('README.md', () => {
  it('shows npm ci then npm start, and npm test, which .ci/run runs', () => {
    expect(readme).toMatch(/```sh\nnpm ci\nnpm start\n```/);
    expect(readme).toMatch(/```sh\nnpm test\n```/);
    expect(ci).toMatch(/^npm test$/m);
  });

  it('lists every setting exactly as core/config.ts defines it (regenerate with npx tsx scripts/config-docs.ts)', () => {
    expect(readme).toContain(configTable());
  });

  it('names the default ports', () => {
    for (const p of ['2525', '2587', '2465', '2110', '2995', '3128']) expect(readme).toContain(`127.0.0.1:${p}`);
  });
});
