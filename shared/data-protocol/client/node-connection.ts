import * as net from 'node:net';
import * as tls from 'node:tls';
import { ProtocolError, TransportError, VskyError, errorMessage } from '../../errors.js';
import { Opcode, opcodeName } from '../frame.js';
import { parseHostPort } from '../../units.js';
import { isTraced, moduleLogger, type Logger } from '../../logger.js';
import { PromiseCallback, callDone, type PendingRequest, type RequestCallback, type RequestTarget } from './data-request.js';
import { Liveness, PROBE_TARGET } from './liveness.js';
import { resolveOptions, type NodeConnectionOptions } from './node-connection-options.js';
import { ReplyReader } from './reply-reader.js';
import { RequestWindow } from './request-window.js';
import { RequestWriter } from './request-writer.js';
import { StallWatch } from './stall-watch.js';
import { ClientHandshake } from '../auth/handshake.js';
import { channelBinding, dataTlsClientOptions } from '../auth/data-security.js';

export type { RequestCallback, RequestTarget } from './data-request.js';
export type { NodeConnectionOptions } from './node-connection-options.js';

// One pipelined TCP connection from this head to one storage node's data port,
// shared by every volume with a chunk on that node. Requests are matched to
// replies by request id (the node may answer out of order). The hot path is
// allocation-light: pending-request entries (each with its own 48-byte header
// buffer) are recycled (request-window.ts), header and payload go out corked
// (a burst of requests in one writev: request-writer.ts), replies are read
// into one reused buffer, and a READ reply that spans socket reads is
// assembled straight into the caller's destination (reply-reader.ts).
//
// Failure model (longhorn dataconn style): any transport error, protocol error,
// close or stall fails the whole connection, and with it every pending and
// queued request at once, with TransportError. The next request after a
// back-off reconnects; requests during the back-off fail fast so that a mirror
// can retry a read elsewhere without waiting.
//
// Stalls: a node silent for dataTimeoutMs while requests wait on it (a PING
// probe unanswered), or one request unanswered for flushTimeoutMs, fails the
// connection; liveness.ts holds those decisions, stall-watch.ts the timer,
// this file the probe.
//
// Security (opts.security): with a cluster data key, the connection answers
// the node's challenge (auth/handshake.ts) before any request is sent (they
// queue meanwhile, the connect timeout covering the handshake); with TLS it
// is a tls.connect socket, read through 'data' events instead of onread.

const TRACE = 'head-connection';

/** One socket read fetches up to this much (several pipelined replies at once). */
const RECEIVE_BUFFER_SIZE = 512 * 1024;

type State = 'idle' | 'connecting' | 'open' | 'backoff' | 'closed';

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
  private readonly requests: RequestWindow;
  private readonly writer = new RequestWriter();
  private readonly liveness: Liveness;
  private readonly watch: StallWatch;
  /** performance.now() of the connect attempt. */
  private connectStartedAt = 0;
  /** Liveness probes sent so far (tests and stats). */
  probesSent = 0;
  private backoffMs: number;
  private retryAt = 0;
  private lastError: Error | undefined;
  private connects = 0;
  /** Set from TCP/TLS connect until the node accepted our proof. */
  private handshake: ClientHandshake | undefined;

  constructor(address: string, opts: NodeConnectionOptions = {}) {
    const { host, port } = parseHostPort(address, 'storage node data address');
    this.address = address;
    this.host = host;
    this.port = port;
    this.opts = resolveOptions(opts);
    this.requests = new RequestWindow(this.opts.maxInflight, this.opts.maxQueued);
    this.liveness = new Liveness(this.opts.dataTimeoutMs, this.opts.flushTimeoutMs);
    this.watch = new StallWatch({
      address,
      state: () => this.state,
      connectStartedAt: () => this.connectStartedAt,
      regularInflight: () => this.regularInflight,
      fail: (err) => this.fail(err),
      sendProbe: (now) => this.sendProbe(now),
    }, this.liveness, this.requests);
    this.backoffMs = this.opts.backoffInitialMs;
    this.log = moduleLogger(TRACE, { node: address });
    this.traced = isTraced(TRACE);
  }

  /** Requests sent or queued and not yet answered: the load measure reads balance on. */
  get outstanding(): number {
    return this.regularInflight + this.requests.queued;
  }

  /** Requests in flight, not counting the liveness probe. */
  private get regularInflight(): number {
    return this.requests.inflightCount - (this.liveness.probing ? 1 : 0);
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
    const requests = this.requests;
    const p = requests.take();
    p.fill(target, opcode, flags, epoch, offset, length, data, generation, callback);
    if (this.state === 'open' && !this.writer.blocked && this.regularInflight < requests.size && requests.queued === 0) {
      this.sendRegular(p);
      return;
    }
    if (!requests.enqueue(p)) {
      requests.release(p);
      const err = new TransportError(`too many requests queued for storage node ${this.address} (${this.opts.maxQueued})`, { node: this.address });
      process.nextTick(callDone, callback, target, err);
    }
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
    this.connectStartedAt = performance.now();
    this.reader = new ReplyReader(this.requests, this.address, this.traced ? this.log : undefined);
    this.handshake = undefined;
    const material = this.opts.security.tls;
    let socket: net.Socket;
    if (material === undefined) {
      this.receiveBuffer ??= Buffer.allocUnsafe(RECEIVE_BUFFER_SIZE);
      socket = net.connect({
        host: this.host, port: this.port, noDelay: true, keepAlive: true, writableHighWaterMark: this.opts.writeHighWaterMark,
        onread: { buffer: this.receiveBuffer, callback: this.onRead },
      } as net.NetConnectOpts);
      socket.on('connect', this.onConnect);
    } else {
      socket = tls.connect({
        ...dataTlsClientOptions(material), host: this.host, port: this.port, noDelay: true, keepAlive: true,
        highWaterMark: this.opts.writeHighWaterMark, // tls.connect ignores writableHighWaterMark
      } as tls.ConnectionOptions);
      socket.on('secureConnect', this.onConnect);
      socket.on('data', this.onData);
    }
    this.socket = socket;
    this.writer.attach(socket);
    socket.setNoDelay(true);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    this.watch.start();
  }

  /** TCP (or TLS) is up: authenticate first when the cluster has a data key. */
  private readonly onConnect = (): void => {
    const key = this.opts.security.key;
    if (key === undefined || this.socket === undefined) return this.onOpen();
    this.handshake = new ClientHandshake(key, channelBinding(this.socket));
  };

  /** Handshake bytes from the node; returns false when the connection failed. */
  private authenticate(handshake: ClientHandshake, bytes: Buffer): boolean {
    try {
      const step = handshake.push(bytes);
      if (step.kind === 'send') this.socket?.write(step.send);
      else if (step.kind === 'accepted') {
        this.handshake = undefined;
        this.onOpen();
        if (step.rest.length > 0) this.reader?.feed(step.rest);
      }
      return true;
    } catch (err) {
      this.fail(new TransportError(`storage node ${this.address}: data connection not authenticated: ${errorMessage(err)}`, { node: this.address }, { cause: err }));
      return false;
    }
  }

  private onOpen(): void {
    this.state = 'open';
    this.connects++;
    this.liveness.heard(performance.now());
    if (this.lastError !== undefined) this.log.info({ after: errorMessage(this.lastError) }, 'reconnected to storage node');
    this.lastError = undefined;
    this.backoffMs = this.opts.backoffInitialMs;
    this.pump();
  };

  /** Sends queued requests while the window and the socket allow. */
  private pump(): void {
    if (this.socket === undefined || this.state !== 'open') return;
    const requests = this.requests;
    const writer = this.writer;
    while (!writer.blocked && requests.queued > 0 && this.regularInflight < requests.size) {
      this.sendRegular(requests.dequeue());
    }
  }

  /** Sends one caller's request; the first of a busy period starts the liveness clock. */
  private sendRegular(p: PendingRequest): void {
    if (this.regularInflight === 0) this.liveness.busy(performance.now());
    this.send(p);
  }

  /** Sends one request: into the window under a fresh id, then onto the socket. */
  private send(p: PendingRequest): void {
    this.requests.sent(p, this.liveness.tick);
    this.writer.write(p);
    if (this.traced) {
      this.log.debug({ id: p.requestId, op: opcodeName(p.opcode), vol: p.volumeId, seg: p.segment, slot: p.slot, off: p.offset, len: p.length }, 'send');
    }
  }

  private readonly onDrain = (): void => {
    this.writer.drained();
    this.pump();
  };

  /** net's onread callback: one socket read, in the reused receive buffer. */
  private readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    const reader = this.reader;
    if (reader === undefined) return false;
    this.liveness.heard(performance.now());
    if (this.handshake !== undefined) return this.authenticate(this.handshake, (buf as Buffer).subarray(0, nread));
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

  /** TLS sockets: no onread, each read is a fresh chunk. */
  private readonly onData = (chunk: Buffer): void => {
    this.onRead(chunk.length, chunk);
  };

  private readonly onError = (err: Error): void => {
    this.fail(new TransportError(`connection to storage node ${this.address} failed: ${err.message}`, { node: this.address }, { cause: err }));
  };

  private readonly onClose = (): void => {
    if (this.state === 'closed' || this.socket === undefined) return;
    if (this.regularInflight === 0 && this.requests.queued === 0 && this.state === 'open') {
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
    this.writer.detach();
    this.handshake = undefined;
    this.watch.stop();
    if (socket !== undefined) {
      socket.removeListener('connect', this.onConnect);
      socket.removeListener('secureConnect', this.onConnect);
      socket.removeListener('data', this.onData);
      socket.removeListener('drain', this.onDrain);
      socket.removeListener('close', this.onClose);
      socket.removeListener('error', this.onError);
      socket.on('error', ignore);
      socket.destroy();
    }
    this.requests.failAll(err ?? new TransportError(`connection to storage node ${this.address} closed`, { node: this.address }));
  }

  /** Sends a PING outside the caller window: any reply (any byte) shows the node is alive. */
  private sendProbe(now: number): void {
    const p = this.requests.take();
    // The liveness state is the probe's callback: answered, or failed with the connection.
    p.fill(PROBE_TARGET, Opcode.PING, 0, 0, 0, 0, undefined, 0, this.liveness);
    this.liveness.probeSent(now);
    this.probesSent++;
    this.send(p);
  }
}

function ignore(): void {}
