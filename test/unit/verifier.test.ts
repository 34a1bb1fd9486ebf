import { describe, expect, it } from 'vitest';
import { VerifyingWriter } from '../harness/verifier.js';

// The chaos tests are only as good as the verifier's judgement: each kind of
// bad read must be caught.

describe('VerifyingWriter.judge', () => {
  const w = new VerifyingWriter({ uri: 'nbd://127.0.0.1:1/x', blocks: 8 });
  const issued = (w as unknown as { issued: Float64Array }).issued;
  const block = (b: number, seq: number): Buffer => {
    issued[b] = Math.max(issued[b]!, seq);
    return w.fillFor(b, seq, Buffer.alloc(4096));
  };

  it('accepts zeros only where nothing was acknowledged', () => {
    expect(w.judge(1, Buffer.alloc(4096), 0)).toBeUndefined();
    expect(w.judge(1, Buffer.alloc(4096), 5)).toMatch(/lost write/);
  });

  it('rejects garbage, torn blocks, blocks of other addresses, and seqs older than acknowledged', () => {
    const good = block(2, 7);
    expect(w.judge(2, good, 7)).toBeUndefined();
    expect(w.judge(2, good, 8)).toMatch(/older than acknowledged/);
    expect(w.judge(3, good, 0)).toMatch(/garbage/);
    const torn = Buffer.from(good);
    torn[3000] ^= 0xff;
    expect(w.judge(2, torn, 7)).toMatch(/torn/);
    expect(w.judge(2, Buffer.alloc(4096, 0x5a), 0)).toMatch(/garbage/);
  });

  it('rejects a seq never issued for the block', () => {
    const b = block(4, 3);
    issued[4] = 2;
    expect(w.judge(4, b, 0)).toMatch(/never written/);
  });
});
