import { VskyError, errorMessage } from '../../shared/errors.js';

// VastSky's faults: every error is Fault(code, string) with a Linux errno as
// the code (clients print os.strerror(code)), 500 for an internal error and 1
// for what Python's SimpleXMLRPCServer itself refuses (unknown method, no
// struct, a request that does not parse). VastSky's faultString is the errno
// symbol alone ('EINVAL'); ours starts with it and goes on with what is wrong
// and how to fix it ('EINVAL: capacity must be an int ...').

export const ERRNO = {
  EPERM: 1, ENOENT: 2, EIO: 5, EAGAIN: 11, EACCES: 13, EBUSY: 16, EEXIST: 17, EINVAL: 22, ENOSPC: 28,
  EPROTO: 71, EOPNOTSUPP: 95, ETIMEDOUT: 110, EHOSTDOWN: 112, ESTALE: 116,
} as const;

export type ErrnoName = keyof typeof ERRNO;

/** VastSky's internal-error code (Fault(500, 'Internal Server Error')). */
export const INTERNAL = 500;
/** What SimpleXMLRPCServer answers for an uncaught exception or an unknown method. */
export const GENERIC = 1;

/** An XML-RPC fault to send back as is. */
export class XmlRpcFaultError extends Error {
  constructor(readonly faultCode: number, readonly faultString: string) {
    super(faultString);
    this.name = 'XmlRpcFaultError';
  }
}

/** Fault(errno, 'SYMBOL: why'). */
export function errnoFault(name: ErrnoName, why?: string): XmlRpcFaultError {
  return new XmlRpcFaultError(ERRNO[name], why ? `${name}: ${why}` : name);
}

export function internalFault(why: string): XmlRpcFaultError {
  return new XmlRpcFaultError(INTERNAL, `Internal Server Error: ${why}`);
}

/** Fault 1 as Python 2's SimpleXMLRPCServer words an uncaught exception: "<type 'exceptions.X'>:message". */
export function pythonFault(exception: string, message: string): XmlRpcFaultError {
  return new XmlRpcFaultError(GENERIC, `<type 'exceptions.${exception}'>:${message}`);
}

export function unsupportedMethodFault(method: string): XmlRpcFaultError {
  return pythonFault('Exception', `method "${method}" is not supported`);
}

/** Our typed errors (shared/errors.ts) -> errno, for the calls that have no more specific rule. */
const CODE_TO_ERRNO: Record<string, ErrnoName> = {
  EINVAL: 'EINVAL', EPROTO: 'EINVAL', ENOTFOUND: 'ENOENT', EEXIST: 'EEXIST', ECONFLICT: 'EBUSY', ENOSPC: 'ENOSPC',
  ECOUNTER_EXHAUSTED: 'ENOSPC', ESTALE_EPOCH: 'ESTALE', ESTALE_GENERATION: 'ESTALE', ETIMEDOUT: 'ETIMEDOUT', EIO: 'EIO',
};

/** Any error -> the fault to answer with: faults as they are, typed errors by errno, anything else 500. */
export function toFault(err: unknown): XmlRpcFaultError {
  if (err instanceof XmlRpcFaultError) return err;
  if (err instanceof VskyError) {
    const name = CODE_TO_ERRNO[err.code];
    return name ? errnoFault(name, err.message) : internalFault(err.message);
  }
  return internalFault(errorMessage(err));
}

/**
 * Runs fn and turns the listed typed error codes into the given errno faults
 * (VastSky's per-method rules, e.g. any failure inside allocation is ENOSPC).
 */
export async function mapErrors<T>(fn: () => Promise<T>, rules: Partial<Record<string, ErrnoName>>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof VskyError && rules[err.code]) throw errnoFault(rules[err.code]!, err.message);
    if (!(err instanceof XmlRpcFaultError) && rules['*']) throw errnoFault(rules['*'], errorMessage(err));
    throw err;
  }
}
