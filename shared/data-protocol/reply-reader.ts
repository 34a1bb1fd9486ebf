import { FrameDecoder, type PayloadAllocator } from '../frame-decoder.js';
import { replyFrameSpec } from './codec.js';
import { REPLY_HEADER_SIZE, type ReplyHeader } from './frame.js';

// The receive side of a data connection. Socket reads land in ONE reused
// receive buffer (net's `onread`: no allocation per read), and are decoded
// with the shared FrameDecoder, whose allocator puts a READ payload that spans
// reads straight into the caller's destination.
//
// Why reusing the receive buffer is safe: everything the decoder hands out
// from it is consumed synchronously by onReply (read data copied into its
// destination, an error message decoded). The only bytes the decoder can keep
// across reads are a partial reply header at the end of a read: fewer than
// REPLY_HEADER_SIZE bytes that belong to no returned frame (once a header is
// parsed, payload bytes are copied out as they arrive). Those few bytes are
// copied and handed to a fresh decoder before the buffer is read into again.

export type ReplyHandler = (header: ReplyHeader, payload: Buffer | undefined) => void;

export class ReplyReader {
  private readonly allocate: PayloadAllocator<ReplyHeader>;
  private readonly onReply: ReplyHandler;
  private decoder: FrameDecoder<ReplyHeader>;
  /** Bytes received and not yet part of a returned frame. */
  private undecoded = 0;
  /** The last carried partial header. */
  private carry: Buffer | undefined;
  private stopped = false;

  constructor(allocate: PayloadAllocator<ReplyHeader>, onReply: ReplyHandler) {
    this.allocate = allocate;
    this.onReply = onReply;
    this.decoder = new FrameDecoder(replyFrameSpec, allocate);
  }

  /** Decodes one read (a view of the reused buffer); calls onReply per whole reply. Throws ProtocolError. */
  feed(chunk: Buffer): void {
    const decoder = this.decoder;
    this.undecoded += chunk.length;
    decoder.push(chunk);
    for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
      this.undecoded -= REPLY_HEADER_SIZE + frame.header.length;
      this.onReply(frame.header, frame.payload);
      // The handler may have failed the connection (and stopped this reader).
      if (this.stopped) return;
    }
    if (this.undecoded > 0 && this.undecoded < REPLY_HEADER_SIZE) this.carryPartialHeader(chunk);
  }

  /** No more replies are delivered (the connection failed or closed). */
  stop(): void {
    this.stopped = true;
  }

  /** Moves a partial header out of the receive buffer into a fresh decoder (rare: a read ended mid-header). */
  private carryPartialHeader(chunk: Buffer): void {
    const n = this.undecoded;
    const carry = Buffer.allocUnsafe(n);
    const fromChunk = Math.min(n, chunk.length);
    // Bytes before this chunk were themselves the previous carried copy.
    if (n > fromChunk) this.carry!.copy(carry, 0, this.carry!.length - (n - fromChunk));
    chunk.copy(carry, n - fromChunk, chunk.length - fromChunk);
    this.carry = carry;
    this.decoder = new FrameDecoder(replyFrameSpec, this.allocate);
    this.decoder.push(carry);
  }
}
