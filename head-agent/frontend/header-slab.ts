// Where a frontend writer (NBD replies, iSCSI PDUs) writes its fixed-size
// headers in place: views cut one after another from a slab, so a header
// costs no allocation. A slab is never reused: writes still queued in the
// socket reference its bytes. When one is used up, the next is allocated and
// the old one is left to the GC once the socket is done with it.

export class HeaderSlab {
  private readonly slabSize: number;
  private slab: Buffer;
  private used = 0;

  /** `slabSize` must hold the largest header taken. */
  constructor(slabSize: number) {
    this.slabSize = slabSize;
    this.slab = Buffer.allocUnsafe(slabSize);
  }

  /** The next `size` bytes of the slab (uninitialized), for one header. */
  take(size: number): Buffer {
    if (this.used + size > this.slab.length) {
      this.slab = Buffer.allocUnsafe(this.slabSize);
      this.used = 0;
    }
    const buf = this.slab.subarray(this.used, this.used + size);
    this.used += size;
    return buf;
  }
}
