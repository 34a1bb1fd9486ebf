// The placement model's view of servers and disks (manager/placement.ts
// keeps them): which volume owns each chunk index of a disk, and the order in
// which disks are picked. Owner 0 means free; volume ids start at 1.

export interface ModelServer {
  id: string;
  labels: Readonly<Record<string, string>>;
  eligible: boolean;
}

export interface ModelDisk {
  id: string;
  serverId: string;
  chunkCount: number;
  owner: Uint32Array;
  used: number;
  /** Every index below `cursor` is owned: allocation searches from here. */
  cursor: number;
  eligible: boolean;
  /** Random key redrawn at each pick: ties on free space go to the lowest. */
  tie: number;
  order: number;
  /** Chunk indexes reported bad (XML-RPC notifyBadBlocks): BAD_OWNER once no volume owns them. */
  bad: Set<number>;
}

/** What placing a volume or its spares reads and changes. */
export interface ModelView {
  readonly servers: ReadonlyMap<string, ModelServer>;
  readonly disks: ReadonlyMap<string, ModelDisk>;
  /** The seeded generator drawing tie keys. */
  readonly random: () => number;
}

/**
 * Owner of a chunk some node holds for a volume this manager does not know
 * (its AllocateChunk or FreeChunk said the chunk is taken): kept out of
 * placement until GC sees the node no longer holds it. Never a volume id.
 */
export const FOREIGN_OWNER = 0xffffffff;
/**
 * Owner of a chunk reported bad (a free one at once, an owned one when its
 * volume lets it go): never placed, never freed, counted as used. Never a
 * volume id.
 */
export const BAD_OWNER = 0xfffffffe;
export const MAX_VOLUME_ID = BAD_OWNER - 1;

/** An eligible disk on an eligible server may receive new chunks. */
export function isEligible(view: ModelView, d: ModelDisk): boolean {
  return d.eligible && (view.servers.get(d.serverId)?.eligible ?? false);
}

/** Heap order: most free chunks first, then the random tie key, then oldest disk. */
export function placeBefore(a: ModelDisk, b: ModelDisk): boolean {
  const fa = a.chunkCount - a.used;
  const fb = b.chunkCount - b.used;
  if (fa !== fb) return fa > fb;
  if (a.tie !== b.tie) return a.tie < b.tie;
  return a.order < b.order;
}

/** Lowest free index from the disk's cursor (every index below it is owned). */
export function allocIndex(d: ModelDisk, volumeId: number): number {
  for (let i = d.cursor; i < d.chunkCount; i++) {
    if (d.owner[i] === 0) {
      d.owner[i] = volumeId;
      d.used++;
      d.cursor = i + 1;
      return i;
    }
  }
  // The heap only holds disks with free chunks, so this means a broken invariant.
  throw new Error(`disk ${d.id} reported ${d.chunkCount - d.used} free chunks but has none`);
}
