import { errorMessage, type VskyError } from '../../errors.js';
import { moduleLogger } from '../../logger.js';
import { NodeConnection } from '../client/node-connection.js';
import type { RequestCallback, RequestTarget, RoutedTarget } from '../client/data-request.js';
import { decodeRoute, encodeForwardResults, encodeRoute, type ForwardResult } from '../forward-codec.js';
import { Opcode, Status } from '../frame.js';
import { errorForStatus, statusForError } from '../status.js';

// The primary's side of primary forwarding (docs/replication-topology.md): a
// FORWARD_WRITE is written to this node's chunk and, unchanged (the head's
// epoch, flags, offset and data: never this node's own epoch), sent on to
// every replica its route lists, over this node's pooled connections
// (shared/data-protocol/client). The reply waits for every replica and names
// each one's outcome: a failed forward is that replica's failure, never hidden.
//
// Hot path: a route block is decoded once per (volume, segment) and cached by
// its bytes (a compare per write, no allocation); ForwardOps are recycled.
// Bounds: each forwarded request counts against the head connection's window
// until the reply (data-connection.ts pauses reading), and the connection to
// each replica queues at most its maxQueued before failing a request (which
// is then that replica's reported failure).

const MAX_CACHED_SEGMENTS = 4096;
const MAX_POOLED_OPS = 1024;

/** One replica a primary forwards to: its chunk (same volume and segment, its slot) and the leg route it is sent with. */
export class Leg implements RoutedTarget {
  constructor(
    readonly conn: NodeConnection,
    readonly volumeId: number,
    readonly segment: number,
    readonly slot: number,
    /** Position in the forward results (1.., the primary is 0). */
    readonly index: number,
    /** A route of no replicas under the same route generation. */
    readonly route: Buffer,
  ) {}

  replyError(opcode: number, status: number, message: string): VskyError {
    return errorForStatus(opcode, status, message, `chunk ${this.volumeId}/${this.segment}/${this.slot} on ${this.conn.address} (forwarded)`,
      { volumeId: this.volumeId, segment: this.segment, slot: this.slot, node: this.conn.address });
  }
}

interface CachedRoute {
  bytes: Buffer;
  legs: readonly Leg[];
}

/** Who is told when every replica of a forwarded write answered (the server connection). */
export interface ForwardOwner {
  forwardDone(op: ForwardOp): void;
}

/** One FORWARD_WRITE on the primary: the local write plus one request per leg. */
export class ForwardOp implements RequestCallback {
  owner: ForwardOwner | undefined;
  requestId = 0;
  cost = 0;
  /** The primary's own slot (result 0). */
  slot = 0;
  /** The pooled payload (route block then data), released when the op ends. */
  payload: Buffer | undefined;
  /** The chunk written locally (accounting), if this node holds it. */
  chunk: unknown;
  started = 0;
  legs: readonly Leg[] = [];
  remaining = 0;
  /** errors[0] is the local write's, errors[i] leg i's (undefined: acknowledged). */
  readonly errors: (Error | undefined)[] = [];
  failed = false;

  begin(owner: ForwardOwner, requestId: number, cost: number, slot: number, legs: readonly Leg[]): void {
    this.owner = owner;
    this.requestId = requestId;
    this.cost = cost;
    this.slot = slot;
    this.legs = legs;
    this.remaining = legs.length + 1;
    this.failed = false;
    this.errors.length = legs.length + 1;
    this.errors.fill(undefined);
  }

  /** The local write's outcome (a bound field: no closure per write). */
  readonly localDone = (err: Error | null): void => {
    this.settle(0, err ?? undefined);
  };

  requestDone(target: RequestTarget, err: Error | undefined): void {
    this.settle((target as Leg).index, err);
  }

  private settle(i: number, err: Error | undefined): void {
    if (err !== undefined) {
      this.errors[i] = err;
      this.failed = true;
    }
    if (--this.remaining === 0) this.owner!.forwardDone(this);
  }

  /** The FORWARD_RESULTS payload: every replica's outcome, primary first (only when some failed). */
  results(): Buffer {
    const out: ForwardResult[] = [];
    for (let i = 0; i < this.errors.length; i++) {
      const err = this.errors[i];
      const leg = i === 0 ? undefined : this.legs[i - 1]!;
      const slot = leg === undefined ? this.slot : leg.slot;
      const status = err === undefined ? Status.OK : statusForError(err);
      const via = leg === undefined || err === undefined ? '' : `forwarded to ${leg.conn.address}: `;
      out.push({ slot, status, message: err === undefined ? '' : via + errorMessage(err) });
    }
    return encodeForwardResults(out);
  }
}

/** The route cache, the pool of connections to other nodes, and recycled ops of one data server. */
export class Forwarder {
  private readonly conns = new Map<string, NodeConnection>();
  private readonly routes = new Map<number, Map<number, CachedRoute>>();
  private cachedSegments = 0;
  private readonly free: ForwardOp[] = [];
  private readonly log = moduleLogger('forwarder');

  /**
   * The legs of the route block payload[0, length) of a FORWARD_WRITE to
   * (volume, segment). Throws ProtocolError on a route that does not parse.
   */
  legs(volumeId: number, segment: number, payload: Buffer, length: number): readonly Leg[] {
    let bySegment = this.routes.get(volumeId);
    const cached = bySegment?.get(segment);
    if (cached !== undefined && cached.bytes.length === length && cached.bytes.compare(payload, 0, length) === 0) return cached.legs;
    const route = decodeRoute(payload, 0, length);
    const legRoute = encodeRoute(route.generation, []);
    const legs = route.entries.map((e, i) => new Leg(this.connection(e.address), volumeId, segment, e.slot, i + 1, legRoute));
    if (this.cachedSegments >= MAX_CACHED_SEGMENTS) {
      this.routes.clear();
      this.cachedSegments = 0;
      bySegment = undefined;
    }
    if (bySegment === undefined) this.routes.set(volumeId, (bySegment = new Map()));
    if (!bySegment.has(segment)) this.cachedSegments++;
    bySegment.set(segment, { bytes: Buffer.from(payload.subarray(0, length)), legs });
    return legs;
  }

  /** Sends the write on to every leg under the head's epoch and flags. */
  forward(op: ForwardOp, flags: number, epoch: number, offset: number, data: Buffer): void {
    for (const leg of op.legs) {
      leg.conn.submit(leg, Opcode.FORWARD_WRITE, flags, epoch, offset, data.length, data, leg.route.length, op);
    }
  }

  take(): ForwardOp {
    return this.free.pop() ?? new ForwardOp();
  }

  release(op: ForwardOp): void {
    op.owner = undefined;
    op.payload = undefined;
    op.chunk = undefined;
    op.legs = [];
    op.errors.fill(undefined);
    if (this.free.length < MAX_POOLED_OPS) this.free.push(op);
  }

  private connection(address: string): NodeConnection {
    let conn = this.conns.get(address);
    if (conn === undefined) {
      conn = new NodeConnection(address);
      this.conns.set(address, conn);
      this.log.info({ node: address }, 'forwarding connection to storage node');
    }
    return conn;
  }

  close(): Promise<void> {
    const all = [...this.conns.values()].map((c) => c.close());
    this.conns.clear();
    this.routes.clear();
    return Promise.all(all).then(() => undefined);
  }
}
