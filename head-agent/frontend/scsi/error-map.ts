// The one map from project errors (shared/errors.ts codes), rejected by the
// BlockDevice under a command, to the sense data the initiator gets.

import { VskyError } from '../../../shared/errors.js';
import { Asc, SenseKey, type SenseInfo } from './sense.js';

/** Which direction the failed device call went: a read reports UNRECOVERED READ ERROR, a write WRITE ERROR. */
export type IoDirection = 'read' | 'write';

export function senseForDeviceError(err: unknown, dir: IoDirection, lba?: number): SenseInfo {
  const code = err instanceof VskyError ? err.code : undefined;
  switch (code) {
    case 'EINVAL':
      // The device refused the range: our bounds check and its size disagree.
      return { key: SenseKey.ILLEGAL_REQUEST, code: Asc.LBA_OUT_OF_RANGE };
    case 'ESTALE_EPOCH':
      // This head lost the volume's lease: a newer holder fenced it off. Not a
      // medium defect (MEDIUM ERROR would send guests into bad-block handling)
      // and not a property of the disk (DATA PROTECT makes guests remount
      // read-only for good): NOT READY, MANUAL INTERVENTION REQUIRED says the
      // unit cannot serve here until management acts (moves the VM to the new
      // holder). Initiators do not retry it; QEMU with werror=stop pauses the VM.
      return { key: SenseKey.NOT_READY, code: Asc.NOT_READY_MANUAL_INTERVENTION };
    case 'ENOSPC':
      // A thin volume's first write to a segment found no room in the pool (or
      // no manager within --segment-allocate-timeout): SBC-3's thin
      // provisioning answer, which initiators and QEMU (werror=enospc) map to ENOSPC.
      return { key: SenseKey.DATA_PROTECT, code: Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT };
    case 'EROFS':
      // A storage node refused a write to a snapshot's chunk (READ_ONLY): write protected.
      return { key: SenseKey.DATA_PROTECT, code: Asc.WRITE_PROTECTED };
    case 'EIO':
    case 'ETRANSPORT':
    case 'ETIMEDOUT':
      // No replica could serve the request.
      return dir === 'read'
        ? { key: SenseKey.MEDIUM_ERROR, code: Asc.UNRECOVERED_READ_ERROR, information: lba }
        : { key: SenseKey.MEDIUM_ERROR, code: Asc.WRITE_ERROR, information: lba };
    default:
      // A bug or an unexpected failure below us.
      return { key: SenseKey.HARDWARE_ERROR, code: Asc.INTERNAL_TARGET_FAILURE };
  }
}
