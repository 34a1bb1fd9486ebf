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

export function dataProtocolPath(): JobDataPath {
  const conns = new Map<string, NodeConnection>();
  const conn = (a: string) => {
    let c = conns.get(a);
    if (!c) { c = new NodeConnection(a); conns.set(a, c); }
    return c;
  };
  return {
    zero: (a, volumeId, segment, slot, epoch, offset, length) => {
      const c = conn(a);
      return c.request(new ChunkTarget(c, volumeId, segment, slot), Opcode.DISCARD, 0, epoch, offset, length, undefined);
    },
    flush: (a, volumeId, segment, slot, epoch) => {
      const c = conn(a);
      return c.request(new ChunkTarget(c, volumeId, segment, slot), Opcode.FLUSH, 0, epoch, 0, 0, undefined);
    },
    close: async () => {
      await Promise.all([...conns.values()].map((c) => c.close()));
      conns.clear();
    },
  };
}

/** Reads and writes of whole regions for a flatten job's worker (flatten-copy.ts), over the data protocol. */
export interface ChunkIo {
  read(dataAddress: string, volumeId: number, segment: number, slot: number, offset: number, dest: Buffer): Promise<void>;
  /** A write under `epoch` (a STALE_EPOCH reply: the job was fenced). */
  write(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number, offset: number, data: Buffer): Promise<void>;
  flush(dataAddress: string, volumeId: number, segment: number, slot: number, epoch: number): Promise<void>;
  close(): Promise<void>;
}

export function dataProtocolIo(): ChunkIo {
  const conns = new Map<string, NodeConnection>();
  const conn = (a: string) => {
    let c = conns.get(a);
    if (!c) { c = new NodeConnection(a); conns.set(a, c); }
    return c;
  };
  return {
    read: (a, volumeId, segment, slot, offset, dest) => new ChunkTarget(conn(a), volumeId, segment, slot).read(offset, dest),
    write: (a, volumeId, segment, slot, epoch, offset, data) => {
      const c = conn(a);
      return c.request(new ChunkTarget(c, volumeId, segment, slot), Opcode.WRITE, 0, epoch, offset, data.length, data);
    },
    flush: (a, volumeId, segment, slot, epoch) => {
      const c = conn(a);
      return c.request(new ChunkTarget(c, volumeId, segment, slot), Opcode.FLUSH, 0, epoch, 0, 0, undefined);
    },
    close: async () => {
      await Promise.all([...conns.values()].map((c) => c.close()));
      conns.clear();
    },
  };
}
