import net from 'node:net';
import { expect } from 'vitest';
import { encodeRequestHeader, replyFrameSpec } from '../../shared/data-protocol/codec.js';
import { Opcode, REQUEST_HEADER_SIZE, statusName, type RequestHeader } from '../../shared/data-protocol/frame.js';
import { FrameDecoder } from '../../shared/frame-decoder.js';
import { authenticateSocket } from './data-auth.js';

// A tiny raw data-protocol client for the storage node's tests: any header
// field can be set (opcodes the head's client has no method for, bad epochs,
// out-of-range offsets), requests are pipelined, and replies are matched by
// request id, whatever order they come in.

export interface Reply {
  status: number;
  /** A copy: it outlives the socket chunk it came in. */
  payload: Buffer;
}

export class RawDataClient {
  readonly socket: net.Socket;
  /** Resolves when the socket has closed (the node dropped the connection, or close()). */
  readonly closed: Promise<void>;
  private readonly decoder = new FrameDecoder(replyFrameSpec);
  private readonly pending = new Map<number, (r: Reply) => void>();
  private nextId = 1;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.on('close', () => resolve()));
    socket.setNoDelay(true); // header and payload go in two writes: no Nagle wait between them
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      this.decoder.push(chunk);
      for (let f = this.decoder.next(); f; f = this.decoder.next()) {
        const cb = this.pending.get(f.header.requestId);
        this.pending.delete(f.header.requestId);
        cb?.({ status: f.header.status, payload: Buffer.from(f.payload ?? Buffer.alloc(0)) });
      }
    });
  }

  /** Connects; with `key`, authenticates first (the cluster's data key, or a wrong one). */
  static async connect(address: string, key?: Buffer): Promise<RawDataClient> {
    const [host, port] = address.split(':');
    const s = await new Promise<net.Socket>((resolve, reject) => {
      const sock = net.connect(Number(port), host!, () => resolve(sock));
      sock.once('error', reject);
    });
    const rest = key === undefined ? Buffer.alloc(0) : await authenticateSocket(s, key);
    const client = new RawDataClient(s);
    if (rest.length > 0) s.unshift(rest);
    return client;
  }

  /** Sends one request (PING with every field 0 unless `h` says otherwise); resolves with its reply. */
  send(h: Partial<RequestHeader>, payload?: Buffer): Promise<Reply> {
    return this.sendHeader(h, payload, () => {});
  }

  /**
   * Sends `h` with the u64 at byte `at` of its header replaced by hi:lo (values
   * no number holds exactly, e.g. an epoch above 2^53-1); resolves with its reply.
   */
  sendPatched(h: Partial<RequestHeader>, at: number, hi: number, lo: number, payload?: Buffer): Promise<Reply> {
    return this.sendHeader(h, payload, (header) => {
      header.writeUInt32BE(hi, at);
      header.writeUInt32BE(lo, at + 4);
    });
  }

  private sendHeader(h: Partial<RequestHeader>, payload: Buffer | undefined, patch: (header: Buffer) => void): Promise<Reply> {
    const requestId = this.nextId++;
    const header: RequestHeader = {
      opcode: Opcode.PING, flags: 0, slot: 0, volumeId: 0, segment: 0, epoch: 0, offset: 0, length: payload?.length ?? 0,
      generation: 0, ...h, requestId,
    };
    const bytes = encodeRequestHeader(header, Buffer.alloc(REQUEST_HEADER_SIZE));
    patch(bytes);
    const p = new Promise<Reply>((resolve) => this.pending.set(requestId, resolve));
    this.socket.write(bytes);
    if (payload && payload.length > 0) this.socket.write(payload);
    return p;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** The reply has this status (by name, with the node's error message when it does not). */
export function expectStatus(r: Reply, status: number): void {
  expect(statusName(r.status), r.payload.toString('utf8')).toBe(statusName(status));
}
