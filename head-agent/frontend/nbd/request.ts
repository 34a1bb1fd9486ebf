// One NBD request from its header to its reply, as a recycled object: the
// header is parsed straight into it (codec.readRequestHeader), it carries the
// WRITE payload and the in-flight accounting, and its two completion
// callbacks are bound once, when the object is made. A READ or WRITE then
// costs the engine's promise and one `then` on it, not an async frame (and
// its promises) per layer. Objects go back to their connection's free list
// once the reply is written into the socket; at most `maxInFlight` + the one
// the decoder is filling exist per connection, so they stay young or become
// permanent, never garbage.

import type { BlockDevice } from '../../engine/block-device.js';
import type { RequestHeader } from './codec.js';
import { MAX_BLOCK_SIZE, NBD_CMD_FLAG_FUA, NbdCmd } from './constants.js';

/** What a request reports to its connection when the device settles it. */
export interface RequestOwner {
  completed(r: NbdRequest, data: Buffer | undefined): void;
  failed(r: NbdRequest, err: unknown): void;
}

export class NbdRequest implements RequestHeader {
  flags = 0;
  type = 0;
  handleHi = 0;
  handleLo = 0;
  offset = 0;
  length = 0;
  /** A WRITE's data (a pooled buffer), until the device has settled the write. */
  payload: Buffer | undefined = undefined;
  /** Bytes counted against the connection's in-flight limit. */
  bytes = 0;
  /** performance.now() at dispatch (latency counters). */
  started = 0;
  /** The device's promise resolved (a READ's data, or nothing). */
  readonly ok: (data: Buffer | void) => void;
  /** The device's promise rejected. */
  readonly fail: (err: unknown) => void;

  constructor(owner: RequestOwner) {
    this.ok = (data) => owner.completed(this, data === undefined ? undefined : data);
    this.fail = (err) => owner.failed(this, err);
  }
}

/** A connection's free request objects. */
export class RequestSlots {
  private readonly free: NbdRequest[] = [];
  private readonly owner: RequestOwner;
  private readonly keep: number;

  /** Keeps up to `keep` idle objects (the connection's in-flight limit plus one). */
  constructor(owner: RequestOwner, keep: number) {
    this.owner = owner;
    this.keep = keep;
  }

  take(): NbdRequest {
    return this.free.pop() ?? new NbdRequest(this.owner);
  }

  /** Gives `r` back once nothing refers to it any more (its reply is written). */
  give(r: NbdRequest): void {
    r.payload = undefined;
    if (this.free.length < this.keep) this.free.push(r);
  }
}

/**
 * The device call of a request other than READ and WRITE (the hot two are
 * called directly by the connection). TRIM and WRITE_ZEROES may name the
 * whole export in one request: they go in pieces of at most MAX_BLOCK_SIZE,
 * one after another, so each engine call stays bounded.
 */
export async function performOther(dev: BlockDevice, r: RequestHeader): Promise<void> {
  const fua = (r.flags & NBD_CMD_FLAG_FUA) !== 0;
  const { offset, length } = r;
  switch (r.type) {
    case NbdCmd.FLUSH:
      return dev.flush();
    case NbdCmd.TRIM:
      await inPieces(offset, length, (o, n) => dev.discard(o, n));
      if (fua && length > 0) await dev.flush();
      return;
    case NbdCmd.WRITE_ZEROES:
      // NO_HOLE needs nothing: writeZeroes always leaves the range allocated.
      return inPieces(offset, length, (o, n) => dev.writeZeroes(o, n, fua));
    default:
      throw new Error(`unreachable: command ${r.type} passed validation`);
  }
}

async function inPieces(offset: number, length: number, fn: (offset: number, length: number) => Promise<void>): Promise<void> {
  for (let done = 0; done < length;) {
    const n = Math.min(MAX_BLOCK_SIZE, length - done);
    await fn(offset + done, n);
    done += n;
  }
}
