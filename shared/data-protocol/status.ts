import {
  InvalidArgumentError, IoError, NotFoundError, ProtocolError, StaleEpochError, VskyError, type ErrorContext,
} from '../errors.js';
import { Status, opcodeName, statusName } from './frame.js';

// The ONE place where data-protocol reply statuses meet typed errors, both
// ways: the server maps what went wrong while serving a request to the
// status it replies with (statusForError), and the client maps a non-OK
// reply back to a typed error (errorForStatus). The error classes are the
// data protocol's refinements of the shared errors; they keep the shared
// stable codes (EINVAL, ENOTFOUND, EIO) so gRPC mapping and scripts still work.

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

/**
 * The chunk is a snapshot's: never written again (docs/snapshots.md). Code
 * EROFS: the head answers EPERM (NBD) or DATA PROTECT / WRITE PROTECTED (SCSI).
 */
export class ReadOnlyChunkError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('EROFS', message, context);
  }
}

/**
 * A FORWARD_WRITE whose route generation is below one the chunk took under
 * the same epoch: a late forward from a primary the head gave up on.
 */
export class StaleRouteError extends IoError {
  constructor(message: string, context: ErrorContext = {}) {
    super(message, context);
  }
}

/** Server side: the reply status for any error raised while serving a request. */
export function statusForError(err: unknown): Status {
  if (err instanceof StaleEpochError) return Status.STALE_EPOCH;
  if (err instanceof NoChunkError) return Status.NO_CHUNK;
  if (err instanceof OutOfRangeError) return Status.OUT_OF_RANGE;
  if (err instanceof TooLargeError) return Status.TOO_LARGE;
  if (err instanceof DiskFailedError) return Status.DISK_FAILED;
  if (err instanceof StaleRouteError) return Status.STALE_ROUTE;
  if (err instanceof ReadOnlyChunkError) return Status.READ_ONLY;
  if (err instanceof InvalidArgumentError || err instanceof ProtocolError) return Status.BAD_REQUEST;
  if (err instanceof NotFoundError) return Status.NO_CHUNK;
  if (err instanceof IoError) return Status.IO_ERROR;
  if (err instanceof VskyError) return Status.IO_ERROR;
  // Anything else is a bug or an errno from fs: report it as an I/O failure.
  return Status.IO_ERROR;
}

/** Client side: the typed error for a non-OK reply; `what` names the request and its chunk. */
export function errorForStatus(opcode: number, status: number, message: string, what: string, context: Record<string, unknown>): VskyError {
  const text = `${opcodeName(opcode)} on ${what} failed with ${statusName(status)}${message ? `: ${message}` : ''}`;
  const ctx = { ...context, op: opcodeName(opcode), status: statusName(status) };
  switch (status) {
    case Status.STALE_EPOCH:
      return new StaleEpochError(`${text} (a newer lease holder has fenced this writer off)`, ctx);
    case Status.OUT_OF_RANGE:
    case Status.BAD_REQUEST:
    case Status.TOO_LARGE:
      return new InvalidArgumentError(text, ctx);
    case Status.READ_ONLY:
      return new ReadOnlyChunkError(`${text} (the chunk is a snapshot's: read-only)`, ctx);
    case Status.DISK_FAILED:
      return new DiskFailedError(text, ctx);
    case Status.STALE_ROUTE:
      return new StaleRouteError(text, ctx);
    default:
      return new IoError(text, ctx);
  }
}
