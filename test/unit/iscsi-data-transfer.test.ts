// CmdSN windowing, write data collection (immediate, unsolicited, R2T) and
// the data byte budget, without sockets.

import { describe, expect, it } from 'vitest';
import { CommandWindow, snLess } from '../../head-agent/frontend/iscsi/command-window.js';
import { RESERVED_TAG } from '../../head-agent/frontend/iscsi/constants.js';
import { DataBudget, WriteCollector } from '../../head-agent/frontend/iscsi/data-transfer.js';

describe('iSCSI command window', () => {
  it('delivers in CmdSN order, queues ahead of a gap, ignores outside the window and duplicates', () => {
    const w = new CommandWindow(10, 4);
    const order: number[] = [];
    expect(w.submit(12, () => order.push(12))).toBe('queued');
    expect(w.submit(11, () => order.push(11))).toBe('queued');
    expect(w.submit(14, () => order.push(14))).toBe('ignored'); // > MaxCmdSN 13
    expect(w.submit(12, () => order.push(99))).toBe('ignored'); // duplicate
    expect(w.submit(10, () => order.push(10))).toBe('delivered');
    expect(order).toEqual([10, 11, 12]);
    expect(w.expCmdSN).toBe(13);
    expect(w.submit(9, () => order.push(9))).toBe('ignored'); // already delivered
    expect(w.maxCmdSN).toBe(13);
    w.release();
    w.release();
    expect(w.maxCmdSN).toBe(15);
  });

  it('wraps around 2^32 in serial arithmetic', () => {
    expect(snLess(0xffffffff, 0)).toBe(true);
    expect(snLess(0, 0xffffffff)).toBe(false);
    const w = new CommandWindow(0xfffffffe, 8);
    const got: number[] = [];
    for (const sn of [0xfffffffe, 0xffffffff, 0, 1]) expect(w.submit(sn, () => got.push(sn))).toBe('delivered');
    expect(got).toEqual([0xfffffffe, 0xffffffff, 0, 1]);
    expect(w.expCmdSN).toBe(2);
    expect(w.inWindow(0xfffffffd)).toBe(false);
  });

  it('considers a lost CmdSN received (ABORT TASK case b) and moves past it', () => {
    const w = new CommandWindow(100, 8);
    const got: number[] = [];
    w.submit(101, () => got.push(101));
    expect(w.consume(100)).toBe(true);
    expect(got).toEqual([101]);
    expect(w.expCmdSN).toBe(102);
    expect(w.consume(50)).toBe(false);
  });
});

describe('iSCSI write collection', () => {
  const limits = { maxBurst: 4096, maxOutstandingR2T: 2 };
  let ttt = 1;
  const nextTtt = (): number => ttt++;

  it('takes immediate and unsolicited data, then solicits the rest in bursts', () => {
    const data = Buffer.from(Array.from({ length: 16384 }, (_, i) => i & 0xff));
    const c = new WriteCollector(16384, data.subarray(0, 1024), 8192, true, limits);
    expect(c.nextR2Ts(nextTtt)).toEqual([]); // unsolicited still open, no buffer yet
    c.attach();
    expect(c.nextR2Ts(nextTtt)).toEqual([]);
    expect(c.dataOut(RESERVED_TAG, 0, 1024, data.subarray(1024, 4096), false)).toBeUndefined();
    expect(c.dataOut(RESERVED_TAG, 1, 4096, data.subarray(4096, 8192), true)).toBeUndefined();
    const r2ts = c.nextR2Ts(nextTtt);
    expect(r2ts.map((r) => [r.r2tSN, r.offset, r.length])).toEqual([[0, 8192, 4096], [1, 12288, 4096]]);
    expect(c.nextR2Ts(nextTtt)).toEqual([]); // MaxOutstandingR2T
    expect(c.dataOut(r2ts[1]!.ttt, 0, 12288, data.subarray(12288), true)).toBeUndefined();
    expect(c.complete).toBe(false);
    expect(c.dataOut(r2ts[0]!.ttt, 0, 8192, data.subarray(8192, 12288), true)).toBeUndefined();
    expect(c.complete).toBe(true);
    expect(c.data.equals(data)).toBe(true);
  });

  it('stages unsolicited data that arrives before the buffer', () => {
    const data = Buffer.alloc(12288, 7);
    const c = new WriteCollector(12288, data.subarray(0, 2048), 8192, true, limits);
    expect(c.dataOut(RESERVED_TAG, 0, 2048, data.subarray(2048, 8192), true)).toBeUndefined();
    c.attach();
    const [r] = c.nextR2Ts(nextTtt);
    expect(r?.offset).toBe(8192);
    expect(c.dataOut(r!.ttt, 0, 8192, data.subarray(8192), true)).toBeUndefined();
    expect(c.data.equals(data)).toBe(true);
  });

  it('refuses Data-Out that breaks the sequence rules', () => {
    const mk = (): { c: WriteCollector; t: number } => {
      const c = new WriteCollector(8192, undefined, 0, false, limits);
      c.attach();
      return { c, t: c.nextR2Ts(nextTtt)[0]!.ttt };
    };
    let { c, t } = mk();
    expect(c.dataOut(RESERVED_TAG, 0, 0, Buffer.alloc(10), true)).toMatch(/unsolicited/);
    expect(c.dataOut(12345, 0, 0, Buffer.alloc(10), true)).toMatch(/unknown Target Transfer Tag/);
    expect(c.dataOut(t, 1, 0, Buffer.alloc(10), false)).toMatch(/DataSN/);
    expect(c.dataOut(t, 0, 512, Buffer.alloc(10), false)).toMatch(/offset/);
    expect(c.dataOut(t, 0, 0, Buffer.alloc(5000), true)).toMatch(/past the sequence end/);
    ({ c, t } = mk());
    expect(c.dataOut(t, 0, 0, Buffer.alloc(4096), false)).toMatch(/without the F bit/);
    ({ c, t } = mk());
    expect(c.dataOut(t, 0, 0, Buffer.alloc(1024), true)).toMatch(/F bit before the end/);
  });
});

describe('iSCSI in-place Data-Out assembly', () => {
  it('offers the exact spot in the command buffer, and the data then needs no copy', () => {
    const c = new WriteCollector(8192, undefined, 0, false, { maxBurst: 8192, maxOutstandingR2T: 1 });
    c.attach();
    const [r] = c.nextR2Ts(() => 42);
    // Header digest on: the view starts 4 bytes before the data.
    const first = c.placement(42, 0, 0, 4096, 4, 4)!;
    expect(first).toBeDefined();
    const payload = Buffer.alloc(4096, 0x11);
    payload.copy(first, 4);
    expect(c.dataOut(r!.ttt, 0, 0, first.subarray(4, 4100), false)).toBeUndefined();
    // Wrong DataSN or offset: no placement (the PDU will be refused anyway).
    expect(c.placement(42, 0, 4096, 4096, 4, 4)).toBeUndefined();
    expect(c.placement(42, 1, 0, 4096, 4, 4)).toBeUndefined();
    const second = c.placement(42, 1, 4096, 4096, 4, 4)!;
    const saved = second.readUInt32BE(0);
    Buffer.alloc(4096, 0x22).copy(second, 4);
    second.writeUInt32BE(0xdeadbeef, 0); // what the header digest does to the previous data
    second.writeUInt32BE(saved, 0); // ...and what the task set puts back
    expect(c.dataOut(42, 1, 4096, second.subarray(4, 4100), true)).toBeUndefined();
    expect(c.complete).toBe(true);
    expect(c.data.subarray(0, 4096).every((b) => b === 0x11)).toBe(true);
    expect(c.data.subarray(4096).every((b) => b === 0x22)).toBe(true);
  });

  it('refuses a spot whose pad and digest would land on another sequence\'s data', () => {
    const c = new WriteCollector(8192, undefined, 0, false, { maxBurst: 4096, maxOutstandingR2T: 2 });
    c.attach();
    let n = 100;
    const [a, b] = c.nextR2Ts(() => n++);
    expect(c.dataOut(b!.ttt, 0, 4096, Buffer.alloc(1000), false)).toBeUndefined();
    expect(c.placement(a!.ttt, 0, 0, 4096, 4, 0)).toBeUndefined();
    expect(c.placement(a!.ttt, 0, 0, 4096, 0, 0)).toBeDefined();
    expect(c.placement(a!.ttt, 0, 0, 2048, 4, 0)).toBeDefined();
    c.drain();
    expect(c.placement(a!.ttt, 0, 0, 2048, 0, 0)).toBeUndefined();
  });
});

describe('iSCSI data budget', () => {
  it('grants in FIFO order as bytes come back, and lets an oversized request through when idle', () => {
    const b = new DataBudget(100);
    const granted: string[] = [];
    expect(b.reserve(60, () => granted.push('a'))).toBe(true);
    expect(b.reserve(60, () => granted.push('b'))).toBe(false);
    expect(b.reserve(10, () => granted.push('c'))).toBe(false); // behind b: FIFO
    b.release(60);
    expect(granted).toEqual(['b', 'c']);
    const big = (): void => { granted.push('big'); };
    expect(b.reserve(500, big)).toBe(false);
    b.release(70);
    expect(granted.at(-1)).toBe('big');
    expect(b.inUse).toBe(500);
    const late = (): void => { granted.push('late'); };
    b.reserve(1, late);
    expect(b.cancel(late)).toBe(true);
    b.release(500);
    expect(granted).not.toContain('late');
    expect(b.inUse).toBe(0);
  });
});
