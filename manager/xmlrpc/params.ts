import type { DiskRecord, HeadRecord, ServerRecord, VolumeRecord } from '../types.js';
import { XmlRpcDouble, isStruct, type XStruct, type XValue } from './codec.js';
import { errnoFault, pythonFault } from './faults.js';
import type { IntIds } from './ids.js';

// Reading a request struct the way VastSky's storage manager does.

/** VastSky's XMLRPC_VERSION: every call's struct carries ver = 5. */
export const XMLRPC_VERSION = 5;

export function has(data: XStruct, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(data, key);
}

/** Python truthiness, as `if data.has_key(k) and data[k]` sees it. */
export function truthy(v: XValue): boolean {
  if (v === undefined || v === false || v === 0 || v === '') return false;
  if (v instanceof XmlRpcDouble) return v.value !== 0;
  if (Array.isArray(v)) return v.length > 0;
  if (isStruct(v)) return Object.keys(v).length > 0;
  return true;
}

/** The one struct of a call, as Python 2 fails without it (Fault 1), then the ver check (Fault 71). */
export function callStruct(params: XValue[]): XStruct {
  if (params.length === 0) throw pythonFault('IndexError', 'tuple index out of range');
  const first = params[0];
  if (!isStruct(first)) throw pythonFault('AttributeError', `'${pythonType(first)}' object has no attribute 'has_key'`);
  const ver = first.ver;
  const verOk = ver === XMLRPC_VERSION || (ver instanceof XmlRpcDouble && ver.value === XMLRPC_VERSION);
  if (!has(first, 'ver') || !verOk) throw errnoFault('EPROTO', `every call takes one struct with ver = ${XMLRPC_VERSION} (VastSky 3.0's XMLRPC_VERSION)`);
  if (params.length > 1) throw pythonFault('TypeError', `takes exactly 2 arguments (${params.length + 1} given)`);
  return first;
}

function pythonType(v: XValue): string {
  if (typeof v === 'number') return 'int';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'string') return 'str';
  if (v instanceof XmlRpcDouble) return 'float';
  if (Array.isArray(v)) return 'list';
  if (v === undefined) return 'NoneType';
  return 'instance';
}

/** vas_subr.mand_keys: EINVAL when a key is missing. */
export function mand(data: XStruct, ...keys: string[]): void {
  const missing = keys.filter((k) => !has(data, k));
  if (missing.length > 0) throw errnoFault('EINVAL', `missing ${missing.join(', ')}`);
}

/** An <int> (not a boolean, not a double), as VastSky's `type(x) == IntType`. */
export function isInt(v: XValue): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

/** An id as SQLite's integer affinity matches it: an int, or a string of digits (VASSR sends lvolid as a string). */
export function idValue(v: XValue): number | undefined {
  if (isInt(v)) return v;
  if (typeof v === 'string' && /^\s*[+-]?\d{1,15}\s*$/.test(v)) return Number(v);
  if (v instanceof XmlRpcDouble && Number.isSafeInteger(v.value)) return v.value;
  return undefined;
}

/** `__get_lvol_by_id_or_name(data, prefix)`: the id wins; neither given is EINVAL; not found is ENOENT. */
export function lookupVolume(ids: IntIds, byName: (n: string) => VolumeRecord | undefined, data: XStruct, prefix = ''): VolumeRecord {
  const idKey = `${prefix}lvolid`;
  const nameKey = `${prefix}lvolname`;
  if (has(data, idKey) && truthy(data[idKey])) {
    const id = idValue(data[idKey]);
    const v = id === undefined ? undefined : ids.volume(id);
    if (!v) throw errnoFault('ENOENT', `no volume with ${idKey} ${describe(data[idKey])}`);
    return v;
  }
  if (has(data, nameKey) && truthy(data[nameKey])) {
    const name = data[nameKey];
    const v = typeof name === 'string' ? byName(name) : undefined;
    if (!v) throw errnoFault('ENOENT', `no volume named ${describe(name)}`);
    return v;
  }
  throw errnoFault('EINVAL', `give ${idKey} (int) or ${nameKey} (string)`);
}

/** A head, storage server or disk by its integer id member (undefined: not a usable id, or none has it). */
export function lookupById<T extends HeadRecord | ServerRecord | DiskRecord>(
  data: XStruct, key: string, find: (id: number) => T | undefined,
): T | undefined {
  const id = idValue(data[key]);
  return id === undefined ? undefined : find(id);
}

/** A short, printable rendering of a request value for a fault string. */
export function describe(v: XValue): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}...` : v);
  if (v instanceof XmlRpcDouble) return `${v.value} (a double)`;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return `a value of type ${pythonType(v)}`;
}

/** An optional boolean parameter (absent: false). */
export function flagParam(data: XStruct, key: string): boolean {
  if (!has(data, key)) return false;
  if (typeof data[key] !== 'boolean') throw errnoFault('EINVAL', `${key} must be a boolean`);
  return data[key] as boolean;
}
