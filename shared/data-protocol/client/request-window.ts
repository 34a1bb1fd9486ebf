import { PendingPool, RequestQueue, type PendingRequest } from './data-request.js';

// The requests of one data connection: those sent and awaiting a reply (by
// request id, in send order), those waiting in a queue for room in the
// window, and the recycled entries both are made of. Pure bookkeeping: the
// connection decides when to send, and writes the socket.
//
// The window keeps one slot of the connection's maxInflight for the liveness
// probe, so that a node whose window is full of slow requests always has room
// to read the PING (see liveness.ts).

export class RequestWindow {
  /** Regular requests in flight at most: maxInflight less the probe's slot. */
  readonly size: number;
  /** Requests waiting to be sent at most. */
  readonly maxQueued: number;
  /** Sent, awaiting reply, in send order (Map keeps insertion order: first = oldest). */
  private readonly inflight = new Map<number, PendingRequest>();
  private readonly queue = new RequestQueue();
  private readonly pool = new PendingPool();
  private nextRequestId = 1;

  constructor(maxInflight: number, maxQueued: number) {
    this.size = Math.max(1, maxInflight - 1);
    this.maxQueued = maxQueued;
  }

  /** Requests in flight, the probe included. */
  get inflightCount(): number {
    return this.inflight.size;
  }

  /** Requests waiting to be sent. */
  get queued(): number {
    return this.queue.size;
  }

  /** An entry to fill (recycled when one is free). */
  take(): PendingRequest {
    return this.pool.take();
  }

  /** Gives back an entry that was never sent nor queued. */
  release(p: PendingRequest): void {
    this.pool.release(p);
  }

  /** Queues a request to be sent when there is room; false (nothing queued) when the queue is full. */
  enqueue(p: PendingRequest): boolean {
    if (this.queue.size >= this.maxQueued) return false;
    this.queue.push(p);
    return true;
  }

  /** The oldest queued request, taken off the queue; the queue must not be empty. */
  dequeue(): PendingRequest {
    return this.queue.shift();
  }

  /** Enters a request about to be written, under a request id no reply is pending for. */
  sent(p: PendingRequest, tick: number): void {
    let id = this.nextRequestId;
    while (this.inflight.has(id)) id = (id + 1) >>> 0;
    this.nextRequestId = (id + 1) >>> 0;
    p.requestId = id;
    p.sentTick = tick;
    this.inflight.set(id, p);
  }

  /** The request in flight under this id, if any. */
  get(requestId: number): PendingRequest | undefined {
    return this.inflight.get(requestId);
  }

  /** The oldest request in flight, if any. */
  oldest(): PendingRequest | undefined {
    return this.inflight.values().next().value;
  }

  /** The oldest request in flight that is not the probe (told apart by its callback). */
  oldestRegular(probeCallback: unknown): PendingRequest | undefined {
    for (const p of this.inflight.values()) if (p.callback !== probeCallback) return p;
    return undefined;
  }

  /** Completes a request in flight: out of the window, its entry recycled, then its callback. */
  complete(p: PendingRequest, err: Error | undefined): void {
    this.inflight.delete(p.requestId);
    const cb = p.callback!;
    const target = p.target!;
    this.pool.release(p);
    cb.requestDone(target, err);
  }

  /**
   * Fails every request, in flight (oldest first) then queued. Both are
   * emptied before the first callback, which may submit again.
   */
  failAll(reason: Error): void {
    const failed = [...this.inflight.values(), ...this.queue.takeAll()];
    this.inflight.clear();
    for (const p of failed) {
      const cb = p.callback!;
      const target = p.target!;
      this.pool.release(p);
      cb.requestDone(target, reason);
    }
  }
}
