import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { hostPortArg, labelArg } from '../options.js';

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('storage servers: list, add, remove');

  adminCommand(server, 'list', 'list storage servers and their state').action((o) => withManager(o, async (m) => {
    const { servers } = await call(m, 'ListServers', {});
    emit(o, servers, () => printTable(servers.map((s) => ({
      ...s, lastSeen: s.lastHeartbeatMs ? `${Math.round((Date.now() - s.lastHeartbeatMs) / 1000)}s ago` : '-',
    })), { name: 'NAME', serverId: 'ID', state: 'STATE', dataAddress: 'DATA', controlAddress: 'CONTROL', diskCount: 'DISKS', labels: 'LABELS', lastSeen: 'HEARTBEAT' }));
  }));

  adminCommand(server, 'add', 'register a running storage node by its control address')
    .argument('<control-address>', 'HOST:PORT of the node\'s control (gRPC) port', hostPortArg)
    .option('--label <key=value>', 'failure-domain label, e.g. rack=r1 (repeatable)', labelArg, {})
    .action((address: string, o) => withManager(o, async (m) => {
      const s = await call(m, 'AddServer', { controlAddress: address, labels: o.label });
      emit(o, s, () => process.stdout.write(`added server ${s.name} (${s.serverId}) with ${s.diskCount} disk(s)\n`));
    }));

  adminCommand(server, 'fail', 'report a server as gone (for hardware health checkers): its replicas are rebuilt elsewhere')
    .argument('<server>', 'server id or name')
    .option('--reason <text>', 'why, for the log', 'reported by an administrator')
    .action((name: string, o) => withManager(o, async (m) => {
      await call(m, 'FailServer', { server: name, reason: o.reason });
      emit(o, { failed: name }, () => process.stdout.write(`server ${name} marked failed; watch the rebuild with \`vsky resync watch\`\n`));
    }));

  adminCommand(server, 'remove', 'remove a storage server that holds no chunks')
    .argument('<server>', 'server id or name')
    .option('--force', 'remove even if it still holds chunks (their replicas are lost)')
    .action((name: string, o) => withManager(o, async (m) => {
      await call(m, 'RemoveServer', { server: name, force: Boolean(o.force) });
      emit(o, { removed: name }, () => process.stdout.write(`removed server ${name}\n`));
    }));
}
