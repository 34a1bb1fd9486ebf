import { randomBytes } from 'node:crypto';
import { openSync, writeSync, closeSync } from 'node:fs';
import { execa, type Result } from 'execa';

// Real third-party clients (qemu-img, qemu-io, nbdcopy, nbdinfo) and the vsky
// CLI, run as processes with bounded time.

export async function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<Result> {
  return execa(cmd, args, { timeout: timeoutMs, reject: true });
}

/** Runs and never throws: for commands expected to fail. */
export async function tryRun(cmd: string, args: string[], timeoutMs = 60_000): Promise<Result> {
  return execa(cmd, args, { timeout: timeoutMs, reject: false });
}

/** Writes a file of `size` random bytes. */
export function randomFile(path: string, size: number): void {
  const fd = openSync(path, 'w');
  const block = 1024 * 1024;
  for (let off = 0; off < size; off += block) writeSync(fd, randomBytes(Math.min(block, size - off)));
  closeSync(fd);
}

/** `qemu-img compare` exit code 0 means identical content. */
export async function sameContent(a: string, b: string): Promise<boolean> {
  const r = await tryRun('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', a, b]);
  return r.exitCode === 0;
}
