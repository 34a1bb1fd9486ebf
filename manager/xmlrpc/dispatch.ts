import { errorMessage } from '../../shared/errors.js';
import { moduleLogger } from '../../shared/logger.js';
import { decodeCall, encodeFault, encodeResponse, type XValue } from './codec.js';
import type { Method, XmlRpcContext } from './context.js';
import { internalFault, pythonFault, toFault, unsupportedMethodFault, XmlRpcFaultError } from './faults.js';
import { eventMethods } from './methods-events.js';
import { notifyMethods } from './methods-notify.js';
import { jobMethods } from './methods-jobs.js';
import { ourMethods } from './methods-ours.js';
import { serverMethods } from './methods-servers.js';
import { volumeMethods } from './methods-volumes.js';
import { callStruct } from './params.js';

// One XML-RPC request body -> one response body, as VastSky's
// StorageManager._dispatch: the method is looked up first (unknown: Fault 1),
// then the call must carry exactly one struct with ver = 5 (Fault 71), then
// the method runs. Introspection (system.*) needs no ver, as in
// SimpleXMLRPCServer. Nothing here throws: every failure is a fault.

const log = moduleLogger('manager.xmlrpc');

export const METHODS: Readonly<Record<string, Method>> = {
  ...volumeMethods, ...serverMethods, ...notifyMethods, ...eventMethods, ...ourMethods, ...jobMethods,
};

const INTROSPECTION: Record<string, (params: XValue[]) => XValue> = {
  'system.listMethods': () => [...Object.keys(METHODS), ...Object.keys(INTROSPECTION)].sort(),
  'system.methodHelp': () => 'see docs/xmlrpc.md',
  'system.methodSignature': () => 'signatures not supported',
};

/** Runs one decoded call; resolves with its value or rejects with an XmlRpcFaultError. */
export async function invoke(ctx: XmlRpcContext, method: string, params: XValue[]): Promise<XValue> {
  const intro = Object.prototype.hasOwnProperty.call(INTROSPECTION, method) ? INTROSPECTION[method] : undefined;
  if (intro) return intro(params);
  const fn = Object.prototype.hasOwnProperty.call(METHODS, method) ? METHODS[method] : undefined;
  if (!fn) throw unsupportedMethodFault(method);
  const data = callStruct(params);
  await ctx.ids.sync();
  return fn(ctx, data);
}

/** A request body -> a response body (a fault for anything that goes wrong). */
export async function handleBody(ctx: XmlRpcContext, body: string): Promise<string> {
  let method = '';
  const started = performance.now();
  let ok = false;
  try {
    let call;
    try {
      call = await decodeCall(body);
    } catch (err) {
      throw pythonFault('ExpatError', `not an XML-RPC methodCall: ${errorMessage(err).split('\n')[0]}`);
    }
    method = call.method;
    const value = await invoke(ctx, method, call.params);
    log.debug({ method, ms: Math.round(performance.now() - started) }, 'xml-rpc call');
    const response = encodeResponse(value);
    ok = true;
    return response;
  } catch (err) {
    const fault = toFault(err);
    if (!(err instanceof XmlRpcFaultError)) log.warn({ method, err: errorMessage(err) }, `xml-rpc ${method || 'call'} failed`);
    return safeFault(fault);
  } finally {
    ctx.onCall?.(method, (performance.now() - started) / 1000, ok);
  }
}

/** Every method name the API answers (VastSky's, ours, and introspection). */
export function xmlRpcMethodNames(): string[] {
  return [...Object.keys(METHODS), ...Object.keys(INTROSPECTION)].sort();
}

function safeFault(f: XmlRpcFaultError): string {
  try {
    return encodeFault(f.faultCode, f.faultString);
  } catch (err) {
    const fallback = internalFault(`could not encode the fault: ${errorMessage(err)}`);
    return encodeFault(fallback.faultCode, 'Internal Server Error');
  }
}

/** A fault body for the transport (timeouts). */
export function faultBody(f: XmlRpcFaultError): string {
  return safeFault(f);
}
