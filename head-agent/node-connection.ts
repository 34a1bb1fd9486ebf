import * as net from 'node:net';
import { DATA_REQUEST_TIMEOUT_MS, MAX_INFLIGHT_PER_CONNECTION } from '../shared/constants.js';
import { ProtocolError, TransportError, VskyError, errorMessage } from '../shared/errors.js';
import { FrameDecoder } from '../shared/frame-decoder.js';
import { encodeRequestHeader, replyFrameSpec } from '../shared/data-protocol/codec.js';
import {
  Opcode, REQUEST_HEADER_SIZE, Status, opcodeName, type ReplyHeader, type RequestHeader,
} from '../shared/data-protocol/frame.js';
import { parseHostPort } from '../shared/units.js';
import { isTraced, moduleLogger, type Logger } from '../shared/logger.js';

// One pipelined TCP connection from this head to one storage node's data port,
// shared by every volume with a chunk on that node. Requests are matched to
// replies by request id (the node may answer out of order). The hot path is
// allocation-light: pending-request objects (each with its own 40-byte header
// buffer) are recycled, header and payload go out between cork()/uncork(), and
// a READ reply that spans socket chunks is assembled straight into the
// caller's destination buffer by the decoder's allocator.
//
// Failure model (longhorn dataconn style): any transport error, protocol error,
// close or stalled request fails the whole connection, and with it every
// pending and queued request at once, with TransportError. The next request
// after a back-off reconnects; requests during the back-off fail fast so that
// a mirror can retry a read elsewhere without waiting.

const TRACE = 'head-connection';

/** Who a request is for: the chunk address, and how to turn a reply status into an error. */
export interface RequestTarget {
  readonly volumeId: number;
  readonly segment: number;
  readonly slot: number;
  /** Builds the typed error for a non-OK reply (called once per failed request). */
  replyError(opcode: number, status: number, message: string): Error;
}

/**
 * Completion of a submitted request. Preallocated per I/O by the caller (no
 * closure per request). Called exactly once, never synchronously from submit().
 */
export interface RequestCallback {
  requestDone(target: RequestTarget, err: Error | undefined): void;
}

export interface NodeConnectionOptions {
  /** A request unanswered this long fails the connection. */
  requestTimeoutMs?: number;
  /** Requests sent and awaiting a reply; beyond this they wait in the queue. */
  maxInflight?: number;
  /** Requests waiting to be sent; beyond this submit() fails the request. */
  maxQueued?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Socket write buffer high-water mark: write() returning false pauses sending until 'drain'. */
  writeHighWaterMark?: number;
}

const DEFAULTS = {
  requestTimeoutMs: DATA_REQUEST_TIMEOUT_MS,
  maxInflight: MAX_INFLIGHT_PER_CONNECTION,
  maxQueued: 16 * MAX_INFLIGHT_PER_CONNECTION,
  backoffInitialMs: 100,
  backoffMaxMs: 5_000,
  // Large enough that a pipeline of 64 KiB writes does not stall on every
  // write (the default 16 KiB would make each 64 KiB write wait for 'drain').
  writeHighWaterMark: 4 * 1024 * 1024,
};

/** The stall timer ticks this many times per request timeout. */
const TICKS_PER_TIMEOUT = 4;
const MAX_POOLED = 1024;

type State = 'idle' | 'connecting' | 'open' | 'backoff' | 'closed';

class Pending implements RequestHeader {
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
  sentTick = 0;
  readonly header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
}

/** Adapts the callback API to a promise for control-path requests (fence, flush). */
class PromiseCallback implements RequestCallback {
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

function callDone(cb: RequestCallback, target: RequestTarget, err: Error): void {
  cb.requestDone(target, err);
}

export class NodeConnection {
  readonly address: string;
  private readonly host: string;
  private readonly port: number;
  private readonly opts: Required<NodeConnectionOptions>;
  private readonly log: Logger;
  private readonly traced: boolean;

  private state: State = 'idle';
  private socket: net.Socket | undefined;
  private decoder: FrameDecoder<ReplyHeader> | undefined;
  /** Sent, awaiting reply, in send order (Map keeps insertion order: first = oldest). */
  private readonly inflight = new Map<number, Pending>();
  /** Waiting to be sent: a deque (array + head index). */
  private queue: Pending[] = [];
  private queueHead = 0;
  private readonly free: Pending[] = [];
  private nextRequestId = 1;
  /** socket.write() returned false: wait for 'drain'. */
  private blocked = false;
  private timer: NodeJS.Timeout | undefined;
  private tick = 0;
  private connectTick = 0;
  private readonly tickMs: number;
  private backoffMs: number;
  private retryAt = 0;
  private lastError: Error | undefined;
  private connects = 0;

  constructor(address: string, opts: NodeConnectionOptions = {}) {
    const { host, port } = parseHostPort(address, 'storage node data address');
    this.address = address;
    this.host = host;
    this.port = port;
    this.opts = { ...DEFAULTS, ...stripUndefined(opts) };
    this.tickMs = Math.max(5, Math.ceil(this.opts.requestTimeoutMs / TICKS_PER_TIMEOUT));
    this.backoffMs = this.opts.backoffInitialMs;
    this.log = moduleLogger(TRACE, { node: address });
    this.traced = isTraced(TRACE);
  }

  /** Requests sent or queued and not yet answered: the load measure reads balance on. */
  get outstanding(): number {
    return this.inflight.size + this.queue.length - this.queueHead;
  }

  /** False while in back-off after a failure (requests now would fail fast). */
  get available(): boolean {
    return this.state !== 'closed' && !(this.state === 'backoff' && Date.now() < this.retryAt);
  }

  get connected(): boolean {
    return this.state === 'open';
  }

  /** Successful TCP connects so far (tests and stats). */
  get connectCount(): number {
    return this.connects;
  }

  /**
   * Submits one request. READ: `data` is the destination (`length` bytes), filled
   * before the callback. WRITE: `data` is the payload (not copied; it must stay
   * unchanged until the callback). Other opcodes: `data` undefined.
   */
  submit(
    target: RequestTarget, opcode: number, flags: number, epoch: number, offset: number, length: number,
    data: Buffer | undefined, generation: number, callback: RequestCallback,
  ): void {
    if (this.state !== 'open') {
      const err = this.prepareToSend();
      if (err !== undefined) {
        process.nextTick(callDone, callback, target, err);
        return;
      }
    }
    const p = this.free.pop() ?? new Pending();
    p.opcode = opcode;
    p.flags = flags;
    p.slot = target.slot;
    p.volumeId = target.volumeId;
    p.segment = target.segment;
    p.epoch = epoch;
    p.offset = offset;
    p.length = length;
    p.generation = generation;
    p.data = data;
    p.target = target;
    p.callback = callback;
    if (this.state === 'open' && !this.blocked && this.inflight.size < this.opts.maxInflight && this.queueHead === this.queue.length) {
      const socket = this.socket!;
      socket.cork();
      this.send(socket, p);
      socket.uncork();
      return;
    }
    if (this.queue.length - this.queueHead >= this.opts.maxQueued) {
      this.release(p);
      const err = new TransportError(`too many requests queued for storage node ${this.address} (${this.opts.maxQueued})`, { node: this.address });
      process.nextTick(callDone, callback, target, err);
      return;
    }
    this.queue.push(p);
  }

  /** Promise form of submit() for the control path. */
  request(
    target: RequestTarget, opcode: number, flags: number, epoch: number, offset: number, length: number,
    data: Buffer | undefined, generation = 0,
  ): Promise<void> {
    const cb = new PromiseCallback();
    this.submit(target, opcode, flags, epoch, offset, length, data, generation, cb);
    return cb.promise;
  }

  /** Fails everything pending and refuses further requests. */
  close(): Promise<void> {
    if (this.state === 'closed') return Promise.resolve();
    const socket = this.socket;
    this.teardown(new TransportError(`connection to storage node ${this.address} closed`, { node: this.address }), 'closed');
    if (socket === undefined || socket.closed) return Promise.resolve();
    return new Promise((resolve) => socket.once('close', () => resolve()));
  }

  /** Gets the connection ready to accept a request; returns the error to fail it with, if any. */
  private prepareToSend(): Error | undefined {
    switch (this.state) {
      case 'closed':
        return new TransportError(`connection to storage node ${this.address} is closed`, { node: this.address });
      case 'backoff':
        if (Date.now() < this.retryAt) {
          return new TransportError(
            `storage node ${this.address} is unreachable (${errorMessage(this.lastError)}); retrying in ${this.retryAt - Date.now()} ms`,
            { node: this.address }, { cause: this.lastError },
          );
        }
        this.connect();
        return undefined;
      case 'idle':
        this.connect();
        return undefined;
      default:
        return undefined;
    }
  }

  private connect(): void {
    this.state = 'connecting';
    this.blocked = false;
    this.connectTick = this.tick;
    this.decoder = new FrameDecoder(replyFrameSpec, this.allocate);
    const socket = net.connect({
      host: this.host, port: this.port, noDelay: true, keepAlive: true, writableHighWaterMark: this.opts.writeHighWaterMark,
    } as net.NetConnectOpts);
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('connect', this.onConnect);
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    this.startTimer();
  }

  private readonly onConnect = (): void => {
    this.state = 'open';
    this.connects++;
    if (this.lastError !== undefined) this.log.info({ after: errorMessage(this.lastError) }, 'reconnected to storage node');
    this.lastError = undefined;
    this.backoffMs = this.opts.backoffInitialMs;
    this.pump();
  };

  /** Sends queued requests while the window and the socket allow. */
  private pump(): void {
    const socket = this.socket;
    if (socket === undefined || this.state !== 'open') return;
    if (this.queueHead === this.queue.length) return;
    socket.cork();
    while (!this.blocked && this.queueHead < this.queue.length && this.inflight.size < this.opts.maxInflight) {
      const p = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined as unknown as Pending;
      this.send(socket, p);
    }
    socket.uncork();
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** Writes one request (caller corks). */
  private send(socket: net.Socket, p: Pending): void {
    let id = this.nextRequestId;
    while (this.inflight.has(id)) id = (id + 1) >>> 0;
    this.nextRequestId = (id + 1) >>> 0;
    p.requestId = id;
    p.sentTick = this.tick;
    this.inflight.set(id, p);
    encodeRequestHeader(p, p.header);
    let ok = socket.write(p.header);
    if (p.opcode === Opcode.WRITE && p.length > 0) ok = socket.write(p.data!);
    if (!ok) this.blocked = true;
    if (this.traced) {
      this.log.debug({ id, op: opcodeName(p.opcode), vol: p.volumeId, seg: p.segment, slot: p.slot, off: p.offset, len: p.length }, 'send');
    }
  }

  private readonly onDrain = (): void => {
    this.blocked = false;
    this.pump();
  };

  /**
   * Decoder allocator: a READ reply that spans socket chunks is assembled in
   * the pending request's destination, so the data is copied exactly once.
   */
  private readonly allocate = (h: ReplyHeader, length: number): Buffer | undefined => {
    if (h.status !== Status.OK) return undefined;
    const p = this.inflight.get(h.requestId);
    return p !== undefined && p.opcode === Opcode.READ && p.length === length ? p.data : undefined;
  };

  private readonly onData = (chunk: Buffer): void => {
    const decoder = this.decoder!;
    decoder.push(chunk);
    try {
      for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
        this.complete(frame.header, frame.payload);
        // A completion may have failed this connection (protocol error).
        if (this.decoder !== decoder) return;
      }
    } catch (err) {
      this.fail(err instanceof VskyError ? err : new ProtocolError(`storage node ${this.address}: ${errorMessage(err)}`));
      return;
    }
    this.pump();
  };

  private complete(h: ReplyHeader, payload: Buffer | undefined): void {
    const p = this.inflight.get(h.requestId);
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
    this.inflight.delete(h.requestId);
    const cb = p.callback!;
    const target = p.target!;
    this.release(p);
    if (this.traced) this.log.debug({ id: h.requestId, status: h.status }, 'reply');
    cb.requestDone(target, err);
  }

  private release(p: Pending): void {
    p.data = undefined;
    p.target = undefined;
    p.callback = undefined;
    if (this.free.length < MAX_POOLED) this.free.push(p);
  }

  private readonly onError = (err: Error): void => {
    this.fail(new TransportError(`connection to storage node ${this.address} failed: ${err.message}`, { node: this.address }, { cause: err }));
  };

  private readonly onClose = (): void => {
    if (this.state === 'closed' || this.socket === undefined) return;
    if (this.inflight.size === 0 && this.queueHead === this.queue.length && this.state === 'open') {
      // Idle close (node restarted, idle timeout): reconnect on the next request without back-off.
      this.teardown(undefined, 'idle');
      return;
    }
    this.fail(new TransportError(`storage node ${this.address} closed the connection`, { node: this.address }));
  };

  /** Fails the connection: every pending and queued request, then back-off. */
  private fail(err: Error): void {
    if (this.state === 'closed') return;
    if (this.lastError === undefined) this.log.warn({ err: err.message }, 'storage node connection failed');
    this.lastError = err;
    this.retryAt = Date.now() + this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.opts.backoffMaxMs);
    this.teardown(err, 'backoff');
  }

  /**
   * The one place that drops the socket, its listeners and every pending
   * request. The new state is set first: a callback may submit again (a read
   * retried elsewhere) and must see this connection as down.
   */
  private teardown(err: Error | undefined, next: State): void {
    this.state = next;
    const socket = this.socket;
    this.socket = undefined;
    this.decoder = undefined;
    this.blocked = false;
    this.stopTimer();
    if (socket !== undefined) {
      socket.removeListener('connect', this.onConnect);
      socket.removeListener('data', this.onData);
      socket.removeListener('drain', this.onDrain);
      socket.removeListener('close', this.onClose);
      socket.removeListener('error', this.onError);
      socket.on('error', ignore);
      socket.destroy();
    }
    const failed: Pending[] = [];
    for (const p of this.inflight.values()) failed.push(p);
    this.inflight.clear();
    for (let i = this.queueHead; i < this.queue.length; i++) failed.push(this.queue[i]!);
    this.queue = [];
    this.queueHead = 0;
    const reason = err ?? new TransportError(`connection to storage node ${this.address} closed`, { node: this.address });
    for (const p of failed) {
      const cb = p.callback!;
      const target = p.target!;
      this.release(p);
      cb.requestDone(target, reason);
    }
  }

  private startTimer(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(this.onTick, this.tickMs);
    this.timer.unref();
  }

  private stopTimer(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One timer per connection: fails it when the oldest request (or the connect) is stalled. */
  private readonly onTick = (): void => {
    this.tick++;
    const limit = TICKS_PER_TIMEOUT + 1;
    if (this.state === 'connecting' && this.tick - this.connectTick >= limit) {
      this.fail(new TransportError(`connecting to storage node ${this.address} timed out after ${this.opts.requestTimeoutMs} ms`, { node: this.address }));
      return;
    }
    if (this.inflight.size === 0) return;
    const oldest = this.inflight.values().next().value as Pending;
    if (this.tick - oldest.sentTick >= limit) {
      this.fail(new TransportError(
        `storage node ${this.address} did not answer ${opcodeName(oldest.opcode)} request ${oldest.requestId} within ${this.opts.requestTimeoutMs} ms`,
        { node: this.address, requestId: oldest.requestId },
      ));
    }
  };
}

function ignore(): void {}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
