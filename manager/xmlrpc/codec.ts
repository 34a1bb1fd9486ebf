import { Deserializer, XmlRpcFault, serializeFault, serializeMethodResponse, type XmlRpcValue } from '@foxglove/xmlrpc';

// XML-RPC bodies <-> values, through @foxglove/xmlrpc (sax underneath). The
// library's deserializer is tightened the way Python's xmlrpclib reads (what
// VastSky's server ran on), because the API's rules depend on the wire type:
//  - <int>/<i4>/<i8> must be a whole number (the library's parseInt would
//    take "12abc"); a value past 2^53 is refused;
//  - <double> stays distinguishable from <int> (XmlRpcDouble): VastSky
//    refuses a double where it checks for IntType;
//  - a struct is an object without a prototype, so a member named
//    "__proto__" or "constructor" is just a member.

/** A <double> value: not an int, even when whole. */
export class XmlRpcDouble {
  constructor(readonly value: number) {}
}

export type XValue =
  | undefined | boolean | number | string | Date | Uint8Array | XmlRpcDouble | XValue[] | XStruct;
export interface XStruct { [member: string]: XValue }

export interface DecodedCall {
  method: string;
  params: XValue[];
}

/** The library's deserializer internals we replace (instance properties set in its constructor). */
interface DeserializerInternals {
  _stack: unknown[];
  _marks: number[];
  _value: boolean;
  _push(v: unknown): void;
  _endInt(data: string): void;
  _endI8(data: string): void;
  _endDouble(data: string): void;
  _endStruct(data: string): void;
}

function strictDeserializer(): Deserializer {
  const d = new Deserializer('utf-8');
  const x = d as unknown as DeserializerInternals;
  for (const k of ['_push', '_endInt', '_endI8', '_endDouble', '_endStruct'] as const) {
    if (typeof x[k] !== 'function' || !Array.isArray(x._stack) || !Array.isArray(x._marks)) {
      throw new Error(`@foxglove/xmlrpc changed: Deserializer.${k} is gone; pin the version in package.json`);
    }
  }
  const endInt = (data: string): void => {
    const t = data.trim();
    const n = Number(t);
    if (!/^[+-]?\d+$/.test(t) || !Number.isSafeInteger(n)) throw new Error(`invalid int value '${t.slice(0, 40)}'`);
    x._push(n);
    x._value = false;
  };
  const endDouble = x._endDouble;
  x._endInt = endInt;
  x._endI8 = endInt;
  x._endDouble = (data: string): void => {
    endDouble(data);
    x._stack.push(new XmlRpcDouble(x._stack.pop() as number));
  };
  x._endStruct = (): void => {
    const mark = x._marks.pop() ?? 0;
    const items = x._stack.slice(mark);
    const struct: XStruct = Object.create(null) as XStruct;
    for (let i = 0; i < items.length; i += 2) struct[String(items[i])] = items[i + 1] as XValue;
    x._stack.splice(mark, x._stack.length - mark, struct);
    x._value = false;
  };
  return d;
}

/** Parses a <methodCall>; rejects with an Error saying what is wrong. */
export async function decodeCall(body: string): Promise<DecodedCall> {
  const [method, params] = await strictDeserializer().deserializeMethodCall(body);
  if (typeof method !== 'string' || method.length === 0) throw new Error('methodCall has no methodName');
  return { method, params: params as XValue[] };
}

/** Parses a <methodResponse> (tests); a fault rejects with XmlRpcFault. */
export async function decodeResponse(body: string): Promise<XValue> {
  return (await strictDeserializer().deserializeMethodResponse(body)) as XValue;
}

export function isStruct(v: XValue): v is XStruct {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date)
    && !(v instanceof Uint8Array) && !(v instanceof XmlRpcDouble);
}

// Characters XML 1.0 cannot carry at all; replaced so an echoed input never
// breaks a response. The library writes a string holding < or & as CDATA,
// which cannot hold "]]>": that one becomes "]] >" (only echoed input has it).
const NOT_XML = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

function cleanString(v: string): string {
  return v.replace(NOT_XML, '\uFFFD').replaceAll(']]>', ']] >');
}

function clean(v: XValue): XmlRpcValue {
  if (typeof v === 'string') return cleanString(v);
  if (v instanceof XmlRpcDouble) return v.value;
  if (Array.isArray(v)) return v.map(clean);
  if (isStruct(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [cleanString(k), clean(x)]));
  return v;
}

/** A <methodResponse> with one value. Whole numbers go out as <int>, booleans as <boolean>. */
export function encodeResponse(value: XValue): string {
  return serializeMethodResponse(clean(value));
}

export function encodeFault(faultCode: number, faultString: string): string {
  return serializeFault(new XmlRpcFault(String(clean(faultString)), faultCode));
}
