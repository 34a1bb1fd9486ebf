import type { VolumeRecord } from '../types.js';
import type { XStruct } from './codec.js';
import type { XmlRpcContext } from './context.js';

// VastSky lvol info's `associated_to` / `associated_from` (vastsky-api.md
// 2.x listLogicalVolumes) from our snapshot relations (docs/snapshots.md):
// a snapshot is associated to its origin ({lvolid: origin, type:
// 'snapshot'}), and the origin lists its snapshots in associated_from, as in
// VastSky. Ours on top: a clone is associated to the snapshot it reads from
// ({lvolid: snapshot, type: 'clone'}), which lists its clones. Volumes without
// an lvolid are left out (listLogicalVolumes leaves them out too).

export interface Association { lvolid: number; type: 'snapshot' | 'clone' }

export function associations(ctx: XmlRpcContext, v: VolumeRecord): { to: XStruct[]; from: XStruct[] } {
  const vols = ctx.core.volumes;
  const to: Association[] = [];
  const from: Association[] = [];
  const add = (list: Association[], other: VolumeRecord | undefined, type: Association['type']) => {
    if (other?.intId !== undefined) list.push({ lvolid: other.intId, type });
  };
  if (v.kind === 'snapshot' && v.origin !== undefined) add(to, vols.byVolumeId(v.origin)?.volume, 'snapshot');
  const backing = v.backing === undefined ? undefined : vols.byVolumeId(v.backing)?.volume;
  // A clone reads from a snapshot it is not the origin of (a snapshotted volume reads from its own snapshot).
  if (v.kind !== 'snapshot' && backing !== undefined && backing.origin !== v.id) add(to, backing, 'clone');
  for (const other of vols.list()) {
    if (other.kind === 'snapshot' && other.origin === v.id) add(from, other, 'snapshot');
    else if (v.kind === 'snapshot' && other.kind !== 'snapshot' && other.backing === v.id && v.origin !== other.id) add(from, other, 'clone');
  }
  from.sort((a, b) => a.lvolid - b.lvolid);
  return { to: to.map((a) => ({ ...a })), from: from.map((a) => ({ ...a })) };
}
