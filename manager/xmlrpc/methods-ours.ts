import type { HeadRecord } from '../types.js';
import type { XStruct, XValue } from './codec.js';
import { volumeOf, type Method, type XmlRpcContext } from './context.js';
import { errnoFault } from './faults.js';
import { flagParam, has, lookupById, mand } from './params.js';

// What VastSky-TS has and VastSky 3.0 had not, in VastSky's style (one
// struct with ver, errno faults; docs/xmlrpc.md): the write lease's live
// hand-off between two heads (docs/leases.md) and iSCSI access rules.
// Storage jobs are in methods-jobs.ts; createClone sits beside createSnapshot in methods-volumes.ts.

function headOf(ctx: XmlRpcContext, data: XStruct): HeadRecord {
  mand(data, 'hsvrid');
  const head = lookupById(data, 'hsvrid', (id) => ctx.ids.head(id));
  if (!head) throw errnoFault('EINVAL', 'no head server with that hsvrid (see listHeadServers)');
  return head;
}


/** Live migration: the head exports the volume as a standby next to the holder; the lease follows its first I/O. */
const attachLogicalVolumeStandby: Method = async (ctx, data) => {
  const head = headOf(ctx, data);
  const v = volumeOf(ctx, data);
  await ctx.core.attachments.attach(v.name, head.id, { migrate: true });
  return 0;
};

/** Moves the write lease to the standby head now. */
const handoffLogicalVolume: Method = async (ctx, data) => {
  const head = headOf(ctx, data);
  const v = volumeOf(ctx, data);
  const m = await ctx.core.leases.handoff(v.name, head.id);
  return { epoch: m.epoch, clean: m.clean, wait_ms: m.waitMs };
};

/** A holder that died: attach to another head once its lease expired (EBUSY says how long is left), or now with force. */
const takeoverLogicalVolume: Method = async (ctx, data) => {
  const head = headOf(ctx, data);
  const v = volumeOf(ctx, data);
  await ctx.core.attachments.attach(v.name, head.id, { force: flagParam(data, 'force') });
  return 0;
};

/** Detaches one head (the source after a migration, or a called-off destination); the lease moves first if it holds it. */
const detachLogicalVolumeFromHead: Method = async (ctx, data) => {
  const head = headOf(ctx, data);
  const v = volumeOf(ctx, data);
  await ctx.core.leases.detachHead(v.name, head.id, flagParam(data, 'force'));
  return 0;
};

function strings(data: XStruct, key: string): string[] | undefined {
  if (!has(data, key)) return undefined;
  const v: XValue = data[key];
  if (!Array.isArray(v) || !v.every((x): x is string => typeof x === 'string')) throw errnoFault('EINVAL', `${key} must be an array of strings`);
  return v;
}

function text(data: XStruct, key: string): string | undefined {
  if (!has(data, key)) return undefined;
  if (typeof data[key] !== 'string') throw errnoFault('EINVAL', `${key} must be a string`);
  return data[key] as string;
}

/** Who may log in to the volume's iSCSI target: initiator names and CHAP (one-way, mutual). Replaces the rules. */
const setAccessRules: Method = async (ctx, data) => {
  const v = volumeOf(ctx, data);
  await ctx.core.attachments.setAccess(v.name, {
    initiators: strings(data, 'initiators'), chapUser: text(data, 'chap_user'), chapSecret: text(data, 'chap_secret'),
    mutualUser: text(data, 'mutual_user'), mutualSecret: text(data, 'mutual_secret'),
  });
  return 0;
};

/** The volume's access rules, without the secrets. */
const getAccessRules: Method = async (ctx, data) => {
  const a = volumeOf(ctx, data).access;
  return { initiators: a?.initiators ?? [], chap_user: a?.chapUser ?? '', mutual_user: a?.mutualUser ?? '' };
};

export const ourMethods: Record<string, Method> = {
  attachLogicalVolumeStandby, handoffLogicalVolume, takeoverLogicalVolume, detachLogicalVolumeFromHead,
  setAccessRules, getAccessRules,
};
