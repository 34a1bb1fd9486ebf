import { describe, expect, it } from 'vitest';
import { TaskSignal } from '../../head-agent/frontend/iscsi/task.js';
import { RangeLock } from '../../head-agent/frontend/scsi/range-lock.js';

describe('TaskSignal (the per-task abort signal of the iSCSI task set)', () => {
  it('runs each listener once, in order, at abort; removed listeners and late ones never run', () => {
    const s = new TaskSignal();
    const calls: string[] = [];
    const a = (): void => { calls.push('a'); };
    const b = (): void => { calls.push('b'); };
    const c = (): void => { calls.push('c'); };
    s.addEventListener('abort', a);
    s.addEventListener('abort', b);
    s.addEventListener('abort', c);
    s.removeEventListener('abort', b);
    expect(s.aborted).toBe(false);
    s.abort();
    s.abort();
    expect(s.aborted).toBe(true);
    expect(calls).toEqual(['a', 'c']);
    s.addEventListener('abort', b);
    s.abort();
    expect(calls).toEqual(['a', 'c']);
  });

  it('ends a range-lock wait like an AbortSignal does', async () => {
    const lock = new RangeLock();
    const first = await lock.acquire(0, 8);
    const s = new TaskSignal();
    const waiting = lock.acquire(4, 8, s);
    s.abort();
    expect(await waiting).toBeUndefined();
    first!();
    const again = await lock.acquire(4, 8, new TaskSignal());
    expect(again).toBeTypeOf('function');
  });
});

describe('RangeLock.tryAcquire (the uncontended write path, no promise)', () => {
  it('locks at once when nothing overlaps, refuses (queuing nothing) when something does, and keeps FIFO order', async () => {
    const lock = new RangeLock();
    const a = lock.tryAcquire(0, 8);
    expect(a).toBeTypeOf('function');
    expect(lock.tryAcquire(4, 8)).toBeUndefined();
    expect(lock.size).toBe(1);
    const b = lock.tryAcquire(8, 8); // disjoint
    expect(b).toBeTypeOf('function');
    // A waiter (behind a and b) holds its range: a later overlapping tryAcquire is refused.
    const waiting = lock.acquire(6, 4);
    expect(lock.tryAcquire(9, 1)).toBeUndefined();
    a!();
    b!();
    const w = await waiting;
    expect(lock.tryAcquire(6, 1)).toBeUndefined();
    expect(lock.tryAcquire(0, 6)).toBeTypeOf('function');
    w!();
    expect(lock.size).toBe(1);
    expect(lock.tryAcquire(0, 0)).toBeTypeOf('function');
  });
});
