// A binary heap over a caller's order: `before(a, b)` is true when a comes
// out first. Items must not change their order while inside the heap (the
// placement pops a disk, changes it, and pushes it back).

export class Heap<T> {
  private readonly items: T[];

  constructor(items: readonly T[], private readonly before: (a: T, b: T) => boolean) {
    this.items = items.slice();
    for (let i = (this.items.length >> 1) - 1; i >= 0; i--) this.down(i);
  }

  get size(): number {
    return this.items.length;
  }

  push(item: T): void {
    this.items.push(item);
    this.up(this.items.length - 1);
  }

  /** Removes and returns the first item; the heap must not be empty. */
  pop(): T {
    const top = this.items[0]!;
    const last = this.items.pop()!;
    if (this.items.length > 0) {
      this.items[0] = last;
      this.down(0);
    }
    return top;
  }

  private up(i: number): void {
    const it = this.items;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(it[i]!, it[p]!)) break;
      [it[i], it[p]] = [it[p]!, it[i]!];
      i = p;
    }
  }

  private down(i: number): void {
    const it = this.items;
    const n = it.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.before(it[l]!, it[m]!)) m = l;
      if (r < n && this.before(it[r]!, it[m]!)) m = r;
      if (m === i) break;
      [it[i], it[m]] = [it[m]!, it[i]!];
      i = m;
    }
  }
}
