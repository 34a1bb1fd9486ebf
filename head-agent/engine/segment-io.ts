import type { LinearVolume } from './linear-volume.js';

// One segment's piece of a request (the volume split it at segment boundaries
// and the payload limit): a segment being freed holds it (thin-allocation.ts);
// a volume with a backing reads unwritten regions from it and copies up on a
// first write (backing.ts); an unallocated thin segment reads zeros and its
// first write waits for the allocation; the rest goes to the mirror.

export function readSegment(v: LinearVolume, s: number, so: number, dest: Buffer): Promise<Buffer> {
  const gate = v.thinSegments.gate(s);
  if (gate !== undefined) return gate.then(() => v.resumed() ?? readSegment(v, s, so, dest));
  const m = v.segment(s);
  if (v.backing !== undefined) return v.backing.read(m, s, so, dest);
  if (m.replicas.length === 0) {
    dest.fill(0);
    return Promise.resolve(dest);
  }
  return m.read(so, dest);
}

export function writeSegment(v: LinearVolume, s: number, so: number, data: Buffer, fua: boolean): Promise<void> {
  const thin = v.thinSegments;
  const gate = thin.gate(s);
  if (gate !== undefined) return gate.then(() => v.resumed() ?? writeSegment(v, s, so, data, fua));
  const m = v.segment(s);
  if (m.replicas.length === 0) return thin.allocate(s).then(() => v.resumed() ?? writeSegment(v, s, so, data, fua));
  thin.wrote(s);
  v.regions?.noteWrite(s, so, data.length);
  if (v.backing !== undefined) return v.backing.write(m, s, so, data, fua, Math.min(v.chunkSize, v.size - s * v.chunkSize));
  return m.write(so, data, fua);
}
