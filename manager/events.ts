import { InvalidArgumentError, errorMessage } from '../shared/errors.js';
import { moduleLogger } from '../shared/logger.js';
import type { Event } from '../proto/generated/vsky/manager/Event.js';
import { EVENT_KEYS, keys, type BatchEvent, type EventSink, type ManagerStore, type StoreBatch } from './store.js';
import { EVENT_KINDS, type EventDetails, type EventKind, type EventRecord } from './types.js';

export type { EventDetails, EventKind, EventRecord } from './types.js';

// The manager's append-only event log: every state change (a server, disk or
// head up or down, a stale mark, a spare placed, a resync or drain starting
// and ending, a volume created, attached, handed off, detached, deleted,
// chunks freed) with its time, what it is about and why. This is what
// VastSky's listEvents promised.
//
// Entries live in the manager's LevelDB as `event/<seq, 20 digits>`, so keys
// sort by sequence number; the sequence continues across restarts. An event
// that belongs to a state change rides in the batch that records the change
// (`batch.event(...)` or `recordIn(batch, ...)`): both commit, or neither.
// Numbers are given when the batch is issued (ManagerStore.write), which is
// the order batches commit in, so a reader following the log with `afterSeq`
// never misses one. The newest entries are also kept in memory for fast
// reads; the oldest beyond `retention` are deleted in the background.

const log = moduleLogger('manager.events');

/** Events kept (the oldest beyond are deleted). */
export const DEFAULT_EVENT_RETENTION = 100_000;
/** Events kept in memory for fast reads. */
const DEFAULT_RING = 4096;
/** `list` returns at most this many; it returns DEFAULT_EVENT_LIMIT when asked for none. */
export const MAX_EVENT_LIMIT = 10_000;
export const DEFAULT_EVENT_LIMIT = 1000;

export interface EventLogOptions {
  /** Events kept (default DEFAULT_EVENT_RETENTION). */
  retention?: number;
  /** Events kept in memory (default 4096, at most `retention`). */
  ringSize?: number;
  now?: () => number;
}

export interface EventQuery {
  /**
   * Omitted: the newest `limit` matching events. A number (0 included): the
   * oldest `limit` matching events with a greater seq; to follow the log,
   * pass the last seq seen.
   */
  afterSeq?: number;
  /** At most this many (default DEFAULT_EVENT_LIMIT, at most MAX_EVENT_LIMIT). */
  limit?: number;
  /** Exactly this target ('volume:vm1'), or a prefix ending in '*' ('volume:*'). */
  target?: string;
  /** Exactly this kind ('volume.attached'), a family ('resync': resync.*), or a prefix ending in '*'. */
  kind?: string;
}

export class EventLog {
  /** Newest events, oldest first; every committed event from ring[0].seq on. */
  private ring: EventRecord[] = [];
  private nextSeq: number;
  private committedSeq: number;
  /** Lowest seq that may still be on disk. */
  private firstSeq: number;
  private trimming: Promise<void> | undefined;
  private readonly retention: number;
  private readonly ringSize: number;
  private readonly now: () => number;

  private constructor(private readonly store: ManagerStore, first: number, last: number, ring: EventRecord[], opts: EventLogOptions) {
    this.retention = Math.max(1, Math.floor(opts.retention ?? DEFAULT_EVENT_RETENTION));
    this.ringSize = Math.max(1, Math.min(this.retention, Math.floor(opts.ringSize ?? DEFAULT_RING)));
    this.now = opts.now ?? Date.now;
    this.ring = ring.slice(-this.ringSize);
    this.nextSeq = last + 1;
    this.committedSeq = last;
    this.firstSeq = first;
  }

  /** Reads where the log stands (its last sequence number, the newest entries) and hooks into the store's batches. */
  static async open(store: ManagerStore, opts: EventLogOptions = {}): Promise<EventLog> {
    const range = { gte: EVENT_KEYS.gte, lt: EVENT_KEYS.lt };
    const ringSize = Math.max(1, Math.min(opts.retention ?? DEFAULT_EVENT_RETENTION, opts.ringSize ?? DEFAULT_RING));
    const newest = (await store.db.values({ ...range, reverse: true, limit: ringSize }).all()) as EventRecord[];
    const oldest = (await store.db.values({ ...range, limit: 1 }).all()) as EventRecord[];
    newest.reverse();
    const last = newest.at(-1)?.seq ?? 0;
    const first = oldest[0]?.seq ?? last + 1;
    const events = new EventLog(store, first, last, newest, opts);
    store.eventSink = events.sink;
    log.info({ events: last - first + 1 > 0 ? last - first + 1 : 0, latestSeq: last }, 'event log opened');
    return events;
  }

  /** The newest committed event's seq (0: none yet). */
  get latestSeq(): number {
    return this.committedSeq;
  }

  /**
   * Records an event in its own batch; never throws or rejects (a failure is
   * logged). Resolves once it is durable, with the record (undefined if it
   * could not be written).
   */
  record(kind: EventKind, target: string, reason: string, details: EventDetails = {}): Promise<EventRecord | undefined> {
    const failed = (err: unknown): undefined => {
      log.warn({ kind, target, reason, err: errorMessage(err) }, 'an event could not be recorded');
      return undefined;
    };
    try {
      const batch = this.store.batch();
      this.recordIn(batch, kind, target, reason, details);
      const event = batch.events[0];
      return this.store.write(batch).then(() => event?.stamped, failed);
    } catch (err) {
      return Promise.resolve(failed(err));
    }
  }

  /** Adds an event to a batch: it commits with the batch's changes. Never throws. */
  recordIn(batch: StoreBatch, kind: EventKind, target: string, reason: string, details: EventDetails = {}): void {
    try {
      batch.event(kind, target, reason, details);
      batch.events.at(-1)!.timeMs = this.now();
    } catch (err) {
      log.warn({ kind, target, err: errorMessage(err) }, 'an event could not be added to a batch');
    }
  }

  /**
   * Events, oldest first (newest last). See EventQuery: without `afterSeq`,
   * the newest `limit`; with it, the next `limit` after it. Filters by
   * target and kind. An unknown kind is an InvalidArgumentError.
   */
  async list(q: EventQuery = {}): Promise<EventRecord[]> {
    const limit = Math.min(MAX_EVENT_LIMIT, q.limit && q.limit > 0 ? Math.floor(q.limit) : DEFAULT_EVENT_LIMIT);
    const match = matcher(q);
    if (q.afterSeq !== undefined) {
      if (!Number.isFinite(q.afterSeq) || q.afterSeq < 0) throw new InvalidArgumentError(`invalid afterSeq ${q.afterSeq}: give 0 or the last seq you got`);
      return this.forward(q.afterSeq, limit, match);
    }
    return this.tail(limit, match);
  }

  /** Resolves when no trim of old events is running (tests). */
  async idle(): Promise<void> {
    while (this.trimming) await this.trimming;
  }

  private async forward(afterSeq: number, limit: number, match: (e: EventRecord) => boolean): Promise<EventRecord[]> {
    const out: EventRecord[] = [];
    const ring = this.ring;
    if ((ring.length > 0 && afterSeq >= ring[0]!.seq - 1) || afterSeq >= this.committedSeq) {
      for (let i = lowerBound(ring, afterSeq + 1); i < ring.length && out.length < limit; i++) if (match(ring[i]!)) out.push(ring[i]!);
      return out;
    }
    // Older than memory: read the disk (in pages, so a narrow filter does not load everything at once).
    await collectPages(this.store.db.values({ gt: keys.event(Math.floor(afterSeq)), lt: EVENT_KEYS.lt }), match, limit, out);
    return out;
  }

  private async tail(limit: number, match: (e: EventRecord) => boolean): Promise<EventRecord[]> {
    const out: EventRecord[] = [];
    const ring = this.ring;
    for (let i = ring.length - 1; i >= 0 && out.length < limit; i--) if (match(ring[i]!)) out.push(ring[i]!);
    const oldestInRing = ring[0]?.seq ?? this.committedSeq + 1;
    if (out.length < limit && oldestInRing > this.firstSeq) {
      await collectPages(this.store.db.values({ gte: EVENT_KEYS.gte, lt: keys.event(oldestInRing), reverse: true }), match, limit, out);
    }
    return out.reverse();
  }

  private readonly sink: EventSink = {
    stamp: (batch: StoreBatch, events: BatchEvent[]) => {
      const out: EventRecord[] = [];
      for (const e of events) {
        try {
          const r: EventRecord = { seq: this.nextSeq, timeMs: e.timeMs ?? this.now(), kind: e.kind, target: e.target, reason: e.reason, details: cleanDetails(e.details) };
          batch.putEvent(r);
          e.stamped = r;
          this.nextSeq++;
          out.push(r);
        } catch (err) {
          log.warn({ kind: e.kind, target: e.target, err: errorMessage(err) }, 'an event could not be numbered; dropped');
        }
      }
      return out;
    },
    committed: (records: EventRecord[]) => {
      try {
        for (const r of records) {
          this.ring.push(r);
          this.committedSeq = Math.max(this.committedSeq, r.seq);
        }
        if (this.ring.length > 2 * this.ringSize) this.ring.splice(0, this.ring.length - this.ringSize);
        this.trimSoon();
      } catch (err) {
        log.warn({ err: errorMessage(err) }, 'event log bookkeeping failed');
      }
    },
  };

  /** Deletes the oldest events beyond the retention, in the background, in chunks of about a tenth of it. */
  private trimSoon(): void {
    const slack = Math.max(1, Math.min(1000, Math.floor(this.retention / 10)));
    if (this.trimming || this.committedSeq - this.firstSeq + 1 <= this.retention + slack) return;
    const cutoff = this.committedSeq - this.retention + 1;
    const ringCut = lowerBound(this.ring, cutoff);
    if (ringCut > 0) this.ring.splice(0, ringCut);
    this.trimming = this.store.trimEvents(cutoff).then(() => {
      this.firstSeq = cutoff;
      log.debug({ below: cutoff }, 'old events deleted (retention)');
    }, (err: unknown) => {
      log.warn({ below: cutoff, err: errorMessage(err) }, 'deleting old events failed; retried after the next event');
    }).finally(() => {
      this.trimming = undefined;
    });
  }
}

/** The wire shape (proto/manager.proto Event): details as text. */
export function eventView(e: EventRecord): Event {
  const details: Record<string, string> = {};
  for (const [k, v] of Object.entries(e.details)) details[k] = String(v);
  return { seq: e.seq, timeMs: e.timeMs, kind: e.kind, target: e.target, reason: e.reason, details };
}

/** Index of the first event with seq >= `seq` (the ring is sorted by seq). */
function lowerBound(ring: EventRecord[], seq: number): number {
  let lo = 0;
  let hi = ring.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ring[mid]!.seq < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const KIND_SET = new Set<string>(EVENT_KINDS);
const FAMILIES = new Set(EVENT_KINDS.map((k) => k.slice(0, k.indexOf('.'))));

function matcher(q: EventQuery): (e: EventRecord) => boolean {
  const target = q.target ? pattern(q.target) : undefined;
  let kind: ((k: string) => boolean) | undefined;
  if (q.kind) {
    const k = q.kind;
    if (k.endsWith('*')) kind = pattern(k);
    else if (KIND_SET.has(k)) kind = (x) => x === k;
    else if (FAMILIES.has(k)) kind = (x) => x.startsWith(`${k}.`);
    else {
      throw new InvalidArgumentError(`unknown event kind "${k}": use one of ${EVENT_KINDS.join(', ')}; a family (${[...FAMILIES].join(', ')}); or a prefix ending in *`, { kind: k });
    }
  }
  return (e) => (!target || target(e.target)) && (!kind || kind(e.kind));
}

function pattern(p: string): (x: string) => boolean {
  if (!p.endsWith('*')) return (x) => x === p;
  const prefix = p.slice(0, -1);
  return (x) => x.startsWith(prefix);
}

/** Keeps string, finite number and boolean values (JSON-safe); drops the rest. */
function cleanDetails(d: EventDetails): EventDetails {
  const out: EventDetails = {};
  for (const [k, v] of Object.entries(d)) {
    if (typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v))) out[k] = v;
  }
  return out;
}

/** Reads events off the disk in pages of 1024 (a narrow filter never loads everything at once) until `out` holds `limit`. */
async function collectPages(
  it: { nextv(n: number): Promise<unknown[]>; close(): Promise<void> }, match: (e: EventRecord) => boolean, limit: number, out: EventRecord[],
): Promise<void> {
  try {
    while (out.length < limit) {
      const page = (await it.nextv(1024)) as EventRecord[];
      if (page.length === 0) return;
      for (const e of page) {
        if (match(e)) out.push(e);
        if (out.length >= limit) return;
      }
    }
  } finally {
    await it.close();
  }
}
