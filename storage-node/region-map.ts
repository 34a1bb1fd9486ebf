// The written-region bitmap of a chunk (docs/design.md rule 7, thin chunks): bit r set
// means region r has been written by the chunk's current owner and its bytes on
// disk are the owner's; clear means it reads as zeros without touching the disk.
// Bit order: region r is bit (r & 7) of byte (r >> 3), least significant first.

export function testBit(map: Uint8Array, r: number): boolean {
  return (map[r >> 3]! & (1 << (r & 7))) !== 0;
}

export function setBit(map: Uint8Array, r: number): void {
  map[r >> 3]! |= 1 << (r & 7);
}

export function clearBit(map: Uint8Array, r: number): void {
  map[r >> 3]! &= ~(1 << (r & 7));
}

/** True when every region in [first, last] is written. */
export function allSet(map: Uint8Array, first: number, last: number): boolean {
  let r = first;
  // Whole bytes at a time where aligned: the common case is a fully written chunk.
  while (r <= last) {
    if ((r & 7) === 0 && r + 7 <= last) {
      if (map[r >> 3] !== 0xff) return false;
      r += 8;
    } else {
      if (!testBit(map, r)) return false;
      r++;
    }
  }
  return true;
}

/** Number of written regions. */
export function countSet(map: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < map.length; i++) {
    let b = map[i]!;
    while (b !== 0) { b &= b - 1; n++; }
  }
  return n;
}
