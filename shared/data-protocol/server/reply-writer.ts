import type net from 'node:net';
import { BufferPool, COMMON_IO_SIZES } from '../../buffer-pool.js';
import { errorMessage } from '../../errors.js';
import { encodeErrorMessage, encodeReplyHeader } from '../codec.js';
import { REPLY_HEADER_SIZE, Status } from '../frame.js';
import { statusForError } from '../status.js';

// The reply side of one data-protocol connection on the node
// (data-connection.ts keeps the request accounting). Replies completed in one
// event-loop turn leave in one writev: the socket is corked at the first
// reply and uncorked in setImmediate, after the poll phase has run every
// completed disk callback (nextTick would fire after each callback and batch
// nothing). One syscall per 16-byte write reply cost the node ~12% CPU.
// Status-only replies are encoded back to back in one pooled buffer.

/** Read replies (header + data) live until the socket is done with them; recycled. */
export const replyBuffers = new BufferPool(COMMON_IO_SIZES.map((n) => n + REPLY_HEADER_SIZE));
const STATUS_BATCH_SIZE = 4096;
const statusBatches = new BufferPool([STATUS_BATCH_SIZE]);

export class ReplyWriter {
  private readonly socket: net.Socket;
  /** Called after each uncork while writes are blocked (the connection may read again on 'drain'). */
  private readonly afterTick: () => void;
  /** socket.write() returned false: stop reading requests until 'drain'. */
  blocked = false;
  /** The socket closed: replies are dropped. */
  closed = false;
  private corked = false;
  private statusBatch: Buffer | undefined;
  private statusBatchUsed = 0;

  constructor(socket: net.Socket, afterTick: () => void) {
    this.socket = socket;
    this.afterTick = afterTick;
  }

  /** A reply without payload (WRITE, FLUSH, ... done): encoded into this tick's batch, no allocation. */
  status(requestId: number, status: Status): void {
    if (this.closed) return;
    this.corkForTick();
    if (this.statusBatchUsed + REPLY_HEADER_SIZE > STATUS_BATCH_SIZE) this.sendStatusBatch();
    const batch = (this.statusBatch ??= statusBatches.acquire(STATUS_BATCH_SIZE));
    encodeReplyHeader({ requestId, status, length: 0 }, batch, this.statusBatchUsed);
    this.statusBatchUsed += REPLY_HEADER_SIZE;
  }

  /** An error reply: the status for `err` and its message. */
  error(requestId: number, err: unknown): Status {
    const status = statusForError(err);
    this.withPayload(requestId, status, encodeErrorMessage(errorMessage(err)));
    return status;
  }

  /** A reply with a payload other than read data (an error message, forward results). */
  withPayload(requestId: number, status: Status, payload: Buffer): void {
    const header = Buffer.allocUnsafe(REPLY_HEADER_SIZE);
    encodeReplyHeader({ requestId, status, length: payload.length }, header, 0);
    this.send(header, payload);
  }

  /** Writes one reply (header, then an optional payload); `written` recycles `first` once the socket is done with it. */
  send(first: Buffer, second: Buffer | undefined, written?: (buf: Buffer) => void): void {
    if (this.closed) return;
    this.corkForTick();
    let ok: boolean;
    if (second === undefined) {
      ok = written === undefined ? this.socket.write(first) : this.socket.write(first, () => written(first));
    } else {
      this.socket.cork();
      this.socket.write(first);
      ok = this.socket.write(second);
      this.socket.uncork();
    }
    if (!ok) this.blocked = true;
  }

  private sendStatusBatch(): void {
    const batch = this.statusBatch;
    const used = this.statusBatchUsed;
    this.statusBatch = undefined;
    this.statusBatchUsed = 0;
    if (batch === undefined || used === 0 || this.closed) return;
    if (!this.socket.write(batch.subarray(0, used), () => statusBatches.release(batch))) this.blocked = true;
  }

  private corkForTick(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    setImmediate(this.uncorkTick);
  }

  private readonly uncorkTick = (): void => {
    this.corked = false;
    this.sendStatusBatch();
    this.socket.uncork();
    if (this.blocked) this.afterTick();
  };
}
