import { describe, expect, it } from 'vitest';
import { Backing, type BackingLevel } from '../../head-agent/engine/backing.js';
import type { Mirror } from '../../head-agent/engine/mirror.js';
import { setBit } from '../../shared/region-bitmap.js';

// Copy-up on a volume with a backing (head-agent/engine/backing.ts): a write
// into a region the volume has not written fills the rest of the region from
// the chain, under a per-region lock, in as few requests as it can: one read
// for a small write's two edges, none when the chain reads zeros there.
// The mirrors are in-memory stand-ins that model the node's rule 7: the first
// write into an unwritten region zero-fills the rest of it.

const CS = 4 * 1024 * 1024; // 4096 regions of 1 KiB
const RS = 1024;

interface FakeMirror {
  mirror: Mirror;
  bytes: Buffer;
  reads: Array<[number, number]>;
  writes: Array<[number, number]>;
  /** When set, writes wait for it (a copy-up in flight). */
  gate: Promise<void> | undefined;
}

function fakeMirror(fill: number | undefined, zeroFill: boolean): FakeMirror {
  const bytes = Buffer.alloc(CS, fill ?? 0);
  const written = new Uint8Array(CS / RS);
  const f: FakeMirror = { mirror: undefined as unknown as Mirror, bytes, reads: [], writes: [], gate: undefined };
  f.mirror = {
    index: 0,
    replicas: fill === undefined && !zeroFill ? [] : [{}],
    read: async (so: number, dest: Buffer) => {
      f.reads.push([so, dest.length]);
      await Promise.resolve();
      bytes.copy(dest, 0, so, so + dest.length);
      return dest;
    },
    write: async (so: number, data: Buffer) => {
      f.writes.push([so, data.length]);
      const snapshot = Buffer.from(data); // what the node received
      if (f.gate !== undefined) await f.gate;
      if (zeroFill) {
        for (let r = Math.floor(so / RS); r <= Math.floor((so + data.length - 1) / RS); r++) {
          if (written[r] === 0) bytes.fill(0, r * RS, (r + 1) * RS);
          written[r] = 1;
        }
      }
      snapshot.copy(bytes, so);
    },
  } as unknown as Mirror;
  return f;
}

function setup(template: number | undefined, written?: (Uint8Array | undefined)[]) {
  const snap = fakeMirror(template, false);
  const own = fakeMirror(undefined, true);
  const level: BackingLevel = { name: 'tpl', volumeId: 1, mirrors: [snap.mirror], written };
  const backing = new Backing(CS, [level], [], 32 * 1024 * 1024);
  const read = async (so: number, n: number) => backing.read(own.mirror, 0, so, Buffer.alloc(n));
  return { snap, own, backing, read };
}

describe('Backing copy-up', () => {
  it('a 4 KiB write inside one region reads both edges in ONE request and writes the whole region', async () => {
    const { snap, own, backing, read } = setup(0xaa);
    await backing.write(own.mirror, 0, 10 * RS + 100, Buffer.alloc(500, 1), false, CS);
    expect(snap.reads).toEqual([[10 * RS, RS]]);
    expect(own.writes).toEqual([[10 * RS, RS]]);
    const got = await read(10 * RS, RS);
    expect(got.subarray(0, 100).every((b) => b === 0xaa)).toBe(true);
    expect(got.subarray(100, 600).every((b) => b === 1)).toBe(true);
    expect(got.subarray(600).every((b) => b === 0xaa)).toBe(true);
    expect(backing.isWritten(0, 10)).toBe(true);
    expect(backing.isWritten(0, 11)).toBe(false);
  });

  it('partial writes at region edges: only the partial regions are filled, whole ones are the data', async () => {
    const { snap, own, backing, read } = setup(0xbb);
    // From the middle of region 3 to the middle of region 9: regions 4..8 whole.
    const data = Buffer.alloc(6 * RS, 2);
    await backing.write(own.mirror, 0, 3 * RS + 512, data, false, CS);
    expect(snap.reads.sort()).toEqual([[3 * RS, 512], [9 * RS + 512, 512]]); // two edges far apart: two small reads
    expect(own.writes).toEqual([[3 * RS, 7 * RS]]);
    const got = await read(3 * RS, 7 * RS);
    expect(got.subarray(0, 512).every((b) => b === 0xbb)).toBe(true);
    expect(got.subarray(512, 512 + 6 * RS).every((b) => b === 2)).toBe(true);
    expect(got.subarray(512 + 6 * RS).every((b) => b === 0xbb)).toBe(true);
    // A write ending on a region boundary fills only its start.
    snap.reads.length = 0;
    await backing.write(own.mirror, 0, 20 * RS + 1000, Buffer.alloc(24, 3), false, CS);
    expect(snap.reads).toEqual([[20 * RS, 1000]]);
    expect((await read(20 * RS, RS)).subarray(0, 1000).every((b) => b === 0xbb)).toBe(true);
    // Written regions are not filled again: a write across regions 10 (written) and 11 (not) fills only 11's tail.
    snap.reads.length = 0;
    await backing.write(own.mirror, 0, 10 * RS, Buffer.alloc(RS, 9), false, CS);
    snap.reads.length = 0;
    await backing.write(own.mirror, 0, 10 * RS + 1000, Buffer.alloc(48, 4), false, CS);
    expect(snap.reads).toEqual([[11 * RS + 24, RS - 24]]);
    const r10 = await read(10 * RS, 2 * RS);
    expect(r10.subarray(0, 1000).every((b) => b === 9)).toBe(true);
    expect(r10.subarray(1000, 1048).every((b) => b === 4)).toBe(true);
    expect(r10.subarray(1048).every((b) => b === 0xbb)).toBe(true);
  });

  it('the chain reads zeros there (unallocated, or a level with the regions unwritten): no read, only the data is written', async () => {
    const { snap, own, backing, read } = setup(undefined);
    expect(backing.chainZeros(0, 0, 10)).toBe(true);
    await backing.write(own.mirror, 0, 5 * RS + 100, Buffer.alloc(200, 7), false, CS);
    expect(snap.reads).toEqual([]);
    expect(own.writes).toEqual([[5 * RS + 100, 200]]);
    const got = await read(5 * RS, RS);
    expect(got.subarray(0, 100).every((b) => b === 0)).toBe(true);
    expect(got.subarray(100, 300).every((b) => b === 7)).toBe(true);
    expect(got.subarray(300).every((b) => b === 0)).toBe(true);

    // A level with its own written bits: regions it wrote are data, the others zeros.
    const bits = new Uint8Array(CS / RS / 8);
    setBit(bits, 2);
    const b = setup(0xcc, [bits]);
    expect(b.backing.chainZeros(0, 1, 1)).toBe(true);
    expect(b.backing.chainZeros(0, 1, 2)).toBe(false);
    await b.backing.write(b.own.mirror, 0, RS + 10, Buffer.alloc(10, 5), false, CS);
    expect(b.snap.reads).toEqual([]);
    await b.backing.write(b.own.mirror, 0, 2 * RS + 10, Buffer.alloc(10, 5), false, CS);
    expect(b.snap.reads).toEqual([[2 * RS, RS]]);
    expect((await b.read(2 * RS, RS)).subarray(20).every((x) => x === 0xcc)).toBe(true);
    // A plain volume below (no written bits) holds data wherever it is allocated.
    expect(setup(0).backing.chainZeros(0, 0, 0)).toBe(false);
  });

  it('concurrent writes to one region during its copy-up: the later write waits and lands on top, nothing older over it', async () => {
    const { own, backing, read } = setup(0xdd);
    let open!: () => void;
    own.gate = new Promise<void>((r) => { open = r; });
    const first = backing.write(own.mirror, 0, 30 * RS, Buffer.alloc(100, 1), false, CS); // copy-up of region 30 in flight
    await new Promise((r) => setTimeout(r, 5));
    own.gate = undefined;
    const second = backing.write(own.mirror, 0, 30 * RS + 50, Buffer.alloc(100, 2), false, CS); // overlaps the first
    const third = backing.write(own.mirror, 0, 30 * RS + 500, Buffer.alloc(10, 3), false, CS); // same region, elsewhere
    await new Promise((r) => setTimeout(r, 5));
    expect(own.writes).toHaveLength(1); // both wait for the copy-up's lock
    open();
    await Promise.all([first, second, third]);
    expect(own.writes).toEqual([[30 * RS, RS], [30 * RS + 50, 100], [30 * RS + 500, 10]]); // after it: plain writes
    const got = await read(30 * RS, RS);
    expect(got.subarray(0, 50).every((b) => b === 1)).toBe(true);
    expect(got.subarray(50, 150).every((b) => b === 2)).toBe(true);
    expect(got.subarray(150, 500).every((b) => b === 0xdd)).toBe(true);
    expect(got.subarray(500, 510).every((b) => b === 3)).toBe(true);
    expect(got.subarray(510).every((b) => b === 0xdd)).toBe(true);
    await backing.idle();
  });

  it('a failed copy-up leaves the region unwritten: reads still come from the chain and the next write copies up again', async () => {
    const { snap, own, backing, read } = setup(0xee);
    const write = own.mirror.write.bind(own.mirror);
    let fail = true;
    (own.mirror as unknown as { write: typeof write }).write = async (so, data, fua) => {
      if (fail) throw new Error('replica down');
      return write(so, data, fua);
    };
    await expect(backing.write(own.mirror, 0, 40 * RS + 8, Buffer.alloc(8, 1), false, CS)).rejects.toThrow('replica down');
    expect(backing.isWritten(0, 40)).toBe(false);
    expect((await read(40 * RS, RS)).every((b) => b === 0xee)).toBe(true);
    fail = false;
    snap.reads.length = 0;
    await backing.write(own.mirror, 0, 40 * RS + 8, Buffer.alloc(8, 1), false, CS);
    expect(snap.reads).toEqual([[40 * RS, RS]]);
    expect(backing.isWritten(0, 40)).toBe(true);
  });
});
