import { DEFAULT_HEARTBEAT_TIMEOUT_MS } from '../shared/constants.js';
import { InvalidArgumentError, errorMessage } from '../shared/errors.js';
import { addStandardServices, bindServer, grpc, loadProtos } from '../shared/grpc.js';
import { newDaemonServer } from '../shared/security/authorize.js';
import { moduleLogger } from '../shared/logger.js';
import { daemonRegistry, startMetricsServer, type MetricsServer } from '../shared/metrics/http-server.js';
import { ChunkStore } from './chunk-store.js';
import { addDisk, createControlService, type NodeContext } from './control-service.js';
import { DataServer } from '../shared/data-protocol/server/data-server.js';
import type { DataSecurity } from '../shared/data-protocol/auth/data-security.js';
import { StoreChunkService } from './chunk-service.js';
import { ManagerLink } from './manager-link.js';
import { registerNodeMetrics } from './metrics.js';
import { ManagerNotes } from './manager-notes.js';
import { NodeIntIds } from './int-ids.js';
import { NodeState } from './node-state.js';
import { ResyncJobs } from './copy/resync-jobs.js';

// A storage node: its disks (remembered in the data directory and
// self-describing on disk), the data-protocol server, the gRPC control
// service, and the link to the manager. Library code: the CLI wrapper sets up
// the daemon logger (and UV_THREADPOOL_SIZE, which must be set before the
// first fs call; the default of 4 threads caps concurrent disk I/O).

export interface StorageNodeOptions {
  /** Node state: server-id file (stable UUID generated on first start), disks list file (paths opened at restart). */
  dataDir: string;
  /** Human name, e.g. "node1". */
  name: string;
  /** Bind address for both ports, e.g. 127.0.0.11; also the address advertised to the manager. */
  host: string;
  /** 0 = pick. */
  dataPort: number;
  /** 0 = pick. */
  grpcPort: number;
  /** HOST:PORT; omitted = standalone (no registration). */
  managerAddress?: string;
  /** Opened (or created+formatted) at start, in addition to those remembered in dataDir. */
  disks: { path: string; size?: number }[];
  /** For formatting new disks. */
  chunkSize: number;
  /** For formatting new disks: bytes per written-region bit (0/undefined: chunk size / 4096; --region-size 4K for 4 KiB regions). */
  regionSize?: number;
  labels: Record<string, string>;
  heartbeatIntervalMs: number;
  /** Deadline of each register/heartbeat call (default DEFAULT_HEARTBEAT_TIMEOUT_MS). */
  heartbeatTimeoutMs?: number;
  /** Requests in flight per data connection before it stops being read (default MAX_INFLIGHT_PER_CONNECTION). */
  maxInflightPerConnection?: number;
  /**
   * Data I/O bandwidth cap of each disk in MiB/s, reads and writes together (default 0: none).
   * For benchmarks: file-backed disks on one fast device stand in for spindles of this speed.
   */
  diskThrottleMibps?: number;
  /** HOST:PORT of the Prometheus endpoint (GET /metrics; port 0 = pick); undefined = none. */
  metricsListen?: string;
  /** Data key and TLS of the data listener (default: neither; the CLI requires a key or --no-data-auth). */
  dataSecurity?: DataSecurity;
}

export interface StorageNodeHandle {
  serverId: string;
  dataAddress: string;
  controlAddress: string;
  /** http://HOST:PORT/metrics, or '' when not served. */
  metricsUrl: string;
  close(): Promise<void>;
}

export async function startStorageNode(opts: StorageNodeOptions): Promise<StorageNodeHandle> {
  if (!opts.dataDir) throw new InvalidArgumentError('storage node: a data directory is required');
  if (!Number.isInteger(opts.heartbeatIntervalMs) || opts.heartbeatIntervalMs <= 0) {
    throw new InvalidArgumentError(`storage node: invalid heartbeat interval ${opts.heartbeatIntervalMs}`);
  }
  const throttle = opts.diskThrottleMibps ?? 0;
  if (!Number.isFinite(throttle) || throttle < 0) {
    throw new InvalidArgumentError(`storage node: invalid disk throttle ${throttle} MiB/s (0 turns it off)`);
  }
  const log = moduleLogger('storage-node', { name: opts.name });
  const state = await NodeState.load(opts.dataDir);
  const intIds = await NodeIntIds.load(state.dataDir);
  const store = new ChunkStore({ diskThrottleMibps: throttle });
  if (opts.managerAddress) store.awaitEpochRefresh(); // no writes before the manager's epochs are applied
  if (throttle > 0) log.warn({ diskThrottleMibps: throttle }, `every disk's data I/O is capped at ${throttle} MiB/s (--disk-throttle-mibps)`);
  const resyncs = new ResyncJobs(store);
  const notes = await ManagerNotes.load(state.dataDir, store);
  const ctx: NodeContext = {
    store, state, intIds, resyncs, notes, name: opts.name, labels: { ...opts.labels }, chunkSize: opts.chunkSize, regionSize: opts.regionSize, dataAddress: '', controlAddress: '',
  };
  const dataServer = new DataServer(new StoreChunkService(store), { maxInflight: opts.maxInflightPerConnection, security: opts.dataSecurity });
  const grpcServer = newDaemonServer();
  let link: ManagerLink | undefined;
  let metrics: MetricsServer | undefined;

  const close = async (): Promise<void> => {
    await metrics?.close();
    link?.stop();
    await resyncs.close();
    await dataServer.close();
    await shutdownGrpc(grpcServer);
    await store.close();
  };

  try {
    // Remembered disks first; one that cannot be opened is reported and left
    // remembered (it may be a device that comes back), not fatal.
    for (const path of state.diskPaths()) {
      try {
        await store.openDisk(path, { chunkSize: opts.chunkSize });
      } catch (err) {
        log.error({ path, err: errorMessage(err) }, 'cannot open remembered disk: not serving it');
      }
    }
    for (const d of opts.disks) await addDisk(ctx, d.path, d.size ?? 0, opts.chunkSize);

    ctx.dataAddress = await dataServer.listen(opts.host, opts.dataPort);
    grpcServer.addService(loadProtos().storage.vsky.storage.StorageNode.service, createControlService(ctx));
    addStandardServices(grpcServer, 'storage_node.proto', 'vsky.storage.StorageNode');
    const grpcPort = await bindServer(grpcServer, `${opts.host}:${opts.grpcPort}`);
    ctx.controlAddress = `${opts.host}:${grpcPort}`;

    if (opts.managerAddress) {
      link = new ManagerLink(ctx, {
        address: opts.managerAddress,
        intervalMs: opts.heartbeatIntervalMs,
        timeoutMs: opts.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS,
      });
      link.start();
    }
    if (opts.metricsListen !== undefined) {
      const prom = daemonRegistry();
      registerNodeMetrics(prom, store, opts.name);
      metrics = await startMetricsServer(opts.metricsListen, prom);
    }
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }

  const metricsUrl = metrics?.url ?? '';
  log.info({ dataAddress: ctx.dataAddress, controlAddress: ctx.controlAddress, metricsUrl, serverId: state.serverId }, 'ready');
  let closing: Promise<void> | undefined;
  return {
    serverId: state.serverId,
    dataAddress: ctx.dataAddress,
    controlAddress: ctx.controlAddress,
    metricsUrl,
    close: () => (closing ??= close()),
  };
}

/** Lets running control calls finish for a moment, then cuts them. */
function shutdownGrpc(server: grpc.Server): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 1000);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
