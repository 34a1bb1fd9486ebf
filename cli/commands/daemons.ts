import { InvalidArgumentError as CommanderInvalid, Option, type Command } from 'commander';
import { initDaemonLogger, type Logger } from '../../shared/logger.js';
import {
  DATA_TIMEOUT_MS, DEFAULT_CHUNK_SIZE, DEFAULT_HEAD_GRPC_PORT, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_LEASE_TTL_MS,
  DEFAULT_ISCSI_PORT, DEFAULT_MANAGER_ADDRESS, DEFAULT_NBD_PORT, DEFAULT_NODE_DATA_PORT, DEFAULT_NODE_GRPC_PORT,
  DEFAULT_XMLRPC_ADDRESS, FLUSH_TIMEOUT_MS,
} from '../../shared/constants.js';
import { hostPortArg, intArg, labelOption, positiveIntArg, repeatableOption, sizeOption } from '../options.js';
import { parseSize } from '../../shared/units.js';
import { withConfigFile } from '../config/config-file.js';
import { errorMessage } from '../../shared/errors.js';
import { loadNbdTls } from '../../head-agent/frontend/nbd/tls-settings.js';
import { describeDataSecurity, loadDataSecurity, setDefaultDataSecurity, type DataSecurity } from '../../shared/data-protocol/auth/data-security.js';
import { addTlsOptions, applyDaemonTls, type TlsFlags } from '../tls-options.js';
import type { Role } from '../../shared/security/identity.js';

// The three daemons. Each logs structured JSON lines (pino) to stdout, prints
// a {"msg":"ready"} line once it serves, and stops cleanly on SIGINT/SIGTERM.

interface Closable { close(): Promise<void> }

async function runDaemon(name: string, level: string | undefined, start: (log: Logger) => Promise<Closable>): Promise<void> {
  const log = initDaemonLogger(name, level);
  process.on('uncaughtException', (err) => { log.fatal({ err }, 'uncaught exception'); process.exit(1); });
  process.on('unhandledRejection', (err) => { log.fatal({ err }, 'unhandled rejection'); process.exit(1); });
  let handle: Closable;
  try {
    handle = await start(log);
  } catch (err) {
    log.fatal({ err }, `${name} failed to start: ${errorMessage(err)}`);
    process.stderr.write(`vsky ${name}: ${errorMessage(err)}\n`);
    process.exit(1);
  }
  if (!log.isLevelEnabled('info')) {
    // Launchers wait for the ready line (with the bound addresses); it must
    // not depend on the log level.
    const fields = Object.fromEntries(Object.entries(handle as object).filter(([, v]) => typeof v === 'string'));
    process.stdout.write(`${JSON.stringify({ level: 30, time: new Date().toISOString(), component: name, msg: 'ready', ...fields })}\n`);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    const force = setTimeout(() => process.exit(1), 5000);
    force.unref();
    handle.close().then(() => { log.info('stopped'); process.exit(0); }, (err: unknown) => {
      log.error({ err }, 'error while stopping');
      process.exit(1);
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

/** Applies the daemon's TLS flags (cli/tls-options.ts: --tls-* or --insecure) for the whole process, then starts it. */
function withTls<T>(o: TlsFlags, certName: string, role: Role, start: (log: Logger) => Promise<T>): (log: Logger) => Promise<T> {
  return async (log) => {
    applyDaemonTls(o, certName, role);
    return start(log);
  };
}

/** Repeatable --spare-disk: a disk id (see `vsky disk list`), no blanks or commas. */
function spareDiskArg(value: string, previous: string[] = []): string[] {
  const id = value.trim();
  if (!/^[A-Za-z0-9_.:-]+$/.test(id)) throw new CommanderInvalid(`"${value}" is not a disk id (see \`vsky disk list\`)`);
  return previous.includes(id) ? previous : [...previous, id];
}

function parseDisk(spec: string): { path: string; size?: number } {
  const i = spec.lastIndexOf(':');
  if (i > 0 && /^\d/.test(spec.slice(i + 1))) return { path: spec.slice(0, i), size: parseSize(spec.slice(i + 1)) };
  return { path: spec };
}

/**
 * The data protocol's security flags (every daemon opens or serves data
 * connections): the cluster data key and TLS. docs/security.md.
 */
function addDataSecurityOptions(cmd: Command): Command {
  return cmd
    .option('--data-key <file>', 'cluster data key (32 random bytes, mode 0600, the same file on every daemon): every data '
      + 'connection proves it holds it (challenge-response) before any request. Required unless --no-data-auth')
    .option('--no-data-auth', 'do not authenticate data connections (anyone reaching a data port can write any chunk): tests and trusted networks only')
    .option('--data-tls', 'run the data protocol over TLS (mutual, certificates from the cluster CA), authenticated with the data key inside it')
    .option('--data-tls-cert <file>', 'with --data-tls: this daemon\'s PEM certificate (presented as server and as client)')
    .option('--data-tls-key <file>', 'with --data-tls: PEM private key of --data-tls-cert')
    .option('--data-tls-ca <file>', 'with --data-tls: PEM CA certificate the peers\' certificates must chain to');
}

/** Reads the data key and certificates the flags name and makes them this process's data-connection default. */
function dataSecurity(o: Record<string, unknown>, log: Logger): DataSecurity {
  const security = loadDataSecurity({
    dataKey: o.dataKey as string | undefined, dataAuth: o.dataAuth !== false, dataTls: o.dataTls === true,
    dataTlsCert: o.dataTlsCert as string | undefined, dataTlsKey: o.dataTlsKey as string | undefined, dataTlsCa: o.dataTlsCa as string | undefined,
  });
  setDefaultDataSecurity(security);
  if (security.key === undefined) log.warn('data connections are NOT authenticated (--no-data-auth)');
  log.info({ dataSecurity: describeDataSecurity(security) }, 'data path security');
  return security;
}

export function registerDaemonCommands(program: Command): void {
  withConfigFile(addTlsOptions(addDataSecurityOptions(managerCommand(program)), '"manager"'));
  withConfigFile(addTlsOptions(addDataSecurityOptions(storageNodeCommand(program)), 'the --name'));
  withConfigFile(addTlsOptions(addDataSecurityOptions(headAgentCommand(program)), 'the --name'));
}

function managerCommand(program: Command): Command {
  return program.command('manager')
    .description('run the cluster manager (metadata, placement, attach, gRPC API)')
    .requiredOption('--data-dir <dir>', 'where the manager keeps its LevelDB')
    .option('--listen <host:port>', 'gRPC listen address', hostPortArg, DEFAULT_MANAGER_ADDRESS)
    .addOption(sizeOption('--chunk-size <size>', 'cluster chunk (segment) size', DEFAULT_CHUNK_SIZE))
    .option('--heartbeat-timeout <ms>', 'mark a server or head failed after this silence', intArg, DEFAULT_HEARTBEAT_TIMEOUT_MS)
    .option('--rebuild-from-storage', 'the database is lost: rebuild it from the storage nodes (they register as usual), '
      + 'then start; only into an empty data directory')
    .option('--rebuild-wait <ms>', 'with --rebuild-from-storage: wait this long for storage nodes to register at most', positiveIntArg, 15_000)
    .option('--rebuild-servers <n>', 'with --rebuild-from-storage: go on once this many storage nodes registered', positiveIntArg)
    .option('--lease-ttl <ms>', 'a volume\'s write lease expires this long after its holder\'s last heartbeat; only then may '
      + 'another head take it over without --force', positiveIntArg, DEFAULT_LEASE_TTL_MS)
    .option('--gc-interval <ms>', 'run garbage collection this often (0: at start and on request)', intArg, 60_000)
    .option('--resync-mibps <n>', 'bandwidth cap of each resync in MiB/s, so foreground I/O keeps its speed (0: none)', intArg, 0)
    .option('--resync-per-disk <n>', 'resyncs a physical disk takes part in at once, as source or target', positiveIntArg, 1)
    .option('--resync-max <n>', 'resyncs running at once in the whole cluster', positiveIntArg, 64)
    .option('--job-keep <n>', 'ended storage job records kept per volume (newest first; a volume\'s last job is always kept)', positiveIntArg, 20)
    .option('--job-max-age <hours>', 'ended storage job records older than this are pruned (a volume\'s last job is always kept)', positiveIntArg, 7 * 24)
    .option('--advertise <host:port>', 'address resync executors report to (default: the listen address)', hostPortArg)
    .addOption(repeatableOption('--spare-disk <disk-id>', 'hot-spare mode (benchmarking/compat, as a RAID-1 hot spare): replacements for '
      + 'failed replicas go only to these disks, never to a server holding another replica of the segment '
      + '(repeatable; new volumes are placed as usual). Default: spares anywhere in the pool, rebuilt by many disks at once',
    spareDiskArg))
    .option('--xmlrpc-listen <host:port>', 'address of the VastSky 3.0 XML-RPC API (docs/xmlrpc.md); 0.0.0.0:8881 serves VastSky '
      + 'clients on other hosts (plain HTTP, as VastSky: a trusted management network, or add TLS and a token)', hostPortArg, DEFAULT_XMLRPC_ADDRESS)
    .option('--no-xmlrpc', 'do not serve the XML-RPC API')
    .option('--xmlrpc-tls-cert <file>', 'serve XML-RPC over HTTPS with this PEM certificate (with --xmlrpc-tls-key)')
    .option('--xmlrpc-tls-key <file>', 'PEM private key of --xmlrpc-tls-cert')
    .option('--xmlrpc-token <token>', 'require this access token as the HTTP basic-auth password of every XML-RPC call '
      + '(default: $VSKY_XMLRPC_TOKEN; none: no authentication, as VastSky)')
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: pick one; docs/metrics.md). Default: not served', hostPortArg)
    .option('--secret-key-file <file>', 'key (32 random bytes, mode 0600, outside the data directory) sealing the iSCSI CHAP secrets '
      + 'stored in the database (AES-256-GCM); secrets found in clear are sealed at start. Default: stored in clear (logged)')
    .option('--pool-warn <percent>', 'pool use (percent of the usable chunks) that raises a pool.threshold warning event (thin volumes; docs/thin-provisioning.md)', percentArg, 80)
    .option('--pool-critical <percent>', 'pool use (percent) that raises a pool.threshold critical event', percentArg, 95)
    .option('--log-level <level>', 'pino log level')
    .action(async (o) => {
      const { startManager } = await import('../../manager/daemon.js');
      const token = (o.xmlrpcToken as string | undefined) ?? process.env.VSKY_XMLRPC_TOKEN;
      await runDaemon('manager', o.logLevel, withTls(o, 'manager', 'manager', (log) => (dataSecurity(o, log), startManager({
        dataDir: o.dataDir, listen: o.listen, chunkSize: o.chunkSize,
        heartbeatTimeoutMs: o.heartbeatTimeout, leaseTtlMs: o.leaseTtl,
        rebuildFromStorage: o.rebuildFromStorage ? { waitMs: o.rebuildWait, expectServers: o.rebuildServers } : undefined, gcIntervalMs: o.gcInterval, advertiseAddress: o.advertise,
        resyncMibps: o.resyncMibps, resyncLimits: { perDisk: o.resyncPerDisk, maxRunning: o.resyncMax },
        spareDisks: (o.spareDisk as string[]).length > 0 ? o.spareDisk as string[] : undefined,
        jobRetention: { keepPerVolume: o.jobKeep, maxAgeMs: o.jobMaxAge * 3600 * 1000 },
        xmlrpc: o.xmlrpc === false ? undefined : { listen: o.xmlrpcListen, tlsCert: o.xmlrpcTlsCert, tlsKey: o.xmlrpcTlsKey, token: token || undefined },
        metricsListen: o.metricsListen, secretKeyFile: o.secretKeyFile, poolThresholds: { warn: o.poolWarn / 100, critical: o.poolCritical / 100 },
      }))));
    });
}

function percentArg(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 100) throw new CommanderInvalid(`invalid percentage "${v}": give 1..100, e.g. 80`);
  return n;
}

function storageNodeCommand(program: Command): Command {
  return program.command('storage-node')
    .description('run a storage node serving its disks over the data protocol')
    .requiredOption('--data-dir <dir>', 'where the node keeps its id and the list of its disks')
    .option('--name <name>', 'server name', 'node')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--data-port <port>', 'data protocol port (0: pick one)', intArg, DEFAULT_NODE_DATA_PORT)
    .option('--grpc-port <port>', 'control gRPC port (0: pick one)', intArg, DEFAULT_NODE_GRPC_PORT)
    .option('--manager <host:port>', 'manager to register with', hostPortArg)
    .addOption(repeatableOption('--disk <path[:size]>', 'disk file or device; a missing file is created sparse at size (repeatable)'))
    .addOption(sizeOption('--chunk-size <size>', 'chunk size used to format new disks', DEFAULT_CHUNK_SIZE))
    .addOption(sizeOption('--region-size <size>', 'written-region size of new disks, one per cluster (0: chunk size / 4096, '
      + '64K with 256 MiB chunks; 4K makes a clone\'s 4 KiB first write copy nothing up, for 16x the bitmap memory: docs/snapshots.md)', 0))
    .addOption(labelOption('--label <key=value>', 'failure-domain label, e.g. rack=r1 (repeatable)'))
    .option('--heartbeat-interval <ms>', 'heartbeat period', intArg, DEFAULT_HEARTBEAT_INTERVAL_MS)
    .option('--disk-throttle-mibps <n>', 'cap each disk\'s data reads and writes together at n MiB/s, e.g. to make '
      + 'file-backed disks stand in for spindles in benchmarks (0: none)', intArg, 0)
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: pick one; docs/metrics.md). Default: not served', hostPortArg)
    .option('--log-level <level>', 'pino log level')
    .action(async (o) => {
      const { startStorageNode } = await import('../../storage-node/daemon.js');
      await runDaemon('storage-node', o.logLevel, withTls(o, o.name, 'node', (log) => startStorageNode({
        dataDir: o.dataDir, name: o.name, host: o.host, dataPort: o.dataPort, grpcPort: o.grpcPort,
        managerAddress: o.manager, disks: (o.disk as string[]).map(parseDisk), chunkSize: o.chunkSize, regionSize: o.regionSize,
        labels: o.label, heartbeatIntervalMs: o.heartbeatInterval, diskThrottleMibps: o.diskThrottleMibps,
        metricsListen: o.metricsListen, dataSecurity: dataSecurity(o, log),
      })));
    });
}

function headAgentCommand(program: Command): Command {
  return program.command('head-agent')
    .description('run a head agent: attaches volumes and exports them over NBD')
    .requiredOption('--data-dir <dir>', 'where the head keeps its id and the VastSky hsvrid the manager gave it (int-id.json, hsvrid)')
    .option('--name <name>', 'head name', 'head')
    .option('--host <host>', 'address to listen on (NBD and gRPC)', '127.0.0.1')
    .option('--grpc-port <port>', 'control gRPC port (0: pick one)', intArg, DEFAULT_HEAD_GRPC_PORT)
    .option('--nbd-port <port>', 'NBD port (0: pick one)', intArg, DEFAULT_NBD_PORT)
    .option('--iscsi-port <port>', 'iSCSI portal port (0: pick one)', intArg, DEFAULT_ISCSI_PORT)
    .option('--no-iscsi', 'serve NBD only')
    .addOption(new Option('--replication <mode>', 'how a write reaches a segment\'s replicas: fanout (the head sends it to each) '
      + 'or forward (once, to the first replica, which forwards it: a third of the head\'s network bytes at 3 replicas, one more '
      + 'hop of latency; docs/replication-topology.md). Default: VSKY_REPLICATION, else fanout').choices(['fanout', 'forward']))
    .option('--segment-allocate-timeout <ms>', 'thin volumes: milliseconds a first write to an unallocated segment waits for the manager '
      + 'to give it chunks before it fails with ENOSPC (a full pool fails at once; docs/thin-provisioning.md)', positiveIntArg, 10_000)
    .option('--stale-report-timeout <ms>', 'milliseconds a write waits for the manager to record a failed replica as stale '
      + 'before it fails with EIO (it is never acknowledged before)', intArg, 10_000)
    .option('--data-timeout <ms>', 'milliseconds a storage node may send nothing (no reply, no answer to a PING probe) while '
      + 'requests to it are outstanding before it is taken as hung: its replicas are dropped and reported stale, and writes '
      + 'resume. A busy node keeps replying and is not dropped', positiveIntArg, DATA_TIMEOUT_MS)
    .option('--flush-timeout <ms>', 'milliseconds one data request may stay unanswered while its storage node answers '
      + 'others (FLUSH, FENCE and FUA writes fdatasync, which can take seconds on a busy disk)', positiveIntArg, FLUSH_TIMEOUT_MS)
    .option('--manager <host:port>', 'manager to register with', hostPortArg)
    .option('--heartbeat-interval <ms>', 'heartbeat period', intArg, DEFAULT_HEARTBEAT_INTERVAL_MS)
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: pick one; docs/metrics.md). Default: not served', hostPortArg)
    .option('--nbd-tls <mode>', 'NBD over TLS (NBD_OPT_STARTTLS, x509): off, on (at the client\'s choice) or require '
      + '(plaintext clients refused; clients use nbds:// URIs)', 'off')
    .option('--nbd-tls-cert <file>', 'with --nbd-tls: PEM certificate of the NBD server')
    .option('--nbd-tls-key <file>', 'with --nbd-tls: PEM private key of --nbd-tls-cert')
    .option('--nbd-tls-ca <file>', 'with --nbd-tls: PEM CA; NBD clients must then present a certificate it signed')
    .option('--log-level <level>', 'pino log level')
    .action(async (o) => {
      const { startHeadAgent } = await import('../../head-agent/daemon.js');
      if (o.replication !== undefined) {
        const { setReplicationMode } = await import('../../head-agent/engine/forward-group.js');
        setReplicationMode(o.replication);
      }
      await runDaemon('head-agent', o.logLevel, withTls(o, o.name, 'head', (log) => (dataSecurity(o, log), startHeadAgent({
        dataDir: o.dataDir, name: o.name, host: o.host, grpcPort: o.grpcPort, nbdPort: o.nbdPort,
        iscsiPort: o.iscsi === false ? undefined : o.iscsiPort, staleReportTimeoutMs: o.staleReportTimeout,
        segmentAllocateTimeoutMs: o.segmentAllocateTimeout,
        dataTimeoutMs: o.dataTimeout, flushTimeoutMs: o.flushTimeout,
        managerAddress: o.manager, heartbeatIntervalMs: o.heartbeatInterval, metricsListen: o.metricsListen,
        nbdTls: loadNbdTls({ mode: o.nbdTls, cert: o.nbdTlsCert, key: o.nbdTlsKey, ca: o.nbdTlsCa }),
      }))));
    });
}
