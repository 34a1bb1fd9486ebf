import { defaultRegionSize, orInto, testBit } from '../../shared/region-bitmap.js';
import { mayDeallocate, type MaybeBacked } from '../../shared/deallocation.js';
import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { EXTENT_HOLE, EXTENT_ZERO, type AllocationExtent } from './block-device.js';
import type { Mirror } from './mirror.js';
import type { MutationTracker } from './mutation-tracker.js';
import type { NodeControlClients } from './node-control-clients.js';

// What a volume's bytes hold, for NBD block status (base:allocation) and
// copies that skip zeros: an unallocated segment of a thin volume is a hole;
// a region whose `written` bit is clear on the chunk reads zeros (rule 7), a
// hole on a thin chunk; the rest is data.
//
// The bitmaps are fetched per segment on demand (GetChunkRegions on every
// readable replica, their union) and cached while this head holds the lease
// at the same epoch on the same chunks; this head's own writes set bits in the
// cache, its discards clear the regions they cover whole. Nothing here runs
// per I/O except noteWrite: a map lookup and a few bit sets, no allocation.
// Every doubt (a replica not answering, a lease not held, a backing) answers
// "data", which is always true.

const log = moduleLogger('written-regions');

/** Segments whose bitmaps one status call may fetch: the client asks again from where the answer ends. */
const FETCHES_PER_CALL = 16;
/** Extents one call returns at most (after merging). */
const MAX_EXTENTS = 2048;

/** What the cache needs of a volume (LinearVolume). */
export interface RegionVolume extends MaybeBacked {
  readonly name: string;
  readonly volumeId: number;
  readonly chunkSize: number;
  readonly size: number;
  readonly thin: boolean;
  readonly epoch: number;
  readonly lease: string;
  readonly tracker: MutationTracker;
  segment(index: number): Mirror;
  isAllocated(segment: number): boolean;
}

interface Entry {
  /** Epoch and chunks the bits belong to. */
  key: string;
  bits: Uint8Array;
  /** The fetch in progress; undefined once the bits are the node's (plus our writes). */
  loading: Promise<boolean> | undefined;
}

export class WrittenRegions {
  private readonly entries = new Map<number, Entry>();
  readonly regionSize: number;
  private readonly regionCount: number;

  constructor(private readonly clients: NodeControlClients, chunkSize: number, regionSize = defaultRegionSize(chunkSize)) {
    this.regionSize = regionSize;
    this.regionCount = Math.ceil(chunkSize / this.regionSize);
  }

  /** A write of [so, so + n) of segment s begins: its regions are data from now on (the node zero-fills the rest of a region). */
  noteWrite(s: number, so: number, n: number): void {
    const e = this.entries.get(s);
    if (e === undefined || n <= 0) return;
    const rs = this.regionSize;
    const bits = e.bits;
    for (let r = Math.floor(so / rs), last = Math.floor((so + n - 1) / rs); r <= last; r++) bits[r >> 3]! |= 1 << (r & 7);
  }

  /** A discard or write-zeroes of volume bytes [offset, offset + length) completed: regions it covered whole read zeros. */
  noteZeroed(chunkSize: number, offset: number, length: number): void {
    if (this.entries.size === 0 || length <= 0) return;
    const rs = this.regionSize;
    const end = offset + length;
    for (let s = Math.floor(offset / chunkSize); s * chunkSize < end; s++) {
      const e = this.entries.get(s);
      if (e === undefined) continue;
      const base = s * chunkSize;
      const from = Math.max(offset, base) - base;
      const to = Math.min(end, base + chunkSize) - base;
      // As the node does (chunk-io.ts zeroChunk): only regions the range covers whole.
      for (let r = Math.ceil(from / rs); (r + 1) * rs <= to; r++) e.bits[r >> 3]! &= ~(1 << (r & 7));
    }
  }

  /** Forgets every bitmap (a lease lost or a new map: the next status fetches again). */
  clear(): void {
    this.entries.clear();
  }

  /** The extents of [offset, offset + length) (BlockDevice.allocationStatus); the caller checked the range. */
  async status(v: RegionVolume, offset: number, length: number): Promise<AllocationExtent[]> {
    if (v.lease !== 'held' || !mayDeallocate(v)) return [{ length, flags: 0 }];
    const out: AllocationExtent[] = [];
    const push = (n: number, flags: number): void => {
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === flags) last.length += n;
      else out.push({ length: n, flags });
    };
    const cs = v.chunkSize;
    const rs = this.regionSize;
    const unwritten = v.thin ? EXTENT_HOLE | EXTENT_ZERO : EXTENT_ZERO;
    const end = offset + length;
    let fetched = 0;
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS) {
      const s = Math.floor(pos / cs);
      const base = s * cs;
      const stop = Math.min(end, base + cs, v.size);
      if (!v.isAllocated(s)) {
        push(stop - pos, EXTENT_HOLE | EXTENT_ZERO);
        pos = stop;
        continue;
      }
      if (fetched >= FETCHES_PER_CALL && !this.cached(v, s)) break;
      fetched++;
      const bits = await this.bitmap(v, s);
      if (bits === undefined) {
        push(stop - pos, 0);
        pos = stop;
        continue;
      }
      for (let r = Math.floor((pos - base) / rs); pos < stop; r++) {
        const n = Math.min(base + (r + 1) * rs, stop) - pos;
        push(n, testBit(bits, r) ? 0 : unwritten);
        pos += n;
      }
    }
    return out;
  }

  private cached(v: RegionVolume, s: number): boolean {
    const e = this.entries.get(s);
    return e !== undefined && e.loading === undefined && e.key === keyOf(v, s);
  }

  /** Segment s's written bits (the union over its readable replicas), or undefined when unknown. */
  private async bitmap(v: RegionVolume, s: number): Promise<Uint8Array | undefined> {
    const key = keyOf(v, s);
    let e = this.entries.get(s);
    if (e === undefined || e.key !== key) {
      // The entry exists before the barrier: writes begun from now on set its bits;
      // writes begun before have landed on the nodes once the barrier passes.
      const entry: Entry = { key, bits: new Uint8Array(Math.ceil(this.regionCount / 8)), loading: undefined };
      entry.loading = this.fetch(v, s, entry);
      this.entries.set(s, (e = entry));
    }
    if (e.loading !== undefined && !(await e.loading)) return undefined;
    return e.bits;
  }

  private async fetch(v: RegionVolume, s: number, e: Entry): Promise<boolean> {
    const m = v.segment(s);
    const readable = m.replicas.filter((r) => r.readable);
    try {
      if (readable.length === 0 || readable.some((r) => r.controlAddress === '')) throw new Error('no readable replica with a control address');
      await v.tracker.barrier();
      const maps = await Promise.all(readable.map((r) => this.clients.regions(r.controlAddress, r, v.chunkSize)));
      if (maps.some((x) => x.regionSize !== this.regionSize)) throw new Error(`a replica uses another region size than ${this.regionSize}`);
      for (const x of maps) orInto(e.bits, x.written);
      e.loading = undefined;
      return true;
    } catch (err) {
      log.debug({ volume: v.name, segment: s, err: errorMessage(err) }, 'written regions unknown: reported as data');
      if (this.entries.get(s) === e) this.entries.delete(s);
      return false;
    }
  }
}

/** The lease epoch and chunks a segment's bits belong to. */
function keyOf(v: RegionVolume, s: number): string {
  let key = String(v.epoch);
  for (const r of v.segment(s).replicas) key += `|${r.diskId}:${r.chunkIndex}:${r.slot}`;
  return key;
}
