import type { VskyError } from '../../errors.js';
import type { RequestTarget } from './data-request.js';
import { Opcode } from '../frame.js';
import { errorForStatus } from '../status.js';
import type { NodeConnection } from './node-connection.js';

// The simplest addressable chunk for control-path clients (the storage
// node's peer-to-peer copy, the manager's job worker, tests). The head's
// Replica adds its own state on top.

/** One chunk (volume, segment, slot) on one node, with promise-based reads. */
export class ChunkTarget implements RequestTarget {
  constructor(
    readonly conn: NodeConnection,
    readonly volumeId: number,
    readonly segment: number,
    readonly slot: number,
  ) {}

  get address(): string {
    return this.conn.address;
  }

  replyError(opcode: number, status: number, message: string): VskyError {
    return errorForStatus(opcode, status, message, `chunk ${this.volumeId}/${this.segment}/${this.slot} on ${this.conn.address}`,
      { volumeId: this.volumeId, segment: this.segment, slot: this.slot, node: this.conn.address });
  }

  read(offset: number, dest: Buffer): Promise<void> {
    return this.conn.request(this, Opcode.READ, 0, 0, offset, dest.length, dest);
  }
}
