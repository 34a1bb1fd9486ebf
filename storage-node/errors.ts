import { IoError, type ErrorContext } from '../shared/errors.js';

// Storage-node errors that are not data-protocol statuses (those live in
// shared/data-protocol/status.ts, with both status maps).

/** Wraps an errno error from fs into an IoError naming the disk. */
export function ioError(err: NodeJS.ErrnoException, what: string, context: ErrorContext): IoError {
  return new IoError(`${what}: ${err.code ?? ''} ${err.message}`.trim(), { ...context, errno: err.code }, { cause: err });
}
