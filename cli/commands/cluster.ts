import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InvalidArgumentError as CommanderInvalid, Option, type Command } from 'commander';
import { HEAD_HOST_BASE, LOCAL_CLUSTER_DEFAULTS, LocalCluster, headHost } from '../../deploy/local-cluster.js';
import { DEFAULT_REPLICAS, DEFAULT_XMLRPC_ADDRESS, MAX_REPLICAS } from '../../shared/constants.js';
import { errorMessage } from '../../shared/errors.js';
import { formatSize, formatSizeExact, parseSize } from '../../shared/units.js';
import { hostPortArg, intArg, positiveIntArg, sizeOption } from '../options.js';
import { announceMetrics, registerClusterMetricsCommand } from './cluster-metrics.js';

interface VolumeSpec { name: string; size: number; replicas: number }

function volumeArg(value: string): VolumeSpec {
  const [name, size, replicas, extra] = value.split(':');
  if (!name || !size || extra !== undefined) throw new CommanderInvalid(`"${value}" must look like NAME:SIZE[:REPLICAS], e.g. demo:2G:3`);
  let bytes: number;
  try { bytes = parseSize(size); } catch (e) { throw new CommanderInvalid(errorMessage(e)); }
  const k = replicas === undefined ? DEFAULT_REPLICAS : Number(replicas);
  if (!Number.isInteger(k) || k < 1 || k > MAX_REPLICAS) throw new CommanderInvalid(`replicas must be 1..${MAX_REPLICAS}, got "${replicas}"`);
  return { name, size: bytes, replicas: k };
}

const DEMO_VOLUME: VolumeSpec = { name: 'demo', size: 2 * 1024 ** 3, replicas: DEFAULT_REPLICAS };

export function registerClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('a whole cluster on this machine, for trying VastSky and for tests');
  const d = LOCAL_CLUSTER_DEFAULTS;
  cluster.command('up')
    .description('start a manager, storage nodes with file-backed disks and head agents on loopback, and serve a demo volume over NBD')
    .option('--dir <dir>', 'where the cluster keeps its data and logs', '.vsky')
    .option('--servers <n>', 'storage servers (each on its own 127.0.0.x address)', positiveIntArg, d.servers)
    .option('--disks-per-server <m>', 'sparse disk files per server', positiveIntArg, d.disksPerServer)
    .addOption(sizeOption('--disk-size <size>', 'size of each disk file', d.diskSize))
    .addOption(sizeOption('--chunk-size <size>', 'chunk (segment) size', d.chunkSize))
    .option('--heads <n>', `head agents head1..headN (head1 on 127.0.0.1, head n > 1 on 127.0.0.${HEAD_HOST_BASE}+n, same ports)`, positiveIntArg, 1)
    .addOption(new Option('--volume <name:size[:replicas]>', 'volume to create and attach').argParser(volumeArg)
      .default(DEMO_VOLUME, `${DEMO_VOLUME.name}:${formatSizeExact(DEMO_VOLUME.size).replace(' ', '')}:${DEMO_VOLUME.replicas}`))
    .option('--manager <host:port>', 'manager listen address', hostPortArg, d.managerListen)
    .option('--nbd-port <port>', 'NBD port of the head agents', intArg, d.nbdPort)
    .option('--iscsi-port <port>', 'iSCSI portal port of the head agents', intArg, d.iscsiPort)
    .option('--xmlrpc <host:port>', 'address of the manager\'s VastSky XML-RPC API (docs/xmlrpc.md)', hostPortArg, DEFAULT_XMLRPC_ADDRESS)
    .option('--no-xmlrpc', 'do not serve the XML-RPC API')
    .option('--no-metrics', 'do not serve Prometheus metrics (by default every daemon serves them on a free port of its address; '
      + 'see `vsky cluster metrics` and docs/metrics.md)')
    .option('--insecure', 'plain gRPC everywhere (by default a CA and certificates are made in DIR/tls and every gRPC '
      + 'connection uses mutual TLS; docs/security.md)')
    .option('--log-level <level>', 'daemon log level', 'info')
    .action(async (o) => {
      const dir = resolve(o.dir as string);
      const vol = o.volume as VolumeSpec;
      const out = process.stdout;
      const heads = o.heads as number;
      out.write(`Starting a local cluster in ${dir}: ${o.servers} storage servers x ${o.disksPerServer} disks of ${formatSize(o.diskSize)}, chunk ${formatSize(o.chunkSize)}, ${heads} head agent${heads > 1 ? 's' : ''}\n`);
      let c: LocalCluster;
      try {
        // The manager's database is gone but the nodes' disks are here: rebuild it from them.
        const rebuildFromStorage = !existsSync(join(dir, 'manager', 'db')) && existsSync(join(dir, 'node1'));
        if (rebuildFromStorage) out.write(`The manager's database in ${join(dir, 'manager')} is missing but the storage nodes hold data: rebuilding it from them (--rebuild-from-storage)\n`);
        c = await LocalCluster.start({
          ...d, dir, servers: o.servers, disksPerServer: o.disksPerServer, diskSize: o.diskSize, chunkSize: o.chunkSize, rebuildFromStorage,
          managerListen: o.manager, nbdPort: o.nbdPort, iscsiPort: o.iscsiPort, logLevel: o.logLevel, heads,
          xmlrpcListen: o.xmlrpc === false ? undefined : o.xmlrpc, metrics: o.metrics !== false, tls: o.insecure !== true,
        });
      } catch (err) {
        const hosts = heads > 1 ? ` on 127.0.0.1 and ${headHost(2)}${heads > 2 ? `..${headHost(heads)}` : ''}` : '';
        process.stderr.write(`vsky cluster up: ${errorMessage(err)}\n  hint: is another cluster already running (ports ${o.manager}, ${o.nbdPort}, ${o.iscsiPort}${hosts})? Stop it, or pick others with --manager, --nbd-port and --iscsi-port.\n`);
        process.exit(1);
      }
      let stopping = false;
      const shutdown = (): void => {
        if (stopping) return;
        stopping = true;
        out.write('\nStopping the cluster...\n');
        c.stop().then(() => { out.write('Stopped.\n'); process.exit(0); }, () => process.exit(1));
      };
      process.on('SIGINT', shutdown);
      process.on('SIGTERM', shutdown);
      try {
        const urls = await c.ensureVolumeUrls(vol.name, vol.size, vol.replicas);
        const uri = urls.nbd;
        // The CLI finds ./.vsky/tls by itself (cli/tls-options.ts); elsewhere it needs the directory.
        const tlsFlag = c.tls.dir === undefined ? ' --insecure' : c.tls.dir === resolve('.vsky', 'tls') ? '' : ` --tls-dir ${c.tls.dir}`;
        const mgr = `${o.manager === d.managerListen ? '' : ` --manager ${c.managerAddress}`}${tlsFlag}`;
        out.write(`\nCluster ready: manager ${c.managerAddress}, ${o.servers} storage nodes, ${heads} head agent${heads > 1 ? 's' : ''}. Logs in ${dir}/logs.\n`);
        if (c.xmlrpcUrl) out.write(`  XML-RPC (VastSky 3.0 API): ${c.xmlrpcUrl}\n`);
        for (const h of c.headEndpoints) out.write(`  ${h.name}: NBD ${h.nbd}, iSCSI ${h.iscsi || '(none)'}, control gRPC ${h.grpc}\n`);
        out.write(c.tls.dir === undefined ? '  gRPC: plain, without TLS (--insecure)\n'
          : `  gRPC: mutual TLS with the CA and certificates (admin, readonly, one per daemon) in ${c.tls.dir}; `
            + `the CLI ${tlsFlag ? `takes${tlsFlag} (or VSKY_TLS_DIR)` : 'finds them from this directory'}; --tls-name readonly for a read-only look (docs/security.md)\n`);
        announceMetrics(c, dir, out);
        out.write(`Volume ${vol.name}: ${formatSize(vol.size)}, ${vol.replicas} replicas, attached to head1, served over NBD at\n${uri}\n${urls.iscsi ? `and over iSCSI at\n${urls.iscsi}\n` : ''}\n`);
        out.write(`Try:\n  nbdinfo ${uri}\n  qemu-img info ${uri}\n${urls.iscsi ? `  iscsi-inq ${urls.iscsi}\n` : ''}  node dist/cli/vsky.js status${mgr}\n  node dist/cli/vsky.js volume show ${vol.name}${mgr}\n  node dist/cli/vsky.js server list${mgr}\n  node dist/cli/vsky.js disk list${mgr}\n  node dist/cli/vsky.js cluster metrics --dir ${dir}\n\nPress Ctrl-C to stop.\n`);
      } catch (err) {
        process.stderr.write(`vsky cluster up: ${errorMessage(err)}\n`);
        shutdown();
      }
    });
  registerClusterMetricsCommand(cluster);
}
