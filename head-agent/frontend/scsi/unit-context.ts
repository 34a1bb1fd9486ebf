// What every command handler of one logical unit shares: the device, its
// geometry, the limits we advertise (VPD page B0h) and enforce, and the
// unit's state (range lock, mode parameters, reservations).

import type { BlockDevice } from '../../engine/block-device.js';
import type { Logger } from '../../../shared/logger.js';
import { MAX_DATA_PAYLOAD } from '../../../shared/constants.js';
import type { PersistentReservations } from './persistent-reservations.js';
import type { RangeLock } from './range-lock.js';
import type { ModeState } from './mode-pages.js';
import type { UnitAttentions } from './unit-attention.js';

/** The limits of VPD page B0h; every one is also enforced by the handlers. */
export const Limits = {
  /** MAXIMUM TRANSFER LENGTH in bytes: one BlockDevice call (32 MiB). */
  maxTransferBytes: MAX_DATA_PAYLOAD,
  /** MAXIMUM COMPARE AND WRITE LENGTH in blocks (the CDB field is one byte). */
  maxCompareAndWriteBlocks: 255,
  /** OPTIMAL TRANSFER LENGTH in bytes. */
  optimalTransferBytes: 1024 * 1024,
  /** MAXIMUM UNMAP LBA COUNT in bytes (512 MiB at 512-byte blocks). */
  maxUnmapBytes: 512 * 1024 * 1024,
  /** MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT. */
  maxUnmapDescriptors: 256,
  /** MAXIMUM WRITE SAME LENGTH in bytes. */
  maxWriteSameBytes: 512 * 1024 * 1024,
  /** Largest single device call; longer ranges are split. */
  maxDeviceCall: MAX_DATA_PAYLOAD,
  /** Pattern buffer for WRITE SAME with a non-zero block (bounds memory per command). */
  writeSameChunkBytes: 1024 * 1024,
} as const;

/** Physical block = 2^LBPPBE logical blocks; 4096-byte physical blocks. */
export const PHYSICAL_BLOCK_BYTES = 4096;

export interface UnitIdentity {
  volumeId: number;
  volumeName: string;
  /** Unit serial number (VPD 80h), ASCII. */
  serial: string;
  /** The 16-byte NAA IEEE Registered Extended designator (VPD 83h). */
  naa: Buffer;
  relativeTargetPort: number;
}

export interface UnitContext {
  readonly device: BlockDevice;
  readonly blockSize: number;
  /** Addressable blocks; grows with the device (online resize: block-unit.ts reports it as a unit attention). */
  numBlocks: number;
  /** LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT. */
  readonly lbppbe: number;
  readonly identity: UnitIdentity;
  readonly lock: RangeLock;
  readonly mode: ModeState;
  readonly pr: PersistentReservations;
  readonly ua: UnitAttentions;
  /** The I_T nexus holding an SPC-2 RESERVE(6) reservation, if any. */
  legacyHolder: string | undefined;
  readonly log: Logger;
}
