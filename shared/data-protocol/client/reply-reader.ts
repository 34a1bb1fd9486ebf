import { ProtocolError } from '../../errors.js';
import { FrameDecoder } from '../../frame-decoder.js';
import type { Logger } from '../../logger.js';
import { replyFrameSpec } from '../codec.js';
import { Opcode, REPLY_HEADER_SIZE, Status, opcodeName, type ReplyHeader } from '../frame.js';
import type { RequestWindow } from './request-window.js';

// The receive side of a data connection. Socket reads land in ONE reused
// receive buffer (net's `onread`: no allocation per read), and are decoded
// with the shared FrameDecoder, whose allocator puts a READ payload that spans
// reads straight into the caller's destination. Each reply is matched to its
// request in the connection's window by request id, checked against it, and
// completes it.
//
// Why reusing the receive buffer is safe: everything the decoder hands out
// from it is consumed synchronously by complete() (read data copied into its
// destination, an error message decoded). The only bytes the decoder can keep
// across reads are a partial reply header at the end of a read: fewer than
// REPLY_HEADER_SIZE bytes that belong to no returned frame (once a header is
// parsed, payload bytes are copied out as they arrive). Those few bytes are
// copied and handed to a fresh decoder before the buffer is read into again.

export class ReplyReader {
  private readonly requests: RequestWindow;
  /** The storage node's data address, for error messages. */
  private readonly address: string;
  /** Set only while tracing: one debug line per reply. */
  private readonly trace: Logger | undefined;
  private decoder: FrameDecoder<ReplyHeader>;
  /** Bytes received and not yet part of a returned frame. */
  private undecoded = 0;
  /** The last carried partial header. */
  private carry: Buffer | undefined;
  private stopped = false;

  constructor(requests: RequestWindow, address: string, trace: Logger | undefined) {
    this.requests = requests;
    this.address = address;
    this.trace = trace;
    this.decoder = new FrameDecoder(replyFrameSpec, this.allocate);
  }

  /** Decodes one read (a view of the reused buffer); completes a request per whole reply. Throws ProtocolError. */
  feed(chunk: Buffer): void {
    const decoder = this.decoder;
    this.undecoded += chunk.length;
    decoder.push(chunk);
    for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
      this.undecoded -= REPLY_HEADER_SIZE + frame.header.length;
      this.complete(frame.header, frame.payload);
      // A request's callback may have failed the connection (and stopped this reader).
      if (this.stopped) return;
    }
    if (this.undecoded > 0 && this.undecoded < REPLY_HEADER_SIZE) this.carryPartialHeader(chunk);
  }

  /** No more replies are delivered (the connection failed or closed). */
  stop(): void {
    this.stopped = true;
  }

  /**
   * Decoder allocator: a READ reply that spans socket chunks is assembled in
   * the pending request's destination, so the data is copied exactly once.
   */
  private readonly allocate = (h: ReplyHeader, length: number): Buffer | undefined => {
    if (h.status !== Status.OK) return undefined;
    const p = this.requests.get(h.requestId);
    return p !== undefined && p.opcode === Opcode.READ && p.length === length ? p.data : undefined;
  };

  /** One reply: match it to its request, check it, complete the request. Throws ProtocolError. */
  private complete(h: ReplyHeader, payload: Buffer | undefined): void {
    const p = this.requests.get(h.requestId);
    if (p === undefined) {
      throw new ProtocolError(`storage node ${this.address} replied to unknown request id ${h.requestId}`, { requestId: h.requestId });
    }
    let err: Error | undefined;
    if (h.status === Status.OK) {
      if (p.opcode === Opcode.READ) {
        const dest = p.data!;
        if (h.length !== p.length) {
          throw new ProtocolError(`storage node ${this.address} returned ${h.length} bytes for a read of ${p.length}`, { requestId: h.requestId });
        }
        // A payload inside one socket chunk arrives as a view: copy it in.
        if (payload !== undefined && (payload.buffer !== dest.buffer || payload.byteOffset !== dest.byteOffset)) {
          payload.copy(dest, 0, 0, p.length);
        }
      } else if (h.length !== 0) {
        throw new ProtocolError(`storage node ${this.address} sent a ${h.length}-byte payload with an OK ${opcodeName(p.opcode)} reply`);
      }
    } else {
      err = p.target!.replyError(p.opcode, h.status, payload === undefined ? '' : payload.toString('utf8'));
    }
    this.trace?.debug({ id: h.requestId, status: h.status }, 'reply');
    this.requests.complete(p, err);
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
