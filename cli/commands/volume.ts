import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { positiveIntArg, repeatableOption, sizeArg } from '../options.js';
import { formatSize } from '../../shared/units.js';
import { DEFAULT_REPLICAS } from '../../shared/constants.js';

export function registerVolumeCommands(program: Command): void {
  const volume = program.command('volume').description('logical volumes: create, delete, list, show, attach, detach');

  adminCommand(volume, 'create', 'create a mirrored volume (thin: a segment gets its chunks at its first write; --thick reserves them all now)')
    .argument('<name>', 'volume name: letters, digits, . _ -')
    .requiredOption('--size <size>', 'volume size, e.g. 10G', sizeArg)
    .option('--replicas <k>', 'copies of every segment', positiveIntArg, DEFAULT_REPLICAS)
    .option('--spread <label>', 'put replicas on distinct values of this server label, e.g. rack')
    .option('--thick', 'reserve every chunk now (fails unless the pool holds the whole volume; default: thin, docs/thin-provisioning.md)')
    .action((name: string, o) => withManager(o, async (m) => {
      const v = await call(m, 'CreateVolume', { name, size: o.size, replicas: o.replicas, spreadLabel: o.spread ?? '', thick: o.thick === true }, 120_000);
      emit(o, v, () => process.stdout.write(`created ${v.thin ? 'thin' : 'thick'} volume ${v.name} (id ${v.volumeId}): ${formatSize(v.size)}, ${v.replicas} replicas, ${v.segmentCount} segments`
        + `${v.thin ? ' (none allocated yet: each gets its chunks at its first write)' : ''}\n`));
    }));

  adminCommand(volume, 'delete', 'delete a volume (it must be detached)')
    .argument('<name>', 'volume name')
    .action((name: string, o) => withManager(o, async (m) => {
      await call(m, 'DeleteVolume', { name }, 60_000);
      emit(o, { deleted: name }, () => process.stdout.write(`deleted volume ${name}\n`));
    }));

  adminCommand(volume, 'list', 'list volumes').action((o) => withManager(o, async (m) => {
    const { volumes } = await call(m, 'ListVolumes', {});
    emit(o, volumes, () => printTable(volumes.map((v) => ({ ...v, size: formatSize(v.size), prov: v.thin ? 'thin' : 'thick', allocated: allocatedText(v),
      kind: v.kind === 'snapshot' ? `snapshot of ${v.origin || '(deleted)'}` : 'volume', backing: v.backing || '-' })),
      { name: 'NAME', volumeId: 'ID', kind: 'KIND', backing: 'BACKING', size: 'SIZE', prov: 'PROV', allocated: 'ALLOCATED', replicas: 'K', segmentCount: 'SEGMENTS', state: 'STATE', generation: 'GEN', epoch: 'EPOCH', attachedHead: 'HEAD', standbyHead: 'STANDBY', lease: 'LEASE', lvolid: 'LVOLID' }));
  }));

  adminCommand(volume, 'show', 'show a volume and where each replica lives')
    .argument('<name>', 'volume name')
    .action((name: string, o) => withManager(o, async (m) => {
      const d = await call(m, 'ShowVolume', { name });
      emit(o, d, () => {
        const v = d.info!;
        process.stdout.write(`volume ${v.name} (id ${v.volumeId}): ${formatSize(v.size)}${v.thin ? ` thin, ${allocatedText(v)} allocated` : ''}, ${v.replicas} replicas, state ${v.state}, generation ${v.generation}${v.legality === 'DIRTY' ? ` DIRTY (${v.dirtyJob})` : ''}, epoch ${v.epoch}${v.attachedHead ? `, attached to ${v.attachedHead} at ${v.nbdUri}` : ''}\n`);
        if (v.kind === 'snapshot') process.stdout.write(`snapshot of ${v.origin || '(a deleted volume)'} (read-only)\n`);
        if (v.backing) process.stdout.write(`backing: ${v.backing} (regions not written here read from it)\n`);
        if (v.dependents.length > 0) process.stdout.write(`read from by: ${v.dependents.join(', ')}\n`);
        if (v.attachedHead) {
          process.stdout.write(`write lease: ${v.lease} by ${v.attachedHead} (renewed ${(v.leaseRenewedMsAgo / 1000).toFixed(1)} s ago)`
            + `${v.standbyHead ? `; standby (live migration) ${v.standbyHead} at ${v.standbyNbdUri}` : ''}\n`);
        }
        const rows = (d.map?.segments ?? []).flatMap((s) => s.replicas.map((r) => ({ segment: s.index, ...r })));
        printTable(rows, { segment: 'SEGMENT', slot: 'SLOT', serverId: 'SERVER', dataAddress: 'DATA', diskId: 'DISK', chunkIndex: 'CHUNK', state: 'STATE' });
      });
    }));

  adminCommand(volume, 'attach', 'attach a volume to a head agent (it gets the write lease) and print its NBD URI and iSCSI URL')
    .argument('<name>', 'volume name')
    .option('--head <head>', 'head id or name (default: the only head)')
    .option('--migrate', 'live migration: attach to this head as well, as a standby next to the holder; '
      + 'the write lease follows the first I/O on it (or vsky volume handoff)')
    .option('--force', 'take the volume over although its holder\'s lease is still renewed (only if the holder is surely dead; logged)')
    .option('--allow-dirty', 'attach a DIRTY volume (a storage job on it was aborted, failed or fenced) anyway; logged and recorded in the event log')
    .addHelpText('after', '\nA volume held by a head whose heartbeats stopped for the lease TTL (vsky manager --lease-ttl) is taken over\n'
      + 'by attaching it elsewhere; the old holder is fenced by the new epoch. Before that, attach says how long to wait.\n'
      + 'A DIRTY volume is refused until a storage job on it succeeds (re-run the job, or vsky volume wipe), or with --allow-dirty.')
    .action((name: string, o) => withManager(o, async (m) => {
      const r = await call(m, 'AttachVolume', { name, head: o.head ?? '', migrate: Boolean(o.migrate), force: Boolean(o.force), allowDirty: Boolean(o.allowDirty) }, 60_000);
      // First line: the NBD URI; second: the iSCSI URL when the head has a portal.
      emit(o, r, () => process.stdout.write(`${r.nbdUri}\n${r.iscsiUrl ? `${r.iscsiUrl}\n` : ''}`));
    }));

  adminCommand(volume, 'access', 'set who may log in to the volume over iSCSI (initiator ACL, CHAP)')
    .argument('<name>', 'volume name')
    .addOption(repeatableOption('--initiator <iqn>', 'allow this initiator name (repeatable); none given: any initiator'))
    .option('--chap-user <user>', 'one-way CHAP: user the initiator must log in as')
    .option('--chap-secret <secret>', 'one-way CHAP secret (12-255 characters); or set VSKY_CHAP_SECRET')
    .option('--mutual-user <user>', 'mutual CHAP: name the target answers with')
    .option('--mutual-secret <secret>', 'mutual CHAP secret; or set VSKY_MUTUAL_SECRET')
    .action((name: string, o) => withManager(o, async (m) => {
      const access = {
        initiators: o.initiator as string[],
        chapUser: o.chapUser ?? '', chapSecret: o.chapSecret ?? (o.chapUser ? process.env.VSKY_CHAP_SECRET ?? '' : ''),
        mutualUser: o.mutualUser ?? '', mutualSecret: o.mutualSecret ?? (o.mutualUser ? process.env.VSKY_MUTUAL_SECRET ?? '' : ''),
      };
      const v = await call(m, 'SetVolumeAccess', { name, access }, 60_000);
      emit(o, v, () => process.stdout.write(`volume ${name}: iSCSI initiators ${v.iscsiInitiators.length ? v.iscsiInitiators.join(', ') : 'any'}, CHAP ${v.iscsiMutualChap ? 'mutual' : v.iscsiChap ? 'one-way' : 'off'}${v.attachedHead ? ' (applied now)' : ' (applied at the next attach)'}\n`));
    }));

  adminCommand(volume, 'handoff', 'move a volume\'s write lease to its standby head now (live migration switch-over)')
    .argument('<name>', 'volume name')
    .requiredOption('--to <head>', 'the standby head (attached with --migrate)')
    .action((name: string, o) => withManager(o, async (m) => {
      const r = await call(m, 'HandoffVolume', { name, to: o.to }, 60_000);
      emit(o, r, () => process.stdout.write(`volume ${name}: write lease now held by ${r.info?.attachedHead} with epoch ${r.epoch} `
        + `(${r.clean ? 'handed off' : 'taken over after the holder\'s lease expired'} in ${r.waitMs} ms)\n`));
    }));

  adminCommand(volume, 'detach', 'detach a volume from its head agents (flushes first)')
    .argument('<name>', 'volume name')
    .option('--head <head>', 'detach from this head only (a live migration\'s source or destination); '
      + 'the source hands the write lease to the other head first')
    .option('--force', 'forget the attachment even if the head cannot be reached')
    .action((name: string, o) => withManager(o, async (m) => {
      await call(m, 'DetachVolume', { name, force: Boolean(o.force), head: o.head ?? '' }, 60_000);
      emit(o, { detached: name, head: o.head ?? '' }, () => process.stdout.write(`detached volume ${name}${o.head ? ` from ${o.head}` : ''}\n`));
    }));
}

/** "512 MiB (2/80 seg)": what a volume has allocated (one copy). */
function allocatedText(v: { allocatedBytes: number; allocatedSegments: number; segmentCount: number; writtenBytes: number }): string {
  return `${formatSize(v.allocatedBytes)} (${v.allocatedSegments}/${v.segmentCount} seg, ${formatSize(v.writtenBytes)} written)`;
}
