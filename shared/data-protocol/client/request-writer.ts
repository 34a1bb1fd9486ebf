import type { Socket } from 'node:net';
import { encodeRequestHeader } from '../codec.js';
import type { PendingRequest, RoutedTarget } from './data-request.js';
import { Opcode } from '../frame.js';

// The send side of a data connection. A request's header is encoded into its
// pending entry's own buffer and written, then a WRITE's payload (not copied),
// with the socket corked until the current tick's work is done: every request
// of a burst leaves in one writev syscall instead of one syscall each.
// write() returning false blocks sending until the socket's 'drain'
// (back-pressure from a node that reads slowly).

export class RequestWriter {
  private socket: Socket | undefined;
  /** The socket corked until the next tick (see write). */
  private corked: Socket | undefined;
  private full = false;

  /** socket.write() returned false: send nothing more until drained(). */
  get blocked(): boolean {
    return this.full;
  }

  /** Requests are written to `socket` from now on. */
  attach(socket: Socket): void {
    this.socket = socket;
    this.full = false;
  }

  /** The socket is gone (a pending uncork finds it destroyed). */
  detach(): void {
    this.socket = undefined;
    this.corked = undefined;
    this.full = false;
  }

  /** The socket's 'drain': sending may go on. */
  drained(): void {
    this.full = false;
  }

  /** Writes one request to the attached socket, corked until the current tick's work is done. */
  write(p: PendingRequest): void {
    const socket = this.socket!;
    // This callback and the promise continuations it triggers (which submit
    // the next requests) all write before the socket is uncorked.
    if (this.corked === undefined) {
      socket.cork();
      this.corked = socket;
      process.nextTick(this.uncork);
    }
    encodeRequestHeader(p, p.header);
    let ok = socket.write(p.header);
    // FORWARD_WRITE: the target's route block, then the data (both not copied).
    if (p.opcode === Opcode.FORWARD_WRITE) ok = socket.write((p.target as RoutedTarget).route);
    if ((p.opcode === Opcode.WRITE || p.opcode === Opcode.FORWARD_WRITE) && p.length > 0) ok = socket.write(p.data!);
    if (!ok) this.full = true;
  }

  private readonly uncork = (): void => {
    const socket = this.corked;
    this.corked = undefined;
    if (socket !== undefined && !socket.destroyed) socket.uncork();
  };
}
