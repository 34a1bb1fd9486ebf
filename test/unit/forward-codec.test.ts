import { describe, expect, it } from 'vitest';
import { decodeRequestHeader, encodeRequestHeader, requestFrameSpec } from '../../shared/data-protocol/codec.js';
import {
  MAX_RESULT_MESSAGE, MAX_ROUTE_BYTES, ROUTE_ALIGN, decodeForwardResults, decodeRoute, encodeForwardResults, encodeRoute,
  routeCount, routeGeneration,
} from '../../shared/data-protocol/forward-codec.js';
import { Opcode, REQUEST_HEADER_SIZE, Status, type RequestHeader } from '../../shared/data-protocol/frame.js';
import { ProtocolError } from '../../shared/errors.js';
import { FrameDecoder } from '../../shared/frame-decoder.js';

function forwardHeader(routeLength: number, length: number): RequestHeader {
  return { opcode: Opcode.FORWARD_WRITE, flags: 1, slot: 0, requestId: 9, volumeId: 7, segment: 3, epoch: 5, offset: 4096, length, generation: routeLength };
}

describe('forward route block', () => {
  it('round-trips the route generation and every entry, padded to ROUTE_ALIGN', () => {
    const entries = [{ slot: 1, address: '127.0.0.2:7710' }, { slot: 2, address: 'node-c.example:65535' }];
    const buf = encodeRoute(0xfffffffe, entries);
    expect(buf.length % ROUTE_ALIGN).toBe(0);
    expect(routeGeneration(buf, 0)).toBe(0xfffffffe);
    expect(routeCount(buf, 0)).toBe(2);
    expect(decodeRoute(buf, 0, buf.length)).toEqual({ generation: 0xfffffffe, entries });
  });

  it('a leg route has no entries and is one block', () => {
    const buf = encodeRoute(3, []);
    expect(buf.length).toBe(ROUTE_ALIGN);
    expect(decodeRoute(buf, 0, buf.length)).toEqual({ generation: 3, entries: [] });
  });

  it('refuses routes that do not parse', () => {
    const good = encodeRoute(1, [{ slot: 1, address: '127.0.0.2:7710' }]);
    const badCount = Buffer.from(good);
    badCount[4] = 9; // entries past the block
    expect(() => decodeRoute(badCount, 0, badCount.length)).toThrow(ProtocolError);
    const badAddress = Buffer.from(good);
    badAddress[7] = 0x20; // a space in the address
    expect(() => decodeRoute(badAddress, 0, badAddress.length)).toThrow(/host:port/);
    expect(() => decodeRoute(good, 0, 3)).toThrow(ProtocolError);
    expect(() => decodeRoute(good, 0, MAX_ROUTE_BYTES + 64)).toThrow(ProtocolError);
  });

  it('an encoder refuses a route that does not fit', () => {
    const many = Array.from({ length: 40 }, (_, i) => ({ slot: i, address: `very-long-storage-node-name-${i}.example:7710` }));
    expect(() => encodeRoute(1, many)).toThrow(RangeError);
  });
});

describe('FORWARD_WRITE framing', () => {
  it('the payload is the route block then the data; both come out of a split stream', () => {
    const route = encodeRoute(4, [{ slot: 2, address: '127.0.0.3:1' }]);
    const data = Buffer.alloc(5000, 0xab);
    const header = encodeRequestHeader(forwardHeader(route.length, data.length), Buffer.alloc(REQUEST_HEADER_SIZE));
    const wire = Buffer.concat([header, route, data]);
    const dec = new FrameDecoder(requestFrameSpec);
    for (let at = 0; at < wire.length; at += 777) dec.push(wire.subarray(at, Math.min(wire.length, at + 777)));
    const f = dec.next()!;
    expect(f.header.opcode).toBe(Opcode.FORWARD_WRITE);
    expect(f.header.generation).toBe(route.length);
    expect(f.payload!.length).toBe(route.length + data.length);
    expect(decodeRoute(f.payload!, 0, route.length).entries).toEqual([{ slot: 2, address: '127.0.0.3:1' }]);
    expect(f.payload!.subarray(route.length).equals(data)).toBe(true);
  });

  it('a route length above MAX_ROUTE_BYTES breaks the stream (ProtocolError), never a huge allocation', () => {
    const h = encodeRequestHeader(forwardHeader(MAX_ROUTE_BYTES + 1, 10), Buffer.alloc(REQUEST_HEADER_SIZE));
    expect(() => decodeRequestHeader(h)).toThrow(ProtocolError);
    const hi = encodeRequestHeader(forwardHeader(2 ** 40, 10), Buffer.alloc(REQUEST_HEADER_SIZE));
    expect(() => decodeRequestHeader(hi)).toThrow(ProtocolError);
  });
});

describe('forward results', () => {
  it('round-trips each replica outcome, primary first', () => {
    const results = [
      { slot: 0, status: Status.OK, message: '' },
      { slot: 2, status: Status.STALE_EPOCH, message: 'epoch 4 < 5' },
      { slot: 1, status: Status.IO_ERROR, message: 'forwarded to 127.0.0.3:1: connection refused' },
    ];
    expect(decodeForwardResults(encodeForwardResults(results).toString('utf8'))).toEqual(results);
  });

  it('newlines in messages are flattened and long messages cut', () => {
    const [r] = decodeForwardResults(encodeForwardResults([{ slot: 1, status: 5, message: `a\nb${'x'.repeat(1000)}` }]).toString('utf8'));
    expect(r!.message.startsWith('a b')).toBe(true);
    expect(Buffer.byteLength(r!.message)).toBeLessThanOrEqual(MAX_RESULT_MESSAGE);
  });

  it('refuses garbage (a plain error message is not forward results)', () => {
    expect(() => decodeForwardResults('disk failed')).toThrow(ProtocolError);
    expect(() => decodeForwardResults('1 5 ok\nnonsense\n')).toThrow(ProtocolError);
    expect(() => decodeForwardResults('300 0 \n')).toThrow(ProtocolError);
  });
});
