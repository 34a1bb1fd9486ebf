// The two ways a command succeeds: GOOD with nothing to return, or GOOD with
// Data-In cut to the CDB's ALLOCATION LENGTH (SPC-4 4.2.5.6: the device
// server returns no more than that, and it is not an error to ask for less).

import { ScsiStatus, type ScsiResult } from './types.js';

export const GOOD: ScsiResult = Object.freeze({ status: ScsiStatus.GOOD });

export function truncate(data: Buffer, allocLength: number): ScsiResult {
  return { status: ScsiStatus.GOOD, dataIn: data.length > allocLength ? data.subarray(0, allocLength) : data };
}
