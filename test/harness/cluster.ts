import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DaemonProcess } from '../../deploy/daemon-process.js';
import { LOCAL_CLUSTER_DEFAULTS, LocalCluster, headHost, nodeHost, type HeadAddress, type LocalClusterOptions } from '../../deploy/local-cluster.js';
import { MiB } from '../../shared/constants.js';
import { freePort } from './ports.js';
import { registerManagerTls } from './vsky.js';
import { call, storageNodeClient } from '../../shared/grpc.js';
import type { ChunkIdentity__Output } from '../../proto/generated/vsky/common/ChunkIdentity.js';

// Test clusters: the same launcher as `vsky cluster up` (real processes on
// loopback, real LevelDB, real disk files), on ports free at the time and in a
// temp dir removed afterwards (kept when VSKY_KEEP_TEST_DIRS=1, for debugging).
// `heads: N` starts head1..headN, head n > 1 on its own loopback address
// (headHost(n)) with ports free there. Clusters run mutual TLS on gRPC by
// default (DIR/tls; `tls: false` for plain): vsky(args, c.managerAddress)
// uses the admin certificate, c.tlsArgs(name) gives flags for daemons or CLI
// runs by hand, c.tls.security(name) credentials for gRPC clients in the test.

/** Addresses for heads 2..n, each on its own loopback address with its own free ports. */
async function extraHeadAddresses(heads: number): Promise<HeadAddress[]> {
  const out: HeadAddress[] = [];
  for (let n = 2; n <= heads; n++) {
    const host = headHost(n);
    out.push({ host, grpcPort: await freePort(host), nbdPort: await freePort(host), iscsiPort: await freePort(host) });
  }
  return out;
}

export async function startTestCluster(overrides: Partial<LocalClusterOptions> = {}): Promise<LocalCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'vsky-test-'));
  const servers = overrides.servers ?? 3;
  const opts: LocalClusterOptions = {
    ...LOCAL_CLUSTER_DEFAULTS,
    dir,
    servers,
    disksPerServer: 2,
    diskSize: 256 * MiB,
    chunkSize: 16 * MiB,
    managerListen: `127.0.0.1:${await freePort()}`,
    headGrpcPort: await freePort(),
    nbdPort: await freePort(),
    iscsiPort: await freePort(),
    nodeDataPort: await freePort(nodeHost(0)),
    nodeGrpcPort: await freePort(nodeHost(0)),
    heartbeatIntervalMs: 300,
    heartbeatTimeoutMs: 3000,
    logLevel: 'info',
    xmlrpcListen: `127.0.0.1:${await freePort()}`,
    ...overrides,
  };
  if ((opts.heads ?? 1) > 1 && !overrides.headAddresses) opts.headAddresses = await extraHeadAddresses(opts.heads!);
  const c = await LocalCluster.start(opts);
  registerManagerTls(c.managerAddress, c.tls.dir);
  return c;
}

export async function destroyTestCluster(cluster: LocalCluster | undefined): Promise<void> {
  if (!cluster) return;
  await cluster.stop();
  if (process.env.VSKY_KEEP_TEST_DIRS !== '1') rmSync(cluster.opts.dir, { recursive: true, force: true });
}

/**
 * A second head agent ("another hypervisor") registered with the cluster's manager; NBD only.
 * Started and stopped by the caller, not the cluster. Do not reuse a name of the cluster's
 * own heads (head1..headN with `heads: N`): names must be unique for `--head NAME`.
 */
export async function startExtraHead(c: LocalCluster, name: string): Promise<DaemonProcess> {
  if (c.headNames.includes(name)) throw new Error(`startExtraHead: the cluster already runs a head named ${name} (heads: ${c.headNames.join(', ')})`);
  const dir = join(c.opts.dir, name);
  mkdirSync(dir, { recursive: true });
  await c.tls.ensure({ name, role: 'head', hosts: ['127.0.0.1'] });
  const head = new DaemonProcess(name, [
    'head-agent', '--data-dir', dir, '--name', name, '--host', '127.0.0.1',
    '--grpc-port', String(await freePort()), '--nbd-port', String(await freePort()), '--no-iscsi',
    '--heartbeat-interval', '300', '--manager', c.managerAddress, ...c.dataSecurityArgs(), ...c.tlsArgs(),
  ], join(c.opts.dir, 'logs', `${name}.log`));
  await head.start();
  return head;
}

/**
 * The identities of the chunks every storage node of `c` holds, read from each
 * node's gRPC (not through the manager); `volume` keeps only that volume's.
 */
export async function chunksOnNodes(c: LocalCluster, volume?: string): Promise<ChunkIdentity__Output[]> {
  const out: ChunkIdentity__Output[] = [];
  for (const n of c.nodes) {
    const client = storageNodeClient(String(n.ready.controlAddress), c.tls.security());
    try {
      const { chunks } = await call(client, 'ListChunks', { diskId: '' });
      for (const x of chunks) if (x.identity && (volume === undefined || x.identity.volumeName === volume)) out.push(x.identity);
    } finally {
      client.close();
    }
  }
  return out;
}
