// The socket plumbing every client connection of a head agent frontend (NBD,
// iSCSI) shares: the five socket events a connection handles, added in one
// place and removed in one place, and reading paused and resumed as the
// connection can take more or not (back-pressure towards the client).

import type { Socket } from 'node:net';

/** A connection's handlers for its socket's events (one object per connection, made once). */
export interface SocketHandlers {
  readonly data: (chunk: Buffer) => void;
  readonly drain: () => void;
  readonly end: () => void;
  readonly error: (err: Error) => void;
  readonly close: () => void;
}

export function addSocketHandlers(s: Socket, h: SocketHandlers): void {
  s.on('data', h.data);
  s.on('drain', h.drain);
  s.on('end', h.end);
  s.on('error', h.error);
  s.on('close', h.close);
}

/**
 * Removes every handler addSocketHandlers added. A late EPIPE/ECONNRESET on
 * the closing socket must not become an unhandled 'error' event (which would
 * take the whole daemon down): errors are ignored from now on.
 */
export function removeSocketHandlers(s: Socket, h: SocketHandlers): void {
  s.off('data', h.data);
  s.off('drain', h.drain);
  s.off('end', h.end);
  s.off('error', h.error);
  s.off('close', h.close);
  s.on('error', ignoreError);
}

function ignoreError(): void {}

/** Pauses and resumes reading a socket, calling pause() or resume() only when that changes. */
export class ReadGate {
  private readonly socket: Socket;
  private paused = false;

  constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Takes over the socket's current state (an earlier phase may have paused it). */
  sync(): void {
    this.paused = this.socket.isPaused();
  }

  /** Reads while `want`, pauses otherwise. */
  set(want: boolean): void {
    if (want && this.paused) {
      this.paused = false;
      this.socket.resume();
    } else if (!want && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }
}
