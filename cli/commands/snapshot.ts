import type { Command } from 'commander';
import { adminCommand, call, withManager } from '../admin.js';
import { emit, printTable } from '../output.js';
import { formatSize } from '../../shared/units.js';
import { intArg } from '../options.js';
import { submitted } from './job.js';

// vsky snapshot create|list|delete and vsky volume clone (docs/snapshots.md):
// a snapshot takes the volume's chunks (no data is copied) and is read-only;
// a clone is a thin volume that reads what it has not written from its snapshot.

export function registerSnapshotCommands(program: Command): void {
  const snapshot = program.command('snapshot').description('read-only point-in-time snapshots of volumes (clone them with vsky volume clone)');

  adminCommand(snapshot, 'create', 'snapshot a volume (no data copied: its current chunks become the snapshot\'s; it writes into new ones)')
    .argument('<volume>', 'the volume to snapshot')
    .argument('<name>', 'the snapshot\'s name (unique among volumes and snapshots)')
    .addHelpText('after', '\nThe volume must be detached or attached to a head that can pause it for the snapshot.\n'
      + 'Clone the snapshot into writable volumes with: vsky volume clone NAME NEWVOLUME\n'
      + 'Read it in place with: vsky volume attach NAME (exported read-only over NBD and iSCSI)')
    .action((vol: string, name: string, o) => withManager(o, async (m) => {
      const started = Date.now();
      const s = await call(m, 'CreateSnapshot', { volume: vol, name }, 60_000);
      emit(o, s, () => process.stdout.write(`created snapshot ${s.name} (id ${s.volumeId}) of ${vol} in ${Date.now() - started} ms: ${formatSize(s.size)}, `
        + `${s.allocatedSegments}/${s.segmentCount} segments with data\n`));
    }));

  adminCommand(snapshot, 'list', 'list snapshots (of one volume, or all)')
    .argument('[volume]', 'only the snapshots taken of this volume')
    .action((vol: string | undefined, o) => withManager(o, async (m) => {
      const { volumes } = await call(m, 'ListVolumes', {});
      if (vol && !volumes.some((v) => v.name === vol)) throw new Error(`no volume "${vol}": see vsky volume list`);
      const snaps = volumes.filter((v) => v.kind === 'snapshot' && (!vol || v.origin === vol));
      emit(o, snaps, () => printTable(snaps.map((v) => ({
        ...v, size: formatSize(v.size), created: new Date(Number(v.createdMs)).toISOString(), clones: v.dependents.join(',') || '-',
        origin: v.origin || '(deleted)', backing: v.backing || '-',
      })), { name: 'NAME', volumeId: 'ID', origin: 'ORIGIN', size: 'SIZE', created: 'CREATED', clones: 'DEPENDENTS', backing: 'BACKING', lvolid: 'LVOLID' }));
    }));

  adminCommand(snapshot, 'delete', 'delete a snapshot (its origin alone reads from it: merged into it first, as a job; refused while clones read from it)')
    .argument('<name>', 'snapshot name')
    .option('--no-wait', 'a merge: print the job and return (follow it with vsky job watch ID)')
    .addHelpText('after', '\nWhen the only volume reading from the snapshot is the volume it was taken of, that volume takes over\n'
      + 'what it still reads from it (segments it never wrote are handed back without a copy when it is detached;\n'
      + 'the rest is copied, as by vsky volume flatten), then the snapshot is deleted. Clones reading from it: refused.')
    .action((name: string, o) => withManager(o, async (m) => {
      const { volumes } = await call(m, 'ListVolumes', {});
      const s = volumes.find((v) => v.name === name);
      if (!s) throw new Error(`no snapshot "${name}": see vsky snapshot list`);
      if (s.kind !== 'snapshot') throw new Error(`${name} is a volume, not a snapshot: delete it with vsky volume delete ${name}`);
      if (s.origin && s.dependents.length === 1 && s.dependents[0] === s.origin) {
        const j = await call(m, 'SubmitJob', { jobId: '', kind: 'flatten', volume: s.origin, expectedGeneration: 0, args: { merge: name } });
        await submitted(o, m, j);
        return;
      }
      await call(m, 'DeleteVolume', { name }, 60_000);
      emit(o, { deleted: name }, () => process.stdout.write(`deleted snapshot ${name}\n`));
    }));

  const volume = program.commands.find((c) => c.name() === 'volume');
  if (!volume) return;
  adminCommand(volume, 'flatten', 'copy what a volume still reads from its snapshot into its own chunks, then drop the dependency (a storage job)')
    .argument('<name>', 'a volume with a backing (vsky volume show NAME: "backing: ..."), attached or detached')
    .option('--job-id <id>', 'the job\'s id (idempotent: the same id again returns the same job)')
    .option('--throttle-mibps <n>', 'copy at most this many MiB/s (0: unthrottled)', intArg, 0)
    .option('--no-wait', 'print the job and return (follow it with vsky job watch ID)')
    .addHelpText('after', '\nAttached: its head copies, under the copy-up locks, while the volume stays in use. Detached: the manager\n'
      + 'copies (attach is refused until the job ends). Follow it with vsky job watch ID; a manager restart resumes it.\n'
      + 'Afterwards the snapshot can be deleted (vsky snapshot delete SNAP) once nothing else reads from it.')
    .action((name: string, o) => withManager(o, async (m) => {
      const j = await call(m, 'SubmitJob', { jobId: o.jobId ?? '', kind: 'flatten', volume: name, expectedGeneration: 0,
        args: Number(o.throttleMibps) > 0 ? { throttle_mibps: String(o.throttleMibps) } : {} });
      await submitted(o, m, j);
    }));

  adminCommand(volume, 'clone', 'make a writable thin volume from a snapshot (no data copied: it reads what it has not written from the snapshot)')
    .argument('<snapshot>', 'a snapshot (vsky snapshot list)')
    .argument('<name>', 'the new volume')
    .action((snap: string, name: string, o) => withManager(o, async (m) => {
      const started = Date.now();
      const v = await call(m, 'CloneVolume', { snapshot: snap, name }, 60_000);
      emit(o, v, () => process.stdout.write(`created volume ${v.name} (id ${v.volumeId}) as a clone of ${snap} in ${Date.now() - started} ms: ${formatSize(v.size)}, ${v.replicas} replicas\n`));
    }));
}
