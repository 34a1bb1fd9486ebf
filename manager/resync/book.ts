import type { StoreBatch } from '../store.js';
import type { ResyncRecord } from '../types.js';

// The resync records in memory, indexed by id, by replica slot and by volume.
// Records are changed in place by their owners (spares.ts creates and
// re-targets them, resyncs.ts runs and finishes them) and put in the batch
// that makes each change durable; this class only keeps the indexes right.

const slotKey = (volumeId: number, segment: number, slot: number) => `${volumeId}/${segment}/${slot}`;

export class ResyncBook {
  private readonly byId = new Map<string, ResyncRecord>();
  private readonly bySlot = new Map<string, ResyncRecord>();
  private readonly byVolume = new Map<number, Set<ResyncRecord>>();
  private nextNumber = 1;

  load(records: ResyncRecord[], nextResyncId: number): void {
    for (const r of records) {
      this.add(r);
      const n = Number(r.id.slice(1));
      if (Number.isSafeInteger(n)) this.nextNumber = Math.max(this.nextNumber, n + 1);
    }
    this.nextNumber = Math.max(this.nextNumber, nextResyncId);
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: string): ResyncRecord | undefined {
    return this.byId.get(id);
  }

  forSlot(volumeId: number, segment: number, slot: number): ResyncRecord | undefined {
    return this.bySlot.get(slotKey(volumeId, segment, slot));
  }

  ofVolume(volumeId: number): ResyncRecord[] {
    return [...(this.byVolume.get(volumeId) ?? [])];
  }

  all(): ResyncRecord[] {
    return [...this.byId.values()];
  }

  /** A fresh id; the batch that creates the record also advances the persisted counter. */
  allocateId(batch: StoreBatch): string {
    const id = `r${this.nextNumber++}`;
    batch.putNextResyncId(this.nextNumber);
    return id;
  }

  add(r: ResyncRecord): void {
    this.byId.set(r.id, r);
    this.bySlot.set(slotKey(r.volumeId, r.segment, r.slot), r);
    let set = this.byVolume.get(r.volumeId);
    if (!set) this.byVolume.set(r.volumeId, (set = new Set()));
    set.add(r);
  }

  remove(r: ResyncRecord): void {
    if (this.byId.get(r.id) !== r) return;
    this.byId.delete(r.id);
    this.bySlot.delete(slotKey(r.volumeId, r.segment, r.slot));
    const set = this.byVolume.get(r.volumeId);
    set?.delete(r);
    if (set?.size === 0) this.byVolume.delete(r.volumeId);
  }
}
