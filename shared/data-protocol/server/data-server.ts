import net from 'node:net';
import * as tls from 'node:tls';
import { MAX_DATA_PAYLOAD, MAX_INFLIGHT_PER_CONNECTION } from '../../constants.js';
import { checkRequestCounters, encodeErrorMessage, encodeReplyHeader, requestFrameSpec } from '../codec.js';
import { Flag, Opcode, REPLY_HEADER_SIZE, Status, opcodeName, type RequestHeader } from '../frame.js';
import { InvalidArgumentError, errorMessage } from '../../errors.js';
import { BufferPool, COMMON_IO_SIZES } from '../../buffer-pool.js';
import { FrameDecoder } from '../../frame-decoder.js';
import { adoptWithReceiveBuffer } from '../../net/receive-buffer-socket.js';
import { isTraced, moduleLogger, type Logger } from '../../logger.js';
import type { ChunkService, Done, ServedChunk } from './chunk-service.js';
import { NoChunkError, OutOfRangeError, ReadOnlyChunkError, TooLargeError, statusForError } from '../status.js';
import { dataTlsServerOptions, type DataSecurity } from '../auth/data-security.js';
import { AuthGate } from './auth-gate.js';

// Read replies (header + data) and assembled write payloads live until the
// socket or the disk is done with them; recycling them keeps V8's GC quiet.
const replyBuffers = new BufferPool(COMMON_IO_SIZES.map((n) => n + REPLY_HEADER_SIZE));
const payloadBuffers = new BufferPool(COMMON_IO_SIZES);
const recycleReply = (buf: Buffer): void => replyBuffers.release(buf);
/** Status-only replies of one tick are encoded side by side in one of these and sent in one write. */
const STATUS_BATCH_SIZE = 4096;
const statusBatches = new BufferPool([STATUS_BATCH_SIZE]);

// The data protocol server (docs/data-protocol.md): one FrameDecoder per TCP
// connection, requests dispatched as soon as they parse, replies written as
// each completes (matched by request id, in any order). Back-pressure both
// ways: reading pauses while too many requests are in flight on the
// connection or while the socket's write buffer is full, and resumes on
// completion / 'drain'. A malformed frame is logged and closes that
// connection only; every other input gets a status and changes nothing.
// With a cluster data key, a connection reads no request frame before it
// authenticated (auth-gate.ts); with --data-tls it is a TLS connection.

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
/** Write buffer of a TLS data connection before write() asks to wait for 'drain' (plain sockets: Node's default). */
const TLS_WRITE_HIGH_WATER_MARK = 4 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT_MS = 5_000;

export interface DataServerOptions {
  /** Requests in flight per connection before its socket stops being read. */
  maxInflight?: number;
  /** Authentication key and TLS (default: neither). */
  security?: DataSecurity;
}

export class DataServer {
  private readonly store: ChunkService;
  private readonly maxInflight: number;
  private readonly server: net.Server;
  private readonly security: DataSecurity;
  private readonly connections = new Set<Connection>();
  private readonly log = moduleLogger('data-server');
  private nextConnId = 1;

  constructor(store: ChunkService, opts: DataServerOptions = {}) {
    this.store = store;
    this.maxInflight = opts.maxInflight ?? MAX_INFLIGHT_PER_CONNECTION;
    this.security = opts.security ?? {};
    const material = this.security.tls;
    if (material === undefined) {
      // Paused until the Connection takes the socket over (see receive-buffer-socket.ts).
      this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => this.accept(accepted, true));
    } else {
      // TLS by hand on accepted TCP sockets: tls.Server gives its sockets a 16 KiB write
      // high-water mark, which would stall replies of 64 KiB reads on 'drain' each time.
      const context = tls.createSecureContext(dataTlsServerOptions(material));
      this.server = net.createServer({ noDelay: true }, (accepted) => this.acceptTls(accepted, context));
    }
  }

  private acceptTls(accepted: net.Socket, secureContext: tls.SecureContext): void {
    const remote = `${accepted.remoteAddress}:${accepted.remotePort}`;
    const secure = new tls.TLSSocket(accepted, {
      isServer: true, secureContext, requestCert: true, rejectUnauthorized: true, highWaterMark: TLS_WRITE_HIGH_WATER_MARK,
    } as tls.TLSSocketOptions);
    const refuse = (reason: string): void => {
      this.log.warn({ remote, reason }, 'data connection refused: TLS handshake failed');
      secure.destroy();
    };
    const timer = setTimeout(() => refuse(`no TLS handshake within ${TLS_HANDSHAKE_TIMEOUT_MS} ms`), TLS_HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    const onError = (err: Error): void => { clearTimeout(timer); refuse(err.message); };
    secure.once('error', onError);
    secure.once('secure', () => {
      clearTimeout(timer);
      secure.off('error', onError);
      this.accept(secure, false);
    });
  }

  private accept(accepted: net.Socket, adopt: boolean): void {
    const conn = new Connection(this.nextConnId++, accepted, adopt, this.store, this.maxInflight, this.security.key, this.log, () => this.connections.delete(conn));
    this.connections.add(conn);
  }

  /** Listens on host:port (0 picks one); resolves with "host:port". */
  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.server.on('error', (err) => this.log.error({ err }, 'data server error'));
        const addr = this.server.address() as net.AddressInfo;
        resolve(`${host}:${addr.port}`);
      });
    });
  }

  /** Stops accepting and drops every connection (in-flight requests finish, their replies are dropped). */
  close(): Promise<void> {
    for (const c of this.connections) c.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

class Connection {
  private readonly socket: net.Socket;
  private readonly store: ChunkService;
  private readonly maxInflight: number;
  // WRITE payloads that span socket chunks are assembled in pooled buffers.
  private readonly decoder = new FrameDecoder(requestFrameSpec, (_h, length) => payloadBuffers.acquire(length));
  private readonly log: Logger;
  private readonly trace: boolean;
  private inflight = 0;
  private inflightBytes = 0;
  private writeBlocked = false;
  private pumping = false;
  private closed = false;
  private corked = false;
  /** Set until the client authenticated; no request frame is read before. */
  private gate: AuthGate | undefined;
  /** This tick's status-only replies, encoded back to back (sent at the end of the tick). */
  private statusBatch: Buffer | undefined;
  private statusBatchUsed = 0;

  constructor(
    id: number, accepted: net.Socket, adopt: boolean, store: ChunkService, maxInflight: number, key: Buffer | undefined, log: Logger, onClose: () => void,
  ) {
    const adopted = adopt ? adoptWithReceiveBuffer(accepted, Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE), this.onRead, true) : undefined;
    const socket = adopted ?? accepted;
    this.socket = socket;
    this.store = store;
    this.maxInflight = maxInflight;
    this.log = log.child({ conn: id, remote: `${socket.remoteAddress}:${socket.remotePort}` });
    this.trace = isTraced('data-server');
    if (key !== undefined) this.gate = new AuthGate(socket, key, this.log, () => { this.closed = true; });
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
      this.writeBlocked = false;
      this.pump();
    });
    socket.on('error', (err) => this.log.debug({ err }, 'connection error'));
    socket.on('close', () => {
      this.closed = true;
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
    return this.inflight < this.maxInflight && this.inflightBytes < MAX_INFLIGHT_BYTES && !this.writeBlocked;
  }

  private dispatch(h: RequestHeader, payload: Buffer | undefined): void {
    // Memory this request holds until its reply: the read buffer or the write payload.
    const cost = h.opcode === Opcode.WRITE || (h.opcode === Opcode.READ && h.length <= MAX_DATA_PAYLOAD) ? h.length : 0;
    this.inflight++;
    this.inflightBytes += cost;
    if (this.trace) this.log.debug({ op: opcodeName(h.opcode), id: h.requestId, vol: h.volumeId, seg: h.segment, slot: h.slot, off: h.offset, len: h.length }, 'request');
    try {
      if ((h.flags & ~KNOWN_FLAGS) !== 0) throw new InvalidArgumentError(`unknown flags 0x${h.flags.toString(16)}`);
      checkRequestCounters(h); // an epoch or generation above 2^53-1: BAD_REQUEST, never truncated
      switch (h.opcode) {
        case Opcode.READ: return this.read(h);
        case Opcode.WRITE: return this.write(h, payload);
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
      this.send(buf, undefined, length, recycleReply);
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

  /** A reply without payload (WRITE, FLUSH, ... done): encoded into this tick's batch, no allocation. */
  private replyStatus(requestId: number, status: Status, cost = 0): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (!this.closed) {
      this.corkForTick();
      if (this.statusBatchUsed + REPLY_HEADER_SIZE > STATUS_BATCH_SIZE) this.sendStatusBatch();
      const batch = (this.statusBatch ??= statusBatches.acquire(STATUS_BATCH_SIZE));
      encodeReplyHeader({ requestId, status, length: 0 }, batch, this.statusBatchUsed);
      this.statusBatchUsed += REPLY_HEADER_SIZE;
    }
    if (!this.pumping) this.pump();
  }

  private sendStatusBatch(): void {
    const batch = this.statusBatch;
    const used = this.statusBatchUsed;
    this.statusBatch = undefined;
    this.statusBatchUsed = 0;
    if (batch === undefined || used === 0 || this.closed) return;
    if (!this.socket.write(batch.subarray(0, used), () => statusBatches.release(batch))) this.writeBlocked = true;
  }

  private replyError(requestId: number, err: unknown, cost = 0): void {
    const status = statusForError(err);
    if (status === Status.IO_ERROR || status === Status.DISK_FAILED) this.log.warn({ err, requestId }, 'request failed');
    else if (this.trace) this.log.debug({ requestId, status, err: errorMessage(err) }, 'request refused');
    const message = encodeErrorMessage(errorMessage(err));
    const header = Buffer.allocUnsafe(REPLY_HEADER_SIZE);
    encodeReplyHeader({ requestId, status, length: message.length }, header, 0);
    this.send(header, message, cost);
  }

  /**
   * Writes one reply (header, then an optional payload, corked into one
   * writev) and completes its request, releasing its `cost` in bytes.
   */
  /**
   * Replies completed in one event-loop turn leave in one writev: the socket
   * is corked at the first reply and uncorked in setImmediate, after the poll
   * phase has run every completed disk callback (nextTick would fire after
   * each callback and batch nothing). One syscall per 16-byte write reply
   * cost the node ~12% CPU.
   */
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
    if (this.writeBlocked && !this.pumping) this.pump();
  };

  /** `written` (optional) recycles `first` once the socket no longer needs it. */
  private send(first: Buffer, second: Buffer | undefined, cost: number, written?: (buf: Buffer) => void): void {
    this.inflight--;
    this.inflightBytes -= cost;
    if (!this.closed) {
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
      if (!ok) this.writeBlocked = true;
    }
    if (!this.pumping) this.pump();
  }
}
