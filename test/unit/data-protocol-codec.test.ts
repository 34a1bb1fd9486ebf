import { describe, expect, it } from 'vitest';
import { MAX_DATA_PAYLOAD } from '../../shared/constants.js';
import {
  checkRequestCounters, decodeReplyHeader, decodeRequestHeader, encodeErrorMessage, encodeReplyHeader, encodeRequestHeader, replyFrameSpec,
  requestFrameSpec,
} from '../../shared/data-protocol/codec.js';
import {
  MAX_ERROR_MESSAGE, Opcode, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, Status, opcodeName, type RequestHeader,
} from '../../shared/data-protocol/frame.js';
import { InvalidArgumentError, ProtocolError } from '../../shared/errors.js';
import { FrameDecoder, type FrameSpec } from '../../shared/frame-decoder.js';

function req(over: Partial<RequestHeader> = {}): RequestHeader {
  return {
    opcode: Opcode.READ, flags: 0, slot: 0, requestId: 1, volumeId: 7, segment: 3, epoch: 2,
    offset: 4096, length: 512, generation: 0, ...over,
  };
}

function encodeReq(h: RequestHeader, payload?: Buffer): Buffer {
  const head = encodeRequestHeader(h, Buffer.alloc(REQUEST_HEADER_SIZE));
  return payload ? Buffer.concat([head, payload]) : head;
}

describe('data protocol headers', () => {
  it('round-trips a request header, including extreme values', () => {
    const cases = [
      req(),
      req({ opcode: Opcode.WRITE, flags: 1, slot: 255, requestId: 0xffff_ffff, volumeId: 0xffff_ffff, segment: 0xffff_ffff,
        epoch: Number.MAX_SAFE_INTEGER, offset: Number.MAX_SAFE_INTEGER, length: 0xffff_ffff, generation: Number.MAX_SAFE_INTEGER }),
      req({ opcode: Opcode.FENCE, offset: 2 ** 32 + 5, generation: 9 }),
      // Epochs and generations are u64: values that would collide if cut to 32 bits stay apart.
      req({ opcode: Opcode.WRITE, epoch: 2 ** 32, generation: 2 ** 32 + 1 }),
      req({ opcode: Opcode.FENCE, epoch: 2 ** 32 + 5, generation: 2 ** 40 + 3 }),
      req({ opcode: Opcode.MARK_DIRTY, epoch: 0xffff_ffff, generation: 0xffff_ffff }),
      req({ opcode: Opcode.FENCE, epoch: Number.MAX_SAFE_INTEGER - 1, generation: 2 ** 52 + 1 }),
    ];
    for (const h of cases) {
      // WRITE length above the limit is refused by the decoder, so keep it legal there.
      const legal = h.opcode === Opcode.WRITE ? { ...h, length: MAX_DATA_PAYLOAD } : h;
      const back = decodeRequestHeader(encodeReq(legal));
      expect(back).toEqual(legal);
      expect(() => checkRequestCounters(back)).not.toThrow();
    }
  });

  it('puts the u64 epoch at 32 and the u64 generation at 40, high word first', () => {
    const buf = encodeReq(req({ opcode: Opcode.FENCE, epoch: 2 ** 32 + 5, generation: Number.MAX_SAFE_INTEGER }));
    expect(buf.length).toBe(48);
    expect(buf.subarray(32, 40).toString('hex')).toBe('0000000100000005');
    expect(buf.subarray(40, 48).toString('hex')).toBe('001fffffffffffff');
    expect(buf.readBigUInt64BE(32)).toBe(2n ** 32n + 5n);
    expect(buf.readBigUInt64BE(40)).toBe(2n ** 53n - 1n);
  });

  it('refuses an epoch or generation above 2^53-1 as a bad request, never truncating it', () => {
    for (const field of [32, 40]) {
      for (const [hi, lo] of [[0x20_0000, 0], [0x20_0000, 1], [0xffff_ffff, 0xffff_ffff], [0x8000_0000, 1]] as const) {
        const buf = encodeReq(req({ opcode: Opcode.WRITE, epoch: 7, length: 0 }));
        buf.writeUInt32BE(hi, field);
        buf.writeUInt32BE(lo, field + 4);
        // The frame is well formed (the stream goes on): decoding succeeds...
        const h = decodeRequestHeader(buf);
        const value = field === 32 ? h.epoch : h.generation;
        // ...into a number above 2^53-1, never the low bits (lo) or a rounded-down safe value...
        expect(value).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
        expect(value).not.toBe(lo);
        // ...which is refused as BAD_REQUEST (InvalidArgumentError maps to it).
        expect(() => checkRequestCounters(h)).toThrow(InvalidArgumentError);
        expect(() => checkRequestCounters(h)).toThrow(field === 32 ? /epoch beyond 2\^53-1/ : /generation beyond 2\^53-1/);
      }
      // The largest valid value, high word 0x1fffff: exact.
      const max = encodeReq(req({ opcode: Opcode.FENCE }));
      max.writeUInt32BE(0x1f_ffff, field);
      max.writeUInt32BE(0xffff_ffff, field + 4);
      const h = decodeRequestHeader(max);
      expect(field === 32 ? h.epoch : h.generation).toBe(Number.MAX_SAFE_INTEGER);
      expect(() => checkRequestCounters(h)).not.toThrow();
    }
  });

  it('round-trips a reply header at an offset', () => {
    const buf = Buffer.alloc(REPLY_HEADER_SIZE + 3);
    encodeReplyHeader({ requestId: 0xdead_beef, status: Status.STALE_EPOCH, length: 77 }, buf, 3);
    expect(decodeReplyHeader(buf, 3)).toEqual({ requestId: 0xdead_beef, status: Status.STALE_EPOCH, length: 77 });
  });

  it('rejects bad magic (the 40-byte layout\'s VSKQ too), a non-zero reserved byte and offsets >= 2^53', () => {
    const bad = encodeReq(req());
    bad[0] = 0x00;
    expect(() => decodeRequestHeader(bad)).toThrow(ProtocolError);
    const legacy = encodeReq(req());
    legacy.writeUInt32BE(0x56534b51, 0); // 'VSKQ': a peer still speaking the 32-bit-epoch layout
    expect(() => decodeRequestHeader(legacy)).toThrow(/bad request magic 0x56534b51/);
    const reserved = encodeReq(req());
    reserved[7] = 1;
    expect(() => decodeRequestHeader(reserved)).toThrow(ProtocolError);
    const far = encodeReq(req());
    far.writeUInt32BE(0x20_0000, 24); // offset high word = 2^21 -> offset = 2^53
    expect(() => decodeRequestHeader(far)).toThrow(/2\^53/);
    far.writeUInt32BE(0x1f_ffff, 24);
    expect(decodeRequestHeader(far).offset).toBe(0x1f_ffff * 2 ** 32 + 4096);
    const reply = Buffer.alloc(REPLY_HEADER_SIZE);
    expect(() => decodeReplyHeader(reply)).toThrow(ProtocolError);
  });

  it('matches the example in docs/data-protocol.md', () => {
    const h = req({ opcode: Opcode.WRITE, flags: 1, slot: 1, requestId: 42, volumeId: 7, segment: 2, epoch: 3, offset: 8192, length: 4096 });
    expect(encodeReq(h).toString('hex')).toBe(
      '56534b32020101000000002a00000007' + '0000000200001000' + '0000000000002000' + '0000000000000003' + '0000000000000000');
    const fence = req({ opcode: Opcode.FENCE, requestId: 18, volumeId: 7, segment: 0, epoch: 2 ** 32 + 1, offset: 0, length: 0, generation: 2 ** 32 + 3 });
    expect(encodeReq(fence).toString('hex')).toBe(
      '56534b32060000000000001200000007' + '0000000000000000' + '0000000000000000' + '0000000100000001' + '0000000100000003');
  });

  it('matches the MARK_DIRTY example in docs/data-protocol.md; write-intent requests carry no payload', () => {
    expect([Opcode.MARK_DIRTY, Opcode.CLEAR_DIRTY, opcodeName(8), opcodeName(9)]).toEqual([8, 9, 'MARK_DIRTY', 'CLEAR_DIRTY']);
    const h = req({ opcode: Opcode.MARK_DIRTY, slot: 1, requestId: 17, volumeId: 7, segment: 2, epoch: 4, offset: 1024 * 1024, length: 65536 });
    expect(encodeReq(h).toString('hex')).toBe(
      '56534b3208000100000000110000000' + '7' + '0000000200010000' + '0000000000100000' + '0000000000000004' + '0000000000000000');
    // A length far above the payload limit is fine: nothing follows the header.
    const big = req({ opcode: Opcode.CLEAR_DIRTY, length: 0xffff_ffff });
    expect(requestFrameSpec.payloadLength(decodeRequestHeader(encodeReq(big)))).toBe(0);
  });

  it('truncates error messages', () => {
    expect(encodeErrorMessage('x'.repeat(5000)).length).toBe(MAX_ERROR_MESSAGE);
    expect(encodeErrorMessage('épée').toString('utf8')).toBe('épée');
  });
});

describe('FrameDecoder over the request stream', () => {
  const payloadA = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
  const frames: [RequestHeader, Buffer | undefined][] = [
    [req({ opcode: Opcode.WRITE, requestId: 1, length: payloadA.length }), payloadA],
    [req({ opcode: Opcode.READ, requestId: 2, length: 1 << 20 }), undefined],
    [req({ opcode: Opcode.WRITE, requestId: 3, length: 0 }), undefined],
    [req({ opcode: Opcode.WRITE, requestId: 4, length: 5 }), Buffer.from('hello')],
    [req({ opcode: Opcode.PING, requestId: 5, length: 0 }), undefined],
  ];
  const stream = Buffer.concat(frames.map(([h, p]) => encodeReq(h, p)));

  function drain(dec: FrameDecoder<RequestHeader>, out: { header: RequestHeader; payload: Buffer | undefined }[]): void {
    for (let f = dec.next(); f !== undefined; f = dec.next()) out.push({ header: f.header, payload: f.payload && Buffer.from(f.payload) });
  }

  function check(out: { header: RequestHeader; payload: Buffer | undefined }[]): void {
    expect(out.map((f) => f.header)).toEqual(frames.map(([h]) => h));
    expect(out.map((f) => f.payload?.toString('hex'))).toEqual(frames.map(([, p]) => p?.toString('hex')));
  }

  it('decodes the same frames whatever byte the stream is split at', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const dec = new FrameDecoder(requestFrameSpec);
      const out: { header: RequestHeader; payload: Buffer | undefined }[] = [];
      dec.push(stream.subarray(0, cut));
      drain(dec, out);
      dec.push(stream.subarray(cut));
      drain(dec, out);
      check(out);
      expect(dec.idle).toBe(true);
    }
  });

  it('decodes a stream fed one byte at a time, and in three uneven pieces', () => {
    const dec = new FrameDecoder(requestFrameSpec);
    const out: { header: RequestHeader; payload: Buffer | undefined }[] = [];
    for (let i = 0; i < stream.length; i++) {
      dec.push(stream.subarray(i, i + 1));
      drain(dec, out);
    }
    check(out);
    for (const [a, b] of [[1, 41], [39, 341], [40, 700]] as const) {
      const d = new FrameDecoder(requestFrameSpec);
      const o: { header: RequestHeader; payload: Buffer | undefined }[] = [];
      for (const piece of [stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]) {
        d.push(piece);
        drain(d, o);
      }
      check(o);
    }
  });

  it('hands out a zero-copy view when the payload sits in one chunk', () => {
    const dec = new FrameDecoder(requestFrameSpec);
    const one = encodeReq(frames[0]![0], payloadA);
    dec.push(one);
    const f = dec.next()!;
    expect(f.payload!.buffer).toBe(one.buffer);
    expect(f.payload!.byteOffset).toBe(one.byteOffset + REQUEST_HEADER_SIZE);
  });

  it('refuses an oversized payload before allocating anything', () => {
    let allocations = 0;
    const spec: FrameSpec<RequestHeader> = { ...requestFrameSpec, maxPayload: 1024, payloadLength: (h) => h.length };
    const dec = new FrameDecoder(spec, () => { allocations++; return undefined; });
    dec.push(encodeReq(req({ opcode: Opcode.READ, length: 1025 }))); // header only: the payload never comes
    expect(() => dec.next()).toThrow(ProtocolError);
    expect(allocations).toBe(0);
    // The real request spec refuses a WRITE above the protocol limit from its header alone.
    const big = encodeReq(req({ opcode: Opcode.WRITE, length: 1 }));
    big.writeUInt32BE(MAX_DATA_PAYLOAD + 1, 20);
    const dec2 = new FrameDecoder(requestFrameSpec, () => { allocations++; return undefined; });
    dec2.push(big);
    expect(() => dec2.next()).toThrow(/exceeds the limit/);
    expect(allocations).toBe(0);
  });

  it('throws ProtocolError on bad magic mid-stream', () => {
    const dec = new FrameDecoder(requestFrameSpec);
    const good = encodeReq(req({ requestId: 1 }));
    const garbage = Buffer.alloc(REQUEST_HEADER_SIZE, 0x41);
    dec.push(Buffer.concat([good, garbage]));
    expect(dec.next()!.header.requestId).toBe(1);
    expect(() => dec.next()).toThrow(ProtocolError);
  });

  it('decodes replies with payloads split across chunks into a supplied buffer', () => {
    const data = Buffer.from('0123456789abcdef');
    const head = encodeReplyHeader({ requestId: 9, status: Status.OK, length: data.length }, Buffer.alloc(REPLY_HEADER_SIZE));
    const target = Buffer.alloc(32);
    const dec = new FrameDecoder(replyFrameSpec, () => target);
    dec.push(Buffer.concat([head, data.subarray(0, 5)]));
    expect(dec.next()).toBeUndefined();
    expect(dec.idle).toBe(false);
    dec.push(data.subarray(5));
    const f = dec.next()!;
    expect(f.payload!.toString()).toBe(data.toString());
    expect(f.payload!.buffer).toBe(target.buffer);
  });
});
