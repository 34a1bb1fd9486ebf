import { describe, expect, it } from 'vitest';
import type { BlockDevice, ExportRegistry } from '../../head-agent/engine/block-device.js';
import { OPTION_REPLY_SPEC, encodeInfoRequest, type OptionHeader } from '../../head-agent/frontend/nbd/codec.js';
import {
  EXPORT_TRANSMISSION_FLAGS, MAX_OPTIONS_PER_CONNECTION, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_SEND_DF,
  NbdInfo, NbdOpt, NbdRep,
} from '../../head-agent/frontend/nbd/constants.js';
import { Handshake, type HandshakeStep } from '../../head-agent/frontend/nbd/handshake.js';

const device = (name: string, size: number): BlockDevice => ({
  name, size,
  read: async () => Buffer.alloc(0), write: async () => {}, flush: async () => {},
  writeZeroes: async () => {}, discard: async () => {},
});

const registry: ExportRegistry = {
  lookup: (name) => (name === 'a' ? device('a', 4096) : name === 'b' ? device('b', 8192) : undefined),
  list: () => [device('a', 4096), device('b', 8192)],
};

function opt(option: number, data?: Buffer): [OptionHeader, Buffer | undefined] {
  return [{ option, length: data?.length ?? 0 }, data];
}

function replies(step: HandshakeStep): { option: number; type: number; data: Buffer }[] {
  return step.replies.map((r) => {
    const h = OPTION_REPLY_SPEC.parseHeader(r, 0);
    expect(r.length).toBe(20 + h.length);
    return { option: h.option, type: h.type, data: r.subarray(20) };
  });
}

function started(flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Handshake {
  const hs = new Handshake(registry);
  expect(hs.clientFlags(flags).kind).toBe('continue');
  return hs;
}

describe('NBD handshake state machine', () => {
  it('hangs up on unknown client flags', () => {
    const step = new Handshake(registry).clientFlags(0x4);
    expect(step).toMatchObject({ kind: 'close', clean: false });
  });

  it('NBD_OPT_GO on a known export sends NBD_INFO_EXPORT, requested items, block sizes, ACK, then transmits', () => {
    const step = started().option(...opt(NbdOpt.GO, encodeInfoRequest('b', [NbdInfo.NAME, NbdInfo.BLOCK_SIZE, 999])));
    expect(step.kind).toBe('transmit');
    if (step.kind !== 'transmit') return;
    expect(step.device.name).toBe('b');
    const r = replies(step);
    expect(r.map((x) => x.type)).toEqual([NbdRep.INFO, NbdRep.INFO, NbdRep.INFO, NbdRep.ACK]);
    expect(r.every((x) => x.option === NbdOpt.GO)).toBe(true);
    const exp = r[0]!.data;
    expect([exp.readUInt16BE(0), Number(exp.readBigUInt64BE(2)), exp.readUInt16BE(10)]).toEqual([NbdInfo.EXPORT, 8192, EXPORT_TRANSMISSION_FLAGS]);
    expect(r[1]!.data.readUInt16BE(0)).toBe(NbdInfo.NAME);
    expect(r[2]!.data.readUInt16BE(0)).toBe(NbdInfo.BLOCK_SIZE);
  });

  it('NBD_OPT_INFO answers like GO but keeps haggling', () => {
    const hs = started();
    const step = hs.option(...opt(NbdOpt.INFO, encodeInfoRequest('a', [])));
    expect(step.kind).toBe('continue');
    expect(replies(step).map((x) => x.type)).toEqual([NbdRep.INFO, NbdRep.INFO, NbdRep.ACK]);
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', []))).kind).toBe('transmit');
  });

  it('an unknown or empty export name in GO gets NBD_REP_ERR_UNKNOWN with a message', () => {
    const hs = started();
    for (const name of ['zz', '']) {
      const step = hs.option(...opt(NbdOpt.GO, encodeInfoRequest(name, [])));
      expect(step.kind).toBe('continue');
      const [r] = replies(step);
      expect(r!.type).toBe(NbdRep.ERR_UNKNOWN);
      expect(r!.data.toString()).toMatch(name === '' ? /no default export/ : /no export named "zz"/);
    }
  });

  it('malformed GO data gets NBD_REP_ERR_INVALID and haggling continues', () => {
    const hs = started();
    const step = hs.option(...opt(NbdOpt.GO, Buffer.from([0, 0, 0, 200, 0, 0])));
    expect(replies(step).map((x) => x.type)).toEqual([NbdRep.ERR_INVALID]);
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', []))).kind).toBe('transmit');
  });

  it('NBD_OPT_EXPORT_NAME: padded reply unless NO_ZEROES; unknown name hangs up', () => {
    const padded = started(NBD_FLAG_C_FIXED_NEWSTYLE).option(...opt(NbdOpt.EXPORT_NAME, Buffer.from('a')));
    expect(padded.kind).toBe('transmit');
    expect(padded.replies[0]!.length).toBe(134);
    const bare = started().option(...opt(NbdOpt.EXPORT_NAME, Buffer.from('a')));
    expect(bare.replies[0]!.length).toBe(10);
    expect(started().option(...opt(NbdOpt.EXPORT_NAME, Buffer.from('nope')))).toMatchObject({ kind: 'close', clean: false });
    expect(started().option(...opt(NbdOpt.EXPORT_NAME, Buffer.from([0xff])))).toMatchObject({ kind: 'close', clean: false });
  });

  it('NBD_OPT_LIST lists every export then ACKs; data makes it invalid', () => {
    const hs = started();
    const r = replies(hs.option(...opt(NbdOpt.LIST)));
    expect(r.map((x) => x.type)).toEqual([NbdRep.SERVER, NbdRep.SERVER, NbdRep.ACK]);
    expect(r.slice(0, 2).map((x) => x.data.subarray(4).toString())).toEqual(['a', 'b']);
    expect(replies(hs.option(...opt(NbdOpt.LIST, Buffer.from('x'))))[0]!.type).toBe(NbdRep.ERR_INVALID);
  });

  it('NBD_OPT_STRUCTURED_REPLY is acked and adds SEND_DF to the transmission flags', () => {
    const plain = started().option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])));
    expect(plain).toMatchObject({ kind: 'transmit', structured: false });
    expect(replies(plain)[0]!.data.readUInt16BE(10)).toBe(EXPORT_TRANSMISSION_FLAGS);
    const hs = started();
    expect(replies(hs.option(...opt(NbdOpt.STRUCTURED_REPLY, Buffer.from('x'))))[0]!.type).toBe(NbdRep.ERR_INVALID);
    expect(replies(hs.option(...opt(NbdOpt.STRUCTURED_REPLY)))[0]!.type).toBe(NbdRep.ACK);
    const go = hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])));
    expect(go).toMatchObject({ kind: 'transmit', structured: true });
    expect(replies(go)[0]!.data.readUInt16BE(10)).toBe(EXPORT_TRANSMISSION_FLAGS | NBD_FLAG_SEND_DF);
  });

  it('NBD_OPT_ABORT acks and closes cleanly; unsupported options get ERR_UNSUP', () => {
    const hs = started();
    for (const o of [NbdOpt.STARTTLS, NbdOpt.EXTENDED_HEADERS, 0xffffffff]) {
      expect(replies(hs.option(...opt(o)))[0]!.type).toBe(NbdRep.ERR_UNSUP);
    }
    const step = hs.option(...opt(NbdOpt.ABORT));
    expect(step).toMatchObject({ kind: 'close', clean: true });
    expect(replies(step).map((x) => x.type)).toEqual([NbdRep.ACK]);
  });

  it(`hangs up after ${MAX_OPTIONS_PER_CONNECTION} options`, () => {
    const hs = started();
    for (let i = 0; i < MAX_OPTIONS_PER_CONNECTION; i++) expect(hs.option(...opt(NbdOpt.LIST)).kind).toBe('continue');
    expect(hs.option(...opt(NbdOpt.LIST))).toMatchObject({ kind: 'close', clean: false });
  });
});

describe('NBD handshake: STARTTLS (proto.md "TLS support")', () => {
  const tlsStarted = (mode: 'on' | 'require', flags = NBD_FLAG_C_FIXED_NEWSTYLE): Handshake => {
    const hs = new Handshake(registry, mode);
    expect(hs.clientFlags(flags).kind).toBe('continue');
    return hs;
  };

  it('require (FORCEDTLS): options before TLS get ERR_TLS_REQD, EXPORT_NAME hangs up, ABORT is honoured', () => {
    const hs = tlsStarted('require');
    for (const o of [opt(NbdOpt.LIST), opt(NbdOpt.GO, encodeInfoRequest('a', [])), opt(NbdOpt.INFO, encodeInfoRequest('a', [])), opt(NbdOpt.STRUCTURED_REPLY)]) {
      const step = hs.option(...o);
      expect(step.kind).toBe('continue');
      expect(replies(step)[0]!.type).toBe(NbdRep.ERR_TLS_REQD);
    }
    expect(tlsStarted('require').option(...opt(NbdOpt.EXPORT_NAME, Buffer.from('a')))).toMatchObject({ kind: 'close', clean: false });
    expect(tlsStarted('require').option(...opt(NbdOpt.ABORT))).toMatchObject({ kind: 'close', clean: true });
    // TLS needs fixed newstyle: a client without it cannot be served under require.
    expect(new Handshake(registry, 'require').clientFlags(0)).toMatchObject({ kind: 'close' });
  });

  it('STARTTLS: ACK, then options are served; a second STARTTLS or one with data gets ERR_INVALID; never TLS_REQD after', () => {
    const hs = tlsStarted('require');
    expect(replies(hs.option(...opt(NbdOpt.STARTTLS, Buffer.from('x'))))[0]!.type).toBe(NbdRep.ERR_INVALID);
    const step = hs.option(...opt(NbdOpt.STARTTLS));
    expect(step.kind).toBe('starttls');
    expect(replies(step).map((r) => r.type)).toEqual([NbdRep.ACK]);
    hs.tlsStarted();
    expect(replies(hs.option(...opt(NbdOpt.STARTTLS)))[0]!.type).toBe(NbdRep.ERR_INVALID);
    expect(replies(hs.option(...opt(NbdOpt.LIST))).at(-1)!.type).toBe(NbdRep.ACK);
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'transmit' });
  });

  it('state negotiated before STARTTLS is forgotten (structured replies)', () => {
    const hs = tlsStarted('on');
    expect(replies(hs.option(...opt(NbdOpt.STRUCTURED_REPLY)))[0]!.type).toBe(NbdRep.ACK);
    expect(hs.option(...opt(NbdOpt.STARTTLS)).kind).toBe('starttls');
    hs.tlsStarted();
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'transmit', structured: false });
  });

  it('on (no TLS-only export): plaintext clients are served as before', () => {
    const hs = tlsStarted('on');
    expect(hs.option(...opt(NbdOpt.GO, encodeInfoRequest('a', [])))).toMatchObject({ kind: 'transmit' });
    expect(tlsStarted('on').option(...opt(NbdOpt.EXPORT_NAME, Buffer.from('a')))).toMatchObject({ kind: 'transmit' });
  });
});
