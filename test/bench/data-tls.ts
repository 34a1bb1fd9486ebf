import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LocalCluster, LOCAL_CLUSTER_DEFAULTS, nodeHost, type LocalClusterOptions } from '../../deploy/local-cluster.js';
import { GiB, MiB } from '../../shared/constants.js';
import { freePort } from '../harness/ports.js';
import { makeTestCerts, type TestCerts } from '../harness/certs.js';
import { fillDevice, runFio, type FioJob, type FioResult } from './fio.js';

// The cost of securing the data path (docs/security.md, docs/benchmarks.md):
// the same client (fio's nbd engine against head 1's NBD export, 3
// replicas) on a local cluster whose daemons run the data protocol
//   plain  --no-data-auth
//   auth   --data-key (challenge-response at connect only)
//   tls    --data-tls + --data-key (every byte between head and nodes encrypted)
// Rounds alternate the modes so that load from other processes spreads over
// all three. `npm run bench:data-tls` (VSKY_BENCH_ROUNDS, default 2).

type Mode = 'plain' | 'auth' | 'tls';
const MODES: Mode[] = ['plain', 'auth', 'tls'];
const SIZE = 256 * MiB;
const JOBS: FioJob[] = [
  { name: '64K seq write QD16', rw: 'write', bs: '64k', iodepth: 16, seconds: 6 },
  { name: '4K rand read QD16', rw: 'randread', bs: '4k', iodepth: 16, seconds: 6 },
];

function security(mode: Mode, certs: TestCerts): LocalClusterOptions['dataSecurity'] {
  if (mode === 'plain') return { auth: false };
  if (mode === 'auth') return {};
  return { tls: { cert: certs.peerCert, key: certs.peerKey, ca: certs.ca } };
}

async function measureMode(root: string, mode: Mode, certs: TestCerts, round: number): Promise<Map<string, FioResult>> {
  const dir = join(root, `${mode}-${round}`);
  const cluster = await LocalCluster.start({
    ...LOCAL_CLUSTER_DEFAULTS, dir, disksPerServer: 1, diskSize: 1 * GiB, chunkSize: 64 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`, headGrpcPort: await freePort(), nbdPort: await freePort(), iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)), nodeGrpcPort: await freePort(nodeHost(0)), logLevel: 'warn', dataSecurity: security(mode, certs),
  });
  try {
    const uri = await cluster.ensureVolume('bench', SIZE, 3);
    await fillDevice(uri);
    const out = new Map<string, FioResult>();
    for (const job of JOBS) out.set(job.name, await runFio(uri, job));
    return out;
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface DataTlsBenchResult {
  rounds: number;
  loadavg: number[];
  /** Per job and mode: the median over rounds. */
  results: Record<string, Record<Mode, FioResult>>;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function runDataTlsBench(rounds = 2, log = (s: string) => process.stderr.write(`${s}\n`)): Promise<DataTlsBenchResult> {
  const root = mkdtempSync(join(tmpdir(), 'vsky-bench-datatls-'));
  const certs = makeTestCerts(join(root, 'pki'));
  const samples = new Map<string, Map<Mode, FioResult[]>>();
  const load = loadavg();
  try {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? MODES : [...MODES].reverse();
      for (const mode of order) {
        log(`round ${round + 1}/${rounds}: ${mode}`);
        for (const [job, r] of await measureMode(root, mode, certs, round)) {
          const byMode = samples.get(job) ?? new Map<Mode, FioResult[]>();
          samples.set(job, byMode);
          byMode.set(mode, [...(byMode.get(mode) ?? []), r]);
        }
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  const results: DataTlsBenchResult['results'] = {};
  for (const [job, byMode] of samples) {
    results[job] = Object.fromEntries(MODES.map((m) => {
      const xs = byMode.get(m)!;
      return [m, { mibps: median(xs.map((x) => x.mibps)), iops: median(xs.map((x) => x.iops)), p50us: median(xs.map((x) => x.p50us)), p99us: median(xs.map((x) => x.p99us)) }];
    })) as Record<Mode, FioResult>;
  }
  return { rounds, loadavg: load, results };
}

function print(r: DataTlsBenchResult): void {
  console.log(`data path security cost: fio nbd engine -> head -> 3 replicas; median of ${r.rounds} round(s); load average at start ${r.loadavg.map((x) => x.toFixed(1)).join(' ')}`);
  console.log('| job | plain MiB/s | auth MiB/s | TLS MiB/s | auth/plain | TLS/plain | plain p50 us | TLS p50 us |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const [job, m] of Object.entries(r.results)) {
    const ratio = (x: number): string => (m.plain.mibps > 0 ? (x / m.plain.mibps).toFixed(2) : '-');
    console.log(`| ${job} | ${m.plain.mibps.toFixed(1)} | ${m.auth.mibps.toFixed(1)} | ${m.tls.mibps.toFixed(1)} | ${ratio(m.auth.mibps)} | ${ratio(m.tls.mibps)} | ${m.plain.p50us.toFixed(0)} | ${m.tls.p50us.toFixed(0)} |`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const rounds = Number(process.env.VSKY_BENCH_ROUNDS ?? 2);
  runDataTlsBench(rounds).then((r) => {
    print(r);
    if (process.argv.includes('--json')) console.log(JSON.stringify(r));
  }, (err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
