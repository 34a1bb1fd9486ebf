import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, IoError } from '../../shared/errors.js';
import { blockDeviceCompliance } from '../harness/block-device-compliance.js';
import { MemoryDevice } from '../harness/memory-device.js';

// The in-memory BlockDevice the export tests use (test/harness/memory-device.ts):
// it keeps the BlockDevice contract (the shared compliance suite, with and
// without readInto), and its knobs do what the tests above it rely on.

const MiB = 1024 * 1024;

blockDeviceCompliance('MemoryDevice', async () => ({ device: new MemoryDevice(4 * MiB), close: async () => undefined }));
blockDeviceCompliance('MemoryDevice with readInto', async () => ({
  device: new MemoryDevice(4 * MiB, { name: 'mem-ri', readInto: true }), close: async () => undefined,
}), { boundary: MiB });

describe('MemoryDevice knobs', () => {
  it('logs every call, also refused ones, and offers readInto only when asked', async () => {
    const dev = new MemoryDevice(MiB, { readInto: true });
    expect(new MemoryDevice(MiB).readInto).toBeUndefined();
    await dev.write(0, Buffer.alloc(512, 1), true);
    await dev.readInto!(0, Buffer.alloc(512));
    await dev.flush();
    await expect(dev.discard(MiB, 1)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(dev.calls).toEqual(['write-fua 0 512', 'readInto 0 512', 'flush 0 0', `discard ${MiB} 1`]);
    expect(dev.flushes).toBe(1);
    expect(dev.active).toBe(0);
  });

  it('the gate holds calls in flight (counted) until it opens; fail and failReadsAt reject', async () => {
    const dev = new MemoryDevice(MiB);
    let open!: () => void;
    const held = new Promise<void>((r) => { open = r; });
    const seen: string[] = [];
    dev.gate = (op) => { seen.push(op); return held; };
    const pending = [dev.write(0, Buffer.from('ab'), false), dev.read(0, 2), dev.flush()];
    await new Promise((r) => setTimeout(r, 10));
    expect(dev.active).toBe(3);
    expect(dev.maxActive).toBe(3);
    expect(seen).toEqual(['write', 'read', 'flush']);
    open();
    const [, got] = await Promise.all(pending);
    expect((got as Buffer).toString()).toBe('ab');
    expect(dev.active).toBe(0);
    dev.gate = undefined;
    dev.failReadsAt = 4096;
    await expect(dev.read(0, 4097)).rejects.toBeInstanceOf(IoError);
    expect((await dev.read(0, 4096)).length).toBe(4096);
    dev.fail = new IoError('injected');
    await expect(dev.write(0, Buffer.alloc(1), false)).rejects.toBe(dev.fail);
  });

  it('without a store it keeps nothing, reads zeros and still checks ranges', async () => {
    const dev = new MemoryDevice(1024 * MiB, { store: false, readInto: true });
    expect(dev.data.length).toBe(0);
    await dev.write(512 * MiB, Buffer.alloc(4096, 7), false);
    expect((await dev.read(512 * MiB, 4096)).every((b) => b === 0)).toBe(true);
    expect((await dev.readInto!(512 * MiB, Buffer.alloc(16, 9))).every((b) => b === 0)).toBe(true);
    await expect(dev.writeZeroes(1024 * MiB - 1, 2, false)).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('delays calls at an exact offset', async () => {
    const dev = new MemoryDevice(MiB);
    dev.delayAt.set(8192, 80);
    const t0 = Date.now();
    await dev.read(8192, 1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(70);
  });
});
