// The checks a transmission-phase request passes before it reaches the
// device (flags each command accepts, read-only exports, the size limits and
// the export's end), and the I/O counters an answered request is counted in.

import type { BlockDevice } from '../../engine/block-device.js';
import type { VolumeStats } from '../../engine/volume-stats.js';
import type { RequestHeader } from './codec.js';
import {
  MAX_BLOCK_SIZE, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE, NbdCmd, NbdError, commandName,
} from './constants.js';

/** Command flags each command accepts (spec: FUA is valid on every command; DF on READ once structured). */
export function allowedFlags(structured: boolean, blockStatus: boolean): Record<number, number> {
  const flags: Record<number, number> = {
    [NbdCmd.READ]: NBD_CMD_FLAG_FUA | (structured ? NBD_CMD_FLAG_DF : 0),
    [NbdCmd.WRITE]: NBD_CMD_FLAG_FUA,
    [NbdCmd.DISC]: NBD_CMD_FLAG_FUA,
    [NbdCmd.FLUSH]: NBD_CMD_FLAG_FUA,
    [NbdCmd.TRIM]: NBD_CMD_FLAG_FUA,
    [NbdCmd.WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
  };
  if (structured && blockStatus) flags[NbdCmd.BLOCK_STATUS] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
  return flags;
}

/** Why a request was refused before reaching the device. */
export interface Rejection {
  error: number;
  message: string;
}

/** Why a request must not reach the device, or undefined when it may. */
export function validateRequest(h: RequestHeader, flags: Record<number, number>, device: BlockDevice, exportSize: number): Rejection | undefined {
  const allowed = flags[h.type];
  // Unknown commands (CACHE, BLOCK_STATUS, ...) and flags: spec says EINVAL.
  if (allowed === undefined) return { error: NbdError.EINVAL, message: `command ${commandName(h.type)} is not supported` };
  if ((h.flags & ~allowed) !== 0) {
    return { error: NbdError.EINVAL, message: `flags 0x${h.flags.toString(16)} are not valid on ${commandName(h.type)}` };
  }
  if (h.type === NbdCmd.FLUSH) return undefined;
  if (device.readOnly === true && (h.type === NbdCmd.WRITE || h.type === NbdCmd.WRITE_ZEROES || h.type === NbdCmd.TRIM)) {
    return { error: NbdError.EPERM, message: `export ${device.name} is read-only (a snapshot: clone it to write)` };
  }
  if (h.type === NbdCmd.BLOCK_STATUS && h.length === 0) return { error: NbdError.EINVAL, message: 'NBD_CMD_BLOCK_STATUS of 0 bytes' };
  if (h.type === NbdCmd.READ && h.length > MAX_BLOCK_SIZE) {
    return { error: NbdError.EINVAL, message: `read of ${h.length} bytes exceeds the maximum block size of ${MAX_BLOCK_SIZE}` };
  }
  if (h.offset + h.length > exportSize) {
    // Spec: ENOSPC for a write past the end, EINVAL for a read or trim.
    const write = h.type === NbdCmd.WRITE || h.type === NbdCmd.WRITE_ZEROES;
    return {
      error: write ? NbdError.ENOSPC : NbdError.EINVAL,
      message: `${commandName(h.type)} of ${h.length} bytes at offset ${h.offset} goes past the end of the export (${exportSize} bytes)`,
    };
  }
  return undefined;
}

/** Counts one answered request in the volume's I/O counters (no allocation). */
export function countRequest(stats: VolumeStats, h: RequestHeader, error: number, seconds: number, cause: unknown): void {
  if (error !== NbdError.OK) {
    stats.failed(cause);
    return;
  }
  switch (h.type) {
    case NbdCmd.READ: stats.read(h.length, seconds); break;
    case NbdCmd.WRITE: stats.write(h.length, seconds); break;
    case NbdCmd.FLUSH: stats.flush(seconds); break;
    case NbdCmd.WRITE_ZEROES: stats.zero(h.length); break;
    case NbdCmd.TRIM: stats.discard(h.length); break;
    default: break;
  }
}
