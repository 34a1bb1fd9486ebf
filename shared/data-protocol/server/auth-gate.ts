import type * as net from 'node:net';
import type { Logger } from '../../logger.js';
import { ServerHandshake } from '../auth/handshake.js';
import { channelBinding } from '../auth/data-security.js';

// The door of an accepted data connection while it authenticates: sends the
// hello, takes the client's proof, and lets the connection read request
// frames only once the proof checked out. A connection that fails (wrong
// key, garbage, a plaintext client, too slow) is logged with its peer and
// the reason and closed; nothing it sent is ever parsed as a request.

/** A client must finish the handshake within this long after connecting. */
export const AUTH_TIMEOUT_MS = 5_000;

export type GateResult = { open: false } | { open: true; rest: Buffer };

export class AuthGate {
  private readonly handshake: ServerHandshake;
  private readonly timer: NodeJS.Timeout;
  private done = false;

  constructor(private readonly socket: net.Socket, key: Buffer, private readonly log: Logger, private readonly onRefused: () => void) {
    this.handshake = new ServerHandshake(key, channelBinding(socket));
    socket.write(this.handshake.hello);
    this.timer = setTimeout(() => this.refuse(`no authentication within ${AUTH_TIMEOUT_MS} ms`, undefined), AUTH_TIMEOUT_MS);
    this.timer.unref();
  }

  /** Bytes from the client: still closed (more needed, or refused and closing), or open with the bytes that follow the proof. */
  feed(bytes: Buffer): GateResult {
    if (this.done) return { open: false };
    const step = this.handshake.push(bytes);
    switch (step.kind) {
      case 'more':
        return { open: false };
      case 'refused':
        this.refuse(step.error.message, step.send);
        return { open: false };
      case 'accepted':
        this.done = true;
        clearTimeout(this.timer);
        this.socket.write(step.send);
        this.log.debug('data connection authenticated');
        return { open: true, rest: step.rest };
    }
  }

  /** The connection closes without authenticating (peer gone, node stopping). */
  cancel(): void {
    this.done = true;
    clearTimeout(this.timer);
  }

  private refuse(reason: string, verdict: Buffer | undefined): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    this.log.warn({ reason }, 'data connection refused: authentication failed');
    this.onRefused();
    if (verdict !== undefined && !this.socket.destroyed) this.socket.end(verdict);
    // The verdict tells an honest client with a wrong key why; a peer that does not close gets cut.
    setTimeout(() => this.socket.destroy(), 1_000).unref();
    if (verdict === undefined) this.socket.destroy();
  }
}
