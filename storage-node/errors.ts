import { Status } from '../shared/data-protocol/frame.js';
import {
  InvalidArgumentError, IoError, NotFoundError, ProtocolError, StaleEpochError, VskyError, type ErrorContext,
} from '../shared/errors.js';

// Storage-node refinements of the shared errors, and the ONE place that maps
// an error to a data-protocol reply status. Subclasses keep the shared stable
// codes (EINVAL, ENOTFOUND, EIO) so gRPC mapping and scripts still work.

/** offset + length reaches past the end of the chunk. */
export class OutOfRangeError extends InvalidArgumentError {}

/** A single request longer than the protocol allows. */
export class TooLargeError extends InvalidArgumentError {}

/** This node holds no chunk for (volume, segment, slot). */
export class NoChunkError extends NotFoundError {}

/** The disk holding the chunk is failed, closing or being removed. */
export class DiskFailedError extends IoError {
  constructor(message: string, context: ErrorContext = {}) {
    super(message, context);
  }
}

/** Maps any error raised while serving a request to its reply status. */
export function statusForError(err: unknown): Status {
  if (err instanceof StaleEpochError) return Status.STALE_EPOCH;
  if (err instanceof NoChunkError) return Status.NO_CHUNK;
  if (err instanceof OutOfRangeError) return Status.OUT_OF_RANGE;
  if (err instanceof TooLargeError) return Status.TOO_LARGE;
  if (err instanceof DiskFailedError) return Status.DISK_FAILED;
  if (err instanceof InvalidArgumentError || err instanceof ProtocolError) return Status.BAD_REQUEST;
  if (err instanceof NotFoundError) return Status.NO_CHUNK;
  if (err instanceof IoError) return Status.IO_ERROR;
  if (err instanceof VskyError) return Status.IO_ERROR;
  // Anything else is a bug or an errno from fs: report it as an I/O failure.
  return Status.IO_ERROR;
}

/** Wraps an errno error from fs into an IoError naming the disk. */
export function ioError(err: NodeJS.ErrnoException, what: string, context: ErrorContext): IoError {
  return new IoError(`${what}: ${err.code ?? ''} ${err.message}`.trim(), { ...context, errno: err.code }, { cause: err });
}
