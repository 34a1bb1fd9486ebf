import { describe, expect, it } from 'vitest';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../head-agent/engine/block-device.js';
import type { Mirror } from '../../head-agent/engine/mirror.js';
import type { MutationTracker } from '../../head-agent/engine/mutation-tracker.js';
import type { ChunkRegions, NodeControlClients } from '../../head-agent/engine/node-control-clients.js';
import { WrittenRegions, type RegionVolume } from '../../head-agent/engine/written-regions.js';
import { mayDeallocate } from '../../shared/deallocation.js';
import { setBit } from '../../shared/region-bitmap.js';

// The head's cache of written-region bitmaps (block status): fetched once per
// segment, kept up to date by this head's writes and discards, and "data"
// whenever anything is unknown.

const MiB = 1024 * 1024;
const CS = 4 * MiB; // 4096 regions of 1 KiB
const RS = 1024;
const HZ = EXTENT_HOLE | EXTENT_ZERO;

function fixture(opts: { thin?: boolean; fail?: boolean } = {}) {
  const written = new Uint8Array(512);
  let calls = 0;
  let release: (() => void) | undefined;
  let hold = false;
  const clients = {
    regions: async (): Promise<ChunkRegions> => {
      calls++;
      const snapshot = new Uint8Array(written); // the node's map when it answered
      if (hold) await new Promise<void>((r) => { release = r; });
      if (opts.fail) throw new Error('node down');
      return { regionSize: RS, regionCount: 4096, written: snapshot, dirty: new Uint8Array(512) };
    },
  } as unknown as NodeControlClients;
  const replica = { readable: true, controlAddress: '127.0.0.1:1', diskId: 'd1', chunkIndex: 3, slot: 0 };
  const allocated = [true, false];
  const v: RegionVolume & { lease: string; hasBacking?: boolean; epoch: number } = {
    name: 'v', volumeId: 1, chunkSize: CS, size: 2 * CS, thin: opts.thin ?? true, epoch: 5, lease: 'held',
    tracker: { barrier: async () => {} } as unknown as MutationTracker,
    segment: () => ({ replicas: [replica] }) as unknown as Mirror,
    isAllocated: (s) => allocated[s]!,
  };
  const wr = new WrittenRegions(clients, CS);
  return { v, wr, written, calls: () => calls, holdNext: () => { hold = true; }, release: () => release?.() };
}

describe('WrittenRegions', () => {
  it('written regions are data, the rest of a thin chunk hole+zero, an unallocated segment hole+zero; fetched once', async () => {
    const f = fixture();
    setBit(f.written, 1);
    expect(await f.wr.status(f.v, 0, 2 * CS)).toEqual([
      { length: RS, flags: HZ }, { length: RS, flags: 0 }, { length: 2 * CS - 2 * RS, flags: HZ },
    ]);
    await f.wr.status(f.v, 0, CS);
    expect(f.calls()).toBe(1);
  });

  it('a thick volume: unwritten regions are zero, not holes', async () => {
    const f = fixture({ thin: false });
    expect(await f.wr.status(f.v, RS / 2, RS)).toEqual([{ length: RS, flags: EXTENT_ZERO }]);
  });

  it('this head\'s writes (also during the fetch) and whole-region discards update the cache', async () => {
    const f = fixture();
    f.holdNext();
    const pending = f.wr.status(f.v, 0, 4 * RS);
    await new Promise((r) => setTimeout(r, 5));
    f.wr.noteWrite(0, 2 * RS + 10, 5); // lands on the node after it answered
    f.release();
    expect(await pending).toEqual([{ length: 2 * RS, flags: HZ }, { length: RS, flags: 0 }, { length: RS, flags: HZ }]);
    f.wr.noteWrite(0, 0, 4 * RS);
    f.wr.noteZeroed(CS, RS / 2, 2 * RS); // covers region 1 whole only
    expect(await f.wr.status(f.v, 0, 4 * RS)).toEqual([{ length: RS, flags: 0 }, { length: RS, flags: HZ }, { length: 2 * RS, flags: 0 }]);
    expect(f.calls()).toBe(1);
  });

  it('a new epoch fetches again; unknown, a standby, or a backing answer data', async () => {
    const f = fixture();
    await f.wr.status(f.v, 0, RS);
    f.v.epoch = 6;
    await f.wr.status(f.v, 0, RS);
    expect(f.calls()).toBe(2);
    f.v.lease = 'standby';
    expect(await f.wr.status(f.v, 0, CS)).toEqual([{ length: CS, flags: 0 }]);
    f.v.lease = 'held';
    f.v.hasBacking = true;
    expect(mayDeallocate(f.v)).toBe(false);
    expect(await f.wr.status(f.v, CS, CS)).toEqual([{ length: CS, flags: 0 }]); // even the unallocated segment: it reads the backing
    const g = fixture({ fail: true });
    expect(await g.wr.status(g.v, 0, 2 * CS)).toEqual([{ length: CS, flags: 0 }, { length: CS, flags: HZ }]);
  });
});
