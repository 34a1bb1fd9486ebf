// The one map from project errors (shared/errors.ts codes) to NBD error
// values in replies (doc/proto.md "Error values"). Clients turn these into
// errno values; QEMU applies its werror/rerror policy to them.

import { VskyError } from '../../../shared/errors.js';
import { NbdError } from './constants.js';

export function nbdErrorFor(err: unknown): number {
  if (!(err instanceof VskyError)) return NbdError.EIO;
  switch (err.code) {
    case 'EINVAL':
      return NbdError.EINVAL;
    case 'ENOSPC':
      return NbdError.ENOSPC;
    case 'EROFS':
      // A storage node refused a write to a snapshot's chunk (READ_ONLY).
      return NbdError.EPERM;
    case 'ESTALE_EPOCH':
      // This head lost the volume's lease: a newer holder fenced it. EIO, not
      // ESHUTDOWN: ESHUTDOWN obliges the client to disconnect at once, while
      // EIO lets QEMU pause the VM (werror=stop) so management can move it to
      // the new lease holder without the guest seeing its disk vanish.
      // ESHUTDOWN stays reserved for this server shutting down.
      return NbdError.EIO;
    case 'EIO':
    case 'ETRANSPORT':
    case 'ETIMEDOUT':
    default:
      return NbdError.EIO;
  }
}
