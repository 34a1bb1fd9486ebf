import { moduleLogger } from '../shared/logger.js';
import { daemonRegistry, startMetricsServer, type MetricsServer } from '../shared/metrics/http-server.js';
import { NodeControlClients } from './engine/node-control-clients.js';
import { startControlServer, type ControlServer } from './control-service.js';
import { leaseRequester } from './lease-requester.js';
import { thinAllocator } from './thin-segments.js';
import { ManagerLink, loadHeadId } from './manager-link.js';
import { startNbdServer, type NbdServerHandle } from './frontend/nbd/server.js';
import type { NbdTlsSettings } from './frontend/nbd/handshake-driver.js';
import { NodePool } from './engine/node-pool.js';
import { ReportingFailureHandler } from './engine/replica-failures.js';
import { ResyncService } from './resync/resync-service.js';
import { Attachments } from './attachments.js';
import { IscsiExports } from './frontend/iscsi-exports.js';
import { JobHost } from './jobs/job-host.js';
import { HeadIntIdFile } from './int-id.js';
import { registerHeadMetrics } from './metrics.js';
import { startIscsiServer, type IscsiServerHandle } from './frontend/iscsi/server.js';

// `vsky head-agent`: the attached volumes and their I/O engine, the NBD export,
// the gRPC control service the manager calls, and the link that registers and
// heartbeats with the manager. Start order: engine, NBD (its address goes into
// every nbd:// URI), control, then the manager link. Stop in reverse; attached
// volumes are flushed on the way out. With a manager, a write that fails on
// some replicas is acknowledged once the manager recorded them stale
// (replica-failures.ts, through the link's client); standalone, it fails.

export interface HeadAgentOptions {
  /** Holds the stable head id file and the VastSky hsvrid the manager gave (head-agent/int-id.ts). */
  dataDir: string;
  name: string;
  /** Bind address for gRPC and NBD, e.g. 127.0.0.1. */
  host: string;
  /** 0 = pick. */
  grpcPort: number;
  /** 0 = pick. */
  nbdPort: number;
  /** iSCSI portal port; 0 = pick; undefined = no iSCSI. */
  iscsiPort?: number;
  /** Omitted = standalone (attach only through the control service directly). */
  managerAddress?: string;
  heartbeatIntervalMs: number;
  /** How long a write waits for the manager to record a failed replica stale before it fails (default 10000). */
  staleReportTimeoutMs?: number;
  /** Thin volumes: how long a first write waits for its segment's chunks before ENOSPC (default 10000). */
  segmentAllocateTimeoutMs?: number;
  /**
   * A storage node silent this long (no reply, PING probe unanswered) while
   * requests to it are outstanding is taken as hung: its replicas are dropped
   * and reported stale, so writes resume (default DATA_TIMEOUT_MS, 2000).
   */
  dataTimeoutMs?: number;
  /**
   * One data request unanswered this long fails its node's connection even
   * while the node answers others; long because FLUSH, FENCE and FUA writes
   * fdatasync (default FLUSH_TIMEOUT_MS, 30000).
   */
  flushTimeoutMs?: number;
  /** HOST:PORT of the Prometheus endpoint (GET /metrics; port 0 = pick); undefined = none. */
  metricsListen?: string;
  /** NBD over TLS (NBD_OPT_STARTTLS; --nbd-tls); undefined: NOTLS. */
  nbdTls?: NbdTlsSettings;
}

export interface HeadAgentHandle {
  headId: string;
  controlAddress: string;
  nbdAddress: string;
  /** '' when the head serves no iSCSI. */
  iscsiAddress: string;
  /** http://HOST:PORT/metrics, or '' when not served. */
  metricsUrl: string;
  attachments: Attachments;
  close(): Promise<void>;
}

export async function startHeadAgent(opts: HeadAgentOptions): Promise<HeadAgentHandle> {
  const log = moduleLogger('head-agent', { name: opts.name });
  const headId = await loadHeadId(opts.dataDir);
  const intId = await HeadIntIdFile.load(opts.dataDir);
  const pool = new NodePool({ dataTimeoutMs: opts.dataTimeoutMs, flushTimeoutMs: opts.flushTimeoutMs });
  const nodeClients = new NodeControlClients();
  let link: ManagerLink | undefined;
  // The map a failure report is answered with is not applied here: the manager
  // pushes every change with UpdateMap, in order; applying the reply too could
  // put an older map over a newer push.
  const failureHandler = opts.managerAddress === undefined ? undefined : new ReportingFailureHandler({
    headId, manager: () => link?.managerClient, staleReportTimeoutMs: opts.staleReportTimeoutMs,
  });
  const attachments = new Attachments({
    pool, failureHandler, nodeClients,
    leaseRequester: opts.managerAddress === undefined ? undefined : leaseRequester({ headId, manager: () => link?.managerClient }),
  });
  if (opts.managerAddress !== undefined) {
    attachments.segmentAllocator = thinAllocator({
      headId, manager: () => link?.managerClient, timeoutMs: opts.segmentAllocateTimeoutMs,
      apply: (map, epoch, segment) => attachments.applySegment(map, epoch, segment),
    });
  }
  const resync = new ResyncService({ volumes: attachments, clients: nodeClients, defaultManager: () => link?.managerClient });
  const jobs = new JobHost({ headId, pool, clients: nodeClients, manager: () => link?.managerClient });
  let nbd: NbdServerHandle | undefined;
  let iscsi: IscsiServerHandle | undefined;
  let control: ControlServer | undefined;
  let metrics: MetricsServer | undefined;
  try {
    nbd = await startNbdServer({ host: opts.host, port: opts.nbdPort, registry: attachments, tls: opts.nbdTls });
    const nbdServer = nbd;
    const exports = new IscsiExports();
    if (opts.iscsiPort !== undefined) iscsi = await startIscsiServer({ host: opts.host, port: opts.iscsiPort, registry: exports });
    const iscsiServer = iscsi;
    control = await startControlServer(opts.host, opts.grpcPort, {
      attachments, nbdAddress: nbd.address, connectionCount: (name) => nbdServer.connectionCount(name),
      iscsi: iscsiServer && { exports, address: iscsiServer.address, sessionCount: (iqn) => iscsiServer.sessionCount(iqn) },
      resync, jobs,
    });
    if (opts.metricsListen !== undefined) {
      const prom = daemonRegistry();
      registerHeadMetrics(prom, attachments);
      metrics = await startMetricsServer(opts.metricsListen, prom);
    }
  } catch (err) {
    await metrics?.close();
    await control?.close();
    await iscsi?.close();
    await nbd?.close();
    await attachments.close();
    await pool.close();
    nodeClients.close();
    throw err;
  }
  link = opts.managerAddress !== undefined
    ? new ManagerLink({
      managerAddress: opts.managerAddress, headId, name: opts.name,
      controlAddress: control.address, nbdAddress: nbd.address, iscsiAddress: iscsi?.address ?? '', heartbeatIntervalMs: opts.heartbeatIntervalMs,
      leases: () => attachments.heldLeases(), intId,
      jobs: () => jobs.ids(),
      onRevoked: (revoked) => attachments.revoke(revoked),
    })
    : undefined;
  link?.start();
  const controlAddress = control.address;
  const nbdAddress = nbd.address;
  const iscsiAddress = iscsi?.address ?? '';
  const metricsUrl = metrics?.url ?? '';
  log.info({ controlAddress, nbdAddress, iscsiAddress, metricsUrl, headId }, 'ready');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await metrics?.close();
      await control!.close();
      await resync.close();
      await jobs.close();
      await iscsi?.close();
      await nbd!.close();
      await attachments.close();
      await link?.stop();
      await pool.close();
      nodeClients.close();
      log.info('head agent stopped');
    })();
    return closing;
  };
  return { headId, controlAddress, nbdAddress, iscsiAddress, metricsUrl, attachments, close };
}
