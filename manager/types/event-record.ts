/**
 * What the manager's event log (manager/events.ts) records: every state
 * change, with when, what it is about and why. A kind is "<subject>.<what>".
 */
export const EVENT_KINDS = [
  'server.added', 'server.up', 'server.failed', 'server.removed',
  'disk.added', 'disk.up', 'disk.failed', 'disk.removed',
  'head.up', 'head.failed', 'head.removed',
  'replica.stale', 'spare.placed',
  'resync.started', 'resync.requeued', 'resync.failed', 'resync.finished',
  'drain.started', 'drain.cancelled', 'drain.target_placed', 'drain.target_dropped', 'drain.converted', 'drain.finished',
  'volume.created', 'volume.create_failed', 'volume.deleted',
  'volume.attached', 'volume.attach_failed', 'volume.attach_dirty', 'volume.standby_attached', 'volume.detached', 'volume.standby_detached',
  'lease.handoff', 'lease.handoff_failed', 'lease.takeover', 'lease.resync_epoch',
  'gc.freed',
  'job.succeeded', 'job.failed', 'job.aborted', 'job.fenced',
  'intid.conflict', 'disk.bad_blocks', 'server.halted', 'head.halted',
  'segment.allocated', 'segment.allocate_failed', 'segment.freed', 'pool.threshold',
  'snapshot.created', 'volume.cloned', 'snapshot.merging',
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

/** Facts about an event (epochs, generation, heads, segment/slot, bytes...). */
export type EventDetails = Record<string, string | number | boolean>;

/** One entry of the event log, persisted as `event/<seq, 20 digits>`. */
export interface EventRecord {
  /** 1, 2, 3... in commit order; continues across restarts; never reused. */
  seq: number;
  /** When it happened (the manager's clock, ms since the epoch). */
  timeMs: number;
  kind: EventKind;
  /** What it is about: 'volume:NAME', 'disk:ID', 'server:NAME', 'head:NAME' or 'cluster'. */
  target: string;
  /** Why, for a person. */
  reason: string;
  details: EventDetails;
}
