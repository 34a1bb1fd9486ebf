import { describe, expect, it } from 'vitest';
import { NbdError } from '../../head-agent/frontend/nbd/constants.js';
import { nbdErrorFor } from '../../head-agent/frontend/nbd/error-map.js';
import { senseForDeviceError } from '../../head-agent/frontend/scsi/error-map.js';
import { Asc, SenseKey } from '../../head-agent/frontend/scsi/sense.js';
import { Opcode, Status, statusName } from '../../shared/data-protocol/frame.js';
import { ReadOnlyChunkError, errorForStatus, statusForError } from '../../shared/data-protocol/status.js';
import { InvalidArgumentError, IoError } from '../../shared/errors.js';

// The READ_ONLY status (a snapshot's chunk refuses writes, docs/snapshots.md):
// the node replies with it for ReadOnlyChunkError, the client turns it back
// into one (code EROFS), and the head answers EPERM (NBD) or DATA PROTECT /
// WRITE PROTECTED (SCSI), never a generic I/O error.

describe('READ_ONLY status', () => {
  it('round-trips between the error and the status, and is named', () => {
    expect(Status.READ_ONLY).toBe(8);
    expect(statusName(Status.READ_ONLY)).toBe('READ_ONLY');
    expect(statusForError(new ReadOnlyChunkError('x'))).toBe(Status.READ_ONLY);
    const err = errorForStatus(Opcode.WRITE, Status.READ_ONLY, 'volume 3 segment 0 slot 1 is a snapshot\'s chunk', 'chunk 3/0/1', {});
    expect(err).toBeInstanceOf(ReadOnlyChunkError);
    expect(err.code).toBe('EROFS');
    expect(err.message).toMatch(/WRITE on chunk 3\/0\/1 failed with READ_ONLY/);
    // Not confused with the neighbours.
    expect(statusForError(new InvalidArgumentError('x'))).toBe(Status.BAD_REQUEST);
    expect(errorForStatus(Opcode.WRITE, Status.DISK_FAILED, '', 'c', {})).not.toBeInstanceOf(ReadOnlyChunkError);
  });

  it('maps to EPERM on NBD and to DATA PROTECT / WRITE PROTECTED on SCSI', () => {
    expect(nbdErrorFor(new ReadOnlyChunkError('x'))).toBe(NbdError.EPERM);
    expect(senseForDeviceError(new ReadOnlyChunkError('x'), 'write')).toEqual({ key: SenseKey.DATA_PROTECT, code: Asc.WRITE_PROTECTED });
    expect(nbdErrorFor(new IoError('x'))).toBe(NbdError.EIO);
  });
});
