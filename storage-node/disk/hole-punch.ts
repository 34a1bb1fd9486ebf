import { execa } from 'execa';
import type { Logger } from 'pino';

// Gives a disk's unused bytes back to what holds it: util-linux `fallocate
// --punch-hole --keep-size` on the disk's open file (a sparse file frees its
// blocks; a block device that supports it gets a zero-out/discard). Node has no
// fallocate(2) and no maintained package wraps it, so one short process runs
// per range, one at a time per disk, adjacent queued ranges merged.
//
// After a punch the range reads as zeros. Callers keep the range out of every
// other writer's way until the returned promise settles (chunk-io.ts does so
// with the region-initialisation gates). A disk whose file system or device
// cannot punch answers false once and is not asked again.

/** Ranges queued behind a running punch at most; past it a range stays allocated (it reads as zeros all the same). */
const MAX_QUEUED = 256;

interface Pending {
  position: number;
  length: number;
  waiters: ((punched: boolean) => void)[];
}

export class HolePuncher {
  private supported = true;
  private running = false;
  private queue: Pending[] = [];
  /** Ranges punched since open, and bytes (metrics, tests). */
  punched = 0;
  punchedBytes = 0;

  constructor(private readonly target: () => string, private readonly log: Logger) {}

  /** Punches [position, position + length); resolves false where the disk cannot (the bytes are then unchanged). */
  punch(position: number, length: number): Promise<boolean> {
    if (!this.supported || length <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const last = this.queue[this.queue.length - 1];
      if (last !== undefined && last.position + last.length === position) {
        last.length += length;
        last.waiters.push(resolve);
      } else if (this.queue.length >= MAX_QUEUED) {
        resolve(false);
      } else {
        this.queue.push({ position, length, waiters: [resolve] });
      }
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    for (let next = this.queue.shift(); next !== undefined; next = this.queue.shift()) {
      const ok = await this.run(next.position, next.length);
      for (const w of next.waiters) w(ok);
    }
    this.running = false;
  }

  private async run(position: number, length: number): Promise<boolean> {
    if (!this.supported) return false;
    const r = await execa('fallocate', ['--punch-hole', '--keep-size', '--offset', String(position), '--length', String(length), this.target()],
      { reject: false, timeout: 30_000 });
    if (r.exitCode === 0) {
      this.punched++;
      this.punchedBytes += length;
      return true;
    }
    const why = `${r.stderr || r.shortMessage}`.trim();
    // Not supported here (file system, device, or no fallocate binary): stop asking.
    if (/not supported|ENOENT|not found/i.test(why)) {
      this.supported = false;
      this.log.warn({ why }, 'this disk cannot punch holes: discarded space stays allocated (data stays correct)');
    } else {
      this.log.warn({ position, length, why }, 'hole punch failed: that range stays allocated');
    }
    return false;
  }
}
