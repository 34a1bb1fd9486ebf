import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import {
  DEFAULT_CHUNK_SIZE, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_MANAGER_ADDRESS,
  DEFAULT_NBD_PORT, DEFAULT_ISCSI_PORT, DEFAULT_HEAD_GRPC_PORT, DEFAULT_NODE_DATA_PORT, DEFAULT_NODE_GRPC_PORT, GiB, LOCAL_NODE_HOST_BASE,
} from '../shared/constants.js';
import { TimeoutError } from '../shared/errors.js';
import { DaemonProcess } from './daemon-process.js';

// A whole cluster on one machine: a manager, N storage nodes (each on its own
// loopback address 127.0.0.(11+i), standing in for separate hosts, with M
// sparse file-backed disks) and one head agent, each a real process.

export interface LocalClusterOptions {
  dir: string;
  servers: number;
  disksPerServer: number;
  diskSize: number;
  chunkSize: number;
  managerListen: string;
  headHost: string;
  headGrpcPort: number;
  nbdPort: number;
  iscsiPort: number;
  nodeDataPort: number;
  nodeGrpcPort: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** Labels of server i (default: each server its own rack). */
  labels?: (i: number) => Record<string, string>;
  logLevel?: string;
  /** Extra environment per daemon name ("manager", "node1", "head"), e.g. fault injection. */
  env?: Record<string, NodeJS.ProcessEnv>;
  /** Extra `vsky manager` flags, e.g. ['--resync-mibps', '8']. */
  managerArgs?: string[];
  /** Extra node flags per daemon name, e.g. { head: ['--cpu-prof'] } for profiling. */
  nodeArgs?: Record<string, string[]>;
}

export const LOCAL_CLUSTER_DEFAULTS: Omit<LocalClusterOptions, 'dir'> = {
  servers: 3, disksPerServer: 2, diskSize: 2 * GiB, chunkSize: DEFAULT_CHUNK_SIZE,
  managerListen: DEFAULT_MANAGER_ADDRESS, headHost: '127.0.0.1', headGrpcPort: DEFAULT_HEAD_GRPC_PORT,
  nbdPort: DEFAULT_NBD_PORT, iscsiPort: DEFAULT_ISCSI_PORT, nodeDataPort: DEFAULT_NODE_DATA_PORT, nodeGrpcPort: DEFAULT_NODE_GRPC_PORT,
  heartbeatIntervalMs: DEFAULT_HEARTBEAT_INTERVAL_MS, heartbeatTimeoutMs: DEFAULT_HEARTBEAT_TIMEOUT_MS,
};

export function nodeHost(i: number): string {
  return `127.0.0.${LOCAL_NODE_HOST_BASE + i}`;
}

export class LocalCluster {
  readonly opts: LocalClusterOptions;
  readonly manager: DaemonProcess;
  readonly nodes: DaemonProcess[];
  readonly head: DaemonProcess;
  managerAddress: string;

  private constructor(opts: LocalClusterOptions) {
    this.opts = opts;
    const logs = join(opts.dir, 'logs');
    mkdirSync(logs, { recursive: true });
    this.managerAddress = opts.managerListen;
    this.manager = new DaemonProcess('manager', [
      'manager', '--data-dir', join(opts.dir, 'manager'), '--listen', opts.managerListen,
      '--chunk-size', String(opts.chunkSize), '--heartbeat-timeout', String(opts.heartbeatTimeoutMs),
      ...this.logArgs(), ...(opts.managerArgs ?? []),
    ], join(logs, 'manager.log'), opts.env?.manager);
    this.nodes = Array.from({ length: opts.servers }, (_, i) => this.nodeProcess(i, logs));
    this.head = new DaemonProcess('head', [], join(logs, 'head.log'), opts.env?.head);
    for (const d of [this.manager, this.head, ...this.nodes]) d.nodeArgs = opts.nodeArgs?.[d.name] ?? [];
  }

  private logArgs(): string[] {
    return this.opts.logLevel ? ['--log-level', this.opts.logLevel] : [];
  }

  private nodeProcess(i: number, logs: string): DaemonProcess {
    const name = `node${i + 1}`;
    const dataDir = join(this.opts.dir, name);
    const labels = this.opts.labels?.(i) ?? { rack: `r${i + 1}` };
    const disks = Array.from({ length: this.opts.disksPerServer }, (_, d) => ['--disk', `${join(dataDir, `disk${d + 1}.img`)}:${this.opts.diskSize}`]).flat();
    return new DaemonProcess(name, [
      'storage-node', '--data-dir', dataDir, '--name', name, '--host', nodeHost(i),
      '--data-port', String(this.opts.nodeDataPort), '--grpc-port', String(this.opts.nodeGrpcPort),
      '--chunk-size', String(this.opts.chunkSize), '--heartbeat-interval', String(this.opts.heartbeatIntervalMs),
      ...Object.entries(labels).flatMap(([k, v]) => ['--label', `${k}=${v}`]), ...disks, ...this.logArgs(),
    ], join(logs, `${name}.log`), this.opts.env?.[name]);
  }

  /** Starts every daemon and waits until the manager knows all servers and disks. */
  static async start(opts: LocalClusterOptions): Promise<LocalCluster> {
    const cluster = new LocalCluster(opts);
    try {
      await cluster.startAll();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  private async startAll(): Promise<void> {
    const ready = await this.manager.start();
    this.managerAddress = String(ready.address ?? this.opts.managerListen);
    for (const node of this.nodes) node.args.push('--manager', this.managerAddress);
    await Promise.all(this.nodes.map((n) => n.start()));
    this.head.args.push('head-agent', '--data-dir', join(this.opts.dir, 'head'), '--name', 'head1',
      '--host', this.opts.headHost, '--grpc-port', String(this.opts.headGrpcPort), '--nbd-port', String(this.opts.nbdPort), '--iscsi-port', String(this.opts.iscsiPort),
      '--heartbeat-interval', String(this.opts.heartbeatIntervalMs), '--manager', this.managerAddress, ...this.logArgs());
    await this.head.start();
    await this.waitRegistered();
  }

  client(): ManagerClient {
    return managerClient(this.managerAddress);
  }

  /** Polls until every server, its disks and the head are registered and active. */
  async waitRegistered(timeoutMs = 20_000): Promise<void> {
    const m = this.client();
    const deadline = Date.now() + timeoutMs;
    try {
      for (;;) {
        const [servers, disks, heads] = await Promise.all([
          call(m, 'ListServers', {}), call(m, 'ListDisks', { server: '' }), call(m, 'ListHeads', {}),
        ]);
        const activeServers = servers.servers.filter((s) => s.state === 'active').length;
        const activeDisks = disks.disks.filter((d) => d.state === 'active').length;
        const activeHeads = heads.heads.filter((h) => h.state === 'active').length;
        if (activeServers >= this.nodes.length && activeDisks >= this.nodes.length * this.opts.disksPerServer && activeHeads >= 1) return;
        if (Date.now() > deadline) {
          throw new TimeoutError(`cluster not registered after ${timeoutMs} ms: ${activeServers} servers, ${activeDisks} disks, ${activeHeads} heads active`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      m.close();
    }
  }

  /** Creates the volume unless it exists, (re)attaches it to the head, returns its NBD URI. */
  async ensureVolume(name: string, size: number, replicas: number): Promise<string> {
    return (await this.ensureVolumeUrls(name, size, replicas)).nbd;
  }

  /** As ensureVolume, with the iSCSI URL too ('' when the head has no portal). */
  async ensureVolumeUrls(name: string, size: number, replicas: number): Promise<{ nbd: string; iscsi: string }> {
    const m = this.client();
    try {
      const { volumes } = await call(m, 'ListVolumes', {});
      const existing = volumes.find((v) => v.name === name);
      if (!existing) await call(m, 'CreateVolume', { name, size, replicas, spreadLabel: '' }, 120_000);
      // Attaching to the head that already holds it re-pushes the map (new epoch).
      const r = await call(m, 'AttachVolume', { name, head: '' }, 30_000);
      return { nbd: r.nbdUri, iscsi: r.iscsiUrl };
    } finally {
      m.close();
    }
  }

  /** Stops the head, the nodes, then the manager. */
  async stop(): Promise<void> {
    await this.head.stop();
    await Promise.all(this.nodes.map((n) => n.stop()));
    await this.manager.stop();
  }
}
