// The iSCSI PDU codec: BHS fields round-trip, the FrameSpec cuts a stream
// split anywhere into the same PDUs, digests are checked, oversized and
// garbage input is refused before allocation.

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../shared/errors.js';
import { FrameDecoder, type Frame } from '../../shared/frame-decoder.js';
import { Opcode, RESERVED_TAG } from '../../head-agent/frontend/iscsi/constants.js';
import { dataOut, loginRequest, nopOut, scsiCommand, taskManagementRequest } from '../../head-agent/frontend/iscsi/initiator-pdus.js';
import {
  checkDigests, decodeLun, encodeBhs, encodeLunHigh, encodePdu, isidText, pad4, PduError, PduSpec, splitPayload, tsihOf,
  writeBhs, type Bhs, type BhsFields,
} from '../../head-agent/frontend/iscsi/pdu.js';
import { writeDataIn, writeR2T, writeScsiResponse } from '../../head-agent/frontend/iscsi/target-pdus.js';

function decodeAll(spec: PduSpec, stream: Buffer, cuts: number[]): Frame<Bhs>[] {
  const d = new FrameDecoder(spec);
  const out: Frame<Bhs>[] = [];
  let at = 0;
  for (const cut of [...cuts, stream.length]) {
    d.push(stream.subarray(at, cut));
    for (let f = d.next(); f !== undefined; f = d.next()) {
      out.push({ header: f.header, payload: f.payload === undefined ? undefined : Buffer.from(f.payload) });
    }
    at = cut;
  }
  expect(d.idle).toBe(true);
  return out;
}

const pdus: { fields: BhsFields; data?: Buffer; ahs?: Buffer }[] = [
  { fields: loginRequest({ transit: true, csg: 1, nsg: 3, isid: '80123456789a', itt: 1, cmdSN: 7, expStatSN: 0 }), data: Buffer.from('InitiatorName=iqn.x\0') },
  { fields: scsiCommand({ itt: 2, cdb: Buffer.from([0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]), expectedLength: 4096, cmdSN: 8, expStatSN: 1, read: true }) },
  { fields: scsiCommand({ itt: 3, cdb: Buffer.alloc(16, 0x8a), expectedLength: 5, cmdSN: 9, expStatSN: 1, write: true }), data: Buffer.from('hello'), ahs: Buffer.from([0, 5, 1, 0, 1, 2, 3, 4]) },
  { fields: dataOut({ final: true, itt: 3, ttt: 9, expStatSN: 1, dataSN: 0, offset: 5 }), data: Buffer.from('abc') },
  { fields: nopOut({ itt: RESERVED_TAG, ttt: 0x1234, cmdSN: 10, expStatSN: 2 }) },
  { fields: taskManagementRequest({ fn: 1, itt: 4, referencedTag: 2, cmdSN: 10, expStatSN: 2, refCmdSN: 8 }) },
];

describe('iSCSI PDU codec', () => {
  for (const digests of [{ header: false, data: false }, { header: true, data: true }, { header: true, data: false }]) {
    it(`decodes the same PDUs wherever the stream is split (digests ${JSON.stringify(digests)})`, () => {
      const stream = Buffer.concat(pdus.map((p) => encodePdu(p.fields, p.data, p.ahs, digests)));
      const spec = new PduSpec();
      spec.headerDigest = digests.header;
      spec.dataDigest = digests.data;
      const whole = decodeAll(spec, stream, []);
      expect(whole).toHaveLength(pdus.length);
      whole.forEach((f, i) => {
        const p = pdus[i]!;
        expect(f.header.opcode).toBe(p.fields.opcode);
        expect(f.header.itt).toBe(p.fields.itt);
        expect(f.header.w5).toBe(p.fields.w5 ?? 0);
        expect(f.header.dataLength).toBe(p.data?.length ?? 0);
        expect(checkDigests(spec, f.header, f.payload)).toBe('ok');
        const parts = splitPayload(spec, f.header, f.payload);
        expect(parts.data?.toString()).toBe(p.data?.toString());
        expect(parts.ahs?.toString('hex')).toBe(p.ahs?.toString('hex'));
        // Re-encoding the parsed header gives the same 48 bytes (what a Reject carries back).
        expect(encodeBhs(f.header).equals(encodePdu(p.fields, p.data, p.ahs).subarray(0, 48))).toBe(true);
      });
      for (let cut = 1; cut < stream.length; cut += 7) {
        expect(decodeAll(spec, stream, [cut]).map((f) => f.header)).toEqual(whole.map((f) => f.header));
      }
      const bytes = Array.from({ length: stream.length - 1 }, (_, i) => i + 1);
      expect(decodeAll(spec, stream, bytes).map((f) => f.payload)).toEqual(whole.map((f) => f.payload));
    });
  }

  it('pads data segments to 4 bytes', () => {
    expect([0, 1, 2, 3, 4, 5].map(pad4)).toEqual([0, 3, 2, 1, 0, 3]);
    expect(encodePdu({ opcode: Opcode.NOP_OUT }, Buffer.from('abcde'))).toHaveLength(48 + 8);
    expect(encodePdu({ opcode: Opcode.NOP_OUT }, Buffer.from('abcde'), undefined, { header: true, data: true })).toHaveLength(48 + 4 + 8 + 4);
  });

  it('detects corrupted header and data digests', () => {
    const spec = new PduSpec();
    spec.headerDigest = true;
    spec.dataDigest = true;
    const good = encodePdu(nopOut({ itt: 1, cmdSN: 1, expStatSN: 1 }), Buffer.from('ping'), undefined, { header: true, data: true });
    for (const [at, want] of [[3, 'header'], [49, 'header'], [53, 'data'], [good.length - 2, 'data']] as const) {
      const bad = Buffer.from(good);
      bad[at] ^= 0x01;
      const [f] = decodeAll(spec, bad, []);
      expect(checkDigests(spec, f!.header, f!.payload)).toBe(want);
    }
  });

  it('refuses a data segment above the limit before reading it, with the header for a Reject', () => {
    const spec = new PduSpec();
    spec.maxDataSegment = 8192;
    const header = encodePdu({ opcode: Opcode.SCSI_COMMAND, itt: 5 });
    header.writeUIntBE(8193, 5, 3);
    const d = new FrameDecoder(spec);
    d.push(header);
    let err: unknown;
    try {
      d.next();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PduError);
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as PduError).bhs?.itt).toBe(5);
    // The largest legal PDU passes.
    header.writeUIntBE(8192, 5, 3);
    const ok = new FrameDecoder(spec);
    ok.push(Buffer.concat([header, Buffer.alloc(8192)]));
    expect(ok.next()?.payload).toHaveLength(8192);
  });

  it('never throws anything but a ProtocolError on random bytes', () => {
    for (let i = 0; i < 200; i++) {
      const spec = new PduSpec();
      spec.headerDigest = i % 2 === 0;
      const d = new FrameDecoder(spec);
      d.push(randomBytes(1 + (i * 37) % 300));
      try {
        for (let f = d.next(); f !== undefined; f = d.next()) checkDigests(spec, f.header, f.payload);
      } catch (e) {
        expect(e).toBeInstanceOf(ProtocolError);
      }
    }
  });

  it('encodes LUNs with peripheral and flat space addressing, and refuses others', () => {
    for (const lun of [0, 1, 255, 256, 1000, 16383]) expect(decodeLun(encodeLunHigh(lun), 0)).toBe(lun);
    expect(encodeLunHigh(5)).toBe(0x00050000);
    expect(encodeLunHigh(300)).toBe(0x412c0000);
    expect(decodeLun(0x80000000, 0)).toBeUndefined(); // logical unit addressing
    expect(decodeLun(0x01050000, 0)).toBeUndefined(); // bus 1
    expect(decodeLun(0x00050001, 0)).toBeUndefined(); // second level
    expect(decodeLun(0x00050000, 1)).toBeUndefined();
  });

  it('reads ISID and TSIH from a login header', () => {
    const buf = Buffer.alloc(48);
    writeBhs(buf, 0, loginRequest({ transit: false, csg: 0, nsg: 0, isid: '80123456789a', tsih: 0x4321, itt: 1, cmdSN: 1, expStatSN: 0 }));
    const h = new PduSpec().parseHeader(buf, 0);
    expect(isidText(h)).toBe('80123456789a');
    expect(tsihOf(h)).toBe(0x4321);
    expect(h.immediate).toBe(true);
  });

  it('lays out target PDUs as RFC 7143 section 11 says', () => {
    const buf = Buffer.alloc(48);
    const sn = { statSN: 10, expCmdSN: 20, maxCmdSN: 147 };
    writeDataIn(buf, 0, { flags: 0x81, status: 0, itt: 7, dataSN: 3, offset: 8192, residual: 12, dataLength: 4096 }, sn, true);
    expect(buf[0]).toBe(0x25);
    expect(buf[1]).toBe(0x81);
    expect(buf.readUIntBE(5, 3)).toBe(4096);
    expect(buf.readUInt32BE(20)).toBe(RESERVED_TAG);
    expect([24, 28, 32, 36, 40, 44].map((o) => buf.readUInt32BE(o))).toEqual([10, 20, 147, 3, 8192, 12]);
    writeDataIn(buf, 0, { flags: 0x00, status: 2, itt: 7, dataSN: 0, offset: 0, residual: 12, dataLength: 1 }, sn, false);
    expect(buf[3]).toBe(0); // status only with S
    expect(buf.readUInt32BE(24)).toBe(0); // StatSN reserved without S
    expect(buf.readUInt32BE(44)).toBe(0);
    writeScsiResponse(buf, 0, { flags: 0x02, response: 0, status: 2, itt: 9, expDataSN: 4, residual: 100, dataLength: 20 }, sn);
    expect([buf[0], buf[1], buf[2], buf[3]]).toEqual([0x21, 0x82, 0, 2]);
    expect(buf.readUInt32BE(36)).toBe(4);
    expect(buf.readUInt32BE(44)).toBe(100);
    writeR2T(buf, 0, { lunHigh: 0, itt: 9, ttt: 33, r2tSN: 2, offset: 65536, length: 4096 }, sn);
    expect([buf[0], buf[1]]).toEqual([0x31, 0x80]);
    expect([20, 36, 40, 44].map((o) => buf.readUInt32BE(o))).toEqual([33, 2, 65536, 4096]);
  });
});
