import type { ManagerCore } from '../core.js';
import type { HeadRecord, ServerRecord, VolumeRecord } from '../types.js';
import type { XStruct, XValue } from './codec.js';
import type { IntIds } from './ids.js';
import { lookupVolume } from './params.js';

// What every XML-RPC method gets: the manager's core (the same calls gRPC
// makes, manager/grpc-service.ts) and the integer ids.

export interface XmlRpcContext {
  core: ManagerCore;
  ids: IntIds;
  /** Told of every call once answered (the manager's API metrics): the method ('' when none could be decoded), its time, whether it succeeded. */
  onCall?: (method: string, seconds: number, ok: boolean) => void;
}

/** A method: the request struct (ver already checked) -> the response value. */
export type Method = (ctx: XmlRpcContext, data: XStruct) => Promise<XValue>;

/** VastSky's ALLOC_PRIORITY (the `priority` of hsvr, ssvr and pdsk entries). */
export const PRIORITY = { HIGH: 1, LOW: 2, EVACUATE: 3, OFFLINE: 4, FAULTY: 5, HALT: 6 } as const;

export function volumeOf(ctx: XmlRpcContext, data: XStruct, prefix = ''): VolumeRecord {
  return lookupVolume(ctx.ids, (n) => ctx.core.volumes.find(n)?.volume, data, prefix);
}

/** The host part of HOST:PORT ("[::1]:7" -> "::1"). */
export function hostOf(address: string): string {
  const m = /^\[([^\]]*)\](?::\d+)?$/.exec(address);
  if (m) return m[1]!;
  const i = address.lastIndexOf(':');
  return i > 0 && address.indexOf(':') === i ? address.slice(0, i) : address;
}

/** ip_data of a head or server: the distinct hosts of its addresses. */
export function ipData(r: HeadRecord | ServerRecord): string[] {
  const addrs = 'nbdAddress' in r ? [r.controlAddress, r.nbdAddress] : [r.dataAddress, r.controlAddress];
  return [...new Set(addrs.filter(Boolean).map(hostOf))];
}

/** The hsvrid of a head id ('' or unknown: 0). */
export function hsvridOf(ctx: XmlRpcContext, headId: string | undefined): number {
  return headId ? (ctx.core.registry.head(headId)?.intId ?? 0) : 0;
}
