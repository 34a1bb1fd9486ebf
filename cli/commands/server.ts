import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { hostPortArg, intArg, labelOption } from '../options.js';
import { waitForDrain } from '../drain-progress.js';

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('storage servers: list, add, remove');

  adminCommand(server, 'list', 'list storage servers and their state').action((o) => withManager(o, async (m) => {
    const { servers } = await call(m, 'ListServers', {});
    emit(o, servers, () => printTable(servers.map((s) => ({
      ...s, state: s.draining ? `${s.state},draining` : s.state, lastSeen: s.lastHeartbeatMs ? `${Math.round((Date.now() - s.lastHeartbeatMs) / 1000)}s ago` : '-',
    })), { name: 'NAME', serverId: 'ID', state: 'STATE', dataAddress: 'DATA', controlAddress: 'CONTROL', diskCount: 'DISKS', labels: 'LABELS', lastSeen: 'HEARTBEAT', ssvrid: 'SSVRID' }));
  }));

  adminCommand(server, 'add', 'register a running storage node by its control address')
    .argument('<control-address>', 'HOST:PORT of the node\'s control (gRPC) port', hostPortArg)
    .addOption(labelOption('--label <key=value>', 'failure-domain label, e.g. rack=r1 (repeatable)'))
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

  adminCommand(server, 'remove', 'remove a storage server: the replicas on its disks are first copied elsewhere (drain), keeping full redundancy')
    .argument('<server>', 'server id or name')
    .option('--no-wait', 'return once the drain has started (watch it with `vsky server list` / `vsky disk list`)')
    .option('--interval <ms>', 'progress refresh period while waiting', intArg, 1000)
    .option('--force', 'remove at once even if it holds chunks: its replicas are lost and rebuilt elsewhere (less redundancy meanwhile)')
    .action((name: string, o) => withManager(o, async (m) => {
      let s = await call(m, 'RemoveServer', { server: name, force: Boolean(o.force) });
      if (s.draining && o.wait) {
        const { disks } = await call(m, 'ListDisks', { server: s.serverId });
        if (!o.json) process.stdout.write(`draining server ${s.name}: the chunks on its ${disks.filter((d) => d.draining).length} disk(s) are copied elsewhere first\n`);
        await waitForDrain(m, { diskIds: disks.filter((d) => d.state !== 'removed').map((d) => d.diskId), label: `server ${s.name}`, intervalMs: o.interval, quiet: Boolean(o.json) });
        s = (await call(m, 'ListServers', {})).servers.find((x) => x.serverId === s.serverId) ?? s;
      }
      emit(o, s, () => process.stdout.write(s.state === 'removed' ? `removed server ${s.name}\n` : `server ${s.name} is draining; it is removed once its disks are empty (see \`vsky disk list\`)\n`));
    }));
}
