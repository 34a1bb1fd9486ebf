import { describe, expect, it } from 'vitest';
import { Liveness } from '../../shared/data-protocol/client/liveness.js';

// The stall decisions of a data connection, fed times directly: no timers,
// no sockets. Times are performance.now()-like milliseconds.

const DATA = 400;
const FLUSH = 30_000;

/** A connection that opened at t=0 and sent its first request at `busyAt`. */
function busyAt(busyAt: number, data = DATA, flush = FLUSH): Liveness {
  const l = new Liveness(data, flush);
  l.heard(0);
  l.busy(busyAt);
  return l;
}

describe('Liveness', () => {
  it('probes a silent node after dataTimeout/4, then calls it stalled only once silent >= dataTimeout with the probe out >= dataTimeout/2', () => {
    const l = busyAt(1000);
    expect(l.check(1000)).toBe('wait');
    expect(l.check(1000 + DATA / 4 - 1)).toBe('wait');
    expect(l.check(1000 + DATA / 4)).toBe('probe');
    // The probe goes out late (at 0.75 of the data timeout).
    const probeAt = 1000 + 0.75 * DATA;
    l.probeSent(probeAt);
    expect(l.probing).toBe(true);
    expect(l.check(probeAt)).toBe('wait');
    // Silent for the whole data timeout, but the probe only out for a quarter of it.
    expect(l.check(1000 + DATA)).toBe('wait');
    expect(l.stalled(1000 + DATA)).toBe(false);
    // Half the data timeout after the probe: stalled.
    expect(l.check(probeAt + DATA / 2 - 1)).toBe('wait');
    expect(l.check(probeAt + DATA / 2)).toBe('stalled');
    expect(l.stalled(probeAt + DATA / 2)).toBe(true);
    expect(l.silentMs(probeAt + DATA / 2)).toBe(0.75 * DATA + DATA / 2);
    expect(l.probeWaitMs(probeAt + DATA / 2)).toBe(DATA / 2);
  });

  it('with the probe sent early, stalls at the data timeout itself', () => {
    const l = busyAt(0);
    l.probeSent(DATA / 4);
    expect(l.check(DATA - 1)).toBe('wait');
    expect(l.check(DATA)).toBe('stalled');
  });

  it('is never stalled without a probe in flight', () => {
    const l = busyAt(0);
    expect(l.stalled(10 * DATA)).toBe(false);
    expect(l.check(10 * DATA)).toBe('probe');
  });

  it('bytes received reset the silence, and an answered probe allows the next', () => {
    const l = busyAt(0);
    l.probeSent(DATA / 4);
    l.heard(DATA / 2); // the probe's reply (or any reply)
    l.requestDone(); // the probe answered
    expect(l.probing).toBe(false);
    expect(l.silentMs(DATA)).toBe(DATA / 2);
    expect(l.check(DATA)).toBe('probe'); // silent a quarter of the timeout again: probe again
    l.probeSent(DATA);
    l.heard(DATA + 10); // a reply to a regular request, the probe still out
    expect(l.check(DATA / 2 + DATA + 9)).toBe('wait'); // not yet silent for dataTimeout since the bytes
    expect(l.check(DATA + 10 + DATA)).toBe('stalled');
  });

  it('counts a busy period from its first send, not from the last bytes of an earlier one', () => {
    const l = new Liveness(DATA, FLUSH);
    l.heard(0); // connected, then idle for a long time
    l.busy(10_000);
    expect(l.silentMs(10_000)).toBe(0);
    expect(l.check(10_000 + DATA / 4 - 1)).toBe('wait');
    expect(l.check(10_000 + DATA / 4)).toBe('probe');
    // Bytes heard after the busy period began count from then.
    l.heard(10_050);
    expect(l.silentMs(10_100)).toBe(50);
  });

  it('sets the tick period from the shorter timeout, and the per-request limit one tick above the flush timeout', () => {
    const l = new Liveness(2_000, 30_000);
    expect(l.tickMs).toBe(250); // 8 ticks per data timeout
    expect(l.requestLimitTicks).toBe(121); // 30 s in 250 ms ticks, plus the tick it was sent in
    const short = new Liveness(2_000, 200);
    expect(short.tickMs).toBe(25);
    expect(short.requestLimitTicks).toBe(9);
    expect(new Liveness(10, 10).tickMs).toBe(5); // never below 5 ms
  });

  it('fails one request unanswered for the per-request limit in ticks', () => {
    const l = new Liveness(2_000, 200); // 25 ms ticks, limit 9 ticks
    for (let i = 0; i < 3; i++) l.nextTick();
    const sentTick = l.tick;
    expect(sentTick).toBe(3);
    for (let i = 0; i < 8; i++) l.nextTick();
    expect(l.overdue(sentTick)).toBe(false);
    l.nextTick();
    expect(l.overdue(sentTick)).toBe(true);
    expect(l.overdue(l.tick)).toBe(false); // a request sent just now
  });
});
