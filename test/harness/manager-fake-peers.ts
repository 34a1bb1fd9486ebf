import { fineRegionSize } from '../../shared/region-bitmap.js';
import { ConflictError, InvalidArgumentError, IoError, NotFoundError, TimeoutError, TransportError } from '../../shared/errors.js';
import type { ChunkIdentity__Output } from '../../proto/generated/vsky/common/ChunkIdentity.js';
import type { ResyncTask } from '../../proto/generated/vsky/common/ResyncTask.js';
import type { SegmentNote } from '../../proto/generated/vsky/storage/SegmentNote.js';
import type { AttachVolumeRequest } from '../../proto/generated/vsky/head/AttachVolumeRequest.js';
import type { ChunkRegions__Output } from '../../proto/generated/vsky/storage/ChunkRegions.js';
import type { DiskInfo__Output } from '../../proto/generated/vsky/storage/DiskInfo.js';
import type { NodeInfo__Output } from '../../proto/generated/vsky/storage/NodeInfo.js';
import type { HeadApi, PeerClients, StorageNodeApi } from '../../manager/node-clients.js';

// In-memory storage nodes and heads behind the PeerClients interface, for unit
// tests and benchmarks of the manager (never used by the daemon itself). They
// keep the rules the real ones promise: AllocateChunk refuses a taken chunk,
// FreeChunk refuses unless the chunk belongs to the given volume.

export interface FakeDisk {
  info: DiskInfo__Output;
  chunks: Map<number, ChunkIdentity__Output>;
}

export class FakeNode {
  readonly disks = new Map<string, FakeDisk>();
  down = false;
  /** Fail the next AllocateChunk calls whose chunk index matches. */
  failAllocate?: (diskId: string, chunkIndex: number) => boolean;
  /** When set, AllocateChunk records the chunk, then waits for this before replying. */
  allocateGate?: Promise<void>;
  /** CopyChunk fails (as a node that refuses the task would). */
  failCopy = false;
  /** Every CopyChunk task accepted, in order. */
  copies: ResyncTask[] = [];
  /** GetChunkRegions answers, by "volumeId/segment/slot" (default: nothing written). */
  regions = new Map<string, ChunkRegions__Output>();
  calls: string[] = [];
  /** Every NoteSegment recorded, in order. */
  notes: SegmentNote[] = [];
  /** NoteSegment fails (a node that cannot record the manager's note). */
  failNote = false;

  readonly info: Omit<NodeInfo__Output, 'disks'>;

  constructor(info: Omit<NodeInfo__Output, 'disks' | 'ssvrid' | 'intIdsClusterId' | 'nextIntIds' | 'note'> & Partial<NodeInfo__Output>) {
    this.info = { ssvrid: 0, intIdsClusterId: '', nextIntIds: null, note: null, ...info };
  }

  addDisk(id: string, chunkCount: number, chunkSize: number, path = `/dev/${id}`): DiskInfo__Output {
    const info: DiskInfo__Output = { diskId: id, path, chunkSize, regionSize: fineRegionSize(chunkSize), chunkCount, usedChunks: 0, state: 'active', size: chunkCount * chunkSize, clusterId: '', pdskid: 0, dextIds: [], note: null, written: [] };
    this.disks.set(id, { info, chunks: new Map() });
    return info;
  }

  nodeInfo(): NodeInfo__Output {
    return { ...this.info, disks: [...this.disks.values()].map((d) => ({ ...d.info, usedChunks: d.chunks.size })) };
  }

  disk(id: string): FakeDisk {
    const d = this.disks.get(id);
    if (!d) throw new NotFoundError(`no disk ${id}`);
    return d;
  }
}

export interface FakeHead {
  down: boolean;
  attached: Map<string, { epoch: number; req: AttachVolumeRequest }>;
  /** Attach fails. */
  fail?: boolean;
  /** UpdateMap fails. */
  failUpdateMap?: boolean;
  /** StartResync fails. */
  failStartResync?: boolean;
  /** Every UpdateMap received, in order. */
  updates: AttachVolumeRequest[];
  /** Every StartResync task accepted, in order. */
  resyncs: ResyncTask[];
  /** Every ReleaseLease received (volume names), in order. */
  releases: string[];
  /** ReleaseLease: answers (default), never answers (times out: a hung or partitioned holder), or fails. */
  releaseMode?: 'ok' | 'hang' | 'fail';
}

export class FakePeers implements PeerClients {
  readonly nodes = new Map<string, FakeNode>();
  readonly heads = new Map<string, FakeHead>();
  /** Artificial delay per call (ms). */
  delayMs = 0;

  addNode(id: string, opts: { labels?: Record<string, string>; host?: string } = {}): FakeNode {
    const host = opts.host ?? `10.0.0.${this.nodes.size + 1}`;
    const n = new FakeNode({ serverId: id, name: id, dataAddress: `${host}:7710`, controlAddress: `${host}:7711`, labels: opts.labels ?? {} });
    this.nodes.set(n.info.controlAddress, n);
    return n;
  }

  addHead(address: string): FakeHead {
    const h: FakeHead = { down: false, attached: new Map(), updates: [], resyncs: [], releases: [] };
    this.heads.set(address, h);
    return h;
  }

  private readonly copyLog: ResyncTask[] = [];

  /** Every CopyChunk task accepted by any node, in the order they came. */
  copies(): ResyncTask[] {
    return this.copyLog.slice();
  }

  private headAt(address: string): FakeHead {
    const h = this.heads.get(address);
    if (!h || h.down) throw new TransportError(`cannot reach head ${address}`);
    return h;
  }

  private async reach(address: string, what: string): Promise<FakeNode> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    const n = this.nodes.get(address);
    if (!n || n.down) throw new TransportError(`cannot reach ${address}`);
    n.calls.push(what);
    return n;
  }

  readonly node: StorageNodeApi = {
    getInfo: async (a) => (await this.reach(a, 'GetInfo')).nodeInfo(),
    addDisk: async (a, req) => {
      const n = await this.reach(a, 'AddDisk');
      const id = `disk-${req.path}`;
      const existing = [...n.disks.values()].find((d) => d.info.path === req.path);
      if (existing) return existing.info;
      const chunkSize = Number(req.chunkSize);
      return n.addDisk(id, Math.floor(Number(req.size) / chunkSize), chunkSize, req.path);
    },
    removeDisk: async (a, req) => {
      const n = await this.reach(a, 'RemoveDisk');
      n.disks.delete(req.diskId!);
    },
    allocateChunk: async (a, req) => {
      const n = await this.reach(a, 'AllocateChunk');
      const d = n.disk(req.diskId!);
      const idx = req.chunkIndex!;
      if (n.failAllocate?.(req.diskId!, idx)) throw new TransportError('injected allocation failure');
      if (idx >= d.info.chunkCount) throw new InvalidArgumentError(`chunk ${idx} out of range`);
      if (d.chunks.has(idx)) throw new ConflictError(`chunk ${idx} is taken`);
      d.chunks.set(idx, { ...(req.identity as ChunkIdentity__Output) });
      if (n.allocateGate) await n.allocateGate;
    },
    freeChunk: async (a, req) => {
      const n = await this.reach(a, 'FreeChunk');
      const d = n.disk(req.diskId!);
      const c = d.chunks.get(req.chunkIndex!);
      if (!c) return; // freeing a free chunk is a no-op, as on the real node
      if (c.volumeId !== req.volumeId) throw new ConflictError(`chunk ${req.chunkIndex} belongs to volume ${c.volumeId}`);
      d.chunks.delete(req.chunkIndex!);
    },
    listChunks: async (a, req) => {
      const n = await this.reach(a, 'ListChunks');
      const chunks = [];
      for (const d of n.disks.values()) {
        if (req.diskId && d.info.diskId !== req.diskId) continue;
        for (const [chunkIndex, identity] of d.chunks) chunks.push({ diskId: d.info.diskId, chunkIndex, identity, writtenRegions: 0 });
      }
      return { chunks, volumeNotes: [], deletedVolumes: [] };
    },
    getChunkRegions: async (a, req) => {
      const n = await this.reach(a, 'GetChunkRegions');
      return n.regions.get(`${req.volumeId}/${req.segment}/${req.slot}`) ?? { regionSize: 0, written: Buffer.alloc(0), dirty: Buffer.alloc(0) };
    },
    copyChunk: async (a, task) => {
      const n = await this.reach(a, 'CopyChunk');
      if (n.failCopy) throw new ConflictError('injected copy failure');
      n.copies.push(structuredClone(task));
      this.copyLog.push(structuredClone(task));
    },
    noteSegment: async (a, req) => {
      const n = await this.reach(a, 'NoteSegment');
      if (n.failNote) throw new IoError('injected note failure');
      n.notes.push(structuredClone(req));
    },
  };

  readonly head: HeadApi = {
    attach: async (a, req) => {
      const h = this.headAt(a);
      if (h.fail) throw new ConflictError('injected attach failure');
      h.attached.set(req.map!.name!, { epoch: req.epoch as number, req });
      return { nbdUri: `nbd://${a}/${req.map!.name}`, iscsiUrl: '' };
    },
    detach: async (a, req) => {
      const h = this.headAt(a);
      if (!h.attached.delete(req.name!)) throw new NotFoundError(`${req.name} is not attached`);
    },
    updateMap: async (a, req) => {
      const h = this.headAt(a);
      if (h.failUpdateMap) throw new ConflictError('injected UpdateMap failure');
      const held = h.attached.get(req.map!.name!);
      if (!held) throw new NotFoundError(`${req.map!.name} is not attached`);
      if (req.epoch !== held.epoch) throw new ConflictError(`UpdateMap epoch ${req.epoch} differs from the attach epoch ${held.epoch}`);
      h.updates.push(structuredClone(req));
      held.req = structuredClone(req);
    },
    startResync: async (a, task) => {
      const h = this.headAt(a);
      if (h.failStartResync) throw new ConflictError('injected StartResync failure');
      h.resyncs.push(structuredClone(task));
    },
    releaseLease: async (a, req, timeoutMs) => {
      const h = this.headAt(a);
      h.releases.push(req.name!);
      if (h.releaseMode === 'hang') {
        await new Promise((r) => setTimeout(r, timeoutMs));
        throw new TimeoutError(`ReleaseLease to ${a} timed out`);
      }
      if (h.releaseMode === 'fail') throw new IoError('injected flush failure during release');
      if (!h.attached.has(req.name!)) throw new NotFoundError(`${req.name} is not attached`);
    },
    listAttached: async (a) => {
      const h = this.headAt(a);
      return {
        volumes: [...h.attached.entries()].map(([name, x]) => ({
          name, volumeId: x.req.map!.volumeId ?? 0, epoch: x.epoch, nbdUri: '', size: Number(x.req.map!.size ?? 0), connections: 0,
          iscsiUrl: '', iscsiSessions: 0, lease: x.req.standby ? 'standby' : 'held',
        })),
      };
    },
  };

  /** Every owned chunk on every node: "diskId#index" -> volume id. */
  ownedChunks(): Map<string, number> {
    const out = new Map<string, number>();
    for (const n of this.nodes.values()) for (const d of n.disks.values()) for (const [i, c] of d.chunks) out.set(`${d.info.diskId}#${i}`, c.volumeId);
    return out;
  }

  close(): void {}
}
