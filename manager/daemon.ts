import { errorMessage } from '../shared/errors.js';
import { SecretBox } from '../shared/security/secret-box.js';
import { readKeyFile } from '../shared/security/key-file.js';
import { addStandardServices, bindServer, loadProtos } from '../shared/grpc.js';
import { newDaemonServer } from '../shared/security/authorize.js';
import { managerSelfCheck } from './caller-checks.js';
import { moduleLogger } from '../shared/logger.js';
import { daemonRegistry, startMetricsServer, type MetricsServer } from '../shared/metrics/http-server.js';
import { parseHostPort } from '../shared/units.js';
import { ApiCallMetrics, timedHandlers } from './api-metrics.js';
import { ManagerCore } from './core.js';
import { registerManagerMetrics } from './metrics.js';
import { managerHandlers } from './grpc-service.js';
import { rebuildFromStorage } from './rebuild/index.js';
import { GrpcPeerClients, type PeerClients } from './node-clients.js';
import type { SchedulerLimits } from './resync/index.js';
import type { JobRetention } from './jobs/retention.js';
import { IntIds, startXmlRpc, xmlRpcMethodNames, type XmlRpcServerHandle, type XmlRpcServerOptions } from './xmlrpc/index.js';

// The manager process: load metadata, serve the gRPC API, watch heartbeats,
// handle failures and run resyncs (manager/resync/resyncs.ts, checked every second),
// collect garbage (at start, on request, and every gcIntervalMs if set).

const log = moduleLogger('manager');

export interface ManagerOptions {
  dataDir: string;              // LevelDB lives in dataDir/db
  listen: string;               // HOST:PORT for gRPC, port 0 = pick
  chunkSize: number;            // cluster chunk size (bytes)
  heartbeatTimeoutMs: number;   // server/head considered failed after this
  /** Rebuild an empty database from the storage nodes first (manager/rebuild/). */
  rebuildFromStorage?: { waitMs: number; expectServers?: number };
  leaseTtlMs?: number;          // a holder's write leases expire this long after its last heartbeat
  gcIntervalMs?: number;        // periodic GC, 0/undefined = only at start + on request
  /** HOST:PORT resync executors report progress to (default: the bound listen address). */
  advertiseAddress?: string;
  resyncMibps?: number;         // bandwidth cap per resync handed to executors, 0 = unthrottled
  resyncProgressTimeoutMs?: number; // a running resync without progress this long is dispatched again
  resyncLimits?: Partial<SchedulerLimits>; // per-disk resyncs (1), global cap (64), sources per resync (2)
  /** Ended job records kept: the last N per volume (20), none older than (7 days) (manager/jobs/retention.ts). */
  jobRetention?: Partial<JobRetention>;
  /**
   * Hot-spare mode (benchmarks, RAID-1-style comparisons): replacements for
   * failed replicas go only to these disks; new volumes are placed as usual.
   * Undefined/empty (the default): spares come from the whole pool.
   */
  spareDisks?: string[];
  /** VastSky 3.0's XML-RPC API (manager/xmlrpc/, docs/xmlrpc.md); undefined: not served. */
  xmlrpc?: XmlRpcServerOptions;
  /** HOST:PORT of the Prometheus endpoint (GET /metrics; port 0 = pick); undefined: not served. */
  metricsListen?: string;
  /** Key file (32 bytes, 0600) sealing the secrets stored in the database; undefined: stored in clear (logged). */
  secretKeyFile?: string;
  /** Pool thresholds raising pool.threshold events (fractions; default 0.8 and 0.95; docs/thin-provisioning.md). */
  poolThresholds?: { warn?: number; critical?: number };
}

export interface ManagerHandle {
  address: string;
  xmlrpcUrl?: string;
  /** http://HOST:PORT/metrics, or '' when not served. */
  metricsUrl: string;
  close(): Promise<void>;
}

/** Test seams: fake peers instead of gRPC clients, a fake clock. */
export interface ManagerDeps {
  peers?: PeerClients;
  now?: () => number;
}

export async function startManager(opts: ManagerOptions, deps: ManagerDeps = {}): Promise<ManagerHandle> {
  const { host } = parseHostPort(opts.listen, 'listen address');
  const peers = deps.peers ?? new GrpcPeerClients();
  if (opts.rebuildFromStorage) {
    await rebuildFromStorage({ dataDir: opts.dataDir, chunkSize: opts.chunkSize, listen: opts.listen, ...opts.rebuildFromStorage }, peers);
  }
  const secrets = opts.secretKeyFile === undefined ? undefined : new SecretBox(readKeyFile(opts.secretKeyFile, '--secret-key-file'));
  if (secrets === undefined) log.warn('no --secret-key-file: iSCSI CHAP secrets are stored in clear in the database');
  const core = await ManagerCore.open({
    dataDir: opts.dataDir, secrets, chunkSize: opts.chunkSize, heartbeatTimeoutMs: opts.heartbeatTimeoutMs, leaseTtlMs: opts.leaseTtlMs, now: deps.now,
    resyncMibps: opts.resyncMibps, resyncProgressTimeoutMs: opts.resyncProgressTimeoutMs, resyncLimits: opts.resyncLimits,
    spareDisks: opts.spareDisks, jobRetention: opts.jobRetention, poolThresholds: opts.poolThresholds,
  }, peers);

  // API call metrics only when metrics are served (nothing is wrapped otherwise).
  const api = opts.metricsListen !== undefined ? new ApiCallMetrics() : undefined;
  const server = newDaemonServer({ 'grpc.max_send_message_length': 64 * 1024 * 1024 }, { selfCheck: managerSelfCheck(core.registry) });
  const handlers = managerHandlers(core);
  server.addService(loadProtos().manager.vsky.manager.Manager.service, api ? timedHandlers(handlers, api) : handlers);
  addStandardServices(server, 'manager.proto', 'vsky.manager.Manager');
  let port: number;
  try {
    port = await bindServer(server, opts.listen);
  } catch (err) {
    peers.close();
    await core.close();
    throw err;
  }
  const address = `${host}:${port}`;
  // VastSky-style integer ids (given to records without one now and every few seconds), then XML-RPC.
  let ids: IntIds;
  let xmlrpc: XmlRpcServerHandle | undefined;
  let metrics: MetricsServer | undefined;
  try {
    ids = await IntIds.open(core);
    core.volumes.lvolIds = ids;
    core.snapshots.lvolIds = ids;
    core.intIdCounters = () => ids.counters();
    api?.declare('xmlrpc', xmlRpcMethodNames());
    if (opts.xmlrpc) xmlrpc = await startXmlRpc(core, ids, opts.xmlrpc, api && ((method, s, ok) => api.observe('xmlrpc', method, s, ok)));
    if (api !== undefined) {
      const prom = daemonRegistry();
      registerManagerMetrics(prom, core);
      api.register(prom);
      metrics = await startMetricsServer(opts.metricsListen!, prom);
    }
  } catch (err) {
    await xmlrpc?.close();
    server.forceShutdown();
    peers.close();
    await core.close();
    throw err;
  }

  const timers: NodeJS.Timeout[] = [];
  const every = (ms: number, what: string, fn: () => Promise<unknown>) => {
    let running = false;
    const t = setInterval(() => {
      if (running) return;
      running = true;
      fn().catch((err: unknown) => log.error({ err: errorMessage(err) }, `${what} failed`)).finally(() => { running = false; });
    }, ms);
    t.unref();
    timers.push(t);
  };
  core.registry.serving();
  every(Math.max(50, Math.min(1000, Math.floor(opts.heartbeatTimeoutMs / 4))), 'heartbeat check', () => core.registry.checkTimeouts());
  every(1000, 'resync check', async () => core.resyncs.tick());
  every(5000, 'integer ids', () => ids.sync());
  if (opts.gcIntervalMs && opts.gcIntervalMs > 0) every(opts.gcIntervalMs, 'periodic GC', () => core.gc.run('periodic'));
  // A wildcard listen address cannot be reached by executors on other hosts: say so.
  const advertise = opts.advertiseAddress ?? address;
  if (/^(0\.0\.0\.0|\[?::\]?):/.test(advertise)) log.warn({ advertise }, 'resync executors are told to report to a wildcard address; set advertiseAddress to one they can reach');
  core.start(advertise);
  core.gc.run('startup').catch((err: unknown) => log.error({ err: errorMessage(err) }, 'startup GC failed'));

  const metricsUrl = metrics?.url ?? '';
  log.info({ address, xmlrpcUrl: xmlrpc?.url, metricsUrl, dataDir: opts.dataDir, chunkSize: opts.chunkSize }, 'ready');

  let closing: Promise<void> | undefined;
  return {
    address,
    xmlrpcUrl: xmlrpc?.url ?? '',
    metricsUrl,
    close: () => {
      closing ??= (async () => {
        for (const t of timers) clearInterval(t);
        await metrics?.close();
        await xmlrpc?.close();
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
          server.tryShutdown(() => { clearTimeout(force); resolve(); });
        });
        peers.close();
        await core.close();
        log.info({ address }, 'manager stopped');
      })();
      return closing;
    },
  };
}
