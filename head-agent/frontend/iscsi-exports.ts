import type { IscsiAccess__Output } from '../../proto/generated/vsky/common/IscsiAccess.js';
import type { BlockDevice } from '../engine/block-device.js';
import { IQN_PREFIX, type IscsiTarget, type IscsiTargetRegistry, type TargetAccess } from './iscsi/target-registry.js';
import { createBlockUnit } from './scsi/block-unit.js';
import type { LogicalUnit } from './scsi/types.js';

// Attached volumes as iSCSI targets: one target IQN per volume with the
// volume as LUN 0, so access rules and hand-off are per volume. The access
// rules come from the manager with every attach (it holds the CHAP secrets).

export function targetIqn(volumeName: string): string {
  return `${IQN_PREFIX}${volumeName.toLowerCase()}`;
}

export function iscsiUrl(portal: string, volumeName: string): string {
  return `iscsi://${portal}/${targetIqn(volumeName)}/0`;
}

export function accessFromProto(a: IscsiAccess__Output | null | undefined): TargetAccess {
  if (!a) return { initiators: [] };
  return {
    initiators: a.initiators,
    chap: a.chapUser ? { user: a.chapUser, secret: a.chapSecret } : undefined,
    mutualChap: a.mutualUser ? { user: a.mutualUser, secret: a.mutualSecret } : undefined,
  };
}

interface Entry { target: IscsiTarget; device: BlockDevice }

export class IscsiExports implements IscsiTargetRegistry {
  private readonly byIqn = new Map<string, Entry>();

  /** Exports (or updates the access rules of) a volume; the unit survives re-attaches of the same device. */
  expose(device: BlockDevice, volumeId: number, access: TargetAccess): IscsiTarget {
    const iqn = targetIqn(device.name);
    const existing = this.byIqn.get(iqn);
    if (existing !== undefined && existing.device === device) {
      existing.target.access = access;
      return existing.target;
    }
    const unit: LogicalUnit = createBlockUnit(device, { volumeId, volumeName: device.name });
    const target: IscsiTarget = { iqn, luns: new Map([[0, unit]]), access };
    this.byIqn.set(iqn, { target, device });
    return target;
  }

  remove(volumeName: string): void {
    this.byIqn.delete(targetIqn(volumeName));
  }

  lookup(iqn: string): IscsiTarget | undefined {
    return this.byIqn.get(iqn.toLowerCase())?.target;
  }

  list(): IscsiTarget[] {
    return [...this.byIqn.values()].map((e) => e.target);
  }
}
