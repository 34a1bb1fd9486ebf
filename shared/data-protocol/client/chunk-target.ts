import { InvalidArgumentError, IoError, StaleEpochError, type VskyError } from '../../errors.js';
import type { RequestTarget } from './data-request.js';
import { Opcode, Status, opcodeName, statusName } from '../frame.js';
import type { NodeConnection } from './node-connection.js';

// The one map from a data-protocol reply status to a typed error, and the
// simplest addressable chunk for control-path clients (the storage node's
// peer-to-peer copy, tests). The head's Replica adds its own state on top.

/** The typed error for a non-OK reply; `what` names the request and its chunk. */
export function errorForStatus(opcode: number, status: number, message: string, what: string, context: Record<string, unknown>): VskyError {
  const text = `${opcodeName(opcode)} on ${what} failed with ${statusName(status)}${message ? `: ${message}` : ''}`;
  const ctx = { ...context, op: opcodeName(opcode), status: statusName(status) };
  switch (status) {
    case Status.STALE_EPOCH:
      return new StaleEpochError(`${text} (a newer lease holder has fenced this writer off)`, ctx);
    case Status.OUT_OF_RANGE:
    case Status.BAD_REQUEST:
    case Status.TOO_LARGE:
      return new InvalidArgumentError(text, ctx);
    default:
      return new IoError(text, ctx);
  }
}

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
