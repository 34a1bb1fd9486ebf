import { REQUEST_HEADER_SIZE, type RequestHeader } from '../frame.js';

// The request objects of the data-protocol client: what a caller addresses
// (a RequestTarget, in practice a Replica), how it learns the outcome (a
// RequestCallback, in practice the mirror's per-I/O object), and the pending
// entry a NodeConnection keeps per request. Pending entries are recycled, each
// with its own REQUEST_HEADER_SIZE (48-byte) header buffer, so a request allocates nothing here.

/** Who a request is for: the chunk address, and how to turn a reply status into an error. */
export interface RequestTarget {
  readonly volumeId: number;
  readonly segment: number;
  readonly slot: number;
  /** Builds the typed error for a non-OK reply (called once per failed request). */
  replyError(opcode: number, status: number, message: string): Error;
}

/** The target of a FORWARD_WRITE: it carries the route block sent before the data (its length is the request's `generation`). */
export interface RoutedTarget extends RequestTarget {
  readonly route: Buffer;
}

/**
 * Completion of a submitted request. Preallocated per I/O by the caller (no
 * closure per request). Called exactly once, never synchronously from submit().
 */
export interface RequestCallback {
  requestDone(target: RequestTarget, err: Error | undefined): void;
}

/** One request from submit() to its reply; it is its own header source for encodeRequestHeader. */
export class PendingRequest implements RequestHeader {
  opcode = 0;
  flags = 0;
  slot = 0;
  requestId = 0;
  volumeId = 0;
  segment = 0;
  epoch = 0;
  offset = 0;
  length = 0;
  generation = 0;
  /** WRITE: the payload; READ: the destination (exactly `length` bytes). */
  data: Buffer | undefined = undefined;
  target: RequestTarget | undefined = undefined;
  callback: RequestCallback | undefined = undefined;
  /** Stall-timer tick at which it was sent (the per-request bound counts from it). */
  sentTick = 0;
  /** Reused for every request this entry carries: by the time it is recycled its bytes were sent. */
  readonly header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);

  /** Fills the entry for one request to `target`'s chunk (requestId and sentTick are set when it is sent). */
  fill(
    target: RequestTarget, opcode: number, flags: number, epoch: number, offset: number, length: number,
    data: Buffer | undefined, generation: number, callback: RequestCallback,
  ): void {
    this.opcode = opcode;
    this.flags = flags;
    this.slot = target.slot;
    this.volumeId = target.volumeId;
    this.segment = target.segment;
    this.epoch = epoch;
    this.offset = offset;
    this.length = length;
    this.generation = generation;
    this.data = data;
    this.target = target;
    this.callback = callback;
  }
}

const MAX_POOLED = 1024;

/** A free list of pending entries. */
export class PendingPool {
  private readonly free: PendingRequest[] = [];

  take(): PendingRequest {
    return this.free.pop() ?? new PendingRequest();
  }

  /** Drops the entry's references (payloads, callers) and keeps it for reuse. */
  release(p: PendingRequest): void {
    p.data = undefined;
    p.target = undefined;
    p.callback = undefined;
    if (this.free.length < MAX_POOLED) this.free.push(p);
  }
}

/** FIFO of requests waiting to be sent (array + head index: O(1) shift). */
export class RequestQueue {
  private items: (PendingRequest | undefined)[] = [];
  private head = 0;

  get size(): number {
    return this.items.length - this.head;
  }

  push(p: PendingRequest): void {
    this.items.push(p);
  }

  /** The oldest entry; the queue must not be empty. */
  shift(): PendingRequest {
    const p = this.items[this.head]!;
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return p;
  }

  /** Empties the queue, returning what it held (oldest first). */
  takeAll(): PendingRequest[] {
    const all = this.items.slice(this.head) as PendingRequest[];
    this.items = [];
    this.head = 0;
    return all;
  }
}

/** Adapts the callback API to a promise for the control path (fence, flush, tests). */
export class PromiseCallback implements RequestCallback {
  resolve!: () => void;
  reject!: (err: Error) => void;
  readonly promise = new Promise<void>((resolve, reject) => {
    this.resolve = resolve;
    this.reject = reject;
  });

  requestDone(_target: RequestTarget, err: Error | undefined): void {
    if (err === undefined) this.resolve();
    else this.reject(err);
  }
}

/** For process.nextTick(callDone, ...): a deferred failure without a closure. */
export function callDone(cb: RequestCallback, target: RequestTarget, err: Error): void {
  cb.requestDone(target, err);
}
