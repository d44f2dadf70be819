import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The third-party programs the tests drive, checked once: one message if any is missing.
    globalSetup: ['test/support/tools.ts'],
    // Protocol and adapter tests start real servers; give them room but never hang CI.
    testTimeout: 60_000,
    // moto and whole-process starts can take tens of seconds on a loaded 2-core machine.
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: run files two at a time so socket-heavy suites do not starve each other.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
