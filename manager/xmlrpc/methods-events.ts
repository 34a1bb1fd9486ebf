import type { XStruct } from './codec.js';
import type { Method, XmlRpcContext } from './context.js';
import { errnoFault } from './faults.js';
import { has, isInt } from './params.js';
import { ctime } from './tree.js';
import { TARGET } from './methods-notify.js';

// listEvents from the manager's event log (manager/events.ts). VastSky 3.0's
// listEvents always answered [] (its body was commented out); ours has the
// documented entry {eventid, target, targetid, event, event_status} for every
// state change, plus our own members (kind, target_name, reason, time,
// details). Without an event log (an older core) it answers [] as VastSky did.

/** VastSky's EVENT and EVENT_STATUS. */
const EVENT = { NONE: 0, ABNORMAL: 1, RESYNC: 2, SHRED: 3 } as const;
const STATUS = { PENDING: 1, PROGRESS: 2, DONE: 3, CANCELED: 4, ERROR: 5 } as const;

interface LoggedEvent {
  seq: number;
  timeMs: number;
  kind: string;
  target: string;
  reason: string;
  details: Record<string, string | number | boolean>;
}
interface EventQuery { afterSeq?: number; limit?: number; target?: string; kind?: string }
interface EventSource { list(q: EventQuery): Promise<LoggedEvent[]> }

function eventSource(ctx: XmlRpcContext): EventSource | undefined {
  const events = (ctx.core as unknown as { events?: Partial<EventSource> }).events;
  return typeof events?.list === 'function' ? (events as EventSource) : undefined;
}

export function eventCode(kind: string): number {
  if (/^(resync|drain)\.|^spare\./.test(kind)) return EVENT.RESYNC;
  if (/(failed|stale)$/.test(kind) || kind === 'disk.bad_blocks') return EVENT.ABNORMAL;
  if (kind === 'gc.freed') return EVENT.SHRED;
  return EVENT.NONE;
}

export function eventStatus(kind: string): number {
  if (/failed$/.test(kind)) return STATUS.ERROR;
  if (/\.started$/.test(kind)) return STATUS.PROGRESS;
  if (/\.requeued$/.test(kind)) return STATUS.PENDING;
  if (/\.cancelled$/.test(kind)) return STATUS.CANCELED;
  return STATUS.DONE;
}

/** 'volume:vm1' -> [TARGET.LVOL, its lvolid]; ids of things gone since are 0. */
function targetOf(ctx: XmlRpcContext, target: string): [number, number] {
  const i = target.indexOf(':');
  const [type, ref] = i < 0 ? [target, ''] : [target.slice(0, i), target.slice(i + 1)];
  const { registry, volumes } = ctx.core;
  if (type === 'volume') return [TARGET.LVOL, volumes.find(ref)?.volume.intId ?? 0];
  if (type === 'disk') return [TARGET.PDSK, registry.disk(ref)?.intId ?? 0];
  if (type === 'server') return [TARGET.SSVR, registry.listServers().find((s) => s.name === ref || s.id === ref)?.intId ?? 0];
  if (type === 'head') return [TARGET.HSVR, registry.listHeads().find((h) => h.name === ref || h.id === ref)?.intId ?? 0];
  return [0, 0];
}

function query(data: XStruct): EventQuery {
  const q: EventQuery = {};
  for (const [key, field] of [['after_eventid', 'afterSeq'], ['limit', 'limit']] as const) {
    if (!has(data, key)) continue;
    const v = data[key];
    if (!isInt(v) || v < 0) throw errnoFault('EINVAL', `${key} must be an int >= 0`);
    q[field] = v;
  }
  for (const key of ['kind', 'target'] as const) {
    if (!has(data, key)) continue;
    if (typeof data[key] !== 'string') throw errnoFault('EINVAL', `${key} must be a string`);
    q[key] = data[key] as string;
  }
  return q;
}

const listEvents: Method = async (ctx, data) => {
  const q = query(data);
  const source = eventSource(ctx);
  if (!source) return [];
  const events = await source.list(q);
  return events.map((e) => {
    const [target, targetid] = targetOf(ctx, e.target);
    return {
      eventid: e.seq, target, targetid, event: eventCode(e.kind), event_status: eventStatus(e.kind),
      kind: e.kind, target_name: e.target, reason: e.reason, time: ctime(e.timeMs), details: { ...e.details },
    };
  });
};

export const eventMethods: Record<string, Method> = { listEvents };
