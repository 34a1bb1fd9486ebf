import { describe, expect, it } from 'vitest';
import type { BlockDevice, ExportRegistry } from '../../head-agent/engine/block-device.js';
import { OPTION_REPLY_SPEC, encodeInfoRequest, type OptionHeader } from '../../head-agent/frontend/nbd/codec.js';
import {
  BASE_ALLOCATION, BASE_ALLOCATION_ID, NBD_FLAG_C_FIXED_NEWSTYLE, NbdInfo, NbdOpt, NbdRep, NbdReplyType, STRUCTURED_REPLY_HEADER_SIZE,
} from '../../head-agent/frontend/nbd/constants.js';
import { Handshake, type HandshakeStep } from '../../head-agent/frontend/nbd/handshake.js';
import {
  decodeBlockStatusPayload, decodeMetaContextRequest, encodeBlockStatusChunk, encodeMetaContextRequest, fitExtents, matchMetaContexts,
} from '../../head-agent/frontend/nbd/meta-context.js';
import { parseStructuredReplyHeader } from '../../head-agent/frontend/nbd/codec.js';
import { ProtocolError } from '../../shared/errors.js';

const device = (name: string): BlockDevice => ({
  name, size: 1 << 20,
  read: async () => Buffer.alloc(0), write: async () => {}, flush: async () => {}, writeZeroes: async () => {}, discard: async () => {},
});
const registry: ExportRegistry = {
  lookup: (n) => (n === 'a' || n === 'b' ? device(n) : undefined),
  list: () => [device('a'), device('b')],
};
const opt = (option: number, data?: Buffer): [OptionHeader, Buffer | undefined] => [{ option, length: data?.length ?? 0 }, data];
const replies = (step: HandshakeStep): { type: number; data: Buffer }[] =>
  step.replies.map((r) => ({ type: OPTION_REPLY_SPEC.parseHeader(r, 0).type, data: r.subarray(20) }));
function started(): Handshake {
  const hs = new Handshake(registry);
  hs.clientFlags(NBD_FLAG_C_FIXED_NEWSTYLE);
  return hs;
}

describe('NBD meta context codec', () => {
  it('round-trips a request and refuses truncated or trailing data', () => {
    const data = encodeMetaContextRequest('vol', ['base:allocation', 'qemu:dirty-bitmap:x']);
    expect(decodeMetaContextRequest(NbdOpt.SET_META_CONTEXT, data)).toEqual({ exportName: 'vol', queries: ['base:allocation', 'qemu:dirty-bitmap:x'] });
    expect(() => decodeMetaContextRequest(NbdOpt.SET_META_CONTEXT, data.subarray(0, data.length - 1))).toThrow(ProtocolError);
    expect(() => decodeMetaContextRequest(NbdOpt.SET_META_CONTEXT, Buffer.concat([data, Buffer.from([0])]))).toThrow(ProtocolError);
    const huge = encodeMetaContextRequest('v', []);
    huge.writeUInt32BE(0xffffffff, 5); // a query count the data cannot hold
    expect(() => decodeMetaContextRequest(NbdOpt.LIST_META_CONTEXT, huge)).toThrow(/cannot fit/);
    expect(() => decodeMetaContextRequest(NbdOpt.LIST_META_CONTEXT, undefined)).toThrow(ProtocolError);
  });

  it('matches base:allocation: LIST with no query or the namespace; SET exact names only', () => {
    expect(matchMetaContexts([], true)).toEqual([[BASE_ALLOCATION_ID, BASE_ALLOCATION]]);
    expect(matchMetaContexts(['base:'], true)).toEqual([[BASE_ALLOCATION_ID, BASE_ALLOCATION]]);
    expect(matchMetaContexts(['base:'], false)).toEqual([]);
    expect(matchMetaContexts([], false)).toEqual([]);
    expect(matchMetaContexts(['qemu:dirty-bitmap:a', 'base:allocation'], false)).toEqual([[BASE_ALLOCATION_ID, BASE_ALLOCATION]]);
    expect(matchMetaContexts(['base:allocationX'], true)).toEqual([]);
  });

  it('encodes a final BLOCK_STATUS chunk: header, context id, (length, flags) pairs', () => {
    const buf = encodeBlockStatusChunk(1, 2, BASE_ALLOCATION_ID, [{ length: 65536, flags: 0 }, { length: 4096, flags: 3 }]);
    const h = parseStructuredReplyHeader(buf);
    expect(h).toMatchObject({ flags: 1, type: NbdReplyType.BLOCK_STATUS, length: 4 + 16 });
    expect(decodeBlockStatusPayload(buf.subarray(STRUCTURED_REPLY_HEADER_SIZE))).toEqual({
      contextId: BASE_ALLOCATION_ID, extents: [{ length: 65536, flags: 0 }, { length: 4096, flags: 3 }],
    });
  });

  it('fits extents: clipped to the request, merged, split under 4 GiB, capped in count', () => {
    expect(fitExtents([{ length: 10, flags: 0 }, { length: 10, flags: 0 }, { length: 100, flags: 3 }], 50, 10))
      .toEqual([{ length: 20, flags: 0 }, { length: 30, flags: 3 }]);
    expect(fitExtents([{ length: 10, flags: 0 }, { length: 10, flags: 3 }], 20, 1)).toEqual([{ length: 10, flags: 0 }]);
    const big = fitExtents([{ length: 6 * 2 ** 30, flags: 3 }], 6 * 2 ** 30, 10);
    expect(big.every((e) => e.length < 2 ** 32 && e.length % 4096 === 0)).toBe(true);
    expect(big.reduce((a, e) => a + e.length, 0)).toBe(6 * 2 ** 30);
    expect(fitExtents([{ length: 0, flags: 0 }, { length: 5, flags: 1 }], 5, 4)).toEqual([{ length: 5, flags: 1 }]);
  });
});

describe('NBD handshake: meta contexts', () => {
  it('LIST_META_CONTEXT names base:allocation and needs no structured replies', () => {
    const r = replies(started().option(...opt(NbdOpt.LIST_META_CONTEXT, encodeMetaContextRequest('a', []))));
    expect(r.map((x) => x.type)).toEqual([NbdRep.META_CONTEXT, NbdRep.ACK]);
    expect(r[0]!.data.readUInt32BE(0)).toBe(BASE_ALLOCATION_ID);
    expect(r[0]!.data.subarray(4).toString()).toBe(BASE_ALLOCATION);
  });

  it('SET_META_CONTEXT before STRUCTURED_REPLY is invalid; after it selects, and GO to that export enables block status', () => {
    const hs = started();
    expect(replies(hs.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('a', [BASE_ALLOCATION]))))[0]!.type).toBe(NbdRep.ERR_INVALID);
    hs.option(...opt(NbdOpt.STRUCTURED_REPLY));
    const r = replies(hs.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('a', ['x:y', BASE_ALLOCATION]))));
    expect(r.map((x) => x.type)).toEqual([NbdRep.META_CONTEXT, NbdRep.ACK]);
    const go = hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [NbdInfo.NAME])));
    expect(go).toMatchObject({ kind: 'transmit', structured: true, blockStatus: true });
  });

  it('a selection for another export, an unknown export, garbage data, or a later empty SET gives no block status', () => {
    const hs = started();
    hs.option(...opt(NbdOpt.STRUCTURED_REPLY));
    expect(replies(hs.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('zz', [BASE_ALLOCATION]))))[0]!.type).toBe(NbdRep.ERR_UNKNOWN);
    expect(replies(hs.option(...opt(NbdOpt.SET_META_CONTEXT, Buffer.from([1, 2, 3]))))[0]!.type).toBe(NbdRep.ERR_INVALID);
    hs.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('b', [BASE_ALLOCATION])));
    expect(hs.option(...opt(NbdOpt.INFO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'continue' });
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'transmit', blockStatus: false });
    const hs2 = started();
    hs2.option(...opt(NbdOpt.STRUCTURED_REPLY));
    hs2.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('a', [BASE_ALLOCATION])));
    expect(replies(hs2.option(...opt(NbdOpt.SET_META_CONTEXT, encodeMetaContextRequest('a', [])))).map((x) => x.type)).toEqual([NbdRep.ACK]);
    expect(hs2.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'transmit', blockStatus: false });
  });
});
