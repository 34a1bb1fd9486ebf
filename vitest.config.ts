import { configDefaults, defineConfig } from 'vitest/config';

// Three projects: unit tests (in-process, test/unit), and integration tests
// (real daemons as compiled JS under dist/, on loopback, test/integration) in
// two: `integration-untimed`, files that assert no timing window (no "within
// N s", no SIGSTOP against a timeout, no throttled resync that must still be
// running, no speed comparison), and `integration`, the rest. Within each,
// files run one at a time (the integration tests start whole clusters).
// `npx vitest run` runs the projects one after the other. deploy/test.sh (CI)
// runs two processes side by side on the two cores: `--project integration`
// next to `--project unit --project integration-untimed`, so the timed tests
// only ever share the machine with tests that do not measure time.
const UNTIMED = [
  'bad-input', 'cli', 'cluster-identity', 'data-auth', 'grpc-tls', 'install-rehearsal', 'iscsi', 'iscsi-fuzz',
  'jobs', 'metrics', 'nbd-clients', 'nbd-tls', 'rebuild-thin-empty', 'request-ids', 'snapshot-backing-map',
  'snapshot-ext4', 'snapshot-fine-regions', 'snapshot-merge', 'snapshot-node-readonly', 'snapshot-readonly',
  'snapshot-rebuild', 'snapshots', 'thin-copy', 'volume-io', 'xmlrpc-snapshot',
].map((name) => `test/integration/${name}.test.ts`);

const oneFileAtATime = { fileParallelism: false };

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
    pool: 'forks',
    reporters: ['default'],
    projects: [
      { extends: true, test: { ...oneFileAtATime, name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: { ...oneFileAtATime, name: 'integration', include: ['test/integration/**/*.test.ts'], exclude: [...configDefaults.exclude, ...UNTIMED] },
      },
      { extends: true, test: { ...oneFileAtATime, name: 'integration-untimed', include: UNTIMED } },
    ],
  },
});
