import { describe, expect, it } from 'vitest';
import { MAX_COUNTER, isCounter, nextCounter } from '../../shared/counters.js';
import { CounterExhaustedError, InvalidArgumentError, VskyError } from '../../shared/errors.js';
import { fromGrpcError, grpc, toGrpcError } from '../../shared/grpc.js';

describe('epoch and generation counters', () => {
  it('count up past 2^32 without wrapping', () => {
    expect(nextCounter(0, 'epoch')).toBe(1);
    expect(nextCounter(0xffff_ffff, 'epoch')).toBe(2 ** 32);
    expect(nextCounter(2 ** 32, 'generation')).toBe(2 ** 32 + 1);
    expect(nextCounter(MAX_COUNTER - 1, 'epoch')).toBe(MAX_COUNTER);
    expect(MAX_COUNTER).toBe(2 ** 53 - 1);
  });

  it('refuse to pass 2^53-1 (never wrap, never lose precision), naming the counter', () => {
    expect(() => nextCounter(Number.MAX_SAFE_INTEGER, "volume vm1's lease epoch")).toThrow(CounterExhaustedError);
    expect(() => nextCounter(Number.MAX_SAFE_INTEGER, "volume vm1's lease epoch")).toThrow(/volume vm1's lease epoch is at its maximum/);
    const err = (() => {
      try {
        nextCounter(MAX_COUNTER, 'generation');
      } catch (e) {
        return e as VskyError;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(VskyError);
    expect(err!.code).toBe('ECOUNTER_EXHAUSTED');
  });

  it('refuse values that are not counters', () => {
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, 2 ** 64]) {
      expect(() => nextCounter(bad, 'epoch'), String(bad)).toThrow(InvalidArgumentError);
      expect(isCounter(bad)).toBe(false);
    }
    for (const good of [0, 1, 2 ** 32, MAX_COUNTER]) expect(isCounter(good)).toBe(true);
    expect(isCounter('1')).toBe(false);
  });

  it('keep their type across gRPC', () => {
    const status = toGrpcError(new CounterExhaustedError('epoch is at its maximum'));
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const back = fromGrpcError(Object.assign(new Error('x'), {
      code: status.code!, details: status.details!, metadata: status.metadata!,
    }) as grpc.ServiceError);
    expect(back).toBeInstanceOf(CounterExhaustedError);
    expect(back.message).toBe('epoch is at its maximum');
  });
});
