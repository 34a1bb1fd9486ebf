import type net from 'node:net';
import { MAX_DATA_PAYLOAD } from '../../constants.js';
import { checkRequestCounters, encodeReplyHeader, requestFrameSpec } from '../codec.js';
import { ReplyWriter, replyBuffers } from './reply-writer.js';
import { Flag, Opcode, REPLY_HEADER_SIZE, Status, opcodeName, type RequestHeader } from '../frame.js';
import { InvalidArgumentError, errorMessage } from '../../errors.js';
import { BufferPool, COMMON_IO_SIZES } from '../../buffer-pool.js';
import { FrameDecoder } from '../../frame-decoder.js';
import { adoptWithReceiveBuffer } from '../../net/receive-buffer-socket.js';
import { isTraced, type Logger } from '../../logger.js';
import type { ChunkService, Done, ServedChunk } from './chunk-service.js';
import { NoChunkError, OutOfRangeError, ReadOnlyChunkError, StaleRouteError, TooLargeError, statusForError } from '../status.js';
import { AuthGate } from './auth-gate.js';
import { ROUTE_ALIGN, routeCount, routeGeneration } from '../forward-codec.js';
import type { ForwardOp, ForwardOwner, Forwarder, Leg } from './forwarder.js';

// One data-protocol connection on the node (data-server.ts accepts them): one
// FrameDecoder, requests dispatched as soon as they parse, replies written as
// each completes (matched by request id, in any order). Back-pressure both
// ways: reading pauses while too many requests (or bytes) are in flight on
// the connection or while the socket's write buffer is full, and resumes on
// completion / 'drain'. A malformed frame is logged and closes that
// connection only; every other input gets a status and changes nothing.
// With a cluster data key, no request frame is read before the peer
// authenticated (auth-gate.ts). FORWARD_WRITE goes through forwarder.ts.

// Read replies (header + data) and assembled write payloads live until the
// socket or the disk is done with them; recycling them keeps V8's GC quiet.
// FORWARD_WRITE payloads are a route block (a multiple of ROUTE_ALIGN) then the data.
const payloadBuffers = new BufferPool([...COMMON_IO_SIZES, ...COMMON_IO_SIZES.map((n) => n + ROUTE_ALIGN), ...COMMON_IO_SIZES.map((n) => n + 2 * ROUTE_ALIGN)]);
const recycleReply = (buf: Buffer): void => replyBuffers.release(buf);
const NO_LEGS: readonly Leg[] = [];

const KNOWN_FLAGS = Flag.FUA;
/**
 * READ/WRITE bytes in flight per connection before its socket stops being
 * read: with 256 requests of up to 32 MiB each, memory must be bounded by
 * bytes too, not only by count.
 */
const MAX_INFLIGHT_BYTES = 2 * MAX_DATA_PAYLOAD;
/**
 * Each connection's socket reads land in one reused buffer of this size
 * (net's `onread`); WRITE payloads are copied once out of it into pooled
 * buffers. A fresh ArrayBuffer per socket read was the node's largest source
 * of garbage: a quarter of its CPU went to V8's major GC under 64 KiB writes.
 */
const RECEIVE_BUFFER_SIZE = 256 * 1024;
/**
 * Reply bytes queued before reading pauses. At Node's default 16 KiB one
 * 64 KiB read reply, or a few 4 KiB ones corked together, made write()
 * return false: reading paused and resumed on 'drain' (two epoll_ctl calls
 * and a 'drain' per batch, half of them failing with EEXIST; docs/benchmarks.md,
 * issue 12 fifth pass). Still bounded: above it reading pauses, and the
 * in-flight limits bound what is asked for.
 */
const REPLY_HIGH_WATER_MARK = 1024 * 1024;

export class Connection implements ForwardOwner {
  private readonly socket: net.Socket;
  private readonly store: ChunkService;
  private readonly forwarder: Forwarder;
  private readonly maxInflight: number;
  // WRITE payloads that span socket chunks are assembled in pooled buffers.
  private readonly decoder = new FrameDecoder(requestFrameSpec, (_h, length) => payloadBuffers.acquire(length));
  private readonly log: Logger;
  private readonly trace: boolean;
  private inflight = 0;
  private inflightBytes = 0;
  private pumping = false;
  private closed = false;
  /** Set until the client authenticated; no request frame is read before. */
  private gate: AuthGate | undefined;
  private readonly replies: ReplyWriter;

  constructor(
    id: number, accepted: net.Socket, adopt: boolean, store: ChunkService, forwarder: Forwarder, maxInflight: number,
    key: Buffer | undefined, log: Logger, onClose: () => void,
  ) {
    const adopted = adopt ? adoptWithReceiveBuffer(accepted, Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE), this.onRead, true, REPLY_HIGH_WATER_MARK) : undefined;
    const socket = adopted ?? accepted;
    this.socket = socket;
    this.replies = new ReplyWriter(socket, () => { if (!this.pumping) this.pump(); });
    this.store = store;
    this.forwarder = forwarder;
    this.maxInflight = maxInflight;
    this.log = log.child({ conn: id, remote: `${socket.remoteAddress}:${socket.remotePort}` });
    this.trace = isTraced('data-server');
    if (key !== undefined) this.gate = new AuthGate(socket, key, this.log, () => { this.closed = true; this.replies.closed = true; });
    if (adopted === undefined) {
      socket.on('data', (chunk: Buffer) => {
        const bytes = this.admitBytes(chunk);
        if (bytes === undefined) return;
        this.decoder.push(bytes);
        this.pump();
      });
      socket.resume();
    }
    socket.on('drain', () => {
      this.replies.blocked = false;
      this.pump();
    });
    socket.on('error', (err) => this.log.debug({ err }, 'connection error'));
    socket.on('close', () => {
      this.closed = true;
      this.replies.closed = true;
      this.gate?.cancel();
      if (!this.decoder.idle) this.log.debug({ buffered: this.decoder.bufferedBytes }, 'peer closed mid-frame');
      socket.removeAllListeners('data');
      socket.removeAllListeners('drain');
      onClose();
    });
  }

  /** net's onread callback: one socket read, in the connection's reused receive buffer. */
  private readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    const bytes = this.admitBytes((buf as Buffer).subarray(0, nread));
    if (bytes === undefined) return !this.closed;
    this.decoder.pushTransient(bytes);
    this.pump();
    this.decoder.own(); // nothing may point into the receive buffer once this returns
    return true;
  };

  /** Bytes read: all of them once authenticated; before, the handshake takes them and only what follows the proof is returned. */
  private admitBytes(bytes: Buffer): Buffer | undefined {
    const gate = this.gate;
    if (gate === undefined) return this.closed ? undefined : bytes;
    const r = gate.feed(bytes);
    if (!r.open) return undefined;
    this.gate = undefined;
    return r.rest.length > 0 ? r.rest : undefined;
  }

  destroy(): void {
    this.gate?.cancel();
    this.closed = true;
    this.replies.closed = true;
    this.socket.destroy();
  }

  /** Dispatches every whole frame while the connection may take more; then sets the read state. */
  private pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      while (this.mayRead() && !this.closed) {
        const frame = this.decoder.next();
        if (frame === undefined) break;
        this.dispatch(frame.header, frame.payload);
      }
    } catch (err) {
      // Only the decoder throws here (dispatch never does): the stream is unparseable.
      this.log.warn({ err: errorMessage(err) }, 'malformed frame: closing connection');
      this.destroy();
      return;
    } finally {
      this.pumping = false;
    }
    const wantRead = this.mayRead();
    if (wantRead && this.socket.isPaused()) this.socket.resume();
    else if (!wantRead && !this.socket.isPaused()) this.socket.pause();
  }

  private mayRead(): boolean {
    return this.inflight < this.maxInflight && this.inflightBytes < MAX_INFLIGHT_BYTES && !this.replies.blocked;
  }

  private dispatch(h: RequestHeader, payload: Buffer | undefined): void {
    // Memory this request holds until its reply: the read buffer or the write payload.
    const cost = h.opcode === Opcode.WRITE || h.opcode === Opcode.FORWARD_WRITE || (h.opcode === Opcode.READ && h.length <= MAX_DATA_PAYLOAD) ? h.length : 0;
    this.inflight++;
    this.inflightBytes += cost;
    if (this.trace) this.log.debug({ op: opcodeName(h.opcode), id: h.requestId, vol: h.volumeId, seg: h.segment, slot: h.slot, off: h.offset, len: h.length }, 'request');
    try {
      if ((h.flags & ~KNOWN_FLAGS) !== 0) throw new InvalidArgumentError(`unknown flags 0x${h.flags.toString(16)}`);
      checkRequestCounters(h); // an epoch or generation above 2^53-1: BAD_REQUEST, never truncated
      switch (h.opcode) {
        case Opcode.READ: return this.read(h);
        case Opcode.WRITE: return this.write(h, payload);
        case Opcode.FORWARD_WRITE: return this.forwardWrite(h, payload, cost);
        case Opcode.WRITE_ZEROES:
        case Opcode.DISCARD: return this.zero(h);
        case Opcode.FLUSH: return this.settle(h.requestId, undefined, this.store.flush(h.volumeId));
        case Opcode.FENCE: return this.settle(h.requestId, undefined, this.store.fence(h.volumeId, h.epoch, h.generation));
        case Opcode.PING: return this.replyStatus(h.requestId, Status.OK);
        case Opcode.MARK_DIRTY:
        case Opcode.CLEAR_DIRTY: return this.writeIntent(h);
        default: throw new InvalidArgumentError(`unknown opcode ${h.opcode}`);
      }
    } catch (err) {
      this.replyError(h.requestId, err, cost);
    }
  }

  /** The chunk a request addresses, with its range checked; throws the error to reply with. */
  private target(h: RequestHeader): ServedChunk {
    const chunk = this.store.lookup(h.volumeId, h.segment, h.slot);
    if (chunk === undefined) {
      throw new NoChunkError(`no chunk for volume ${h.volumeId} segment ${h.segment} slot ${h.slot} on this node`);
    }
    if (h.offset + h.length > chunk.size) {
      throw new OutOfRangeError(`range ${h.offset}+${h.length} is outside the chunk of ${chunk.size} bytes`);
    }
    return chunk;
  }

  private read(h: RequestHeader): void {
    if (h.length > MAX_DATA_PAYLOAD) throw new TooLargeError(`read of ${h.length} bytes exceeds the limit of ${MAX_DATA_PAYLOAD}`);
    const chunk = this.target(h);
    // One buffer: reply header then the data, read straight into place.
    const buf = replyBuffers.acquire(REPLY_HEADER_SIZE + h.length);
    const requestId = h.requestId;
    const started = performance.now();
    chunk.beginIo(false);
    this.store.read(chunk, h.offset, h.length, buf, REPLY_HEADER_SIZE, (err) => {
      chunk.endIo(false);
      const length = buf.length - REPLY_HEADER_SIZE;
      if (err !== null) {
        chunk.failed(err);
        return this.replyError(requestId, err, length);
      }
      chunk.served(false, length, (performance.now() - started) / 1000);
      encodeReplyHeader({ requestId, status: Status.OK, length }, buf, 0);
      this.replies.send(buf, undefined, recycleReply);
      this.completed(length);
    });
  }

  private write(h: RequestHeader, payload: Buffer | undefined): void {
    const chunk = this.target(h);
    const vol = this.admit(h, chunk);
    const requestId = h.requestId;
    const length = h.length;
    const fua = (h.flags & Flag.FUA) !== 0;
    const started = performance.now();
    chunk.beginIo(true);
    const done: Done = (err) => {
      chunk.endIo(true);
      if (payload !== undefined) payloadBuffers.release(payload); // no-op for views into socket chunks
      if (err !== null) {
        chunk.failed(err);
        this.replyError(requestId, err, length);
      } else {
        chunk.served(true, length, (performance.now() - started) / 1000);
        this.replyStatus(requestId, Status.OK, length);
      }
    };
    const raising = this.store.ensureEpoch(vol, h.epoch);
    if (raising === undefined) return this.store.write(chunk, h.offset, payload, fua, done);
    raising.then(() => this.store.write(chunk, h.offset, payload, fua, done), done);
  }

  /**
   * FORWARD_WRITE (forwarder.ts): the rule checks first, refusing the whole
   * request and forwarding nothing on a stale epoch (rule 3), a snapshot's
   * chunk or a stale route; then the local write and the forwards at once.
   * A local failure (no chunk, range, disk) is the primary's own result: the
   * other replicas are still written.
   */
  private forwardWrite(h: RequestHeader, payload: Buffer | undefined, cost: number): void {
    const routeLength = h.generation;
    if (payload === undefined || routeLength < ROUTE_ALIGN) throw new InvalidArgumentError('FORWARD_WRITE without a route block');
    let chunk: ServedChunk | undefined;
    let localErr: Error | undefined;
    try {
      chunk = this.target(h);
    } catch (err) {
      localErr = err as Error;
    }
    const vol = chunk !== undefined ? this.admit(h, chunk) : this.store.admit(h.volumeId, h.epoch);
    if (chunk !== undefined) checkRoute(h, chunk, routeGeneration(payload, 0));
    const legs = routeCount(payload, 0) === 0 ? NO_LEGS : this.forwarder.legs(h.volumeId, h.segment, payload, routeLength);
    const data = payload.subarray(routeLength, routeLength + h.length);
    const op = this.forwarder.take();
    op.begin(this, h.requestId, cost, h.slot, legs);
    op.payload = payload;
    op.chunk = chunk;
    op.started = performance.now();
    if (legs.length > 0) this.forwarder.forward(op, h.flags, h.epoch, h.offset, data);
    if (chunk === undefined) return op.localDone(localErr ?? null);
    const fua = (h.flags & Flag.FUA) !== 0;
    chunk.beginIo(true);
    const raising = this.store.ensureEpoch(vol, h.epoch);
    if (raising === undefined) return this.store.write(chunk, h.offset, data, fua, op.localDone);
    const c = chunk;
    raising.then(() => this.store.write(c, h.offset, data, fua, op.localDone), op.localDone);
  }

  /** Every replica of a FORWARD_WRITE answered: one reply, OK or each replica's outcome. */
  forwardDone(op: ForwardOp): void {
    const chunk = op.chunk as ServedChunk | undefined;
    const local = op.errors[0];
    if (chunk !== undefined) {
      chunk.endIo(true);
      if (local !== undefined) chunk.failed(local);
      else chunk.served(true, op.cost, (performance.now() - op.started) / 1000);
    }
    if (op.payload !== undefined) payloadBuffers.release(op.payload);
    const { requestId, cost } = op;
    if (!op.failed) {
      this.forwarder.release(op);
      return this.replyStatus(requestId, Status.OK, cost);
    }
    const results = op.results();
    this.forwarder.release(op);
    this.replies.withPayload(requestId, Status.FORWARD_RESULTS, results);
    this.completed(cost);
  }

  private zero(h: RequestHeader): void {
    const chunk = this.target(h);
    const vol = this.admit(h, chunk);
    const fua = (h.flags & Flag.FUA) !== 0;
    chunk.beginIo(true);
    const work = (this.store.ensureEpoch(vol, h.epoch) ?? Promise.resolve()).then(() => this.store.zero(chunk, h.offset, h.length, fua));
    this.settle(h.requestId, chunk, work);
  }

  /**
   * MARK_DIRTY (bits on disk before the reply) and CLEAR_DIRTY (bits cleared
   * in memory before the reply, persisted lazily): see write-intent.ts. Both
   * are mutating requests, epoch-checked like WRITE, and FENCE waits for them.
   */
  private writeIntent(h: RequestHeader): void {
    const chunk = this.target(h);
    const vol = this.admit(h, chunk);
    chunk.beginIo(true);
    const { offset, length } = h;
    const change = h.opcode === Opcode.MARK_DIRTY
      ? () => this.store.markDirty(chunk, offset, length)
      : () => { this.store.clearDirty(chunk, offset, length); };
    const raising = this.store.ensureEpoch(vol, h.epoch);
    this.settle(h.requestId, chunk, raising === undefined ? Promise.resolve().then(change) : raising.then(change));
  }

  /**
   * Check of a mutating request, changing nothing when refused: a snapshot's
   * chunk takes none (READ_ONLY, at any epoch); an epoch lower than seen is
   * refused (docs/design.md rule 3).
   */
  private admit(h: RequestHeader, chunk: ServedChunk): unknown {
    try {
      if (chunk.readOnly) {
        throw new ReadOnlyChunkError(`volume ${h.volumeId} segment ${h.segment} slot ${h.slot} is a snapshot's chunk: read-only`);
      }
      return this.store.admit(h.volumeId, h.epoch);
    } catch (err) {
      chunk.failed(err); // counted on the chunk addressed: a fenced request shows on its disk
      throw err;
    }
  }

  private settle(requestId: number, chunk: ServedChunk | undefined, work: Promise<void>): void {
    work.then(() => {
      chunk?.endIo(true);
      this.replyStatus(requestId, Status.OK);
    }, (err: unknown) => {
      chunk?.endIo(true);
      chunk?.failed(err);
      this.replyError(requestId, err);
    });
  }

  /** A reply without payload: completes the request, releasing its `cost` in bytes. */
  private replyStatus(requestId: number, status: Status, cost = 0): void {
    this.replies.status(requestId, status);
    this.completed(cost);
  }

  private replyError(requestId: number, err: unknown, cost = 0): void {
    const status = this.replies.error(requestId, err);
    if (status === Status.IO_ERROR || status === Status.DISK_FAILED) this.log.warn({ err, requestId }, 'request failed');
    else if (status === Status.STALE_ROUTE) this.log.warn({ err: errorMessage(err), requestId }, 'late forward refused (stale route)');
    else if (this.trace) this.log.debug({ requestId, status, err: errorMessage(err) }, 'request refused');
    this.completed(cost);
  }

  /** One request answered: its slot and bytes are free, reading may resume. */
  private completed(cost: number): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (!this.pumping) this.pump();
  }
}

/**
 * The route rule of a FORWARD_WRITE on one chunk: under one epoch, route
 * generations never go down. A lower one is a forward from a primary the
 * head gave up on (and re-sent around): refused, changing nothing.
 */
function checkRoute(h: RequestHeader, chunk: ServedChunk, generation: number): void {
  if (h.epoch > chunk.routeEpoch) {
    chunk.routeEpoch = h.epoch;
    chunk.routeGeneration = generation;
  } else if (h.epoch < chunk.routeEpoch || generation < chunk.routeGeneration) {
    const err = new StaleRouteError(`volume ${h.volumeId} segment ${h.segment} slot ${h.slot}: route generation ${generation} at epoch ${h.epoch} is older than ${chunk.routeGeneration} at ${chunk.routeEpoch}`);
    chunk.failed(err);
    throw err;
  } else {
    chunk.routeGeneration = generation;
  }
}
