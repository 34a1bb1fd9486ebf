import { ChunkTarget } from '../../shared/data-protocol/client/chunk-target.js';
import { Opcode } from '../../shared/data-protocol/frame.js';
import { NodeConnection } from '../../shared/data-protocol/client/node-connection.js';

// How the manager, as a job's worker, reaches chunk data: the data protocol
// (our real client, shared/data-protocol/NodeConnection), one connection per
// storage node for the job's duration. Tests swap in a fake.

export interface JobDataPath {
  /** Zeroes [offset, offset+length) of one chunk under `epoch` (DISCARD: it reads as zeros afterwards). */
  zero(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number, offset: number, length: number): Promise<void>;
  /** fdatasync on the node: what was zeroed is durable. */
  flush(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number): Promise<void>;
  close(): Promise<void>;
}

/** Reads and writes of whole regions for a flatten job's worker (flatten-copy.ts), over the data protocol. */
export interface ChunkIo {
  read(dataAddress: string, volumeId: number, segment: number, slot: number, offset: number, dest: Buffer): Promise<void>;
  /** A write under `epoch` (a STALE_EPOCH reply: the job was fenced). */
  write(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number, offset: number, data: Buffer): Promise<void>;
  flush(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number): Promise<void>;
  close(): Promise<void>;
}

/** One connection per storage node data address, opened on first use, for one job. */
class NodeConnections {
  private readonly conns = new Map<string, NodeConnection>();

  target(dataAddress: string, volumeId: number, segment: number, slot: number): ChunkTarget {
    let c = this.conns.get(dataAddress);
    if (!c) { c = new NodeConnection(dataAddress); this.conns.set(dataAddress, c); }
    return new ChunkTarget(c, volumeId, segment, slot);
  }

  /** One request (no data unless `data`) to a chunk under `epoch`. */
  request(t: ChunkTarget, op: Opcode, epoch: number, offset: number, length: number, data?: Buffer): Promise<void> {
    return t.conn.request(t, op, 0, epoch, offset, length, data);
  }

  async close(): Promise<void> {
    await Promise.all([...this.conns.values()].map((c) => c.close()));
    this.conns.clear();
  }
}

export function dataProtocolPath(): JobDataPath {
  const n = new NodeConnections();
  return {
    zero: (a, volumeId, segment, slot, epoch, offset, length) => n.request(n.target(a, volumeId, segment, slot), Opcode.DISCARD, epoch, offset, length),
    flush: (a, volumeId, segment, slot, epoch) => n.request(n.target(a, volumeId, segment, slot), Opcode.FLUSH, epoch, 0, 0),
    close: () => n.close(),
  };
}

export function dataProtocolIo(): ChunkIo {
  const n = new NodeConnections();
  return {
    read: (a, volumeId, segment, slot, offset, dest) => n.target(a, volumeId, segment, slot).read(offset, dest),
    write: (a, volumeId, segment, slot, epoch, offset, data) => n.request(n.target(a, volumeId, segment, slot), Opcode.WRITE, epoch, offset, data.length, data),
    flush: (a, volumeId, segment, slot, epoch) => n.request(n.target(a, volumeId, segment, slot), Opcode.FLUSH, epoch, 0, 0),
    close: () => n.close(),
  };
}
