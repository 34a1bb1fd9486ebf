// One NBD client connection in the transmission phase. Requests are
// pipelined: each is started as soon as it is decoded and replied to when it
// finishes, in any order, matched by the client's handle. Reading stops while
// too many requests (or bytes) are in flight, or while the socket's write
// buffer is full, and resumes when that clears. A protocol violation (bad
// magic, oversized WRITE) closes this connection only.

import type { Socket } from 'node:net';
import type { BlockDevice } from '../../engine/block-device.js';
import { FrameDecoder, type FrameSpec } from '../../../shared/frame-decoder.js';
import { errorMessage } from '../../../shared/errors.js';
import { isTraced, type Logger } from '../../../shared/logger.js';
import { switchToReceiveBuffer } from '../../../shared/net/receive-buffer-socket.js';
import { ReadGate, addSocketHandlers, removeSocketHandlers, type SocketHandlers } from '../client-socket.js';
import { ioBuffers } from '../io-buffers.js';
import { REQUEST_SPEC, handleText, readRequestHeader, type RequestHeader } from './codec.js';
import {
  BASE_ALLOCATION_ID, CLOSE_GRACE_MS, MAX_BLOCK_STATUS_EXTENTS, MAX_INFLIGHT_BYTES, MAX_INFLIGHT_REQUESTS, NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE, NbdCmd, NbdError, commandName,
} from './constants.js';
import { nbdErrorFor } from './error-map.js';
import { encodeBlockStatusChunk, fitExtents } from './meta-context.js';
import { ReplyWriter } from './reply-writer.js';
import { allowedFlags, countRequest, validateRequest } from './request-checks.js';
import { NbdRequest, RequestSlots, performOther, type RequestOwner } from './request.js';

/** Each connection's reused socket read buffer in transmission (several pipelined requests per read). */
const RECEIVE_BUFFER_SIZE = 256 * 1024;
/**
 * Replies queued in the socket before write() asks to wait for 'drain' (and
 * reading pauses). With Node's default of 16 KiB, the replies of one tick
 * (corked together: at QD16 several 4 KiB reads, or one 64 KiB read) passed
 * it nearly every time: a readStop/readStart pair (two epoll_ctl calls) and
 * a 'drain' per batch. What can queue is still bounded by the in-flight limits.
 */
const REPLY_HIGH_WATER_MARK = 1024 * 1024;

export interface NbdConnectionOptions {
  socket: Socket;
  device: BlockDevice;
  /** The size announced in the handshake (default: the device's now); requests are checked against it. */
  exportSize?: number;
  log: Logger;
  /** The client negotiated NBD_OPT_STRUCTURED_REPLY. */
  structured?: boolean;
  /** The client selected base:allocation for this export (needs `structured`): NBD_CMD_BLOCK_STATUS is valid. */
  blockStatus?: boolean;
  maxInFlight?: number;
  maxInFlightBytes?: number;
}

type State = 'open' | 'draining' | 'done';

export class NbdConnection implements RequestOwner {
  /** Resolves once the socket is closed and no request is in flight. Never rejects. */
  readonly closed: Promise<void>;
  private readonly socket: Socket;
  private readonly device: BlockDevice;
  /** What the client was told in the handshake: a volume grown since is seen by new connections only. */
  private readonly exportSize: number;
  private readonly log: Logger;
  private readonly trace: boolean;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  /** Request objects, recycled (request.ts); the decoder parses each header into one. */
  private readonly slots: RequestSlots;
  // Each header is parsed into a recycled request object; WRITE payloads are
  // copied into pooled buffers, recycled once the engine is done with them.
  private readonly decoder: FrameDecoder<NbdRequest>;
  private readonly replies: ReplyWriter;
  private readonly allowedFlags: Record<number, number>;
  private state: State = 'open';
  private inFlight = 0;
  private inFlightBytes = 0;
  /** pump() is on the stack (a request refused at once completes inside it). */
  private pumping = false;
  private readonly reading: ReadGate;
  private writeBlocked = false;
  /** Set when replies can no longer reach the client (socket gone or hard disconnect). */
  private dropReplies = false;
  private resolveClosed!: () => void;
  private graceTimer: NodeJS.Timeout | undefined;
  /** Bytes the negotiation's socket had read and not delivered (see the constructor). */
  private pending: Buffer | undefined;

  private readonly onData = (chunk: Buffer): void => {
    if (this.state !== 'open') return;
    this.decoder.push(chunk);
    this.pump();
  };
  /**
   * net's onread: one socket read in this connection's reused receive buffer.
   * Headers are parsed in place, every payload is copied once into a pooled
   * buffer, and own() copies out the rest before the buffer is reused.
   */
  private readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    if (this.state !== 'open') return true;
    this.decoder.pushTransient((buf as Buffer).subarray(0, nread));
    this.pump();
    this.decoder.own();
    return true;
  };
  private readonly onDrain = (): void => {
    this.writeBlocked = false;
    this.pump();
  };
  private readonly onEnd = (): void => {
    // The client shut down its sending side (after NBD_CMD_DISC, or instead
    // of it). The server socket allows half-open connections, so requests
    // still in flight are answered before our side closes too.
    if (!this.decoder.idle) this.log.warn({ buffered: this.decoder.bufferedBytes }, 'client closed the connection in the middle of a request');
    this.drain();
  };
  private readonly onError = (err: Error): void => {
    this.log.info({ err: errorMessage(err) }, 'NBD connection socket error');
    this.dropReplies = true;
    this.drain();
  };
  private readonly onClose = (): void => {
    this.dropReplies = true;
    this.drain();
  };
  private readonly handlers: SocketHandlers = {
    data: this.onData, drain: this.onDrain, end: this.onEnd, error: this.onError, close: this.onClose,
  };

  constructor(opts: NbdConnectionOptions) {
    // Transmission reads into one reused buffer instead of a fresh 64 KiB
    // ArrayBuffer per read (which kept V8's old generation busy under 64 KiB
    // writes); a TLS socket or one with writes still queued keeps 'data' events.
    const switched = switchToReceiveBuffer(opts.socket, Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE), this.onRead, true, REPLY_HIGH_WATER_MARK);
    this.socket = switched?.socket ?? opts.socket;
    this.pending = switched?.pending;
    this.reading = new ReadGate(this.socket);
    this.device = opts.device;
    this.exportSize = opts.exportSize ?? opts.device.size;
    this.log = opts.log;
    this.trace = isTraced('nbd');
    this.maxInFlight = opts.maxInFlight ?? MAX_INFLIGHT_REQUESTS;
    this.maxInFlightBytes = opts.maxInFlightBytes ?? MAX_INFLIGHT_BYTES;
    this.slots = new RequestSlots(this, this.maxInFlight + 1);
    const spec: FrameSpec<NbdRequest> = {
      ...REQUEST_SPEC,
      parseHeader: (buf, at) => readRequestHeader(buf, at, this.slots.take()),
    };
    this.decoder = new FrameDecoder(spec, (_h, length) => ioBuffers.acquire(length));
    this.replies = new ReplyWriter(this.socket, opts.structured ?? false);
    this.allowedFlags = allowedFlags(opts.structured ?? false, opts.blockStatus ?? false);
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Starts serving. `leftover` holds bytes that arrived with the end of the handshake. */
  start(leftover?: Buffer): void {
    const s = this.socket;
    addSocketHandlers(s, this.handlers);
    this.writeBlocked = s.writableNeedDrain;
    // Negotiation may have paused the socket for write back-pressure.
    this.reading.sync();
    if (s.destroyed) {
      this.onClose();
      return;
    }
    if (leftover !== undefined && leftover.length > 0) this.decoder.push(leftover);
    if (this.pending !== undefined) this.decoder.push(this.pending);
    this.pending = undefined;
    this.pump();
  }

  /**
   * Server shutdown: stop taking requests, give in-flight ones `graceMs` to
   * finish and be answered, then close the socket. Resolves when closed, or
   * after twice `graceMs` if the device never settles a request (its
   * completion is then dropped), so a stuck engine cannot hang shutdown.
   */
  shutdown(graceMs = CLOSE_GRACE_MS): Promise<void> {
    if (this.state === 'open') {
      this.graceTimer = setTimeout(() => {
        this.dropReplies = true;
        this.socket.destroy();
      }, graceMs);
      this.graceTimer.unref();
      this.drain();
    }
    let abandon: NodeJS.Timeout | undefined;
    const giveUp = new Promise<void>((resolve) => {
      abandon = setTimeout(() => {
        this.log.warn({ inFlight: this.inFlight }, 'NBD requests still in flight at shutdown; abandoning them');
        resolve();
      }, 2 * graceMs);
      abandon.unref();
    });
    return Promise.race([this.closed.then(() => clearTimeout(abandon)), giveUp]);
  }

  // --- Reading --------------------------------------------------------------

  private pump(): void {
    this.pumping = true;
    try {
      while (this.state === 'open' && this.canTakeMore()) {
        const frame = this.decoder.next();
        if (frame === undefined) break;
        this.dispatch(frame.header, frame.payload);
      }
    } catch (err) {
      // Only the decoder throws here (dispatch catches the device's errors).
      this.pumping = false;
      this.protocolViolation(err);
      return;
    } finally {
      this.pumping = false;
    }
    this.updateReading();
  }

  private canTakeMore(): boolean {
    return !this.writeBlocked && this.inFlight < this.maxInFlight && this.inFlightBytes < this.maxInFlightBytes;
  }

  /** Pauses the socket above the in-flight bounds or while writes back up; resumes below. */
  private updateReading(): void {
    this.reading.set(this.state === 'open' && this.canTakeMore());
  }

  private protocolViolation(err: unknown): void {
    this.log.warn({ err: errorMessage(err) }, 'NBD protocol violation; closing this connection');
    this.dropReplies = true;
    this.socket.destroy();
    this.drain();
  }

  // --- Requests -------------------------------------------------------------

  private dispatch(r: NbdRequest, payload: Buffer | undefined): void {
    if (r.type === NbdCmd.DISC) {
      // Spec: answer everything outstanding, then close; DISC itself has no reply.
      if (this.trace) this.log.debug('NBD_CMD_DISC');
      this.slots.give(r);
      this.drain();
      return;
    }
    r.payload = payload;
    r.bytes = r.type === NbdCmd.READ || r.type === NbdCmd.WRITE ? r.length : 0;
    r.started = performance.now();
    this.inFlight++;
    this.inFlightBytes += r.bytes;
    const rejection = validateRequest(r, this.allowedFlags, this.device, this.exportSize);
    if (rejection !== undefined) return this.finish(r, rejection.error, undefined, rejection.message, undefined);
    let work: Promise<Buffer | void>;
    try {
      work = this.perform(r);
    } catch (err) {
      return this.failed(r, err);
    }
    work.then(r.ok, r.fail);
  }

  /** The device call: READ and WRITE straight to the engine (one promise each), the rest in performOther. */
  private perform(r: NbdRequest): Promise<Buffer | void> {
    const dev = this.device;
    switch (r.type) {
      case NbdCmd.READ:
        if (r.length === 0) return Promise.resolve(Buffer.alloc(0));
        // Pooled destination, recycled when the socket has taken the reply.
        return dev.readInto ? dev.readInto(r.offset, ioBuffers.acquire(r.length)) : dev.read(r.offset, r.length);
      case NbdCmd.WRITE:
        // The payload was copied once, into a pooled buffer, out of the reused
        // receive buffer (or is a view into a 'data' chunk on a TLS socket);
        // it goes back to the pool when the write has settled (completed/failed).
        if (r.length === 0) return Promise.resolve();
        return dev.write(r.offset, r.payload!, (r.flags & NBD_CMD_FLAG_FUA) !== 0);
      case NbdCmd.BLOCK_STATUS:
        return this.blockStatus(r);
      default:
        return performOther(dev, r);
    }
  }

  /**
   * NBD_CMD_BLOCK_STATUS for base:allocation: the device's extents fitted to
   * the request (REQ_ONE: one descriptor), encoded as the reply's payload.
   * A device that cannot tell answers "data" for the whole range (always true).
   */
  private async blockStatus(h: RequestHeader): Promise<Buffer> {
    const dev = this.device;
    const raw = dev.allocationStatus ? await dev.allocationStatus(h.offset, h.length) : [{ length: h.length, flags: 0 }];
    const max = (h.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_BLOCK_STATUS_EXTENTS;
    const extents = fitExtents(raw, h.length, max);
    if (extents.length === 0) extents.push({ length: h.length, flags: 0 });
    return encodeBlockStatusChunk(h.handleHi, h.handleLo, BASE_ALLOCATION_ID, extents);
  }

  /** RequestOwner: the device resolved `r`. */
  completed(r: NbdRequest, data: Buffer | undefined): void {
    if (data !== undefined && r.type === NbdCmd.READ && data.length !== r.length) {
      this.log.error({ offset: r.offset, length: r.length, got: data.length }, 'BlockDevice.read returned the wrong number of bytes');
      return this.finish(r, NbdError.EIO, undefined, undefined, undefined);
    }
    this.finish(r, NbdError.OK, data, undefined, undefined);
  }

  /** RequestOwner: the device rejected `r` (or threw). */
  failed(r: NbdRequest, err: unknown): void {
    const error = nbdErrorFor(err);
    const message = errorMessage(err);
    this.log.warn({ cmd: commandName(r.type), offset: r.offset, length: r.length, nbdError: error, err: message }, 'NBD request failed');
    this.finish(r, error, undefined, message, err);
  }

  /** Counts, replies to and recycles `r`, then takes more requests (or finishes draining). */
  private finish(r: NbdRequest, error: number, data: Buffer | undefined, message: string | undefined, cause: unknown): void {
    if (r.payload !== undefined) ioBuffers.release(r.payload); // the engine is done with it (no-op for views)
    if (this.trace) {
      this.log.debug({ cmd: commandName(r.type), handle: handleText(r.handleHi, r.handleLo), offset: r.offset, length: r.length, error }, 'NBD request done');
    }
    const stats = this.device.stats;
    if (stats !== undefined) countRequest(stats, r, error, (performance.now() - r.started) / 1000, cause);
    this.inFlight--;
    this.inFlightBytes -= r.bytes;
    this.reply(r, error, data, message);
    this.slots.give(r);
    if (this.state === 'open') {
      if (!this.pumping) this.pump();
    } else {
      this.drain();
    }
  }

  // --- Replies --------------------------------------------------------------

  private reply(h: RequestHeader, error: number, data: Buffer | undefined, message: string | undefined): void {
    if (this.dropReplies || !this.socket.writable) {
      if (data !== undefined) ioBuffers.release(data); // never handed to the socket
      return;
    }
    const ok = this.replies.send(h, error, error === NbdError.OK ? data : undefined, message);
    if (!ok && !this.writeBlocked) {
      this.writeBlocked = true;
      this.updateReading();
    }
  }

  // --- Closing --------------------------------------------------------------

  /** Stops reading; once nothing is in flight, closes the socket and tears down. */
  private drain(): void {
    if (this.state === 'done') return;
    if (this.state === 'open') {
      this.state = 'draining';
      this.updateReading();
    }
    if (this.inFlight > 0) return;
    this.teardown();
  }

  /** The one place that removes every listener this connection added. */
  private teardown(): void {
    this.state = 'done';
    if (this.graceTimer !== undefined) clearTimeout(this.graceTimer);
    const s = this.socket;
    removeSocketHandlers(s, this.handlers);
    if (s.destroyed) {
      this.resolveClosed();
      return;
    }
    s.once('close', () => this.resolveClosed());
    // What the client still sends is read and dropped (onRead ignores it
    // now): unread bytes at close would make the kernel reset the connection
    // instead of delivering the last replies.
    this.reading.set(true);
    // Flush the last replies, then close; destroy anyway if the peer stops reading.
    s.end(() => s.destroy());
    setTimeout(() => s.destroy(), CLOSE_GRACE_MS).unref();
  }
}
