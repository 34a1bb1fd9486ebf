import { InvalidArgumentError, IoError, StaleEpochError, errorMessage } from '../../shared/errors.js';
import type { RequestCallback, RoutedTarget } from '../../shared/data-protocol/client/data-request.js';
import { decodeForwardResults, encodeRoute } from '../../shared/data-protocol/forward-codec.js';
import { Flag, Opcode, Status } from '../../shared/data-protocol/frame.js';
import { ReadOnlyChunkError } from '../../shared/data-protocol/status.js';
import type { ReplicaFailure } from './failure-handler.js';
import type { Replica } from './replica.js';

// Primary forwarding, the head's side (docs/replication-topology.md). With
// VSKY_REPLICATION=forward a mirror sends each WRITE once, as FORWARD_WRITE,
// to its first writable replica (the primary) with a route naming the others;
// the primary node writes it and forwards it unchanged (this head's epoch and
// flags) to them (shared/data-protocol/server/forwarder.ts), and its reply
// carries every replica's outcome. WRITE_ZEROES, DISCARD, write-intent MARKs
// and FLUSH still go to each replica from the head.
//
// What the head makes of the primary's answer (settleForward):
//  - OK: every member acknowledged;
//  - FORWARD_RESULTS: each member's own outcome, as if it had been sent to it
//    (a STALE_EPOCH from any of them is a fenced write: terminal, as in fan-out);
//  - a refusal by rule before forwarding (stale epoch, read-only, bad
//    request): that refusal for every member (nothing was written);
//  - anything else (the connection to the primary failed, no answer): the
//    primary failed, and whether the others got the write is unknown. The
//    write is sent again to the others under a new route generation: nodes
//    refuse a forward with an older generation than one they took
//    (STALE_ROUTE), so a late forward from that primary (paused, or its bytes
//    still queued) cannot land after the re-sent write and a later one.

/** How writes reach the replicas: from the head to each (fan-out) or through the first (forward). */
export type ReplicationMode = 'fanout' | 'forward';

let mode: ReplicationMode | undefined;

/** The head's replication mode: --replication, else VSKY_REPLICATION (fanout, the default, or forward), read once. */
export function replicationMode(): ReplicationMode {
  mode ??= parseReplicationMode(process.env.VSKY_REPLICATION ?? '', 'VSKY_REPLICATION');
  return mode;
}

/** Reads a replication mode ('' is the default, fanout); `source` names where it came from in the error. */
export function parseReplicationMode(value: string, source: string): ReplicationMode {
  const v = value.trim().toLowerCase();
  if (v === '' || v === 'fanout' || v === 'fan-out') return 'fanout';
  if (v === 'forward') return 'forward';
  throw new InvalidArgumentError(`${source}=${value}: expected fanout or forward (docs/replication-topology.md)`);
}

/** Sets the mode (the head agent's --replication; tests). undefined: read VSKY_REPLICATION again. */
export function setReplicationMode(m: ReplicationMode | undefined): void {
  mode = m;
}

/** One route: the members of one forwarded write, primary first, under one route generation. Immutable. */
export class ForwardGroup implements RoutedTarget {
  readonly members: readonly Replica[];
  readonly generation: number;
  readonly route: Buffer;
  readonly volumeId: number;
  readonly segment: number;
  readonly slot: number;

  constructor(members: readonly Replica[], generation: number) {
    const primary = members[0]!;
    this.members = members;
    this.generation = generation;
    this.route = encodeRoute(generation, members.slice(1).map((r) => ({ slot: r.slot, address: r.address })));
    this.volumeId = primary.volumeId;
    this.segment = primary.segment;
    this.slot = primary.slot;
  }

  get primary(): Replica {
    return this.members[0]!;
  }

  /** Called once per non-OK reply from the primary. */
  replyError(opcode: number, status: number, message: string): Error {
    if (status !== Status.FORWARD_RESULTS) return this.primary.replyError(Opcode.WRITE, status, message);
    try {
      return new ForwardResultsError(this, decodeForwardResults(message).map((r) => {
        const replica = this.members.find((m) => m.slot === r.slot);
        if (replica === undefined) throw new Error(`slot ${r.slot} is not in the route`);
        return { replica, error: r.status === Status.OK ? undefined : replica.replyError(Opcode.WRITE, r.status, r.message) };
      }));
    } catch (err) {
      return new IoError(`${this.primary.describe()}: unreadable forward results (${errorMessage(err)})`, { node: this.primary.address });
    }
  }
}

export interface MemberOutcome {
  replica: Replica;
  error: Error | undefined;
}

/** A FORWARD_RESULTS reply: each member's outcome. */
export class ForwardResultsError extends IoError {
  readonly outcomes: readonly MemberOutcome[];

  constructor(group: ForwardGroup, outcomes: readonly MemberOutcome[]) {
    const failed = outcomes.filter((o) => o.error !== undefined);
    super(`forwarded write through ${group.primary.describe()}: ${failed.length} of ${outcomes.length} replicas failed`, {
      node: group.primary.address,
    });
    this.outcomes = outcomes;
  }
}

/**
 * Records the primary's answer for every member of `group` (failures into
 * `failures`). Returns the members to send the write to again, when the
 * primary failed before telling what happened to them; else undefined.
 */
export function settleForward(group: ForwardGroup, err: Error | undefined, fua: boolean, failures: ReplicaFailure[]): readonly Replica[] | undefined {
  const members = group.members;
  if (err === undefined) {
    for (const m of members) m.noteWritten(fua);
    return undefined;
  }
  if (err instanceof ForwardResultsError) {
    let seen = 0;
    for (const o of err.outcomes) {
      o.replica.noteWritten(fua);
      if (o.error !== undefined) failures.push({ replica: o.replica, error: o.error });
      seen++;
    }
    // A member the primary did not report on: its failure, never taken as written.
    if (seen < members.length) {
      for (const m of members) {
        if (!err.outcomes.some((o) => o.replica === m)) failures.push({ replica: m, error: new IoError(`${m.describe()}: no outcome in the forward results`) });
      }
    }
    return undefined;
  }
  if (err instanceof StaleEpochError || err instanceof ReadOnlyChunkError || err instanceof InvalidArgumentError) {
    for (const m of members) failures.push({ replica: m, error: err });
    return undefined;
  }
  group.primary.noteWritten(fua);
  failures.push({ replica: group.primary, error: err });
  return members.slice(1);
}

/** What the router needs of a mirror's mutation (mirror-ops.ts MutationOp). */
export interface ForwardedWrite extends RequestCallback {
  readonly fua: boolean;
  epoch: number;
  offset: number;
  data: Buffer | undefined;
  remaining: number;
}

/** One mirror's sending side in forward mode: its route generation and its cached route. */
export class ForwardRouter {
  /** Raised whenever a primary failed with its forwards' fate unknown (resend). */
  generation = 1;
  private group: ForwardGroup | undefined;
  private groupReplicas: readonly Replica[] | undefined;
  private groupMask = 0;

  /** The route of every writable replica, cached while they and the generation stay the same (no allocation per write). */
  current(replicas: readonly Replica[]): ForwardGroup {
    let mask = 0;
    for (let i = 0; i < replicas.length; i++) if (replicas[i]!.writable) mask |= 1 << i;
    let group = this.group;
    if (group === undefined || this.groupReplicas !== replicas || this.groupMask !== mask || group.generation !== this.generation) {
      group = new ForwardGroup(replicas.filter((r) => r.writable), this.generation);
      this.group = group;
      this.groupReplicas = replicas;
      this.groupMask = mask;
    }
    return group;
  }

  /** A route of some writable replicas (a write-intent MARK failed on the others). */
  subset(members: readonly Replica[]): ForwardGroup {
    return new ForwardGroup(members, this.generation);
  }

  /** One FORWARD_WRITE to the group's primary; the op waits for its one reply. */
  send(op: ForwardedWrite, group: ForwardGroup, epoch: number, offset: number, data: Buffer): void {
    op.epoch = epoch;
    op.offset = offset;
    op.data = data;
    op.remaining = 1;
    group.primary.conn.submit(group, Opcode.FORWARD_WRITE, op.fua ? Flag.FUA : 0, epoch, offset, data.length, data, group.route.length, op);
  }

  /**
   * The primary failed with the others' fate unknown: the write goes to them
   * again (the next one is the primary) under a new route generation, which
   * their nodes then hold against any late forward from the failed primary.
   */
  resend(op: ForwardedWrite, rest: readonly Replica[]): void {
    this.generation++;
    this.send(op, new ForwardGroup(rest, this.generation), op.epoch, op.offset, op.data!);
  }
}
