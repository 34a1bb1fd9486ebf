// One error hierarchy for the whole project. Every error has a stable string
// `code` (safe to match on in scripts and tests), a human message that names
// the fix where there is one, and optional structured context.

export type ErrorContext = Record<string, unknown>;

export class VskyError extends Error {
  readonly code: string;
  readonly context: ErrorContext;

  constructor(code: string, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.context = context;
  }
}

/** Bytes on a wire that do not parse: the peer is broken or hostile. */
export class ProtocolError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('EPROTO', message, context);
  }
}

/** A request that parses but asks for something invalid (bad range, bad argument). */
export class InvalidArgumentError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('EINVAL', message, context);
  }
}

export class NotFoundError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ENOTFOUND', message, context);
  }
}

export class AlreadyExistsError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('EEXIST', message, context);
  }
}

/** The request conflicts with current state (volume attached elsewhere, disk in use...). */
export class ConflictError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ECONFLICT', message, context);
  }
}

/** Not enough servers/disks/free chunks to satisfy a placement. */
export class CapacityError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ENOSPC', message, context);
  }
}

/** A mutating request carried a lease epoch lower than one the node has seen. */
export class StaleEpochError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ESTALE_EPOCH', message, context);
  }
}

/** A storage job expected a generation that is no longer current. */
export class StaleGenerationError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ESTALE_GENERATION', message, context);
  }
}

/**
 * A 64-bit counter (lease epoch, volume generation) would pass 2^53-1, the
 * largest value kept exactly in a JS number: refused, never wrapped
 * (shared/counters.ts).
 */
export class CounterExhaustedError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ECOUNTER_EXHAUSTED', message, context);
  }
}

/** A disk or replica failed an I/O. */
export class IoError extends VskyError {
  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super('EIO', message, context, options);
  }
}

/** The connection to a peer failed or closed with requests pending. */
export class TransportError extends VskyError {
  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super('ETRANSPORT', message, context, options);
  }
}

/**
 * A peer failed authentication (data protocol challenge-response, TLS) or
 * a key or certificate file is unusable. The message names the fix.
 */
export class AuthenticationError extends VskyError {
  constructor(message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super('EAUTH', message, context, options);
  }
}

export class TimeoutError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ETIMEDOUT', message, context);
  }
}

/** On-disk metadata failed its checksum or has an unknown format. */
export class CorruptMetadataError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('ECORRUPT', message, context);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The caller's certificate role may not call this method (shared/security/policy.ts), or it acted for another head. */
export class PermissionDeniedError extends VskyError {
  constructor(message: string, context: ErrorContext = {}) {
    super('EPERM', message, context);
  }
}
