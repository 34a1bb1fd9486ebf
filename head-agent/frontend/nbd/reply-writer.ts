// Writes transmission-phase replies to one socket: simple replies, or
// structured reply chunks once the client negotiated them (then a READ is
// always answered with one final OFFSET_DATA chunk, and every error with a
// final ERROR chunk carrying a message for the user). Fixed-size headers are
// written in place into slabs; READ data follows its header, never copied
// together with it. The socket is corked from the first reply of a tick until
// the tick's work is done: the replies of requests that completed together
// (one node reply read completes several) leave in one writev, not one
// write syscall each.

import type { Socket } from 'node:net';
import { HeaderSlab } from '../header-slab.js';
import { ioBuffers } from '../io-buffers.js';
import {
  encodeStructuredError, writeOffsetDataPrefix, writeSimpleReply, writeStructuredReplyHeader, type RequestHeader,
} from './codec.js';
import {
  NBD_REPLY_FLAG_DONE, NbdCmd, NbdError, NbdReplyType, OFFSET_DATA_PREFIX_SIZE, SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
} from './constants.js';

/** Header slab size (header-slab.ts). */
const SLAB_SIZE = 8192;

const ERROR_TEXT: Record<number, string> = {
  [NbdError.EPERM]: 'operation not permitted',
  [NbdError.EIO]: 'input/output error',
  [NbdError.EINVAL]: 'invalid argument',
  [NbdError.ENOSPC]: 'no space left on device',
  [NbdError.ESHUTDOWN]: 'server is shutting down',
};

export class ReplyWriter {
  private readonly socket: Socket;
  private readonly structured: boolean;
  private readonly headers = new HeaderSlab(SLAB_SIZE);
  private corked = false;
  /** READ data being written, in write order: each goes back to ioBuffers at its write's callback. */
  private readonly sending: Buffer[] = [];
  private readonly sent = (): void => {
    const buf = this.sending.shift();
    if (buf !== undefined) ioBuffers.release(buf);
  };
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  constructor(socket: Socket, structured: boolean) {
    this.socket = socket;
    this.structured = structured;
  }

  /**
   * Sends the reply to `h`: `data` for a successful READ, `message` to
   * explain an error (structured replies only). `data` goes back to the
   * frontends' pool (io-buffers.ts) once the socket has written it (ignored
   * when not from the pool). Returns false when the socket's write buffer is
   * full: stop reading until 'drain'.
   */
  send(h: RequestHeader, error: number, data: Buffer | undefined, message?: string): boolean {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    if (error !== NbdError.OK) {
      if (!this.structured) return this.socket.write(this.simpleHeader(h, error));
      return this.socket.write(encodeStructuredError(h.handleHi, h.handleLo, error, message ?? ERROR_TEXT[error] ?? `error ${error}`));
    }
    // BLOCK_STATUS: `data` is the whole encoded chunk (meta-context.ts encodeBlockStatusChunk).
    if (h.type === NbdCmd.BLOCK_STATUS && data !== undefined) return this.socket.write(data);
    if (h.type !== NbdCmd.READ) return this.socket.write(this.simpleHeader(h, NbdError.OK));
    const length = data?.length ?? 0;
    if (length === 0) {
      if (!this.structured) return this.socket.write(this.simpleHeader(h, NbdError.OK));
      // A READ must get a structured reply; with no data that is a lone NONE chunk.
      const none = this.headers.take(STRUCTURED_REPLY_HEADER_SIZE);
      writeStructuredReplyHeader(none, 0, NBD_REPLY_FLAG_DONE, NbdReplyType.NONE, h.handleHi, h.handleLo, 0);
      return this.socket.write(none);
    }
    let header: Buffer;
    if (this.structured) {
      header = this.headers.take(OFFSET_DATA_PREFIX_SIZE);
      writeOffsetDataPrefix(header, 0, h.handleHi, h.handleLo, h.offset, length);
    } else {
      header = this.simpleHeader(h, NbdError.OK);
    }
    // Header and data leave in one segment (corked), without copying them together.
    const s = this.socket;
    s.write(header);
    // Write callbacks run in write order (also with an error when the socket
    // is destroyed): one bound callback gives back the oldest buffer sent.
    this.sending.push(data!);
    return s.write(data!, this.sent);
  }

  private simpleHeader(h: RequestHeader, error: number): Buffer {
    const header = this.headers.take(SIMPLE_REPLY_HEADER_SIZE);
    writeSimpleReply(header, 0, error, h.handleHi, h.handleLo);
    return header;
  }
}
