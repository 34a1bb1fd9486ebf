import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';

// Request ids: one id follows a gRPC call across daemons. The CLI sends one
// with every call (metadata "x-request-id", --request-id or generated); a
// daemon's handler runs inside an async context holding the id it received
// (or a new one), every log line written in that context carries it
// (shared/logger.ts mixin), and every gRPC call the handler makes to another
// daemon forwards it (shared/grpc.ts call()).

export const REQUEST_ID_KEY = 'x-request-id';

/** Printable, no blanks, bounded: an id from the wire is logged as is, so anything else is replaced. */
const VALID_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

interface RequestContext { requestId: string }

const storage = new AsyncLocalStorage<RequestContext>();
let processDefault: string | undefined;

/** A fresh id: 16 hex digits, unique enough to grep logs for. */
export function newRequestId(): string {
  return randomBytes(8).toString('hex');
}

export function isValidRequestId(id: string): boolean {
  return VALID_ID.test(id);
}

/** The id of the call being served, else the process default (the CLI's), else undefined. */
export function currentRequestId(): string | undefined {
  return storage.getStore()?.requestId ?? processDefault;
}

/**
 * Calls being served. While none is, the storage is disabled: an enabled
 * AsyncLocalStorage keeps Node's promise hooks on, a JavaScript callback for
 * every promise the process creates (2-3% of a head's CPU on the data path,
 * which never runs inside a call; docs/benchmarks.md, issue 12 sixth pass).
 * The next run() enables it again. Work a call started and left running after
 * it returned logs without its id once no call is being served.
 */
let serving = 0;
const KEEP_ENABLED = process.env.VSKY_REQUEST_CONTEXT === 'always';

function callEnded(): void {
  if (--serving === 0 && !KEEP_ENABLED) storage.disable();
}

/** Runs `fn` (and everything it starts) as part of request `id`. */
export function runWithRequestId<T>(id: string, fn: () => T): T {
  serving++;
  let result: T;
  try {
    result = storage.run({ requestId: id }, fn);
  } catch (err) {
    callEnded();
    throw err;
  }
  if (result instanceof Promise) {
    result.then(callEnded, callEnded);
  } else {
    callEnded();
  }
  return result;
}

/** The id a server uses for an incoming call: the caller's when it is a valid id, else a new one. */
export function acceptRequestId(received: unknown): string {
  return typeof received === 'string' && isValidRequestId(received) ? received : newRequestId();
}

/** The CLI: every call this process makes carries `id`. */
export function setProcessRequestId(id: string): void {
  processDefault = id;
}
