import { existsSync, mkdirSync } from 'node:fs';
import { createKeyFile } from '../shared/security/key-file.js';
import { join } from 'node:path';
import { call, managerClient, type ManagerClient } from '../shared/grpc.js';
import {
  DEFAULT_CHUNK_SIZE, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_MANAGER_ADDRESS,
  DEFAULT_NBD_PORT, DEFAULT_ISCSI_PORT, DEFAULT_HEAD_GRPC_PORT, DEFAULT_NODE_DATA_PORT, DEFAULT_NODE_GRPC_PORT, GiB, LOCAL_NODE_HOST_BASE,
} from '../shared/constants.js';
import { InvalidArgumentError, TimeoutError } from '../shared/errors.js';
import { DaemonProcess } from './daemon-process.js';
import { metricsArgs, pinMetricsPort, type MetricsEndpoint } from './metrics-targets.js';
import { ClusterTls, type CertSpec } from './cluster-tls.js';
import { parseHostPort } from '../shared/units.js';

// A whole cluster on one machine: a manager, N storage nodes (each on its own
// loopback address 127.0.0.(11+i), standing in for separate hosts, with M
// sparse file-backed disks) and one or more head agents ("hypervisors"), each a
// real process. Head 1 listens on headHost (127.0.0.1); head i > 1 on its own
// loopback address 127.0.0.(HEAD_HOST_BASE+i) with the same ports, unless
// headAddresses says otherwise.

/** Head i > 1 listens on 127.0.0.(HEAD_HOST_BASE + i): 127.0.0.102, .103, ... clear of the nodes' 127.0.0.11+. */
export const HEAD_HOST_BASE = 100;

/** Where one head agent listens. */
export interface HeadAddress {
  host: string;
  grpcPort: number;
  nbdPort: number;
  iscsiPort: number;
}

/** Where a started head agent serves, as it reported in its "ready" line. */
export interface HeadEndpoints {
  name: string;
  /** host:port of its control gRPC service. */
  grpc: string;
  /** host:port of its NBD server. */
  nbd: string;
  /** host:port of its iSCSI portal ('' when it has none). */
  iscsi: string;
}

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
  /** Head agents head1..headN (default 1). */
  heads?: number;
  /**
   * Addresses of head 2..N: entry i is head i+2 (default: 127.0.0.(HEAD_HOST_BASE + n)
   * for head n, with head 1's ports). Head 1 always uses headHost and the ports above.
   */
  headAddresses?: HeadAddress[];
  /** Labels of server i (default: each server its own rack). */
  labels?: (i: number) => Record<string, string>;
  logLevel?: string;
  /** Extra environment per daemon name ("manager", "node1", "head" for head 1, "head2", ...), e.g. fault injection. */
  env?: Record<string, NodeJS.ProcessEnv>;
  /** HOST:PORT of the manager's VastSky XML-RPC API (docs/xmlrpc.md); undefined: not served. */
  xmlrpcListen?: string;
  /**
   * The manager's database is lost but the nodes' disks are there: start the
   * manager with --rebuild-from-storage (`vsky cluster up` decides this when
   * DIR/manager/db is missing and DIR/node1 exists).
   */
  rebuildFromStorage?: boolean;
  /** Extra `vsky manager` flags, e.g. ['--resync-mibps', '8']. */
  managerArgs?: string[];
  /** Extra `vsky head-agent` flags for every head, e.g. ['--segment-allocate-timeout', '3000']. */
  headArgs?: string[];
  /** Extra `vsky storage-node` flags for every storage node, e.g. ['--region-size', '64K']. */
  storageNodeArgs?: string[];
  /** Extra node flags per daemon name, e.g. { head: ['--cpu-prof'] } for profiling. */
  nodeArgs?: Record<string, string[]>;
  /** Every daemon serves Prometheus metrics on a port picked on its own address (metricsEndpoints lists them). */
  metrics?: boolean;
  /**
   * Data path security (docs/security.md). Default: every daemon gets DIR/data.key
   * (made on first start, mode 0600). `auth: false` passes --no-data-auth; `tls`
   * runs the data protocol over TLS with these PEM files (--data-tls).
   */
  dataSecurity?: { auth?: boolean; tls?: { cert: string; key: string; ca: string } };
  /**
   * Mutual TLS on every gRPC connection with a CA and certificates in DIR/tls
   * (deploy/cluster-tls.ts); default true. false: every daemon runs --insecure.
   */
  tls?: boolean;
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

/** Default loopback address of head n (1-based) for n > 1. */
export function headHost(n: number): string {
  return `127.0.0.${HEAD_HOST_BASE + n}`;
}

/** Where head n (1-based) of a cluster with these options listens. */
export function headAddress(opts: LocalClusterOptions, n: number): HeadAddress {
  if (n === 1) return { host: opts.headHost, grpcPort: opts.headGrpcPort, nbdPort: opts.nbdPort, iscsiPort: opts.iscsiPort };
  return opts.headAddresses?.[n - 2] ?? { host: headHost(n), grpcPort: opts.headGrpcPort, nbdPort: opts.nbdPort, iscsiPort: opts.iscsiPort };
}

export class LocalCluster {
  readonly opts: LocalClusterOptions;
  readonly manager: DaemonProcess;
  readonly nodes: DaemonProcess[];
  /** head1..headN; heads[i] registers as `head${i + 1}`. */
  readonly heads: DaemonProcess[];
  /** The first head (heads[0], registered as "head1"): where ensureVolume attaches. */
  readonly head: DaemonProcess;
  /** DIR/tls: the CA and a certificate per daemon, admin and readonly (none with tls: false). */
  readonly tls: ClusterTls;
  managerAddress: string;

  private constructor(opts: LocalClusterOptions) {
    const heads = opts.heads ?? 1;
    if (!Number.isInteger(heads) || heads < 1) throw new InvalidArgumentError(`heads must be a positive integer, got ${heads}`);
    if (heads > 255 - HEAD_HOST_BASE) throw new InvalidArgumentError(`at most ${255 - HEAD_HOST_BASE} heads on loopback, got ${heads}`);
    this.opts = opts;
    this.tls = new ClusterTls(opts.dir, opts.tls !== false);
    const logs = join(opts.dir, 'logs');
    mkdirSync(logs, { recursive: true });
    this.managerAddress = opts.managerListen;
    this.manager = new DaemonProcess('manager', [
      'manager', '--data-dir', join(opts.dir, 'manager'), '--listen', opts.managerListen,
      '--chunk-size', String(opts.chunkSize), '--heartbeat-timeout', String(opts.heartbeatTimeoutMs),
      ...(opts.xmlrpcListen ? ['--xmlrpc-listen', opts.xmlrpcListen] : ['--no-xmlrpc']),
      ...this.logArgs(), ...this.metricsArgs(opts.managerListen.slice(0, opts.managerListen.lastIndexOf(':'))), ...this.dataSecurityArgs(), ...this.tls.args(),
      '--secret-key-file', this.keyFile('secret.key'), ...(opts.managerArgs ?? []),
    ], join(logs, 'manager.log'), opts.env?.manager);
    this.nodes = Array.from({ length: opts.servers }, (_, i) => this.nodeProcess(i, logs));
    // Head 1 keeps the daemon name, data dir and log of the single-head cluster ("head").
    this.heads = Array.from({ length: heads }, (_, i) => {
      const name = i === 0 ? 'head' : `head${i + 1}`;
      return new DaemonProcess(name, [], join(logs, `${name}.log`), opts.env?.[name]);
    });
    this.head = this.heads[0]!;
    for (const d of [this.manager, ...this.heads, ...this.nodes]) d.nodeArgs = opts.nodeArgs?.[d.name] ?? [];
  }

  /** Registered head names, head1..headN. */
  get headNames(): string[] {
    return this.heads.map((_, i) => `head${i + 1}`);
  }

  /** The manager's XML-RPC URL (http(s)://HOST:PORT/RPC2) once started; '' when not served. */
  get xmlrpcUrl(): string {
    const u = this.manager.ready.xmlrpcUrl;
    return typeof u === 'string' ? u : '';
  }

  /** Where each head serves (from its "ready" line once started; else where it was told to listen). */
  get headEndpoints(): HeadEndpoints[] {
    return this.heads.map((h, i) => {
      const a = headAddress(this.opts, i + 1);
      const r = h.ready;
      const str = (v: unknown, fallback: string): string => (typeof v === 'string' ? v : fallback);
      return {
        name: `head${i + 1}`,
        grpc: str(r.controlAddress, `${a.host}:${a.grpcPort}`),
        nbd: str(r.nbdAddress, `${a.host}:${a.nbdPort}`),
        iscsi: str(r.iscsiAddress, `${a.host}:${a.iscsiPort}`),
      };
    });
  }

  private logArgs(): string[] {
    return this.opts.logLevel ? ['--log-level', this.opts.logLevel] : [];
  }

  /** DIR/data.key: the cluster data key every daemon is given. */
  get dataKeyPath(): string {
    return join(this.opts.dir, 'data.key');
  }

  /** DIR/NAME, a key file made (32 random bytes, mode 0600) on first use. */
  private keyFile(name: string): string {
    const path = join(this.opts.dir, name);
    if (!existsSync(path)) createKeyFile(path);
    return path;
  }

  /** The data-security flags of every daemon (the key file is made on first use). */
  dataSecurityArgs(): string[] {
    const sec = this.opts.dataSecurity ?? {};
    const tls = sec.tls ? ['--data-tls', '--data-tls-cert', sec.tls.cert, '--data-tls-key', sec.tls.key, '--data-tls-ca', sec.tls.ca] : [];
    if (sec.auth === false) return ['--no-data-auth', ...tls];
    return ['--data-key', this.keyFile('data.key'), ...tls];
  }

  private metricsArgs(host: string): string[] {
    return this.opts.metrics === true ? metricsArgs(host) : [];
  }

  /** Where each daemon serves its metrics (empty unless started with `metrics: true`). */
  get metricsEndpoints(): MetricsEndpoint[] {
    const out: MetricsEndpoint[] = [];
    const add = (d: DaemonProcess, daemon: string, role: MetricsEndpoint['role']): void => {
      const url = d.ready.metricsUrl;
      if (typeof url === 'string' && url) out.push({ daemon, role, url });
    };
    add(this.manager, 'manager', 'manager');
    this.nodes.forEach((n) => add(n, n.name, 'storage-node'));
    this.heads.forEach((h, i) => add(h, `head${i + 1}`, 'head-agent'));
    return out;
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
      ...Object.entries(labels).flatMap(([k, v]) => ['--label', `${k}=${v}`]), ...disks, ...this.logArgs(), ...this.metricsArgs(nodeHost(i)), ...this.dataSecurityArgs(), ...this.tls.args(),
      ...(this.opts.storageNodeArgs ?? []),
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

  /** The certificates of this cluster's daemons (admin and readonly come with them). */
  private certSpecs(): CertSpec[] {
    return [
      { name: 'manager', role: 'manager', hosts: [parseHostPort(this.opts.managerListen, 'manager address').host] },
      ...this.nodes.map((_, i): CertSpec => ({ name: `node${i + 1}`, role: 'node', hosts: [nodeHost(i)] })),
      ...this.heads.map((_, i): CertSpec => ({ name: `head${i + 1}`, role: 'head', hosts: [headAddress(this.opts, i + 1).host] })),
    ];
  }

  private async startAll(): Promise<void> {
    await this.tls.prepare(this.certSpecs());
    if (this.opts.rebuildFromStorage) {
      // The manager is ready only once the nodes registered and it rebuilt its database from them.
      this.manager.args.push('--rebuild-from-storage', '--rebuild-servers', String(this.nodes.length));
      for (const node of this.nodes) node.args.push('--manager', this.opts.managerListen);
      const [ready] = await Promise.all([this.manager.start(60_000), ...this.nodes.map((n) => n.start())]);
      this.managerAddress = String(ready.address ?? this.opts.managerListen);
    } else {
      const ready = await this.manager.start();
      this.managerAddress = String(ready.address ?? this.opts.managerListen);
      for (const node of this.nodes) node.args.push('--manager', this.managerAddress);
      await Promise.all(this.nodes.map((n) => n.start()));
    }
    this.heads.forEach((head, i) => {
      const a = headAddress(this.opts, i + 1);
      head.args.push('head-agent', '--data-dir', join(this.opts.dir, i === 0 ? 'head' : `head${i + 1}`), '--name', `head${i + 1}`,
        '--host', a.host, '--grpc-port', String(a.grpcPort), '--nbd-port', String(a.nbdPort), '--iscsi-port', String(a.iscsiPort),
        '--heartbeat-interval', String(this.opts.heartbeatIntervalMs), '--manager', this.managerAddress, ...this.logArgs(), ...this.metricsArgs(a.host),
        ...this.dataSecurityArgs(), ...this.tls.args(), ...(this.opts.headArgs ?? []));
    });
    // allSettled: a head that failed to start must not leave its siblings' starts unawaited.
    const started = await Promise.allSettled(this.heads.map((h) => h.start()));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    // A restarted daemon serves its metrics where it did (Prometheus' targets stay valid).
    for (const d of [this.manager, ...this.nodes, ...this.heads]) pinMetricsPort(d);
    await this.waitRegistered();
  }

  /** Flags for a daemon or CLI run by hand against this cluster: --tls-dir DIR/tls [--tls-name NAME], or --insecure. */
  tlsArgs(name?: string): string[] {
    return this.tls.args(name);
  }

  /** A manager client with the admin certificate (or plain, without TLS). */
  client(): ManagerClient {
    return managerClient(this.managerAddress, this.tls.security());
  }

  /**
   * Polls until every server, its disks and every head (head1..headN) are registered and active;
   * `activeDisks` lowers the disk count for a cluster where an admin failed some.
   */
  async waitRegistered(timeoutMs = 20_000, activeDisks = this.nodes.length * this.opts.disksPerServer): Promise<void> {
    const wantDisks = activeDisks;
    const m = this.client();
    const deadline = Date.now() + timeoutMs;
    try {
      for (;;) {
        const [servers, disks, heads] = await Promise.all([
          call(m, 'ListServers', {}), call(m, 'ListDisks', { server: '' }), call(m, 'ListHeads', {}),
        ]);
        const activeServers = servers.servers.filter((s) => s.state === 'active').length;
        const activeDisks = disks.disks.filter((d) => d.state === 'active').length;
        const activeHeads = new Set(heads.heads.filter((h) => h.state === 'active').map((h) => h.name));
        const missingHeads = this.headNames.filter((n) => !activeHeads.has(n));
        if (activeServers >= this.nodes.length && activeDisks >= wantDisks && missingHeads.length === 0) return;
        if (Date.now() > deadline) {
          throw new TimeoutError(`cluster not registered after ${timeoutMs} ms: ${activeServers} servers, ${activeDisks} disks, `
            + `${this.heads.length - missingHeads.length}/${this.heads.length} heads active${missingHeads.length ? ` (waiting for ${missingHeads.join(', ')})` : ''}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      m.close();
    }
  }

  /** Creates the volume unless it exists, (re)attaches it to head1 (or `head`), returns its NBD URI. */
  async ensureVolume(name: string, size: number, replicas: number, head = 'head1', thin = false): Promise<string> {
    return (await this.ensureVolumeUrls(name, size, replicas, head, thin)).nbd;
  }

  /**
   * As ensureVolume, with the iSCSI URL too ('' when the head has no portal).
   * Volumes made here (`vsky cluster up --volume`, tests) are thick unless
   * `thin`: ready to take writes with no manager round trip.
   */
  async ensureVolumeUrls(name: string, size: number, replicas: number, head = 'head1', thin = false): Promise<{ nbd: string; iscsi: string }> {
    const m = this.client();
    try {
      const { volumes } = await call(m, 'ListVolumes', {});
      const existing = volumes.find((v) => v.name === name);
      if (!existing) await call(m, 'CreateVolume', { name, size, replicas, spreadLabel: '', thick: !thin }, 120_000);
      // Attaching to the head that already holds it re-pushes the map (new epoch).
      // Named, not '': the manager only picks a head by itself when exactly one is registered.
      const r = await call(m, 'AttachVolume', { name, head }, 30_000);
      return { nbd: r.nbdUri, iscsi: r.iscsiUrl };
    } finally {
      m.close();
    }
  }

  /** Stops the heads, the nodes, then the manager. */
  async stop(): Promise<void> {
    await Promise.all(this.heads.map((h) => h.stop()));
    await Promise.all(this.nodes.map((n) => n.stop()));
    await this.manager.stop();
  }
}
