import { CounterExhaustedError, InvalidArgumentError } from './errors.js';

// Lease epochs and volume generations: counters that only ever go up and
// never wrap (a wrapped epoch would let a fenced-off holder write again).
// They are 64-bit fields on the data-protocol wire, on disk (chunk records)
// and in gRPC (uint64), and JS numbers in memory, so their range is
// 0..2^53-1 (Number.MAX_SAFE_INTEGER): a value above it on a wire or a disk
// is refused as invalid, never truncated, and bumping past it is refused.
// At one bump per millisecond that is 285,000 years.

/** Largest value of an epoch or a generation: 2^53-1. */
export const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

/** True for a valid epoch or generation: an integer in 0..2^53-1. */
export function isCounter(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

/**
 * `value + 1`, for bumping an epoch or a generation. Throws
 * CounterExhaustedError instead of passing 2^53-1 (never wraps, never loses
 * precision), and InvalidArgumentError when `value` is not a counter at all
 * (negative, fractional, NaN, beyond 2^53-1). `what` names the counter in the
 * message, e.g. "volume vm1's lease epoch".
 */
export function nextCounter(value: number, what: string): number {
  if (!isCounter(value)) {
    throw new InvalidArgumentError(`${what} is ${value}, not a counter in 0..2^53-1`, { what, value });
  }
  if (value >= MAX_COUNTER) {
    throw new CounterExhaustedError(`${what} is at its maximum ${MAX_COUNTER} (2^53-1): it cannot be raised again`, { what, value });
  }
  return value + 1;
}
