import { ProtocolError } from '../errors.js';

// Pure encoders/decoders of primary forwarding (docs/replication-topology.md).
//
// Route block (the first R bytes of a FORWARD_WRITE payload, R in the header's
// u64 at 40; big-endian):
//   0 u32 route generation   4 u8 count   then `count` entries:
//   u8 replica slot, u8 address length, address bytes (ASCII "host:port")
//   zero-padded to a multiple of ROUTE_ALIGN (so a node's payload buffers
//   come from a few pooled sizes). Every replica of a segment shares its
//   volume id, segment index and epoch (the header's): a route names only
//   where each other replica lives. A route of 0 entries is a forwarded leg.
//
// Forward results (the payload of a FORWARD_RESULTS reply; UTF-8 text, as the
// client reads every error reply's payload as text): one line per replica,
// primary first, "<slot> <status> <message>\n", the message at most
// MAX_RESULT_MESSAGE bytes with no newline.

export const ROUTE_ALIGN = 64;
export const MAX_ROUTE_BYTES = 1024;
export const MAX_RESULT_MESSAGE = 256;
const ROUTE_FIXED = 5;

export interface RouteEntry {
  slot: number;
  address: string;
}

export interface Route {
  generation: number;
  entries: RouteEntry[];
}

export interface ForwardResult {
  slot: number;
  status: number;
  message: string;
}

/** The route block for `entries` (padded); throws RangeError if it exceeds MAX_ROUTE_BYTES. */
export function encodeRoute(generation: number, entries: readonly RouteEntry[]): Buffer {
  let size = ROUTE_FIXED;
  for (const e of entries) size += 2 + Buffer.byteLength(e.address, 'latin1');
  const padded = Math.ceil(size / ROUTE_ALIGN) * ROUTE_ALIGN;
  if (padded > MAX_ROUTE_BYTES || entries.length > 255) throw new RangeError(`route of ${entries.length} replicas is ${padded} bytes (limit ${MAX_ROUTE_BYTES})`);
  const buf = Buffer.alloc(padded);
  buf.writeUInt32BE(generation >>> 0, 0);
  buf[4] = entries.length;
  let at = ROUTE_FIXED;
  for (const e of entries) {
    const n = Buffer.byteLength(e.address, 'latin1');
    if (n > 255 || e.slot > 255 || e.slot < 0) throw new RangeError(`route entry ${e.slot}@${e.address} does not fit`);
    buf[at] = e.slot;
    buf[at + 1] = n;
    buf.write(e.address, at + 2, 'latin1');
    at += 2 + n;
  }
  return buf;
}

/** The route generation of a route block at buf[at...] (no allocation). */
export function routeGeneration(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at);
}

/** The replica count of a route block at buf[at...] (no allocation). */
export function routeCount(buf: Buffer, at: number): number {
  return buf[at + 4]!;
}

/** Decodes the route block buf[at, at + length); throws ProtocolError on one that does not parse. */
export function decodeRoute(buf: Buffer, at: number, length: number): Route {
  if (length < ROUTE_FIXED || length > MAX_ROUTE_BYTES || at + length > buf.length) {
    throw new ProtocolError(`forward route of ${length} bytes (${ROUTE_FIXED}..${MAX_ROUTE_BYTES})`, { length });
  }
  const end = at + length;
  const count = buf[at + 4]!;
  const entries: RouteEntry[] = [];
  let p = at + ROUTE_FIXED;
  for (let i = 0; i < count; i++) {
    if (p + 2 > end) throw new ProtocolError(`forward route: entry ${i} runs past the block`);
    const slot = buf[p]!;
    const n = buf[p + 1]!;
    if (n === 0 || p + 2 + n > end) throw new ProtocolError(`forward route: address of entry ${i} runs past the block`);
    const address = buf.toString('latin1', p + 2, p + 2 + n);
    if (!/^[A-Za-z0-9.:[\]_-]+:\d+$/.test(address)) throw new ProtocolError(`forward route: entry ${i} address is not host:port`);
    entries.push({ slot, address });
    p += 2 + n;
  }
  return { generation: buf.readUInt32BE(at), entries };
}

/** The payload of a FORWARD_RESULTS reply. */
export function encodeForwardResults(results: readonly ForwardResult[]): Buffer {
  const lines = results.map((r) => {
    let msg = r.message.replace(/[\r\n]+/g, ' ');
    if (Buffer.byteLength(msg, 'utf8') > MAX_RESULT_MESSAGE) msg = Buffer.from(msg, 'utf8').subarray(0, MAX_RESULT_MESSAGE).toString('utf8').replace(/\uFFFD+$/, '');
    return `${r.slot} ${r.status} ${msg}\n`;
  });
  return Buffer.from(lines.join(''), 'utf8');
}

/** Parses a FORWARD_RESULTS payload (as text); throws ProtocolError on one that does not parse. */
export function decodeForwardResults(text: string): ForwardResult[] {
  if (!text.endsWith('\n')) throw new ProtocolError('forward results: truncated');
  const out: ForwardResult[] = [];
  for (const line of text.slice(0, -1).split('\n')) {
    const m = /^(\d{1,3}) (\d{1,10}) (.*)$/s.exec(line);
    if (m === null) throw new ProtocolError(`forward results: bad line ${JSON.stringify(line.slice(0, 80))}`);
    const slot = Number(m[1]);
    if (slot > 255) throw new ProtocolError(`forward results: slot ${slot} out of range`);
    out.push({ slot, status: Number(m[2]), message: m[3]! });
  }
  return out;
}
