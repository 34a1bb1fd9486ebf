import { describe, expect, it } from 'vitest';
import {
  CLIENT_FLAGS_SPEC, OPTION_REPLY_SPEC, OPTION_SPEC, REQUEST_SPEC, decodeExportName, decodeInfoRequest, decodeString,
  encodeExportNameReply, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoRequest, encodeInfoString,
  encodeOption, encodeOptionError, encodeOptionReply, encodeRequest, encodeServerEntry, encodeStructuredError, handleText,
  parseSimpleReply, parseStructuredReplyHeader, writeOffsetDataPrefix, writeSimpleReply, writeStructuredReplyHeader,
  type RequestHeader,
} from '../../head-agent/frontend/nbd/codec.js';
import {
  MAX_BLOCK_SIZE, MAX_OPTION_PAYLOAD, NBD_REPLY_FLAG_DONE, NbdCmd, NbdError, NbdInfo, NbdOpt, NbdRep, NbdReplyType,
} from '../../head-agent/frontend/nbd/constants.js';
import { nbdErrorFor } from '../../head-agent/frontend/nbd/error-map.js';
import {
  CapacityError, InvalidArgumentError, IoError, ProtocolError, StaleEpochError, TransportError,
} from '../../shared/errors.js';
import { FrameDecoder, type Frame, type FrameSpec } from '../../shared/frame-decoder.js';

function drain<H>(decoder: FrameDecoder<H>): Frame<H>[] {
  const out: Frame<H>[] = [];
  for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
    out.push({ header: f.header, payload: f.payload === undefined ? undefined : Buffer.from(f.payload) });
  }
  return out;
}

/** Feeds `stream` split at `cuts`, collecting every frame. */
function decodeSplit<H>(spec: FrameSpec<H>, stream: Buffer, cuts: number[]): Frame<H>[] {
  const d = new FrameDecoder(spec);
  const frames: Frame<H>[] = [];
  let at = 0;
  for (const cut of [...cuts, stream.length]) {
    d.push(stream.subarray(at, cut));
    frames.push(...drain(d));
    at = cut;
  }
  expect(d.idle).toBe(true);
  return frames;
}

const requests: { header: RequestHeader; data?: Buffer }[] = [
  { header: { type: NbdCmd.READ, flags: 0, handleHi: 0xdeadbeef, handleLo: 1, offset: 0, length: 4096 } },
  { header: { type: NbdCmd.WRITE, flags: 1, handleHi: 0, handleLo: 0xffffffff, offset: 2 ** 40 + 512, length: 7 }, data: Buffer.from('payload') },
  { header: { type: NbdCmd.FLUSH, flags: 0, handleHi: 7, handleLo: 8, offset: 0, length: 0 } },
  { header: { type: NbdCmd.WRITE_ZEROES, flags: 3, handleHi: 1, handleLo: 2, offset: 2 ** 52, length: 2 ** 32 - 1 } },
  { header: { type: NbdCmd.WRITE, flags: 0, handleHi: 9, handleLo: 9, offset: 1, length: 1 }, data: Buffer.from('z') },
  { header: { type: NbdCmd.DISC, flags: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 } },
];
const requestStream = Buffer.concat(requests.flatMap((r) => (r.data ? [encodeRequest(r.header), r.data] : [encodeRequest(r.header)])));

describe('NBD request codec', () => {
  it('round-trips request headers, with WRITE payloads only', () => {
    const frames = decodeSplit(REQUEST_SPEC, requestStream, []);
    expect(frames.map((f) => f.header)).toEqual(requests.map((r) => r.header));
    expect(frames.map((f) => f.payload?.toString())).toEqual(requests.map((r) => r.data?.toString()));
  });

  it('decodes the same frames when the stream is split at every byte, and fed byte by byte', () => {
    const whole = decodeSplit(REQUEST_SPEC, requestStream, []);
    for (let cut = 1; cut < requestStream.length; cut++) {
      expect(decodeSplit(REQUEST_SPEC, requestStream, [cut])).toEqual(whole);
    }
    const everyByte = Array.from({ length: requestStream.length - 1 }, (_, i) => i + 1);
    expect(decodeSplit(REQUEST_SPEC, requestStream, everyByte)).toEqual(whole);
  });

  it('hands out a zero-copy view when a WRITE payload sits in one chunk', () => {
    const d = new FrameDecoder(REQUEST_SPEC);
    const chunk = Buffer.concat([encodeRequest(requests[1]!.header), requests[1]!.data!]);
    d.push(chunk);
    const f = d.next()!;
    expect(f.payload!.buffer).toBe(chunk.buffer);
    expect(f.payload!.byteOffset).toBe(chunk.byteOffset + 28);
  });

  it('rejects a bad magic with ProtocolError', () => {
    const bad = encodeRequest(requests[0]!.header);
    bad.writeUInt32BE(0x25609514, 0);
    const d = new FrameDecoder(REQUEST_SPEC);
    d.push(bad);
    expect(() => d.next()).toThrow(ProtocolError);
    expect(() => REQUEST_SPEC.parseHeader(Buffer.alloc(28), 0)).toThrow(/bad magic 0x0/);
  });

  it('accepts a WRITE of exactly 32 MiB and rejects one byte more before allocating', () => {
    const d = new FrameDecoder(REQUEST_SPEC);
    d.push(encodeRequest({ type: NbdCmd.WRITE, flags: 0, handleHi: 0, handleLo: 1, offset: 0, length: MAX_BLOCK_SIZE }));
    expect(d.next()).toBeUndefined(); // waiting for the payload
    const big = new FrameDecoder(REQUEST_SPEC);
    big.push(encodeRequest({ type: NbdCmd.WRITE, flags: 0, handleHi: 0, handleLo: 1, offset: 0, length: MAX_BLOCK_SIZE + 1 }));
    expect(() => big.next()).toThrow(/exceeds the limit/);
    // A READ of any length carries no payload: it is refused later with EINVAL, not here.
    const read = new FrameDecoder(REQUEST_SPEC);
    read.push(encodeRequest({ type: NbdCmd.READ, flags: 0, handleHi: 0, handleLo: 1, offset: 0, length: 0xffffffff }));
    expect(read.next()!.header.length).toBe(0xffffffff);
  });

  it('decodes offsets beyond 2^53 as values past any export end', () => {
    const buf = encodeRequest({ type: NbdCmd.READ, flags: 0, handleHi: 0, handleLo: 0, offset: 0, length: 1 });
    buf.writeBigUInt64BE(0xffffffffffffffffn, 16);
    expect(REQUEST_SPEC.parseHeader(buf, 0).offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('writes simple reply headers in place and they parse back', () => {
    const slab = Buffer.alloc(40, 0xee);
    writeSimpleReply(slab, 8, NbdError.ENOSPC, 0x01020304, 0xa0b0c0d0);
    expect(slab.subarray(0, 8).every((b) => b === 0xee)).toBe(true);
    expect(slab.subarray(24).every((b) => b === 0xee)).toBe(true);
    expect(slab.subarray(8, 12).toString('hex')).toBe('67446698');
    expect(parseSimpleReply(slab, 8)).toEqual({ error: 28, handleHi: 0x01020304, handleLo: 0xa0b0c0d0 });
    expect(handleText(0x01020304, 0xa0b0c0d0)).toBe('01020304a0b0c0d0');
    expect(() => parseSimpleReply(Buffer.alloc(16))).toThrow(ProtocolError);
  });
});

describe('NBD structured reply codec', () => {
  it('writes an OFFSET_DATA prefix (header + 64-bit offset) in place', () => {
    const buf = Buffer.alloc(30, 0xee);
    writeOffsetDataPrefix(buf, 1, 0xaabbccdd, 7, 2 ** 40 + 3, 4096);
    expect(buf[0]).toBe(0xee);
    expect(buf[29]).toBe(0xee);
    expect(parseStructuredReplyHeader(buf, 1)).toEqual({
      flags: NBD_REPLY_FLAG_DONE, type: NbdReplyType.OFFSET_DATA, handleHi: 0xaabbccdd, handleLo: 7, length: 8 + 4096,
    });
    expect(Number(buf.readBigUInt64BE(21))).toBe(2 ** 40 + 3);
  });

  it('encodes a final ERROR chunk with error and message', () => {
    const chunk = encodeStructuredError(1, 2, NbdError.EIO, 'replica 3 failed');
    const h = parseStructuredReplyHeader(chunk);
    expect(h).toEqual({ flags: NBD_REPLY_FLAG_DONE, type: NbdReplyType.ERROR, handleHi: 1, handleLo: 2, length: 6 + 16 });
    expect(chunk.length).toBe(20 + h.length);
    expect(chunk.readUInt32BE(20)).toBe(NbdError.EIO);
    expect(chunk.readUInt16BE(24)).toBe(16);
    expect(chunk.subarray(26).toString()).toBe('replica 3 failed');
    expect(() => parseStructuredReplyHeader(Buffer.alloc(20))).toThrow(ProtocolError);
  });

  it('writes a NONE chunk header', () => {
    const buf = Buffer.alloc(20);
    writeStructuredReplyHeader(buf, 0, NBD_REPLY_FLAG_DONE, NbdReplyType.NONE, 0, 9, 0);
    expect(buf.readUInt32BE(0)).toBe(0x668e33ef);
    expect(parseStructuredReplyHeader(buf)).toMatchObject({ type: 0, flags: 1, handleLo: 9, length: 0 });
  });
});

describe('NBD handshake codec', () => {
  it('encodes the greeting: NBDMAGIC, IHAVEOPT, fixed newstyle + no zeroes', () => {
    const g = encodeGreeting();
    expect(g.length).toBe(18);
    expect(g.subarray(0, 16).toString('latin1')).toBe('NBDMAGICIHAVEOPT');
    expect(g.readUInt16BE(16)).toBe(3);
  });

  it('decodes client flags as a 4-byte frame', () => {
    const d = new FrameDecoder(CLIENT_FLAGS_SPEC);
    d.push(Buffer.from([0, 0]));
    expect(d.next()).toBeUndefined();
    d.push(Buffer.from([0, 3, 0xaa]));
    expect(d.next()!.header).toBe(3);
    expect(d.bufferedBytes).toBe(1);
  });

  it('round-trips option requests split at every byte', () => {
    const stream = Buffer.concat([
      encodeOption(NbdOpt.LIST),
      encodeOption(NbdOpt.GO, encodeInfoRequest('vol-1', [NbdInfo.BLOCK_SIZE, NbdInfo.NAME])),
      encodeOption(NbdOpt.EXPORT_NAME, Buffer.from('x')),
    ]);
    const whole = decodeSplit(OPTION_SPEC, stream, []);
    expect(whole.map((f) => f.header)).toEqual([
      { option: NbdOpt.LIST, length: 0 }, { option: NbdOpt.GO, length: 4 + 5 + 2 + 4 }, { option: NbdOpt.EXPORT_NAME, length: 1 },
    ]);
    expect(decodeInfoRequest(NbdOpt.GO, whole[1]!.payload)).toEqual({ name: 'vol-1', requests: [NbdInfo.BLOCK_SIZE, NbdInfo.NAME] });
    for (let cut = 1; cut < stream.length; cut++) expect(decodeSplit(OPTION_SPEC, stream, [cut])).toEqual(whole);
  });

  it('rejects an option with a bad magic or oversized data', () => {
    const d = new FrameDecoder(OPTION_SPEC);
    d.push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(() => d.next()).toThrow(/bad magic/);
    const big = new FrameDecoder(OPTION_SPEC);
    const header = encodeOption(NbdOpt.GO);
    header.writeUInt32BE(MAX_OPTION_PAYLOAD + 1, 12);
    big.push(header);
    expect(() => big.next()).toThrow(ProtocolError);
  });

  it('parses NBD_OPT_GO data: empty name, no info requests', () => {
    expect(decodeInfoRequest(NbdOpt.GO, Buffer.from([0, 0, 0, 0, 0, 0]))).toEqual({ name: '', requests: [] });
    expect(decodeInfoRequest(NbdOpt.INFO, encodeInfoRequest('ü-vol', [3]))).toEqual({ name: 'ü-vol', requests: [3] });
  });

  it.each([
    ['missing data', undefined, /0 bytes; at least 6/],
    ['truncated before the count', Buffer.from([0, 0, 0, 0, 0]), /at least 6/],
    ['name length beyond the data', Buffer.from([0, 0, 0, 9, 0x61, 0, 0]), /name length 9 exceeds the 1 bytes/],
    ['name length near 2^32', Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0]), /name length 4294967295/],
    ['fewer info requests than counted', Buffer.from([0, 0, 0, 0, 0, 2, 0, 3]), /2 information requests need 10 bytes in all, got 8/],
    ['trailing bytes', Buffer.from([0, 0, 0, 0, 0, 0, 0xaa]), /need 6 bytes in all, got 7/],
    ['invalid UTF-8 in the name', Buffer.from([0, 0, 0, 1, 0xff, 0, 0]), /not valid UTF-8/],
    ['NUL in the name', Buffer.from([0, 0, 0, 1, 0, 0, 0]), /NUL/],
  ])('rejects malformed NBD_OPT_GO data: %s', (_label, data, message) => {
    expect(() => decodeInfoRequest(NbdOpt.GO, data)).toThrow(ProtocolError);
    expect(() => decodeInfoRequest(NbdOpt.GO, data)).toThrow(message);
  });

  it('limits strings to 4096 bytes', () => {
    expect(decodeString(Buffer.alloc(4096, 0x61), 'name')).toHaveLength(4096);
    expect(() => decodeString(Buffer.alloc(4097, 0x61), 'export name')).toThrow(/export name is 4097 bytes/);
    expect(decodeExportName(undefined)).toBe('');
  });

  it('encodes option replies that the client-side spec decodes', () => {
    const stream = Buffer.concat([
      encodeOptionReply(NbdOpt.LIST, NbdRep.SERVER, encodeServerEntry('vol1')),
      encodeOptionReply(NbdOpt.LIST, NbdRep.ACK),
      encodeOptionReply(NbdOpt.GO, NbdRep.INFO, encodeInfoExport(2 ** 40, 0x16d)),
      encodeOptionReply(NbdOpt.GO, NbdRep.INFO, encodeInfoBlockSize(1, 4096, MAX_BLOCK_SIZE)),
      encodeOptionReply(NbdOpt.GO, NbdRep.INFO, encodeInfoString(NbdInfo.NAME, 'vol1')),
      encodeOptionError(NbdOpt.GO, NbdRep.ERR_UNKNOWN, 'no export named "x"'),
    ]);
    const frames = decodeSplit(OPTION_REPLY_SPEC, stream, [7, 33]);
    expect(frames.map((f) => [f.header.option, f.header.type])).toEqual([
      [3, 2], [3, 1], [7, 3], [7, 3], [7, 3], [7, 0x80000006],
    ]);
    const [server, , exp, bs, name, err] = frames.map((f) => f.payload ?? Buffer.alloc(0));
    expect(server!.readUInt32BE(0)).toBe(4);
    expect(server!.subarray(4).toString()).toBe('vol1');
    expect(exp!.length).toBe(12);
    expect([exp!.readUInt16BE(0), Number(exp!.readBigUInt64BE(2)), exp!.readUInt16BE(10)]).toEqual([0, 2 ** 40, 0x16d]);
    expect(bs!.length).toBe(14);
    expect([bs!.readUInt16BE(0), bs!.readUInt32BE(2), bs!.readUInt32BE(6), bs!.readUInt32BE(10)]).toEqual([3, 1, 4096, 32 * 1024 * 1024]);
    expect([name!.readUInt16BE(0), name!.subarray(2).toString()]).toEqual([1, 'vol1']);
    expect(err!.toString()).toBe('no export named "x"');
  });

  it('truncates long error messages to 4096 bytes on a character boundary', () => {
    const reply = encodeOptionError(NbdOpt.GO, NbdRep.ERR_INVALID, 'é'.repeat(3000));
    const length = reply.readUInt32BE(16);
    expect(length).toBe(4096);
    expect(reply.subarray(20).toString('utf8')).toBe('é'.repeat(2048));
  });

  it('encodes the NBD_OPT_EXPORT_NAME reply with and without the 124 zero bytes', () => {
    const padded = encodeExportNameReply(1024, 0x16d, false);
    expect(padded.length).toBe(134);
    expect(Number(padded.readBigUInt64BE(0))).toBe(1024);
    expect(padded.readUInt16BE(8)).toBe(0x16d);
    expect(padded.subarray(10).every((b) => b === 0)).toBe(true);
    expect(encodeExportNameReply(1024, 0x16d, true).length).toBe(10);
  });
});

describe('NBD error map', () => {
  it('maps project errors to NBD error values', () => {
    expect(nbdErrorFor(new InvalidArgumentError('x'))).toBe(NbdError.EINVAL);
    expect(nbdErrorFor(new CapacityError('x'))).toBe(NbdError.ENOSPC);
    expect(nbdErrorFor(new IoError('x'))).toBe(NbdError.EIO);
    expect(nbdErrorFor(new StaleEpochError('x'))).toBe(NbdError.EIO);
    expect(nbdErrorFor(new TransportError('x'))).toBe(NbdError.EIO);
    expect(nbdErrorFor(new Error('x'))).toBe(NbdError.EIO);
    expect(nbdErrorFor('string')).toBe(NbdError.EIO);
  });
});
