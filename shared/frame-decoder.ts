import { ProtocolError } from './errors.js';

// A pure, incremental decoder for "fixed header + length-prefixed payload"
// protocols. Feed it socket chunks split anywhere with push(); pull whole
// frames with next(). The payload length is checked against the limit before
// anything is allocated. A payload that sits inside one chunk is handed out as
// a zero-copy view; one that spans chunks is copied once, into a buffer the
// caller may supply (so read data lands straight in its destination).
//
// Reads into reused memory (net's `onread`): pushTransient() takes a chunk
// whose memory the caller reuses once it returns. Then payloads are always
// copied out (once, into the allocator's buffer), headers are parsed in
// place, and own() - called before the caller returns - copies the few bytes
// still queued (a partial frame, or frames left while the consumer is
// paused) out of the reused memory.

export interface FrameSpec<H> {
  readonly name: string;
  readonly headerSize: number;
  readonly maxPayload: number;
  /** Parses the header at buf[offset, offset + headerSize); throws ProtocolError. */
  parseHeader(buf: Buffer, offset: number): H;
  /** Payload bytes that follow this header (0 for none). */
  payloadLength(header: H): number;
}

export interface Frame<H> {
  header: H;
  /** undefined when the frame has no payload. */
  payload: Buffer | undefined;
}

/** Optional: supplies the buffer a spanning payload is assembled into. */
export type PayloadAllocator<H> = (header: H, length: number) => Buffer | undefined;

export class FrameDecoder<H> {
  private readonly spec: FrameSpec<H>;
  private readonly allocate: PayloadAllocator<H> | undefined;
  private readonly headerScratch: Buffer;
  private queue: Buffer[] = [];
  private queueOffset = 0;
  private buffered = 0;
  private header: H | undefined;
  private payloadLength = 0;
  private target: Buffer | undefined;
  private filled = 0;
  /** Some queued chunk lives in memory its pusher reuses (pushTransient). */
  private transient = false;
  /** Payloads are copied, never handed out as views (set by the first pushTransient). */
  private copyPayloads = false;

  constructor(spec: FrameSpec<H>, allocate?: PayloadAllocator<H>) {
    this.spec = spec;
    this.allocate = allocate;
    this.headerScratch = Buffer.allocUnsafe(spec.headerSize);
  }

  /** Bytes received but not yet returned in a frame. */
  get bufferedBytes(): number {
    return this.buffered + this.filled;
  }

  /** True when no partial frame is held (a clean place for the peer to close). */
  get idle(): boolean {
    return this.buffered === 0 && this.header === undefined;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.queue.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * As push(), for a chunk whose memory the caller reuses after returning:
   * call own() before that. From then on every payload is copied out.
   */
  pushTransient(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.copyPayloads = true;
    this.transient = true;
    this.push(chunk);
  }

  /** Copies queued bytes out of transient chunks (see pushTransient): no reference to them is kept. */
  own(): void {
    if (!this.transient) return;
    this.transient = false;
    if (this.buffered === 0) return;
    const copy = Buffer.allocUnsafe(this.buffered);
    const n = this.buffered;
    let at = 0;
    for (let i = 0; i < this.queue.length; i++) {
      const b = this.queue[i]!;
      const from = i === 0 ? this.queueOffset : 0;
      b.copy(copy, at, from);
      at += b.length - from;
    }
    this.queue = [copy];
    this.queueOffset = 0;
    this.buffered = n;
  }

  /** The next whole frame, or undefined if more bytes are needed. Throws ProtocolError. */
  next(): Frame<H> | undefined {
    if (this.header === undefined) {
      if (this.buffered < this.spec.headerSize) return undefined;
      const header = this.readHeader();
      const length = this.spec.payloadLength(header);
      if (length > this.spec.maxPayload) {
        throw new ProtocolError(`${this.spec.name}: payload of ${length} bytes exceeds the limit of ${this.spec.maxPayload}`, { length });
      }
      if (length === 0) return { header, payload: undefined };
      this.header = header;
      this.payloadLength = length;
    }
    return this.nextPayload();
  }

  private nextPayload(): Frame<H> | undefined {
    const header = this.header as H;
    if (this.target === undefined) {
      const first = this.queue[0];
      if (!this.copyPayloads && first !== undefined && first.length - this.queueOffset >= this.payloadLength) {
        const payload = first.subarray(this.queueOffset, this.queueOffset + this.payloadLength);
        this.consume(this.payloadLength);
        return this.finish(header, payload);
      }
      if (this.buffered === 0) return undefined;
      const supplied = this.allocate?.(header, this.payloadLength);
      this.target = supplied !== undefined && supplied.length >= this.payloadLength
        ? supplied.subarray(0, this.payloadLength)
        : Buffer.allocUnsafe(this.payloadLength);
      this.filled = 0;
    }
    this.filled += this.copyOut(this.target, this.filled, this.payloadLength - this.filled);
    if (this.filled < this.payloadLength) return undefined;
    const payload = this.target;
    this.target = undefined;
    this.filled = 0;
    return this.finish(header, payload);
  }

  private finish(header: H, payload: Buffer): Frame<H> {
    this.header = undefined;
    this.payloadLength = 0;
    return { header, payload };
  }

  private readHeader(): H {
    const size = this.spec.headerSize;
    const first = this.queue[0]!;
    if (first.length - this.queueOffset >= size) {
      const header = this.spec.parseHeader(first, this.queueOffset);
      this.consume(size);
      return header;
    }
    this.copyOut(this.headerScratch, 0, size);
    return this.spec.parseHeader(this.headerScratch, 0);
  }

  /** Copies up to `want` queued bytes into dst[at...]; returns the count copied. */
  private copyOut(dst: Buffer, at: number, want: number): number {
    let copied = 0;
    while (copied < want && this.queue.length > 0) {
      const first = this.queue[0]!;
      const n = Math.min(want - copied, first.length - this.queueOffset);
      first.copy(dst, at + copied, this.queueOffset, this.queueOffset + n);
      copied += n;
      this.consume(n);
    }
    return copied;
  }

  private consume(n: number): void {
    this.buffered -= n;
    this.queueOffset += n;
    if (this.queueOffset === this.queue[0]!.length) {
      this.queue.shift();
      this.queueOffset = 0;
    }
  }
}
