import { defineConfig } from 'vitest/config';

// Integration tests start real daemons (as compiled JS under dist/) on loopback.
// The machine has two cores, so test files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
