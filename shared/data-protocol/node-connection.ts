import * as net from 'node:net';
import { DATA_TIMEOUT_MS, FLUSH_TIMEOUT_MS, MAX_INFLIGHT_PER_CONNECTION } from '../constants.js';
import { ProtocolError, TransportError, VskyError, errorMessage } from '../errors.js';
import { encodeRequestHeader } from './codec.js';
import { Opcode, Status, opcodeName, type ReplyHeader } from './frame.js';
import { parseHostPort } from '../units.js';
import { isTraced, moduleLogger, type Logger } from '../logger.js';
import {
  PendingPool, PromiseCallback, RequestQueue, callDone, type PendingRequest, type RequestCallback, type RequestTarget,
} from './data-request.js';
import { ReplyReader } from './reply-reader.js';

export type { RequestCallback, RequestTarget } from './data-request.js';

// One pipelined TCP connection from this head to one storage node's data port,
// shared by every volume with a chunk on that node. Requests are matched to
// replies by request id (the node may answer out of order). The hot path is
// allocation-light: pending-request entries (each with its own 40-byte header
// buffer) are recycled, header and payload go out corked (a burst of requests
// in one writev), replies are read into one reused buffer, and a READ reply
// that spans socket reads is assembled straight into the caller's destination
// (reply-reader.ts).
//
// Failure model (longhorn dataconn style): any transport error, protocol error,
// close or stall fails the whole connection, and with it every pending and
// queued request at once, with TransportError. The next request after a
// back-off reconnects; requests during the back-off fail fast so that a mirror
// can retry a read elsewhere without waiting.
//
// Stalls: "hung" is told from "busy" by progress, not by request age. A busy
// node keeps sending replies; a hung one (SIGSTOPped, frozen VM, dead link)
// sends nothing. So:
//  - liveness (dataTimeoutMs, default 2 s): while requests are outstanding,
//    every byte received is progress. After dataTimeoutMs/4 of silence the
//    head sends a PING probe (at most one in flight; the node answers PING
//    from its event loop, whatever its disks are doing), so a node whose
//    outstanding requests are all slow (a long FLUSH, FUA writes, writes
//    queued behind a sync) still shows it is alive. The connection fails once
//    nothing at all came for dataTimeoutMs and the probe was unanswered for at
//    least dataTimeoutMs/2. The clock starts when the first request of a busy
//    period is written to the socket, never while requests wait in the queue
//    below (back-pressure), and one slot of the in-flight window is kept for
//    the probe so the node always has room to read it. Before failing, the
//    check is repeated after the poll phase (setImmediate), so replies that
//    arrived while this process itself was stalled (GC, CPU starvation) count.
//  - per request (flushTimeoutMs, default 30 s): one request unanswered this
//    long fails the connection even if the node answers everything else (a
//    stuck disk on a live node). It is long because a FLUSH, a FENCE or a FUA
//    write fdatasyncs, which on a busy real disk can take seconds, and other
//    requests can queue behind them.

const TRACE = 'head-connection';

export interface NodeConnectionOptions {
  /**
   * Liveness bound: with requests outstanding, this long without a byte from
   * the node (and a PING probe unanswered) fails the connection. Also the
   * connect timeout. Default DATA_TIMEOUT_MS (2 s).
   */
  dataTimeoutMs?: number;
  /**
   * One request unanswered this long fails the connection, even while the
   * node answers others (FLUSH/FENCE/FUA writes fdatasync). Default
   * FLUSH_TIMEOUT_MS (30 s).
   */
  flushTimeoutMs?: number;
  /**
   * Requests sent and awaiting a reply, the liveness probe included (one slot
   * is kept for it when this is above 1); beyond this they wait in the queue.
   */
  maxInflight?: number;
  /** Requests waiting to be sent; beyond this submit() fails the request. */
  maxQueued?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Socket write buffer high-water mark: write() returning false pauses sending until 'drain'. */
  writeHighWaterMark?: number;
}

const DEFAULTS = {
  dataTimeoutMs: DATA_TIMEOUT_MS,
  flushTimeoutMs: FLUSH_TIMEOUT_MS,
  maxInflight: MAX_INFLIGHT_PER_CONNECTION,
  maxQueued: 16 * MAX_INFLIGHT_PER_CONNECTION,
  backoffInitialMs: 100,
  backoffMaxMs: 5_000,
  // Large enough that a pipeline of 64 KiB writes does not stall on every
  // write (the default 16 KiB would make each 64 KiB write wait for 'drain').
  writeHighWaterMark: 4 * 1024 * 1024,
};

/** The stall timer ticks this many times per data timeout. */
const TICKS_PER_TIMEOUT = 8;
/** One socket read fetches up to this much (several pipelined replies at once). */
const RECEIVE_BUFFER_SIZE = 512 * 1024;

type State = 'idle' | 'connecting' | 'open' | 'backoff' | 'closed';

/** What the liveness probe (a PING) is addressed to: nothing (the node looks at no field of a PING). */
const PROBE_TARGET: RequestTarget = {
  volumeId: 0,
  segment: 0,
  slot: 0,
  replyError: (_opcode, status, message) => new ProtocolError(`PING refused with status ${status}: ${message}`),
};

export class NodeConnection {
  readonly address: string;
  private readonly host: string;
  private readonly port: number;
  private readonly opts: Required<NodeConnectionOptions>;
  private readonly log: Logger;
  private readonly traced: boolean;

  private state: State = 'idle';
  private socket: net.Socket | undefined;
  private reader: ReplyReader | undefined;
  /** Reused for every socket read (see reply-reader.ts). */
  private receiveBuffer: Buffer | undefined;
  /** Sent, awaiting reply, in send order (Map keeps insertion order: first = oldest). */
  private readonly inflight = new Map<number, PendingRequest>();
  private readonly queue = new RequestQueue();
  private readonly pool = new PendingPool();
  private nextRequestId = 1;
  /** The socket corked until the next tick (see corkUntilTick). */
  private corked: net.Socket | undefined;
  /** socket.write() returned false: wait for 'drain'. */
  private blocked = false;
  private timer: NodeJS.Timeout | undefined;
  private tick = 0;
  private readonly tickMs: number;
  /** Stall-timer ticks after which one unanswered request fails the connection. */
  private readonly requestLimitTicks: number;
  /** Regular requests in flight at most: maxInflight less the probe's slot. */
  private readonly window: number;
  /** performance.now() of the connect attempt. */
  private connectStartedAt = 0;
  /** performance.now() of the last bytes received (or of the connect). */
  private lastHeardAt = 0;
  /** performance.now() when the first regular request of the current busy period was sent. */
  private busySince = 0;
  /** A liveness probe (PING) is in flight (it is in `inflight`). */
  private probing = false;
  private probeSentAt = 0;
  /** A stall was seen on a tick; confirmStall runs after the poll phase. */
  private stallCheck = false;
  /** Liveness probes sent so far (tests and stats). */
  probesSent = 0;
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
    this.tickMs = Math.max(5, Math.ceil(Math.min(this.opts.dataTimeoutMs, this.opts.flushTimeoutMs) / TICKS_PER_TIMEOUT));
    // Sent somewhere within a tick: one more tick guarantees the full bound.
    this.requestLimitTicks = Math.ceil(this.opts.flushTimeoutMs / this.tickMs) + 1;
    this.window = Math.max(1, this.opts.maxInflight - 1);
    this.backoffMs = this.opts.backoffInitialMs;
    this.log = moduleLogger(TRACE, { node: address });
    this.traced = isTraced(TRACE);
  }

  /** Requests sent or queued and not yet answered: the load measure reads balance on. */
  get outstanding(): number {
    return this.regularInflight + this.queue.size;
  }

  /** Requests in flight, not counting the liveness probe. */
  private get regularInflight(): number {
    return this.inflight.size - (this.probing ? 1 : 0);
  }

  /** False while in back-off after a failure (requests now would fail fast). */
  get available(): boolean {
    if (this.state === 'backoff') return Date.now() >= this.retryAt;
    return this.state !== 'closed';
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
    const p = this.pool.take();
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
    if (this.state === 'open' && !this.blocked && this.regularInflight < this.window && this.queue.size === 0) {
      const socket = this.socket!;
      this.corkUntilTick(socket);
      this.sendRegular(socket, p);
      return;
    }
    if (this.queue.size >= this.opts.maxQueued) {
      this.pool.release(p);
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
    this.connectStartedAt = performance.now();
    this.reader = new ReplyReader(this.allocate, this.complete);
    this.receiveBuffer ??= Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE);
    const socket = net.connect({
      host: this.host, port: this.port, noDelay: true, keepAlive: true, writableHighWaterMark: this.opts.writeHighWaterMark,
      onread: { buffer: this.receiveBuffer, callback: this.onRead },
    } as net.NetConnectOpts);
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('connect', this.onConnect);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    this.startTimer();
  }

  private readonly onConnect = (): void => {
    this.state = 'open';
    this.connects++;
    this.lastHeardAt = performance.now();
    if (this.lastError !== undefined) this.log.info({ after: errorMessage(this.lastError) }, 'reconnected to storage node');
    this.lastError = undefined;
    this.backoffMs = this.opts.backoffInitialMs;
    this.pump();
  };

  /** Sends queued requests while the window and the socket allow. */
  private pump(): void {
    const socket = this.socket;
    if (socket === undefined || this.state !== 'open') return;
    if (this.queue.size === 0) return;
    this.corkUntilTick(socket);
    while (!this.blocked && this.queue.size > 0 && this.regularInflight < this.window) {
      this.sendRegular(socket, this.queue.shift());
    }
  }

  /**
   * Corks the socket until the current tick's work (this callback and the
   * promise continuations it triggers, which submit the next requests) is
   * done: every request of a burst then leaves in one writev syscall instead
   * of one syscall each.
   */
  private corkUntilTick(socket: net.Socket): void {
    if (this.corked !== undefined) return;
    socket.cork();
    this.corked = socket;
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    const socket = this.corked;
    this.corked = undefined;
    if (socket !== undefined && !socket.destroyed) socket.uncork();
  };

  /** Writes one caller's request (the socket is corked); the first of a busy period starts the liveness clock. */
  private sendRegular(socket: net.Socket, p: PendingRequest): void {
    if (this.regularInflight === 0) this.busySince = performance.now();
    this.send(socket, p);
  }

  /** Writes one request (the socket is corked). */
  private send(socket: net.Socket, p: PendingRequest): void {
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

  /** net's onread callback: one socket read, in the reused receive buffer. */
  private readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    const reader = this.reader;
    if (reader === undefined) return false;
    this.lastHeardAt = performance.now();
    try {
      reader.feed((buf as Buffer).subarray(0, nread));
    } catch (err) {
      this.fail(err instanceof VskyError ? err : new ProtocolError(`storage node ${this.address}: ${errorMessage(err)}`));
      return false;
    }
    if (this.reader !== reader) return false;
    this.pump();
    return true;
  };

  /** One reply: match it to its request, check it, complete the request. Throws ProtocolError. */
  private readonly complete = (h: ReplyHeader, payload: Buffer | undefined): void => {
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
    this.pool.release(p);
    if (this.traced) this.log.debug({ id: h.requestId, status: h.status }, 'reply');
    cb.requestDone(target, err);
  };

  private readonly onError = (err: Error): void => {
    this.fail(new TransportError(`connection to storage node ${this.address} failed: ${err.message}`, { node: this.address }, { cause: err }));
  };

  private readonly onClose = (): void => {
    if (this.state === 'closed' || this.socket === undefined) return;
    if (this.regularInflight === 0 && this.queue.size === 0 && this.state === 'open') {
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
    this.reader?.stop();
    this.reader = undefined;
    this.corked = undefined;
    this.blocked = false;
    this.stallCheck = false;
    this.stopTimer();
    if (socket !== undefined) {
      socket.removeListener('connect', this.onConnect);
      socket.removeListener('drain', this.onDrain);
      socket.removeListener('close', this.onClose);
      socket.removeListener('error', this.onError);
      socket.on('error', ignore);
      socket.destroy();
    }
    const failed = [...this.inflight.values(), ...this.queue.takeAll()];
    this.inflight.clear();
    const reason = err ?? new TransportError(`connection to storage node ${this.address} closed`, { node: this.address });
    for (const p of failed) {
      const cb = p.callback!;
      const target = p.target!;
      this.pool.release(p);
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

  /**
   * One timer per connection: fails a connect that takes too long, a request
   * unanswered for flushTimeoutMs, and a node silent for dataTimeoutMs while
   * requests are outstanding (probing it with a PING first).
   */
  private readonly onTick = (): void => {
    this.tick++;
    const now = performance.now();
    if (this.state === 'connecting') {
      if (now - this.connectStartedAt >= this.opts.dataTimeoutMs) {
        this.fail(new TransportError(`connecting to storage node ${this.address} timed out after ${this.opts.dataTimeoutMs} ms`, { node: this.address }));
      }
      return;
    }
    if (this.state !== 'open' || this.inflight.size === 0) return;
    const oldest = this.inflight.values().next().value as PendingRequest;
    if (this.tick - oldest.sentTick >= this.requestLimitTicks) {
      this.fail(new TransportError(
        `storage node ${this.address} did not answer ${opcodeName(oldest.opcode)} request ${oldest.requestId} within ${this.opts.flushTimeoutMs} ms`,
        { node: this.address, requestId: oldest.requestId },
      ));
      return;
    }
    if (this.regularInflight === 0) return; // only a probe: nothing waits on this node
    const silentMs = this.silentMs(now);
    if (silentMs < this.opts.dataTimeoutMs / 4) return;
    if (!this.probing) {
      this.sendProbe(now);
      return;
    }
    if (this.stalled(now) && !this.stallCheck) {
      // Replies that came while this process was not running sit in the socket:
      // the poll phase reads them before setImmediate callbacks run.
      this.stallCheck = true;
      setImmediate(this.confirmStall);
    }
  };

  /** Nothing heard for dataTimeoutMs while a regular request waits, and the probe had time to come back. */
  private stalled(now: number): boolean {
    return this.state === 'open' && this.regularInflight > 0 && this.probing
      && this.silentMs(now) >= this.opts.dataTimeoutMs && now - this.probeSentAt >= this.opts.dataTimeoutMs / 2;
  }

  /** How long the node has sent nothing while regular requests were waiting for it. */
  private silentMs(now: number): number {
    return now - Math.max(this.lastHeardAt, this.busySince);
  }

  private readonly confirmStall = (): void => {
    this.stallCheck = false;
    const now = performance.now();
    if (!this.stalled(now)) return;
    const oldest = this.firstRegular();
    this.fail(new TransportError(
      `storage node ${this.address} sent nothing for ${Math.round(this.silentMs(now))} ms with ${this.regularInflight} request(s) outstanding`
      + (oldest === undefined ? '' : ` (oldest: ${opcodeName(oldest.opcode)} request ${oldest.requestId})`)
      + ` and did not answer a PING within ${Math.round(now - this.probeSentAt)} ms: taken as hung (data timeout ${this.opts.dataTimeoutMs} ms)`,
      { node: this.address, silentMs: Math.round(this.silentMs(now)) },
    ));
  };

  private firstRegular(): PendingRequest | undefined {
    for (const p of this.inflight.values()) if (p.callback !== this.probeDone) return p;
    return undefined;
  }

  /** Sends a PING outside the caller window: any reply (any byte) shows the node is alive. */
  private sendProbe(now: number): void {
    const socket = this.socket!;
    const p = this.pool.take();
    p.opcode = Opcode.PING;
    p.flags = 0;
    p.slot = 0;
    p.volumeId = 0;
    p.segment = 0;
    p.epoch = 0;
    p.offset = 0;
    p.length = 0;
    p.generation = 0;
    p.data = undefined;
    p.target = PROBE_TARGET;
    p.callback = this.probeDone;
    this.probing = true;
    this.probeSentAt = now;
    this.probesSent++;
    this.corkUntilTick(socket);
    this.send(socket, p);
  }

  /** The probe's completion: answered, or failed with the connection. */
  private readonly probeDone: RequestCallback = {
    requestDone: () => {
      this.probing = false;
    },
  };
}

function ignore(): void {}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
